"""The training loop: compiled chunks of steps, validation, checkpoints, a progress bar.

The whole data set lives on the device as a pytree of arrays with a leading sample axis.
Training runs in *chunks* of ``eval_every`` optimisation steps: one jitted call runs a
``jax.lax.scan`` over the chunk (`_step.make_train_chunk`). After each chunk the host fetches
the per-step losses and the validation metrics in one transfer, checks for divergence,
updates the best checkpoint and the progress bar, and (at checkpoint points) writes Orbax
checkpoints (`_checkpoint`). The next chunk can be dispatched *before* the host blocks on the
current one, so an accelerator is not starved by host work. Chunks start at multiples of
``eval_every`` and checkpoints are taken at chunk boundaries only, so a resumed run executes
the same compiled programs on the same inputs as an uninterrupted one (bitwise identical on
the same machine).
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from ._checkpoint import (
    RunCheckpoint,
    RunExistsError,
    best_dir,
    check_fingerprint,
    has_saved_step,
    key_data,
    latest_dir,
    save_params,
)
from ._sharding import data_parallel
from ._step import (
    EvalFn,
    LossFn,
    TrainState,
    cached,
    init_train_state,
    leading_size,
    make_evaluator,
    make_optimizer,
    make_train_chunk,
)

__all__ = ["TrainResult", "TrainingDiverged", "train"]

logger = logging.getLogger(__name__)

PyTree = Any


class TrainResult(NamedTuple):
    """What :func:`train` returns.

    Attributes:
        params: parameters of the best validation checkpoint (lowest ``val_loss``).
        best_metrics: validation metrics (floats) at the best checkpoint.
        best_step: step (number of optimisation steps taken) of the best checkpoint.
        history: one dict per evaluation: ``step``, ``train_loss`` (mean over the chunk
            that ended at ``step``), every metric returned by ``eval_fn`` and
            ``wall_time`` (seconds since the start of training, accumulated over resumes).
            When resuming, the entries of the previous sessions are included.
        wall_seconds: wall-clock seconds spent in this call to :func:`train`.
        num_steps: optimisation steps run in this call (0 if a finished run was resumed).
        steps_done: optimisation steps of the run in total (less than asked if it stopped
            early).
        stopped_early: the run stopped because ``val_loss`` did not improve for
            ``patience`` evaluations.
        resumed: whether the run continued from a checkpoint.
        final_state: the :class:`TrainState` after the last step.
        devices: the devices and mesh the run used (`DataParallel.describe`), or None
            when it ran on the default device alone.
        earlier_wall_seconds: training seconds recorded by the run's earlier sessions (the
            resumed checkpoint's clock; 0 for a fresh run), so the run's total is this plus
            ``wall_seconds``. The clock counts each session from its first step: an earlier
            session's setup (restore, compile) is not in it, this session's is.
    """

    params: PyTree
    best_metrics: dict[str, float]
    best_step: int
    history: list[dict[str, float]]
    wall_seconds: float
    num_steps: int
    steps_done: int
    stopped_early: bool
    resumed: bool
    final_state: TrainState
    devices: dict | None = None
    earlier_wall_seconds: float = 0.0


class TrainingDiverged(RuntimeError):
    """Raised when the training loss (or ``val_loss``) becomes NaN or infinite.

    Attributes:
        step: 1-based index of the first optimisation step whose loss was not finite
            (for a non-finite ``val_loss``: the step at which it was evaluated).
        last_finite_loss: the last finite training loss seen, or ``None``.
        checkpoint_step: step of the last good ``latest`` checkpoint on disk, or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        step: int,
        last_finite_loss: float | None,
        checkpoint_step: int | None,
    ):
        super().__init__(message)
        self.step = step
        self.last_finite_loss = last_finite_loss
        self.checkpoint_step = checkpoint_step


def _check_positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def _check_key(key) -> None:
    if not hasattr(key, "dtype"):
        raise ValueError(f"key must be a JAX PRNG key, got {type(key).__name__}")
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key, got shape {key.shape}")
    elif key.dtype != jnp.uint32 or key.ndim != 1:
        raise ValueError(
            "key must be a PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
            f"got dtype {key.dtype} and shape {key.shape}"
        )


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def remove_run(workdir: str | Path, name: str) -> None:
    """Delete run `name`'s resumable state and its best parameters from `workdir`."""
    for path in (latest_dir(workdir, name).parent, best_dir(workdir, name)):
        if path.exists():
            logger.warning("run %r: deleting %s", name, path)
            shutil.rmtree(path)


def train(
    *,
    name: str,
    loss_fn: LossFn,
    params: PyTree,
    train_data: PyTree,
    eval_fn: EvalFn,
    val_data: PyTree,
    key: jax.Array,
    num_steps: int,
    batch_size: int,
    eval_every: int,
    learning_rate: float = 5e-4,
    weight_decay: float = 1e-12,
    optimizer: optax.GradientTransformation | None = None,
    eval_batch_size: int | None = None,
    patience: int | None = None,
    workdir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    fingerprint: Mapping[str, Any] | None = None,
    fingerprint_defaults: Mapping[str, Any] | None = None,
    progress: bool | None = True,
    progress_position: int | None = None,
    stop: threading.Event | None = None,
    queue_next_chunk: bool = True,
    devices: int | None = None,
) -> TrainResult:
    """Train ``params`` to minimise ``loss_fn`` and keep the best validation checkpoint.

    Arguments:
        name: run name; progress-bar label and checkpoint folders
            ``workdir/checkpoints/<name>/latest`` and ``workdir/best/<name>``.
        loss_fn: ``loss_fn(params, batch, info) -> scalar``; pure; ``batch`` is
            ``train_data`` with leading axis ``batch_size``; ``info`` is a `StepInfo`: the
            step's PRNG key (`_step.step_key`) and its 0-based index.
        params: initial parameters (pytree of arrays).
        train_data: pytree of arrays sharing a leading sample axis ``n_train``; it is put
            on the default device once.
        eval_fn: ``eval_fn(params, val_data) -> dict[str, scalar]``; pure, jitted here;
            must contain ``"val_loss"`` (lower is better; selects the best checkpoint).
        val_data: pytree passed to ``eval_fn`` (put on the device once).
        key: PRNG key (``jax.random.key`` or legacy ``PRNGKey``) for shuffling (epoch ``e``
            uses ``jax.random.fold_in(key, e)``) and the losses' keys.
        num_steps: total optimisation steps (multiple of ``eval_every``); when resuming,
            it may exceed the steps already done (to extend a run), never fall below them.
        batch_size: samples per step; ``steps_per_epoch = n_train // batch_size``.
        eval_every: steps between evaluations, also the length of one compiled chunk.
        learning_rate, weight_decay: for the default optimiser :func:`make_optimizer`.
        optimizer: optional optax transformation overriding ``learning_rate`` /
            ``weight_decay`` (then the fingerprint should describe it).
        eval_batch_size: evaluate ``val_data`` in batches of this size and average the
            metrics weighted by batch size (metrics must be per-sample means). ``None``:
            one call on the whole set.
        patience: stop after this many evaluations in a row without a lower ``val_loss``
            (early stopping); ``None``: run all ``num_steps``.
        workdir: root of the checkpoint folders; ``None`` disables checkpointing.
        checkpoint_every: steps between checkpoint writes (multiple of ``eval_every``;
            default ``eval_every``). The final state is always saved, and so is the last
            good state on divergence or ``KeyboardInterrupt``.
        resume: continue from ``workdir/checkpoints/<name>/latest`` if present (a fresh
            run otherwise). The run's fingerprint must equal the saved one.
        overwrite: delete run `name`'s checkpoints and best parameters first. Without
            `resume` or `overwrite`, existing ones are an error (`RunExistsError`).
        fingerprint: JSON-able description of what the run depends on (data hashes, model
            spec, settings); stored with the checkpoints and compared on resume. The loop
            adds its own fields (batch size, evaluation interval, training-set size, key,
            optimiser settings) under ``"loop"``.
        fingerprint_defaults: ``{dotted field: value}`` for fields added to the fingerprint
            after a checkpoint was saved: absent from it, they count as this value.
        progress: show a tqdm bar (``None``: only when attached to a terminal; elsewhere,
            as in a ``nohup`` job, each evaluation is logged at INFO level to this
            module's logger instead, which the experiments' command line shows).
        progress_position: line of the bar, for several runs at once (tqdm ``position``).
        stop: when this event is set, the run stops at the next chunk boundary as on a
            ``KeyboardInterrupt``: the state is saved for ``resume=True`` and
            ``KeyboardInterrupt`` is raised (how `train_concurrently` interrupts its runs).
        queue_next_chunk: dispatch the next chunk before waiting for the current one, so
            an accelerator never idles on host work. `train_concurrently` turns it off on
            a CPU: there, a chunk queued behind a running one was seen to run ahead of
            other threads' chunks, starving one run until the others had finished.
        devices: data parallelism over the first `devices` of `jax.devices()`: each
            batch is split over a one-axis mesh, parameters and data are replicated
            (`_sharding`); `batch_size` must be a multiple of it. None: the default
            device only. Results equal the single-device run's up to float round-off.

    Returns:
        A :class:`TrainResult` (best params / metrics / step, history, timings).

    Raises:
        ValueError: invalid arguments.
        RunExistsError: the run exists on disk and neither `resume` nor `overwrite` is set,
            or `resume` finds best parameters but no resumable state.
        FingerprintMismatchError: `resume` with a checkpoint of another fingerprint.
        TrainingDiverged: a training loss or ``val_loss`` became NaN/inf; the last good
            state stays in (or is written to) the ``latest`` checkpoint.
    """
    t_call = time.perf_counter()

    # ---- validation -------------------------------------------------------------------
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name:
        raise ValueError(f"name must be a non-empty string usable as a folder, got {name!r}")
    num_steps = _check_positive_int(num_steps, "num_steps")
    batch_size = _check_positive_int(batch_size, "batch_size")
    eval_every = _check_positive_int(eval_every, "eval_every")
    if num_steps % eval_every:
        raise ValueError(f"num_steps={num_steps} must be a multiple of eval_every={eval_every}")
    checkpoint_every = eval_every if checkpoint_every is None else checkpoint_every
    checkpoint_every = _check_positive_int(checkpoint_every, "checkpoint_every")
    if checkpoint_every % eval_every:
        raise ValueError(
            f"checkpoint_every={checkpoint_every} must be a multiple of eval_every={eval_every}"
        )
    if patience is not None:
        patience = _check_positive_int(patience, "patience")
    if eval_batch_size is not None:
        eval_batch_size = _check_positive_int(eval_batch_size, "eval_batch_size")
        if eval_batch_size > leading_size(val_data, "val_data"):
            raise ValueError("eval_batch_size exceeds the validation-set size")
    if (resume or overwrite) and workdir is None:
        raise ValueError("resume=True and overwrite=True require a workdir")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    if not callable(loss_fn) or not callable(eval_fn):
        raise ValueError("loss_fn and eval_fn must be callable")
    if not jax.tree.leaves(params):
        raise ValueError("params has no array leaves")
    if not jax.tree.leaves(val_data):
        raise ValueError("val_data has no array leaves")
    _check_key(key)
    n_train = leading_size(train_data, "train_data")
    if batch_size > n_train:
        raise ValueError(f"batch_size={batch_size} exceeds the training-set size {n_train}")
    layout = None if devices is None else data_parallel(devices)
    if layout is not None and batch_size % layout.num_devices:
        raise ValueError(
            f"batch_size={batch_size} must be a multiple of devices={layout.num_devices} "
            "(each device takes an equal share of every batch)"
        )

    # ---- setup --------------------------------------------------------------------------
    loop_fields = {
        "batch_size": batch_size,
        "eval_every": eval_every,
        "n_train": n_train,
        "key": [int(k) for k in np.asarray(key_data(key)).ravel()],
    }
    if optimizer is None:
        optimizer = make_optimizer(learning_rate, weight_decay)
        loop_fields |= {"learning_rate": learning_rate, "weight_decay": weight_decay}
    full_fingerprint = {**dict(fingerprint or {}), "loop": loop_fields}
    put = jax.device_put if layout is None else layout.put
    train_data = put(train_data)
    val_data = put(val_data)
    state = put(init_train_state(params, optimizer, key))
    batch_sharding = None if layout is None else layout.batch
    chunk_fn = cached(
        ("chunk", loss_fn, optimizer, batch_size, n_train, eval_every, batch_sharding),
        lambda: make_train_chunk(
            loss_fn,
            optimizer,
            batch_size=batch_size,
            n_train=n_train,
            chunk_len=eval_every,
            batch_sharding=batch_sharding,
        ),
    )
    evaluate, eval_shape = make_evaluator(eval_fn, val_data, eval_batch_size)

    # Fail fast (before a long first chunk) on wrong output types; the traces are cached
    # by jit, so this does not cost an extra trace.
    out_state, _ = chunk_fn.eval_shape(state, train_data)
    if jax.tree.structure(out_state.params) != jax.tree.structure(state.params):
        raise ValueError("the optimiser changed the parameter tree structure")
    metric_shapes = eval_shape(state.params)
    if not isinstance(metric_shapes, Mapping) or "val_loss" not in metric_shapes:
        raise ValueError("eval_fn must return a dict containing 'val_loss'")
    bad = [k for k, v in metric_shapes.items() if jnp.shape(v) != ()]
    if bad:
        raise ValueError(f"eval_fn must return scalars; non-scalar metrics: {bad}")

    history: list[dict[str, float]] = []
    best_params = state.params
    best_metrics: dict[str, float] = {}
    best_step = -1
    best_val = math.inf
    since_best = 0  # evaluations since the last improvement
    stopped_early = False
    wall_offset = 0.0
    resumed = False
    step = 0
    ckpt: RunCheckpoint | None = None
    saved_step: int | None = None  # step of the latest checkpoint on disk

    if workdir is not None:
        latest, best = latest_dir(workdir, name), best_dir(workdir, name)
        if overwrite:
            if jax.process_index() == 0:
                remove_run(workdir, name)
        elif not resume and (has_saved_step(latest) or has_saved_step(best)):
            raise RunExistsError(
                f"run {name!r} already exists in {Path(workdir)}: resume it or overwrite it"
            )
        if jax.process_count() > 1:
            # Every process has looked at (or cleared) the shared workdir before any writes.
            multihost_utils.sync_global_devices(f"egnn_jax run {name} checked")
        ckpt = RunCheckpoint(latest)
        if resume and ckpt.step() is not None:
            meta = ckpt.meta()
            check_fingerprint(
                meta.get("fingerprint", {}),
                full_fingerprint,
                f"run {name!r} in {latest}",
                "it cannot be continued; overwrite it, or use another workdir",
                defaults=fingerprint_defaults,
            )
            if int(meta["step"]) > num_steps:
                raise ValueError(
                    f"run {name!r} has already done {meta['step']} steps; resuming to "
                    f"{num_steps} would return the longer run's result (use a new workdir, "
                    "or overwrite)"
                )
            state, best_params, meta = ckpt.restore(state)
            state, best_params = put((state, best_params))
            step = saved_step = int(meta["step"])
            history = list(meta["history"])
            best_step = int(meta["best_step"])
            best_metrics = dict(meta["best_metrics"])
            best_val = float(best_metrics["val_loss"]) if best_step >= 0 else math.inf
            since_best = int(meta.get("since_best", 0))
            stopped_early = bool(meta.get("stopped_early", False))
            wall_offset = float(meta["wall_time"])
            resumed = True
            logger.info("run %r: resumed from step %d", name, step)
        elif resume and best.exists():
            raise RunExistsError(
                f"run {name!r} in {Path(workdir)} has best parameters but no resumable state "
                f"({latest} is missing): it cannot be continued; overwrite it to retrain"
            )
    last_step = step if stopped_early else num_steps

    def meta_for(at_step: int, hist: list, wall: float) -> dict:
        return {
            "name": name,
            "step": at_step,
            "history": hist,
            "best_step": best_step,
            "best_metrics": best_metrics,
            "since_best": since_best,
            "stopped_early": stopped_early,
            "wall_time": wall,
            "fingerprint": full_fingerprint,
        }

    def save(at_state: TrainState, at_step: int, hist: list, wall: float) -> None:
        nonlocal saved_step
        if ckpt is None or saved_step == at_step:
            return
        # latest first, then best: the best folder never runs ahead of the latest state.
        ckpt.save(at_state, best_params, meta_for(at_step, hist, wall))
        saved_step = at_step
        if best_step >= 0:
            best_meta = {
                "name": name,
                "step": best_step,
                "metrics": best_metrics,
                "fingerprint": full_fingerprint,
            }
            save_params(best_dir(workdir, name), best_params, best_meta)

    t_start = time.perf_counter()
    start_step = step
    last_finite: float | None = None
    if history:
        last_finite = float(history[-1]["train_loss"])
    bar = tqdm(
        total=last_step,
        initial=min(step, last_step),
        desc=name,
        unit="step",
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
        position=progress_position,
    )
    # Without a terminal (a background job's log file) a line per evaluation takes the bar's place.
    log_evaluations = progress is None and bar.disable

    def dispatch(st: TrainState):
        new_state, losses = chunk_fn(st, train_data)
        return new_state, losses, evaluate(new_state.params)

    try:
        pending = dispatch(state) if step < last_step else None
        while pending is not None:
            new_state, losses_d, metrics_d = pending
            chunk_end = step + eval_every
            # Queue the next chunk before blocking, so the device never idles on the host.
            queued = queue_next_chunk and chunk_end < num_steps
            pending = dispatch(new_state) if queued else None
            losses, metrics = jax.device_get((losses_d, metrics_d))
            losses = np.asarray(losses)
            metrics = {k: float(v) for k, v in metrics.items()}
            finite = np.isfinite(losses)
            if not finite.all() or not math.isfinite(metrics["val_loss"]):
                if not finite.all():
                    bad_i = int(np.argmin(finite))
                    bad_step, what = step + bad_i + 1, f"training loss {losses[bad_i]}"
                    if bad_i > 0:
                        last_finite = float(losses[bad_i - 1])
                else:
                    bad_step, what = chunk_end, f"val_loss {metrics['val_loss']}"
                    last_finite = float(losses[-1])
                pending = None
                save(state, step, history, wall_offset + time.perf_counter() - t_start)
                where = (
                    f"; the last good checkpoint (step {saved_step}) is in {ckpt.directory}"
                    if ckpt is not None and saved_step is not None
                    else ""
                )
                raise TrainingDiverged(
                    f"training run {name!r} diverged: non-finite {what} at step {bad_step} "
                    f"(last finite training loss: {_fmt(last_finite)}){where}",
                    step=bad_step,
                    last_finite_loss=last_finite,
                    checkpoint_step=saved_step,
                )
            last_finite = float(losses[-1])
            train_loss = float(np.mean(losses, dtype=np.float64))
            step, state = chunk_end, new_state
            if metrics["val_loss"] < best_val:
                best_val, best_step, best_params = metrics["val_loss"], step, state.params
                best_metrics = dict(metrics)
                since_best = 0
            else:
                since_best += 1
            wall = wall_offset + time.perf_counter() - t_start
            history.append({"step": step, "train_loss": train_loss, **metrics, "wall_time": wall})
            if patience is not None and since_best >= patience and step < num_steps:
                stopped_early, last_step, pending = True, step, None
                bar.total = step
            if step % checkpoint_every == 0 or step >= last_step:
                save(state, step, history, wall)
            bar.set_postfix(
                loss=_fmt(train_loss), val=_fmt(metrics["val_loss"]), best=_fmt(best_val)
            )
            bar.update(eval_every)
            if log_evaluations:
                logger.info(
                    "run %r: step %d of %d (epoch %g), loss %s, val %s, best %s (step %d), %.0f s",
                    name,
                    step,
                    last_step,
                    step / (n_train // batch_size),
                    _fmt(train_loss),
                    _fmt(metrics["val_loss"]),
                    _fmt(best_val),
                    best_step,
                    wall,
                )
            if stop is not None and stop.is_set() and step < last_step:
                raise KeyboardInterrupt  # a queued chunk is dropped; `state` is saved
            if not queued and step < last_step:
                pending = dispatch(state)
    except KeyboardInterrupt:
        # `state` is the last fully processed chunk boundary: save it for resume=True.
        save(state, step, history, wall_offset + time.perf_counter() - t_start)
        raise
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()

    return TrainResult(
        params=best_params,
        best_metrics=best_metrics,
        best_step=best_step,
        history=history,
        wall_seconds=time.perf_counter() - t_call,
        num_steps=step - start_step,
        steps_done=step,
        stopped_early=stopped_early,
        resumed=resumed,
        final_state=state,
        devices=None if layout is None else layout.describe(),
        earlier_wall_seconds=wall_offset,
    )
