"""Running the package's command lines in a clean process, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def clean_env() -> dict[str, str]:
    """This environment on the CPU, at the XLA optimisation level the tests compile with."""
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    return env


def native_env() -> dict[str, str]:
    """This environment on the CPU without the suite's XLA flags: the compilation a user's
    command gets, for checks that must reproduce committed figures to the last bit
    (optimisation level 0 fuses multiply-adds differently, and dynamics grow the last bits)."""
    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}


def run_module(module: str, *args, check: bool = False, timeout: int = 600):
    """``python -m module args...``: the completed process, with text stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        check=check,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_quick(experiment, workdir: Path, data_dir: Path | None = None, models=None):
    """``python -m egnn_jax.experiments.<experiment> --quick`` in this process (its compiled
    programs then serve the file's other tests), for `models` only if given: the workdir and
    its metrics.json."""
    argv = ["--quick", "--workdir", str(workdir), "--no-progress"]
    argv += ["--data-dir", str(data_dir)] if data_dir is not None else []
    argv += ["--models", ",".join(models)] if models else []
    assert experiment.main(argv) == 0
    return workdir, json.loads((workdir / "metrics.json").read_text())
