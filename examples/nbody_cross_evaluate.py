"""Test MSE of the committed N-body models on both test sets: ours and the paper's.

    python examples/nbody_cross_evaluate.py

The models in ``experiments/results/nbody_charged/`` were trained on our default data (JAX
PRNG, seed 0), those in ``.../paper_data/`` on the paper's data (the reference generator's
NumPy seed 43). Both test sets are draws of one distribution; evaluating every model on both
separates the difficulty of a test draw from the quality of a training run. Writes
``cross_evaluation.json`` next to the models.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from egnn_jax.experiments import nbody_charged, save_json_atomic

RESULTS = Path("experiments/results/nbody_charged")
TEST_SETS = {"ours": ("jax", 0), "paper": ("numpy-legacy", 43)}
TRAINED = {"ours": RESULTS, "paper": RESULTS / "paper_data"}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=RESULTS / "data", help="data cache")
    parser.add_argument("--out", type=Path, default=RESULTS / "cross_evaluation.json")
    args = parser.parse_args(argv)

    table: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, (sampler, seed) in TEST_SETS.items():
            config = dataclasses.replace(
                nbody_charged.NBodyExperimentConfig(), sampler=sampler, seed=seed
            )
            files[name] = nbody_charged.export_split(
                config, "test", Path(tmp) / f"{name}.npz", args.data_dir
            )
        for trained_on, workdir in TRAINED.items():
            for tested_on, path in files.items():
                for model, mse in nbody_charged.evaluate_file(workdir, path).items():
                    table.setdefault(model, {})[
                        f"trained on {trained_on}, tested on {tested_on}"
                    ] = mse
    summary = {
        "test_mse": table,
        "paper_test_mse": nbody_charged.PAPER_TEST_MSE,
        "data": {k: {"sampler": s, "seed": seed} for k, (s, seed) in TEST_SETS.items()},
        "command": "python examples/nbody_cross_evaluate.py",
    }
    save_json_atomic(args.out, summary)
    print(json.dumps(table, indent=2))
    print(f"wrote {args.out}")
    return summary


if __name__ == "__main__":
    main()
