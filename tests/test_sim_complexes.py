"""The M-complex simulator (EGHN's data): rigid complexes, momentum, sizes, padding, CLI."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from _cli import run_module

from egnn_jax.sim import (
    ComplexesConfig,
    complex_sizes,
    complexes_trajectory,
    load_dataset,
    simulate_complexes,
)

SHORT = dict(n_steps=1_000, save_every=100)


def _trajectories(sizes, n=4, **kwargs):
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(3), n)
        fn = jax.jit(jax.vmap(lambda k: complexes_trajectory(k, sizes, **SHORT, **kwargs)))
        (x, v), v_end, q, ids, mask = fn(keys)
        return [np.asarray(a) for a in (x, v, v_end, q, ids, mask)]


def test_every_complex_stays_rigid_to_1e_6():
    sizes = complex_sizes(ComplexesConfig(n_complexes=5, avg_size=5))
    x, *_, ids, mask = _trajectories(sizes)
    assert x.dtype == np.float64
    worst = 0.0
    for s in range(x.shape[0]):
        for c in range(ids[s].max() + 1):
            p = x[s][:, ids[s] == c]  # [T, n, 3]
            d = np.linalg.norm(p[:, :, None] - p[:, None], axis=-1)
            worst = max(worst, float(np.abs(d - d[0]).max()))
    assert worst < 1e-6
    moved = np.abs(x[:, -1] - x[:, 0]).max()
    assert moved > 0.1  # the complexes do move and turn


@pytest.mark.parametrize("mass, power", [("n", 1), ("n_squared", 2)])
def test_momentum_is_conserved_while_no_force_is_clipped(mass, power):
    """Physical masses conserve sum_c n_c v_c; the reference's n^2 conserves sum_c n_c^2 v_c."""
    sizes = complex_sizes(ComplexesConfig(n_complexes=3, avg_size=4))
    x, v, _, _, ids, mask = _trajectories(sizes, max_force=np.inf, translational_mass=mass)
    for s in range(x.shape[0]):
        total = 0.0
        for c in range(ids[s].max() + 1):
            members = ids[s] == c
            # A rigid body's particle velocities average to its centre's (the offsets sum to 0).
            centre_v = v[s][:, members].mean(axis=1)  # [T, 3]
            total = total + members.sum() ** power * centre_v
        drift = np.abs(total - total[0]).max()
        assert drift < 1e-9 * max(1.0, np.abs(total).max())
    # With the clip, or the other mass, the first quantity is not conserved (the test can fail).
    other = "n_squared" if mass == "n" else "n"
    x, v, _, _, ids, _ = _trajectories(sizes, max_force=np.inf, translational_mass=other)
    c_sum = sum((ids[0] == c).sum() ** power * v[0][:, ids[0] == c].mean(1) for c in range(3))
    assert np.abs(c_sum - c_sum[0]).max() > 1e-6


def test_system_types_follow_the_reference_weights_and_never_crash():
    cfg = ComplexesConfig(n_complexes=5, avg_size=5)
    sizes = complex_sizes(cfg)
    assert sizes.shape == (5, 5)
    assert sizes.min() >= 2 and sizes.max() <= 8
    assert all(len(set(row)) == 5 for row in sizes)  # distinct within a type
    np.testing.assert_array_equal(sizes, complex_sizes(cfg))  # from the seed alone
    # (5, 3): only 3 possible sizes, where the reference generator raises.
    crowded = complex_sizes(ComplexesConfig(n_complexes=5, avg_size=3))
    assert crowded.shape == (5, 5) and set(crowded.ravel()) <= {2, 3, 4}
    # Large draws: small sizes more likely than large ones (weight 2 avg + 4 - size).
    many = complex_sizes(ComplexesConfig(n_complexes=1, avg_size=10, system_types=4000))
    counts = np.bincount(many.ravel(), minlength=19)
    assert counts[2] > counts[18] * 1.8


def test_padding_membership_and_the_dataset_container(tmp_path):
    cfg = ComplexesConfig(n_trajectories=6, n_complexes=3, avg_size=5, chunk_size=4, **SHORT)
    ds = simulate_complexes(cfg)
    n_max = complex_sizes(cfg).sum(axis=1).max()
    assert ds.x.shape == (6, 10, n_max, 3) and ds.complex_id.shape == (6, n_max)
    for s in range(6):
        real = ds.node_mask[s]
        assert real[: real.sum()].all()  # real particles first
        assert (ds.complex_id[s][~real] == -1).all() and (ds.x[s][:, ~real] == 0).all()
        assert (ds.charges[s][~real] == 0).all() and set(ds.charges[s][real]) <= {-1.0, 1.0}
        sizes = np.bincount(ds.complex_id[s][real])
        assert sorted(sizes) in [sorted(t) for t in ds.metadata["system_types"]]
    assert ds.metadata["frame_spacing"] == pytest.approx(0.1)
    # Chunking and length do not change a trajectory: the first 3 of 6 are a run of 3.
    first = simulate_complexes(ComplexesConfig(**{**cfg.__dict__, "n_trajectories": 3}))
    np.testing.assert_array_equal(first.x, ds.x[:3])
    np.testing.assert_array_equal(first.complex_id, ds.complex_id[:3])


def test_fast_trajectories_are_redrawn_and_an_impossible_bound_raises():
    cfg = ComplexesConfig(n_trajectories=4, n_complexes=3, avg_size=3, max_speed=0.6, **SHORT)
    ds = simulate_complexes(cfg)
    assert ds.metadata["n_redrawn"] > 0
    with pytest.raises(RuntimeError, match="max_speed"):
        simulate_complexes(ComplexesConfig(**{**cfg.__dict__, "max_speed": 1e-3, "max_redraws": 1}))


def test_config_rejects_bad_values():
    for bad in (
        dict(n_complexes=0),
        dict(avg_size=1),
        dict(translational_mass="m"),
        dict(split="dev"),
        dict(frames=(50,)),
        dict(dt=0.0),
    ):
        with pytest.raises(ValueError):
            ComplexesConfig(**bad)


def test_command_line_writes_complex_ids_and_the_frame_spacing(tmp_path):
    out = tmp_path / "c.npz"
    res = run_module(
        "egnn_jax.sim", "complexes", "--complexes", 3, "--avg-size", 3, "--n", 5,
        "--seed", 43, "--out", out, "--n-steps", 1000, "--frames", "2,5", "--no-progress",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.splitlines()[-2])
    assert summary["frame_spacing"] == pytest.approx(0.1)
    ds = load_dataset(out)
    assert ds.x.shape == (5, 2, 9, 3) and ds.complex_id.shape == (5, 9)
    assert ds.metadata["frame_spacing"] == pytest.approx(0.1)
    np.testing.assert_allclose(ds.t, [0.201, 0.501])
    bad = run_module("egnn_jax.sim", "complexes", "--avg-size", 1, "--out", out)
    assert bad.returncode == 2 and "avg_size" in bad.stderr


def test_vmap_equals_one_system_at_a_time():
    sizes = np.asarray([[2, 3]])
    x, *_ = _trajectories(sizes, n=2)
    with jax.enable_x64(True):
        key = jax.random.split(jax.random.key(3), 2)[1]
        (one, _), *_ = jax.jit(lambda k: complexes_trajectory(k, sizes, **SHORT))(key)
    np.testing.assert_allclose(x[1], np.asarray(one), rtol=0, atol=1e-12)
    assert x.shape == (2, 10, 5, 3)
