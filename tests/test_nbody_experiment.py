"""The charged N-body experiment: featurisation, --quick end to end, --evaluate."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egnn_jax.experiments import nbody_charged
from egnn_jax.testing import random_orthogonal


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("nbody")
    config = nbody_charged.quick_config()
    metrics = nbody_charged.train_and_evaluate(config, workdir, progress=False)
    return workdir, metrics


def test_featurise_matches_reference_features():
    key = jax.random.key(0)
    x0 = jax.random.normal(key, (2, 5, 3))
    v0 = jax.random.normal(jax.random.key(1), (2, 5, 3))
    q = jnp.array([[1.0, -1.0, 1.0, 1.0, -1.0]] * 2)
    batch = nbody_charged.featurise(x0, v0, q, x0)
    assert batch["edge_attr"].shape == (2, 5, 5, 2)
    assert float(batch["edge_attr"][0, 0, 1, 0]) == -1.0  # q_0 q_1
    d2 = float(jnp.sum((x0[0, 0] - x0[0, 1]) ** 2))
    assert float(batch["edge_attr"][0, 0, 1, 1]) == pytest.approx(d2, rel=1e-5)
    np.testing.assert_allclose(batch["node_feat"][..., 0], jnp.linalg.norm(v0, axis=-1), 1e-6)
    # Invariant under a rotation with reflection.
    rot = random_orthogonal(jax.random.key(2), 3)
    rotated = nbody_charged.featurise(x0 @ rot.T, v0 @ rot.T, q)
    np.testing.assert_allclose(rotated["edge_attr"], batch["edge_attr"], atol=1e-5)
    with pytest.raises(ValueError, match="charges"):
        nbody_charged.featurise(x0, v0, q[:, :4])


def test_quick_run_reports_every_model(quick_run):
    workdir, metrics = quick_run
    on_disk = json.loads((workdir / "metrics.json").read_text())
    assert set(on_disk["test_mse"]) == {"linear", "gnn", "radial_field", "egnn_vel"}
    for name, r in on_disk["models"].items():
        assert np.isfinite(r["test_mse"]) and r["test_mse"] > 0
        assert r["forward_ms_per_batch"] > 0
        assert (workdir / "best" / f"{name}.msgpack").exists()
    assert (workdir / "loss_curves.png").stat().st_size > 1000
    # The constant-velocity fit lands near the protocol's figure even on 200 systems.
    assert 0.05 < on_disk["test_mse"]["linear"] < 0.12
    # Training helps: the EGNN beats its own untrained start on validation.
    hist = on_disk["histories"]["egnn_vel"]
    assert min(h["val_loss"] for h in hist) < hist[0]["val_loss"] * 1.0001


def test_evaluate_reloads_saved_models(quick_run, tmp_path):
    workdir, metrics = quick_run
    path = tmp_path / "test.npz"
    assert (
        nbody_charged.main(["--quick", "--workdir", str(workdir), "--export", "test", str(path)])
        == 0
    )
    with np.load(path) as f:
        assert f["x0"].shape == f["xT"].shape == (100, 5, 3) and f["q"].shape == (100, 5)
    got = nbody_charged.evaluate_file(workdir, path)
    for name, mse in got.items():
        assert mse == pytest.approx(metrics["test_mse"][name], rel=1e-4)


def test_evaluate_reports_missing_arrays(quick_run, tmp_path):
    workdir, _ = quick_run
    path = tmp_path / "bad.npz"
    np.savez(path, x0=np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match="lacks arrays"):
        nbody_charged.evaluate_file(workdir, path)


def test_retraining_some_models_keeps_the_other_rows(quick_run, tmp_path):
    import dataclasses
    import shutil

    workdir, metrics = quick_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    # A metrics.json written before the `sampler` field existed still counts as the default.
    old = json.loads((copy / "metrics.json").read_text())
    del old["config"]["sampler"]
    (copy / "metrics.json").write_text(json.dumps(old))
    config = dataclasses.replace(nbody_charged.quick_config(), models=("radial_field",), epochs=5)
    merged = nbody_charged.train_and_evaluate(config, copy, progress=False, command="retrain rf")
    assert merged["models"]["radial_field"]["command"] == "retrain rf"
    assert list(merged["models"]) == ["linear", "gnn", "radial_field", "egnn_vel"]
    assert merged["config"]["models"] == list(merged["models"])
    for name in ("linear", "gnn", "egnn_vel"):
        assert merged["models"][name] == metrics["models"][name]
    assert merged["models"]["radial_field"]["epochs"] == 5
    assert merged["models"]["egnn_vel"]["epochs"] == 10
    assert "radial_field" in merged["histories"] and "gnn" in merged["histories"]
    assert "| Radial Field |" in nbody_charged.format_table(merged)
    # Another protocol (here: width) starts a new table.
    other = dataclasses.replace(config, hidden_features=8)
    alone = nbody_charged.train_and_evaluate(other, copy, progress=False)
    assert list(alone["models"]) == ["radial_field"]
    # So does other data (the reference generator's NumPy stream).
    legacy = dataclasses.replace(config, sampler="numpy-legacy", seed=43, models=("linear",))
    alone = nbody_charged.train_and_evaluate(legacy, copy, progress=False)
    assert list(alone["models"]) == ["linear"]
    assert alone["config"]["sampler"] == "numpy-legacy"
    assert alone["data"]["test"]["content_hash"] != metrics["data"]["test"]["content_hash"]


def test_config_rejects_unknown_sampler():
    with pytest.raises(ValueError, match="sampler"):
        nbody_charged.NBodyExperimentConfig(sampler="torch")
