"""The simulate -> featurise -> train -> evaluate -> report pipeline (three-body, `--quick`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egnn_jax.experiments import three_body
from egnn_jax.experiments._featurise import featurise, masses_vary
from egnn_jax.experiments._models import ModelSpec, fit_linear
from egnn_jax.experiments._train import TrainingDiverged, load_best_params
from egnn_jax.testing import assert_equivariant

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _random_system(seed, b, m, d, masses_equal=True):
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=(b, m, d)).astype(np.float32)
    v0 = rng.normal(size=(b, m, d)).astype(np.float32)
    masses = np.ones((b, m), np.float32) if masses_equal else rng.uniform(0.5, 2, (b, m))
    return x0, v0, masses.astype(np.float32)


# --------------------------------------------------------------------------------------
# Featurisation and models (fast, no simulator)
# --------------------------------------------------------------------------------------


def test_featurise_shapes_and_invariants():
    x0, v0, masses = _random_system(0, 4, 3, 2, masses_equal=False)
    target = x0 + 1.0
    b = featurise(x0, v0, masses, include_masses=True, target=target)
    assert b["node_feat"].shape == (4, 3, 2) and b["edge_attr"].shape == (4, 3, 3, 1)
    np.testing.assert_allclose(b["node_feat"][..., 0], np.linalg.norm(v0, axis=-1), rtol=1e-6)
    np.testing.assert_allclose(b["node_feat"][..., 1], masses)
    d01 = np.linalg.norm(x0[:, 0] - x0[:, 1], axis=-1)
    np.testing.assert_allclose(b["edge_attr"][:, 0, 1, 0], d01, rtol=1e-6)
    np.testing.assert_allclose(b["edge_attr"], np.swapaxes(b["edge_attr"], 1, 2))
    np.testing.assert_array_equal(b["edge_attr"][:, [0, 1, 2], [0, 1, 2]], 0.0)
    assert featurise(x0, v0)["node_feat"].shape == (4, 3, 1)
    assert masses_vary(masses) and not masses_vary(np.ones((4, 3)))
    with pytest.raises(ValueError, match="masses"):
        featurise(x0, v0, include_masses=True)
    with pytest.raises(ValueError, match="target"):
        featurise(x0, v0, target=x0[:, :2])


def test_linear_baseline_fits_t_exactly():
    x0, v0, _ = _random_system(1, 50, 3, 2)
    target = x0 + 2.5 * v0
    spec = ModelSpec("linear", "linear")
    params = spec.init(None, {"x0": x0, "v0": v0, "target": target})
    assert abs(float(params["t"]) - 2.5) < 1e-6
    pred = spec.predict(params, {"x0": x0, "v0": v0})
    np.testing.assert_allclose(pred, target, rtol=1e-5, atol=1e-5)
    # With noise, t is the least-squares solution (not, e.g., a mean ratio).
    noisy = target + 0.1 * np.random.default_rng(2).normal(size=target.shape)
    t = float(fit_linear({"x0": x0, "v0": v0, "target": noisy})["t"])
    want = np.sum(v0 * (noisy - x0)) / np.sum(v0 * v0)
    assert abs(t - want) < 1e-5 and abs(t - 2.5) < 0.05


SPECS = [
    ModelSpec("linear", "linear"),
    ModelSpec("gnn", "gnn", 16, 2),
    ModelSpec("rf", "radial_field", 16, 2),
    ModelSpec("egnn", "egnn", 16, 2),
    ModelSpec("egnn_vel", "egnn", 16, 2, velocity=True),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_model_shapes(spec):
    # 5 charged-like particles in 3-D with two edge attributes (the N-body setting); the
    # 3-body 2-D setting runs in the pipeline tests.
    b, m, d = 6, 5, 3
    x0, v0, masses = _random_system(3, b, m, d, masses_equal=False)
    batch = featurise(x0, v0, masses, include_masses=True, target=x0 + v0)
    batch["edge_attr"] = jnp.concatenate([batch["edge_attr"], batch["edge_attr"] ** 2], -1)
    params = spec.init(jax.random.key(0), batch)

    @jax.jit
    def pred_and_grads(params):
        loss = lambda p: jnp.mean((spec.predict(p, batch) - batch["target"]) ** 2)
        return spec.predict(params, batch), jax.grad(loss)(params)

    pred, grads = pred_and_grads(params)
    assert pred.shape == (b, m, d) and pred.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(pred)))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    if spec.trainable:
        assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))

    # Untrained: every model but the GNN is E(n)- and permutation-equivariant.
    params = spec.init(jax.random.key(1), featurise(x0, v0, target=x0))
    check = lambda: assert_equivariant(
        _as_graph_fn(spec, params), jax.random.key(2), masses[0][:, None], x0[0], v0[0]
    )
    if spec.kind == "gnn":
        with pytest.raises(AssertionError, match="not E"):
            check()
    else:
        check()


def _as_graph_fn(spec, params):
    """(h = masses [M, 1], x, v) -> (h, x_pred) for `assert_equivariant`; features recomputed."""

    @jax.jit
    def fn(h, x, v):
        batch = featurise(x[None], v[None], h[None, :, 0], include_masses=False)
        return h, spec.predict(params, batch)[0]

    return fn


# --------------------------------------------------------------------------------------
# The pipeline, end to end (--quick)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("three_body_data")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("three_body_quick")
    rc = three_body.main(["--quick", "--workdir", str(workdir), "--data-dir", str(data_dir)])
    assert rc == 0
    return workdir, json.loads((workdir / "metrics.json").read_text())


def test_quick_outputs(quick_run):
    workdir, metrics = quick_run
    cfg = three_body.quick_config()
    assert set(metrics["models"]) == set(three_body.MODEL_NAMES) == set(metrics["val_mse"])
    assert metrics["iterations"] == cfg.iterations
    assert (metrics["n_train"], metrics["n_val"]) == (cfg.n_train, cfg.n_val)
    assert metrics["n_train"] + metrics["n_val"] == cfg.n_trajectories
    assert three_body.ThreeBodyExperimentConfig.from_dict(metrics["config"]) == cfg
    for name, r in metrics["models"].items():
        assert math.isfinite(r["val_mse"]) and r["val_mse"] > 0, name
    for name in ("gnn", "egnn", "egnn_vel"):
        r = metrics["models"][name]
        assert r["best_step"] > 0 and r["steps_per_second"] > 0
        # The reported MSE is that of the best checkpoint, recomputed after training.
        assert r["val_mse"] == pytest.approx(r["best_val_loss_during_training"], rel=1e-4)
        hist = metrics["histories"][name]
        assert [h["step"] for h in hist] == list(range(100, 301, 100))
        assert hist[-1]["train_loss"] < hist[0]["train_loss"], name  # it learns
    assert 0 < metrics["models"]["linear"]["t"]
    # Even 300 quick steps beat the linear baseline with the GNN and EGNN-vel.
    for name in ("gnn", "egnn_vel"):
        assert metrics["val_mse"][name] < 0.8 * metrics["val_mse"]["linear"], name
    wall = metrics["wall_seconds"]
    assert {"simulate", "featurise", "train", "evaluate", "plot", "total"} <= set(wall)
    assert set(wall["train"]) == set(three_body.MODEL_NAMES)
    assert {"jax", "flax", "optax", "diffrax", "orbax-checkpoint"} <= set(metrics["versions"])
    assert metrics["versions"]["jax"] == jax.__version__
    assert metrics["device"]["platform"] == jax.devices()[0].platform
    for png in ("loss_curves.png", "predictions.png"):
        data = (workdir / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, png
    assert not list(workdir.glob(".*.tmp"))  # atomic writes leave no temporaries
    for name in ("gnn", "egnn", "egnn_vel"):
        assert (workdir / "checkpoints" / name / "best").is_dir()


def test_trained_egnn_equivariant_gnn_not(quick_run, data_dir):
    workdir, metrics = quick_run
    for name in ("egnn", "egnn_vel", "linear"):
        assert metrics["models"][name]["equivariant"], name
        assert metrics["models"][name]["equivariance_max_rel_err"] < 1e-5, name
    assert not metrics["models"]["gnn"]["equivariant"]
    assert metrics["models"]["gnn"]["equivariance_max_rel_err"] > 1e-2

    # Independently, with the public checker, on validation systems and the best checkpoints.
    cfg = three_body.quick_config()
    data = three_body.load_data(cfg, data_dir)
    x0, v0, masses, _ = (a[:3] for a in data["val"])
    for name in ("gnn", "egnn", "egnn_vel"):
        spec = three_body.model_spec(name, cfg)
        like = jax.eval_shape(spec.init, jax.random.key(0), featurise(x0[:1], v0[:1]))
        params = load_best_params(workdir, name, like)
        fn = _as_graph_fn(spec, params)
        for i in range(3):
            args = (fn, jax.random.key(i), masses[i][:, None], x0[i], v0[i])
            if name == "gnn":
                with pytest.raises(AssertionError, match="not E"):
                    assert_equivariant(*args)
            else:
                assert_equivariant(*args)


def test_equivariance_error_detects_broken_model():
    x0, v0, masses = _random_system(5, 8, 3, 2)
    spec = ModelSpec("linear", "linear")
    errs = three_body.equivariance_error(
        spec, {"t": jnp.float32(1.5)}, x0, v0, masses, include_masses=False, key=jax.random.key(0)
    )
    assert max(errs.values()) < 1e-6
    # A spec whose prediction adds a fixed vector is translation- but not rotation-equivariant.
    broken = dataclasses.replace(spec, name="broken")
    object.__setattr__(broken, "predict", lambda p, b: b["x0"] + jnp.asarray([[[1.0, 0.0]]]))
    errs = three_body.equivariance_error(
        broken, {}, x0, v0, masses, include_masses=False, key=jax.random.key(0)
    )
    assert min(errs.values()) > 0.01


def _env():
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    return env


def test_evaluate_cli_on_simulator_file(quick_run, tmp_path):
    workdir, metrics = quick_run
    f = tmp_path / "held_out.npz"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "egnn_jax.sim",
            "three-body",
            "--n",
            "16",
            "--seed",
            "123",
            "--n-saved",
            "20",
            "--no-progress",
            "--out",
            str(f),
        ],
        check=True,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "egnn_jax.experiments.three_body",
            "--workdir",
            str(workdir),
            "--evaluate",
            str(f),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result) == set(three_body.MODEL_NAMES)
    assert all(math.isfinite(v) and v > 0 for v in result.values())
    # Same numbers in-process, and by hand for the linear baseline.
    again = three_body.evaluate_file(workdir, f)
    for name in result:
        assert again[name] == pytest.approx(result[name], rel=1e-5)
    with np.load(f) as z:
        x, v = z["x"], z["v"]
    t = metrics["models"]["linear"]["t"]
    want = np.mean((x[:, 0] + t * v[:, 0] - x[:, -1]) ** 2)
    assert result["linear"] == pytest.approx(want, rel=1e-4)


def test_evaluate_errors(quick_run, tmp_path, capsys):
    workdir, _ = quick_run
    rc = three_body.main(["--workdir", str(tmp_path / "nothing"), "--evaluate", "x.npz"])
    assert rc == 2 and "metrics.json not found" in capsys.readouterr().err
    x, v, masses = _random_system(6, 4, 3, 3)
    traj = np.stack([x, x + v], axis=1)
    bad_dim = tmp_path / "dim3.npz"
    np.savez(bad_dim, x=traj, v=np.stack([v, v], 1), t=np.arange(2.0), masses=masses)
    rc = three_body.main(["--workdir", str(workdir), "--evaluate", str(bad_dim)])
    assert rc == 2 and "trained in 2-D" in capsys.readouterr().err
    bad_rank = tmp_path / "rank.npz"
    np.savez(bad_rank, x=x, v=v, t=np.arange(2.0), masses=masses)
    rc = three_body.main(["--workdir", str(workdir), "--evaluate", str(bad_rank)])
    assert rc == 2 and "[N, T, M, dim]" in capsys.readouterr().err
    no_v = tmp_path / "no_v.npz"
    np.savez(no_v, x=traj[..., :2], masses=masses)
    rc = three_body.main(["--workdir", str(workdir), "--evaluate", str(no_v)])
    assert rc == 2 and "lacks the arrays ['v']" in capsys.readouterr().err
    # Checkpoints gone -> a clear error naming the missing run.
    empty = tmp_path / "no_ckpt"
    empty.mkdir()
    (empty / "metrics.json").write_text((workdir / "metrics.json").read_text())
    good = tmp_path / "good.npz"
    np.savez(good, x=traj[..., :2], v=np.stack([v, v], 1)[..., :2], t=np.arange(2.0), masses=masses)
    rc = three_body.main(["--workdir", str(empty), "--evaluate", str(good)])
    assert rc == 2 and "no best checkpoint for run 'gnn'" in capsys.readouterr().err


def test_resume_reproduces_uninterrupted_run(tmp_path, data_dir):
    cfg = dataclasses.replace(three_body.quick_config(), models=("linear", "egnn_vel"))
    full = three_body.train_and_evaluate(
        dataclasses.replace(cfg, iterations=200), tmp_path / "a", data_dir=data_dir
    )
    # "Interrupted" after 100 iterations, then resumed to 200.
    three_body.train_and_evaluate(
        dataclasses.replace(cfg, iterations=100), tmp_path / "b", data_dir=data_dir
    )
    resumed = three_body.train_and_evaluate(
        dataclasses.replace(cfg, iterations=200), tmp_path / "b", data_dir=data_dir, resume=True
    )
    r_full, r_res = full["models"]["egnn_vel"], resumed["models"]["egnn_vel"]
    assert r_res["resumed"] and r_res["steps_this_session"] == 100
    assert r_res["val_mse"] == r_full["val_mse"]  # bitwise, same machine
    assert r_res["best_step"] == r_full["best_step"]
    strip = lambda hist: [{k: v for k, v in h.items() if k != "wall_time"} for h in hist]
    assert strip(resumed["histories"]["egnn_vel"]) == strip(full["histories"]["egnn_vel"])
    # A finished run is reloaded, not retrained.
    again = three_body.train_and_evaluate(
        dataclasses.replace(cfg, iterations=200), tmp_path / "b", data_dir=data_dir, resume=True
    )
    assert again["models"]["egnn_vel"]["steps_this_session"] == 0
    assert again["val_mse"] == resumed["val_mse"]


def test_divergence_stops_with_clear_message(tmp_path, data_dir):
    cfg = dataclasses.replace(
        three_body.quick_config(), models=("egnn_vel",), iterations=200, learning_rate=1e8
    )
    with jax.debug_nans(False), pytest.raises(TrainingDiverged, match="diverged") as info:
        three_body.train_and_evaluate(cfg, tmp_path, data_dir=data_dir)
    assert "egnn_vel" in str(info.value)
    assert not (tmp_path / "metrics.json").exists()


def test_config_validation():
    with pytest.raises(ValueError, match="models"):
        dataclasses.replace(three_body.default_config(), models=("transformer",))
    with pytest.raises(ValueError, match="dim"):
        dataclasses.replace(three_body.default_config(), dim=4)
    with pytest.raises(ValueError, match="n_train"):
        dataclasses.replace(three_body.default_config(), n_trajectories=50)
    cfg = three_body.default_config()
    assert (cfg.n_train, cfg.n_val, cfg.iterations, cfg.batch_size) == (8000, 2000, 10_000, 100)
    assert (cfg.hidden_features, cfg.num_layers, cfg.learning_rate) == (64, 4, 5e-4)
    assert dataclasses.replace(cfg, iterations=1234).chunk_len == math.gcd(1234, 500)
