"""One large graph split over devices by its edges (`egnn_jax.shard_edges`) against one device.

The graph and model are `bench_scale.py`'s: a random periodic fluid (density 1, ~30
neighbours per node, cell-list radius graph) and a 4-layer EGNN, hidden 64, the step
`value_and_grad` of sum(h_out^2) + sum(x_out^2), float32, per-layer rematerialisation on
(without it the 100,000-node backward pass keeps ~37 GiB of activations on one device).

Cases, timed round-robin in one process at each size (`_common.time_interleaved`):
- ``one_device``: the whole graph on one device;
- ``sharded``: the edge list split over all ``--devices`` devices, the nodes replicated; XLA
  partitions the same jitted step (node sums become partial sums plus an all-reduce).

Recorded per case: the median time, XLA's per-device temporaries (`memory_analysis()`, the
figure that decides whether a graph fits a device) and the loss, which must agree.

On a CPU the devices are simulated (``--xla_force_host_platform_device_count``) and share
the machine's cores, so the split cannot be faster there; what it shows is the per-device
memory and the cost of the partitioned program. On several GPUs the same program runs on
each GPU's own memory and compute.

    python benchmarks/bench_sharded_graph.py [--sizes 10000 100000] [--devices 4]
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


def make_step(side: float):
    config = egnn_jax.EGNNConfig(HIDDEN, LAYERS, out_features=1, remat=True)

    def loss(p, h, x, s, r, m):
        h_out, x_out = egnn_jax.apply(
            p, config, h, x, senders=s, receivers=r, edge_mask=m, box=side
        )
        return jnp.sum(h_out**2) + jnp.sum(x_out**2)

    return config, jax.jit(jax.value_and_grad(loss))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--devices", type=int, default=4, help="devices to split over (4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case (3)")
    parser.add_argument("--output", default="sharded_graph", help="results/<OUTPUT>.json")
    args = parser.parse_args(argv)
    if jax.device_count() < args.devices:
        parser.error(f"{args.devices} devices requested, {jax.device_count()} available")
    mesh = Mesh(np.array(jax.devices()[: args.devices]), ("edges",))

    results = {}
    for n in args.sizes:
        x, side, senders, receivers, _ = fluid(n)
        h = jnp.ones((n, 1), jnp.float32)
        config, step = make_step(side)
        mask = np.ones(senders.shape, bool)
        params = egnn_jax.init(
            jax.random.key(0), config, h, jnp.asarray(x), senders=senders, receivers=receivers
        )
        one = (params, h, jnp.asarray(x), jnp.asarray(senders), jnp.asarray(receivers), mask)
        edges = egnn_jax.shard_edges(mesh, senders, receivers)
        nodes = jax.device_put((params, h, x), edges.replicated)
        split = (*nodes, edges.senders, edges.receivers, edges.edge_mask)

        row = {"nodes": n, "edges": int(senders.size), "cases": {}}
        losses = {}
        cases = {}
        for name, call_args in (("one_device", one), ("sharded", split)):
            compiled = step.lower(*call_args).compile()
            hlo = compiled.as_text()
            memory = compiled.memory_analysis()
            row["cases"][name] = {
                "devices": 1 if name == "one_device" else args.devices,
                "edges_per_device": int(senders.size)
                if name == "one_device"
                else int(edges.senders.addressable_shards[0].data.shape[0]),
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
        one_case, split_case = row["cases"]["one_device"], row["cases"]["sharded"]
        row["sharded_over_one_device_time"] = split_case["median_ms"] / one_case["median_ms"]
        row["temp_per_device_ratio"] = (
            split_case["xla_temp_bytes_per_device"] / one_case["xla_temp_bytes_per_device"]
        )
        row["loss_relative_difference"] = abs(losses["sharded"] - losses["one_device"]) / abs(
            losses["one_device"]
        )
        results[str(n)] = row
        print(
            f"{n:>7} nodes {row['edges']:>9} edges | one device "
            f"{one_case['median_ms'] / 1e3:.2f} s, "
            f"{one_case['xla_temp_bytes_per_device'] / 2**30:.2f} GiB temp | "
            f"{args.devices} devices {split_case['median_ms'] / 1e3:.2f} s, "
            f"{split_case['xla_temp_bytes_per_device'] / 2**30:.2f} GiB temp per device | "
            f"loss rel. diff {row['loss_relative_difference']:.1e}",
            flush=True,
        )
    payload = {
        "benchmark": "sharded_graph",
        "setting": {
            "graph": "random periodic fluid, density 1, cell-list radius graph",
            "cutoff": CUTOFF,
            "model": f"EGNN {LAYERS} layers, hidden {HIDDEN}, remat, float32",
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
