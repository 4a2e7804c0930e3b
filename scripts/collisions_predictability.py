"""How far ahead can the collisions data be predicted at all? (figures of the README)

    python scripts/collisions_predictability.py [--systems 200]

Hard-sphere billiards are chaotic: every body–body contact multiplies a small error by roughly
the free path over the radius. This measures it on the collisions experiment's test systems:

* the exact simulator (float64) started from the true first state plus Gaussian noise of
  scale ε in the positions, for several ε: the position MSE against the truth along time is
  the error a perfect model makes after an error ε;
* the exact contact rule of `egnn_jax.dynamics.contact_step`'s family (impulse ``a = −1`` at
  a contact within the step, position change ``c = a f``), stepped in float32 as the learned
  model is: the ceiling of that model family at this precision;
* the same rule stepped once from every true state: its squared velocity error on the steps
  with a contact is zero for most and large for a few (two contacts within one step), the
  few that dominate a mean-squared training loss.

Writes ``experiments/results/collisions/predictability.json`` (atomically) and prints a table.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from egnn_jax import dynamics as dyn
from egnn_jax import sim
from egnn_jax._atomic import save_json_atomic
from egnn_jax.dynamics._contact import _pair_geometry
from egnn_jax.experiments._report import markdown_table
from egnn_jax.experiments.collisions import CollisionsExperimentConfig

REPORT_TIMES = (1.0, 2.0, 3.0, 4.0, 5.0)
NOISE_SCALES = (1e-7, 1e-5, 1e-3)


def _exact_rule_step(state: dyn.State, config) -> tuple[dyn.State, jax.Array]:
    """One step of the family's exact member, and whether it saw a contact in the step."""
    dt = config.dt
    features, normal, _, approach = _pair_geometry(state, config.radius, config.box, dt)
    hits, after = features[..., 4], features[..., 3]
    m_i, m_k = features[..., 6], features[..., 7]  # the node features: masses
    a = -hits * 2 * m_k / (m_i + m_k)
    dv = jnp.sum((a * approach)[..., None] * normal, axis=1)
    dx = jnp.sum((a * after * approach * dt)[..., None] * normal, axis=1)
    new = dyn.State(state.x + dt * state.v + dx, state.v + dv, state.h)
    return new, jnp.any(hits > 0)


def _f32(a) -> jax.Array:
    return jnp.asarray(a, jnp.float32)


def _exact_rule_rollout(x0, v0, masses, config) -> np.ndarray:
    """The family's exact member stepped in float32: ``[B, T, M, dim]``."""

    def step(state, _):
        new, _ = _exact_rule_step(state, config)
        return new, new.x

    def one(x, v, m):
        state = dyn.State(x, v, m[:, None])
        _, xs = jax.lax.scan(step, state, None, length=config.n_saved - 1)
        return jnp.concatenate([x[None], xs])

    return np.asarray(jax.jit(jax.vmap(one))(_f32(x0), _f32(v0), _f32(masses)))


def _exact_rule_one_step_errors(x, v, masses, config) -> dict:
    """The exact rule stepped once from every true state: the squared error of the next
    velocities (mean over bodies and coordinates) on the steps where it sees a contact,
    their mean, median and the share of the total held by the worst 1%."""

    def step(x, v, m):
        new, contact = _exact_rule_step(dyn.State(x, v, m[:, None]), config)
        return new.v, contact

    over_time = jax.vmap(step, in_axes=(0, 0, None))
    v_next, contact = jax.jit(jax.vmap(over_time))(_f32(x[:, :-1]), _f32(v[:, :-1]), _f32(masses))
    err = np.mean((np.asarray(v_next, np.float64) - v[:, 1:]) ** 2, axis=(2, 3))
    on_contact = np.sort(err[np.asarray(contact)])[::-1]
    worst = max(1, len(on_contact) // 100)
    return {
        "contact_steps": int(len(on_contact)),
        "contact_step_fraction": float(np.mean(np.asarray(contact))),
        "mean": float(on_contact.mean()),
        "median": float(np.median(on_contact)),
        "share_of_worst_1_percent": float(on_contact[:worst].sum() / on_contact.sum()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", type=int, default=200, help="test systems to use")
    ap.add_argument(
        "--out", default="experiments/results/collisions/predictability.json", help="JSON path"
    )
    ap.add_argument(
        "--data-dir", default="experiments/results/collisions/data", help="simulation cache"
    )
    args = ap.parse_args(argv)
    config = CollisionsExperimentConfig()
    ds = sim.load_or_simulate(config.simulator(), args.data_dir, progress=False)
    first_test = config.n_train + config.n_valid
    rows = slice(first_test, first_test + args.systems)
    x_true = ds.x[rows].astype(np.float64)
    masses = ds.masses[rows].astype(np.float64)
    # Re-simulate from the stored (float32) first state: the truth here is the float64 flight
    # from exactly that state, so the ε = 0 row is exact.
    with jax.enable_x64(True):
        x0 = jnp.asarray(x_true[:, 0])
        v0 = jnp.asarray(ds.v[rows, 0].astype(np.float64))
        simulate = jax.jit(
            jax.vmap(
                lambda x, v, m: sim.collisions_trajectory(
                    x, v, m, config.radius, config.box, config.t_end, n_saved=config.n_saved
                )["x"]
            )
        )
        truth = np.asarray(simulate(x0, v0, jnp.asarray(masses)))
        curves = {}
        for eps in NOISE_SCALES:
            noise = eps * jax.random.normal(jax.random.key(0), x0.shape, jnp.float64)
            moved = np.asarray(simulate(x0 + noise, v0, jnp.asarray(masses)))
            curves[f"simulator, initial error {eps:g}"] = np.mean((moved - truth) ** 2, (0, 2, 3))
    exact = _exact_rule_rollout(x_true[:, 0], ds.v[rows, 0], masses, config)
    curves["exact contact rule (float32 steps)"] = np.mean((exact - truth) ** 2, axis=(0, 2, 3))
    one_step = _exact_rule_one_step_errors(x_true, ds.v[rows].astype(np.float64), masses, config)
    idx = {t: round(t / config.dt) for t in REPORT_TIMES}
    result = {
        "command": "python scripts/collisions_predictability.py " + " ".join(argv or sys.argv[1:]),
        "systems": args.systems,
        "dt": config.dt,
        "mse_at": {
            name: {f"{t:g}": float(c[i]) for t, i in idx.items()} for name, c in curves.items()
        },
        "mse_curve": {name: c.tolist() for name, c in curves.items()},
        "exact_rule_one_step_velocity_error": one_step,
    }
    save_json_atomic(args.out, result)
    header = ["error source", *(f"MSE t={t:g}" for t in REPORT_TIMES)]
    cells = [[name, *(f"{v:.2g}" for v in at.values())] for name, at in result["mse_at"].items()]
    print(markdown_table(header, cells))
    print(
        "exact contact rule, one step from each true state with a contact "
        f"({one_step['contact_steps']} steps): squared velocity error mean "
        f"{one_step['mean']:.2g}, median {one_step['median']:.2g}; the worst 1% hold all "
        f"but a fraction {1 - one_step['share_of_worst_1_percent']:.1g} of it"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
