"""The simulate -> featurise -> train -> evaluate -> report pipeline (three-body, `--quick`)."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cli import run_main, run_module, run_quick

from egnn_jax.experiments import FingerprintMismatchError, best_dir, load_params, three_body
from egnn_jax.experiments._featurise import featurise, masses_vary
from egnn_jax.experiments._loop import TrainingDiverged
from egnn_jax.experiments._models import ModelSpec, fit_linear
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
    ModelSpec("egnn_vel", "egnn", 16, 2, (("velocity", True),)),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_model_shapes(spec):
    # 5 charged-like particles in 3-D with two edge attributes (the N-body setting); the
    # 3-body 2-D setting runs in the pipeline tests.
    b, m, d = 6, 5, 3
    x0, v0, masses = _random_system(3, b, m, d, masses_equal=False)
    batch = three_body.features(x0, v0, masses, target=x0 + v0)
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
    params = spec.init(jax.random.key(1), three_body.features(x0, v0, masses, target=x0))
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
        batch = three_body.features(x[None], v[None], h[None, :, 0])
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
    return run_quick(three_body, tmp_path_factory.mktemp("three_body_quick"), data_dir)


def test_quick_outputs(quick_run):
    workdir, metrics = quick_run
    cfg = three_body.quick_config()
    assert set(metrics["models"]) == set(three_body.MODEL_NAMES) == set(metrics["test_mse"])
    splits = metrics["data"]["splits"]
    assert (splits["train"], splits["valid"], splits["test"]) == (320, 40, 40)
    assert three_body.ThreeBodyExperimentConfig.from_dict(metrics["config"]) == cfg
    for name, r in metrics["models"].items():
        assert math.isfinite(r["test_mse"]) and r["test_mse"] > 0, name
        assert r["test_mse"] != r["valid_mse"], name  # two different splits
        assert (workdir / "best" / name).is_dir(), name
    for name in ("gnn", "egnn", "egnn_vel"):
        r = metrics["models"][name]
        assert r["best_step"] > 0 and r["steps_per_second"] > 0
        assert r["steps_done"] == cfg.iterations and not r["stopped_early"]
        # The validation MSE selects the step; it is recomputed from the saved parameters.
        assert r["valid_mse"] == pytest.approx(r["best_val_loss_during_training"], rel=1e-4)
        hist = metrics["histories"][name]
        assert [h["step"] for h in hist] == list(range(100, 301, 100))
        assert r["best_val_loss_during_training"] == min(h["val_loss"] for h in hist)
        assert hist[-1]["train_loss"] < hist[0]["train_loss"], name  # it learns
        assert r["fingerprint"]["model"]["name"] == name
    assert 0 < metrics["models"]["linear"]["fit"]["t"]
    # Even 300 quick steps beat the linear baseline with EGNN-vel.
    assert metrics["test_mse"]["egnn_vel"] < 0.8 * metrics["test_mse"]["linear"]
    wall = metrics["wall_seconds"]
    assert {"data", "train", "evaluate", "plot", "total"} <= set(wall)
    assert set(wall["train"]) == set(three_body.MODEL_NAMES)
    assert {"jax", "flax", "optax", "diffrax", "orbax-checkpoint"} <= set(metrics["versions"])
    assert metrics["versions"]["jax"] == jax.__version__
    assert metrics["device"]["platform"] == jax.devices()[0].platform
    for png in ("loss_curves.png", "predictions.png"):
        data = (workdir / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, png
    assert not list(workdir.glob(".*.tmp"))  # atomic writes leave no temporaries
    table = three_body.EXPERIMENT.format_table(metrics)
    assert table.splitlines()[0].startswith("| model | test MSE |")
    assert f"| EGNN-vel | {metrics['test_mse']['egnn_vel']:.4g} |" in table


def test_reported_test_mse_is_at_the_best_validation_step(quick_run, data_dir):
    workdir, metrics = quick_run
    cfg = three_body.quick_config()
    data = three_body.EXPERIMENT.load_data(cfg, data_dir, progress=False)
    for name in ("gnn", "egnn_vel"):
        spec = three_body.EXPERIMENT.model_spec(name, cfg)
        params, meta = load_params(
            best_dir(workdir, name), spec.init(jax.random.key(0), data.train)
        )
        assert meta["step"] == metrics["models"][name]["best_step"]
        pred = jax.jit(spec.predict)(params, data.test)
        want = float(jnp.mean((pred - data.test["target"]) ** 2))
        assert metrics["test_mse"][name] == pytest.approx(want, rel=1e-5)


def test_trained_egnn_equivariant_gnn_not(quick_run, data_dir):
    workdir, metrics = quick_run
    for name in ("egnn", "egnn_vel", "linear"):
        assert metrics["models"][name]["equivariant"], name
        assert metrics["models"][name]["equivariance_max_rel_err"] < 1e-5, name
    assert not metrics["models"]["gnn"]["equivariant"]
    assert metrics["models"]["gnn"]["equivariance_max_rel_err"] > 1e-2

    # Independently, with the public checker, on validation systems and the best checkpoints.
    cfg = three_body.quick_config()
    valid = three_body.EXPERIMENT.load_data(cfg, data_dir, progress=False).valid
    x0, v0, masses = (np.asarray(valid[k][:3]) for k in ("x0", "v0", "masses"))
    for name in ("gnn", "egnn", "egnn_vel"):
        spec = three_body.EXPERIMENT.model_spec(name, cfg)
        like = jax.eval_shape(spec.init, jax.random.key(0), jax.tree.map(lambda a: a[:1], valid))
        params, _ = load_params(best_dir(workdir, name), like)
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
        spec, {"t": jnp.float32(1.5)}, x0, v0, masses, key=jax.random.key(0)
    )
    assert max(errs.values()) < 1e-6
    # A spec whose prediction adds a fixed vector is translation- but not rotation-equivariant.
    broken = dataclasses.replace(spec, name="broken")
    object.__setattr__(broken, "predict", lambda p, b: b["x0"] + jnp.asarray([[[1.0, 0.0]]]))
    errs = three_body.equivariance_error(broken, {}, x0, v0, masses, key=jax.random.key(0))
    assert min(errs.values()) > 0.01


@pytest.mark.slow  # over 10 s; `make test-slow`
def test_evaluate_cli_on_simulator_file(quick_run, tmp_path):
    workdir, metrics = quick_run
    f = tmp_path / "held_out.npz"
    run_main(
        "egnn_jax.sim.__main__",
        "three-body",
        *("--n", 16, "--seed", 123, "--n-saved", 20, "--no-progress", "--out", f),
        check=True,
    )
    out = run_main("egnn_jax.experiments.three_body", "--workdir", workdir, "--evaluate", f)
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
    t = metrics["models"]["linear"]["fit"]["t"]
    want = np.mean((x[:, 0] + t * v[:, 0] - x[:, -1]) ** 2)
    assert result["linear"] == pytest.approx(want, rel=1e-4)
    # A bad file: one line on stderr, exit code 1, no traceback.
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(f.read_bytes()[:200])
    out = run_module(
        "egnn_jax.experiments.three_body", "--workdir", workdir, "--evaluate", bad, timeout=300
    )
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("error: ") and "not a readable .npz file" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_evaluate_errors(quick_run, tmp_path, capsys):
    workdir, _ = quick_run
    rc = three_body.main(["--workdir", str(tmp_path / "nothing"), "--evaluate", "x.npz"])
    assert rc == 1 and "metrics.json not found" in capsys.readouterr().err
    rc = three_body.main(["--workdir", str(workdir), "--evaluate", str(tmp_path / "x.npz")])
    assert rc == 1 and "x.npz: no such file" in capsys.readouterr().err
    x, v, masses = _random_system(6, 4, 3, 3)
    traj = np.stack([x, x + v], axis=1)
    bad_dim = tmp_path / "dim3.npz"
    np.savez(bad_dim, x=traj, v=np.stack([v, v], 1), t=np.arange(2.0), masses=masses)
    rc = three_body.main(["--workdir", str(workdir), "--evaluate", str(bad_dim)])
    assert rc == 1 and "trained in 2-D" in capsys.readouterr().err
    bad_rank = tmp_path / "rank.npz"
    np.savez(bad_rank, x=x, v=v, t=np.arange(2.0), masses=masses)
    rc = three_body.main(["--workdir", str(workdir), "--evaluate", str(bad_rank)])
    assert rc == 1 and "[N, T, M, dim]" in capsys.readouterr().err
    no_v = tmp_path / "no_v.npz"
    np.savez(no_v, x=traj[..., :2], masses=masses)
    rc = three_body.main(["--workdir", str(workdir), "--evaluate", str(no_v)])
    assert rc == 1 and "lacks the arrays ['v']" in capsys.readouterr().err
    nan = tmp_path / "nan.npz"
    np.savez(nan, x=np.full_like(traj[..., :2], np.nan), v=traj[..., :2], masses=masses)
    rc = three_body.main(["--workdir", str(workdir), "--evaluate", str(nan)])
    assert rc == 1 and "x has NaN" in capsys.readouterr().err
    # Checkpoints gone -> a clear error naming the missing parameters.
    empty = tmp_path / "no_ckpt"
    empty.mkdir()
    (empty / "metrics.json").write_text((workdir / "metrics.json").read_text())
    good = tmp_path / "good.npz"
    np.savez(good, x=traj[..., :2], v=np.stack([v, v], 1)[..., :2], t=np.arange(2.0), masses=masses)
    rc = three_body.main(["--workdir", str(empty), "--evaluate", str(good)])
    assert rc == 1 and "no saved parameters in" in capsys.readouterr().err


@pytest.mark.slow  # over 10 s; `make test-slow`
def test_existing_run_is_never_replaced_silently(quick_run, data_dir, tmp_path, capsys):
    workdir, metrics = quick_run
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(workdir, copy)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    common = ["--quick", "--workdir", str(copy), "--data-dir", str(data_dir), "--no-progress"]
    assert three_body.main(common) == 1
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before  # nothing deleted
    # The same data in 3-D is other data: --resume names the fields and both values.
    assert three_body.main([*common, "--dim", "3", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "config.dim: 2 there, 3 now" in err and "data.train:" in err
    # So is another seed (once only a warning).
    assert three_body.main([*common, "--seed", "1", "--resume"]) == 1
    assert "config.seed: 0 there, 1 now" in capsys.readouterr().err
    # Resuming a finished run to fewer steps would return the longer run's result.
    assert three_body.main([*common, "--iterations", "200", "--resume"]) == 1
    assert "already done 300 steps" in capsys.readouterr().err
    # A finished run whose resumable state is gone (a fresh clone) is reloaded, not retrained.
    shutil.rmtree(copy / "checkpoints")
    assert three_body.main([*common, "--resume"]) == 0
    again = json.loads((copy / "metrics.json").read_text())
    for name in ("gnn", "egnn", "egnn_vel"):
        assert again["models"][name]["steps_this_session"] == 0
        assert again["models"][name]["test_mse"] == metrics["models"][name]["test_mse"]
    # --overwrite deletes the runs and trains again (same seed, same machine: same result).
    assert three_body.main([*common, "--overwrite", "--models", "linear,egnn"]) == 0
    third = json.loads((copy / "metrics.json").read_text())
    assert third["models"]["egnn"]["steps_this_session"] == 300
    assert third["models"]["egnn"]["test_mse"] == metrics["models"]["egnn"]["test_mse"]
    assert third["models"]["gnn"] == again["models"]["gnn"]  # other rows stay


def test_usage_errors_exit_2(tmp_path, capsys):
    for argv in (
        ["--resume", "--overwrite"],
        ["--dim", "4"],
        ["--models", "linear,transformer"],
        ["--iterations", "0"],
        ["--no-such-flag"],
    ):
        with pytest.raises(SystemExit) as info:
            three_body.main(["--quick", "--workdir", str(tmp_path), *argv])
        assert info.value.code == 2, argv
        assert "usage:" in capsys.readouterr().err


def test_resume_reproduces_uninterrupted_run(tmp_path, data_dir):
    cfg = dataclasses.replace(three_body.quick_config(), models=("linear", "egnn_vel"))
    run = lambda iters, where, **kw: three_body.train_and_evaluate(
        dataclasses.replace(cfg, iterations=iters), tmp_path / where, data_dir=data_dir, **kw
    )
    full = run(200, "a")
    run(100, "b")  # "interrupted" after 100 iterations, then resumed to 200
    resumed = run(200, "b", resume=True)
    r_full, r_res = full["models"]["egnn_vel"], resumed["models"]["egnn_vel"]
    assert r_res["resumed"] and r_res["steps_this_session"] == 100
    # Training time counts both sessions, this session's alone is beside it.
    assert r_res["train_seconds"] > r_res["train_seconds_this_session"] > 0
    assert r_res["test_mse"] == r_full["test_mse"]  # bitwise, same machine
    assert r_res["best_step"] == r_full["best_step"]
    strip = lambda hist: [{k: v for k, v in h.items() if k != "wall_time"} for h in hist]
    assert strip(resumed["histories"]["egnn_vel"]) == strip(full["histories"]["egnn_vel"])
    # A finished run is reloaded, not retrained.
    again = run(200, "b", resume=True)
    assert again["models"]["egnn_vel"]["steps_this_session"] == 0
    assert again["test_mse"] == resumed["test_mse"]


def test_divergence_stops_with_clear_message(tmp_path, data_dir):
    cfg = dataclasses.replace(
        three_body.quick_config(), models=("egnn_vel",), iterations=200, learning_rate=1e8
    )
    with jax.debug_nans(False), pytest.raises(TrainingDiverged, match="diverged") as info:
        three_body.train_and_evaluate(cfg, tmp_path, data_dir=data_dir)
    assert "egnn_vel" in str(info.value)
    assert not (tmp_path / "metrics.json").exists()
    # The run left only its resumable state (no best parameters yet): it is still known by
    # its fingerprint, so --resume continues it and other settings are named.
    with jax.debug_nans(False), pytest.raises(TrainingDiverged):
        three_body.train_and_evaluate(cfg, tmp_path, data_dir=data_dir, resume=True)
    other = dataclasses.replace(cfg, learning_rate=1e-3)
    with pytest.raises(FingerprintMismatchError, match=r"learning_rate: 100000000\.0 there"):
        three_body.train_and_evaluate(other, tmp_path, data_dir=data_dir, resume=True)


def test_config_validation():
    cfg = three_body.ThreeBodyExperimentConfig()
    with pytest.raises(ValueError, match="models"):
        dataclasses.replace(cfg, models=())
    with pytest.raises(ValueError, match="dim"):
        dataclasses.replace(cfg, dim=4)
    with pytest.raises(ValueError, match="n_train"):
        dataclasses.replace(cfg, n_trajectories=50)
    assert (cfg.n_train, cfg.n_valid, cfg.n_test) == (8000, 1000, 1000)
    assert (cfg.iterations, cfg.batch_size, cfg.steps_per_epoch) == (10_000, 100, 80)
    assert (cfg.hidden_features, cfg.num_layers, cfg.learning_rate) == (64, 4, 5e-4)
    assert dataclasses.replace(cfg, iterations=1234).eval_every == math.gcd(1234, 500)
    assert "iterations" not in cfg.fingerprint() and cfg.fingerprint()["train_seed"] == 0
