"""Spread of EGNN-vel's charged N-body test MSE over training seeds, on the same data.

    python examples/nbody_seed_study.py [--train-seeds 0 1 2 3] [--epochs 300]

Each seed trains EGNN-vel with the protocol of `python -m egnn_jax.experiments.nbody_charged`
(3,000 training systems, batch 100, Adam 5e-4, validation every 5 epochs) and reports the test
MSE at its best validation epoch; only the initialisation and the shuffling change. In the
full 10,000-epoch run the best validation epoch is ~200 (validation MSE rises after it and does
not come back below), so a few hundred epochs per seed measure what a full run would report.
Writes ``seed_study.json`` (per seed, mean and sample standard deviation) into the results
folder; runs land in ``<workdir>/train_seed_<k>/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

from egnn_jax.experiments import nbody_charged
from egnn_jax.experiments._train import save_json_atomic

RESULTS = Path("experiments/results/nbody_charged")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/egnn_nbody_seed_study"))
    parser.add_argument("--data-dir", type=Path, default=RESULTS / "data", help="data cache")
    parser.add_argument("--out", type=Path, default=RESULTS / "seed_study.json")
    args = parser.parse_args(argv)

    base = dataclasses.replace(
        nbody_charged.NBodyExperimentConfig(), models=("egnn_vel",), epochs=args.epochs
    )
    runs = {}
    for seed in args.train_seeds:
        config = dataclasses.replace(base, train_seed=seed)
        metrics = nbody_charged.train_and_evaluate(
            config, args.workdir / f"train_seed_{seed}", data_dir=args.data_dir, progress=True
        )
        row = metrics["models"]["egnn_vel"]
        runs[seed] = {k: row[k] for k in ("test_mse", "valid_mse", "best_epoch")}
        print(f"train seed {seed}: test MSE {row['test_mse']:.5f} (best epoch {row['best_epoch']})")

    test = [r["test_mse"] for r in runs.values()]
    summary = {
        "model": "egnn_vel",
        "epochs": args.epochs,
        "protocol": "charged N-body, nbody_charged defaults; test MSE at the best validation epoch",
        "runs": {str(k): v for k, v in runs.items()},
        "test_mse_mean": statistics.fmean(test),
        "test_mse_std": statistics.stdev(test) if len(test) > 1 else None,
        "paper_test_mse": nbody_charged.PAPER_TEST_MSE["egnn_vel"],
        "command": "python examples/nbody_seed_study.py --train-seeds "
        + " ".join(map(str, args.train_seeds))
        + f" --epochs {args.epochs}",
    }
    save_json_atomic(args.out, summary)
    std = summary["test_mse_std"]
    print(
        f"mean {summary['test_mse_mean']:.5f}"
        + ("" if std is None else f" ± {std:.5f} (sample std, {len(test)} seeds)")
        + f"; paper {summary['paper_test_mse']}; wrote {args.out}"
    )
    return summary


if __name__ == "__main__":
    main()
