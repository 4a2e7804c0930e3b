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

INPUTS = ("node_feat", "x0", "v0", "edge_attr")  # what every N-body model reads


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


def committed_params(module, cfg, batch: dict, workdir: Path, name: str):
    """The best parameters committed under `workdir/best/name`, for `module.init`'s tree
    (`egnn_jax`, `egnn_jax.hegnn`, `egnn_jax.fastegnn`) on the first system of `batch`."""
    import jax

    from egnn_jax.experiments._checkpoint import best_dir, load_params

    h, x, v, a = (batch[k][0] for k in INPUTS)
    like = module.init(jax.random.key(0), cfg, h, x, v=v, edge_attr=a)
    return load_params(best_dir(workdir, name), like)[0]
