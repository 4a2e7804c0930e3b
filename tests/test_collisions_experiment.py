"""The collisions experiment end to end (--quick), its --evaluate contract, and the contact-
aware step model's symmetry: the box's group, not E(n)."""

from __future__ import annotations

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cli import run_main, run_quick

import egnn_jax
from egnn_jax import dynamics as dyn
from egnn_jax import sim
from egnn_jax.dynamics._contact import _pair_geometry
from egnn_jax.experiments import collisions

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# The fast suite leaves out `contact_step_log` (the contact step with another loss);
# `make test-slow` runs every model.
FAST_MODELS = ("linear", "naive_egnn", "contact_step", "contact_projected")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("collisions")
    return run_quick(collisions, workdir, tmp_path_factory.mktemp("collisions_data"), FAST_MODELS)


def test_quick_run_scores_every_model(quick_run):
    _check_quick_run(*quick_run, FAST_MODELS)


@pytest.mark.slow  # every model
def test_quick_run_of_every_model(tmp_path):
    run = run_quick(collisions, tmp_path / "w", tmp_path / "data")
    _check_quick_run(*run, collisions.MODEL_NAMES)


def _check_quick_run(workdir, metrics, models):
    cfg = collisions.quick_config()
    assert list(metrics["config"]["models"]) == list(models)
    command = metrics["data"]["simulator_command"]
    assert command.startswith("python -m egnn_jax.sim collisions --n 96 --seed 0")
    assert "--n-saved 41" in command and f"--t-end {cfg.t_end!r}" in command
    for name, row in metrics["models"].items():
        assert len(row["test_mse_curve"]) == cfg.n_saved, name
        assert row["test_mse_curve"][0] == pytest.approx(0.0, abs=1e-12), name
        assert 0.0 <= row["test_violation_fraction"] <= 1.0
        assert (row["test_energy_curve"] is not None) == (name != "naive_egnn"), name
    # Constant velocity runs through the walls: most of its frames end outside the box.
    assert metrics["models"]["linear"]["test_violation_fraction"] > 0.2
    # The projection (one pass over the pairs, then a clip into the box) removes nearly every
    # overlap and escape; a third body pushed into its neighbour can keep a rare one.
    assert metrics["models"]["contact_projected"]["test_violation_fraction"] < 1e-3
    for png in ("mse_vs_time.png", "trajectories.png", "loss_curves.png"):
        data = (workdir / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, png
    table = collisions.EXPERIMENT.format_table(metrics)
    assert table.splitlines()[0].startswith("| model | final-time MSE |")


def test_evaluate_prints_the_rollout_contract(quick_run, tmp_path):
    workdir, _ = quick_run
    cfg = collisions.quick_config()
    path = tmp_path / "eval.npz"
    run_main(
        "egnn_jax.sim.__main__",
        "collisions",
        *("--n", 4, "--seed", 7, "--t-end", repr(cfg.t_end), "--n-saved", cfg.n_saved),
        *("--no-progress", "--out", path),
        check=True,
    )
    proc = run_main("egnn_jax.experiments.collisions", "--workdir", workdir, "--evaluate", path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["t"]) == cfg.n_saved
    assert set(out["models"]) == set(FAST_MODELS)  # every model of the workdir
    for row in out["models"].values():
        assert len(row["mse"]) == cfg.n_saved and row["mse"][0] == pytest.approx(0.0, abs=1e-12)
    wrong = tmp_path / "wrong.npz"
    run_main(
        "egnn_jax.sim.__main__",
        "collisions",
        *("--n", 2, "--t-end", repr(cfg.t_end), "--n-saved", cfg.n_saved, "--radius", 0.05),
        *("--no-progress", "--out", wrong),
        check=True,
    )
    bad = run_main("egnn_jax.experiments.collisions", "--workdir", workdir, "--evaluate", wrong)
    assert bad.returncode != 0 and "radius and box" in bad.stderr


def _box_symmetries(dim):
    """Every element of the box's group: an axis permutation times sign flips."""
    for perm in itertools.permutations(range(dim)):
        for signs in itertools.product((1.0, -1.0), repeat=dim):
            yield np.eye(dim)[list(perm)] * np.asarray(signs)[:, None]


def _trained_like_params(config, state, radius, box, dt):
    # Random (not zero) output weights: an untrained model is free flight, trivially symmetric.
    params = dyn.contact_step_init(jax.random.key(0), config, state, radius=radius, box=box, dt=dt)
    return jax.tree.map(
        lambda p: p + 0.3 * jax.random.normal(jax.random.key(p.size), p.shape, p.dtype), params
    )


@pytest.mark.parametrize("dim", [2, 3])
def test_contact_step_is_equivariant_to_the_box_group_not_to_rotations(dim):
    with jax.enable_x64(True):
        config = egnn_jax.EGNNConfig(hidden_features=16, num_layers=2)
        radius, box, dt = 0.1, 1.0, 0.01
        key = jax.random.key(dim)
        x = jax.random.uniform(key, (3, dim), jnp.float64, -0.85, 0.85)
        x = x.at[1].set(x[0] + 0.21 * jnp.eye(dim)[0])  # two bodies about to touch
        x = x.at[2, 0].set(0.895)  # one at a wall
        v = jax.random.normal(jax.random.fold_in(key, 1), (3, dim), jnp.float64)
        h = jnp.array([[1.0], [2.0], [0.5]])
        state = dyn.State(x, v, h)
        params = _trained_like_params(config, state, radius, box, dt)
        step = lambda s: dyn.contact_step(params, config, s, radius=radius, box=box, dt=dt)
        out = step(state)
        assert float(jnp.max(jnp.abs(out.x - (x + dt * v)))) > 1e-4  # not free flight
        perm = np.array([2, 0, 1])
        for g in _box_symmetries(dim):
            g = jnp.asarray(g)
            moved = step(dyn.State(x[perm] @ g.T, v[perm] @ g.T, h[perm]))
            np.testing.assert_allclose(moved.x, out.x[perm] @ g.T, atol=1e-12)
            np.testing.assert_allclose(moved.v, out.v[perm] @ g.T, atol=1e-12)
        # A generic rotation moves the walls relative to the bodies: not a symmetry. Full
        # E(n) equivariance is the wrong test with walls.
        angle = 0.3
        rot = np.eye(dim)
        rot[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
        rot = jnp.asarray(rot)
        rotated = step(dyn.State(x @ rot.T, v @ rot.T, h))
        assert float(jnp.max(jnp.abs(rotated.x - out.x @ rot.T))) > 1e-6


def test_mirror_images_turn_a_wall_bounce_into_a_collision():
    x = jnp.array([[0.9, 0.2]])
    v = jnp.array([[1.0, -0.5]])
    xi, vi = dyn.mirror_images(x, v, 1.0)
    assert xi.shape == (1, 4, 2)
    np.testing.assert_allclose(xi[0, 1], [1.1, 0.2])  # across x = +1
    np.testing.assert_allclose(vi[0, 1], [-1.0, -0.5])
    np.testing.assert_allclose(xi[0, 2], [0.9, -2.2])  # across y = -1
    # Body and image touch exactly when the body touches the wall (gap 2 (L - r - x) = 0).
    assert float(jnp.linalg.norm(xi[0, 1] - x[0])) == pytest.approx(2 * 0.1)


def test_the_exact_collision_rule_is_in_the_model_family():
    """a = -1 (equal masses) where the contact falls within the step and c = a f: the update
    is the simulator's exact elastic bounce, for an oblique contact and a wall (its image)."""
    radius, box, dt = 0.1, 1.0, 0.01
    with jax.enable_x64(True):
        x0 = np.array([[-0.3, 0.0], [-0.0955, 0.03], [0.5, 0.895]])
        v0 = np.array([[1.0, 0.2], [-1.0, 0.0], [0.1, 0.8]])
        out = sim.collisions_trajectory(x0, v0, np.ones(3), radius, box, dt, n_saved=2)
        assert int(out["n_pair_contacts"]) == 1 and int(out["n_wall_contacts"]) == 1
        state = dyn.State(jnp.asarray(x0), jnp.asarray(v0), jnp.ones((3, 1)))
        features, normal, rel_v, approach = _pair_geometry(state, radius, box, dt)
        after, hits = features[..., 3], features[..., 4]
        a = -hits
        c = a * after
        dv = jnp.sum((a * approach)[..., None] * normal, axis=1)
        dx = jnp.sum((c * approach * dt)[..., None] * normal, axis=1)
        assert dv.dtype == jnp.float64 and float(jnp.sum(hits)) == 3  # a pair (twice), a wall
        np.testing.assert_allclose(v0 + np.asarray(dv), out["v"][1], atol=1e-12)
        np.testing.assert_allclose(x0 + dt * v0 + np.asarray(dx), out["x"][1], atol=1e-12)
