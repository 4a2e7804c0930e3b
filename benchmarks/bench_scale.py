"""EGNN forward + backward on large periodic radius graphs: time, peak memory, rematerialisation.

A random periodic fluid: N nodes uniform in a cube of side N^(1/3) (density 1) and the
cutoff (90 / 4 pi)^(1/3) = 1.93, so ~30 neighbours per node; the edge list comes from
`egnn_jax.radius_graph` (cell list). The model is a 4-layer EGNN, hidden 64, one input
feature and one output feature (as `egnn_clean.EGNN(1, 64, 1)`), the loss the sum of
squares of both outputs; one case is `jax.value_and_grad` of it, jitted.

Cases, timed round-robin in one process at each size (`_common.time_interleaved`):
- ``jax``: `egnn_jax.apply` on the edge list;
- ``jax_remat``: the same with `EGNNConfig(remat=True)` (each layer recomputed backward);
- ``jax_chunked``: the same with `EGNNConfig(edge_chunk_size=C)` (``--edge-chunk-size``,
  8192): each layer's messages in chunks of C edges, recomputed backward chunk by chunk;
- ``fastegnn``: `egnn_jax.fastegnn.apply` (3 virtual nodes, same width and depth) on the
  same edge list, and ``fastegnn_chunked``, the same with `edge_chunk_size=C`; FastEGNN
  takes no periodic box, so its relative vectors are plain differences (one elementwise op
  per edge less than the EGNN cases);
- ``torch_reference``: the authors' PyTorch `EGNN` of `models/egnn_clean/egnn_clean.py`
  (github.com/vgsatorras/egnn), loaded from ``--reference FILE`` (not shipped here), with
  the same edge list as ``edge_index = [receivers, senders]``, forward and ``backward()``.
  Needs `torch` importable; skipped otherwise or above ``--torch-max-nodes``. The reference
  has no periodic boundary, so its relative vectors are plain differences: the arithmetic
  is the same up to the wrap, which costs one elementwise op per edge.

Memory: each case also runs once in a child process that reports its peak resident memory
(`VmHWM`) after one forward + backward, next to the process's resident memory just
before the model call (data and imports); for JAX also XLA's own account of the compiled
program's buffers (`compiled.memory_analysis()`: temporaries, i.e. the activations kept
for the backward pass).

    python benchmarks/bench_scale.py [--sizes 1000 10000 100000] [--repeats 5]
        [--reference egnn_clean.py] [--torch-max-nodes 100000] [--edge-chunk-size 8192]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _common import machine, retain_freed_memory, time_interleaved, write_json

import egnn_jax

CUTOFF = (90 / (4 * math.pi)) ** (1 / 3)  # 30 neighbours on average at density 1
HIDDEN, LAYERS = 64, 4


def fluid(n: int, seed: int = 0):
    """Positions `[n, 3]` (float32) and the periodic radius graph (cell list)."""
    side = n ** (1 / 3)
    x = np.random.default_rng(seed).uniform(0, side, (n, 3)).astype(np.float32)
    t = time.perf_counter()
    graph = egnn_jax.radius_graph(jnp.asarray(x), CUTOFF, capacity=40 * n, box=side)
    graph = jax.block_until_ready(graph)
    seconds = time.perf_counter() - t
    if bool(graph.overflow):
        raise RuntimeError(f"radius graph overflowed at {n} nodes")
    e = int(graph.num_edges)
    senders = np.asarray(graph.senders)[:e]
    receivers = np.asarray(graph.receivers)[:e]
    return x, side, senders, receivers, seconds


def jax_case(x, side, senders, receivers, remat: bool, edge_chunk_size: int | None = None):
    compiled, args = jax_step(x, side, senders, receivers, remat, edge_chunk_size)
    memory = compiled.memory_analysis()
    stats = {
        "xla_temp_bytes": int(memory.temp_size_in_bytes),
        "xla_argument_bytes": int(memory.argument_size_in_bytes),
        "xla_output_bytes": int(memory.output_size_in_bytes),
    }
    return (lambda: jax.block_until_ready(compiled(*args))), stats


def jax_step(x, side, senders, receivers, remat: bool, edge_chunk_size: int | None = None):
    """The compiled `value_and_grad` step of the EGNN cases and its arguments."""
    config = egnn_jax.EGNNConfig(
        HIDDEN, LAYERS, out_features=1, remat=remat, edge_chunk_size=edge_chunk_size
    )
    h = jnp.ones((x.shape[0], 1), jnp.float32)
    x = jnp.asarray(x)
    s, r = jnp.asarray(senders), jnp.asarray(receivers)
    params = egnn_jax.init(jax.random.key(0), config, h, x, senders=s, receivers=r)

    # The graph is an argument, not a closed-over constant: XLA would constant-fold the
    # scatters over a constant index array for minutes.
    def loss(p, h, x, s, r):
        h_out, x_out = egnn_jax.apply(p, config, h, x, senders=s, receivers=r, box=side)
        return jnp.sum(h_out**2) + jnp.sum(x_out**2)

    args = (params, h, x, s, r)
    return jax.jit(jax.value_and_grad(loss)).lower(*args).compile(), args


def torch_case(x, senders, receivers, reference: Path):
    import torch

    spec = importlib.util.spec_from_file_location("egnn_clean", reference)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.EGNN(in_node_nf=1, hidden_nf=HIDDEN, out_node_nf=1, n_layers=LAYERS)
    h = torch.ones(x.shape[0], 1)
    coords = torch.from_numpy(x)
    # The reference aggregates onto edge_index[0] ("row") and reads x_row - x_col.
    edges = [
        torch.from_numpy(receivers.astype(np.int64)),
        torch.from_numpy(senders.astype(np.int64)),
    ]

    def run():
        model.zero_grad(set_to_none=True)
        h_out, x_out = model(h, coords, edges, None)
        loss = torch.sum(h_out**2) + torch.sum(x_out**2)
        loss.backward()
        return loss.item()

    return run, {}


def fastegnn_case(x, senders, receivers, edge_chunk_size: int | None = None):
    config = egnn_jax.FastEGNNConfig(HIDDEN, LAYERS, virtual_channels=3, velocity=False)
    config = dataclasses.replace(config, out_features=1, edge_chunk_size=edge_chunk_size)
    h = jnp.ones((x.shape[0], 1), jnp.float32)
    x = jnp.asarray(x)
    s, r = jnp.asarray(senders), jnp.asarray(receivers)
    params = egnn_jax.fastegnn.init(jax.random.key(0), config, h, x, senders=s, receivers=r)

    def loss(p, h, x, s, r):
        out = egnn_jax.fastegnn.apply(p, config, h, x, senders=s, receivers=r)
        return jnp.sum(out.h**2) + jnp.sum(out.x**2)

    args = (params, h, x, s, r)
    compiled = jax.jit(jax.value_and_grad(loss)).lower(*args).compile()
    memory = compiled.memory_analysis()
    stats = {"xla_temp_bytes": int(memory.temp_size_in_bytes)}
    return (lambda: jax.block_until_ready(compiled(*args))), stats


def make_case(name, x, side, senders, receivers, reference, edge_chunk_size=8192):
    if name == "jax_chunked":
        return jax_case(x, side, senders, receivers, remat=False, edge_chunk_size=edge_chunk_size)
    if name == "fastegnn":
        return fastegnn_case(x, senders, receivers)
    if name == "fastegnn_chunked":
        return fastegnn_case(x, senders, receivers, edge_chunk_size)
    if name == "jax":
        return jax_case(x, side, senders, receivers, remat=False)
    if name == "jax_remat":
        return jax_case(x, side, senders, receivers, remat=True)
    return torch_case(x, senders, receivers, reference)


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM). Not `ru_maxrss`: a child started by
    fork + exec inherits the parent's high-water mark in it."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure_memory(name, graph_file: Path, reference, edge_chunk_size: int) -> dict:
    """In this (fresh) process: one call of case `name` on the saved graph; the peak memory.

    The graph is read from a file so that the radius search's memory is not counted."""
    with np.load(graph_file) as f:
        x, side, senders, receivers = f["x"], float(f["side"]), f["senders"], f["receivers"]
    before = current_rss_mib()
    fn, stats = make_case(name, x, side, senders, receivers, reference, edge_chunk_size)
    fn()
    return {"peak_rss_mib": peak_rss_mib(), "rss_before_model_mib": before, **stats}


def memory_in_child(name, graph_file, reference, timeout, malloc, edge_chunk_size) -> dict:
    cmd = [sys.executable, __file__, "--child", name, str(graph_file), "--malloc", malloc]
    cmd += ["--edge-chunk-size", str(edge_chunk_size)]
    if reference is not None:
        cmd += ["--reference", str(reference)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"error": f"exit {proc.returncode}: {tail[0][:300]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (5)")
    parser.add_argument("--reference", type=Path, help="the authors' egnn_clean.py")
    parser.add_argument(
        "--torch-max-nodes",
        type=int,
        default=10_000,
        help="largest graph for the reference (10000; at 100000 its stored activations "
        "alone would be ~30 GiB)",
    )
    parser.add_argument(
        "--plain-max-nodes",
        type=int,
        default=10_000,
        help="largest graph to run JAX without remat on (10000); above, only its compiled "
        "memory is reported",
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["jax", "jax_remat", "jax_chunked", "torch_reference"],
        help="which cases (jax, jax_remat, jax_chunked, fastegnn, fastegnn_chunked, "
        "torch_reference); jax_remat always runs",
    )
    parser.add_argument(
        "--edge-chunk-size",
        type=int,
        default=8192,
        help="EGNNConfig.edge_chunk_size of the jax_chunked case (8192)",
    )
    parser.add_argument(
        "--output", default="scale", help="benchmarks/results/<OUTPUT>.json (scale)"
    )
    parser.add_argument(
        "--malloc",
        choices=["system", "retain"],
        default="system",
        help="system: glibc's defaults; retain: keep freed memory for reuse "
        "(_common.retain_freed_memory; set for every case, children included)",
    )
    parser.add_argument("--memory-timeout", type=int, default=1800, help="s per child")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.malloc == "retain" and not retain_freed_memory():
        parser.error("--malloc retain needs glibc")

    if args.child:
        name, graph_file = args.child[0], Path(args.child[1])
        print(json.dumps(measure_memory(name, graph_file, args.reference, args.edge_chunk_size)))
        return

    torch_ok = args.reference is not None and importlib.util.find_spec("torch") is not None
    if torch_ok:
        import torch

        torch_info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    else:
        torch_info = {"torch": None}
    results = {}
    for n in args.sizes:
        x, side, senders, receivers, graph_seconds = fluid(n)
        names = ["jax_remat"]
        if n <= args.plain_max_nodes and "jax" in args.cases:
            names.insert(0, "jax")
        if "jax_chunked" in args.cases:
            names.append("jax_chunked")
        if n <= args.plain_max_nodes and "fastegnn" in args.cases:
            names.append("fastegnn")
        if "fastegnn_chunked" in args.cases:
            names.append("fastegnn_chunked")
        if torch_ok and n <= args.torch_max_nodes and "torch_reference" in args.cases:
            names.append("torch_reference")
        cases, stats = {}, {}
        for name in names:
            cases[name], stats[name] = make_case(
                name, x, side, senders, receivers, args.reference, args.edge_chunk_size
            )
        if "jax" not in names:  # compile only: what the stored activations would take
            _, stats["jax"] = make_case("jax", x, side, senders, receivers, None)
            stats["jax"]["not_run"] = (
                "not in --cases"
                if n <= args.plain_max_nodes
                else f"above --plain-max-nodes {args.plain_max_nodes}"
            )
        timing = time_interleaved(cases, args.repeats, warmup=1)
        row = {
            "nodes": n,
            "edges": int(senders.size),
            "mean_neighbours": senders.size / n,
            "radius_graph_seconds_first_call": graph_seconds,
            "cases": {},
        }
        del cases  # free the compiled programs' buffers before the children run
        with tempfile.TemporaryDirectory() as tmp:
            graph_file = Path(tmp) / "graph.npz"
            np.savez(graph_file, x=x, side=side, senders=senders, receivers=receivers)
            for name in names:
                memory = memory_in_child(
                    name,
                    graph_file,
                    args.reference,
                    args.memory_timeout,
                    args.malloc,
                    args.edge_chunk_size,
                )
                row["cases"][name] = timing[name] | stats[name] | memory
        if "torch_reference" in timing and "jax" in timing:
            row["jax_over_torch"] = (
                timing["jax"]["median_ms"] / timing["torch_reference"]["median_ms"]
            )
        if "torch_reference" in timing and "jax_chunked" in timing:
            row["chunked_over_torch"] = (
                timing["jax_chunked"]["median_ms"] / timing["torch_reference"]["median_ms"]
            )
        if "jax_chunked" in timing:
            row["chunked_over_remat_time"] = (
                timing["jax_chunked"]["median_ms"] / timing["jax_remat"]["median_ms"]
            )
        if "fastegnn_chunked" in timing and "jax_chunked" in timing:
            row["fastegnn_chunked_over_jax_chunked"] = (
                timing["fastegnn_chunked"]["median_ms"] / timing["jax_chunked"]["median_ms"]
            )
        if "fastegnn" in timing and "jax" in timing:
            row["fastegnn_over_jax"] = timing["fastegnn"]["median_ms"] / timing["jax"]["median_ms"]
        if "jax" in timing:
            row["remat_over_plain_time"] = (
                timing["jax_remat"]["median_ms"] / timing["jax"]["median_ms"]
            )
        else:
            row["cases"]["jax"] = stats["jax"]
        plain, remat = row["cases"]["jax"], row["cases"]["jax_remat"]
        row["remat_temp_saving"] = 1 - remat["xla_temp_bytes"] / plain["xla_temp_bytes"]
        if "jax_chunked" in row["cases"]:
            chunked = row["cases"]["jax_chunked"]
            row["chunked_temp_saving"] = 1 - chunked["xla_temp_bytes"] / plain["xla_temp_bytes"]
        results[str(n)] = row
        line = "  ".join(
            f"{k} {v['median_ms'] / 1e3:.3f} s, {v.get('peak_rss_mib', float('nan')):.0f} MiB"
            for k, v in row["cases"].items()
            if "median_ms" in v
        )
        print(f"{n:>7} nodes {row['edges']:>9} edges | {line}", flush=True)
    payload = {
        "benchmark": "scale",
        "setting": {
            "graph": "random periodic fluid, density 1, cell-list radius graph",
            "cutoff": CUTOFF,
            "model": f"EGNN {LAYERS} layers, hidden {HIDDEN}, 1 in / 1 out feature, float32 "
            "(the fastegnn cases: FastEGNN, 3 virtual nodes, same width and depth)",
            "cases": sorted({"jax_remat", *args.cases}),
            "edge_chunk_size": args.edge_chunk_size,
            "step": "value_and_grad of sum(h_out^2) + sum(x_out^2)",
            "reference": None if args.reference is None else args.reference.name,
            "malloc": args.malloc,
            **torch_info,
        },
        "results": results,
        "target": "jax <= 0.25x the authors' time at 10,000 nodes; memory linear in edges; "
        "100,000 nodes trains on a 24 GiB machine",
        **machine(),
    }
    path = write_json(args.output, payload)
    print(f"device: {payload['device']}; wrote {path}")


if __name__ == "__main__":
    main()
