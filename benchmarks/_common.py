"""Shared benchmark plumbing: interleaved timing, machine description, atomic JSON."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from importlib import metadata
from pathlib import Path

import jax

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


def machine() -> dict:
    device = jax.devices()[0]
    return {
        "device": f"{device.platform}: {device.device_kind}",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {
            pkg: metadata.version(pkg)
            for pkg in ("jax", "jaxlib", "flax", "optax", "diffrax", "egnn-jax")
        },
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def write_json(name: str, payload: dict) -> Path:
    """Atomically write `benchmarks/results/<name>.json`."""
    return save_json_atomic(RESULTS / f"{name}.json", payload)
