"""Charged-particle simulator: the EGNN/NRI protocol."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egnn_jax.sim import (
    ChargedConfig,
    charged_forces,
    charged_trajectory,
    sample_charged_initial_conditions,
    simulate_charged,
)


def _reference(loc, vel, charges, T, sample_freq, dt=0.001, max_f=100.0):
    """The reference (NRI ``ChargedParticlesSim.sample_trajectory``) loop, in NumPy float64."""
    loc, vel = loc.T.copy(), vel.T.copy()  # [dim, n]
    n = loc.shape[1]
    edges = np.outer(charges, charges)
    saved_x, saved_v = [], []

    def force(loc):
        diff = loc[:, :, None] - loc[:, None, :]  # [dim, i, j] = x_i - x_j
        dist3 = np.sum(diff**2, axis=0) ** 1.5
        np.fill_diagonal(dist3, 1.0)
        size = edges / dist3
        np.fill_diagonal(size, 0.0)
        return np.clip((size[None] * diff).sum(-1), -max_f, max_f)

    vel += dt * force(loc)
    for i in range(1, T):
        loc += dt * vel
        if i % sample_freq == 0:
            saved_x.append(loc.T.copy())
            saved_v.append(vel.T.copy())
        vel += dt * force(loc)
    assert n == charges.shape[0]
    return np.stack(saved_x), np.stack(saved_v)


def test_matches_reference_generator_loop():
    rng = np.random.default_rng(0)
    x0, q = rng.normal(size=(5, 3)), rng.choice([-1.0, 1.0], size=5)
    v0 = rng.normal(size=(5, 3))
    v0 *= 0.5 / np.linalg.norm(v0, axis=-1, keepdims=True)
    ref_x, ref_v = _reference(x0, v0, q, T=500, sample_freq=100)  # 4 frames
    with jax.enable_x64(True):
        x, v = charged_trajectory(x0, v0, q, n_frames=4, save_every=100)
    np.testing.assert_allclose(np.asarray(x), ref_x, rtol=0, atol=1e-11)
    np.testing.assert_allclose(np.asarray(v), ref_v, rtol=0, atol=1e-11)


def test_force_law_and_clipping():
    with jax.enable_x64(True):
        x = jnp.array([[0.0, 0.0], [2.0, 0.0], [0.0, 1e-3]])  # [M, dim]
        q = jnp.array([1.0, -1.0, 1.0])
        f = np.asarray(charged_forces(x, q))
    # particle 1 feels only the attractions/repulsions of 0 (at distance 2) and 2: by hand
    d10, d12 = np.array([2.0, 0.0]), np.array([2.0, -1e-3])
    want1 = -1 * d10 / 8 + -1 * d12 / np.linalg.norm(d12) ** 3
    np.testing.assert_allclose(f[1], want1, rtol=1e-12)
    assert f[0, 1] == -100.0 and f[2, 1] == 100.0  # 1e6-sized repulsion clipped per component


def test_initial_condition_statistics():
    keys = jax.random.split(jax.random.key(0), 4000)
    x, v, q = jax.vmap(
        lambda k: sample_charged_initial_conditions(k, 5, 3, 1.0, 0.5, 5.0, jnp.float32)
    )(keys)
    x, v, q = map(np.asarray, (x, v, q))
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 0.5, rtol=1e-5)
    assert set(np.unique(q)) == {-1.0, 1.0}
    assert abs(q.mean()) < 0.03  # p = 1/2 each; std of the mean ~ 0.007
    assert abs(x.std() - 1.0) < 0.02 and np.all(np.abs(x) <= 5.0)
    # random direction: mean velocity ~ 0
    assert np.max(np.abs(v.reshape(-1, 3).mean(0))) < 0.01


def test_box_reflection_at_start():
    with jax.enable_x64(True):
        # loc_std large enough that some coordinates start outside the box
        keys = jax.random.split(jax.random.key(1), 200)
        x, v, _ = jax.vmap(
            lambda k: sample_charged_initial_conditions(k, 5, 3, 4.0, 0.5, 5.0, jnp.float64)
        )(keys)
    assert np.all(np.abs(np.asarray(x)) <= 5.0)


def test_dataset_layout_time_convention_and_splits():
    cfg = ChargedConfig(n_trajectories=16, n_steps=500, seed=2)
    ds = simulate_charged(cfg)
    assert ds.x.shape == (16, 4, 5, 3) and ds.charges.shape == (16, 5) and ds.masses is None
    np.testing.assert_allclose(ds.t, [0.1, 0.2, 0.3, 0.4])  # frame k after 100(k+1) steps
    again = simulate_charged(cfg)
    np.testing.assert_array_equal(ds.x, again.x)
    test = simulate_charged(ChargedConfig(n_trajectories=16, n_steps=500, seed=2, split="test"))
    assert not np.allclose(ds.x[:, 0], test.x[:, 0])


def _constant_velocity_mse(train, test, i0=30, i1=40):
    x0, v0, y = (a.astype(np.float64) for a in (train.x[:, i0], train.v[:, i0], train.x[:, i1]))
    t_hat = np.sum(v0 * (y - x0)) / np.sum(v0 * v0)  # least-squares t on train
    x0, v0, y = (a.astype(np.float64) for a in (test.x[:, i0], test.v[:, i0], test.x[:, i1]))
    return float(np.mean((x0 + t_hat * v0 - y) ** 2)), float(t_hat)


def test_constant_velocity_baseline_small():
    common = dict(n_steps=4200, seed=11)  # frames 30 and 40 are all the baseline needs
    train = simulate_charged(ChargedConfig(n_trajectories=500, **common))
    test = simulate_charged(ChargedConfig(n_trajectories=400, split="test", **common))
    mse, t_hat = _constant_velocity_mse(train, test)
    assert 0.065 < mse < 0.105, mse
    assert 0.5 < t_hat < 1.0


@pytest.mark.slow
def test_constant_velocity_baseline_full_protocol(tmp_path):
    from egnn_jax.sim import charged_splits

    train, _, test = charged_splits(tmp_path, n_train=3000, progress=False)
    mse, _ = _constant_velocity_mse(train, test)
    assert abs(mse - 0.084) < 0.004, mse


def _reference_generator(rng, n_sims, T, sample_freq, box_size, n=5, dim=3):
    """The reference ``generate_dataset.py`` / ``sample_trajectory`` draws, in their order, for
    ``n_sims`` trajectories from the NumPy legacy stream ``rng``.

    Returns positions ``[N, T', n, dim]`` and the number of coordinates reflected at the start.
    """
    out, reflected = [], 0
    for _ in range(n_sims):
        charges = rng.choice(np.array([-1.0, 0.0, 1.0]), size=(n, 1), p=[0.5, 0.0, 0.5])
        loc = rng.randn(dim, n) * 1.0
        vel = rng.randn(dim, n)
        vel = vel * 0.5 / np.sqrt((vel**2).sum(axis=0)).reshape(1, -1)
        over = loc > box_size  # the in-place `_clamp`
        loc[over], vel[over] = 2 * box_size - loc[over], -np.abs(vel[over])
        under = loc < -box_size
        loc[under], vel[under] = -2 * box_size - loc[under], np.abs(vel[under])
        reflected += int(over.sum() + under.sum())
        x, _ = _reference(loc.T, vel.T, charges[:, 0], T, sample_freq)
        t_save = T // sample_freq - 1
        rng.randn(t_save, dim, n)  # observation noise (scaled by 0) still advances the stream
        rng.randn(t_save, dim, n)
        out.append(x)
    return np.stack(out), reflected


def test_numpy_legacy_sampler_regenerates_the_reference_stream():
    # One legacy stream runs through train (3), valid (2), test (2); a small box exercises the
    # reflection at the start.
    rng = np.random.RandomState(43)
    want = {
        s: _reference_generator(rng, k, 500, 100, 2.0)
        for s, k in (("train", 3), ("valid", 2), ("test", 2))
    }
    assert sum(r for _, r in want.values()) > 0  # the reflection is exercised
    for split, (ref_x, _) in want.items():
        cfg = ChargedConfig(
            n_trajectories=len(ref_x),
            n_steps=500,
            box_size=2.0,
            split=split,
            seed=43,
            sampler="numpy-legacy",
            legacy_split_sizes=(3, 2),
        )
        ds = simulate_charged(cfg)
        np.testing.assert_allclose(ds.x, ref_x, rtol=0, atol=1e-5, err_msg=split)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dim": 1},
        {"n_trajectories": -1},
        {"split": "dev"},
        {"sampler": "torch"},
        {"legacy_split_sizes": (10, -1)},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        ChargedConfig(**kwargs)


def test_trajectory_validation():
    with pytest.raises(ValueError):
        charged_trajectory(np.zeros((5, 3)), np.zeros((5, 3)), np.ones(4))
