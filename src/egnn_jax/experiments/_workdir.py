"""The rules for a workdir that already holds runs: continue, replace or refuse, never mix.

A *run* is one model trained in one workdir: its resumable state
(``checkpoints/<model>/latest``), its best parameters (``best/<model>``) and its row of
``metrics.json``, each carrying the run's fingerprint.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._checkpoint import (
    FingerprintMismatchError,
    RunCheckpoint,
    RunExistsError,
    best_dir,
    check_fingerprint,
    fingerprint_differences,
    has_saved_step,
    latest_dir,
    read_params_meta,
)
from ._experiment import ExperimentConfig, older_run_defaults
from ._loop import remove_run

__all__ = ["finished", "prepare_workdir", "read_metrics"]

_SHARED = ("experiment", "config", "data")


def _shared_part(fingerprint: dict) -> dict:
    """The part of a run's fingerprint that every run in one table shares."""
    return {k: fingerprint.get(k) for k in _SHARED}


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
        saved = has_saved_step(best_dir(workdir, name)) or has_saved_step(latest_dir(workdir, name))
        if name not in rows and not saved:
            continue  # killed before its first checkpoint: training starts it afresh
        fingerprint = rows.get(name, {}).get("fingerprint")
        if fingerprint is None:
            meta = read_params_meta(best_dir(workdir, name))
            fingerprint = None if meta is None else meta.get("fingerprint")
        if fingerprint is None and latest_dir(workdir, name).is_dir():
            # A run stopped before its first best parameters (interrupted, diverged).
            ckpt = RunCheckpoint(latest_dir(workdir, name))
            try:
                if ckpt.step() is not None:
                    fingerprint = ckpt.meta().get("fingerprint")
            finally:
                ckpt.close()
        found[name] = fingerprint
    return found


def prepare_workdir(
    workdir: Path, rows: dict, config: ExperimentConfig, shared: dict, resume, overwrite
):
    """Apply the workdir rules; returns the rows of other models that stay in the table."""
    on_disk = _runs_on_disk(workdir, rows)
    # Fields recorded since an older run was saved count as what that run had in effect,
    # so a new field does not orphan the runs already committed.
    selected, defaults = config.models, older_run_defaults(config)
    foreign = {
        name: fp
        for name, fp in on_disk.items()
        if fp is None or fingerprint_differences(_shared_part(fp), shared, defaults)
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
            _shared_part(fp),
            shared,
            f"the run of {name!r} in {workdir}",
            "use another --workdir, or --overwrite to delete it",
            defaults=defaults,
        )
    return {n: r for n, r in rows.items() if n not in selected}


def finished(workdir: Path, row: dict | None, config) -> bool:
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
