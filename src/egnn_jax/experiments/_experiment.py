"""What an experiment declares: its config, its data, its models, its table.

An experiment subclasses `Experiment` and declares its config (a subclass of
`ExperimentConfig`), its data and featurisation (`load_data`, `read_evaluation_file`), its
models (names from the model registry, `_models`) and its result table (`format_table`);
`_framework.train_and_evaluate` runs it. This module also defines what identifies a run's
data and model (`shared_fingerprint`, `model_fingerprint`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import ClassVar

import jax
import numpy as np

from ._models import ModelSpec, model_spec, mse

__all__ = [
    "EvaluationFileError",
    "Experiment",
    "ExperimentConfig",
    "EpochsConfig",
    "ExperimentData",
    "IterationsConfig",
    "batch_hash",
    "load_npz",
    "model_fingerprint",
    "older_run_defaults",
    "shared_fingerprint",
    "split_sizes",
]


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The settings every experiment has; subclasses add their own (all with defaults).

    Attributes:
        models: the models to train and compare (names of the experiment's `model_names`).
        seed: simulator seed; also the initialisation and shuffling seed unless `train_seed`.
        train_seed: initialisation and shuffling seed on the same data (None: `seed`).
        batch_size, learning_rate, weight_decay: Adam with coupled L2 (paper: 100, 5e-4,
            1e-12).
        lr_schedule: ``"constant"`` (paper) or ``"cosine"`` (decay to 0 over the run).
        clip_norm: clip the gradient's global norm to this (None: no clipping).
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
    lr_schedule: str = "constant"
    clip_norm: float | None = None
    hidden_features: int = 64
    num_layers: int = 4

    RUN_FIELDS: ClassVar[tuple[str, ...]] = ("models",)

    def __post_init__(self):
        object.__setattr__(self, "models", tuple(self.models))
        if not self.models or len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be distinct names, got {self.models}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}"
            )
        for name in ("batch_size", "hidden_features", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0 (or None: no clipping), got {self.clip_norm}")
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
    def eval_batch_size(self) -> int | None:
        """Validate in batches of this many samples (None: the whole split at once)."""
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

    @classmethod
    def fingerprint_defaults(cls) -> dict:
        """``{field: default}`` for the fingerprinted fields that have a default: a run
        saved before such a field existed had its default in effect, so it stays valid."""
        out = {}
        for f in dataclasses.fields(cls):
            if f.name in cls.RUN_FIELDS or f.default is dataclasses.MISSING:
                continue
            out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
        return out


def older_run_defaults(config: ExperimentConfig) -> dict:
    """``{dotted fingerprint field: value}``: what a run saved by an earlier version, before
    the field was recorded, had in effect. A config field's default; no gradient clipping;
    the optimiser's schedule is the config's (which ``config.lr_schedule`` compares)."""
    defaults = {f"config.{k}": v for k, v in config.fingerprint_defaults().items()}
    return defaults | {"optimizer.schedule": config.lr_schedule, "optimizer.clip_norm": None}


@dataclasses.dataclass(frozen=True)
class IterationsConfig(ExperimentConfig):
    """An `ExperimentConfig` whose run is counted in optimisation steps.

    Attributes (besides `ExperimentConfig`'s):
        iterations: optimisation steps per trained model.
        eval_interval: steps between validations (= the length of one compiled chunk);
            reduced to ``gcd(iterations, eval_interval)`` when it does not divide them.

    A subclass defines ``n_train`` (a field or a property).
    """

    iterations: int = 10_000
    eval_interval: int = 500

    def __post_init__(self):
        for name in ("iterations", "eval_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        super().__post_init__()

    @property
    def num_steps(self) -> int:
        return self.iterations

    @property
    def eval_every(self) -> int:
        return math.gcd(self.iterations, self.eval_interval)

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.batch_size


@dataclasses.dataclass(frozen=True)
class EpochsConfig(ExperimentConfig):
    """An `ExperimentConfig` whose run is counted in epochs over ``n_train`` samples.

    Attributes (besides `ExperimentConfig`'s):
        n_train: training samples (an epoch is ``n_train // batch_size`` steps: the last
            partial batch is dropped, as the reference loaders do).
        epochs: passes over the training set at most.
        eval_every_epochs: validation interval.
        patience_epochs: stop after this many epochs without a better validation loss.
        checkpoint_every_epochs: interval of the resumable checkpoints.
    """

    n_train: int = 1_000
    epochs: int = 1_000
    eval_every_epochs: int = 5
    patience_epochs: int = 100
    checkpoint_every_epochs: int = 25

    RUN_FIELDS: ClassVar[tuple[str, ...]] = ("models", "epochs", "checkpoint_every_epochs")

    def __post_init__(self):
        if self.n_train < self.batch_size:
            raise ValueError(f"n_train={self.n_train} < batch_size={self.batch_size}")
        for name in ("epochs", "eval_every_epochs", "patience_epochs", "checkpoint_every_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs % self.eval_every_epochs:
            raise ValueError("epochs must be a multiple of eval_every_epochs")
        super().__post_init__()

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.batch_size

    @property
    def num_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def eval_every(self) -> int:
        return self.eval_every_epochs * self.steps_per_epoch

    @property
    def checkpoint_every(self) -> int:
        every = max(self.checkpoint_every_epochs // self.eval_every_epochs, 1)
        return every * self.eval_every

    @property
    def patience(self) -> int:
        return max(self.patience_epochs // self.eval_every_epochs, 1)


@dataclasses.dataclass
class ExperimentData:
    """Featurised splits (dicts of arrays with a leading sample axis) and their metadata.

    `extra` holds evaluation-only data (e.g. a longer test set): not part of the fingerprint,
    not written to metrics.json.
    """

    train: dict
    valid: dict
    test: dict
    metadata: dict
    extra: dict = dataclasses.field(default_factory=dict)

    def splits(self) -> dict[str, dict]:
        return {"train": self.train, "valid": self.valid, "test": self.test}


class EvaluationFileError(ValueError):
    """A file given to ``--evaluate`` is missing, unreadable or of the wrong format."""


def split_sizes(config) -> dict[str, int]:
    """``{"train": n_train, "valid": n_valid, "test": n_test}`` of a config with those fields."""
    return {"train": config.n_train, "valid": config.n_valid, "test": config.n_test}


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
        "inputs": {s: batch_hash(b, [k for k in keys if k in b]) for s, b in data.splits().items()},
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
        report_splits: the splits every model is scored on after training (`metrics`).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type[ExperimentConfig]]
    model_names: ClassVar[tuple[str, ...]]
    default_workdir: ClassVar[Path]
    data_keys: ClassVar[tuple[str, ...]]
    history_unit: ClassVar[str] = "step"
    report_splits: ClassVar[tuple[str, ...]] = ("valid", "test")

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

    def ordered_rows(self, metrics: dict) -> list[tuple[str, dict]]:
        """The rows of a metrics.json in the order of `model_names` (JSON keeps them sorted)."""
        return [(n, metrics["models"][n]) for n in self.model_names if n in metrics["models"]]

    # ---- optional hooks --------------------------------------------------------------------
    def initial_config(self, args) -> ExperimentConfig:
        """The config the command line starts from, before its overrides."""
        return self.quick_config() if args.quick else self.Config()

    def default_workdir_for(self, args) -> Path:
        """``--workdir``'s default (it may depend on other flags)."""
        return self.default_workdir

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

    def validation_data(self, config, data: ExperimentData) -> dict:
        """What `val_loss` is computed on during training (default: the whole valid split)."""
        return data.valid

    def evaluation_output(self, config, scores: dict, batch: dict):
        """What ``--evaluate`` prints (JSON), from ``{model: metrics}`` on the file's batch."""
        return {name: s["mse"] if list(s) == ["mse"] else s for name, s in scores.items()}

    def extra_results(self, config, spec: ModelSpec, params, data: ExperimentData) -> dict:
        """More entries for a model's row of metrics.json (e.g. timings, equivariance)."""
        return {}

    def plots(self, workdir: Path, config, metrics: dict, params: dict, data) -> None:
        """Figures beyond the loss curves."""
