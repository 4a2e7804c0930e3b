"""Collisions: bodies that hit each other and the walls (the seed study's second failure).

    python -m egnn_jax.experiments.collisions                     # all models
    python -m egnn_jax.experiments.collisions --quick --workdir /tmp/c
    python -m egnn_jax.experiments.collisions --evaluate FILE.npz

Data: ``python -m egnn_jax.sim collisions --n 10000 --seed 0`` (3 discs of radius 0.1 in the
box [−1, 1]², billiards, 500 frames over t in [0, 5]: ~3 body–body and ~14 wall contacts per
system), split 8,000 / 1,000 / 1,000. Every model starts from the first state and predicts
every later saved frame:

* ``linear``: constant velocity, walls ignored (the floor);
* ``naive_egnn``: EGNN-vel on the complete graph of the bodies, from the first state to any
  horizon (the horizon an input): the seed's setup. It sees no wall, and an E(n)-equivariant
  function of the bodies alone cannot represent a bounce off a wall at a fixed place: the
  walls break the symmetry it has by construction;
* ``contact_step``: `egnn_jax.dynamics.contact_step` (walls as mirror images, gap and
  approach-speed invariants: equivariant to the box's symmetry group instead), stepped one
  saved interval at a time and trained on windows by backpropagation through the unrolled
  steps; ``contact_projected``: the same model with the non-penetration projection;
  ``contact_step_log``: the same model trained on the log of each system's error, so the
  rare steps the model family cannot represent (two contacts within one step) do not
  dominate the fit of the common ones.

Scores on the test split: the position MSE at every saved time (and at the last), the
fraction of predicted frames with overlapping bodies or a body outside the box, and the
median relative error of the kinetic energy (conserved by the billiards).

``--evaluate FILE.npz`` takes a collisions simulator output (``x [N, T, M, dim]``, ``v``,
``t``, ``masses``, ``radius``, ``box``; the training spacing, radius and box) and prints
``{"t": [...], "models": {name: {"mse": [...], "energy_rel_err": [...] or null}}}`` as the
rollout experiment does.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from egnn_jax import sim
from egnn_jax.dynamics import State

from ._cli import entry_points
from ._experiment import (
    Experiment,
    ExperimentData,
    IterationsConfig,
    load_npz,
)
from ._models import ModelSpec
from ._report import markdown_table, save_figure_atomic
from ._rollout_plots import plot_curves
from ._rollout_scores import (
    check_trajectory_file,
    curves_output,
    format_score,
    raise_if,
    roll_out,
    roller,
)

__all__ = ["EXPERIMENT", "MODEL_NAMES", "CollisionsExperimentConfig", "evaluate_file", "main"]

logger = logging.getLogger(__name__)

MODEL_NAMES = ("linear", "naive_egnn", "contact_step", "contact_projected", "contact_step_log")
LABELS = {
    "linear": "Linear (constant velocity)",
    "naive_egnn": "Naive EGNN-vel (bodies only)",
    "contact_step": "Contact-aware step",
    "contact_projected": "Contact-aware step + projection",
    "contact_step_log": "Contact-aware step, log loss",
}
CONTACT_TOLERANCE = 1e-3  # overlap or escape deeper than this fraction of r counts


@dataclasses.dataclass(frozen=True)
class CollisionsExperimentConfig(IterationsConfig):
    """The collisions experiment (defaults: the simulator's default data, all models).

    Attributes (besides `IterationsConfig`'s):
        n_train, n_valid, n_test: systems per split, from one simulated dataset.
        n_bodies, dim, radius, box, t_end, n_saved, forces: the simulator's settings.
        window, curriculum_steps, noise: the step models' unroll length K, the steps over
            which K grows from 1, and the noise added to each training window's first state.
        n_val_rollout: validation systems rolled out to select the best step.
    """

    models: tuple[str, ...] = MODEL_NAMES
    lr_schedule: str = "cosine"
    learning_rate: float = 1e-3
    clip_norm: float | None = 1.0
    n_train: int = 8_000
    n_valid: int = 1_000
    n_test: int = 1_000
    n_bodies: int = sim.CollisionsConfig.n_bodies
    dim: int = sim.CollisionsConfig.dim
    radius: float = sim.CollisionsConfig.radius
    box: float = sim.CollisionsConfig.box
    t_end: float = sim.CollisionsConfig.t_end
    n_saved: int = sim.CollisionsConfig.n_saved
    forces: str = sim.CollisionsConfig.forces
    iterations: int = 20_000
    eval_interval: int = 1_000
    window: int = 4
    curriculum_steps: int = 5_000
    noise: float = 1e-4
    num_layers: int = 3
    n_val_rollout: int = 200

    RUN_FIELDS: ClassVar[tuple[str, ...]] = ("models", "iterations")

    def __post_init__(self):
        for name in ("n_train", "n_valid", "n_test", "window", "n_val_rollout"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_train < self.batch_size:
            raise ValueError(f"n_train={self.n_train} < batch_size={self.batch_size}")
        if self.window >= self.n_saved:
            raise ValueError(f"window={self.window} needs more than {self.window} frames")
        self.simulator()  # the simulator validates its own settings
        super().__post_init__()

    def simulator(self) -> sim.CollisionsConfig:
        return sim.CollisionsConfig(
            n_trajectories=self.n_train + self.n_valid + self.n_test,
            n_bodies=self.n_bodies,
            dim=self.dim,
            radius=self.radius,
            box=self.box,
            t_end=self.t_end,
            n_saved=self.n_saved,
            forces=self.forces,
            seed=self.seed,
        )

    @property
    def dt(self) -> float:
        return self.t_end / (self.n_saved - 1)

    # What the rollout experiment's curve plots read.
    system: ClassVar[str] = "collisions"

    @property
    def frames(self) -> int:
        return self.n_saved


def simulator_command(cfg: sim.CollisionsConfig, out: str = "collisions.npz") -> str:
    """The command line that regenerates ``cfg``'s data (floats written to round-trip)."""
    default = sim.CollisionsConfig()
    parts = [
        f"python -m egnn_jax.sim collisions --n {cfg.n_trajectories} --seed {cfg.seed} --out {out}"
    ]
    for flag, field in (
        ("--dim", "dim"),
        ("--bodies", "n_bodies"),
        ("--radius", "radius"),
        ("--box", "box"),
        ("--forces", "forces"),
        ("--t-end", "t_end"),
        ("--n-saved", "n_saved"),
    ):
        value = getattr(cfg, field)
        if value != getattr(default, field):
            parts.append(f"{flag} {value!r}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join(parts)


def quick_config() -> CollisionsExperimentConfig:
    """A smoke run of the whole pipeline (well under a minute on a CPU)."""
    return CollisionsExperimentConfig(
        n_train=64,
        n_valid=16,
        n_test=16,
        n_saved=41,
        t_end=40 * CollisionsExperimentConfig().dt,
        iterations=40,
        eval_interval=20,
        batch_size=32,
        hidden_features=16,
        num_layers=2,
        window=3,
        curriculum_steps=20,
        n_val_rollout=16,
        learning_rate=1e-3,
    )


# --------------------------------------------------------------------------------------
# Data and scores
# --------------------------------------------------------------------------------------


def _batch(x, v, masses) -> dict:
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return {"x": f32(x), "v": f32(v), "h": f32(masses)[..., None]}


def _load(config: CollisionsExperimentConfig, data_dir: Path, progress) -> ExperimentData:
    cfg = config.simulator()
    ds = sim.load_or_simulate(cfg, data_dir, progress=bool(progress))
    sizes = (config.n_train, config.n_valid, config.n_test)
    bounds = np.cumsum([0, *sizes])
    splits = [
        _batch(*(a[bounds[i] : bounds[i + 1]] for a in (ds.x, ds.v, ds.masses))) for i in range(3)
    ]
    meta = ds.metadata
    metadata = {
        "dt": config.dt,
        "frames": config.n_saved,
        "simulator_command": simulator_command(cfg),
        "simulator": {
            k: meta.get(k)
            for k in (
                "content_hash",
                "n_refined",
                "n_redrawn",
                "median_pair_contacts",
                "median_wall_contacts",
                "max_rel_energy_error",
            )
        },
    }
    return ExperimentData(*splits, metadata)


def contact_violations(xs: jax.Array, radius: float, box: float) -> jax.Array:
    """Whether each frame of ``xs [B, T, M, n]`` has two bodies overlapping or a body outside
    the box by more than ``CONTACT_TOLERANCE · radius``: ``[B, T]``."""
    tol = CONTACT_TOLERANCE * radius
    outside = jnp.any(jnp.abs(xs) > box - radius + tol, axis=(2, 3))
    m = xs.shape[2]
    overlap = jnp.zeros(xs.shape[:2], bool)
    for i in range(m):
        for j in range(i + 1, m):
            d = jnp.linalg.norm(xs[:, :, i] - xs[:, :, j], axis=-1)
            overlap = overlap | (d < 2 * radius - tol)
    return outside | overlap


def collision_metrics(config: CollisionsExperimentConfig, spec, params, batch: dict) -> dict:
    """Roll every system of `batch` out from its first state.

    Returns ``mse`` (at the last frame), ``trajectory_mse`` (over frames after the first),
    ``mse_curve``, ``violation_fraction`` (predicted frames after the first with overlap or
    escape) with its curve, ``energy_curve`` / ``energy_rel_err`` (median relative error of
    the kinetic energy, None without velocities) and ``diverged_fraction``.
    """
    vs_true, h = batch["v"], batch["h"]
    xs, vs, _, gone, per_system = roll_out(spec, params, batch, config.dt)
    mse_curve = np.asarray(jnp.mean(per_system, axis=0))
    bad = contact_violations(xs, config.radius, config.box) | gone
    bad_curve = np.asarray(jnp.mean(bad, axis=0))
    energy_curve = None
    if vs is not None:
        kinetic = lambda v: 0.5 * jnp.sum(h[:, None, :, 0] * jnp.sum(v * v, axis=-1), axis=-1)
        e_true, e_pred = kinetic(vs_true), kinetic(vs)
        rel = jnp.where(gone, jnp.inf, jnp.abs(e_pred - e_true) / e_true)
        energy_curve = np.asarray(jnp.median(rel, axis=0))
    return {
        "mse": float(mse_curve[-1]),
        "trajectory_mse": float(np.mean(mse_curve[1:])),
        "violation_fraction": float(np.mean(bad_curve[1:])),
        "energy_rel_err": None if energy_curve is None else float(energy_curve[-1]),
        "diverged_fraction": float(jnp.mean(gone[:, -1])),
        "mse_curve": mse_curve.tolist(),
        "violation_curve": bad_curve.tolist(),
        "energy_curve": None if energy_curve is None else energy_curve.tolist(),
    }


def plot_systems(path: Path, config, predicted: dict, test: dict) -> None:
    """A few test systems with the walls drawn: true trajectories (black) and each model's."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    true = np.asarray(test["x"][:3])
    fig = Figure(figsize=(4.0 * len(true), 4.3))
    axes = np.atleast_1d(fig.subplots(1, len(true)))
    for i, ax in enumerate(axes):
        for k, (name, xs) in enumerate(predicted.items()):
            for body in range(xs.shape[2]):
                ax.plot(
                    *xs[i, :, body, :2].T,
                    color=f"C{k}",
                    lw=0.8,
                    alpha=0.8,
                    label=LABELS[name] if body == 0 else None,
                )
        for body in range(true.shape[2]):
            ax.plot(
                *true[i, :, body, :2].T,
                color="k",
                lw=1.4,
                ls="--",
                label="true" if body == 0 else None,
            )
            ax.scatter(*true[i, 0, body, :2], color="k", s=14, zorder=5)
        L = config.box
        ax.add_patch(Rectangle((-L, -L), 2 * L, 2 * L, fill=False, lw=2.0, color="0.3"))
        ax.set_xlim(-1.1 * L, 1.1 * L)
        ax.set_ylim(-1.1 * L, 1.1 * L)
        ax.set_aspect("equal")
        ax.set_title(f"test system {i}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"collisions: true (dashed) and predicted trajectories, t <= {config.t_end:g}")
    save_figure_atomic(fig, path)


# --------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------


class Collisions(Experiment):
    name = "collisions"
    description = "Bodies colliding with each other and with the walls of a box"
    Config = CollisionsExperimentConfig
    model_names = MODEL_NAMES
    default_workdir = Path("experiments/results/collisions")
    data_keys = ("x", "v", "h")
    report_splits = ("test",)

    def quick_config(self):
        return quick_config()

    def add_arguments(self, parser):
        parser.add_argument("--iterations", type=int, help="optimisation steps per model")
        parser.add_argument("--window", type=int, help="unroll length K of the step models")

    def config_overrides(self, args):
        return {"iterations": args.iterations, "window": args.window}

    def model_spec(self, name, config):
        dt = config.dt
        width, depth = config.hidden_features, config.num_layers
        if name == "linear":
            return ModelSpec(name, "constant_velocity", options={"dt": dt}.items())
        if name == "naive_egnn":  # the seed's EGNN-vel: |v|, the horizon, |x_i - x_j|
            options = {"dt": dt, "edge_features": "distance"}
            return ModelSpec(name, "one_shot", width, 4, options.items())
        options = {
            "dt": dt,
            "window": config.window,
            "curriculum_steps": config.curriculum_steps,
            "noise": config.noise,
            "radius": config.radius,
            "box": config.box,
            "project": name == "contact_projected",
        }
        if name.endswith("_log"):  # the variants' suffix, as in the rollout experiment
            options["loss"] = "log"
        return ModelSpec(name, "contact_step", width, depth, options.items())

    def load_data(self, config, data_dir, progress):
        return _load(config, data_dir, progress)

    def validation_data(self, config, data):
        return jax.tree.map(lambda a: a[: config.n_val_rollout], data.valid)

    def metrics(self, config, spec, params, batch):
        return collision_metrics(config, spec, params, batch)

    def read_evaluation_file(self, config, path):
        f = load_npz(path, ("x", "v", "t", "masses", "radius", "box"))
        x, v, t, masses = f["x"], f["v"], f["t"], f["masses"]
        problem = check_trajectory_file(x, v, t, masses, "masses", config.dt)
        if problem is None and not (
            np.allclose(f["radius"], config.radius) and np.allclose(f["box"], config.box)
        ):
            problem = (
                f"radius and box must be the training ones ({config.radius}, {config.box}); "
                f"got {f['radius']}, {f['box']}"
            )
        raise_if(problem, path)
        masses = np.broadcast_to(masses, (x.shape[0], x.shape[2]))
        return _batch(x, v, masses) | {"t": jnp.asarray(t - t[0], jnp.float32)}

    def evaluation_output(self, config, scores, batch):
        return curves_output(scores, batch)

    def plots(self, workdir, config, metrics, params, data):
        plot_curves(workdir, config, metrics, LABELS)
        test = data.test
        num_steps = test["x"].shape[1] - 1
        first = State(test["x"][:3, 0], test["v"][:3, 0], test["h"][:3])
        predicted = {
            name: np.asarray(
                roller(self.model_spec(name, config), num_steps)(params[name], first)[0]
            )
            for name in MODEL_NAMES
            if name in params
        }
        plot_systems(workdir / "trajectories.png", config, predicted, test)

    def format_table(self, metrics):
        header = [
            "model",
            "final-time MSE",
            "trajectory MSE",
            "frames with overlap/escape",
            "energy err (final)",
            "steps (best)",
            "train min",
        ]
        rows = []
        for name, r in self.ordered_rows(metrics):
            train, steps = r.get("train_seconds"), r.get("steps_done")
            rows.append(
                [
                    LABELS[name],
                    format_score(r["test_mse"]),
                    format_score(r["test_trajectory_mse"]),
                    f"{100 * r['test_violation_fraction']:.2f}%",
                    format_score(r.get("test_energy_rel_err"), pct=True),
                    "-" if not steps else f"{steps:,} ({r['best_step']:,})",
                    "-" if not train else f"{train / 60:.1f}",
                ]
            )
        return markdown_table(header, rows)


EXPERIMENT = Collisions()
train_and_evaluate, evaluate_file, main = entry_points(EXPERIMENT)


if __name__ == "__main__":
    sys.exit(main())
