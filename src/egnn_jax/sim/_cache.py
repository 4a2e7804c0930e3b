"""The on-disk dataset cache: one ``.npz`` per (simulator, config), regenerated when stale."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from ._charged import ChargedConfig, simulate_charged
from ._collisions import CollisionsConfig, simulate_collisions
from ._complexes import ComplexesConfig, simulate_complexes
from ._dataset import (
    CorruptDatasetError,
    Dataset,
    config_dict,
    config_hash,
    load_dataset,
    save_dataset,
)
from ._nbody import NBodyConfig, simulate_nbody
from ._three_body import ThreeBodyConfig, simulate_three_body

__all__ = ["cache_path", "charged_split", "charged_splits", "load_or_simulate"]

# Config type -> (kind, simulate(cfg, progress=...)). A new simulator registers here.
SIMULATORS: dict[type, tuple[str, Callable[..., Dataset]]] = {
    ThreeBodyConfig: ("three-body", simulate_three_body),
    ChargedConfig: ("charged", simulate_charged),
    NBodyConfig: ("nbody", simulate_nbody),
    CollisionsConfig: ("collisions", simulate_collisions),
    ComplexesConfig: ("complexes", simulate_complexes),
}


def _simulator(cfg) -> tuple[str, Callable[..., Dataset]]:
    try:
        return SIMULATORS[type(cfg)]
    except KeyError:
        names = ", ".join(t.__name__ for t in SIMULATORS)
        raise TypeError(f"expected one of {names}; got {type(cfg).__name__}") from None


def cache_path(cfg, cache_dir: str | os.PathLike) -> Path:
    """``cache_dir/<kind>-<hash of kind, config and generator version>.npz``."""
    kind, _ = _simulator(cfg)
    return Path(cache_dir) / f"{kind}-{config_hash(kind, cfg)[:16]}.npz"


def load_or_simulate(cfg, cache_dir: str | os.PathLike, *, progress: bool = True) -> Dataset:
    """Return the dataset for ``cfg``, from ``cache_dir`` if a valid copy is there.

    The file name is keyed by a hash of (kind, config, generator version).  A cached file is
    reused only if it reads back, its stored config equals ``cfg`` and its arrays match the
    stored content hash; otherwise (truncated, corrupt, stale) a message is printed to stderr and
    the dataset is regenerated and rewritten atomically.

    Arguments:
        cfg: a simulator config (`ThreeBodyConfig`, `ChargedConfig`, `NBodyConfig`,
            `CollisionsConfig`, `ComplexesConfig`).
        cache_dir: folder for the ``.npz`` files (created if needed).
        progress: progress bar while generating.

    Returns:
        The :class:`Dataset`; ``metadata["cache"]`` is ``"hit"`` or ``"generated"``.
    """
    kind, simulate = _simulator(cfg)
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
    ds = simulate(cfg, progress=progress)
    save_dataset(ds, path)
    ds.metadata["cache"] = "generated"
    return ds


def charged_split(
    cache_dir: str | os.PathLike,
    split: str,
    n_train: int = 10_000,
    n_valid: int = 2_000,
    n_test: int = 2_000,
    seed: int = 0,
    *,
    progress: bool = True,
    **config_overrides,
) -> Dataset:
    """One split ("train", "valid" or "test") of the charged benchmark, cached in
    ``cache_dir``; see `charged_splits`."""
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    if split not in sizes:
        raise ValueError(f"split must be one of {tuple(sizes)}, got {split!r}")
    config_overrides.setdefault("legacy_split_sizes", (n_train, n_valid))
    cfg = ChargedConfig(n_trajectories=sizes[split], seed=seed, split=split, **config_overrides)
    return load_or_simulate(cfg, cache_dir, progress=progress)


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
    train, valid, test = (
        charged_split(
            cache_dir, split, n_train, n_valid, n_test, seed, progress=progress, **config_overrides
        )
        for split in ("train", "valid", "test")
    )
    return train, valid, test
