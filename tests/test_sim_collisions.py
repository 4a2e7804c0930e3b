"""Hard spheres in a box: exact contact times, no overlap, energy and momentum conserved."""

from __future__ import annotations

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cli import run_module

from egnn_jax import sim


def _reference_billiards(x, v, masses, radius, box, ts):
    """Event-driven hard-sphere billiards written out in NumPy, one contact at a time."""
    x, v = x.astype(np.float64).copy(), v.astype(np.float64).copy()
    limit = box - radius
    pairs = list(itertools.combinations(range(len(x)), 2))
    t, frames_x, frames_v = 0.0, [], []
    for t_frame in ts:
        while True:
            best, what = np.inf, None
            for i, j in pairs:
                dx, dv = x[i] - x[j], v[i] - v[j]
                a, b, c = dv @ dv, dx @ dv, dx @ dx - 4 * radius**2
                if b < 0 and b * b - a * c > 0:
                    tau = max((-b - np.sqrt(b * b - a * c)) / a, 0.0)
                    if tau < best:
                        best, what = tau, ("pair", i, j)
            for i, d in itertools.product(range(len(x)), range(x.shape[1])):
                if v[i, d] != 0:
                    tau = max(((limit if v[i, d] > 0 else -limit) - x[i, d]) / v[i, d], 0.0)
                    if tau < best:
                        best, what = tau, ("wall", i, d)
            if t + best >= t_frame:
                break
            x, t = x + v * best, t + best
            if what[0] == "pair":
                _, i, j = what
                n = (x[i] - x[j]) / np.linalg.norm(x[i] - x[j])
                u = (v[i] - v[j]) @ n
                v[i] -= 2 * masses[j] / (masses[i] + masses[j]) * u * n
                v[j] += 2 * masses[i] / (masses[i] + masses[j]) * u * n
            else:
                v[what[1], what[2]] *= -1
        x, t = x + v * (t_frame - t), t_frame
        frames_x.append(x.copy())
        frames_v.append(v.copy())
    return np.stack(frames_x), np.stack(frames_v)


def _gaps(x, radius, box):
    """Smallest body-body gap and smallest wall clearance over ``x [..., M, dim]``."""
    pair = min(
        np.min(np.linalg.norm(x[..., i, :] - x[..., j, :], axis=-1)) - 2 * radius
        for i, j in itertools.combinations(range(x.shape[-2]), 2)
    )
    return pair, np.min((box - radius) - np.abs(x))


def _initial(key, cfg):
    with jax.enable_x64(True):
        x0, v0, placed = sim.sample_collisions_initial_conditions(
            key, cfg.n_bodies, cfg.dim, cfg.radius, cfg.box, cfg.speed_std, cfg.placement_tries
        )
        return np.asarray(x0), np.asarray(v0), bool(placed)


@pytest.mark.parametrize("dim", [2, 3])
def test_billiards_match_an_event_by_event_reference(dim):
    cfg = sim.CollisionsConfig(n_bodies=3, dim=dim, t_end=3.0, n_saved=31, radius=0.15)
    for seed in range(3):
        x0, v0, placed = _initial(jax.random.key(seed), cfg)
        assert placed
        with jax.enable_x64(True):
            out = sim.collisions_trajectory(
                x0, v0, np.ones(3), cfg.radius, cfg.box, cfg.t_end, n_saved=cfg.n_saved
            )
        xs, vs = _reference_billiards(x0, v0, np.ones(3), cfg.radius, cfg.box, cfg.ts)
        assert out["x"].dtype == jnp.float64 and not bool(out["overflow"])
        assert int(out["n_pair_contacts"]) + int(out["n_wall_contacts"]) > 0
        np.testing.assert_allclose(out["x"], xs, atol=1e-9)
        np.testing.assert_allclose(out["v"], vs, atol=1e-9)


def test_default_dataset_collides_often_without_overlap_and_conserves_energy():
    cfg = sim.CollisionsConfig(n_trajectories=200, chunk_size=100)
    ds = sim.simulate_collisions(cfg)
    assert ds.x.shape == (200, 500, 3, 2) and ds.v.shape == ds.x.shape
    assert ds.masses.shape == (200, 3) and float(ds.radius) == 0.1 and float(ds.box) == 1.0
    np.testing.assert_allclose(ds.t, np.linspace(0, 5, 500))
    meta = ds.metadata
    # Several contacts of both kinds in a typical trajectory (the requirement).
    assert meta["total_pair_contacts"] / 200 > 2.5 and meta["median_pair_contacts"] >= 2
    assert meta["median_wall_contacts"] >= 10
    assert meta["max_rel_energy_error"] <= 1e-8
    assert meta["G"] == 0.0 and meta["softening"] == cfg.softening
    pair_gap, wall_gap = _gaps(ds.x.astype(np.float64), cfg.radius, cfg.box)
    assert pair_gap > -1e-6 and wall_gap > -1e-6  # float32 storage of exact contacts
    speed2 = np.sum(ds.v.astype(np.float64) ** 2, axis=(-1, -2))
    np.testing.assert_allclose(speed2, speed2[:, :1] * np.ones_like(speed2), rtol=1e-6)


def test_body_body_contacts_conserve_momentum():
    # Far walls: only the bodies meet (head-on and glancing), so momentum is conserved.
    with jax.enable_x64(True):
        x0 = np.array([[-1.0, 0.0], [1.0, 0.05], [0.0, 1.0]])
        v0 = np.array([[1.0, 0.0], [-1.0, 0.0], [0.1, -0.9]])
        masses = np.array([1.0, 2.0, 0.5])
        out = sim.collisions_trajectory(x0, v0, masses, 0.2, 100.0, 3.0, n_saved=61)
    assert int(out["n_pair_contacts"]) >= 2 and int(out["n_wall_contacts"]) == 0
    momentum = np.einsum("m,tmd->td", masses, np.asarray(out["v"]))
    np.testing.assert_allclose(momentum, np.broadcast_to(momentum[0], momentum.shape), atol=1e-12)
    assert float(out["rel_energy_error"]) < 1e-13
    assert _gaps(np.asarray(out["x"]), 0.2, 100.0)[0] > -1e-12


def test_gravity_keeps_energy_and_resolves_contacts_inside_the_step():
    cfg = sim.CollisionsConfig(
        n_trajectories=16, forces="gravity", t_end=2.0, n_saved=101, chunk_size=16
    )
    ds = sim.simulate_collisions(cfg)
    meta = ds.metadata
    assert meta["G"] == 1.0 and meta["max_rel_energy_error"] <= cfg.energy_tol
    assert meta["total_pair_contacts"] > 0 and meta["total_wall_contacts"] > 0
    pair_gap, wall_gap = _gaps(ds.x.astype(np.float64), cfg.radius, cfg.box)
    assert pair_gap > -1e-6 and wall_gap > -1e-6


def test_gravity_is_fourth_order_between_contacts():
    # Two bodies orbiting far from the walls and from each other: the triple-jump leapfrog's
    # energy error falls ~16x when the step halves.
    with jax.enable_x64(True):
        x0 = np.array([[-0.5, 0.0], [0.5, 0.0]])
        v0 = np.array([[0.0, -0.6], [0.0, 0.6]])
        errs = [
            float(
                sim.collisions_trajectory(
                    x0,
                    v0,
                    np.ones(2),
                    0.05,
                    10.0,
                    4.0,
                    n_saved=11,
                    forces="gravity",
                    substeps=s,
                )["rel_energy_error"]
            )
            for s in (4, 8)
        ]
    assert errs[0] / errs[1] > 10


def test_public_trajectory_reproduces_dataset_rows_and_chunking_does_not_matter():
    cfg = sim.CollisionsConfig(n_trajectories=6, t_end=2.0, n_saved=21, chunk_size=4, seed=5)
    ds = sim.simulate_collisions(cfg)
    whole = sim.simulate_collisions(cfg.__class__(**{**cfg.__dict__, "chunk_size": 6}))
    np.testing.assert_array_equal(ds.x, whole.x)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(5), 3), 0)
    x0, v0, _ = _initial(key, cfg)
    with jax.enable_x64(True):
        out = sim.collisions_trajectory(x0, v0, np.ones(3), 0.1, 1.0, 2.0, n_saved=21)
    np.testing.assert_allclose(ds.x[3], out["x"], atol=1e-6)


@pytest.mark.slow  # over 10 s; `make test-slow`
def test_overflowing_contact_budget_is_refined_not_truncated():
    # ~13 contacts in 4 time units: a budget of 8 overflows often, its refinement (32) never.
    cfg = sim.CollisionsConfig(n_trajectories=32, t_end=4.0, n_saved=41, max_events=8)
    ds = sim.simulate_collisions(cfg)
    wide = sim.simulate_collisions(cfg.__class__(**{**cfg.__dict__, "max_events": 128}))
    assert ds.metadata["n_refined"] > 0 and wide.metadata["n_refined"] == 0
    assert ds.metadata["n_redrawn"] == 0
    np.testing.assert_array_equal(ds.x, wide.x)


def test_trajectory_is_differentiable_and_vmaps():
    cfg = sim.CollisionsConfig(t_end=1.0, n_saved=11)
    x0, v0, _ = _initial(jax.random.key(1), cfg)
    with jax.enable_x64(True):

        def final_x(v):
            return sim.collisions_trajectory(x0, v, np.ones(3), 0.1, 1.0, 1.0, n_saved=11)["x"][-1]

        jac = jax.jacfwd(final_x)(jnp.asarray(v0))
        eps = 1e-6
        dv = np.zeros_like(v0)
        dv[0, 0] = eps
        fd = (np.asarray(final_x(v0 + dv)) - np.asarray(final_x(v0 - dv))) / (2 * eps)
        np.testing.assert_allclose(jac[:, :, 0, 0], fd, atol=1e-5)
        batch = jax.vmap(
            lambda x, v: sim.collisions_trajectory(x, v, jnp.ones(3), 0.1, 1.0, 1.0, n_saved=11)[
                "x"
            ]
        )(jnp.stack([x0, x0]), jnp.stack([v0, -v0]))
    assert batch.shape == (2, 11, 3, 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"radius": 1.5}, "smaller than box"),
        ({"n_bodies": 40, "radius": 0.3}, "packing"),
        ({"forces": "springs"}, "forces"),
        ({"dim": 4}, "dim"),
    ],
)
def test_bad_configs_fail_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sim.CollisionsConfig(**kwargs)


def test_command_line_writes_the_contract(tmp_path):
    out = tmp_path / "c.npz"
    proc = run_module(
        "egnn_jax.sim",
        "collisions",
        "--n",
        8,
        "--seed",
        2,
        "--out",
        out,
        "--t-end",
        2,
        "--n-saved",
        21,
        "--bodies",
        4,
        "--radius",
        0.08,
        "--box",
        1.5,
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as f:
        assert f["x"].shape == (8, 21, 4, 2) and f["v"].shape == (8, 21, 4, 2)
        assert f["t"].shape == (21,) and f["masses"].shape == (8, 4)
        assert float(f["radius"]) == pytest.approx(0.08) and float(f["box"]) == 1.5
        meta = json.loads(str(f["metadata_json"]))
    assert meta["kind"] == "collisions" and "G" in meta and "softening" in meta
    assert sim.load_dataset(out).radius is not None
    bad = run_module("egnn_jax.sim", "collisions", "--n", 2, "--out", out, "--radius", 3)
    assert bad.returncode == 2 and "smaller than box" in bad.stderr
