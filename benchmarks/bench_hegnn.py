"""HEGNN vs EGNN train-step benchmark: forward + backward + Adam on batches of charged systems.

The issue's setting: charged N-body systems of 5 and 20 bodies (3-D), batch 100, hidden 64,
4 layers, the velocity variant, node feature |v|, edge attributes [q_i q_j, |x_i - x_j|^2].
Initial conditions come from the charged simulator's sampler (`egnn_jax.sim`, the EGNN
protocol with `loc_std` scaled by (M / 5)^(1/3) as the reference generator); the targets are
x + v (the timing does not depend on them). Loss: MSE of the predicted positions; one jitted
step = value_and_grad + Adam, the batch a `jax.vmap` over dense graphs (the default path).

Cases, timed round-robin in one process per system size: `egnn` (`egnn_jax.apply`,
`EGNNConfig(velocity=True)`) and `hegnn_l{L}` (`egnn_jax.hegnn.apply`, `max_degree=L`) for
L = 1, 2, 3, 6. The JSON holds each case's times and its ratio to `egnn` at that size.
Target (issue): HEGNN l<=3 at most 2x the EGNN step at 20 bodies.

    python benchmarks/bench_hegnn.py [--repeats 30] [--batch 100] [--bodies 5 20]
"""

from __future__ import annotations

import argparse
from importlib import metadata

import jax
import jax.numpy as jnp
import optax
from _common import machine, time_interleaved, write_json

import egnn_jax
from egnn_jax.sim import ChargedConfig, sample_charged_initial_conditions

DEGREES = (1, 2, 3, 6)


def make_batch(key, batch, bodies):
    """`(h, x, v, a, y)` for `batch` charged systems of `bodies` particles."""
    cfg = ChargedConfig(n_particles=bodies)
    loc_std = cfg.loc_std * (bodies / 5) ** (1 / 3)
    sample = lambda k: sample_charged_initial_conditions(
        k, bodies, 3, loc_std, cfg.vel_norm, cfg.box_size, jnp.float32
    )
    x, v, q = jax.vmap(sample)(jax.random.split(key, batch))
    h = jnp.linalg.norm(v, axis=-1, keepdims=True)
    d2 = jnp.sum((x[:, :, None] - x[:, None]) ** 2, axis=-1, keepdims=True)
    a = jnp.concatenate([(q[:, :, None] * q[:, None, :])[..., None], d2], axis=-1)
    return h, x, v, a, x + v


def make_step(apply, params, config, opt):
    """A jitted train step for `apply(params, config, h, x, v=, edge_attr=) -> (h, x, ...)`."""

    def loss(p, h, x, v, a, y):
        fwd = lambda h, x, v, a: apply(p, config, h, x, v=v, edge_attr=a)[1]
        return jnp.mean((jax.vmap(fwd)(h, x, v, a) - y) ** 2)

    @jax.jit
    def step(p, s, *batch):
        value, grads = jax.value_and_grad(loss)(p, *batch)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    state = opt.init(params)
    return lambda batch: jax.block_until_ready(step(params, state, *batch))


def bench_size(bodies, batch, repeats):
    data = make_batch(jax.random.key(bodies), batch, bodies)
    one = tuple(t[0] for t in data[:4])
    opt = optax.flatten(optax.adam(5e-4))  # as the experiments' training loop
    models = {"egnn": (egnn_jax, egnn_jax.EGNNConfig(64, 4, velocity=True))}
    for degree in DEGREES:
        models[f"hegnn_l{degree}"] = (egnn_jax.hegnn, egnn_jax.HEGNNConfig(64, 4, degree))
    cases, params_count = {}, {}
    for name, (api, config) in models.items():
        h, x, v, a = one
        params = api.init(jax.random.key(1), config, h, x, v=v, edge_attr=a)
        params_count[name] = sum(p.size for p in jax.tree.leaves(params))
        step = make_step(api.apply, params, config, opt)
        cases[name] = lambda step=step: step(data)
    results = time_interleaved(cases, repeats)
    base = results["egnn"]["median_ms"]
    for name, r in results.items():
        r["ratio_to_egnn"] = r["median_ms"] / base
        r["parameters"] = params_count[name]
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per case (30)")
    parser.add_argument("--batch", type=int, default=100, help="systems per batch (100)")
    parser.add_argument("--bodies", type=int, nargs="+", default=[5, 20], help="(5 20)")
    args = parser.parse_args(argv)

    by_size = {}
    for bodies in args.bodies:
        by_size[str(bodies)] = bench_size(bodies, args.batch, args.repeats)
        print(f"{bodies} bodies, batch {args.batch}")
        print(f"  {'case':<10}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'x egnn':>8}")
        for name, r in by_size[str(bodies)].items():
            print(
                f"  {name:<10}{r['median_ms']:>11.2f}{r['min_ms']:>9.2f}{r['max_ms']:>9.2f}"
                f"{r['ratio_to_egnn']:>8.2f}"
            )
    payload = {
        "benchmark": "hegnn_train_step",
        "setting": {
            "batch": args.batch,
            "bodies": args.bodies,
            "dim": 3,
            "hidden": 64,
            "layers": 4,
            "velocity": True,
            "edge_attr": 2,
            "graph": "dense (vmap)",
            "loss": "MSE of predicted positions",
            "optimizer": "adam",
            "hegnn_degrees": list(DEGREES),
        },
        "results": by_size,
        "target": "hegnn_l3 <= 2x egnn at 20 bodies",
        **machine(),
    }
    payload["versions"]["e3nn-jax"] = metadata.version("e3nn-jax")
    path = write_json("hegnn", payload)
    print(f"device: {payload['device']}; wrote {path}")


if __name__ == "__main__":
    main()
