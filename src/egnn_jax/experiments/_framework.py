"""The experiment framework: what every experiment shares, around what each one declares.

An experiment subclasses `Experiment` and declares its config (a subclass of
`ExperimentConfig`), its data and featurisation (`load_data`, `read_evaluation_file`), its
models (names from the model registry, `_models`) and its result table (`format_table`).
`train_and_evaluate` does the rest, the same way for every experiment:

1. load (simulate or read from the cache) and featurise the train / valid / test splits;
2. compare the workdir with the run about to start: a run already there is continued only
   with ``resume``, replaced only with ``overwrite``, and never mixed with runs made on other
   data or settings (each run's *fingerprint*: data content hashes, config, model spec);
3. fit the fitted models, train the others side by side (`train_concurrently`), each keeping
   its best-validation parameters in ``<workdir>/best/<model>`` (Orbax, committed);
4. evaluate every model at its best validation step on the valid and test splits;
5. write ``metrics.json``, ``loss_curves.png`` and the experiment's own plots.

`evaluate_file` reloads the best parameters and scores them on a file (``--evaluate``);
`_cli.main` is the command line around both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shlex
import sys
import time
import zlib
from pathlib import Path
from typing import Any, ClassVar

import jax
import numpy as np

from egnn_jax._atomic import save_json_atomic

from ._checkpoint import (
    FingerprintMismatchError,
    RunExistsError,
    best_dir,
    check_fingerprint,
    fingerprint_differences,
    latest_dir,
    load_params,
    read_params_meta,
    save_params,
)
from ._concurrency import train_concurrently
from ._loop import remove_run
from ._models import ModelSpec, label, model_spec, mse
from ._report import device, plot_loss_curves, steps_per_second, versions

__all__ = [
    "EvaluationFileError",
    "Experiment",
    "ExperimentConfig",
    "ExperimentData",
    "batch_hash",
    "evaluate_file",
    "load_npz",
    "model_fingerprint",
    "read_metrics",
    "shared_fingerprint",
    "train_and_evaluate",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The settings every experiment has; subclasses add their own (all with defaults).

    Attributes:
        models: the models to train and compare (names of the experiment's `model_names`).
        seed: simulator seed; also the initialisation and shuffling seed unless `train_seed`.
        train_seed: initialisation and shuffling seed on the same data (None: `seed`).
        batch_size, learning_rate, weight_decay: Adam with coupled L2 (paper: 100, 5e-4,
            1e-12).
        hidden_features, num_layers: width and depth of every network (paper: 64, 4).

    Every field belongs to a run's fingerprint except those in `RUN_FIELDS` (what to train
    and for how long), so that a run is never continued with other settings.
    """

    models: tuple[str, ...] = ()
    seed: int = 0
    train_seed: int | None = None
    batch_size: int = 100
    learning_rate: float = 5e-4
    weight_decay: float = 1e-12
    hidden_features: int = 64
    num_layers: int = 4

    RUN_FIELDS: ClassVar[tuple[str, ...]] = ("models",)

    def __post_init__(self):
        object.__setattr__(self, "models", tuple(self.models))
        if not self.models or len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be distinct names, got {self.models}")
        for name in ("batch_size", "hidden_features", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_steps % self.eval_every:
            raise ValueError(
                f"the run length ({self.num_steps} steps) must be a multiple of the "
                f"evaluation interval ({self.eval_every} steps)"
            )
        if self.checkpoint_every % self.eval_every:
            raise ValueError("the checkpoint interval must be a multiple of the evaluation one")

    # The schedule, in optimisation steps (subclasses define it from their own fields).
    @property
    def num_steps(self) -> int:
        raise NotImplementedError

    @property
    def eval_every(self) -> int:
        raise NotImplementedError

    @property
    def checkpoint_every(self) -> int:
        return self.eval_every

    @property
    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    @property
    def patience(self) -> int | None:
        """Evaluations without improvement before stopping early (None: never)."""
        return None

    @property
    def effective_train_seed(self) -> int:
        return self.seed if self.train_seed is None else self.train_seed

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict):
        """Rebuild from `to_dict` output; missing fields take their defaults."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(**kwargs)

    def fingerprint(self) -> dict:
        """The fields that define the task, the data and the training (not its length)."""
        d = self.to_dict()
        d["train_seed"] = self.effective_train_seed
        return {k: v for k, v in sorted(d.items()) if k not in self.RUN_FIELDS}


@dataclasses.dataclass
class ExperimentData:
    """Featurised splits (dicts of arrays with a leading sample axis) and their metadata."""

    train: dict
    valid: dict
    test: dict
    metadata: dict

    def splits(self) -> dict[str, dict]:
        return {"train": self.train, "valid": self.valid, "test": self.test}


class EvaluationFileError(ValueError):
    """A file given to ``--evaluate`` is missing, unreadable or of the wrong format."""


def load_npz(path: str | Path, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays `required` of an ``.npz`` file, or an `EvaluationFileError` in one line."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationFileError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in required if k not in f.files]
            if missing:
                raise EvaluationFileError(
                    f"{path} lacks the arrays {missing} (it needs {', '.join(required)})"
                )
            return {k: np.asarray(f[k]) for k in required}
    except EvaluationFileError:
        raise
    # A damaged zip fails in many ways (BadZipFile, zlib.error, EOFError, ValueError, ...).
    except Exception as e:  # noqa: BLE001
        raise EvaluationFileError(
            f"{path} is not a readable .npz file ({type(e).__name__}: {e})"
        ) from e


def batch_hash(batch: dict, keys=None) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a batch's arrays (all, or `keys`)."""
    h = hashlib.sha256()
    for name in sorted(batch if keys is None else keys):
        a = np.ascontiguousarray(np.asarray(batch[name]))
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def shared_fingerprint(experiment, config: ExperimentConfig, data: ExperimentData) -> dict:
    """What every run in one results table shares: experiment, config and the data."""
    return {
        "experiment": experiment.name,
        "config": config.fingerprint(),
        "data": {s: batch_hash(b, experiment.data_keys) for s, b in data.splits().items()},
    }


def model_fingerprint(spec: ModelSpec, data: ExperimentData) -> dict:
    """What one model's run depends on besides the shared part: its spec and its inputs."""
    keys = (*spec.inputs, "target")
    return {
        "model": spec.to_dict(),
        "inputs": {s: batch_hash(b, keys) for s, b in data.splits().items()},
    }


class Experiment:
    """Base class of an experiment: subclasses declare what differs.

    Class attributes:
        name: the module name (``python -m egnn_jax.experiments.<name>``).
        description: one line for ``--help``.
        Config: the experiment's `ExperimentConfig` subclass; ``Config()`` is the default.
        model_names: the models it can compare (registry presets, `_models.PRESETS`).
        default_workdir: where ``--workdir`` points by default (results are committed there).
        data_keys: the batch keys that hold the data itself (not features derived from it):
            their content hashes are the ``data`` part of every run's fingerprint. Each
            model's fingerprint also hashes the inputs it reads (`ModelSpec.inputs`), so
            adding a feature for a new model leaves the other runs valid.
        history_unit: ``"step"`` or ``"epoch"``, the x axis of the loss curves.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type[ExperimentConfig]]
    model_names: ClassVar[tuple[str, ...]]
    default_workdir: ClassVar[Path]
    data_keys: ClassVar[tuple[str, ...]]
    history_unit: ClassVar[str] = "step"

    # ---- declared by each experiment -------------------------------------------------------
    def quick_config(self) -> ExperimentConfig:
        """A smoke run of the whole pipeline (well under a minute on a CPU)."""
        raise NotImplementedError

    def load_data(self, config, data_dir: Path, progress: bool | None) -> ExperimentData:
        raise NotImplementedError

    def read_evaluation_file(self, config, path: Path) -> dict:
        """The featurised batch (with ``target``) of a file given to ``--evaluate``."""
        raise NotImplementedError

    def format_table(self, metrics: dict) -> str:
        """The markdown result table of a metrics.json (README and command output)."""
        raise NotImplementedError

    # ---- optional hooks --------------------------------------------------------------------
    def add_arguments(self, parser) -> None:
        """Experiment-specific command-line flags."""

    def config_overrides(self, args) -> dict:
        """Config fields set by the experiment-specific flags."""
        return {}

    def command(self, config, args) -> int | None:
        """An experiment-specific action instead of training (e.g. ``--export``): its exit
        code, or None to train."""
        return None

    def model_spec(self, name: str, config) -> ModelSpec:
        return model_spec(name, config.hidden_features, config.num_layers)

    def metrics(self, config, spec: ModelSpec, params, batch: dict) -> dict[str, float]:
        """Scores of one model on one split (default: the MSE of its prediction)."""
        pred = jax.jit(spec.predict)(params, batch)
        return {"mse": float(mse(pred, batch["target"]))}

    def extra_results(self, config, spec: ModelSpec, params, data: ExperimentData) -> dict:
        """More entries for a model's row of metrics.json (e.g. timings, equivariance)."""
        return {}

    def plots(self, workdir: Path, config, metrics: dict, params: dict, data) -> None:
        """Figures beyond the loss curves."""


# --------------------------------------------------------------------------------------
# Runs in a workdir
# --------------------------------------------------------------------------------------

_SHARED_FINGERPRINT = ("experiment", "config", "data")


def _shared(fingerprint: dict, config_class: type[ExperimentConfig]) -> dict:
    """The part of a run's fingerprint that every run in one table shares. Config fields
    added after the run was made count as their defaults, so a new field does not orphan
    the runs already committed."""
    shared = {k: fingerprint.get(k) for k in _SHARED_FINGERPRINT}
    if isinstance(shared["config"], dict):
        defaults = {f.name: f.default for f in dataclasses.fields(config_class)}
        missing = {k: v for k, v in defaults.items() if k not in shared["config"]}
        missing = {k: list(v) if isinstance(v, tuple) else v for k, v in missing.items()}
        missing = {k: v for k, v in missing.items() if k not in config_class.RUN_FIELDS}
        shared["config"] = dict(sorted((shared["config"] | missing).items()))
    return shared


def read_metrics(workdir: Path) -> dict | None:
    path = workdir / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); --overwrite replaces it") from e


def _runs_on_disk(workdir: Path, rows: dict) -> dict[str, dict | None]:
    """Every model with a row, a best checkpoint or a resumable state, and its fingerprint."""
    names = set(rows)
    for folder in (workdir / "best", workdir / "checkpoints"):
        if folder.is_dir():
            names |= {p.name for p in folder.iterdir() if p.is_dir()}
    found = {}
    for name in sorted(names):
        fingerprint = rows.get(name, {}).get("fingerprint")
        if fingerprint is None:
            meta = read_params_meta(best_dir(workdir, name))
            fingerprint = None if meta is None else meta.get("fingerprint")
        found[name] = fingerprint
    return found


def _prepare_workdir(
    workdir: Path, rows: dict, config: ExperimentConfig, shared: dict, resume, overwrite
):
    """Apply the workdir rules; returns the rows of other models that stay in the table."""
    on_disk = _runs_on_disk(workdir, rows)
    selected, cls = config.models, type(config)
    foreign = {
        name: fp
        for name, fp in on_disk.items()
        if fp is None or fingerprint_differences(_shared(fp, cls), shared)
    }
    if overwrite:
        for name in set(on_disk) & (set(selected) | set(foreign)):
            remove_run(workdir, name)
        return {n: r for n, r in rows.items() if n not in selected and n not in foreign}
    taken = sorted(set(on_disk) & set(selected))
    if taken and not resume:
        raise RunExistsError(
            f"{workdir} already holds a run of {', '.join(taken)}: pass --resume to continue "
            "it, or --overwrite to delete it and start again"
        )
    for name, fp in foreign.items():
        if fp is None:
            raise FingerprintMismatchError(
                f"{workdir} holds a run of {name!r} without a fingerprint (an older format?); "
                "use another --workdir, or --overwrite to delete it"
            )
        check_fingerprint(
            _shared(fp, cls),
            shared,
            f"the run of {name!r} in {workdir}",
            "use another --workdir, or --overwrite to delete it",
        )
    return {n: r for n, r in rows.items() if n not in selected}


def _finished(workdir: Path, row: dict | None, config) -> bool:
    """A run that needs no training: finished earlier and its resumable state is gone (a
    fresh clone holds only the committed best parameters)."""
    if row is None or latest_dir(workdir, row["name"]).exists():
        return False
    done = row.get("steps_done")
    if done is None:
        return False
    if done > config.num_steps:
        raise ValueError(
            f"run {row['name']!r} has already done {done} steps; resuming to "
            f"{config.num_steps} would return the longer run's result"
        )
    return done == config.num_steps or bool(row.get("stopped_early"))


def _like(spec: ModelSpec, batch: dict):
    """The parameter tree (shapes and dtypes) of `spec` for inputs like `batch`."""
    one = jax.tree.map(lambda a: a[:1], batch)
    if not spec.trainable:
        return spec.init(None, one)
    return jax.eval_shape(spec.init, jax.random.key(0), one)


def _num_params(params) -> int:
    return int(sum(np.size(p) for p in jax.tree.leaves(params)))


def train_and_evaluate(
    experiment: Experiment,
    config: ExperimentConfig,
    workdir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    data_dir: str | Path | None = None,
    command: str | None = None,
) -> dict:
    """Run an experiment end to end and write ``<workdir>/metrics.json`` and the plots.

    Arguments:
        experiment: the experiment.
        config: its config (``experiment.Config(...)``).
        workdir: outputs: ``metrics.json``, plots, ``best/<model>/`` (best parameters),
            ``checkpoints/<model>/latest`` (resumable state), ``data/`` (simulation cache).
        resume: continue the runs of these models found in `workdir` (a finished run is
            reloaded, not retrained).
        overwrite: delete the runs of these models found in `workdir`, and any other run
            there made with other data or settings, then start again.
        progress: progress bars (None: only on a terminal).
        data_dir: simulation cache (default ``<workdir>/data``).
        command: recorded with each trained model's row (None: this process's command line).

    Returns:
        The metrics dict written to ``<workdir>/metrics.json``.

    Raises:
        RunExistsError: the workdir holds runs of these models and neither `resume` nor
            `overwrite` was given.
        FingerprintMismatchError: a run in the workdir was made with other data or settings
            (the message names the field and both values).
        TrainingDiverged: a loss became NaN or infinite (the last good state is kept).
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    unknown = [m for m in config.models if m not in experiment.model_names]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {experiment.model_names}")
    t_total = time.perf_counter()
    workdir = Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    wall: dict[str, Any] = {"train": {}}

    t = time.perf_counter()
    data_dir = workdir / "data" if data_dir is None else Path(data_dir)
    data = experiment.load_data(config, data_dir, progress)
    wall["data"] = time.perf_counter() - t
    shared = shared_fingerprint(experiment, config, data)

    try:
        previous = read_metrics(workdir)
    except ValueError:
        if not overwrite:
            raise
        previous = None  # a damaged metrics.json: --overwrite starts the table again
    rows_before = (previous or {}).get("models", {})
    kept = _prepare_workdir(workdir, rows_before, config, shared, resume, overwrite)
    histories = {n: h for n, h in (previous or {}).get("histories", {}).items() if n in kept}
    if command is None:  # the command line this process was started with
        command = shlex.join(["python", *sys.orig_argv[1:]])

    key = jax.random.key(config.effective_train_seed)
    specs = {name: experiment.model_spec(name, config) for name in config.models}
    params_of: dict[str, Any] = {}
    rows: dict[str, dict] = {}
    runs: dict[str, dict] = {}
    for name, spec in specs.items():
        fingerprint = shared | model_fingerprint(spec, data)
        row = {"name": name, "label": label(name), "kind": spec.kind, "command": command}
        row["fingerprint"] = fingerprint
        if not spec.trainable:
            t = time.perf_counter()
            params_of[name] = spec.init(None, data.train)
            save_params(
                best_dir(workdir, name),
                params_of[name],
                {"step": 0, "name": name, "fingerprint": fingerprint},
            )
            row["fit"] = {k: float(v) for k, v in params_of[name].items()}
            wall["train"][name] = time.perf_counter() - t
        elif resume and _finished(workdir, rows_before.get(name), config):
            old = rows_before[name]
            saved = old["fingerprint"] | _shared(old["fingerprint"], type(config))
            check_fingerprint(saved, fingerprint, f"the run of {name!r} in {workdir}")
            params_of[name], _ = load_params(best_dir(workdir, name), _like(spec, data.train))
            histories[name] = (previous or {}).get("histories", {}).get(name, [])
            row |= {k: old[k] for k in ("best_step", "steps_done", "stopped_early") if k in old}
            row |= {"steps_this_session": 0, "resumed": True, "command": old.get("command")}
            wall["train"][name] = 0.0
        else:
            runs[name] = _training_run(spec, key, data, config, workdir, fingerprint)
            runs[name] |= {"resume": resume, "overwrite": overwrite, "progress": progress}
        rows[name] = row

    # Side by side, one thread each: small networks leave CPU cores idle one after another.
    t = time.perf_counter()
    trained = train_concurrently(runs)
    wall["train_all_networks"] = time.perf_counter() - t
    for name, res in trained.items():
        params_of[name] = res.params
        histories[name] = [h | {"epoch": h["step"] / config.steps_per_epoch} for h in res.history]
        rows[name] |= {
            "best_step": res.best_step,
            "steps_done": res.steps_done,
            "stopped_early": res.stopped_early,
            "resumed": res.resumed,
            "steps_this_session": res.num_steps,
            "best_val_loss_during_training": res.best_metrics.get("val_loss"),
            "final_train_loss": res.history[-1]["train_loss"] if res.history else None,
            "steps_per_second": steps_per_second(res.history),
        }
        wall["train"][name] = res.wall_seconds

    t = time.perf_counter()
    for name, spec in specs.items():
        params = params_of[name]
        rows[name]["num_params"] = _num_params(params)
        if "steps_done" in rows[name]:
            rows[name]["best_epoch"] = rows[name]["best_step"] / config.steps_per_epoch
            rows[name]["epochs_done"] = rows[name]["steps_done"] / config.steps_per_epoch
        for split in ("valid", "test"):
            for metric, value in experiment.metrics(
                config, spec, params, data.splits()[split]
            ).items():
                rows[name][f"{split}_{metric}"] = value
        rows[name] |= experiment.extra_results(config, spec, params, data)
    wall["evaluate"] = time.perf_counter() - t

    order = [n for n in experiment.model_names if n in rows or n in kept]
    all_rows = {n: rows[n] if n in rows else kept[n] for n in order}
    metrics = {
        "experiment": experiment.name,
        "fingerprint": shared,
        "config": config.to_dict() | {"models": order},
        "models": all_rows,
        "test_mse": {n: r.get("test_mse") for n, r in all_rows.items()},
        "data": data.metadata,
        "device": device(),
        "versions": versions(),
        "command": command,
        "histories": {n: histories[n] for n in order if n in histories},
    }

    t = time.perf_counter()
    plot_loss_curves(
        workdir / "loss_curves.png",
        metrics["histories"],
        {n: r["valid_mse"] for n, r in all_rows.items() if "valid_mse" in r},
        title=f"{experiment.description}: loss curves",
        x_key=experiment.history_unit,
    )
    experiment.plots(workdir, config, metrics, params_of, data)
    wall["plot"] = time.perf_counter() - t
    wall["total"] = time.perf_counter() - t_total
    metrics["wall_seconds"] = wall
    save_json_atomic(workdir / "metrics.json", metrics)
    return metrics


def _training_run(spec: ModelSpec, key, data: ExperimentData, config, workdir, fingerprint):
    """Keyword arguments of `train` for a trainable `spec`.

    The model's own initialisation and shuffling keys derive from `key` and its name, so
    adding or removing a model leaves the others' results unchanged.
    """
    k_init, k_shuffle = jax.random.split(jax.random.fold_in(key, zlib.crc32(spec.name.encode())))
    return dict(
        loss_fn=spec.loss,
        params=spec.init(k_init, jax.tree.map(lambda a: a[:1], data.train)),
        train_data=data.train,
        eval_fn=spec.evaluate,
        val_data=data.valid,
        key=k_shuffle,
        num_steps=config.num_steps,
        batch_size=config.batch_size,
        eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every,
        patience=config.patience,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        workdir=workdir,
        fingerprint=fingerprint,
    )


def evaluate_file(experiment: Experiment, workdir: str | Path, path: str | Path) -> dict:
    """Score every model of the run in `workdir` on a file (``--evaluate``).

    Returns:
        ``{model: score}`` (the experiment's `metrics` on the file; the MSE by default).

    Raises:
        FileNotFoundError: no metrics.json or best parameters in `workdir`.
        EvaluationFileError: `path` is missing, unreadable or of the wrong format.
        CheckpointMismatchError: saved parameters that do not fit the model.
    """
    workdir = Path(workdir).expanduser().resolve()
    metrics = read_metrics(workdir)
    if metrics is None:
        raise FileNotFoundError(
            f"{workdir / 'metrics.json'} not found: train first with "
            f"`python -m egnn_jax.experiments.{experiment.name} --workdir {workdir}`"
        )
    config = experiment.Config.from_dict(metrics["config"])
    batch = experiment.read_evaluation_file(config, Path(path))
    out = {}
    for name in metrics["models"]:
        spec = experiment.model_spec(name, config)
        params, _ = load_params(best_dir(workdir, name), _like(spec, batch))
        scores = experiment.metrics(config, spec, params, batch)
        out[name] = scores["mse"] if list(scores) == ["mse"] else scores
    return out
