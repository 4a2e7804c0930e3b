"""EGHN vs EGNN train-step benchmark on EGHN's M-complex systems (the issue's (10, 10) column).

Batch 100 systems of `egnn_jax.sim.ComplexesConfig` (10 complexes of average size 10: 73 to
100 particles, padded to the largest type), featurised as the experiment does
(`egnn_jax.experiments.complexes.featurise`); the state after one step of the simulator (the
timing does not depend on the dynamics), targets x + v. One jitted step = value_and_grad of
the experiment's training loss (masked MSE; EGHN adds its cut loss) + Adam, for the
experiment's `egnn` (EGNN-vel, 4 layers, hidden 64) and `eghn` (K = 3, 3 + 3 + 3 layers)
specs, timed round-robin in one process. Target (issue): EGHN <= 1.5x EGNN.

    python benchmarks/bench_eghn.py [--repeats 10] [--batch 100] [--complexes 10 --avg-size 10]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import optax
from _common import compiled_train_step, machine, time_interleaved, write_json

from egnn_jax.experiments import complexes
from egnn_jax.sim import ComplexesConfig, complex_sizes, complexes_trajectory


def make_batch(batch, m, s):
    sizes = complex_sizes(ComplexesConfig(n_complexes=m, avg_size=s))
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(0), batch)
        one = lambda k: complexes_trajectory(k, sizes, n_steps=1, save_every=1)
        (x, v), _, q, ids, mask = jax.jit(jax.vmap(one))(keys)
    x, v = np.asarray(x[:, 0]), np.asarray(v[:, 0])
    return complexes.featurise(x, v, np.asarray(q), np.asarray(ids), np.asarray(mask), x + v)


def make_step(spec, params, opt):
    step, state = compiled_train_step(spec, params, opt)
    return lambda batch: jax.block_until_ready(step(params, state, batch))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per case (10)")
    parser.add_argument("--batch", type=int, default=100, help="systems per batch (100)")
    parser.add_argument("--complexes", type=int, default=10, help="complexes M (10)")
    parser.add_argument("--avg-size", type=int, default=10, help="average size (10)")
    args = parser.parse_args(argv)

    data = make_batch(args.batch, args.complexes, args.avg_size)
    config = complexes.ComplexesExperimentConfig(complexes=args.complexes, avg_size=args.avg_size)
    opt = optax.flatten(optax.adam(5e-4))
    cases, params_count = {}, {}
    for name in ("egnn", "eghn"):
        spec = complexes.EXPERIMENT.model_spec(name, config)
        params = spec.init(jax.random.key(1), jax.tree.map(lambda a: a[:1], data))
        params_count[name] = sum(p.size for p in jax.tree.leaves(params))
        step = make_step(spec, params, opt)
        cases[name] = lambda step=step: step(data)
    results = time_interleaved(cases, args.repeats, warmup=2)
    for name, r in results.items():
        r["ratio_to_egnn"] = r["median_ms"] / results["egnn"]["median_ms"]
        r["parameters"] = params_count[name]
        ratio, n = r["ratio_to_egnn"], r["parameters"]
        print(f"{name:<6}{r['median_ms']:>10.1f} ms  x{ratio:.2f}  {n:,} params")
    payload = {
        "benchmark": "eghn_train_step",
        "setting": {
            "batch": args.batch,
            "complexes": args.complexes,
            "avg_size": args.avg_size,
            "padded_particles": int(data["x0"].shape[1]),
            "real_particles_mean": float(data["node_mask"].sum(1).mean()),
            "graph": "dense (vmap), node mask; E-Pool on the local edge list",
            "eghn_local_capacity": dict(complexes.EXPERIMENT.model_spec("eghn", config).options)[
                "local_capacity"
            ],
            "optimizer": "adam",
        },
        "results": results,
        "target": "eghn <= 1.5x egnn",
        **machine(),
    }
    path = write_json("eghn", payload)
    print(f"device: {payload['device']}; wrote {path}")


if __name__ == "__main__":
    main()
