"""The EGNN paper's N-body experiment (Table 2) on our charged-particle simulator.

    python -m egnn_jax.experiments.nbody_charged                      # full protocol
    python -m egnn_jax.experiments.nbody_charged --epochs 1000        # a shorter run
    python -m egnn_jax.experiments.nbody_charged --quick --workdir /tmp/nb   # < 1 min on CPU
    python -m egnn_jax.experiments.nbody_charged --evaluate FILE.npz  # the committed models
    python -m egnn_jax.experiments.nbody_charged --sampler numpy-legacy --seed 43  # paper's data
    python -m egnn_jax.experiments.nbody_charged --export test FILE.npz   # for --evaluate

Protocol (as the reference code trains): 5 charged particles in 3-D; input frame 30, target
frame 40; 3,000 training systems, 2,000 validation, 2,000 test; batch 100; Adam lr 5e-4 with
weight decay 1e-12; up to 10,000 epochs, validation every 5 epochs; the reported figure is the
test MSE at the best validation epoch. Inputs as the reference `main_nbody.py` gives them:
EGNN-vel and Radial Field read node |v| and edge attributes [q_i q_j, |x_i - x_j|^2]; the GNN
reads node [x, v] (width 6) and edge q_i q_j only. Models: Linear (x0 + t v0, t fitted on
train), GNN, Radial Field and EGNN-vel (eq. 7), and HEGNN with degrees up to 1, 2, 3, 6
(``hegnn_l1`` ...; `egnn_jax.hegnn`, on EGNN-vel's inputs; not in the paper's table).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from egnn_jax._atomic import atomic_open
from egnn_jax.sim import SAMPLERS, charged_split

from ._cli import entry_points
from ._experiment import (
    ExperimentConfig,
    ExperimentData,
    split_sizes,
)
from ._frame_task import FrameTask
from ._models import HEGNN_DEGREES, ModelSpec, label
from ._report import markdown_table

__all__ = [
    "EXPERIMENT",
    "NBodyExperimentConfig",
    "PAPER_TEST_MSE",
    "evaluate_file",
    "export_split",
    "featurise",
    "main",
    "quick_config",
    "train_and_evaluate",
]

INPUT_FRAME, TARGET_FRAME = 30, 40
PAPER_TEST_MSE = {"linear": 0.0819, "gnn": 0.0107, "radial_field": 0.0104, "egnn_vel": 0.0071}
MODEL_NAMES = (*PAPER_TEST_MSE, *HEGNN_DEGREES)


@dataclasses.dataclass(frozen=True)
class NBodyExperimentConfig(ExperimentConfig):
    """The paper's protocol (defaults) and its variants.

    Attributes (besides `ExperimentConfig`'s):
        n_train, n_valid, n_test: systems per split (the simulator draws
            `n_simulated_train` training systems as in the reference; the first `n_train`
            are used).
        epochs: passes over the training set per model (paper: up to 10,000).
        eval_every_epochs: validation interval (paper: 5).
        checkpoint_every_epochs: interval of the resumable checkpoints (a multiple of
            `eval_every_epochs`).
        sampler: initial conditions from the JAX PRNG (``"jax"``) or from NumPy's legacy
            stream in the reference generator's order (``"numpy-legacy"``; with ``seed=43``
            this is the paper's own dataset), see `egnn_jax.sim.ChargedConfig`.
    """

    models: tuple[str, ...] = MODEL_NAMES
    n_train: int = 3_000
    n_valid: int = 2_000
    n_test: int = 2_000
    n_simulated_train: int = 10_000
    epochs: int = 10_000
    eval_every_epochs: int = 5
    checkpoint_every_epochs: int = 100
    sampler: str = "jax"

    RUN_FIELDS: ClassVar[tuple[str, ...]] = ("models", "epochs", "checkpoint_every_epochs")

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.n_train > self.n_simulated_train:
            raise ValueError(f"n_train={self.n_train} > n_simulated_train")
        if self.n_train < self.batch_size:
            raise ValueError(f"n_train={self.n_train} < batch_size={self.batch_size}")
        for name in ("epochs", "eval_every_epochs", "checkpoint_every_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
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
        return self.checkpoint_every_epochs * self.steps_per_epoch


def quick_config() -> NBodyExperimentConfig:
    """A smoke run of the whole pipeline (well under a minute on a CPU)."""
    return NBodyExperimentConfig(
        n_train=200,
        n_valid=100,
        n_test=100,
        n_simulated_train=200,
        epochs=10,
        checkpoint_every_epochs=5,
        batch_size=50,
        hidden_features=16,
        num_layers=2,
        learning_rate=1e-3,
        models=(*PAPER_TEST_MSE, "hegnn_l1"),
    )


def featurise(x0, v0, charges, target=None) -> dict:
    """The reference N-body inputs (pure; see `_models` for the keys).

    Arguments:
        x0: `[S, M, 3]` input positions; v0: `[S, M, 3]` input velocities;
        charges: `[S, M]`; target: `[S, M, 3]` or None.

    Returns:
        x0, v0; node_feat `[S, M, 1]` = |v0| and edge_attr `[S, M, M, 2]` =
        [q_i q_j, |x0_i - x0_j|^2] (EGNN-vel, Radial Field); gnn_node `[S, M, 6]` = [x0, v0]
        and gnn_edge `[S, M, M, 1]` = q_i q_j (GNN); charges; and target.
    """
    x0, v0 = jnp.asarray(x0, jnp.float32), jnp.asarray(v0, jnp.float32)
    q = jnp.asarray(charges, jnp.float32)
    if x0.ndim != 3 or v0.shape != x0.shape or q.shape != x0.shape[:2]:
        raise ValueError(
            f"need x0, v0 [S, M, d] and charges [S, M]; got {x0.shape}, {v0.shape}, {q.shape}"
        )
    diff = x0[:, :, None, :] - x0[:, None, :, :]
    d2 = jnp.sum(diff * diff, axis=-1, keepdims=True)
    qq = (q[:, :, None] * q[:, None, :])[..., None]
    batch = {
        "x0": x0,
        "v0": v0,
        "node_feat": jnp.sqrt(jnp.sum(v0 * v0, axis=-1, keepdims=True)),
        "edge_attr": jnp.concatenate([qq, d2], axis=-1),
        "gnn_node": jnp.concatenate([x0, v0], axis=-1),
        "gnn_edge": qq,
        "charges": q,
    }
    if target is not None:
        batch["target"] = jnp.asarray(target, jnp.float32)
        if batch["target"].shape != x0.shape:
            raise ValueError(f"target must have shape {x0.shape}, got {batch['target'].shape}")
    return batch


def _dataset(config: NBodyExperimentConfig, split: str, data_dir: str | Path, progress=None):
    """One simulated split ("train", "valid", "test"), read from the cache when present."""
    return charged_split(
        data_dir,
        split,
        n_train=config.n_simulated_train,
        n_valid=config.n_valid,
        n_test=config.n_test,
        seed=config.seed,
        progress=bool(progress),
        sampler=config.sampler,
    )


def _frames(ds, n: int) -> dict:
    return featurise(
        ds.x[:n, INPUT_FRAME], ds.v[:n, INPUT_FRAME], ds.charges[:n], ds.x[:n, TARGET_FRAME]
    )


def forward_ms(spec: ModelSpec, params, batch: dict, repeats: int = 50) -> float:
    """Median wall time of one jitted forward pass on `batch`, in milliseconds."""
    fn = jax.jit(spec.predict)
    jax.block_until_ready(fn(params, batch))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(params, batch))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def export_split(
    config: NBodyExperimentConfig, split: str, path: str | Path, data_dir: str | Path
) -> Path:
    """Write `split` ("train", "valid" or "test") of `config`'s data as the `--evaluate`
    format: ``x0, v0 [S, M, 3]`` (input frame), ``q [S, M]`` and ``xT [S, M, 3]`` (target)."""
    sizes = split_sizes(config)
    if split not in sizes:
        raise ValueError(f"split must be one of {tuple(sizes)}, got {split!r}")
    ds, n = _dataset(config, split, data_dir), sizes[split]
    path = Path(path)
    with atomic_open(path) as f:
        np.savez(
            f,
            x0=ds.x[:n, INPUT_FRAME],
            v0=ds.v[:n, INPUT_FRAME],
            q=ds.charges[:n],
            xT=ds.x[:n, TARGET_FRAME],
        )
    return path


class NBodyCharged(FrameTask):
    name = "nbody_charged"
    description = "Charged N-body (EGNN paper, Table 2): frame 30 -> frame 40"
    Config = NBodyExperimentConfig
    model_names = MODEL_NAMES
    default_workdir = Path("experiments/results/nbody_charged")
    featurise = staticmethod(featurise)
    export_split = staticmethod(export_split)

    def quick_config(self):
        return quick_config()

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--epochs", type=int, help="epochs per model (10000)")
        parser.add_argument(
            "--sampler",
            choices=SAMPLERS,
            help="initial conditions: JAX PRNG (default) or NumPy's legacy stream in the "
            "reference generator's order; '--sampler numpy-legacy --seed 43' is the paper's data",
        )
        parser.add_argument(
            "--clip-norm",
            type=float,
            help="clip the gradient's global norm to this (the paper clips none; HEGNN's own "
            "protocol clips at 10); another setting, so another --workdir",
        )

    def config_overrides(self, args):
        return {"epochs": args.epochs, "sampler": args.sampler, "clip_norm": args.clip_norm}

    def load_data(self, config, data_dir, progress):
        sizes = split_sizes(config)
        datasets = {split: _dataset(config, split, data_dir, progress) for split in sizes}
        metadata = {
            split: {k: ds.metadata.get(k) for k in ("content_hash", "wall_seconds", "cache")}
            for split, ds in datasets.items()
        }
        frames = [_frames(datasets[split], n) for split, n in sizes.items()]
        return ExperimentData(*frames, metadata)

    def extra_results(self, config, spec, params, data):
        batch100 = jax.tree.map(lambda a: a[:100], data.test)
        return {
            "forward_ms_per_batch": forward_ms(spec, params, batch100),
            "paper_test_mse": PAPER_TEST_MSE.get(spec.name),
        }

    def format_table(self, metrics):
        header = ["model", "test MSE (ours)", "paper", "epochs", "best epoch", "forward ms / batch"]
        rows = []
        for name, r in self.ordered_rows(metrics):
            trained = "epochs_done" in r
            rows.append(
                [
                    label(name),
                    f"{r['test_mse']:.4f}",
                    f"{PAPER_TEST_MSE[name]:.4f}" if name in PAPER_TEST_MSE else "-",
                    f"{r['epochs_done']:,.0f}" if trained else "-",
                    f"{r['best_epoch']:,.0f}" if trained else "-",
                    f"{r['forward_ms_per_batch']:.2f}",
                ]
            )
        return markdown_table(header, rows)


EXPERIMENT = NBodyCharged()
# The module's API: ``train_and_evaluate(config, workdir, ...)``, ``evaluate_file(workdir,
# path)`` and ``main(argv)`` (the command line), all with EXPERIMENT bound.
train_and_evaluate, evaluate_file, main = entry_points(EXPERIMENT)


if __name__ == "__main__":
    sys.exit(main())
