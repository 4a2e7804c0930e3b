"""Long-horizon rollouts: learned simulators that do not diverge (the seed study's first failure).

    python -m egnn_jax.experiments.rollout                        # three-body, all models
    python -m egnn_jax.experiments.rollout --system charged       # the N-body paper task
    python -m egnn_jax.experiments.rollout --quick --workdir /tmp/r
    python -m egnn_jax.experiments.rollout --evaluate FILE.npz    # [--system charged]

Three-body: the seed's 10,000 systems (8,000 / 1,000 / 1,000), every one of the 500 saved
frames (t in [0, 2], spacing 2/499); a longer test set of 1,000 other systems to t = 8 with
the same spacing measures extrapolation. Charged N-body: the EGNN paper's data (the reference
generator's stream, seed 43; 3,000 / 2,000 / 2,000 systems), frames 30 to 40. Every model
starts from the first state and predicts every later saved frame:

``linear`` (constant velocity, the floor), ``one_shot`` (EGNN-vel from the first state to
each horizon, the horizon an input), ``naive_step`` (a step model trained on one-step
pairs), ``multi_step`` (the same model trained by backpropagation through windows of K
steps, K growing by curriculum, with noise injection), ``multi_step_pushforward`` (the same
windows, each step trained on the model's own previous prediction without backpropagating
through it), ``force_field`` (an EGNN acceleration
integrated by leapfrog, trained through the solver on windows; ``force_field_fine``, charged
only: the same on a finer solver grid, trained on one-interval windows), ``potential`` (a learned
invariant potential, forces by autodiff, leapfrog: energy conserved by construction) and
``true_simulator`` (the physics itself integrated the same way, the ceiling). See
`_rollout_models` for the kinds and their losses.

``--evaluate FILE.npz`` takes a simulator output (``x [N, T, M, dim]``, ``v``, ``t``, and
``masses`` or ``charges``; longer than the training trajectories is fine, with the same
spacing) and prints ``{"t": [...], "models": {name: {"mse": [...], "energy_rel_err": [...]
or null}}}``: the position MSE at every saved time and the median relative error of the
true system's energy computed from the predicted state. A model that diverges reports
Infinity from that time on, and the log names the step.
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
from ._report import markdown_table
from ._rollout_plots import plot_curves, plot_trajectories
from ._rollout_scores import (
    check_trajectory_file,
    curves_output,
    format_score,
    raise_if,
    roll_out,
    roller,
)

__all__ = ["EXPERIMENT", "MODEL_NAMES", "RolloutConfig", "evaluate_file", "main"]

logger = logging.getLogger(__name__)

SYSTEMS = ("three-body", "charged")
MODEL_NAMES = (
    "linear",
    "one_shot",
    "naive_step",
    "multi_step",
    "multi_step_pushforward",
    "multi_step_pushforward_log",
    "force_field",
    "force_field_fine",
    "potential",
    "true_simulator",
)
# Variants that only the charged task needs: its close encounters are stiff (see
# `RolloutConfig.fine_substeps`), the three-body data's softened gravity is not.
CHARGED_ONLY = ("force_field_fine",)
# Trained only when named with --models: the pushforward model on the log loss (see
# `_rollout_models.LOSSES`).
ON_DEMAND = ("multi_step_pushforward_log",)
LABELS = {
    "linear": "Linear (constant velocity)",
    "one_shot": "One-shot EGNN-vel",
    "naive_step": "Step model, one-step loss",
    "multi_step": "Step model, multi-step loss",
    "multi_step_pushforward": "Step model, multi-step pushforward",
    "multi_step_pushforward_log": "Step model, multi-step pushforward, log loss",
    "force_field": "Force field",
    "force_field_fine": "Force field, fine solver steps",
    "potential": "Learned potential",
    "true_simulator": "True simulator",
}
VALID_TIME_THRESHOLD = 0.1  # a system's MSE above this ends its "valid time"


@dataclasses.dataclass(frozen=True)
class RolloutConfig(IterationsConfig):
    """The rollout experiment (defaults: three-body; `charged_config` for the N-body task).

    Attributes (besides `IterationsConfig`'s):
        system: ``"three-body"`` or ``"charged"``.
        n_train, n_valid, n_test: systems per split.
        n_saved, t_end: three-body frames and horizon of the training trajectories.
        long_t_end, n_long_test, long_test_seed: the longer three-body test set (same
            spacing, other systems).
        G, softening: the three-body physics (for the true simulator and the energy).
        sampler, first_frame, last_frame: the charged data (the reference generator's
            stream) and the frames of the task (30 to 40: the paper's), on which validation
            and test roll out.
        train_first_frame, train_last_frame: the charged frames the trained models draw their
            windows from (default: the task's). The training trajectories hold frames 0 to
            48; a wider range gives the step models more windows of the same trajectories
            (the one-shot model, which learns from a window's first frame, needs the task's).
        iterations, eval_interval: as in `IterationsConfig` (the learning rate decays
            along a cosine over the run: `lr_schedule`).
        window, curriculum_steps: the multi-step models' unroll length K and the steps over
            which K grows from 1.
        noise, step_noise: the Gaussian noise added to each training window's first state
            for the force field and the potential, and for the multi-step model. The step
            model's must stay well below one step's displacement (|v| dt ~ 0.002): it is asked
            to land on the true next state, so larger noise is most of what it would learn.
        force_layers, substeps: depth of the force-field and potential EGNNs; leapfrog steps
            per saved interval.
        fine_substeps: the leapfrog steps per saved interval of ``force_field_fine``. The
            charged bodies' close encounters are stiff: the true forces integrated by 4
            leapfrog steps per frame land at an MSE of 0.090 at frame 40, by 32 at 0.0012
            (`python scripts/charged_solver_error.py`), so a learned force field on the coarse
            grid spends its capacity correcting the solver.
        fine_window: the unroll length K of ``force_field_fine``'s training windows (its
            validation and test still roll out the whole task). Each window costs
            ``fine_substeps`` solver steps per interval forward and back, so one interval
            (the default) keeps a training step at ~0.45 s on the 2-core CPU, where the
            task's K = 10 took 5.2 s.
        n_val_rollout: validation systems rolled out to select the best step.
    """

    models: tuple[str, ...] = tuple(m for m in MODEL_NAMES if m not in CHARGED_ONLY + ON_DEMAND)
    lr_schedule: str = "cosine"
    system: str = "three-body"
    n_train: int = 8_000
    n_valid: int = 1_000
    n_test: int = 1_000
    # The seed study's simulation (the simulator's defaults).
    n_saved: int = sim.ThreeBodyConfig.n_saved
    t_end: float = sim.ThreeBodyConfig.t_end
    long_t_end: float = 8.0
    n_long_test: int = 1_000
    long_test_seed: int = 1
    G: float = sim.ThreeBodyConfig.G
    softening: float = sim.ThreeBodyConfig.softening
    sampler: str = "numpy-legacy"
    first_frame: int = 30
    last_frame: int = 40
    train_first_frame: int = 30
    train_last_frame: int = 40
    iterations: int = 6_000
    eval_interval: int = 500
    window: int = 8
    curriculum_steps: int = 3_000
    noise: float = 0.003
    step_noise: float = 1e-4
    force_layers: int = 2
    substeps: int = 1
    fine_substeps: int = 32
    fine_window: int = 1
    n_val_rollout: int = 200

    RUN_FIELDS: ClassVar[tuple[str, ...]] = (
        "models",
        "iterations",
        "long_t_end",
        "n_long_test",
        "long_test_seed",
    )

    def __post_init__(self):
        if self.system not in SYSTEMS:
            raise ValueError(f"system must be one of {SYSTEMS}, got {self.system!r}")
        if self.sampler not in sim.SAMPLERS:
            raise ValueError(f"sampler must be one of {sim.SAMPLERS}, got {self.sampler!r}")
        for name in ("n_train", "n_valid", "n_test", "window", "fine_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_train < self.batch_size:
            raise ValueError(f"n_train={self.n_train} < batch_size={self.batch_size}")
        for name in ("window", "fine_window"):
            if getattr(self, name) >= self.frames:
                k = getattr(self, name)
                raise ValueError(f"{name}={k} needs more than {k} frames")
        if self.system == "charged":
            train = (self.train_first_frame, self.train_last_frame)
            if not 0 <= train[0] < train[1] < sim.ChargedConfig().n_frames:
                raise ValueError(
                    f"train frames {train[0]}:{train[1]} must lie in 0:"
                    f"{sim.ChargedConfig().n_frames - 1}, first < last"
                )
            for name in ("window", "fine_window"):
                if getattr(self, name) > train[1] - train[0]:
                    k = getattr(self, name)
                    raise ValueError(f"{name}={k} needs more train frames than {train}")
            if "one_shot" in self.models and train != (self.first_frame, self.last_frame):
                raise ValueError(
                    "one_shot learns from the first training frame, so it needs the task's "
                    f"frames {self.first_frame}:{self.last_frame} for training; got "
                    f"{train[0]}:{train[1]} (leave one_shot out with --models)"
                )
        if self.system == "three-body" and self.long_t_end <= self.t_end:
            raise ValueError("long_t_end must exceed t_end")
        super().__post_init__()

    @property
    def frames(self) -> int:
        """Saved frames per training trajectory."""
        if self.system == "three-body":
            return self.n_saved
        return self.last_frame - self.first_frame + 1

    @property
    def dt(self) -> float:
        """Time between saved frames."""
        if self.system == "three-body":
            return self.t_end / (self.n_saved - 1)
        charged = sim.ChargedConfig()
        return charged.dt * charged.save_every

    @property
    def n_long_saved(self) -> int:
        return round(self.long_t_end / self.dt) + 1


def charged_config() -> RolloutConfig:
    """The charged N-body paper task: frames 30 -> 40 on the paper's data.

    The multi-step models unroll the whole task (K = 10 saved intervals); the force field
    takes 4 leapfrog steps per interval, ``force_field_fine`` 32 (the true forces on the
    coarse grid are 0.090 off at frame 40, on the fine one 0.0012) and trains on windows of
    one interval (`RolloutConfig.fine_window`). The learned potential is left
    out here: training it through 40 solver steps of second derivatives costs more than this
    CPU affords.
    """
    return RolloutConfig(
        models=tuple(m for m in MODEL_NAMES if m != "potential" and m not in ON_DEMAND),
        system="charged",
        seed=43,
        n_train=3_000,
        n_valid=2_000,
        n_test=2_000,
        iterations=10_000,
        window=10,
        substeps=4,
    )


def quick_config(system: str = "three-body") -> RolloutConfig:
    """A smoke run of the whole pipeline (under a minute on a CPU)."""
    common = dict(
        n_train=100,
        n_valid=20,
        n_test=20,
        iterations=60,
        eval_interval=30,
        batch_size=50,
        hidden_features=16,
        num_layers=2,
        force_layers=1,
        window=3,
        curriculum_steps=30,
        n_val_rollout=20,
        learning_rate=1e-3,
    )
    if system == "charged":
        return dataclasses.replace(charged_config(), **common, substeps=2, fine_substeps=3)
    dt = RolloutConfig().dt
    return RolloutConfig(
        **common, n_saved=60, t_end=59 * dt, long_t_end=4 * 59 * dt, n_long_test=10
    )


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def _batch(x, v, node) -> dict:
    """Trajectories ``x``, ``v`` `[N, T, M, n]` and node attributes `[N, M]` as a batch."""
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return {"x": f32(x), "v": f32(v), "h": f32(node)[..., None]}


def _three_body(config: RolloutConfig, data_dir: Path, progress) -> ExperimentData:
    sizes = (config.n_train, config.n_valid, config.n_test)
    cfg = sim.ThreeBodyConfig(
        n_trajectories=sum(sizes),
        n_saved=config.n_saved,
        t_end=config.t_end,
        G=config.G,
        softening=config.softening,
        seed=config.seed,
    )
    ds = sim.load_or_simulate(cfg, data_dir, progress=bool(progress))
    bounds = np.cumsum([0, *sizes])
    splits = [
        _batch(*(a[bounds[i] : bounds[i + 1]] for a in (ds.x, ds.v, ds.masses))) for i in range(3)
    ]
    long_cfg = dataclasses.replace(
        cfg,
        n_trajectories=config.n_long_test,
        n_saved=config.n_long_saved,
        t_end=config.long_t_end,
        seed=config.long_test_seed,
    )
    long = sim.load_or_simulate(long_cfg, data_dir, progress=bool(progress))
    metadata = {
        "dt": config.dt,
        "frames": config.frames,
        "simulator": {k: ds.metadata.get(k) for k in ("content_hash", "n_refined", "n_rejected")},
        "long_test": {
            "t_end": config.long_t_end,
            "frames": config.n_long_saved,
            **{k: long.metadata.get(k) for k in ("content_hash", "n_refined", "n_rejected")},
        },
    }
    extra = {"long_test": _batch(long.x, long.v, long.masses)}
    return ExperimentData(*splits, metadata, extra)


def _charged(config: RolloutConfig, data_dir: Path, progress) -> ExperimentData:
    task_frames = slice(config.first_frame, config.last_frame + 1)
    train_frames = slice(config.train_first_frame, config.train_last_frame + 1)
    splits, metadata = [], {"dt": config.dt, "frames": config.frames}
    for split, n in (("train", config.n_train), ("valid", config.n_valid), ("test", config.n_test)):
        frames = train_frames if split == "train" else task_frames
        ds = sim.charged_split(
            data_dir,
            split,
            n_train=10_000,
            n_valid=config.n_valid,
            n_test=config.n_test,
            seed=config.seed,
            progress=bool(progress),
            sampler=config.sampler,
        )
        splits.append(_batch(ds.x[:n, frames], ds.v[:n, frames], ds.charges[:n]))
        metadata[split] = {"content_hash": ds.metadata.get("content_hash")}
    return ExperimentData(*splits, metadata)


def _energy(config: RolloutConfig, x, v, h) -> jax.Array:
    """The true system's energy of states ``x``, ``v`` `[B, T, M, n]`, ``h`` `[B, M, 1]`:
    returns `[B, T]`."""
    layout = lambda a: jnp.moveaxis(a, (0, 1), (-2, -1))  # [M, n, B, T]
    node = jnp.moveaxis(h[..., 0], 0, -1)[..., None]  # [M, B, 1]
    if config.system == "three-body":
        return sim.gravity_energy(layout(x), layout(v), node, config.G, config.softening)
    return sim.charged_energy(layout(x), layout(v), node)


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


def _at(curve, dt: float, times) -> dict[str, float]:
    return {f"{t:g}": float(curve[round(t / dt)]) for t in times if round(t / dt) < len(curve)}


def rollout_metrics(config: RolloutConfig, spec: ModelSpec, params, batch: dict) -> dict:
    """Roll every system of `batch` out from its first state; scores per saved time.

    Returns:
        ``mse_curve`` (position MSE over systems, bodies and coordinates at every saved time;
        Infinity from the first time any system diverged), ``energy_curve`` (median over
        systems of the true energy's relative error, or None without velocities), the same
        at the report times (``mse_at``, ``energy_rel_err_at``), ``mse`` (at the last
        frame), ``trajectory_mse`` (averaged over the frames after the first),
        ``valid_time_median`` (median over systems of the first time the system's MSE exceeds
        0.1; the horizon if never) and ``diverged_fraction``.
    """
    xs_true, vs_true, h = batch["x"], batch["v"], batch["h"]
    num_steps = xs_true.shape[1] - 1
    xs, vs, _, gone, per_system = roll_out(spec, params, batch, config.dt)
    mse_curve = jnp.mean(per_system, axis=0)
    energy_curve = None
    if vs is not None:
        e_true = _energy(config, xs_true, vs_true, h)
        e_pred = _energy(config, xs, vs, h)
        rel = jnp.where(gone, jnp.inf, jnp.abs(e_pred - e_true) / jnp.abs(e_true))
        energy_curve = np.asarray(jnp.median(rel, axis=0))
    exceeds = per_system > VALID_TIME_THRESHOLD
    first_bad = jnp.where(jnp.any(exceeds, axis=1), jnp.argmax(exceeds, axis=1), num_steps)
    mse_curve = np.asarray(mse_curve)
    report = (0.5, 1, 2, 4, 8) if config.system == "three-body" else (0.5, 1)
    return {
        "mse": float(mse_curve[-1]),
        "trajectory_mse": float(np.mean(mse_curve[1:])),
        "mse_at": _at(mse_curve, config.dt, report),
        "energy_rel_err_at": None if energy_curve is None else _at(energy_curve, config.dt, report),
        "valid_time_median": float(np.median(np.asarray(first_bad))) * config.dt,
        "diverged_fraction": float(jnp.mean(gone[:, -1])),
        "mse_curve": mse_curve.tolist(),
        "energy_curve": None if energy_curve is None else energy_curve.tolist(),
    }


# --------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------


class Rollout(Experiment):
    name = "rollout"
    description = "Long-horizon rollouts of learned simulators"
    Config = RolloutConfig
    model_names = MODEL_NAMES
    default_workdir = Path("experiments/results/rollout/three_body")
    data_keys = ("x", "v", "h")
    # Validation rollouts select the best step during training; the test split is reported.
    report_splits = ("test",)

    def quick_config(self):
        return quick_config()

    def initial_config(self, args):
        system = args.system or "three-body"
        if args.quick:
            return quick_config(system)
        return charged_config() if system == "charged" else RolloutConfig()

    def default_workdir_for(self, args):
        system = args.system or "three-body"
        return Path("experiments/results/rollout") / system.replace("-", "_")

    def add_arguments(self, parser):
        parser.add_argument("--system", choices=SYSTEMS, help="three-body (default) or charged")
        parser.add_argument("--iterations", type=int, help="optimisation steps per model")
        parser.add_argument("--window", type=int, help="unroll length K of the multi-step models")
        parser.add_argument(
            "--train-frames",
            metavar="FIRST:LAST",
            help="charged: the frames the trained models draw windows from (default 30:40)",
        )

    def config_overrides(self, args):
        overrides = {"iterations": args.iterations, "window": args.window}
        if args.train_frames is not None:
            try:
                first, last = (int(f) for f in args.train_frames.split(":"))
            except ValueError:
                raise ValueError(
                    f"--train-frames takes FIRST:LAST, got {args.train_frames!r}"
                ) from None
            overrides |= {"train_first_frame": first, "train_last_frame": last}
        return overrides

    def model_spec(self, name, config):
        dt = config.dt
        width, depth = config.hidden_features, config.num_layers
        multi = {
            "dt": dt,
            "window": config.window,
            "curriculum_steps": config.curriculum_steps,
            "noise": config.noise,
            "edge_features": "inverse",
        }
        if name == "linear":
            return ModelSpec(name, "constant_velocity", options={"dt": dt}.items())
        if name == "true_simulator":
            physics = {"dt": dt, "system": config.system}
            if config.system == "three-body":
                physics |= {"G": config.G, "softening": config.softening}
            return ModelSpec(name, "true_simulator", options=physics.items())
        if name == "one_shot":  # the seed's EGNN-vel features: |v|, the horizon, |x_i - x_j|
            options = {"dt": dt, "edge_features": "distance"}
            return ModelSpec(name, "one_shot", width, depth, options.items())
        if name == "naive_step":
            options = {"dt": dt, "edge_features": "inverse"}
            return ModelSpec(name, "step", width, depth, options.items())
        if name in ("multi_step", "multi_step_pushforward", "multi_step_pushforward_log"):
            options = multi | {"noise": config.step_noise}
            if name.startswith("multi_step_pushforward"):
                options["pushforward"] = True
            if name.endswith("_log"):
                options["loss"] = "log"
            return ModelSpec(name, "step", width, depth, options.items())
        kind = "force_field" if name.startswith("force_field") else name
        options = multi | {"substeps": config.substeps}
        if name == "force_field_fine":
            options |= {"substeps": config.fine_substeps, "window": config.fine_window}
        return ModelSpec(name, kind, width, config.force_layers, options.items())

    def load_data(self, config, data_dir, progress):
        if config.system == "three-body":
            return _three_body(config, data_dir, progress)
        return _charged(config, data_dir, progress)

    def validation_data(self, config, data):
        return jax.tree.map(lambda a: a[: config.n_val_rollout], data.valid)

    def metrics(self, config, spec, params, batch):
        return rollout_metrics(config, spec, params, batch)

    def extra_results(self, config, spec, params, data):
        if "long_test" not in data.extra:
            return {}
        scores = rollout_metrics(config, spec, params, data.extra["long_test"])
        return {f"long_{k}": v for k, v in scores.items()}

    def read_evaluation_file(self, config, path):
        node_key = "masses" if config.system == "three-body" else "charges"
        f = load_npz(path, ("x", "v", "t", node_key))
        x, v, t, node = f["x"], f["v"], f["t"], f[node_key]
        raise_if(check_trajectory_file(x, v, t, node, node_key, config.dt), path)
        node = np.broadcast_to(node, (x.shape[0], x.shape[2]))
        return _batch(x, v, node) | {"t": jnp.asarray(t - t[0], jnp.float32)}

    def evaluation_output(self, config, scores, batch):
        return curves_output(scores, batch)

    def plots(self, workdir, config, metrics, params, data):
        plot_curves(workdir, config, metrics, LABELS)
        test = data.test
        num_steps = test["x"].shape[1] - 1
        first = State(test["x"][:, 0], test["v"][:, 0], test["h"])
        predicted = {  # the rollouts `metrics` compiled, on the same split
            name: np.asarray(
                roller(self.model_spec(name, config), num_steps)(params[name], first)[0][:3]
            )
            for name in MODEL_NAMES
            if name in params
        }
        plot_trajectories(workdir / "trajectories.png", config, predicted, test, LABELS)

    def format_table(self, metrics):
        config = RolloutConfig.from_dict(metrics["config"])
        rows = []
        if config.system == "three-body":
            header = [
                "model",
                *(f"MSE t={t}" for t in (0.5, 1, 2, 4, 8)),
                "energy err t=2",
                "t=8",
                "valid time",
                "train min",
            ]
        else:
            header = [
                "model",
                "trajectory MSE (frames 31-40)",
                "MSE frame 40",
                "energy err frame 40",
                "train min",
            ]
        for name, r in self.ordered_rows(metrics):
            train = r.get("train_seconds")
            minutes = "-" if not train else f"{train / 60:.1f}"
            energy = r.get("test_energy_rel_err_at") or {}
            long_energy = r.get("long_energy_rel_err_at") or {}
            if config.system == "three-body":
                at = {**r["test_mse_at"], **(r.get("long_mse_at") or {})}
                rows.append(
                    [
                        LABELS[name],
                        *(format_score(at.get(k)) for k in ("0.5", "1", "2", "4", "8")),
                        format_score(energy.get("2"), pct=True),
                        format_score(long_energy.get("8"), pct=True),
                        f"{r['test_valid_time_median']:.2f}",
                        minutes,
                    ]
                )
            else:
                curve = r.get("test_energy_curve")
                rows.append(
                    [
                        LABELS[name],
                        format_score(r["test_trajectory_mse"]),
                        format_score(r["test_mse"]),
                        "-" if curve is None else format_score(curve[-1], pct=True),
                        minutes,
                    ]
                )
        return markdown_table(header, rows)


EXPERIMENT = Rollout()
# The module's API: ``train_and_evaluate(config, workdir, ...)``, ``evaluate_file(workdir,
# path)`` and ``main(argv)`` (the command line), all with EXPERIMENT bound.
train_and_evaluate, evaluate_file, main = entry_points(EXPERIMENT)


if __name__ == "__main__":
    sys.exit(main())
