"""The seed experiment: simulate three-body systems, train and compare four models.

    python -m egnn_jax.experiments.three_body                 # the seed experiment (make train)
    python -m egnn_jax.experiments.three_body --quick         # < 1 min on CPU
    python -m egnn_jax.experiments.three_body --workdir DIR --evaluate FILE.npz

Task: from the first saved step's positions and velocities, predict the last saved step's
positions (500 steps ahead by default). Models (`_models.ModelSpec`): ``linear``
(x0 + t v0, t fitted by least squares on the training set), ``gnn`` (non-equivariant GNN of
the same width and depth), ``egnn`` (EGNN, no velocity) and ``egnn_vel`` (EGNN, eq. 7), all
three networks trained by the same loop (`_train.train`) with the paper's hyper-parameters.

The pipeline is a composition of pure steps: `load_data` (simulate, or read the cache in
``<workdir>/data``) -> `featurise` -> `train` (Orbax checkpoints in ``<workdir>/checkpoints``)
-> evaluation (validation MSE, equivariance error) -> plots and ``<workdir>/metrics.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from egnn_jax.testing import random_orthogonal

from ._featurise import featurise, masses_vary, node_feature_names
from ._models import MODELS, ModelSpec, mse, training_run
from ._models import model_spec as _model_spec
from ._report import (
    LABELS,
    device,
    plot_loss_curves,
    save_figure_atomic,
    steps_per_second,
    versions,
)
from ._train import (
    TrainingDiverged,
    interrupt_on_signals,
    load_best_params,
    save_json_atomic,
    train_concurrently,
)

__all__ = [
    "MODEL_NAMES",
    "ThreeBodyExperimentConfig",
    "default_config",
    "equivariance_error",
    "evaluate_file",
    "load_data",
    "main",
    "model_spec",
    "quick_config",
    "train_and_evaluate",
]

logger = logging.getLogger(__name__)

DEFAULT_WORKDIR = Path("experiments/results/three_body")
MODEL_NAMES = ("linear", "gnn", "egnn", "egnn_vel")
_KINDS = MODELS


@dataclasses.dataclass(frozen=True)
class ThreeBodyExperimentConfig:
    """Everything that determines a run (stored in metrics.json; `--evaluate` rebuilds it).

    Attributes:
        n_trajectories: simulated systems; the last ``round(val_fraction * n)`` validate.
        val_fraction: share of the trajectories held out for validation.
        dim: spatial dimension of the simulation (2 or 3).
        seed: simulator seed, model-initialisation and shuffling seed.
        iterations: optimisation steps per trained model.
        batch_size: systems per step.
        eval_every: steps between validations (= length of one compiled `lax.scan` chunk);
            reduced to ``gcd(iterations, eval_every)`` when it does not divide `iterations`.
        learning_rate, weight_decay: Adam with coupled L2 (paper: 5e-4, 1e-12).
        hidden_features, num_layers: width and depth of every network (paper: 64, 4).
        models: names from ``linear, gnn, radial_field, egnn, egnn_vel``.
        n_plot_systems: validation systems drawn in predictions.png.
        n_equivariance_systems: validation systems used for the equivariance check (by
            default all of them: the same input shape as the validation predictions, so
            no extra compilation).
        equivariance_rtol: bound on the relative error for ``"equivariant": true``.
    """

    n_trajectories: int = 10_000
    val_fraction: float = 0.2
    dim: int = 2
    seed: int = 0
    iterations: int = 10_000
    batch_size: int = 100
    eval_every: int = 500
    learning_rate: float = 5e-4
    weight_decay: float = 1e-12
    hidden_features: int = 64
    num_layers: int = 4
    models: tuple[str, ...] = MODEL_NAMES
    n_plot_systems: int = 4
    n_equivariance_systems: int = 2_000
    equivariance_rtol: float = 1e-4

    def __post_init__(self):
        object.__setattr__(self, "models", tuple(self.models))
        unknown = [m for m in self.models if m not in _KINDS]
        if unknown or not self.models or len(set(self.models)) != len(self.models):
            raise ValueError(
                f"models must be distinct names from {tuple(_KINDS)}, got {self.models}"
            )
        if self.dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {self.dim}")
        for name in ("n_trajectories", "iterations", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.n_val < 1 or self.n_train < self.batch_size:
            raise ValueError(
                f"{self.n_trajectories} trajectories give n_train={self.n_train}, "
                f"n_val={self.n_val}; need n_val >= 1 and n_train >= batch_size={self.batch_size}"
            )

    @property
    def n_val(self) -> int:
        return int(round(self.val_fraction * self.n_trajectories))

    @property
    def n_train(self) -> int:
        return self.n_trajectories - self.n_val

    @property
    def chunk_len(self) -> int:
        return math.gcd(self.iterations, self.eval_every)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["models"] = list(self.models)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ThreeBodyExperimentConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "models" else v) for k, v in d.items() if k in fields})


def default_config() -> ThreeBodyExperimentConfig:
    """The seed experiment: 10,000 trajectories (8,000 / 2,000), 10,000 iterations, batch 100."""
    return ThreeBodyExperimentConfig()


def quick_config() -> ThreeBodyExperimentConfig:
    """A smoke run (well under a minute on a laptop CPU): small data, small nets, 300 steps."""
    return ThreeBodyExperimentConfig(
        n_trajectories=300,
        iterations=300,
        batch_size=50,
        eval_every=100,
        hidden_features=32,
        num_layers=2,
        n_equivariance_systems=20,
        learning_rate=1e-3,
    )


def model_spec(name: str, config: ThreeBodyExperimentConfig) -> ModelSpec:
    """The `ModelSpec` of a model name under `config`."""
    return _model_spec(name, config.hidden_features, config.num_layers)


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def _sim_config(config: ThreeBodyExperimentConfig):
    from egnn_jax import sim

    return dataclasses.replace(
        sim.ThreeBodyConfig(),
        n_trajectories=config.n_trajectories,
        dim=config.dim,
        seed=config.seed,
    )


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
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    return f32(x[:, 0]), f32(v[:, 0]), f32(masses), f32(x[:, -1])


def load_data(config: ThreeBodyExperimentConfig, data_dir: str | Path) -> dict:
    """Simulate (or load from `data_dir`) and split into train / validation end points.

    Returns:
        ``{"train": (x0, v0, masses, target), "val": (...), "metadata": dict}``; the first
        `n_train` trajectories train, the last `n_val` validate.
    """
    from egnn_jax import sim

    ds = sim.load_or_simulate(_sim_config(config), Path(data_dir))
    x0, v0, masses, target = _endpoints(ds.x, ds.v, ds.masses, what="simulated data")
    if x0.shape[0] != config.n_trajectories:
        raise ValueError(
            f"simulator returned {x0.shape[0]} trajectories, expected {config.n_trajectories}"
        )
    split = lambda a: (a[: config.n_train], a[config.n_train :])
    parts = [split(a) for a in (x0, v0, masses, target)]
    t = np.asarray(ds.t)
    return {
        "train": tuple(p[0] for p in parts),
        "val": tuple(p[1] for p in parts),
        "metadata": {
            "n_saved": int(np.asarray(ds.x).shape[1]),
            "t_start": float(t[0]),
            "t_end": float(t[-1]),
            "simulator": _jsonable(getattr(ds, "metadata", {})),
        },
    }


def _jsonable(obj):
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        if isinstance(obj, dict):
            return {str(k): _jsonable(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [_jsonable(v) for v in obj]
        if isinstance(obj, np.ndarray | np.generic):
            return obj.tolist()
        return repr(obj)


def _batch(parts, include_masses: bool) -> dict:
    x0, v0, masses, target = parts
    batch = featurise(x0, v0, masses, include_masses=include_masses, target=target)
    return {k: np.asarray(a) for k, a in batch.items()}


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


def _predictor(spec: ModelSpec, include_masses: bool):
    @jax.jit
    def predict(params, x0, v0, masses):
        return spec.predict(params, featurise(x0, v0, masses, include_masses=include_masses))

    return predict


def equivariance_error(
    spec: ModelSpec, params, x0, v0, masses, *, include_masses: bool, key, predict=None
) -> dict[str, float]:
    """Largest relative error of f(P x Q^T + t, P v Q^T) vs P f(x, v) Q^T + t.

    Q is a random rotation (det +1) and, separately, a random reflection (det -1); t a random
    translation; P a random permutation of the bodies. Features (|v|, distances) are
    recomputed from the transformed inputs. Errors are max |diff| / max(1, max |expected|),
    like `egnn_jax.testing.assert_equivariant`. `predict`: a jitted ``_predictor`` to reuse
    (it compiles once per input shape).
    """
    predict = _predictor(spec, include_masses) if predict is None else predict
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


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------


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
                label=LABELS[name],
            )
        ax.set_title(f"validation system {i}")
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("Start, true end and predicted end (x-y plane)")
    save_figure_atomic(fig, path)


# --------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------


def train_and_evaluate(
    config: ThreeBodyExperimentConfig,
    workdir: str | Path,
    *,
    resume: bool = False,
    progress: bool | None = None,
    data_dir: str | Path | None = None,
) -> dict:
    """Run the whole experiment and write metrics.json, loss_curves.png, predictions.png.

    Arguments:
        config: the experiment (see `default_config` / `quick_config`).
        workdir: output folder; data cache in ``data/``, checkpoints in ``checkpoints/``.
        resume: continue interrupted training runs from their latest checkpoints (finished
            runs are only reloaded); without it, existing checkpoints are replaced.
        progress: tqdm bars (``None``: only on a terminal).
        data_dir: simulation cache (default ``workdir/data``).

    Returns:
        The metrics dict written to ``workdir/metrics.json``.

    Raises:
        TrainingDiverged: a model's loss became NaN/inf (its last good checkpoint is kept).
    """
    t_total = time.perf_counter()
    workdir = Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    wall: dict = {}

    t = time.perf_counter()
    data = load_data(config, workdir / "data" if data_dir is None else Path(data_dir))
    wall["simulate"] = time.perf_counter() - t

    t = time.perf_counter()
    include_masses = masses_vary(np.concatenate([data["train"][2], data["val"][2]]))
    train_batch = _batch(data["train"], include_masses)
    val_batch = _batch(data["val"], include_masses)
    wall["featurise"] = time.perf_counter() - t

    key = jax.random.key(config.seed)
    results: dict = {}
    params_of: dict = {}
    histories: dict = {}
    wall["train"] = {}
    runs: dict = {}
    for name in config.models:
        spec = model_spec(name, config)
        if not spec.trainable:
            t = time.perf_counter()
            params = spec.init(None, train_batch)
            params_of[name] = params
            results[name] = {"t": float(params["t"]), "fit": "least squares on the training set"}
            wall["train"][name] = time.perf_counter() - t
            continue
        runs[name] = training_run(
            spec,
            key,
            train_batch,
            val_batch,
            num_steps=config.iterations,
            batch_size=config.batch_size,
            eval_every=config.chunk_len,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            workdir=workdir,
            resume=resume,
            progress=progress,
        )
    # The networks train side by side (one thread each): on a CPU a 3-body step is a chain
    # of small kernels that leaves a core idle, so this takes ~60% of sequential training.
    t = time.perf_counter()
    trained = train_concurrently(runs)
    wall["train_all_networks"] = time.perf_counter() - t
    for name, res in trained.items():
        wall["train"][name] = res.wall_seconds
        params_of[name] = res.params
        histories[name] = res.history
        results[name] = {
            "best_step": res.best_step,
            "best_val_loss_during_training": res.best_metrics.get("val_loss"),
            "final_train_loss": res.history[-1]["train_loss"] if res.history else None,
            "steps_this_session": res.num_steps,
            "resumed": res.resumed,
            "steps_per_second": steps_per_second(res.history),
            "num_params": int(sum(np.size(p) for p in jax.tree.leaves(res.params))),
        }
    results = {name: results[name] for name in config.models}

    t = time.perf_counter()
    preds = {}
    n_eq = min(config.n_equivariance_systems, config.n_val)
    eq_parts = [a[:n_eq] for a in data["val"][:3]]
    for name in config.models:
        spec = model_spec(name, config)
        predict = _predictor(spec, include_masses)
        pred = predict(params_of[name], *data["val"][:3])
        preds[name] = np.asarray(pred)
        results[name]["val_mse"] = float(mse(pred, val_batch["target"]))
        errs = equivariance_error(
            spec,
            params_of[name],
            *eq_parts,
            include_masses=include_masses,
            key=jax.random.fold_in(key, 7),
            predict=predict,
        )
        results[name]["equivariance_max_rel_err"] = max(errs.values())
        results[name]["equivariance_rel_err"] = errs
        results[name]["equivariant"] = max(errs.values()) <= config.equivariance_rtol
    wall["evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    plot_loss_curves(
        workdir / "loss_curves.png",
        histories,
        {k: v["val_mse"] for k, v in results.items()},
        title="Three-body: loss curves",
    )
    n_plot = min(config.n_plot_systems, config.n_val)
    _plot_predictions(
        workdir / "predictions.png",
        data["val"][0][:n_plot],
        data["val"][3][:n_plot],
        {k: p[:n_plot] for k, p in preds.items()},
    )
    wall["plot"] = time.perf_counter() - t
    wall["total"] = time.perf_counter() - t_total

    metrics = {
        "experiment": "three_body",
        "task": "predict the last saved positions from the first saved positions and velocities",
        "val_mse": {k: v["val_mse"] for k, v in results.items()},
        "models": results,
        "iterations": config.iterations,
        "n_train": config.n_train,
        "n_val": config.n_val,
        "features": {
            "include_masses": include_masses,
            "node_features": node_feature_names(include_masses),
            "edge_attr": ["|x0_i - x0_j|"],
        },
        "data": data["metadata"],
        "wall_seconds": wall,
        "device": device(),
        "versions": versions(),
        "config": config.to_dict(),
        "resumed": resume,
        "histories": histories,
    }
    save_json_atomic(workdir / "metrics.json", metrics)
    return metrics


def evaluate_file(workdir: str | Path, path: str | Path) -> dict[str, float]:
    """MSE of every model of a finished run in `workdir` on a simulator output file.

    The file (``.npz`` with arrays ``x``, ``v`` ``[N, T, M, dim]`` and ``masses`` ``[N, M]``)
    gives the inputs (first saved step) and targets (last saved step).

    Raises:
        FileNotFoundError: no metrics.json / checkpoints in `workdir`, or no such file.
        ValueError: the file has wrong arrays or shapes.
    """
    workdir = Path(workdir).expanduser().resolve()
    metrics_path = workdir / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(
            f"{metrics_path} not found: train first with "
            f"`python -m egnn_jax.experiments.three_body --workdir {workdir}`"
        )
    metrics = json.loads(metrics_path.read_text())
    config = ThreeBodyExperimentConfig.from_dict(metrics["config"])
    include_masses = bool(metrics["features"]["include_masses"])
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation file {path} not found")
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in ("x", "v", "masses") if k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable .npz file: {e}") from e
    missing = {"x", "v", "masses"} - set(arrays)
    if missing:
        raise ValueError(
            f"{path} lacks the arrays {sorted(missing)} (simulator format: x, v, t, masses)"
        )
    x0, v0, masses, target = _endpoints(
        arrays["x"], arrays["v"], arrays["masses"], what=str(path), dim=config.dim
    )
    if not include_masses and masses_vary(masses):
        logger.warning("%s has varying masses, but the models were trained without them", path)

    out = {}
    for name in config.models:
        spec = model_spec(name, config)
        if spec.trainable:
            sample = featurise(x0[:1], v0[:1], masses[:1], include_masses=include_masses)
            like = jax.eval_shape(spec.init, jax.random.key(0), sample)
            params = load_best_params(workdir, name, like)
        else:
            params = {"t": jnp.asarray(metrics["models"][name]["t"], jnp.float32)}
        pred = _predictor(spec, include_masses)(params, x0, v0, masses)
        out[name] = float(mse(pred, jnp.asarray(target)))
    return out


def format_table(metrics: dict) -> str:
    """Markdown table of the per-model results."""
    lines = [
        "| model | val MSE | best step | steps/s | train s | equivariance rel. err |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in metrics["models"].items():
        sps = r.get("steps_per_second")
        lines.append(
            f"| {LABELS[name]} | {r['val_mse']:.4g} | {r.get('best_step', '-')} | "
            f"{'-' if sps is None else f'{sps:.0f}'} | "
            f"{metrics['wall_seconds']['train'][name]:.1f} | {r['equivariance_max_rel_err']:.1e} |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m egnn_jax.experiments.three_body",
        description="Simulate three-body data, train Linear / GNN / EGNN / EGNN-vel, compare.",
    )
    p.add_argument("--iterations", type=int, help="optimisation steps per model (default 10000)")
    p.add_argument("--n-trajectories", type=int, help="simulated systems (default 10000)")
    p.add_argument("--dim", type=int, choices=(2, 3), help="spatial dimension (default 2)")
    p.add_argument("--quick", action="store_true", help="small smoke run (< 1 min on CPU)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"outputs, data cache and checkpoints (default {DEFAULT_WORKDIR}/)",
    )
    p.add_argument("--resume", action="store_true", help="continue interrupted training runs")
    p.add_argument("--seed", type=int, help="simulation, initialisation and shuffling seed")
    p.add_argument("--models", help=f"comma-separated subset of {','.join(_KINDS)}")
    p.add_argument("--data-dir", type=Path, help="simulation cache (default WORKDIR/data)")
    p.add_argument(
        "--evaluate",
        type=Path,
        metavar="FILE.npz",
        help="print JSON of each trained model's MSE on a simulator output file",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    args = _parser().parse_args(argv)
    interrupt_on_signals()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.evaluate is not None:
            print(json.dumps(evaluate_file(args.workdir, args.evaluate), indent=2, sort_keys=True))
            return 0
        config = quick_config() if args.quick else default_config()
        overrides = {
            "iterations": args.iterations,
            "n_trajectories": args.n_trajectories,
            "dim": args.dim,
            "seed": args.seed,
            "models": None if args.models is None else tuple(args.models.split(",")),
        }
        config = dataclasses.replace(
            config, **{k: v for k, v in overrides.items() if v is not None}
        )
        metrics = train_and_evaluate(
            config, args.workdir, resume=args.resume, data_dir=args.data_dir
        )
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: training state saved; continue with --resume", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(metrics))
    w = metrics["wall_seconds"]
    print(
        f"\nn_train={metrics['n_train']} n_val={metrics['n_val']} "
        f"iterations={metrics['iterations']}"
        f" | wall s: simulate {w['simulate']:.1f}, train {w['train_all_networks']:.1f}, "
        f"evaluate {w['evaluate']:.1f}, plot {w['plot']:.1f}, total {w['total']:.1f}"
        f" | {metrics['device']['description']}\nwrote {Path(args.workdir) / 'metrics.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
