"""Mean ± standard deviation of each model's test MSE over training seeds (figures of the README)

    W=experiments/results/complexes/3_3
    python scripts/seed_spread.py $W $W/train_seed_1 $W/train_seed_2

Each argument is the workdir of one run of the same experiment on the same data, differing
only in ``--train-seed`` (the initialisation and the shuffling). The script reads their
``metrics.json``, refuses to mix runs whose data (content hashes of every split) or settings
other than the training seed differ, and reports per model the test MSE at the best
validation epoch of each seed, their mean and sample standard deviation, and which seeds'
runs were cut short: trained, not stopped early, and fewer epochs (steps) than the
experiment's default config allows (a run finished with a smaller ``--epochs``, as the README
does for partial rows, counts as cut short).

Writes ``seeds.json`` (atomically) into the first workdir and prints a markdown table
(x 1e-2). A model missing from some workdir is reported over the seeds that have it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
from pathlib import Path

from egnn_jax._atomic import save_json_atomic
from egnn_jax.experiments._report import markdown_table

# Settings that may differ between the runs of one seed study: the training seed, the models
# each invocation trained and how long it was allowed to run.
_FREE_SETTINGS = ("train_seed", "models", "epochs", "iterations")


def _data_hashes(metrics: dict) -> dict:
    return {split: info.get("content_hash") for split, info in metrics.get("data", {}).items()}


def _comparable_config(metrics: dict) -> dict:
    return {k: v for k, v in metrics["config"].items() if k not in _FREE_SETTINGS}


def _protocol_length(metrics: dict) -> dict:
    """``{"epochs_done": E, "steps_done": S}``: the most the experiment's default config
    allows (its protocol), or this run's own settings for an unknown experiment."""
    config = metrics["config"]
    try:
        module = importlib.import_module(f"egnn_jax.experiments.{metrics.get('experiment')}")
        defaults = module.EXPERIMENT.Config()
        config = {k: getattr(defaults, k, None) for k in ("epochs", "iterations")}
    except (ImportError, AttributeError, TypeError):
        pass
    return {"epochs_done": config.get("epochs"), "steps_done": config.get("iterations")}


def _cut_short(row: dict, length: dict) -> bool:
    if row.get("stopped_early", True):
        return False
    return any(key in row and length[key] is not None and row[key] < length[key] for key in length)


def _seed_of(metrics: dict):
    config = metrics["config"]
    return config.get("train_seed") if config.get("train_seed") is not None else config.get("seed")


def spread(workdirs: list[Path]) -> dict:
    """Per-model test MSEs over the runs in `workdirs`, with their mean and sample std.

    Raises:
        ValueError: the runs were made on different data, with settings other than the
            training seed differing, or two of them share a training seed.
    """
    runs = []
    for workdir in workdirs:
        path = Path(workdir) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no finished run in this workdir")
        runs.append((Path(workdir), json.loads(path.read_text())))
    reference_dir, reference = runs[0]
    for workdir, metrics in runs[1:]:
        if metrics.get("experiment") != reference.get("experiment"):
            raise ValueError(f"{workdir} is another experiment than {reference_dir}")
        if _data_hashes(metrics) != _data_hashes(reference):
            raise ValueError(f"{workdir} was trained on other data than {reference_dir}")
        ours, theirs = _comparable_config(metrics), _comparable_config(reference)
        if ours != theirs:
            keys = ours.keys() | theirs.keys()
            differing = sorted(k for k in keys if ours.get(k) != theirs.get(k))
            raise ValueError(f"{workdir} differs from {reference_dir} in {differing}")
    seeds = [_seed_of(m) for _, m in runs]
    lengths = [_protocol_length(m) for _, m in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"two runs share a training seed: {seeds}")

    names: list[str] = []
    for _, metrics in runs:
        names += [n for n in metrics["models"] if n not in names]
    models = {}
    for name in names:
        per_seed = []
        for (workdir, metrics), seed, length in zip(runs, seeds, lengths, strict=True):
            row = metrics["models"].get(name)
            if row is None:
                continue
            per_seed.append(
                {
                    "workdir": str(workdir),
                    "train_seed": seed,
                    "test_mse": row["test_mse"],
                    "best_epoch": row.get("best_epoch"),
                    "epochs_done": row.get("epochs_done"),
                    "stopped_early": row.get("stopped_early"),
                    "partial": _cut_short(row, length),
                }
            )
        values = [r["test_mse"] for r in per_seed]
        rows = [m["models"][name] for _, m in runs if name in m["models"]]
        models[name] = {
            "published_test_mse": rows[0].get("published_test_mse"),
            "runs": per_seed,
            "n": len(values),
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None,
        }
    return {"experiment": reference.get("experiment"), "train_seeds": seeds, "models": models}


def table(result: dict) -> str:
    rows = []
    for name, m in result["models"].items():
        fmt = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
        spread_text = fmt(m["mean"]) + ("" if m["std"] is None else f" ± {100 * m['std']:.2f}")
        partial = sum(r["partial"] for r in m["runs"])
        rows.append(
            [
                name,
                spread_text,
                ", ".join(fmt(r["test_mse"]) for r in m["runs"]),
                str(m["n"]) + (f" ({partial} partial)" if partial else ""),
                fmt(m["published_test_mse"]),
            ]
        )
    header = ["model", "mean ± std x1e-2", "per seed x1e-2", "seeds", "published x1e-2"]
    return markdown_table(header, rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", type=Path, help="one workdir per training seed")
    parser.add_argument("--output", type=Path, help="default: FIRST_WORKDIR/seeds.json")
    args = parser.parse_args(argv)
    result = spread(args.workdirs)
    save_json_atomic(args.output or args.workdirs[0] / "seeds.json", result)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
