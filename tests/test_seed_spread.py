"""scripts/seed_spread.py: the mean ± std over training seeds, and its refusals to mix runs."""

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "seed_spread.py"
_spec = importlib.util.spec_from_file_location("seed_spread", _SCRIPT)
seed_spread = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seed_spread)


def _write_run(workdir: Path, train_seed, test_mses, *, data_hash="abc", lr=5e-4, epochs_done=300):
    workdir.mkdir(parents=True, exist_ok=True)
    models = {
        name: {
            "test_mse": mse,
            "published_test_mse": 0.1,
            "best_epoch": 100,
            "epochs_done": epochs_done,
            "stopped_early": epochs_done < 10_000,
        }
        for name, mse in test_mses.items()
    }
    metrics = {
        "experiment": "complexes",
        "config": {
            "seed": 43,
            "train_seed": train_seed,
            "learning_rate": lr,
            "epochs": 10_000,
            "models": list(models),
        },
        "data": {"train": {"content_hash": data_hash}, "test": {"content_hash": data_hash + "t"}},
        "models": models,
    }
    (workdir / "metrics.json").write_text(json.dumps(metrics))
    return workdir


def test_mean_and_sample_std_per_model(tmp_path):
    a = _write_run(tmp_path / "a", None, {"egnn": 0.12, "eghn": 0.11})
    b = _write_run(tmp_path / "b", 1, {"egnn": 0.14, "eghn": 0.10})
    c = _write_run(tmp_path / "c", 2, {"egnn": 0.13}, epochs_done=10_000)  # the protocol's end
    result = seed_spread.spread([a, b, c])
    assert result["train_seeds"] == [43, 1, 2]
    egnn = result["models"]["egnn"]
    assert egnn["n"] == 3
    assert egnn["mean"] == pytest.approx(0.13)
    assert egnn["std"] == pytest.approx(statistics.stdev([0.12, 0.14, 0.13]))
    assert [r["partial"] for r in egnn["runs"]] == [False, False, False]
    # A model missing from one workdir is summarised over the seeds that have it.
    assert result["models"]["eghn"]["n"] == 2
    assert "13.00 ± 1.00" in seed_spread.table(result)


def test_a_run_cut_short_is_flagged_partial(tmp_path):
    """Finished with a smaller --epochs than the protocol's (complexes: 10,000), it still counts
    as cut short."""
    a = _write_run(tmp_path / "a", 0, {"egnn": 0.12})
    b = _write_run(tmp_path / "b", 1, {"egnn": 0.14})
    metrics = json.loads((b / "metrics.json").read_text())
    metrics["models"]["egnn"]["stopped_early"] = False
    metrics["config"]["epochs"] = 300
    (b / "metrics.json").write_text(json.dumps(metrics))
    result = seed_spread.spread([a, b])
    assert [r["partial"] for r in result["models"]["egnn"]["runs"]] == [False, True]
    assert "(1 partial)" in seed_spread.table(result)


@pytest.mark.parametrize(
    "other, message",
    [
        (dict(data_hash="xyz"), "other data"),
        (dict(lr=1e-3), "learning_rate"),
        (dict(train_seed=0), "share a training seed"),
    ],
)
def test_refuses_to_mix_runs(tmp_path, other, message):
    a = _write_run(tmp_path / "a", 0, {"egnn": 0.12})
    b = _write_run(tmp_path / "b", other.pop("train_seed", 1), {"egnn": 0.14}, **other)
    with pytest.raises(ValueError, match=message):
        seed_spread.spread([a, b])


def test_main_writes_seeds_json_into_the_first_workdir(tmp_path, capsys):
    a = _write_run(tmp_path / "a", 0, {"egnn": 0.12})
    b = _write_run(tmp_path / "b", 1, {"egnn": 0.14})
    assert seed_spread.main([str(a), str(b)]) == 0
    written = json.loads((a / "seeds.json").read_text())
    assert written["models"]["egnn"]["n"] == 2
    assert "| egnn |" in capsys.readouterr().out
