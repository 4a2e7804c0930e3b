"""Train the EGHN authors' own PyTorch code on our rigid-complex splits: a check of our port.

Our EGHN beats our EGNN at (3, 3) by less than the published margin, and our EGHN sits
above the published figure. This script runs `main_simulation.py` of a hanjq17/EGHN
checkout, unchanged (its model, data set class, collator, loss, optimiser and early
stopping; nothing of theirs is copied here), on the splits our experiment trained on: it
writes them in the reference's pickle layout (per system `loc`/`vel` `[26, n, 3]` with
frames 10 and 25 filled, `charges [n, 1]`, `edges [n, n] = q_i q_j`, `cfg["Complex"]` the
particle lists of each complex), runs the script in a subprocess and keeps its printout and
`loss.json`. Their test figure is the mean of per-batch masked MSEs weighted by batch size,
over all 2,000 test systems.

Run it in an environment with PyTorch (`pip install torch==2.13.0`)::

    for s in train valid test; do
      python -m egnn_jax.experiments.complexes --complexes 3 --avg-size 3 \\
          --export $s /tmp/cx33_$s.npz
    done
    git clone https://github.com/hanjq17/EGHN /tmp/EGHN
    python scripts/reference_complexes.py --reference /tmp/EGHN --complexes 3 --avg-size 3 \\
        --data /tmp/cx33_{}.npz --out experiments/results/complexes/3_3/reference_code/eghn.json

`torch_sparse` (a compiled extension) is replaced, only where it is not installed, by a
stand-in whose `spmm(index, value, m, n, matrix)` is the same sparse-dense product
(`out[index[0]] += value * matrix[index[1]]`); a `sitecustomize` in the same folder
restores `np.Inf` (gone in NumPy 2, read by their `EarlyStopping`) as `np.inf` and runs
their data loaders in the main process (`--loader-workers 0`: the same batches, without
forking 8 workers per pass on 2 cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _reference import atomic_write_json, git_commit  # noqa: E402

INPUT_FRAME, TARGET_FRAME = 10, 25
SYSTEM_TYPES = 5  # the reference's file names carry it; our generator uses the same 5

_SHIM_SPARSE = '''\
"""Stand-in for torch_sparse.spmm: sparse (COO index, value) [m, n] times dense [n, k]."""
import torch


def spmm(index, value, m, n, matrix):
    row, col = index
    out = matrix.new_zeros((m,) + tuple(matrix.shape[1:]))
    weight = value.to(matrix.dtype).reshape((-1,) + (1,) * (matrix.dim() - 1))
    return out.index_add_(0, row, weight * matrix[col])
'''


# Their loaders start 8 worker processes per pass (train, validation, test), which on a
# 2-core machine costs more than the training. The batches do not depend on the workers: the
# shuffling sampler draws in the main process either way.
_SITE_WORKERS = """
import functools

import torch.utils.data

_init = torch.utils.data.DataLoader.__init__


@functools.wraps(_init)
def _with_workers(self, *args, **kwargs):
    kwargs["num_workers"] = {workers}
    _init(self, *args, **kwargs)


torch.utils.data.DataLoader.__init__ = _with_workers
"""


def write_reference_files(arrays: dict, partition: str, folder: Path, name: str) -> None:
    """One split as the reference's pickles (`simulation/dataset.py`), padding removed."""
    loc, vel, charges, edges, cfg = [], [], [], [], []
    for s in range(arrays["x0"].shape[0]):
        real = np.asarray(arrays["node_mask"][s], bool)
        x0, v0, xt = (np.asarray(arrays[k][s][real], np.float64) for k in ("x0", "v0", "xT"))
        q = np.asarray(arrays["q"][s][real], np.float64)
        ids = np.asarray(arrays["complex_id"][s][real])
        frames = np.zeros((TARGET_FRAME + 1,) + x0.shape)
        frames_v = np.zeros_like(frames)
        frames[INPUT_FRAME], frames[TARGET_FRAME], frames_v[INPUT_FRAME] = x0, xt, v0
        loc.append(frames)
        vel.append(frames_v)
        charges.append(q[:, None])
        edges.append(q[:, None] * q[None, :])
        cfg.append({"Complex": [np.flatnonzero(ids == c).tolist() for c in np.unique(ids)]})
    suffix = f"{partition}_charged{name}"
    for key, value in (
        ("loc", loc),
        ("vel", vel),
        ("charges", charges),
        ("edges", edges),
        ("cfg", cfg),
    ):
        with open(folder / f"{key}_{suffix}.pkl", "wb") as f:
            pickle.dump(value, f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of hanjq17/EGHN")
    parser.add_argument("--complexes", type=int, default=3)
    parser.add_argument("--avg-size", type=int, default=3)
    parser.add_argument("--data", required=True, help="our exported splits, {} for the split name")
    parser.add_argument("--seed", type=int, default=1, help="their --seed (their default 1)")
    parser.add_argument("--epochs", type=int, default=10000, help="their --epochs")
    parser.add_argument("--threads", type=int, default=2, help="OMP/MKL threads of the run")
    parser.add_argument(
        "--loader-workers",
        type=int,
        default=0,
        help="their DataLoaders' num_workers (theirs: 8); -1 keeps theirs",
    )
    parser.add_argument(
        "--minutes", type=float, help="stop the run after this long (a partial row)"
    )
    parser.add_argument("--workdir", type=Path, help="data, shims and their outputs (temporary)")
    parser.add_argument("--out", type=Path, required=True, help="JSON result")
    args = parser.parse_args(argv)

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="reference_complexes_"))).resolve()
    data_dir, shims = workdir / "data", workdir / "shims"
    data_dir.mkdir(parents=True, exist_ok=True)
    stand_ins = []
    if importlib.util.find_spec("torch_sparse") is None:
        (shims / "torch_sparse").mkdir(parents=True, exist_ok=True)
        (shims / "torch_sparse" / "__init__.py").write_text(_SHIM_SPARSE)
        stand_ins.append("torch_sparse")
    shims.mkdir(parents=True, exist_ok=True)
    site = []
    if not hasattr(np, "Inf"):
        site.append("import numpy\n\nnumpy.Inf = numpy.inf\n")
        stand_ins.append("numpy.Inf")
    if args.loader_workers >= 0:
        site.append(_SITE_WORKERS.format(workers=args.loader_workers))
        stand_ins.append(f"DataLoader num_workers={args.loader_workers}")
    (shims / "sitecustomize.py").write_text("\n".join(site))
    name = f"{args.complexes:d}_{args.avg_size:d}_{SYSTEM_TYPES:d}"
    for split, partition in (("train", "train"), ("valid", "valid"), ("test", "test")):
        write_reference_files(dict(np.load(args.data.format(split))), partition, data_dir, name)

    import torch

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shims), str(args.reference.resolve())]))
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    command = [
        sys.executable, "-u", "main_simulation.py",
        "--data_dir", str(data_dir),
        "--n_complex", str(args.complexes),
        "--average_complex_size", str(args.avg_size),
        "--system_types", str(SYSTEM_TYPES),
        "--seed", str(args.seed),
        "--epochs", str(args.epochs),
        "--outf", str(workdir / "exp_results"),
        "--exp_name", "run",
    ]  # fmt: skip
    start = time.perf_counter()
    lines, stopped = [], False
    with subprocess.Popen(
        command,
        cwd=args.reference,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append(line)
            if args.minutes and time.perf_counter() - start > 60 * args.minutes:
                stopped = True  # the protocol's length is not reached: a partial run
                proc.terminate()
                break
    if proc.returncode and not stopped:
        raise SystemExit(f"the reference exited with {proc.returncode}")
    seconds = time.perf_counter() - start
    text = "".join(lines)
    # "*** Best Val Loss: v \t Best Test Loss: t \t Best epoch e" after every validation
    best_lines = re.findall(
        r"Best Val Loss: ([\d.]+)\s+Best Test Loss: ([\d.]+)\s+Best epoch (\d+)", text
    )
    if not best_lines:
        raise SystemExit("the reference stopped before its first validation: nothing to report")
    best_val, best_test, best_epoch = best_lines[-1]
    curves = json.loads((workdir / "exp_results" / "run" / "loss.json").read_text())
    # The fraction of particles (padding included) whose argmax cluster is k, printed after
    # each pass over the training set: one nonzero entry is a collapsed hierarchy.
    plans = [
        [float(p) for p in m.split()]
        for m in re.findall(r"Pooling plan: \[([^\]]*)\]\ntrain epoch", text)
    ]
    result = {
        "model": "EGHN",
        "reference": "hanjq17/EGHN main_simulation.py",
        "reference_commit": git_commit(args.reference),
        "stand_ins": stand_ins,
        "torch": torch.__version__,
        "threads": args.threads,
        "loader_workers": args.loader_workers,
        "seed": args.seed,
        "complexes": args.complexes,
        "avg_size": args.avg_size,
        "data": args.data,
        "partial": stopped,
        "early_stopped": "Early Stopping." in text,
        "epochs_run": len(curves["train loss"]),
        "best_epoch": int(best_epoch),
        "valid_mse": float(best_val),
        "test_mse": float(best_test),
        "train_seconds": seconds,
        "train_pooling_plans": plans,
        "curves": curves,
    }
    atomic_write_json(args.out, result)
    print(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("curves", "train_pooling_plans")},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
