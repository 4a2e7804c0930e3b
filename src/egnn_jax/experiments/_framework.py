"""The experiment framework: what every experiment shares, around what each one declares.

An experiment declares its config, data, models and table (`_experiment.Experiment`);
`train_and_evaluate` does the rest, the same way for every experiment:

1. load (simulate or read from the cache) and featurise the train / valid / test splits;
2. compare the workdir with the run about to start: a run already there is continued only
   with ``resume``, replaced only with ``overwrite``, and never mixed with runs made on other
   data or settings (each run's *fingerprint*: data content hashes, config, model spec;
   the rules are in `_workdir`);
3. fit the fitted models, train the others side by side (`train_concurrently`), each keeping
   its best-validation parameters in ``<workdir>/best/<model>`` (Orbax, committed);
4. evaluate every model at its best validation step on the valid and test splits;
5. write ``metrics.json``, ``loss_curves.png`` and the experiment's own plots.

`evaluate_file` reloads the best parameters and scores them on a file (``--evaluate``);
`_cli.cli_main` is the command line around both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import jax
import numpy as np

from egnn_jax._atomic import save_json_atomic

from ._checkpoint import best_dir, check_fingerprint, load_params, save_params
from ._concurrency import train_concurrently
from ._experiment import (
    Experiment,
    ExperimentConfig,
    ExperimentData,
    model_fingerprint,
    older_run_defaults,
    shared_fingerprint,
)
from ._models import ModelSpec, label
from ._report import device, plot_loss_curves, steps_per_second, versions
from ._sharding import data_parallel, single_device
from ._step import make_optimizer
from ._workdir import finished, prepare_workdir, read_metrics

__all__ = ["evaluate_file", "train_and_evaluate"]

logger = logging.getLogger(__name__)


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
    devices: int | None = None,
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
        devices: train data-parallel over this many devices (`train`'s `devices`; the
            batch size must be a multiple); None: the default device. Not part of the
            runs' fingerprints: a run may resume on another device count.

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
    layout = None if devices is None else data_parallel(devices)  # fail before simulating
    if layout is not None:
        if config.batch_size % layout.num_devices:
            raise ValueError(
                f"batch size {config.batch_size} is not a multiple of devices={devices}"
            )
    t_total = time.perf_counter()
    workdir = Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    wall: dict[str, Any] = {"train": {}}

    t = time.perf_counter()
    data_dir = workdir / "data" if data_dir is None else Path(data_dir)
    data = experiment.load_data(config, data_dir, progress)
    wall["data"] = time.perf_counter() - t
    shared = shared_fingerprint(experiment, config, data)
    _check_hosts_agree(shared)

    try:
        previous = read_metrics(workdir)
    except ValueError:
        if not overwrite:
            raise
        previous = None  # a damaged metrics.json: --overwrite starts the table again
    rows_before = (previous or {}).get("models", {})
    kept = prepare_workdir(workdir, rows_before, config, shared, resume, overwrite)
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
            if jax.tree.leaves(params_of[name]):  # fitted (the linear baseline's t)
                meta = {"step": 0, "name": name, "fingerprint": fingerprint}
                save_params(best_dir(workdir, name), params_of[name], meta)
                row["fit"] = {k: float(v) for k, v in params_of[name].items()}
            wall["train"][name] = time.perf_counter() - t
        elif resume and finished(workdir, rows_before.get(name), config):
            old = rows_before[name]
            check_fingerprint(
                old["fingerprint"],
                fingerprint,
                f"the run of {name!r} in {workdir}",
                defaults=older_run_defaults(config),
            )
            params_of[name], _ = load_params(best_dir(workdir, name), _like(spec, data.train))
            histories[name] = (previous or {}).get("histories", {}).get(name, [])
            kept_keys = ("best_step", "steps_done", "stopped_early", "devices", "train_seconds")
            row |= {k: old[k] for k in kept_keys if k in old}
            row |= {"steps_this_session": 0, "resumed": True, "command": old.get("command")}
            wall["train"][name] = 0.0
        else:
            runs[name] = _training_run(
                spec,
                key,
                data,
                experiment.validation_data(config, data),
                config,
                workdir,
                fingerprint,
            )
            runs[name] |= {"resume": resume, "overwrite": overwrite, "progress": progress}
            runs[name] |= {"devices": devices}
        rows[name] = row

    # Side by side, one thread each: small networks leave CPU cores idle one after another.
    t = time.perf_counter()
    # Several processes: one model at a time, so that every process launches the same
    # cross-process collectives in the same order.
    trained = train_concurrently(runs, max_workers=1 if jax.process_count() > 1 else None)
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
            "devices": res.devices or single_device(),
        }
        # Training time over every session of the run: the earlier sessions' clock (saved
        # in the checkpoint) plus the whole of this one, its restore and compile included.
        rows[name]["train_seconds"] = res.earlier_wall_seconds + res.wall_seconds
        rows[name]["train_seconds_this_session"] = res.wall_seconds
        wall["train"][name] = res.wall_seconds

    t = time.perf_counter()
    for name, spec in specs.items():
        params = params_of[name]
        rows[name]["num_params"] = _num_params(params)
        if "steps_done" in rows[name]:
            rows[name]["best_epoch"] = rows[name]["best_step"] / config.steps_per_epoch
            rows[name]["epochs_done"] = rows[name]["steps_done"] / config.steps_per_epoch
        for split in experiment.report_splits:
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
        "devices": single_device() if layout is None else layout.describe(),
        "versions": versions(),
        "command": command,
        "histories": {n: histories[n] for n in order if n in histories},
    }

    # Every process holds the same results; process 0 writes them (the checkpoints above
    # are written by all, as Orbax coordinates them).
    writer = jax.process_index() == 0
    t = time.perf_counter()
    if writer:
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
    if writer:
        save_json_atomic(workdir / "metrics.json", metrics)
    return metrics


def _check_hosts_agree(shared: dict) -> None:
    """Raise if the processes of a multi-host run hold other data or settings: each host
    loads its own copy, and a GPU and a CPU simulate a chaotic system to other bits."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digest = hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).digest()
    multihost_utils.assert_equal(
        np.frombuffer(digest, np.uint32),
        "the processes' data or settings differ (their fingerprints do not match): "
        "simulate the data once and share the cache (--data-dir), or run each host alike",
    )


def _training_run(
    spec: ModelSpec, key, data: ExperimentData, validation_data, config, workdir, fingerprint
):
    """Keyword arguments of `train` for a trainable `spec`.

    The model's own initialisation and shuffling keys derive from `key` and its name, so
    adding or removing a model leaves the others' results unchanged.
    """
    k_init, k_shuffle = jax.random.split(jax.random.fold_in(key, zlib.crc32(spec.name.encode())))
    schedule = {}
    if config.lr_schedule == "cosine" or config.clip_norm is not None:
        # A cosine schedule's length is part of the run: extending it would change every step.
        decay = config.num_steps if config.lr_schedule == "cosine" else None
        opt = make_optimizer(
            config.learning_rate,
            config.weight_decay,
            decay_steps=decay,
            clip_norm=config.clip_norm,
        )
        schedule = {"optimizer": opt}
        fingerprint = fingerprint | {
            "optimizer": {
                "schedule": config.lr_schedule,
                "decay_steps": decay,
                "clip_norm": config.clip_norm,
            }
        }
    return dict(
        **schedule,
        loss_fn=spec.loss,
        params=spec.init(k_init, jax.tree.map(lambda a: a[:1], data.train)),
        train_data=data.train,
        eval_fn=spec.evaluate,
        val_data=validation_data,
        key=k_shuffle,
        num_steps=config.num_steps,
        batch_size=config.batch_size,
        eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every,
        patience=config.patience,
        eval_batch_size=config.eval_batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        workdir=workdir,
        fingerprint=fingerprint,
        fingerprint_defaults=older_run_defaults(config),
    )


def evaluate_file(experiment: Experiment, workdir: str | Path, path: str | Path) -> dict:
    """Score every model of the run in `workdir` on a file (``--evaluate``).

    Returns:
        What the experiment's `evaluation_output` makes of each model's `metrics` on the file
        (by default ``{model: MSE}``).

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
    scores = {}
    for name, _ in experiment.ordered_rows(metrics):
        spec = experiment.model_spec(name, config)
        like = _like(spec, batch)
        params = load_params(best_dir(workdir, name), like)[0] if jax.tree.leaves(like) else like
        scores[name] = experiment.metrics(config, spec, params, batch)
    return experiment.evaluation_output(config, scores, batch)
