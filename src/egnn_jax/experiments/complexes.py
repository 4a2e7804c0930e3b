"""EGHN's M-complex benchmark: charged particles bound into M rigid complexes, frame 10 -> 25.

    python -m egnn_jax.experiments.complexes --complexes 3 --avg-size 3   # the full protocol
    python -m egnn_jax.experiments.complexes --complexes 5 --avg-size 5 --models egnn,eghn
    python -m egnn_jax.experiments.complexes --quick --workdir /tmp/cx     # ~1 min on CPU
    python -m egnn_jax.experiments.complexes --export test t.npz           # a split, to score
    python -m egnn_jax.experiments.complexes --evaluate t.npz              # committed models

Protocol (the public EGHN code, `main_simulation.py`, `simulation/dataset.py`): data of
`egnn_jax.sim.ComplexesConfig` (seed 43; five system types per dataset, so N varies and
systems are padded to the largest with a node mask); the first 1,000 of the generated training
systems, 2,000 validation and 2,000 test systems; input frame 10, target frame 25. Inputs as
that code gives them: node feature |v|, edge attributes [q_i q_j, same-complex flag,
|x_i − x_j|²] on the complete graph; EGHN's local graph is the intra-complex edges. Adam
lr 5e-4, weight decay 1e-12, batch 100 (10 steps an epoch), validation every 5 epochs, early
stop after 50 validations without improvement, 10,000 epochs at most; the figure is the test
MSE over real particles at the best validation epoch.

Models: `linear` (x0 + t v0, t fitted by least squares), `gnn` (input [x, v], edge attributes
[q_i q_j, same-complex], as the GMN code the EGHN authors ran their baselines with), `rf`
(Radial Field on the three edge attributes), `egnn` (EGNN-vel, 4 layers) and `eghn`
(`egnn_jax.eghn`: K = 3 clusters, 3 + 3 + 3 layers, cut-loss weight 1). Differences from the
reference: its loss and metric pool a batch's real particles (``MaskMSELoss``), as ours; its
validation and test batches are shuffled, ours are whole; its padding leaks into EGHN's cluster
features, ours does not (`egnn_jax._eghn`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import egnn_jax
from egnn_jax._atomic import atomic_open
from egnn_jax.sim import ComplexesConfig, complex_sizes, load_or_simulate

from ._cli import entry_points
from ._experiment import EpochsConfig, EvaluationFileError, ExperimentData, load_npz, split_sizes
from ._frame_task import FrameTask
from ._models import ModelSpec, masked_mse
from ._report import epochs_table, save_figure_atomic
from .nbody_charged import forward_ms

__all__ = [
    "COLUMNS",
    "EXPERIMENT",
    "MODEL_NAMES",
    "PUBLISHED_MSE",
    "ComplexesExperimentConfig",
    "evaluate_file",
    "featurise",
    "main",
    "quick_config",
    "train_and_evaluate",
]

INPUT_FRAME, TARGET_FRAME = 10, 25
MODEL_NAMES = ("linear", "gnn", "rf", "egnn", "eghn", "eghn_bounded")
LABELS = {
    "linear": "Linear",
    "gnn": "GNN",
    "rf": "RF",
    "egnn": "EGNN",
    "eghn": "EGHN",
    "eghn_bounded": "EGHN, bounded logits",
}
# `eghn_bounded`'s assignment logits pass through b tanh(logits / b) (`EGHNConfig.logit_bound`):
# the smallest softmax entry stays above exp(-2b) / K = 1e-4, so the cut loss keeps a gradient.
ASSIGNMENT_LOGIT_BOUND = 4.0
COLUMNS = ((3, 3), (5, 5), (5, 10), (10, 10))
# EGHN's table (NeurIPS 2022): prediction MSE x 1e-2, columns (M, average complex size).
PUBLISHED_MSE = {
    "linear": (35.15, 35.22, 30.14, 31.44),
    "gnn": (16.00, 17.55, 16.15, 15.91),
    "rf": (14.20, 18.37, 17.08, 18.57),
    "egnn": (12.69, 15.37, 15.12, 14.64),
    "eghn": (11.58, 14.42, 14.29, 13.09),
}
EVALUATION_KEYS = ("x0", "v0", "q", "complex_id", "node_mask", "xT")


def published(name: str, complexes: int, avg_size: int) -> float | None:
    """The published test MSE (not x 1e-2), None where not published."""
    column = (complexes, avg_size)
    if name not in PUBLISHED_MSE or column not in COLUMNS:
        return None
    return PUBLISHED_MSE[name][COLUMNS.index(column)] * 1e-2


@dataclasses.dataclass(frozen=True)
class ComplexesExperimentConfig(EpochsConfig):
    """The EGHN M-complex protocol (defaults) for one column (M, average size).

    Attributes (besides `EpochsConfig`'s):
        complexes: M, rigid complexes per system.
        avg_size: the nominal average complex size.
        n_valid, n_test: systems of the validation and test splits.
        num_clusters: EGHN's K.
        cut_weight: EGHN's λ, the weight of the cut loss in its training loss.
        eghn_layers: EGHN's layers per stage (low, pooling, high; the paper's 3).
    """

    models: tuple[str, ...] = MODEL_NAMES
    seed: int = 43
    batch_size: int = 100
    complexes: int = 3
    avg_size: int = 3
    n_train: int = 1_000
    n_valid: int = 2_000
    n_test: int = 2_000
    epochs: int = 10_000
    eval_every_epochs: int = 5
    patience_epochs: int = 250
    checkpoint_every_epochs: int = 25
    num_clusters: int = 3
    cut_weight: float = 1.0
    eghn_layers: int = 3

    def __post_init__(self):
        ComplexesConfig(n_complexes=self.complexes, avg_size=self.avg_size)  # checks both
        if self.num_clusters < 2 or self.cut_weight < 0 or self.eghn_layers < 1:
            raise ValueError("num_clusters must be >= 2, cut_weight >= 0, eghn_layers >= 1")
        super().__post_init__()

    @property
    def eval_batch_size(self) -> int | None:
        # Complete graphs of up to 100 particles: a whole split at once would hold gigabytes
        # of edge messages.
        return min(200, self.n_valid)


def quick_config() -> ComplexesExperimentConfig:
    """A smoke run of the whole pipeline (about a minute on a CPU)."""
    return ComplexesExperimentConfig(
        n_train=40,
        n_valid=20,
        n_test=20,
        batch_size=20,
        epochs=4,
        eval_every_epochs=2,
        patience_epochs=100,
        checkpoint_every_epochs=2,
        hidden_features=16,
        num_layers=2,
        eghn_layers=1,
        learning_rate=1e-3,
    )


def featurise(x0, v0, charges, complex_id, node_mask, target=None) -> dict:
    """The reference inputs of every model (NumPy, float64 then float32: same bits anywhere).

    Arguments:
        x0, v0: `[S, N, 3]` positions and velocities at the input frame (padded);
        charges: `[S, N]`; complex_id: `[S, N]` int (−1 on padding); node_mask: `[S, N]`
        bool; target: `[S, N, 3]` or None.

    Returns:
        x0, v0, charges, complex_id, node_mask; node_feat `[S, N, 1]` = |v0|; edge_attr
        `[S, N, N, 3]` = [q_i q_j, same complex, |x_i − x_j|²]; gnn_node `[S, N, 6]` = [x, v];
        gnn_edge `[S, N, N, 2]` = [q_i q_j, same complex]; local_adjacency `[S, N, N]` (same
        complex, no self-loops); target. Pairs with a padding node are zero.
    """
    x, v = np.asarray(x0, np.float64), np.asarray(v0, np.float64)
    q = np.asarray(charges, np.float64)
    ids, mask = np.asarray(complex_id), np.asarray(node_mask)
    if x.ndim != 3 or x.shape[-1] != 3 or v.shape != x.shape:
        raise ValueError(f"need x0, v0 [S, N, 3]; got {x.shape}, {v.shape}")
    for name, a in (("charges", q), ("complex_id", ids), ("node_mask", mask)):
        if a.shape != x.shape[:2]:
            raise ValueError(f"{name} must have shape {x.shape[:2]}, got {a.shape}")
    if mask.dtype != bool or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError("node_mask must be bool and complex_id integer")
    if not mask.any(axis=1).all():
        raise ValueError("every system needs at least one real particle (node_mask)")
    if not (np.isfinite(x).all() and np.isfinite(v).all()):
        raise ValueError("x0 and v0 must be finite")
    pair = mask[:, :, None] & mask[:, None, :]
    same = pair & (ids[:, :, None] == ids[:, None, :])
    diff = x[:, :, None, :] - x[:, None, :, :]
    d2 = sum(diff[..., k] * diff[..., k] for k in range(3)) * pair
    qq = q[:, :, None] * q[:, None, :] * pair
    speed = np.sqrt(sum(v[..., k] * v[..., k] for k in range(3)))[..., None]
    n = x.shape[1]
    batch = {
        "x0": x.astype(np.float32),
        "v0": v.astype(np.float32),
        "charges": q.astype(np.float32),
        "complex_id": ids.astype(np.int32),
        "node_mask": mask,
        "node_feat": speed.astype(np.float32),
        "edge_attr": np.stack([qq, same, d2], -1).astype(np.float32),
        "gnn_node": np.concatenate([x, v], -1).astype(np.float32),
        "gnn_edge": np.stack([qq, same], -1).astype(np.float32),
        "local_adjacency": same & ~np.eye(n, dtype=bool)[None],
    }
    if target is not None:
        batch["target"] = np.asarray(target, np.float32)
        if batch["target"].shape != x.shape:
            raise ValueError(f"target must have shape {x.shape}, got {batch['target'].shape}")
    return batch


def _simulator_config(config: ComplexesExperimentConfig, split: str) -> ComplexesConfig:
    sizes = split_sizes(config)
    return ComplexesConfig(
        n_trajectories=sizes[split],
        n_complexes=config.complexes,
        avg_size=config.avg_size,
        frames=(INPUT_FRAME, TARGET_FRAME),
        split=split,
        seed=config.seed,
    )


def local_edge_capacity(config: ComplexesExperimentConfig) -> int:
    """The most intra-complex (local) edges of any system the config's simulator draws: the
    edge budget of EGHN's pooling (all splits share the config's system types)."""
    sizes = complex_sizes(_simulator_config(config, "train")).astype(np.int64)
    return int(np.max(np.sum(sizes * (sizes - 1), axis=1)))


def _local_edges_needed(batch: dict) -> int:
    adj, mask = np.asarray(batch["local_adjacency"]), np.asarray(batch["node_mask"])
    real = adj & mask[:, :, None] & mask[:, None, :]
    return int(real.sum((1, 2)).max(initial=1))


def _split_arrays(config, split: str, data_dir, progress=None) -> dict:
    """The `--evaluate` arrays of one split, and its simulator metadata."""
    ds = load_or_simulate(_simulator_config(config, split), data_dir, progress=bool(progress))
    return {
        "x0": ds.x[:, 0],
        "v0": ds.v[:, 0],
        "q": ds.charges,
        "complex_id": ds.complex_id,
        "node_mask": ds.node_mask,
        "xT": ds.x[:, 1],
        "metadata": ds.metadata,
    }


def export_split(config, split: str, path, data_dir) -> Path:
    """Write `split` in the `--evaluate` format: ``x0, v0, xT [S, N, 3]``, ``q [S, N]``,
    ``complex_id [S, N]``, ``node_mask [S, N]``."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be train, valid or test, got {split!r}")
    arrays = _split_arrays(config, split, data_dir)
    path = Path(path)
    with atomic_open(path) as f:
        np.savez(f, **{k: arrays[k] for k in EVALUATION_KEYS})
    return path


def _predict_in_chunks(spec: ModelSpec, params, batch: dict, chunk: int) -> np.ndarray:
    predict = jax.jit(spec.predict)
    n = batch["x0"].shape[0]
    parts = []
    for start in range(0, n, chunk):
        part = {k: a[start : start + chunk] for k, a in batch.items()}
        parts.append(np.asarray(predict(params, part)))
    return np.concatenate(parts)


def _assignments(params, spec: ModelSpec, batch: dict) -> np.ndarray:
    from ._models import MODEL_KINDS

    outputs = jax.jit(lambda p, b: MODEL_KINDS["eghn"].outputs(spec, p, b))
    return np.asarray(outputs(params, batch).assignment)


class Complexes(FrameTask):
    """A `FrameTask` whose ``--evaluate`` files also carry the complexes and the padding."""

    name = "complexes"
    description = "EGHN's M-complex systems (rigid complexes of charged particles): frame 10 -> 25"
    Config = ComplexesExperimentConfig
    model_names = MODEL_NAMES
    default_workdir = Path("experiments/results/complexes/3_3")
    data_keys = ("x0", "v0", "charges", "complex_id", "node_mask", "target")
    featurise = staticmethod(featurise)
    export_split = staticmethod(export_split)

    def quick_config(self):
        return quick_config()

    def default_workdir_for(self, args):
        m = 3 if args.complexes is None else args.complexes
        s = 3 if args.avg_size is None else args.avg_size
        return Path("experiments/results/complexes") / f"{m}_{s}"

    def add_arguments(self, parser):
        parser.add_argument("--complexes", type=int, help="complexes M per system (3)")
        parser.add_argument("--avg-size", type=int, help="average complex size (3)")
        parser.add_argument("--epochs", type=int, help="epochs per model at most (10000)")
        parser.add_argument("--clusters", type=int, help="EGHN's clusters K (3)")
        super().add_arguments(parser)  # --export SPLIT FILE.npz

    def config_overrides(self, args):
        return {
            "complexes": args.complexes,
            "avg_size": args.avg_size,
            "epochs": args.epochs,
            "num_clusters": args.clusters,
        }

    def model_spec(self, name, config):
        width, depth = config.hidden_features, config.num_layers
        if name == "linear":
            return ModelSpec(name, "linear")
        if name == "gnn":
            return ModelSpec(name, "gnn", width, depth)
        if name == "rf":
            return ModelSpec(name, "radial_field", width, depth)
        if name == "egnn":
            return ModelSpec(name, "egnn", width, depth, (("velocity", True),))
        if name in ("eghn", "eghn_bounded"):
            options = (
                ("num_clusters", config.num_clusters),
                ("cut_weight", config.cut_weight),
                ("local_capacity", local_edge_capacity(config)),
            )
            if name == "eghn_bounded":
                options += (("logit_bound", ASSIGNMENT_LOGIT_BOUND),)
            # A stage at EGHNConfig's default depth (the paper's) is left out of the options,
            # so the specs, and fingerprints, of the committed runs stay as they were.
            layers, paper = config.eghn_layers, egnn_jax.EGHNConfig()
            stages = ("low_layers", "pooling_layers", "high_layers")
            options += tuple((s, layers) for s in stages if layers != getattr(paper, s))
            return ModelSpec(name, "eghn", width, layers, options)
        raise ValueError(f"unknown model {name!r}; choose from {MODEL_NAMES}")

    def load_data(self, config, data_dir, progress):
        splits, metadata = [], {}
        for split in ("train", "valid", "test"):
            arrays = _split_arrays(config, split, data_dir, progress)
            meta = arrays.pop("metadata")
            keep = ("content_hash", "wall_seconds", "device", "system_types", "n_redrawn")
            metadata[split] = {k: meta.get(k) for k in keep}
            splits.append(
                featurise(
                    arrays["x0"],
                    arrays["v0"],
                    arrays["q"],
                    arrays["complex_id"],
                    arrays["node_mask"],
                    arrays["xT"],
                )
            )
        return ExperimentData(*splits, metadata)

    def read_evaluation_file(self, config, path):
        f = load_npz(path, EVALUATION_KEYS)
        try:
            return featurise(f["x0"], f["v0"], f["q"], f["complex_id"], f["node_mask"], f["xT"])
        except ValueError as e:
            raise EvaluationFileError(f"{path}: {e}") from e

    def metrics(self, config, spec, params, batch):
        if spec.kind == "eghn":  # an --evaluate file may hold larger complexes than training
            options = dict(spec.options)
            need = _local_edges_needed(batch)
            if need > options["local_capacity"]:
                spec = dataclasses.replace(
                    spec, options=tuple((options | {"local_capacity": need}).items())
                )
        pred = _predict_in_chunks(spec, params, batch, config.eval_batch_size)
        return {"mse": float(masked_mse(jnp.asarray(pred), batch))}

    def extra_results(self, config, spec, params, data):
        batch = jax.tree.map(lambda a: a[: min(100, a.shape[0])], data.test)
        extra = {
            "column": [config.complexes, config.avg_size],
            "forward_ms_per_batch": forward_ms(spec, params, batch),
            "published_test_mse": published(spec.name, config.complexes, config.avg_size),
        }
        if spec.kind == "eghn":
            extra["clusters"] = cluster_usage(
                _assignments(params, spec, batch), batch["node_mask"], config.num_clusters
            )
        return extra

    def format_table(self, metrics):
        cfg = metrics["config"]
        column = f"({cfg['complexes']}, {cfg['avg_size']})"
        return epochs_table(self.ordered_rows(metrics), LABELS, f"test MSE x1e-2 {column}")

    def plots(self, workdir, config, metrics, params, data):
        batch = jax.tree.map(lambda a: a[:4], data.test)
        for name, file in (("eghn", "clusters.png"), ("eghn_bounded", "clusters_bounded.png")):
            if name in params:
                spec = self.model_spec(name, config)
                assignment = _assignments(params[name], spec, batch)
                plot_clusters(workdir / file, batch, assignment, LABELS[name])


def cluster_usage(assignment, node_mask, num_clusters: int) -> dict:
    """How many clusters an EGHN's pooling uses: per system, the distinct argmax clusters of
    its real particles.

    Arguments:
        assignment: `[S, N, K]` soft assignments; node_mask: `[S, N]` bool.

    Returns:
        ``mean_clusters_used`` (1 = collapsed), ``share_using_all`` (systems whose particles
        use all K clusters), ``systems``.
    """
    assignment, mask = np.asarray(assignment), np.asarray(node_mask)
    used = [len(np.unique(a[m].argmax(-1))) for a, m in zip(assignment, mask, strict=True)]
    return {
        "mean_clusters_used": float(np.mean(used)),
        "share_using_all": float(np.mean(np.asarray(used) == num_clusters)),
        "systems": len(used),
    }


def plot_clusters(path: Path, batch: dict, assignment: np.ndarray, label: str = "EGHN") -> None:
    """Test systems seen from above: particles coloured by their argmax cluster, each rigid
    complex outlined by a circle around its particles (x–y projection)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = batch["x0"].shape[0]
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    colours = plt.get_cmap("tab10")
    for s, ax in enumerate(axes[0]):
        real = np.asarray(batch["node_mask"][s])
        x = np.asarray(batch["x0"][s])[real]
        ids = np.asarray(batch["complex_id"][s])[real]
        cluster = assignment[s][real].argmax(-1)
        for c in np.unique(ids):
            members = x[ids == c, :2]
            centre = members.mean(0)
            radius = np.linalg.norm(members - centre, axis=1).max() + 0.15
            ax.add_patch(plt.Circle(centre, radius, fill=False, color="0.5", lw=1))
        ax.scatter(x[:, 0], x[:, 1], c=[colours(k % 10) for k in cluster], s=25, zorder=3)
        ax.set_aspect("equal")
        ax.set_title(f"test system {s}: {len(np.unique(ids))} complexes", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{label}: learned clusters (colour: argmax of S; circles: rigid complexes)")
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


EXPERIMENT = Complexes()
train_and_evaluate, evaluate_file, main = entry_points(EXPERIMENT)


if __name__ == "__main__":
    sys.exit(main())
