"""The dataset container shared by every simulator, its metadata and its ``.npz`` file format.

This module imports no simulator: simulators build `Dataset`s, `_cache` maps configs to them.
"""

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

__all__ = ["CorruptDatasetError", "Dataset", "load_dataset", "make_metadata", "save_dataset"]

# Bump when the generators change in a way that alters the arrays for an unchanged config, so
# stale caches are regenerated instead of silently reused.
GENERATOR_VERSION = 1

_ARRAYS = ("x", "v", "t", "masses", "charges", "radius", "box", "complex_id", "node_mask")


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
        rel_energy_error: ``[N]`` per-trajectory relative energy error (not stored on disk,
            the summary is in ``metadata``).
        radius: the spheres' radius, ``[]`` or ``[N]`` (collisions) or ``None``.
        box: the box's half-width ``L`` (the box is ``[−L, L]^dim``), ``[]`` or ``[N]``
            (collisions) or ``None``.
        complex_id: ``[N, M]`` int, the rigid complex of every particle, −1 on padding
            (complexes) or ``None``.
        node_mask: ``[N, M]`` bool, True for real particles where systems of different sizes
            are padded to one M (complexes) or ``None``.
    """

    x: np.ndarray
    v: np.ndarray
    t: np.ndarray
    masses: np.ndarray | None
    charges: np.ndarray | None
    metadata: dict[str, Any]
    rel_energy_error: np.ndarray | None = None
    radius: np.ndarray | None = None
    box: np.ndarray | None = None
    complex_id: np.ndarray | None = None
    node_mask: np.ndarray | None = None

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
        radius=arrays.get("radius"),
        box=arrays.get("box"),
        complex_id=arrays.get("complex_id"),
        node_mask=arrays.get("node_mask"),
    )
