"""Where the time of the chunked EGNN step goes: XLA:CPU's kernels, by kind.

The step of `bench_scale.py` (`EGNNConfig(edge_chunk_size=C)`, a 4-layer EGNN, hidden 64,
`value_and_grad` on a random periodic fluid with ~30 neighbours per node) runs a few times
under `jax.profiler`; every kernel's trace event is matched to its instruction in the
compiled program's HLO and counted as one of

- ``matmul``: a fusion or instruction holding a `dot` (its FLOPs from the HLO shapes);
- ``gather`` / ``scatter``: one holding a gather / a scatter;
- ``elementwise``: any other fusion (SiLU and its derivative, the edge terms, ...);
- ``other``: loops, copies, slices.

Kernel time is summed over XLA's threads, so it can exceed the wall time of a call.

    python benchmarks/profile_edge_chunks.py [--nodes 10000] [--edge-chunk-size 4096]
        [--calls 2] [--output profile_edge_chunks]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import math
import re
import tempfile
import time
from pathlib import Path

import jax
from _common import machine, write_json
from bench_scale import HIDDEN, LAYERS, fluid, jax_step

_SHAPE = re.compile(r"^\s*(?:ROOT )?%(\S+) = \w+\[([\d,]*)\]")
_CALLS = re.compile(r"^\s*(?:ROOT )?%(\S+) = .*?calls=%([\w.\-]+)")
_DOT = re.compile(
    r"%(\S+) = \w+\[([\d,]*)\]\S* dot\(%([^,\s]+), .*?lhs_contracting_dims=\{([\d,]*)\}"
)


def _dims(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d]


def kernel_kinds(hlo: str) -> dict[str, tuple[str, float]]:
    """Instruction name -> (kind, matmul FLOPs) for every instruction of the HLO text."""
    shapes, bodies, calls = {}, {}, {}
    current = None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%(\S+) \(", line)
        if header:
            current = header.group(1)
            bodies[current] = []
            # Parameters of a computation are declared in its header: name: f32[a,b].
            for name, dims in re.findall(r"(\S+): \w+\[([\d,]*)\]", line):
                shapes[name] = _dims(dims)
            continue
        if current is None:
            continue
        bodies[current].append(line)
        m = _SHAPE.match(line)
        if m:
            shapes[m.group(1)] = _dims(m.group(2))
        c = _CALLS.match(line)
        if c:
            calls[c.group(1)] = c.group(2)

    def body_kind(lines) -> tuple[str, float]:
        text = "\n".join(lines)
        flops = 0.0
        for _, out, lhs, contracting in _DOT.findall(text):
            lhs_dims = shapes.get(lhs, [])
            k = math.prod(lhs_dims[int(i)] for i in _dims(contracting) if int(i) < len(lhs_dims))
            flops += 2.0 * math.prod(_dims(out)) * k
        if " dot(" in text:
            return "matmul", flops
        if " scatter(" in text:
            return "scatter", 0.0
        if " gather(" in text:
            return "gather", 0.0
        return "elementwise", 0.0

    kinds = {}
    for body in bodies.values():
        for line in body:
            m = _SHAPE.match(line)
            if not m:
                continue
            name = m.group(1)
            if name in calls and calls[name] in bodies and " fusion(" in line:
                kinds[name] = body_kind(bodies[calls[name]])
            elif " dot(" in line:
                kinds[name] = body_kind([line])
            elif " scatter(" in line:
                kinds[name] = ("scatter", 0.0)
            elif " gather(" in line:
                kinds[name] = ("gather", 0.0)
    return kinds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--edge-chunk-size", type=int, default=4096)
    parser.add_argument("--calls", type=int, default=2, help="profiled calls (2)")
    parser.add_argument("--output", default="profile_edge_chunks")
    args = parser.parse_args(argv)

    x, side, senders, receivers, _ = fluid(args.nodes)
    compiled, step_args = jax_step(x, side, senders, receivers, False, args.edge_chunk_size)
    kinds = kernel_kinds(compiled.as_text())
    for _ in range(2):
        jax.block_until_ready(compiled(*step_args))
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        start = time.perf_counter()
        for _ in range(args.calls):
            jax.block_until_ready(compiled(*step_args))
        wall = (time.perf_counter() - start) / args.calls
        jax.profiler.stop_trace()
        trace = next(Path(tmp).rglob("*.trace.json.gz"))
        events = json.load(gzip.open(trace))["traceEvents"]

    time_us, count, flops = collections.Counter(), collections.Counter(), 0.0
    for event in events:
        if event.get("ph") != "X":
            continue
        kind, f = kinds.get(event["name"], (None, 0.0))
        if kind is None:
            # Runtime bookkeeping (executor, thread pool, Python frames) is not a kernel;
            # loops, copies and slices are.
            if not re.match(r"^(while|copy|wrapped_|concatenate|bitcast|pad)", event["name"]):
                continue
            kind = "other"
        time_us[kind] += event["dur"]
        count[kind] += 1
        flops += f
    total = sum(time_us.values())
    matmul_s = time_us["matmul"] / 1e6
    result = {
        "nodes": args.nodes,
        "edges": int(senders.size),
        "edge_chunk_size": args.edge_chunk_size,
        "wall_seconds_per_call": wall,
        "kernel_seconds_per_call": {k: v / 1e6 / args.calls for k, v in time_us.items()},
        "kernel_share": {k: v / total for k, v in time_us.items()},
        "kernels_per_call": {k: v // args.calls for k, v in count.items()},
        "matmul_gflop_per_call": flops / 1e9 / args.calls,
        "matmul_gflop_per_kernel_second": flops / 1e9 / matmul_s if matmul_s else None,
        "chunks_per_layer": -(-int(senders.size) // args.edge_chunk_size),
        "layers": LAYERS,
    }
    for kind in sorted(time_us, key=time_us.get, reverse=True):
        print(
            f"{kind:12s} {result['kernel_share'][kind]:6.1%}  "
            f"{result['kernel_seconds_per_call'][kind]:.3f} s  "
            f"{result['kernels_per_call'][kind]} kernels"
        )
    print(
        f"wall {wall:.3f} s a call; matmuls {result['matmul_gflop_per_call']:.1f} GFLOP a call "
        f"at {result['matmul_gflop_per_kernel_second'] or 0:.0f} GFLOP per kernel second"
    )
    path = write_json(
        args.output,
        {
            "benchmark": "kernel time of the chunked EGNN step by kind (XLA:CPU trace events)",
            "setting": {"model": f"EGNN {LAYERS} layers, hidden {HIDDEN}, float32"},
            **machine(),
            "result": result,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
