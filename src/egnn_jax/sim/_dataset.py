"""Dataset container and the on-disk cache (``.npz`` + JSON metadata, atomic writes)."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from egnn_jax._atomic import atomic_open

__all__ = ["Dataset", "charged_splits", "load_dataset", "load_or_simulate", "save_dataset"]

# Bump when the generators change in a way that alters the arrays for an unchanged config, so
# stale caches are regenerated instead of silently reused.
GENERATOR_VERSION = 1

_ARRAYS = ("x", "v", "t", "masses", "charges")


@dataclasses.dataclass
class Dataset:
    """Simulated trajectories.

    Attributes:
        x: positions ``[N, T, M, dim]``.
        v: velocities ``[N, T, M, dim]``.
        t: save times ``[T]``.
        masses: ``[N, M]`` (gravity) or ``None``.
        charges: ``[N, M]`` (charged particles) or ``None``.
        metadata: JSON-able dict: ``kind``, ``config``, ``seed``, ``versions``,
            ``content_hash``, ``created``, and generator statistics (``n_rejected``,
            ``median_rel_energy_error``, ``wall_seconds``, ...).
        rel_energy_error: ``[N]`` per-trajectory relative energy error (gravity only; not
            stored on disk, the summary is in ``metadata``).
    """

    x: np.ndarray
    v: np.ndarray
    t: np.ndarray
    masses: np.ndarray | None
    charges: np.ndarray | None
    metadata: dict[str, Any]
    rel_energy_error: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in _ARRAYS if getattr(self, k) is not None}


def _versions() -> dict[str, str]:
    import diffrax
    import equinox
    import jax

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "jaxlib": getattr(sys.modules.get("jaxlib"), "__version__", "unknown"),
        "diffrax": diffrax.__version__,
        "equinox": equinox.__version__,
    }


def config_dict(cfg) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def config_hash(kind: str, cfg) -> str:
    """Stable hash of (kind, config, generator version): the cache key."""
    payload = {"kind": kind, "config": config_dict(cfg), "generator_version": GENERATOR_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the arrays, in a fixed order."""
    h = hashlib.sha256()
    for name in _ARRAYS:
        if name in arrays:
            a = np.ascontiguousarray(arrays[name])
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def make_metadata(kind: str, cfg, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": kind,
        "config": config_dict(cfg),
        "config_hash": config_hash(kind, cfg),
        "seed": cfg.seed,
        "generator_version": GENERATOR_VERSION,
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **extra,
    }


def save_dataset(ds: Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``path`` (``.npz``) atomically: temporary file in the same folder + rename.

    The metadata (with the content hash filled in) is stored as a JSON string array
    ``metadata_json``.  Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = ds.arrays()
    ds.metadata["content_hash"] = content_hash(arrays)
    meta = np.array(json.dumps(ds.metadata, sort_keys=True))
    with atomic_open(path) as f:
        np.savez(f, metadata_json=meta, **arrays)
    return path


class CorruptDatasetError(ValueError):
    """The file is truncated, unreadable, or its arrays do not match the stored hash."""


def load_dataset(path: str | os.PathLike, *, verify: bool = True) -> Dataset:
    """Read a dataset written by :func:`save_dataset`.

    Raises:
        CorruptDatasetError: unreadable/truncated file, missing arrays, or (``verify=True``)
            a content hash mismatch.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["metadata_json"]))
            arrays = {k: f[k] for k in _ARRAYS if k in f.files}
    # A damaged zip can fail in many ways (BadZipFile, zlib.error, EOFError, ValueError, ...).
    except Exception as e:  # noqa: BLE001
        raise CorruptDatasetError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    for k in ("x", "v", "t"):
        if k not in arrays:
            raise CorruptDatasetError(f"{path} lacks array {k!r}")
    if verify and content_hash(arrays) != meta.get("content_hash"):
        raise CorruptDatasetError(f"{path}: content hash mismatch")
    return Dataset(
        x=arrays["x"],
        v=arrays["v"],
        t=arrays["t"],
        masses=arrays.get("masses"),
        charges=arrays.get("charges"),
        metadata=meta,
    )


def _kind_of(cfg) -> str:
    from ._charged import ChargedConfig
    from ._three_body import ThreeBodyConfig

    if isinstance(cfg, ThreeBodyConfig):
        return "three-body"
    if isinstance(cfg, ChargedConfig):
        return "charged"
    raise TypeError(f"expected ThreeBodyConfig or ChargedConfig; got {type(cfg).__name__}")


def cache_path(cfg, cache_dir: str | os.PathLike) -> Path:
    kind = _kind_of(cfg)
    return Path(cache_dir) / f"{kind}-{config_hash(kind, cfg)[:16]}.npz"


def load_or_simulate(cfg, cache_dir: str | os.PathLike, *, progress: bool = True) -> Dataset:
    """Return the dataset for ``cfg``, from ``cache_dir`` if a valid copy is there.

    The file name is keyed by a hash of (kind, config, generator version).  A cached file is
    reused only if it reads back, its stored config equals ``cfg`` and its arrays match the
    stored content hash; otherwise (truncated, corrupt, stale) a message is printed to stderr and
    the dataset is regenerated and rewritten atomically.

    Arguments:
        cfg: a ThreeBodyConfig or ChargedConfig.
        cache_dir: folder for the ``.npz`` files (created if needed).
        progress: progress bar while generating.

    Returns:
        The :class:`Dataset`; ``metadata["cache"]`` is ``"hit"`` or ``"generated"``.
    """
    from ._charged import simulate_charged
    from ._three_body import simulate_three_body

    kind = _kind_of(cfg)
    path = cache_path(cfg, cache_dir)
    if path.exists():
        try:
            ds = load_dataset(path)
            if ds.metadata.get("config") != config_dict(cfg) or ds.metadata.get("kind") != kind:
                raise CorruptDatasetError(f"{path}: stored config differs from the requested one")
            ds.metadata["cache"] = "hit"
            return ds
        except CorruptDatasetError as e:
            print(f"[egnn_jax.sim] {e}; regenerating {path.name}", file=sys.stderr)
    simulate = simulate_three_body if kind == "three-body" else simulate_charged
    ds = simulate(cfg, progress=progress)
    save_dataset(ds, path)
    ds.metadata["cache"] = "generated"
    return ds


def charged_splits(
    cache_dir: str | os.PathLike,
    n_train: int = 10_000,
    n_valid: int = 2_000,
    n_test: int = 2_000,
    seed: int = 0,
    *,
    progress: bool = True,
    **config_overrides,
) -> tuple[Dataset, Dataset, Dataset]:
    """The charged benchmark's train / valid / test datasets, cached in ``cache_dir``.

    Each split is a :class:`ChargedConfig` with its own ``split`` field, hence an independent
    PRNG stream of the same ``seed`` (with ``sampler="numpy-legacy"``, the segment of the one
    legacy stream that follows ``n_train`` train and ``n_valid`` valid trajectories).
    ``config_overrides`` are passed to every ChargedConfig.
    """
    from ._charged import ChargedConfig

    config_overrides.setdefault("legacy_split_sizes", (n_train, n_valid))
    out = []
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        cfg = ChargedConfig(n_trajectories=n, seed=seed, split=split, **config_overrides)
        out.append(load_or_simulate(cfg, cache_dir, progress=progress))
    return out[0], out[1], out[2]
