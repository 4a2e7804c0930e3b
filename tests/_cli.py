"""Running the package's command lines in a clean process, as a user would."""

from __future__ import annotations

import contextlib
import importlib
import io
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


def run_main(module: str, *args, check: bool = False) -> subprocess.CompletedProcess:
    """``module.main(args)`` in this process, its stdout and stderr captured: the command line
    minus the interpreter start, so the programs the file's quick run compiled serve it again
    (each ``python -m`` child pays ~4 s of imports and compiles them anew). Keep `run_module`
    for the checks of the process itself (exit status and stderr of a failing command)."""
    argv = list(map(str, args))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = importlib.import_module(module).main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    done = subprocess.CompletedProcess(
        [module, *argv], code or 0, stdout=out.getvalue(), stderr=err.getvalue()
    )
    assert not check or done.returncode == 0, done.stderr
    return done


def run_quick(experiment, workdir: Path, data_dir: Path | None = None, models=None):
    """``python -m egnn_jax.experiments.<experiment> --quick`` in this process (its compiled
    programs then serve the file's other tests), for `models` only if given: the workdir and
    its metrics.json."""
    argv = ["--quick", "--workdir", str(workdir), "--no-progress"]
    argv += ["--data-dir", str(data_dir)] if data_dir is not None else []
    argv += ["--models", ",".join(models)] if models else []
    assert experiment.main(argv) == 0
    return workdir, json.loads((workdir / "metrics.json").read_text())
