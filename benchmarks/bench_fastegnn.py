"""FastEGNN vs EGNN train-step benchmark on the N-body benchmark's systems (issue: 100 bodies).

The experiment's own models and losses (`egnn_jax.experiments.nbody_scale`): `egnn`
(EGNN-vel on the complete graph, 4 layers, hidden 64) and `fastegnn` (3 virtual nodes, the
real-real edges cut to the shortest 50 % of each system's pairs, loss MSE + 0.01 MMD), on
systems of the shared N-body generator (`egnn_jax.sim.NBodyConfig`: frame 1, one
semi-implicit Euler step from the initial draw; the timing does not depend on the dynamics),
featurised as the experiment does, targets x + v. One jitted step = value_and_grad of the
training loss + the experiment's optimiser (clip 10, Adam), timed round-robin in one process
per size, so the ratio is measured side by side. Recorded per case: median / min time, XLA's
temporaries, parameters, and the real-real edges per system.

The protocol's batch is 256; at 100 bodies EGNN's step then keeps ~16 GiB of activations, too
close to this 24 GiB CPU's memory next to FastEGNN's, hence `--batch` (default 64): a time
per system is what the ratio compares.

    python benchmarks/bench_fastegnn.py [--bodies 20 100] [--batch 64] [--repeats 10]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from _common import compiled_train_step, machine, time_interleaved, write_json

import egnn_jax
from egnn_jax.experiments import nbody_scale
from egnn_jax.experiments._step import StepInfo, make_optimizer
from egnn_jax.sim import NBodyConfig, simulate_nbody

MODELS = ("egnn", "fastegnn")


def make_batch(batch: int, bodies: int) -> dict:
    cfg = NBodyConfig(n_trajectories=batch, n_bodies=bodies, n_steps=2, save_every=1, frames=(1,))
    data = simulate_nbody(cfg)
    x, v = data.x[:, 0], data.v[:, 0]
    return jax.tree.map(jnp.asarray, nbody_scale.featurise(x, v, data.charges, x + v))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--batch", type=int, default=64, help="systems per batch (64)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per case (10)")
    parser.add_argument("--output", default="fastegnn", help="results/<OUTPUT>.json")
    args = parser.parse_args(argv)

    config = nbody_scale.NBodyScaleConfig()
    opt = make_optimizer(config.learning_rate, config.weight_decay, clip_norm=config.clip_norm)
    results = {}
    for bodies in args.bodies:
        data = make_batch(args.batch, bodies)
        cases, row = {}, {}
        for name in MODELS:
            spec = nbody_scale.EXPERIMENT.model_spec(name, config)
            params = spec.init(jax.random.key(1), jax.tree.map(lambda a: a[:1], data))
            info = StepInfo(jax.random.key(2), jnp.zeros((), jnp.int32))
            step, state = compiled_train_step(spec, params, opt, info)
            compiled = step.lower(params, state, data).compile()
            row[name] = {
                "parameters": sum(p.size for p in jax.tree.leaves(params)),
                "xla_temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
            }
            cases[name] = lambda c=compiled, p=params, s=state, d=data: jax.block_until_ready(
                c(p, s, d)
            )
        timing = time_interleaved(cases, args.repeats, warmup=2)
        pairs = bodies * (bodies - 1)
        kept = nbody_scale.FASTEGNN_OPTIONS["keep_fraction"]
        for name in MODELS:
            row[name] |= timing[name]
            row[name]["ratio_to_egnn"] = timing[name]["median_ms"] / timing["egnn"]["median_ms"]
        row["egnn"]["real_edges_per_system"] = pairs
        row["fastegnn"]["real_edges_per_system"] = int(
            egnn_jax.shortest_edges(data["x0"][0], kept).senders.shape[0]
        )
        results[str(bodies)] = row
        for name in MODELS:
            r = row[name]
            print(
                f"{bodies:>4} bodies {name:<9}{r['median_ms']:>10.1f} ms (min {r['min_ms']:.1f})"
                f"  x{r['ratio_to_egnn']:.2f}  temp {r['xla_temp_bytes'] / 2**20:,.0f} MiB",
                flush=True,
            )
    payload = {
        "benchmark": "fastegnn_train_step",
        "setting": {
            "batch": args.batch,
            "models": "egnn_jax.experiments.nbody_scale specs egnn, fastegnn "
            f"({nbody_scale.FASTEGNN_OPTIONS}), their training losses",
            "data": "NBodyConfig systems after one step, nbody_scale.featurise, targets x + v",
            "optimizer": "the experiment's (make_optimizer: clip 10, Adam 5e-4, L2 1e-12)",
        },
        "results": results,
        **machine(),
    }
    path = write_json(args.output, payload)
    print(f"device: {payload['device']}; wrote {path}")


if __name__ == "__main__":
    main()
