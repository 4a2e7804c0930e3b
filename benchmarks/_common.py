"""Shared benchmark plumbing: interleaved timing, machine description, atomic JSON."""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import os
import platform
import statistics
import time
from importlib import metadata
from pathlib import Path

import jax
import optax

from egnn_jax.experiments import save_json_atomic

RESULTS = Path(__file__).parent / "results"


def time_interleaved(cases: dict, repeats: int, warmup: int = 3) -> dict:
    """Time each zero-argument callable `repeats` times, round-robin.

    Interleaving puts every case under the same background load, so their ratios stay
    meaningful on a shared, noisy machine. Each callable must block until its result is ready.
    """
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {
        name: {
            "median_ms": 1e3 * statistics.median(ts),
            "min_ms": 1e3 * min(ts),
            "max_ms": 1e3 * max(ts),
            "repeats": len(ts),
        }
        for name, ts in samples.items()
    }


# glibc `mallopt` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    XLA:CPU allocates a program's temporaries as one buffer per call (GiBs for a large graph's
    backward pass), and glibc serves such a request with a fresh `mmap`, unmapped again on
    free: every call then page-faults and zeroes all of it. With `mmap` off and no trimming
    the buffer is reused from the heap. Process-wide and irreversible (resident memory
    stays at its peak), hence only on request; the environment variables
    `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>` do the same for any program.
    Returns False where the C library is not glibc.
    """
    path = ctypes.util.find_library("c")
    if path is None:
        return False
    libc = ctypes.CDLL(path)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1  # -1: never trim (mallopt(3))
    return bool(ok)


def _version(pkg: str) -> str:
    # A GPU machine runs the repository from PYTHONPATH=src, without installing it.
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed (PYTHONPATH)"


def machine() -> dict:
    device = jax.devices()[0]
    return {
        "device": f"{device.platform}: {device.device_kind}",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {
            pkg: _version(pkg) for pkg in ("jax", "jaxlib", "flax", "optax", "diffrax", "egnn-jax")
        },
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def write_json(name: str, payload: dict) -> Path:
    """Atomically write `benchmarks/results/<name>.json`."""
    return save_json_atomic(RESULTS / f"{name}.json", payload)


def compiled_train_step(spec, params, opt, info=None):
    """`(step, opt_state)`: a jitted step `step(params, opt_state, batch) -> (params,
    opt_state, loss)` of an experiment's model spec (value_and_grad of `spec.loss` with the
    `StepInfo` `info`, then the optimiser `opt`), and `opt`'s initial state for `params`."""

    @jax.jit
    def step(p, state, batch):
        value, grads = jax.value_and_grad(spec.loss)(p, batch, info)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, value

    return step, opt.init(params)
