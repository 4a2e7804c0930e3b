"""Helpers shared by the `reference_*` scripts, which check our ports against the authors'
own PyTorch code. NumPy and the standard library only at import time: the training scripts
also run in an environment without egnn_jax."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np


def git_commit(folder: Path) -> str | None:
    """The checkout's commit, or None where it is not a git checkout."""
    with contextlib.suppress(Exception):
        return subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return None


def atomic_write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def put_linear(state: dict, prefix: str, dense: dict, kernel=None) -> None:
    """Our dense layer (kernel `[in, out]`, bias) as `nn.Linear` entries of a state dict
    (weight `[out, in]`); `kernel` replaces the layer's own (e.g. with its rows permuted)."""
    import torch

    kernel = np.asarray(dense["kernel"]) if kernel is None else kernel
    state[f"{prefix}.weight"] = torch.tensor(np.ascontiguousarray(kernel.T))
    if "bias" in dense:
        state[f"{prefix}.bias"] = torch.tensor(np.ascontiguousarray(dense["bias"]))


def committed_model(workdir: Path, name: str, batch: dict):
    """The committed model `name` of an experiment's `workdir`, as the experiment built it.

    Returns `(spec, params, test_mse)`: its `ModelSpec` (from the fingerprint in
    `metrics.json`), its best parameters, and the test MSE `metrics.json` records.
    """
    import jax

    from egnn_jax.experiments._checkpoint import best_dir, load_params
    from egnn_jax.experiments._models import ModelSpec

    row = json.loads((Path(workdir) / "metrics.json").read_text())["models"][name]
    model = row["fingerprint"]["model"]
    spec = ModelSpec(
        model["name"],
        model["kind"],
        model["hidden_features"],
        model["num_layers"],
        tuple(model["options"].items()),
    )
    one = {k: v[:1] for k, v in batch.items()}
    like = jax.eval_shape(spec.init, jax.random.key(0), one)
    return spec, load_params(best_dir(workdir, name), like)[0], row["test_mse"]


def predict(spec, params, batch: dict, chunk: int = 500) -> np.ndarray:
    """The experiment's own prediction (`ModelSpec.predict`), `chunk` systems at a time."""
    import jax

    step = jax.jit(spec.predict)
    n = len(batch["x0"])
    return np.concatenate(
        [
            np.asarray(step(params, {k: a[s : s + chunk] for k, a in batch.items()}))
            for s in range(0, n, chunk)
        ]
    )


def comparison(ours, theirs, target, recorded_mse) -> dict:
    """How far the reference's predictions are from ours, and both test MSEs."""
    return {
        "max_abs_difference": float(np.max(np.abs(ours - theirs))),
        "test_mse_ours": float(np.mean((ours - target) ** 2)),
        "test_mse_reference_forward": float(np.mean((theirs - target) ** 2)),
        "test_mse_metrics_json": recorded_mse,
    }
