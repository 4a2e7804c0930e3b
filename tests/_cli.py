"""Running the package's command lines in a clean process, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys


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
