"""The seed experiment: simulate three-body systems, train and compare four models.

    python -m egnn_jax.experiments.three_body --overwrite    # the seed experiment (make train)
    python -m egnn_jax.experiments.three_body --quick --workdir /tmp/tb   # < 1 min on CPU
    python -m egnn_jax.experiments.three_body --evaluate FILE.npz        # committed models

Task: from the first saved step's positions and velocities, predict the last saved step's
positions (500 steps ahead, t = 2). 10,000 simulated 2-D systems: 8,000 train, 1,000
validation (selects each network's best step), 1,000 test (reported). Models (`_models`):
``linear`` (x0 + t v0, t fitted by least squares on the training set), ``gnn`` (the
reference GNN: node inputs [x, v], edge input m_i m_j), ``egnn`` (EGNN, no velocity) and
``egnn_vel`` (EGNN, eq. 7); the equivariant models read the seed's features: node |v0|, edge
|x_i - x_j|. Paper hyper-parameters; the framework (`_framework`) does the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from egnn_jax import sim
from egnn_jax.testing import random_orthogonal

from ._cli import entry_points
from ._experiment import (
    EvaluationFileError,
    Experiment,
    ExperimentData,
    IterationsConfig,
    load_npz,
    split_sizes,
)
from ._featurise import featurise, masses_vary
from ._models import ModelSpec, label
from ._report import markdown_table, save_figure_atomic

__all__ = [
    "EXPERIMENT",
    "MODEL_NAMES",
    "ThreeBodyExperimentConfig",
    "equivariance_error",
    "evaluate_file",
    "main",
    "quick_config",
    "train_and_evaluate",
]

logger = logging.getLogger(__name__)

MODEL_NAMES = ("linear", "gnn", "egnn", "egnn_vel")


@dataclasses.dataclass(frozen=True)
class ThreeBodyExperimentConfig(IterationsConfig):
    """The seed experiment (defaults) and its variants.

    Attributes (besides `IterationsConfig`'s):
        n_trajectories: simulated systems; the last ``valid_fraction`` and ``test_fraction``
            of them validate and test, the rest train.
        dim: spatial dimension of the simulation (2 or 3).
        n_plot_systems: test systems drawn in predictions.png.
        n_equivariance_systems: validation systems of the equivariance check.
        equivariance_rtol: bound on the relative error for ``"equivariant": true``.
    """

    models: tuple[str, ...] = MODEL_NAMES
    n_trajectories: int = 10_000
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    dim: int = 2
    iterations: int = 10_000
    eval_interval: int = 500
    n_plot_systems: int = 4
    n_equivariance_systems: int = 1_000
    equivariance_rtol: float = 1e-4

    RUN_FIELDS: ClassVar[tuple[str, ...]] = (
        "models",
        "iterations",
        "n_plot_systems",
        "n_equivariance_systems",
        "equivariance_rtol",
    )

    def __post_init__(self):
        if self.dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {self.dim}")
        if self.n_trajectories < 1:
            raise ValueError(f"n_trajectories must be >= 1, got {self.n_trajectories}")
        if not (0 < self.valid_fraction and 0 < self.test_fraction) or (
            self.valid_fraction + self.test_fraction >= 1
        ):
            raise ValueError("need 0 < valid_fraction, test_fraction and their sum < 1")
        if min(self.n_valid, self.n_test) < 1 or self.n_train < self.batch_size:
            raise ValueError(
                f"{self.n_trajectories} trajectories give n_train={self.n_train}, "
                f"n_valid={self.n_valid}, n_test={self.n_test}; need n_valid, n_test >= 1 "
                f"and n_train >= batch_size={self.batch_size}"
            )
        super().__post_init__()

    @property
    def n_valid(self) -> int:
        return int(round(self.valid_fraction * self.n_trajectories))

    @property
    def n_test(self) -> int:
        return int(round(self.test_fraction * self.n_trajectories))

    @property
    def n_train(self) -> int:
        return self.n_trajectories - self.n_valid - self.n_test


def quick_config() -> ThreeBodyExperimentConfig:
    """A smoke run (well under a minute on a laptop CPU): small data, small nets, 300 steps."""
    return ThreeBodyExperimentConfig(
        n_trajectories=400,
        iterations=300,
        batch_size=50,
        eval_interval=100,
        hidden_features=32,
        num_layers=2,
        n_equivariance_systems=20,
        learning_rate=1e-3,
    )


# --------------------------------------------------------------------------------------
# Data and features
# --------------------------------------------------------------------------------------


def _endpoints(x, v, masses, *, what: str, dim: int | None = None):
    """Check trajectory arrays and return (x0, v0, masses [N, M], target) as float32."""
    x, v, masses = np.asarray(x), np.asarray(v), np.asarray(masses)
    if x.ndim != 4:
        raise ValueError(f"{what}: x must have shape [N, T, M, dim], got {x.shape}")
    if v.shape != x.shape:
        raise ValueError(f"{what}: v must have the shape of x {x.shape}, got {v.shape}")
    n, t, m, d = x.shape
    if n < 1 or t < 2 or m < 2:
        raise ValueError(f"{what}: need N >= 1 systems, T >= 2 steps, M >= 2 bodies; got {x.shape}")
    if dim is not None and d != dim:
        raise ValueError(f"{what}: the models were trained in {dim}-D, the data is {d}-D")
    if masses.shape == (m,):
        masses = np.broadcast_to(masses, (n, m))
    if masses.shape != (n, m):
        raise ValueError(f"{what}: masses must have shape [N, M] = {(n, m)}, got {masses.shape}")
    for name, a in (("x", x), ("v", v), ("masses", masses)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{what}: {name} has NaN or infinite entries")
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    return f32(x[:, 0]), f32(v[:, 0]), f32(masses), f32(x[:, -1])


def features(x0, v0, masses, target=None) -> dict:
    """The batch every model reads (see `_models`): the seed's invariant features for the
    equivariant models (node |v0|, edge |x0_i - x0_j|) and the reference GNN's inputs (node
    [x0, v0], edge m_i m_j, the gravitational counterpart of the N-body code's q_i q_j)."""
    batch = featurise(x0, v0, masses, include_masses=False, target=target)
    m = jnp.asarray(masses, jnp.float32)
    batch["gnn_node"] = jnp.concatenate([batch["x0"], batch["v0"]], axis=-1)
    batch["gnn_edge"] = (m[..., :, None] * m[..., None, :])[..., None]
    batch["masses"] = m
    return batch


def _sim_config(config: ThreeBodyExperimentConfig) -> sim.ThreeBodyConfig:
    return sim.ThreeBodyConfig(
        n_trajectories=config.n_trajectories, dim=config.dim, seed=config.seed
    )


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: np.asarray(o).tolist()))


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _predictor(spec: ModelSpec):
    @jax.jit
    def predict(params, x0, v0, masses):
        return spec.predict(params, features(x0, v0, masses))

    return predict


def equivariance_error(spec: ModelSpec, params, x0, v0, masses, *, key) -> dict[str, float]:
    """Largest relative error of f(P x Q^T + t, P v Q^T) vs P f(x, v) Q^T + t.

    Q is a random rotation (det +1) and, separately, a random reflection (det -1); t a random
    translation; P a random permutation of the bodies. Features (|v|, distances, the GNN's
    raw inputs) are recomputed from the transformed inputs. Errors are
    max |diff| / max(1, max |expected|), like `egnn_jax.testing.assert_equivariant`.
    """
    predict = _predictor(spec)
    x0, v0, masses = (jnp.asarray(a, jnp.float32) for a in (x0, v0, masses))
    base = np.asarray(predict(params, x0, v0, masses), np.float64)
    _, m, d = x0.shape
    out = {}
    for i, reflection in enumerate((False, True)):
        kq, kt, kp = jax.random.split(jax.random.fold_in(key, i), 3)
        q = random_orthogonal(kq, d, jnp.float32, reflection=reflection)
        shift = (1.0 + jnp.max(jnp.abs(x0))) * jax.random.normal(kt, (1, 1, d), jnp.float32)
        perm = jax.random.permutation(kp, m)
        got = predict(params, x0[:, perm] @ q.T + shift, v0[:, perm] @ q.T, masses[:, perm])
        qn, sn, pn = np.asarray(q, np.float64), np.asarray(shift, np.float64), np.asarray(perm)
        want = base[:, pn] @ qn.T + sn
        err = np.max(np.abs(np.asarray(got, np.float64) - want)) / max(1.0, np.max(np.abs(want)))
        out["reflection" if reflection else "rotation"] = float(err)
    return out


def _plot_predictions(path: Path, x0, target, preds: dict) -> None:
    from matplotlib.figure import Figure

    n = x0.shape[0]
    fig = Figure(figsize=(3.6 * n, 3.8))
    axes = np.atleast_1d(fig.subplots(1, n))
    markers = ["s", "^", "D", "v", "P", "X"]
    for i, ax in enumerate(axes):
        for b in range(x0.shape[1]):
            ax.plot(
                [x0[i, b, 0], target[i, b, 0]],
                [x0[i, b, 1], target[i, b, 1]],
                color="lightgray",
                lw=0.8,
                zorder=0,
            )
        ax.scatter(x0[i, :, 0], x0[i, :, 1], facecolors="none", edgecolors="k", s=60, label="start")
        ax.scatter(target[i, :, 0], target[i, :, 1], marker="*", color="k", s=110, label="true end")
        for k, (name, p) in enumerate(preds.items()):
            ax.scatter(
                p[i, :, 0],
                p[i, :, 1],
                marker=markers[k % len(markers)],
                s=35,
                alpha=0.8,
                label=label(name),
            )
        ax.set_title(f"test system {i}")
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("Start, true end and predicted end (x-y plane)")
    save_figure_atomic(fig, path)


# --------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------


class ThreeBody(Experiment):
    name = "three_body"
    description = "Three-body seed experiment: first saved state -> last (t = 2)"
    Config = ThreeBodyExperimentConfig
    model_names = MODEL_NAMES
    default_workdir = Path("experiments/results/three_body")
    data_keys = ("x0", "v0", "masses", "target")

    def quick_config(self):
        return quick_config()

    def add_arguments(self, parser):
        parser.add_argument("--iterations", type=int, help="optimisation steps per model (10000)")
        parser.add_argument("--n-trajectories", type=int, help="simulated systems (10000)")
        parser.add_argument("--dim", type=int, choices=(2, 3), help="spatial dimension (2)")

    def config_overrides(self, args):
        return {
            "iterations": args.iterations,
            "n_trajectories": args.n_trajectories,
            "dim": args.dim,
        }

    def load_data(self, config, data_dir, progress):
        ds = sim.load_or_simulate(_sim_config(config), data_dir, progress=bool(progress))
        x0, v0, masses, target = _endpoints(ds.x, ds.v, ds.masses, what="simulated data")
        bounds = np.cumsum([0, config.n_train, config.n_valid, config.n_test])
        split = lambda i: features(
            *(a[bounds[i] : bounds[i + 1]] for a in (x0, v0, masses, target))
        )
        t = np.asarray(ds.t)
        metadata = {
            "n_saved": int(ds.x.shape[1]),
            "t_start": float(t[0]),
            "t_end": float(t[-1]),
            "splits": split_sizes(config),
            "simulator": _jsonable(ds.metadata),
        }
        return ExperimentData(split(0), split(1), split(2), metadata)

    def read_evaluation_file(self, config, path):
        arrays = load_npz(path, ("x", "v", "masses"))
        try:
            x0, v0, masses, target = _endpoints(
                arrays["x"], arrays["v"], arrays["masses"], what=str(path), dim=config.dim
            )
        except ValueError as e:
            raise EvaluationFileError(str(e)) from e
        if masses_vary(masses):
            logger.warning("%s has varying masses; the models were trained on equal ones", path)
        return features(x0, v0, masses, target)

    def extra_results(self, config, spec, params, data):
        n = min(config.n_equivariance_systems, config.n_valid)
        errs = equivariance_error(
            spec,
            params,
            data.valid["x0"][:n],
            data.valid["v0"][:n],
            data.valid["masses"][:n],
            key=jax.random.key(config.effective_train_seed + 7),
        )
        worst = max(errs.values())
        return {
            "equivariance_rel_err": errs,
            "equivariance_max_rel_err": worst,
            "equivariant": worst <= config.equivariance_rtol,
        }

    def plots(self, workdir, config, metrics, params, data):
        n = min(config.n_plot_systems, config.n_test)
        batch = jax.tree.map(lambda a: a[:n], data.test)
        preds = {
            name: np.asarray(jax.jit(self.model_spec(name, config).predict)(params[name], batch))
            for name in params
        }
        _plot_predictions(workdir / "predictions.png", batch["x0"], batch["target"], preds)

    def format_table(self, metrics):
        header = ["model", "test MSE", "valid MSE", "best step", "steps/s", "equivariance error"]
        rows = []
        for name, r in self.ordered_rows(metrics):
            sps = r.get("steps_per_second")
            rows.append(
                [
                    label(name),
                    f"{r['test_mse']:.4g}",
                    f"{r['valid_mse']:.4g}",
                    f"{r['best_step']:,}" if "best_step" in r else "-",
                    "-" if sps is None else f"{sps:.0f}",
                    f"{r['equivariance_max_rel_err']:.1e}",
                ]
            )
        return markdown_table(header, rows)


EXPERIMENT = ThreeBody()
# The module's API: ``train_and_evaluate(config, workdir, ...)``, ``evaluate_file(workdir,
# path)`` and ``main(argv)`` (the command line), all with EXPERIMENT bound.
train_and_evaluate, evaluate_file, main = entry_points(EXPERIMENT)


if __name__ == "__main__":
    sys.exit(main())
