"""How much does one test split decide the N-body table? (figures of the README)

    python scripts/nbody_scale_test_draws.py --bodies 5

The N-body benchmark's test MSE is a mean over 2,000 systems whose squared errors are
heavy-tailed (a few close encounters carry much of it), and the HEGNN reference's data
cannot be regenerated (its generator's workers are unseeded), so a published figure comes
from one draw of the test systems among many. This scores the committed models of
``experiments/results/nbody_scale/<N>/`` (`nbody_scale.evaluate_file`, as ``--evaluate``
does) on independent test splits, simulated on this machine with the experiment's simulator
and rotations for other seeds, and reports each model's mean, standard deviation, minimum
and maximum over the draws, beside its committed figure (the seed-43 split the models were
selected on the validation split of, simulated on the GPU that trained them).

Writes ``experiments/results/nbody_scale/<N>/test_draws.json`` (atomically) and prints a
table. The simulated draws go to ``--data-dir`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from egnn_jax._atomic import save_json_atomic
from egnn_jax.experiments import nbody_scale
from egnn_jax.experiments._report import markdown_table


def score_draws(bodies: int, seeds: list[int], workdir: Path, data_dir: Path) -> dict:
    """``{model: [test MSE per seed]}`` of the committed models on each seed's test split."""
    scores: dict[str, list[float]] = {}
    for seed in seeds:
        config = nbody_scale.NBodyScaleConfig(bodies=bodies, seed=seed)
        path = nbody_scale.export_split(config, "test", data_dir / f"test_{seed}.npz", data_dir)
        for name, mse in nbody_scale.evaluate_file(workdir, path).items():
            scores.setdefault(name, []).append(float(mse))
        print(f"seed {seed}: done", file=sys.stderr, flush=True)
    return scores


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bodies", type=int, default=5, choices=nbody_scale.BODIES)
    ap.add_argument("--seeds", type=int, nargs="+", default=[44, 45, 46, 47, 48, 49])
    ap.add_argument("--workdir", type=Path, help="default experiments/results/nbody_scale/<N>")
    ap.add_argument("--data-dir", type=Path, help="the simulated draws (default: temporary)")
    ap.add_argument("--out", type=Path, help="default WORKDIR/test_draws.json")
    args = ap.parse_args(argv)
    workdir = args.workdir or Path("experiments/results/nbody_scale") / str(args.bodies)
    committed = json.loads((workdir / "metrics.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        scores = score_draws(args.bodies, args.seeds, workdir, data_dir)
    models = {}
    for name, values in scores.items():
        v = np.asarray(values)
        models[name] = {
            "test_mse_per_seed": values,
            "mean": float(v.mean()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "min": float(v.min()),
            "max": float(v.max()),
            "committed_test_mse": committed["models"][name]["test_mse"],
            "published": nbody_scale.published(name, args.bodies),
        }
    result = {
        "command": "python scripts/nbody_scale_test_draws.py " + " ".join(sys.argv[1:]),
        "bodies": args.bodies,
        "seeds": args.seeds,
        "systems_per_draw": nbody_scale.NBodyScaleConfig(bodies=args.bodies).n_test,
        "workdir": str(workdir),
        "models": models,
    }
    save_json_atomic(args.out or workdir / "test_draws.json", result)
    rows = [
        [
            nbody_scale.LABELS.get(name, name),
            f"{100 * r['mean']:.2f} ± {100 * (r['std'] or 0):.2f}",
            f"{100 * r['min']:.2f} to {100 * r['max']:.2f}",
            f"{100 * r['committed_test_mse']:.2f}",
            "-" if r["published"] is None else f"{100 * r['published']:.2f}",
        ]
        for name, r in models.items()
    ]
    header = ["model", "mean ± std x1e-2", "range x1e-2", "committed (seed 43)", "published"]
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
