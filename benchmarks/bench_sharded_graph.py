"""One large graph split over devices by its edges (`egnn_jax.shard_edges`) against one device.

The graph and model are `bench_scale.py`'s: a random periodic fluid (density 1, ~30
neighbours per node, cell-list radius graph) and a 4-layer EGNN, hidden 64, the step
`value_and_grad` of sum(h_out^2) + sum(x_out^2), float32, with per-layer rematerialisation
or with edge chunks (without either the 100,000-node backward pass keeps ~37 GiB of
activations on one device).

Cases, timed round-robin in one process at each size (`_common.time_interleaved`):
- ``one_device``: the whole graph on one device, `remat=True`;
- ``sharded``: the edge list split over all ``--devices`` devices, the nodes replicated; XLA
  partitions the same jitted step (node sums become partial sums plus an all-reduce);
- ``one_device_chunked``: `edge_chunk_size` (``--edge-chunk-size``) on one device;
- ``sharded_chunked``: the same split, passed as `egnn_jax.apply(..., edge_sharding=)`, so
  that each device scans its own edges in chunks (a `shard_map`) and the node sums are
  reduced once per layer.

Recorded per case: the median time, XLA's per-device temporaries (`memory_analysis()`, the
figure that decides whether a graph fits a device) and the loss, which must agree.

On a CPU the devices are simulated (``--xla_force_host_platform_device_count``) and share
the machine's cores, so the split cannot be faster there; what it shows is the per-device
memory and the cost of the partitioned program. On several GPUs the same program runs on
each GPU's own memory and compute.

    python benchmarks/bench_sharded_graph.py [--sizes 10000 100000] [--devices 4]
        [--edge-chunk-size 8192]
"""

from __future__ import annotations

import argparse
import os
import re
import sys


def _devices_from_argv(argv) -> int:
    for i, arg in enumerate(argv):
        if arg == "--devices":
            return int(argv[i + 1])
        if arg.startswith("--devices="):
            return int(arg.split("=", 1)[1])
    return 4


# Simulated CPU devices must be requested before JAX starts its backend.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={_devices_from_argv(sys.argv)}"
    )

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import machine, time_interleaved, write_json  # noqa: E402
from bench_scale import CUTOFF, HIDDEN, LAYERS, fluid  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

import egnn_jax  # noqa: E402


def make_step(side: float, edge_chunk_size: int | None = None, edge_sharding=None):
    if edge_chunk_size is None:
        config = egnn_jax.EGNNConfig(HIDDEN, LAYERS, out_features=1, remat=True)
    else:
        config = egnn_jax.EGNNConfig(
            HIDDEN, LAYERS, out_features=1, edge_chunk_size=edge_chunk_size
        )

    def loss(p, h, x, s, r, m):
        h_out, x_out = egnn_jax.apply(
            p,
            config,
            h,
            x,
            senders=s,
            receivers=r,
            edge_mask=m,
            box=side,
            edge_sharding=edge_sharding,
        )
        return jnp.sum(h_out**2) + jnp.sum(x_out**2)

    return config, jax.jit(jax.value_and_grad(loss))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--devices", type=int, default=4, help="devices to split over (4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case (3)")
    parser.add_argument(
        "--edge-chunk-size", type=int, default=8192, help="edges per chunk, chunked cases (8192)"
    )
    parser.add_argument("--output", default="sharded_graph", help="results/<OUTPUT>.json")
    args = parser.parse_args(argv)
    if jax.device_count() < args.devices:
        parser.error(f"{args.devices} devices requested, {jax.device_count()} available")
    mesh = Mesh(np.array(jax.devices()[: args.devices]), ("edges",))

    results = {}
    for n in args.sizes:
        x, side, senders, receivers, _ = fluid(n)
        h = jnp.ones((n, 1), jnp.float32)
        mask = np.ones(senders.shape, bool)
        edges = egnn_jax.shard_edges(mesh, senders, receivers)
        chunk = args.edge_chunk_size
        steps = {
            "one_device": make_step(side),
            "sharded": make_step(side),
            "one_device_chunked": make_step(side, chunk),
            "sharded_chunked": make_step(side, chunk, edges.edge_sharding),
        }
        params = egnn_jax.init(
            jax.random.key(0),
            steps["one_device"][0],
            h,
            jnp.asarray(x),
            senders=senders,
            receivers=receivers,
        )
        one = (params, h, jnp.asarray(x), jnp.asarray(senders), jnp.asarray(receivers), mask)
        nodes = jax.device_put((params, h, x), edges.replicated)
        split = (*nodes, edges.senders, edges.receivers, edges.edge_mask)

        row = {"nodes": n, "edges": int(senders.size), "cases": {}}
        losses = {}
        cases = {}
        for name, (_, step) in steps.items():
            call_args = split if name.startswith("sharded") else one
            compiled = step.lower(*call_args).compile()
            hlo = compiled.as_text()
            memory = compiled.memory_analysis()
            row["cases"][name] = {
                "devices": args.devices if name.startswith("sharded") else 1,
                "edge_chunk_size": chunk if name.endswith("chunked") else None,
                "edges_per_device": int(edges.senders.addressable_shards[0].data.shape[0])
                if name.startswith("sharded")
                else int(senders.size),
                "xla_temp_bytes_per_device": int(memory.temp_size_in_bytes),
                "all_reduces": len(re.findall(r"\ball-reduce(?:-start)?\(", hlo)),
                "all_gathers": len(re.findall(r"\ball-gather(?:-start)?\(", hlo)),
            }
            losses[name] = float(compiled(*call_args)[0])
            cases[name] = lambda c=compiled, a=call_args: jax.block_until_ready(c(*a))
        timing = time_interleaved(cases, args.repeats, warmup=1)
        for name in cases:
            row["cases"][name] |= timing[name] | {"loss": losses[name]}
        del cases
        c = row["cases"]
        for suffix in ("", "_chunked"):
            one_case, split_case = c["one_device" + suffix], c["sharded" + suffix]
            row["sharded_over_one_device_time" + suffix] = (
                split_case["median_ms"] / one_case["median_ms"]
            )
            row["temp_per_device_ratio" + suffix] = (
                split_case["xla_temp_bytes_per_device"] / one_case["xla_temp_bytes_per_device"]
            )
        row["loss_relative_difference"] = max(
            abs(loss - losses["one_device"]) / abs(losses["one_device"]) for loss in losses.values()
        )
        results[str(n)] = row
        for name, r in c.items():
            print(
                f"{n:>7} nodes {row['edges']:>9} edges | {name:<19} {r['median_ms'] / 1e3:7.2f} s"
                f"  {r['xla_temp_bytes_per_device'] / 2**30:6.2f} GiB temp per device"
                f"  all-reduces {r['all_reduces']}, all-gathers {r['all_gathers']}",
                flush=True,
            )
        print(f"loss rel. diff {row['loss_relative_difference']:.1e}", flush=True)
    payload = {
        "benchmark": "sharded_graph",
        "setting": {
            "graph": "random periodic fluid, density 1, cell-list radius graph",
            "cutoff": CUTOFF,
            "model": f"EGNN {LAYERS} layers, hidden {HIDDEN}, float32; remat, or edge chunks "
            f"of {args.edge_chunk_size} (the *_chunked cases)",
            "step": "value_and_grad of sum(h_out^2) + sum(x_out^2)",
            "split": f"edges over {args.devices} devices (egnn_jax.shard_edges), "
            "nodes and parameters replicated",
        },
        "results": results,
        **machine(),
    }
    path = write_json(args.output, payload)
    print(f"device: {payload['device']} x {args.devices}; wrote {path}")


if __name__ == "__main__":
    main()
