"""Three-body simulator: conservation laws, convergence order, reproducibility, validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egnn_jax.sim import (
    ThreeBodyConfig,
    gravity_energy,
    sample_three_body_initial_conditions,
    simulate_three_body,
    three_body_trajectory,
)
from egnn_jax.sim._three_body import _momenta


@pytest.fixture(scope="module")
def small_dataset():
    return simulate_three_body(ThreeBodyConfig(n_trajectories=64, seed=3))


def _kepler(t, e=0.5, a=1.0, m=(1.0, 1.0), G=1.0):
    """Analytic two-body orbit, pericentre on +x at t=0; returns x [len(t), 2, 2]."""
    mtot = m[0] + m[1]
    n = np.sqrt(G * mtot / a**3)
    mean = n * np.asarray(t)
    ecc = mean.copy()
    for _ in range(50):  # Newton on Kepler's equation E - e sin E = M
        ecc = ecc - (ecc - e * np.sin(ecc) - mean) / (1 - e * np.cos(ecc))
    rel = np.stack([a * (np.cos(ecc) - e), a * np.sqrt(1 - e**2) * np.sin(ecc)], -1)
    return np.stack([-m[1] / mtot * rel, m[0] / mtot * rel], axis=1)


def _kepler_ic(e=0.5, a=1.0, m=(1.0, 1.0), G=1.0):
    mtot = m[0] + m[1]
    n = np.sqrt(G * mtot / a**3)
    rel_x = np.array([a * (1 - e), 0.0])
    rel_v = np.array([0.0, a * np.sqrt(1 - e**2) * n / (1 - e)])
    x0 = np.stack([-m[1] / mtot * rel_x, m[0] / mtot * rel_x])
    v0 = np.stack([-m[1] / mtot * rel_v, m[0] / mtot * rel_v])
    return x0, v0


def test_kepler_convergence_order_yoshida6():
    x0, v0 = _kepler_ic()
    period = 2 * np.pi / np.sqrt(2.0)
    with jax.enable_x64(True):
        ts = jnp.linspace(0.0, period, 11)
        errors = []
        for sub in (4, 8, 16):
            x, _ = three_body_trajectory(
                x0, v0, jnp.ones(2), ts, softening=0.0, method="yoshida6", substeps=sub
            )
            errors.append(np.max(np.abs(np.asarray(x) - _kepler(np.asarray(ts)))))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all((orders > 5.3) & (orders < 6.8)), (errors, orders)


def test_kepler_adaptive_dopri8_matches_analytic():
    x0, v0 = _kepler_ic(e=0.9)  # strong pericentre passage: needs adaptive steps
    with jax.enable_x64(True):
        ts = jnp.linspace(0.0, 3.0, 31)
        x, _ = three_body_trajectory(
            x0, v0, jnp.ones(2), ts, softening=0.0, method="dopri8", rtol=1e-12, atol=1e-12
        )
    assert np.max(np.abs(np.asarray(x) - _kepler(np.asarray(ts), e=0.9))) < 1e-8


@pytest.mark.parametrize("dim", [2, 3])
def test_conservation_float64(dim):
    with jax.enable_x64(True):
        masses = jnp.array([1.0, 2.0, 0.5])
        x0, v0 = sample_three_body_initial_conditions(
            jax.random.key(7), masses, dim, 1.0, 0.0, 1.0, (0.3, 0.5)
        )
        ts = jnp.linspace(0.0, 2.0, 101)
        x, v = three_body_trajectory(x0, v0, masses, ts, softening=0.0, method="dopri8")
        xs, vs = jnp.moveaxis(x, 0, -1), jnp.moveaxis(v, 0, -1)  # [M, dim, T]
        m = masses[:, None]
        energy = np.asarray(gravity_energy(xs, vs, m, 1.0, 0.0))
        p, ang = map(np.asarray, _momenta(xs, vs, m))
    assert energy[0] < 0  # bound by construction
    assert np.max(np.abs(energy - energy[0])) / abs(energy[0]) < 1e-8
    assert np.max(np.abs(p)) < 1e-10  # zero total momentum, conserved
    assert np.max(np.abs(ang - ang[..., :1])) < 1e-8
    assert np.ptp(np.asarray(x)[:, 0]) > 0.1  # bodies actually moved


def test_dataset_shapes_frame_and_energy(small_dataset):
    ds = small_dataset
    assert ds.x.shape == (64, 500, 3, 2) and ds.v.shape == ds.x.shape
    assert ds.masses.shape == (64, 3) and ds.charges is None
    np.testing.assert_allclose(ds.t, np.linspace(0, 2.0, 500))
    com = np.sum(ds.masses[:, None, :, None] * ds.x, axis=2) / 3.0
    assert np.max(np.abs(com)) < 1e-4  # centre-of-mass frame (float32 storage)
    assert np.max(np.abs(np.sum(ds.masses[:, None, :, None] * ds.v, axis=2))) < 1e-4
    assert np.all(ds.rel_energy_error <= 1e-5)  # nothing above tolerance kept
    assert ds.metadata["median_rel_energy_error"] < 1e-6
    assert ds.metadata["n_rejected"] == 0  # softened, bound: refinement always suffices here
    with jax.enable_x64(True):
        xs = jnp.asarray(np.moveaxis(ds.x[:, 0], 0, -1), jnp.float64)
        vs = jnp.asarray(np.moveaxis(ds.v[:, 0], 0, -1), jnp.float64)
        e0 = gravity_energy(xs, vs, jnp.asarray(ds.masses.T, jnp.float64), 1.0, 0.1)
    assert np.all(np.asarray(e0) < 0)  # bound systems


def test_same_key_identical_and_seed_changes(small_dataset):
    again = simulate_three_body(ThreeBodyConfig(n_trajectories=64, seed=3))
    np.testing.assert_array_equal(again.x, small_dataset.x)
    np.testing.assert_array_equal(again.v, small_dataset.v)
    other = simulate_three_body(ThreeBodyConfig(n_trajectories=64, seed=4))
    assert not np.allclose(other.x[:, 0], small_dataset.x[:, 0])


@pytest.mark.slow  # over 10 s; `make test-slow`
def test_inaccurate_trajectories_refined_not_kept():
    # A tolerance far below what the base step achieves forces per-trajectory refinement.
    cfg = ThreeBodyConfig(n_trajectories=16, n_saved=100, energy_tol=1e-9)
    ds = simulate_three_body(cfg)
    assert ds.metadata["n_refined"] > 0
    assert np.all(ds.rel_energy_error <= cfg.energy_tol)
    assert np.all(np.isfinite(ds.x))


def test_trajectory_defaults_reproduce_the_dataset(small_dataset):
    """`three_body_trajectory` with its defaults integrates exactly as the dataset does."""
    ds, cfg = small_dataset, ThreeBodyConfig(n_trajectories=64, seed=3)
    with jax.enable_x64(True):
        masses = jnp.asarray(ds.masses, jnp.float64)
        # The float64 initial conditions of each trajectory's first draw (the stored arrays
        # are rounded to float32, which a chaotic system would amplify).
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(cfg.seed), i))(jnp.arange(64))
        x0, v0 = jax.vmap(
            lambda k, m: sample_three_body_initial_conditions(
                jax.random.fold_in(k, 0), m, 2, 1.0, 0.1, 1.0, (0.1, 0.6)
            )
        )(keys, masses)
        ts = jnp.asarray(cfg.ts)
        x, v = jax.vmap(lambda a, b, c: three_body_trajectory(a, b, c, ts))(x0, v0, masses)
        xs, vs = (jnp.moveaxis(a, (0, 1), (-1, -2)) for a in (x, v))  # [M, dim, T, N]
        energy = np.asarray(gravity_energy(xs, vs, masses.T[:, None], 1.0, 0.1))
    rel_err = np.max(np.abs(energy - energy[:1]), axis=0) / np.abs(energy[0])
    plain = rel_err <= ThreeBodyConfig().energy_tol  # the dataset refined the others
    assert plain.sum() >= 48, plain.sum()
    np.testing.assert_allclose(np.asarray(x)[plain], ds.x[plain], rtol=0, atol=2e-5)
    np.testing.assert_allclose(np.asarray(v)[plain], ds.v[plain], rtol=0, atol=2e-5)


@pytest.mark.slow  # over 10 s; `make test-slow`
def test_rejected_trajectories_are_redrawn_and_counted():
    # Refinement by a factor 1 cannot help, so every inaccurate draw is rejected and redrawn.
    cfg = ThreeBodyConfig(n_trajectories=32, n_saved=100, energy_tol=2e-8, refine_factor=1)
    ds = simulate_three_body(cfg)
    assert ds.metadata["n_rejected"] > 0
    assert np.all(ds.rel_energy_error <= cfg.energy_tol)
    first = simulate_three_body(dataclasses.replace(cfg, energy_tol=1.0))  # nothing rejected
    assert first.metadata["n_rejected"] == 0
    redrawn = np.any(ds.x[:, 0] != first.x[:, 0], axis=(1, 2))
    assert redrawn.sum() == len(np.unique(np.flatnonzero(redrawn)))  # rows replaced in place
    assert 0 < redrawn.sum() <= ds.metadata["n_rejected"]


@pytest.mark.slow
def test_unsoftened_close_encounters_refined_or_rejected_not_kept():
    cfg = ThreeBodyConfig(n_trajectories=64, softening=0.0, virial_min=0.05, virial_max=0.1)
    ds = simulate_three_body(cfg)
    assert ds.metadata["n_refined"] + ds.metadata["n_rejected"] > 0
    assert np.all(ds.rel_energy_error <= cfg.energy_tol)


@pytest.mark.parametrize(
    "kwargs",
    [{"dim": 4}, {"n_trajectories": 0}, {"masses": (1.0, 1.0)}, {"virial_max": 1.5}],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        ThreeBodyConfig(**kwargs)


def test_trajectory_validation():
    with pytest.raises(ValueError):
        three_body_trajectory(np.zeros((3, 4)), np.zeros((3, 4)), np.ones(3), np.linspace(0, 1, 3))
    with pytest.raises(ValueError):
        three_body_trajectory(np.zeros((3, 2)), np.zeros((3, 2)), np.ones(2), np.linspace(0, 1, 3))


@pytest.mark.slow
def test_full_default_dataset_energy():
    ds = simulate_three_body(ThreeBodyConfig())
    assert ds.x.shape == (10_000, 500, 3, 2)
    assert ds.metadata["median_rel_energy_error"] <= 1e-6
