"""The EGNN paper's N-body experiment (Table 2) on our charged-particle simulator.

    python -m egnn_jax.experiments.nbody_charged                      # full protocol
    python -m egnn_jax.experiments.nbody_charged --epochs 1000        # a shorter run
    python -m egnn_jax.experiments.nbody_charged --quick              # < 1 min on CPU
    python -m egnn_jax.experiments.nbody_charged --workdir DIR --evaluate FILE.npz
    python -m egnn_jax.experiments.nbody_charged --sampler numpy-legacy --seed 43  # paper's data
    python -m egnn_jax.experiments.nbody_charged --export test FILE.npz   # for --evaluate

Protocol (as the reference code trains): 5 charged particles in 3-D; input frame 30, target
frame 40; 3,000 training systems, 2,000 validation, 2,000 test; node feature |v|; edge
attributes q_i q_j and the squared input distance; batch 100; Adam lr 5e-4 with weight decay
1e-12; up to 10,000 epochs, validation every 5 epochs; the reported figure is the test MSE at
the best validation epoch. Models: Linear (x0 + t v0, t fitted on train), GNN, Radial Field
and EGNN (velocity variant, eq. 7).

The best parameters of each model are written to ``<workdir>/best/<model>.msgpack`` (small
enough to commit), so `--evaluate` works on a fresh clone without retraining.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from egnn_jax._atomic import atomic_open
from egnn_jax.sim import charged_splits
from egnn_jax.sim._charged import SAMPLERS

from ._models import MODELS, ModelSpec, mse, training_run
from ._models import model_spec as _model_spec
from ._report import LABELS, device, plot_loss_curves, versions
from ._train import (
    TrainingDiverged,
    interrupt_on_signals,
    save_json_atomic,
    train_concurrently,
)

DEFAULT_WORKDIR = Path("experiments/results/nbody_charged")
INPUT_FRAME, TARGET_FRAME = 30, 40
PAPER_TEST_MSE = {"linear": 0.0819, "gnn": 0.0107, "radial_field": 0.0104, "egnn_vel": 0.0071}
_SPECS = {name: MODELS[name] for name in ("linear", "gnn", "radial_field", "egnn_vel")}


@dataclasses.dataclass(frozen=True)
class NBodyExperimentConfig:
    """Everything that determines a run (stored in metrics.json; `--evaluate` rebuilds it).

    Attributes:
        n_train, n_valid, n_test: systems per split (the simulator draws 10,000 training
            systems as in the reference; the first `n_train` are used).
        epochs: passes over the training set per model (paper: up to 10,000).
        eval_every_epochs: validation interval (paper: 5).
        checkpoint_every_epochs: Orbax checkpoint interval for `--resume` (a multiple of
            `eval_every_epochs`).
        batch_size, learning_rate, weight_decay, hidden_features, num_layers: paper values.
        models: names from ``linear, gnn, radial_field, egnn_vel``.
        seed: simulator seed, and initialisation and shuffling seed unless `train_seed`.
        train_seed: initialisation and shuffling seed on the same data (None: `seed`), for
            measuring the spread between training runs.
        sampler: initial conditions from the JAX PRNG (``"jax"``) or from NumPy's legacy
            stream in the reference generator's order (``"numpy-legacy"``; with ``seed=43``
            this is the paper's own dataset), see `egnn_jax.sim.ChargedConfig`.
    """

    n_train: int = 3_000
    n_valid: int = 2_000
    n_test: int = 2_000
    n_simulated_train: int = 10_000
    epochs: int = 10_000
    eval_every_epochs: int = 5
    checkpoint_every_epochs: int = 100
    batch_size: int = 100
    learning_rate: float = 5e-4
    weight_decay: float = 1e-12
    hidden_features: int = 64
    num_layers: int = 4
    models: tuple[str, ...] = tuple(_SPECS)
    seed: int = 0
    train_seed: int | None = None
    sampler: str = "jax"

    def __post_init__(self):
        object.__setattr__(self, "models", tuple(self.models))
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        unknown = [m for m in self.models if m not in _SPECS]
        if unknown or not self.models:
            raise ValueError(f"models must be names from {tuple(_SPECS)}, got {self.models}")
        if self.n_train > self.n_simulated_train:
            raise ValueError(f"n_train={self.n_train} > n_simulated_train")
        if self.n_train < self.batch_size:
            raise ValueError(f"n_train={self.n_train} < batch_size={self.batch_size}")
        if self.epochs % self.eval_every_epochs:
            raise ValueError(
                f"epochs={self.epochs} must be a multiple of eval_every_epochs="
                f"{self.eval_every_epochs}"
            )
        if self.checkpoint_every_epochs % self.eval_every_epochs:
            raise ValueError("checkpoint_every_epochs must be a multiple of eval_every_epochs")

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.batch_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"models": list(self.models)}

    @classmethod
    def from_dict(cls, d: dict) -> NBodyExperimentConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "models" else v) for k, v in d.items() if k in names})


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
    )


def model_spec(name: str, config: NBodyExperimentConfig) -> ModelSpec:
    return _model_spec(name, config.hidden_features, config.num_layers)


def featurise(x0, v0, charges, target=None) -> dict:
    """The reference N-body features (pure): node |v0|, edges [q_i q_j, |x0_i - x0_j|^2].

    Arguments:
        x0: `[S, M, 3]` input positions; v0: `[S, M, 3]` input velocities;
        charges: `[S, M]`; target: `[S, M, 3]` or None.

    Returns:
        The batch dict of `_models`: x0, v0, node_feat `[S, M, 1]`, edge_attr `[S, M, M, 2]`
        and target.
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
    }
    if target is not None:
        batch["target"] = jnp.asarray(target, jnp.float32)
        if batch["target"].shape != x0.shape:
            raise ValueError(f"target must have shape {x0.shape}, got {batch['target'].shape}")
    return batch


def _frames(ds, n: int) -> dict:
    return featurise(
        ds.x[:n, INPUT_FRAME], ds.v[:n, INPUT_FRAME], ds.charges[:n], ds.x[:n, TARGET_FRAME]
    )


def _datasets(config: NBodyExperimentConfig, data_dir: str | Path, progress=None):
    """The simulated train, valid and test datasets (read from the cache when present)."""
    return charged_splits(
        data_dir,
        n_train=config.n_simulated_train,
        n_valid=config.n_valid,
        n_test=config.n_test,
        seed=config.seed,
        progress=bool(progress),
        sampler=config.sampler,
    )


def load_data(config: NBodyExperimentConfig, data_dir: str | Path, progress=None) -> dict:
    """Simulate (or read from the cache in `data_dir`) and featurise the three splits."""
    train_ds, valid_ds, test_ds = _datasets(config, data_dir, progress)
    return {
        "train": _frames(train_ds, config.n_train),
        "valid": _frames(valid_ds, config.n_valid),
        "test": _frames(test_ds, config.n_test),
        "metadata": {
            split: {k: ds.metadata.get(k) for k in ("content_hash", "wall_seconds", "cache")}
            for split, ds in (("train", train_ds), ("valid", valid_ds), ("test", test_ds))
        },
    }


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


def _params_path(workdir: Path, name: str) -> Path:
    return workdir / "best" / f"{name}.msgpack"


def _save_params(workdir: Path, name: str, params) -> None:
    with atomic_open(_params_path(workdir, name)) as f:
        f.write(flax.serialization.to_bytes(params))


def _load_params(workdir: Path, name: str, like):
    path = _params_path(workdir, name)
    if not path.exists():
        raise FileNotFoundError(f"no saved parameters for {name!r} at {path}; train first")
    return flax.serialization.from_bytes(like, path.read_bytes())


def _template(spec: ModelSpec, batch: dict):
    one = jax.tree.map(lambda a: a[:1], batch)
    return spec.init(jax.random.key(0), one)


# Config fields that define the task and the models; runs that agree on them share a table.
_PROTOCOL_FIELDS = (
    "n_train",
    "n_valid",
    "n_test",
    "n_simulated_train",
    "batch_size",
    "hidden_features",
    "num_layers",
    "learning_rate",
    "weight_decay",
    "eval_every_epochs",
    "seed",
    "train_seed",
    "sampler",
)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(NBodyExperimentConfig)}


def _merge_previous(path: Path, config: NBodyExperimentConfig, results: dict, histories: dict):
    """Keep the rows of models this run did not train from an earlier metrics.json in the
    same workdir, when it used the same protocol (e.g. after ``--models gnn``). Each row
    carries its own ``epochs`` and ``command``."""
    if not path.is_file():
        return results, histories
    try:
        previous = json.loads(path.read_text())
        old = previous["config"]
        same = all(old.get(k, _DEFAULTS[k]) == getattr(config, k) for k in _PROTOCOL_FIELDS)
        rows, old_histories = previous["models"], previous.get("histories", {})
    except (ValueError, KeyError, TypeError):
        return results, histories
    if not same:
        return results, histories
    order = [n for n in _SPECS if n in results or n in rows]
    source = {n: (results, histories) if n in results else (rows, old_histories) for n in order}
    merged = {n: source[n][0][n] for n in order}
    merged_histories = {n: source[n][1][n] for n in order if n in source[n][1]}
    return merged, merged_histories


def train_and_evaluate(
    config: NBodyExperimentConfig,
    workdir: str | Path,
    *,
    resume: bool = False,
    progress: bool | None = None,
    data_dir: str | Path | None = None,
    command: str | None = None,
) -> dict:
    """Train every model, report test MSE at the best validation epoch; write metrics.json.

    Arguments:
        config: the experiment; workdir: outputs (best params in ``best/``, Orbax
        checkpoints in ``checkpoints/``, data cache in ``data/`` unless `data_dir`).
        resume: continue interrupted runs from their latest checkpoints.
        progress: tqdm bars (None: only on a terminal).
        command: recorded with each trained model's row (None: this process's command line).

    Returns:
        The metrics dict (also written to ``workdir/metrics.json``).
    """
    t_total = time.perf_counter()
    workdir = Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    wall: dict = {"train": {}}

    t = time.perf_counter()
    data = load_data(config, workdir / "data" if data_dir is None else data_dir, progress)
    wall["simulate"] = time.perf_counter() - t

    key = jax.random.key(config.seed if config.train_seed is None else config.train_seed)
    spe = config.steps_per_epoch
    results, histories, params_of, runs = {}, {}, {}, {}
    for name in config.models:
        spec = model_spec(name, config)
        if not spec.trainable:
            t = time.perf_counter()
            params_of[name] = spec.init(None, data["train"])
            results[name] = {"t": float(params_of[name]["t"])}
            wall["train"][name] = time.perf_counter() - t
            continue
        runs[name] = training_run(
            spec,
            key,
            data["train"],
            data["valid"],
            num_steps=config.epochs * spe,
            batch_size=config.batch_size,
            eval_every=config.eval_every_epochs * spe,
            checkpoint_every=config.checkpoint_every_epochs * spe,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            workdir=workdir,
            resume=resume,
            progress=progress,
        )
    # Side by side, one thread each (see `train_concurrently`): the small networks leave
    # CPU cores idle when trained one after another.
    t = time.perf_counter()
    trained = train_concurrently(runs)
    wall["train_all_networks"] = time.perf_counter() - t
    for name, res in trained.items():
        params_of[name] = res.params
        histories[name] = [h | {"epoch": h["step"] / spe} for h in res.history]
        results[name] = {
            "best_epoch": res.best_step / spe,
            "epochs": config.epochs,
            "num_params": int(sum(np.size(p) for p in jax.tree.leaves(res.params))),
        }
        wall["train"][name] = res.wall_seconds

    for name in config.models:
        spec, params = model_spec(name, config), params_of[name]
        _save_params(workdir, name, params)
        predict = jax.jit(spec.predict)
        for split in ("valid", "test"):
            pred = predict(params, data[split])
            results[name][f"{split}_mse"] = float(mse(pred, data[split]["target"]))
        batch100 = jax.tree.map(lambda a: a[:100], data["test"])
        results[name]["forward_ms_per_batch"] = forward_ms(spec, params, batch100)
        results[name]["paper_test_mse"] = PAPER_TEST_MSE[name]
    results = {name: results[name] for name in config.models}

    if command is None:  # the command line this process was started with
        command = shlex.join(["python", *sys.orig_argv[1:]])
    for name in config.models:
        results[name]["command"] = command
    results, histories = _merge_previous(workdir / "metrics.json", config, results, histories)

    t = time.perf_counter()
    epoch_histories = {
        name: [h | {"step": h["epoch"]} for h in hist] for name, hist in histories.items()
    }
    plot_loss_curves(
        workdir / "loss_curves.png",
        epoch_histories,
        {k: v["valid_mse"] for k, v in results.items()},
        title="Charged N-body: loss curves",
        x_label="epoch",
    )
    wall["plot"] = time.perf_counter() - t
    wall["total"] = time.perf_counter() - t_total
    metrics = {
        "experiment": "nbody_charged",
        "protocol": f"frame {INPUT_FRAME} -> frame {TARGET_FRAME}; test MSE at best val epoch",
        "test_mse": {k: v["test_mse"] for k, v in results.items()},
        "models": results,
        "n_train": config.n_train,
        "n_valid": config.n_valid,
        "n_test": config.n_test,
        "forward_batch": min(100, config.n_test),
        "data": data["metadata"],
        "wall_seconds": wall,
        "device": device(),
        "versions": versions(),
        "config": config.to_dict() | {"models": list(results)},
        "command": command,
        "histories": histories,
    }
    save_json_atomic(workdir / "metrics.json", metrics)
    return metrics


def export_split(
    config: NBodyExperimentConfig, split: str, path: str | Path, data_dir: str | Path
) -> Path:
    """Write `split` ("train", "valid" or "test") of `config`'s data as the `--evaluate`
    format: ``x0, v0 [S, M, 3]`` (input frame), ``q [S, M]`` and ``xT [S, M, 3]`` (target)."""
    names = ("train", "valid", "test")
    if split not in names:
        raise ValueError(f"split must be one of {names}, got {split!r}")
    ds = dict(zip(names, _datasets(config, data_dir), strict=True))[split]
    n = {"train": config.n_train, "valid": config.n_valid, "test": config.n_test}[split]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        np.savez(
            f,
            x0=ds.x[:n, INPUT_FRAME],
            v0=ds.v[:n, INPUT_FRAME],
            q=ds.charges[:n],
            xT=ds.x[:n, TARGET_FRAME],
        )
    return path


def evaluate_file(workdir: str | Path, path: str | Path) -> dict[str, float]:
    """MSE of every saved model in `workdir` on FILE.npz with x0, v0, q, xT."""
    workdir = Path(workdir)
    metrics_path = workdir / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path} not found: train into {workdir} first")
    config = NBodyExperimentConfig.from_dict(json.loads(metrics_path.read_text())["config"])
    with np.load(path) as f:
        missing = {"x0", "v0", "q", "xT"} - set(f.files)
        if missing:
            raise ValueError(f"{path} lacks arrays {sorted(missing)} (need x0, v0, q, xT)")
        batch = featurise(f["x0"], f["v0"], f["q"], f["xT"])
    out = {}
    for name in config.models:
        spec = model_spec(name, config)
        params = _load_params(workdir, name, _template(spec, batch))
        out[name] = float(mse(jax.jit(spec.predict)(params, batch), batch["target"]))
    return out


def format_table(metrics: dict) -> str:
    rows = [
        "| model | test MSE (ours) | paper | epochs | best epoch | forward ms / batch |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in metrics["models"].items():
        best, epochs = r.get("best_epoch"), r.get("epochs")
        rows.append(
            f"| {LABELS[name]} | {r['test_mse']:.4f} | {r['paper_test_mse']:.4f} | "
            f"{'-' if epochs is None else epochs} | {'-' if best is None else int(best)} | "
            f"{r['forward_ms_per_batch']:.2f} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m egnn_jax.experiments.nbody_charged",
        description="Reproduce the EGNN paper's charged N-body table (Table 2).",
    )
    parser.add_argument(
        "--workdir", type=Path, default=DEFAULT_WORKDIR, help=f"outputs (default {DEFAULT_WORKDIR})"
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs per model (10000)")
    parser.add_argument(
        "--models", default=None, help="comma-separated subset of " + ",".join(_SPECS)
    )
    parser.add_argument("--quick", action="store_true", help="tiny end-to-end smoke run")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoints")
    parser.add_argument("--seed", type=int, default=None, help="data and training seed (0)")
    parser.add_argument(
        "--train-seed", type=int, default=None, help="training seed on the same data (--seed)"
    )
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=None,
        help="initial conditions: JAX PRNG (default) or NumPy's legacy stream in the reference "
        "generator's order; '--sampler numpy-legacy --seed 43' is the paper's dataset",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="simulation cache (default WORKDIR/data)"
    )
    parser.add_argument(
        "--evaluate",
        type=Path,
        default=None,
        metavar="FILE.npz",
        help="print JSON MSE of the saved models on FILE (x0, v0, q, xT)",
    )
    parser.add_argument(
        "--export",
        nargs=2,
        default=None,
        metavar=("SPLIT", "FILE.npz"),
        help="write SPLIT (train, valid, test) of the data in the --evaluate format and exit",
    )
    args = parser.parse_args(argv)
    interrupt_on_signals()
    try:
        if args.evaluate is not None:
            print(json.dumps(evaluate_file(args.workdir, args.evaluate), indent=2))
            return 0
        config = quick_config() if args.quick else NBodyExperimentConfig()
        overrides = {
            "epochs": args.epochs,
            "seed": args.seed,
            "train_seed": args.train_seed,
            "sampler": args.sampler,
        }
        if args.models:
            overrides["models"] = tuple(args.models.split(","))
        config = dataclasses.replace(
            config, **{k: v for k, v in overrides.items() if v is not None}
        )
        if args.export is not None:
            split, path = args.export
            data_dir = args.workdir / "data" if args.data_dir is None else args.data_dir
            print(f"wrote {export_split(config, split, path, data_dir)}")
            return 0
        metrics = train_and_evaluate(
            config, args.workdir, resume=args.resume, data_dir=args.data_dir
        )
    except (TrainingDiverged, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: training state saved; continue with --resume", file=sys.stderr)
        return 130
    print(format_table(metrics))
    print(f"wrote {Path(args.workdir) / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
