"""Experiments and the framework they are built on.

Each experiment is one module, ``python -m egnn_jax.experiments.<name>``, exposing
``train_and_evaluate(config, workdir, ...)``, ``evaluate_file(workdir, path)`` and ``main``:

* `three_body`: the seed experiment (``make train``).
* `nbody_charged`: the EGNN paper's charged N-body table.
* `nbody_scale`: HEGNN's N-body 5/20/50/100 benchmark.
* `rollout`: learned simulators stepped forward over long horizons.
* `collisions`: bodies colliding with each other and the walls of a box.
* `complexes`: EGHN's M-complex systems (rigid complexes of charged particles).

The framework a new experiment builds on (subclass `Experiment`, declare config, data,
featurisation, models and table): `Experiment`, `ExperimentConfig` (or `IterationsConfig`
for a run counted in steps, `EpochsConfig` for one counted in epochs), `ExperimentData`,
`train_and_evaluate`, `evaluate_file`, `cli_main`, `entry_points`. Underneath, usable on
their own: the
training loop `train` (with `TrainResult`, `TrainingDiverged`), `train_concurrently`,
`make_optimizer`, the model registry (`ModelSpec`, `model_spec`, `MODEL_KINDS`), and
checkpoints with named trees (`save_params`, `load_params`, `best_dir`), and crash-safe
outputs (`save_json_atomic`, `save_figure_atomic`).
"""

from ._checkpoint import CheckpointMismatchError as CheckpointMismatchError
from ._checkpoint import FingerprintMismatchError as FingerprintMismatchError
from ._checkpoint import RunExistsError as RunExistsError
from ._checkpoint import best_dir as best_dir
from ._checkpoint import latest_dir as latest_dir
from ._checkpoint import load_params as load_params
from ._checkpoint import save_params as save_params
from ._cli import cli_main as cli_main
from ._cli import entry_points as entry_points
from ._concurrency import interrupt_on_signals as interrupt_on_signals
from ._concurrency import train_concurrently as train_concurrently
from ._experiment import EpochsConfig as EpochsConfig
from ._experiment import EvaluationFileError as EvaluationFileError
from ._experiment import Experiment as Experiment
from ._experiment import ExperimentConfig as ExperimentConfig
from ._experiment import ExperimentData as ExperimentData
from ._experiment import IterationsConfig as IterationsConfig
from ._experiment import load_npz as load_npz
from ._framework import evaluate_file as evaluate_file
from ._framework import train_and_evaluate as train_and_evaluate
from ._loop import TrainingDiverged as TrainingDiverged
from ._loop import TrainResult as TrainResult
from ._loop import train as train
from ._models import MODEL_KINDS as MODEL_KINDS
from ._models import ModelSpec as ModelSpec
from ._models import model_spec as model_spec
from ._report import save_figure_atomic as save_figure_atomic
from ._report import save_json_atomic as save_json_atomic
from ._step import StepInfo as StepInfo
from ._step import TrainState as TrainState
from ._step import make_optimizer as make_optimizer
from ._workdir import read_metrics as read_metrics
