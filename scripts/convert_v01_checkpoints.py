"""Convert an N-body workdir of egnn-jax 0.1 (msgpack parameters) to the 0.2 format.

    python scripts/convert_v01_checkpoints.py experiments/results/nbody_charged
    python scripts/convert_v01_checkpoints.py experiments/results/nbody_charged/paper_data

Version 0.1 saved each model's best parameters as ``<workdir>/best/<model>.msgpack`` and its
metrics.json without fingerprints. This reads them, checks every parameter tree against the
model it belongs to (by name, shape and dtype), saves it as an Orbax checkpoint with named
trees (``<workdir>/best/<model>/<step>/``), rewrites metrics.json in the 0.2 format with each
run's fingerprint, and deletes the msgpack files. Nothing is retrained: the test MSE of every
converted model is recomputed and must equal the 0.1 figure to 1e-6, or nothing is written.

Models whose inputs changed in 0.2 (the N-body GNN now reads the reference inputs) cannot be
converted; they are listed and left out (retrain them with ``--models gnn``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import flax.serialization
import jax

from egnn_jax.experiments import best_dir, nbody_charged, save_params
from egnn_jax.experiments._checkpoint import CheckpointMismatchError, check_manifest, manifest
from egnn_jax.experiments._experiment import model_fingerprint, shared_fingerprint
from egnn_jax.experiments._models import label

TOLERANCE = 1e-6


def convert(workdir: Path, data_dir: Path | None = None) -> dict:
    experiment = nbody_charged.EXPERIMENT
    old = json.loads((workdir / "metrics.json").read_text())
    config = experiment.Config.from_dict(old["config"])
    data = experiment.load_data(config, data_dir or workdir / "data", progress=True)
    shared = shared_fingerprint(experiment, config, data)
    spe = config.steps_per_epoch
    rows, params_of, skipped = {}, {}, {}
    for name, old_row in old["models"].items():
        spec = experiment.model_spec(name, config)
        one = jax.tree.map(lambda a: a[:1], data.train)
        like = spec.init(None, one) if not spec.trainable else spec.init(jax.random.key(0), one)
        path = workdir / "best" / f"{name}.msgpack"
        params = flax.serialization.msgpack_restore(path.read_bytes())
        try:
            check_manifest(manifest(params), manifest(like), path)
        except CheckpointMismatchError as e:
            skipped[name] = str(e)
            continue
        params = jax.tree.map(lambda a, b: jax.numpy.asarray(a, b.dtype), params, like)
        scores = {
            s: experiment.metrics(config, spec, params, b)["mse"]
            for s, b in (("valid", data.valid), ("test", data.test))
        }
        for split, score in scores.items():
            want = old_row[f"{split}_mse"]
            if abs(score - want) > TOLERANCE:
                raise SystemExit(f"{name}: {split} MSE {score} != {want} (0.1); nothing written")
        row = {
            "name": name,
            "label": label(name),
            "kind": spec.kind,
            "command": old_row.get("command"),
            "fingerprint": shared | model_fingerprint(spec, data),
            "valid_mse": scores["valid"],
            "test_mse": scores["test"],
            "forward_ms_per_batch": old_row["forward_ms_per_batch"],
            "paper_test_mse": nbody_charged.PAPER_TEST_MSE[name],
            "num_params": int(sum(a.size for a in jax.tree.leaves(params))),
            "converted_from": f"best/{name}.msgpack (egnn-jax 0.1)",
        }
        if spec.trainable:
            best_step = round(old_row["best_epoch"] * spe)
            row |= {
                "best_step": best_step,
                "best_epoch": best_step / spe,
                "steps_done": old_row["epochs"] * spe,
                "epochs_done": float(old_row["epochs"]),
                "stopped_early": False,
            }
        else:
            best_step = 0
            row["fit"] = {k: float(v) for k, v in params.items()}
        rows[name], params_of[name] = row, (params, best_step)

    for name, (params, step) in params_of.items():
        meta = {"name": name, "step": step, "fingerprint": rows[name]["fingerprint"]}
        if "valid_mse" in rows[name] and rows[name]["kind"] != "linear":
            meta["metrics"] = {"val_loss": rows[name]["valid_mse"]}
        save_params(best_dir(workdir, name), params, meta)
    order = [n for n in experiment.model_names if n in rows]
    new = {
        "experiment": experiment.name,
        "fingerprint": shared,
        "config": config.to_dict() | {"models": order},
        "models": {n: rows[n] for n in order},
        "test_mse": {n: rows[n]["test_mse"] for n in order},
        "data": old.get("data"),
        "device": old.get("device"),
        "versions": old.get("versions"),
        "command": old.get("command"),
        "histories": {n: old["histories"][n] for n in order if n in old.get("histories", {})},
        "wall_seconds": old.get("wall_seconds"),
        "converted": "from egnn-jax 0.1 by scripts/convert_v01_checkpoints.py",
    }
    from egnn_jax._atomic import save_json_atomic

    save_json_atomic(workdir / "metrics.json", new)
    for name in params_of:
        (workdir / "best" / f"{name}.msgpack").unlink()
    return {"converted": order, "skipped": skipped}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--data-dir", type=Path, help="simulation cache (default WORKDIR/data)")
    args = parser.parse_args(argv)
    result = convert(args.workdir, args.data_dir)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
