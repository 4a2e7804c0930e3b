"""The N-body 5/20/50/100 simulator: the GMN / HEGNN generator's protocol, any number of bodies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cli import run_module

from egnn_jax import sim
from egnn_jax.sim._nbody import _initial_conditions


def _reference_loop(x, v, q, n_steps, save_every, dt=0.001, max_force=100.0):
    """The generator's loop written out in NumPy: `simulate_one_step` (forces from the current
    positions, then v += F dt, x += v dt for every body), saving when t % save_every == 0 after
    step t + 1."""
    x, v = x.copy(), v.copy()
    frames_x, frames_v = [], []
    for t in range(n_steps):
        d = x[:, None, :] - x[None, :, :]
        r2 = (d**2).sum(-1)
        np.fill_diagonal(r2, np.inf)
        f = (q[:, None] * q[None, :] / r2**1.5)[..., None] * d
        force = np.clip(f.sum(1), -max_force, max_force)
        v = v + force * dt
        x = x + v * dt
        if t % save_every == 0:
            frames_x.append(x.copy())
            frames_v.append(v.copy())
    return np.stack(frames_x), np.stack(frames_v)


@pytest.mark.parametrize("bodies", [5, 15])
def test_matches_the_reference_generator_loop(bodies):
    cfg = sim.NBodyConfig(n_trajectories=2, n_bodies=bodies, n_steps=301, split="valid", seed=3)
    ds = sim.simulate_nbody(cfg)
    assert ds.x.shape == (2, 4, bodies, 3) and ds.charges.shape == (2, bodies)
    np.testing.assert_allclose(ds.t, [0.001, 0.101, 0.201, 0.301])
    stream = jax.random.fold_in(jax.random.key(3), 1)  # the valid split
    with jax.enable_x64(True):
        for i in range(2):
            x0, v0, q = (
                np.asarray(a)
                for a in _initial_conditions(
                    jax.random.fold_in(stream, i), bodies, 3, cfg.loc_std, 0.5, jnp.float64
                )
            )
            np.testing.assert_allclose(np.linalg.norm(v0, axis=-1), 0.5)
            assert set(np.unique(q)) <= {-1.0, 1.0}
            xs, vs = _reference_loop(x0, v0, q, 301, 100)
            np.testing.assert_array_equal(ds.charges[i], q.astype(np.float32))
            np.testing.assert_allclose(ds.x[i], xs, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(ds.v[i], vs, rtol=1e-5, atol=1e-5)


def test_pairwise_forces_equal_the_unrolled_pair_loop():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (15, 3, 4), jnp.float64)
        q = jnp.sign(jax.random.normal(jax.random.key(1), (15, 4)))
        np.testing.assert_allclose(
            sim.nbody_forces(x, q), sim.charged_forces(x, q), rtol=1e-12, atol=1e-12
        )


def test_scale_grows_with_the_number_of_bodies_and_splits_are_independent():
    assert sim.NBodyConfig(n_bodies=5).loc_std == pytest.approx(1.1)
    assert sim.NBodyConfig(n_bodies=100).loc_std == pytest.approx(20 ** (1 / 3) + 0.1)
    kept = dict(n_trajectories=200, n_bodies=20, n_steps=101, frames=(0,), precision="float32")
    train = sim.simulate_nbody(sim.NBodyConfig(**kept))
    again = sim.simulate_nbody(sim.NBodyConfig(**kept))
    test = sim.simulate_nbody(sim.NBodyConfig(**kept, split="test"))
    np.testing.assert_array_equal(train.x, again.x)
    assert not np.allclose(train.x, test.x)
    # Frame 0 is one step after the draw: the spread is the initial scale.
    assert train.x.std() == pytest.approx(sim.NBodyConfig(n_bodies=20).loc_std, rel=0.05)


@pytest.mark.parametrize("bodies", [5, 15])  # the unrolled and the pairwise force paths
def test_kept_frames_have_the_bits_of_a_run_through_every_frame(bodies):
    # The simulator stops at the last kept frame (frame 40 of 50 in the benchmark); the data
    # must not depend on that, or cached and shipped splits would stop matching.
    every = dict(n_trajectories=3, n_bodies=bodies, n_steps=501, save_every=50, seed=5)
    full = sim.simulate_nbody(sim.NBodyConfig(**every))
    kept = sim.simulate_nbody(sim.NBodyConfig(**every, frames=(2, 6)))
    assert full.x.shape[1] == 11 and kept.x.shape[1] == 2
    np.testing.assert_array_equal(kept.x, full.x[:, [2, 6]])
    np.testing.assert_array_equal(kept.v, full.v[:, [2, 6]])
    np.testing.assert_array_equal(kept.t, full.t[[2, 6]])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="n_bodies"):
        sim.NBodyConfig(n_bodies=1)
    with pytest.raises(ValueError, match="frames"):
        sim.NBodyConfig(frames=(30, 50))
    with pytest.raises(ValueError, match="split"):
        sim.NBodyConfig(split="dev")


def test_command_line_writes_the_kept_frames(tmp_path):
    out = tmp_path / "nb.npz"
    argv = ["nbody", "--bodies", "7", "--n", "3", "--frames", "30,40", "--out", str(out)]
    result = run_module("egnn_jax.sim", *argv, "--no-progress")
    assert result.returncode == 0, result.stderr
    ds = sim.load_dataset(out)
    assert ds.x.shape == ds.v.shape == (3, 2, 7, 3)
    np.testing.assert_allclose(ds.t, [3.001, 4.001])
    assert ds.metadata["kind"] == "nbody" and ds.metadata["config"]["n_bodies"] == 7
    bad = run_module("egnn_jax.sim", "nbody", "--frames", "30,50", "--out", str(out))
    assert bad.returncode == 2 and "frames" in bad.stderr
