"""Several training runs side by side, and signals that stop them cleanly."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Mapping
from typing import Any

import jax

from ._loop import TrainResult, train

__all__ = ["interrupt_on_signals", "train_concurrently"]


def train_concurrently(
    runs: Mapping[str, Mapping[str, Any]], *, max_workers: int | None = None
) -> dict[str, TrainResult]:
    """Run several independent :func:`train` calls at the same time, one thread each.

    Small models leave most of a multi-core CPU idle (each step is a chain of small,
    mostly sequential kernels); XLA runs the programs of different threads side by side,
    so several models train in about the wall time of the slowest rather than the sum.
    Every run is the same pure computation as alone: results do not depend on the
    interleaving (each run is bitwise equal to a sequential one on the same machine).

    Arguments:
        runs: ``name -> keyword arguments of train`` (without ``name``, ``stop``,
            ``progress_position`` and ``queue_next_chunk``, which are set here). Order sets
            the progress-bar lines.
        max_workers: threads (default: one per run).

    Returns:
        ``name -> TrainResult``, in the order of ``runs``.

    Raises:
        The first run's exception (in ``runs`` order) once every run has ended, e.g.
        :class:`TrainingDiverged`. On ``KeyboardInterrupt`` every run saves its state at
        its next chunk boundary (resume with ``resume=True``), then it is re-raised.
    """
    from concurrent.futures import ThreadPoolExecutor, wait

    if not runs:
        return {}
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max_workers or len(runs), thread_name_prefix="train")
    on_cpu = jax.default_backend() == "cpu"
    # JAX's context-manager settings are thread-local: carry the caller's into each thread.
    settings = {
        jax.debug_nans: jax.config.jax_debug_nans,
        jax.debug_infs: jax.config.jax_debug_infs,
        jax.enable_x64: jax.config.jax_enable_x64,
        jax.default_matmul_precision: jax.config.jax_default_matmul_precision,
        jax.numpy_rank_promotion: jax.config.jax_numpy_rank_promotion,
        jax.numpy_dtype_promotion: jax.config.jax_numpy_dtype_promotion,
    }

    def run(**kwargs):
        with contextlib.ExitStack() as stack:
            for context, value in settings.items():
                stack.enter_context(context(value))
            return train(**kwargs)

    futures = {
        name: pool.submit(
            run,
            name=name,
            stop=stop,
            progress_position=i,
            queue_next_chunk=not on_cpu,
            **kwargs,
        )
        for i, (name, kwargs) in enumerate(runs.items())
    }
    try:
        wait(futures.values())
    except KeyboardInterrupt:
        stop.set()
        wait(futures.values())
        raise
    finally:
        pool.shutdown(wait=True)
    for future in futures.values():
        if future.exception() is not None:
            raise future.exception()
    return {name: future.result() for name, future in futures.items()}


def interrupt_on_signals() -> None:
    """Make SIGTERM (schedulers, ``kill``) and SIGINT act as Ctrl-C in the main thread.

    `train` and `train_concurrently` answer ``KeyboardInterrupt`` by saving every run's
    state at its next chunk boundary, so a terminated job resumes with ``--resume`` and
    loses nothing. SIGINT is reset too because a shell starts background jobs with it
    ignored. Meant for command-line entry points; a no-op outside the main thread, where
    Python does not allow signal handlers.
    """

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
