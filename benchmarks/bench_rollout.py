"""Rollout speed: every model of the rollout experiment on the 1,000-system test split.

    .venv/bin/python benchmarks/bench_rollout.py [--repeats 3] [--systems 1000] [--steps 499]

Each model (the experiment's three-body configuration: hidden 64; 4 layers for the step
models, 2 for the force field and the potential) rolls every system out from its first
state over `--steps` saved intervals, compiled once, then timed round-robin with the others
(`_common.time_interleaved`), so their ratios hold on a shared machine. The parameters are
freshly initialised: the cost of a rollout does not depend on their values. The issue's
target: <= 5 s for 1,000 systems x 500 steps on the 2-core CPU. Writes
benchmarks/results/rollout.json.
"""

from __future__ import annotations

import argparse

import jax
from _common import machine, time_interleaved, write_json

from egnn_jax.dynamics import State
from egnn_jax.experiments import rollout

MODELS = (
    "linear",
    "one_shot",
    "naive_step",
    "multi_step",
    "force_field",
    "potential",
    "true_simulator",
)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--systems", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=499)
    args = parser.parse_args(argv)

    config = rollout.RolloutConfig()
    key = jax.random.key(0)
    kx, kv = jax.random.split(key)
    m, n = 3, 2
    state = State(
        jax.random.normal(kx, (args.systems, m, n)),
        0.5 * jax.random.normal(kv, (args.systems, m, n)),
        jax.numpy.ones((args.systems, m, 1)),
    )
    example = {"x": state.x[:1, None], "v": state.v[:1, None], "h": state.h[:1]}
    cases = {}
    for name in MODELS:
        spec = rollout.EXPERIMENT.model_spec(name, config)
        params = spec.init(key, example) if spec.trainable else {}
        fn = jax.jit(jax.vmap(lambda s, spec=spec, p=params: spec.trajectory(p, s, args.steps)))
        cases[name] = lambda fn=fn: jax.block_until_ready(fn(state))
    timings = time_interleaved(cases, repeats=args.repeats, warmup=1)
    payload = {
        "benchmark": "rollout",
        "systems": args.systems,
        "steps": args.steps,
        "target_seconds": 5.0,
        "seconds": {name: t["median_ms"] / 1e3 for name, t in timings.items()},
        "timings": timings,
        "machine": machine(),
        "command": "python benchmarks/bench_rollout.py "
        f"--repeats {args.repeats} --systems {args.systems} --steps {args.steps}",
    }
    path = write_json("rollout", payload)
    for name, seconds in payload["seconds"].items():
        print(f"{name:15s} {seconds:7.2f} s")
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
