"""How much of the charged task's error is the solver's? (figures of the README)

    python scripts/charged_solver_error.py

The rollout experiment's force fields integrate a learned acceleration by leapfrog with a
fixed number of steps per saved frame (`RolloutConfig.substeps`, `fine_substeps`). This
integrates the *true* charged forces (`egnn_jax.sim.charged_forces`, clipped as the
generator clips them) the same way, through `egnn_jax.dynamics.integrate`, from frame 30 of
each test system of the charged task, and measures the position MSE against the data over
frames 31 to 40 and at frame 40: the error a perfect force field would make with that
solver. The charges' close encounters are stiff, so the coarse grids are far off.

Writes ``experiments/results/rollout/charged/solver_error.json`` (atomically) and prints a
table.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from egnn_jax import dynamics as dyn
from egnn_jax._atomic import save_json_atomic
from egnn_jax.experiments._report import markdown_table
from egnn_jax.experiments.rollout import EXPERIMENT, charged_config
from egnn_jax.sim import Leapfrog, Yoshida6, charged_forces

# (solver, steps per saved frame, force evaluations per step)
GRIDS = (
    *(("leapfrog", n, 1) for n in (1, 2, 4, 8, 16, 32, 64, 100)),
    *(("yoshida6", n, 7) for n in (2, 4, 8)),
)
SOLVERS = {"leapfrog": Leapfrog, "yoshida6": Yoshida6}


def _true_acceleration(_, state: dyn.State) -> jax.Array:
    return charged_forces(state.x, state.h[:, 0])  # unit masses


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", default="experiments/results/rollout/charged/solver_error.json", help="JSON path"
    )
    ap.add_argument(
        "--data-dir", default="experiments/results/rollout/charged/data", help="simulation cache"
    )
    args = ap.parse_args(argv)
    config = charged_config()
    test = EXPERIMENT.load_data(config, args.data_dir, progress=False).test
    num_steps = test["x"].shape[1] - 1
    first = dyn.State(test["x"][:, 0], test["v"][:, 0], test["h"])
    rows = []
    for solver, substeps, evaluations in GRIDS:
        roll = jax.jit(
            jax.vmap(
                lambda s, solver=solver, substeps=substeps: (
                    dyn.integrate(
                        _true_acceleration,
                        None,
                        s,
                        config.dt,
                        num_steps,
                        solver=SOLVERS[solver](),
                        substeps=substeps,
                    ).x
                )
            )
        )
        mse = np.asarray(jnp.mean((roll(first) - test["x"]) ** 2, axis=(0, 2, 3)))
        rows.append(
            {
                "solver": solver,
                "steps_per_frame": substeps,
                "force_evaluations_per_frame": substeps * evaluations,
                "trajectory_mse": float(mse[1:].mean()),
                "mse_last_frame": float(mse[-1]),
            }
        )
    result = {
        "command": "python scripts/charged_solver_error.py " + " ".join(argv or sys.argv[1:]),
        "systems": int(test["x"].shape[0]),
        "frames": [config.first_frame, config.last_frame],
        "dt": config.dt,
        "rows": rows,
    }
    save_json_atomic(args.out, result)
    header = [
        "solver",
        "steps per frame",
        "force evaluations per frame",
        f"trajectory MSE (frames {config.first_frame + 1}-{config.last_frame})",
        f"MSE frame {config.last_frame}",
    ]
    cells = [
        [r["solver"], str(r["steps_per_frame"]), str(r["force_evaluations_per_frame"])]
        + [f"{r[k]:.2g}" for k in ("trajectory_mse", "mse_last_frame")]
        for r in rows
    ]
    print(markdown_table(header, cells))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
