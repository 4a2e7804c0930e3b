"""The N-body 5/20/50/100 experiment (HEGNN's benchmark): inputs, rotations, --quick end to end,
--export and --evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _cli import native_env, run_main, run_quick

from egnn_jax.experiments import nbody_scale
from egnn_jax.sim import load_dataset


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_quick(nbody_scale, tmp_path_factory.mktemp("nbody_scale"))


def test_inputs_are_the_reference_ones():
    """node [|v|, q / max q] (width 2), edge [d, d] (width 2), as `main_nbody.py` gives them."""
    rng = np.random.default_rng(0)
    x0, v0 = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4, 3))
    q = np.array([[1.0, -1.0, 1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]])
    batch = nbody_scale.featurise(x0, v0, q, x0)
    assert batch["node_feat"].shape == (2, 4, 2) and batch["edge_attr"].shape == (2, 4, 4, 2)
    np.testing.assert_allclose(batch["node_feat"][..., 0], np.linalg.norm(v0, axis=-1), 1e-6)
    # q / max q: the reference's quirk turns an all-negative system's charges into +1.
    np.testing.assert_array_equal(batch["node_feat"][0, :, 1], q[0])
    np.testing.assert_array_equal(batch["node_feat"][1, :, 1], 1.0)
    d01 = np.linalg.norm(x0[0, 0] - x0[0, 1])
    np.testing.assert_allclose(batch["edge_attr"][0, 0, 1], [d01, d01], rtol=1e-6)
    assert all(a.dtype == np.float32 for a in batch.values())
    with pytest.raises(ValueError, match="charges"):
        nbody_scale.featurise(x0, v0, q[:, :3])


def test_test_rotations_are_proper_and_the_same_everywhere():
    r = nbody_scale.random_rotations(43, 500)
    np.testing.assert_allclose(
        r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    np.testing.assert_array_equal(r, nbody_scale.random_rotations(43, 500))
    assert not np.allclose(r, nbody_scale.random_rotations(44, 500))


def test_config_and_published_table():
    cfg = nbody_scale.NBodyScaleConfig(bodies=20)
    assert cfg.steps_per_epoch == 19 and cfg.patience == 20 and cfg.eval_every == 95
    assert cfg.clip_norm == 10.0 and cfg.batch_size == 256 and cfg.eval_batch_size is None
    assert nbody_scale.NBodyScaleConfig(bodies=100).eval_batch_size == 200
    assert nbody_scale.published("hegnn_l3", 100) == pytest.approx(0.0094)
    assert nbody_scale.published("egnn", 7) is None
    spec = nbody_scale.EXPERIMENT.model_spec("hegnn_l6", cfg)
    assert spec.kind == "hegnn" and dict(spec.options) == {"max_degree": 6}
    with pytest.raises(ValueError, match="epochs"):
        nbody_scale.NBodyScaleConfig(epochs=12)


def test_remat_reaches_egnn_and_hegnn_and_leaves_every_fingerprint_alone():
    """`--remat` changes how EGNN and HEGNN run, not what they train: a run may resume
    either way."""
    from egnn_jax.experiments._cli import _config, build_parser

    experiment, plain = nbody_scale.EXPERIMENT, nbody_scale.NBodyScaleConfig(bodies=100)
    parser = build_parser(experiment)
    remat = _config(experiment, parser.parse_args(["--bodies", "100", "--remat"]), parser)
    assert remat.remat and not plain.remat and remat.fingerprint() == plain.fingerprint()
    specs = [experiment.model_spec(n, c) for n in ("egnn", "rf") for c in (plain, remat)]
    assert dict(specs[1].options) == {"velocity": True, "remat": True}
    assert specs[0].to_dict() == specs[1].to_dict() and specs[2] == specs[3]
    hegnn = [experiment.model_spec("hegnn_l1", c) for c in (plain, remat)]
    assert dict(hegnn[1].options) == {"max_degree": 1, "remat": True}
    assert hegnn[0].to_dict() == hegnn[1].to_dict()
    assert hegnn[1].to_dict()["options"] == {"max_degree": 1}


def test_quick_run_trains_every_kind_and_reports_the_table(quick_run):
    workdir, metrics = quick_run
    assert set(metrics["models"]) == {"linear", "rf", "egnn", "hegnn_l2", "fastegnn"}
    for name, row in metrics["models"].items():
        assert np.isfinite(row["test_mse"]), name
        assert row["bodies"] == 5
        assert (row["published_test_mse"] is None) == (name == "fastegnn")
    # Linear is fitted, not trained, and lands near the published 7.72e-2 even here.
    assert 0.04 < metrics["models"]["linear"]["test_mse"] < 0.15
    table = nbody_scale.EXPERIMENT.format_table(metrics)
    assert "| HEGNN l≤2 |" in table and "published" in table and "| FastEGNN" in table
    spec = nbody_scale.EXPERIMENT.model_spec("fastegnn", nbody_scale.quick_config())
    assert dict(spec.options) == {"keep_fraction": 0.5, "virtual_channels": 3}


@pytest.mark.slow  # over 10 s; `make test-slow`
def test_export_then_evaluate_reproduces_the_test_scores(quick_run, tmp_path):
    workdir, metrics = quick_run
    out = tmp_path / "t.npz"
    cmd = ["egnn_jax.experiments.nbody_scale", "--quick", "--workdir", workdir]
    exported = run_main(*cmd, "--export", "test", out)
    assert exported.returncode == 0, exported.stderr
    with np.load(out) as f:
        assert set(f.files) == {"x0", "v0", "q", "xT"} and f["x0"].shape == (32, 5, 3)
    result = run_main("egnn_jax.experiments.nbody_scale", "--workdir", workdir, "--evaluate", out)
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    for name, row in metrics["models"].items():
        assert scores[name] == pytest.approx(row["test_mse"], rel=1e-4), name


_RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results" / "nbody_scale"


@pytest.mark.slow  # 2,000 systems through every committed model of a size (~1 min; 100: ~13)
@pytest.mark.parametrize(
    "bodies", sorted(int(p.parent.name) for p in _RESULTS.glob("*/metrics.json"))
)
def test_committed_models_reproduce_the_committed_table(bodies, tmp_path):
    """A fresh clone's ``--bodies N --export test`` (the shipped split; where none is shipped,
    as for the CPU-simulated 100 bodies, simulated here: either way its content hash must be
    the runs') then ``--bodies N --evaluate`` scores every committed model as its metrics.json
    does: to float32 summation order where the table was scored on a CPU, to 4 digits where
    on a GPU (50 bodies: another summation order over 2,000 systems of 2,450 edges)."""
    workdir = _RESULTS / str(bodies)
    metrics = json.loads((workdir / "metrics.json").read_text())
    # Read only: a shipped split is loaded, nothing is written into the repository.
    data_dir = workdir / "data" if (workdir / "data").is_dir() else tmp_path / "data"
    module = [sys.executable, "-m", "egnn_jax.experiments.nbody_scale", "--bodies", str(bodies)]
    run = dict(env=native_env(), capture_output=True, text=True, timeout=1200, check=True)
    path = tmp_path / "test.npz"
    export = ["--export", "test", str(path), "--data-dir", str(data_dir)]
    subprocess.run(module + export + ["--workdir", str(tmp_path)], **run)
    hashes = {load_dataset(p).metadata["content_hash"] for p in data_dir.glob("*.npz")}
    assert metrics["data"]["test"]["content_hash"] in hashes
    scores = json.loads(subprocess.run(module + ["--evaluate", str(path)], **run).stdout)
    assert set(scores) == set(metrics["models"])
    for name, score in scores.items():
        row = metrics["models"][name]
        # Each run records where it was scored; a table may mix GPU and CPU rows (50 bodies).
        platform = (row.get("devices") or metrics["device"])["platform"]
        rel = 1e-3 if platform == "gpu" else 1e-4
        assert score == pytest.approx(row["test_mse"], rel=rel), (name, platform)
