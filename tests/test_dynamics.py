"""egnn_jax.dynamics: rollouts, integration, and the learned step / force-field / potential."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import egnn_jax
from egnn_jax import dynamics as dyn
from egnn_jax.sim import Leapfrog, ThreeBodyConfig, Yoshida6, gravity_acceleration
from egnn_jax.testing import assert_equivariant

CFG = egnn_jax.EGNNConfig(hidden_features=16, num_layers=2, velocity=True)


def _state(key, m=4, n=3, dtype=jnp.float32):
    kx, kv, kh = jax.random.split(key, 3)
    x = jax.random.normal(kx, (m, n), dtype)
    v = jax.random.normal(kv, (m, n), dtype)
    h = jnp.abs(jax.random.normal(kh, (m, 2), dtype))
    return dyn.State(x, v, h)


def _scale_coords(params, gain):
    """Scale phi_x's tiny last layer (and a potential's read-out) so the learned updates are
    not trivially small."""

    def scale(path, w):
        name = jax.tree_util.keystr(path)
        return w * gain if "coord_out" in name or "readout" in name else w

    return jax.tree_util.tree_map_with_path(scale, params)


MODELS = {
    "step": (
        dyn.step_init,
        lambda p, s, n: dyn.rollout(lambda p, s: dyn.step(p, CFG, s), p, s, n),
    ),
    "force_field": (
        dyn.force_field_init,
        lambda p, s, n: dyn.integrate(lambda p, s: dyn.force_field(p, CFG, s), p, s, 0.05, n),
    ),
    "potential": (
        dyn.potential_init,
        lambda p, s, n: dyn.integrate(
            lambda p, s: dyn.potential_acceleration(p, CFG, s), p, s, 0.05, n
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_whole_rollouts_are_equivariant(name):
    init_fn, traj_fn = MODELS[name]
    with jax.enable_x64(True):
        state = _state(jax.random.key(0), dtype=jnp.float64)
        params = _scale_coords(init_fn(jax.random.key(1), CFG, state), 300.0)
        run = jax.jit(lambda x, v, h: traj_fn(params, dyn.State(x, v, h), 6))
        out = run(*state)
        assert float(jnp.max(jnp.abs(out.x[-1] - state.x - 6 * 0.05 * state.v))) > 1e-2

        # Every saved state is equivariant: x and v rotate and reflect with the input, x is
        # translated with it, and node permutations commute with the rollout.
        for seed in range(2):
            k = jax.random.key(10 + seed)
            q = egnn_jax.testing.random_orthogonal(k, 3, jnp.float64)
            t = jax.random.normal(jax.random.fold_in(k, 1), (1, 3), jnp.float64)
            perm = jax.random.permutation(jax.random.fold_in(k, 2), 4)
            moved = run(state.x[perm] @ q.T + t, state.v[perm] @ q.T, state.h[perm])
            want_x = out.x[:, perm] @ q.T + t[None]
            want_v = out.v[:, perm] @ q.T
            np.testing.assert_allclose(moved.x, want_x, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(moved.v, want_v, rtol=1e-10, atol=1e-10)
        # The public checker on the final positions (h invariant, x equivariant).
        assert_equivariant(
            lambda h, x, v: (h, run(x, v, h).x[-1]),
            jax.random.key(3),
            state.h,
            state.x,
            v=state.v,
        )


@pytest.mark.parametrize(
    "name",  # the potential (16 s) runs in `make test-slow`
    [pytest.param(n, marks=pytest.mark.slow) if n == "potential" else n for n in sorted(MODELS)],
)
def test_jit_vmap_grad_and_checkpoint_agree(name):
    init_fn, traj_fn = MODELS[name]
    batch = jax.vmap(lambda k: _state(k))(jax.random.split(jax.random.key(0), 5))
    params = init_fn(jax.random.key(1), CFG, jax.tree.map(lambda a: a[0], batch))

    def loss(p):
        return jnp.mean(jax.vmap(lambda s: traj_fn(p, s, 4).x)(batch) ** 2)

    vmapped = jax.jit(jax.vmap(lambda s: traj_fn(params, s, 4).x))(batch)
    one = jax.jit(lambda s: traj_fn(params, s, 4).x)
    looped = jnp.stack([one(jax.tree.map(lambda a, i=i: a[i], batch)) for i in range(5)])
    np.testing.assert_allclose(vmapped, looped, rtol=1e-5, atol=1e-6)
    assert vmapped.shape == (5, 5, 4, 3) and np.all(np.isfinite(np.asarray(vmapped)))
    grads = jax.jit(jax.grad(loss))(params)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))


def test_rollout_checkpointing_changes_memory_not_results():
    state = _state(jax.random.key(2))
    params = dyn.step_init(jax.random.key(3), CFG, state)
    step = lambda p, s: dyn.step(p, CFG, s)

    def loss(p, checkpoint):
        return jnp.mean(dyn.rollout(step, p, state, 20, checkpoint=checkpoint).x ** 2)

    plain, remat = (jax.grad(loss)(params, c) for c in (False, True))
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    traj = dyn.rollout(step, params, state, 20)
    assert traj.x.shape == (21, 4, 3) and traj.h.shape == (21, 4, 2)
    np.testing.assert_array_equal(traj.x[0], state.x)


def test_learned_potential_conserves_its_energy_with_a_symplectic_solver():
    with jax.enable_x64(True):
        state = _state(jax.random.key(4), dtype=jnp.float64)
        params = dyn.potential_init(jax.random.key(5), CFG, state)

        def energy(s):
            return 0.5 * jnp.sum(s.v**2) + dyn.potential_energy(params, CFG, s)

        acc = lambda p, s: dyn.potential_acceleration(p, CFG, s)
        long = {}
        for solver in (Leapfrog(), Yoshida6()):
            traj = dyn.integrate(acc, params, state, 0.05, 400, solver=solver)
            e = jax.vmap(lambda x, v: energy(dyn.State(x, v, state.h)))(traj.x, traj.v)
            long[type(solver).__name__] = float(jnp.max(jnp.abs(e - e[0])) / jnp.abs(e[0]))
        assert float(jnp.max(jnp.abs(traj.x[-1] - state.x))) > 0.1  # it moved
    # Bounded energy error; sixth order is far more accurate than second.
    assert long["Leapfrog"] < 1e-3 and long["Yoshida6"] < 1e-7, long


def test_potential_acceleration_is_minus_the_gradient_over_mass():
    with jax.enable_x64(True):
        state = _state(jax.random.key(6), dtype=jnp.float64)
        params = dyn.potential_init(jax.random.key(7), CFG, state)
        masses = jnp.array([1.0, 2.0, 0.5, 4.0])
        a = dyn.potential_acceleration(params, CFG, state, masses)
        eps = 1e-6
        for i, j in ((0, 0), (2, 1), (3, 2)):
            bump = jnp.zeros_like(state.x).at[i, j].set(eps)
            up = dyn.potential_energy(params, CFG, state._replace(x=state.x + bump))
            down = dyn.potential_energy(params, CFG, state._replace(x=state.x - bump))
            want = -float(up - down) / (2 * eps) / float(masses[i])
            assert float(a[i, j]) == pytest.approx(want, rel=1e-6)


def test_integrate_the_true_force_reproduces_the_three_body_data():
    """`integrate` with the true gravity and Yoshida-6 is the simulator itself."""
    from egnn_jax.sim import simulate_three_body

    cfg = ThreeBodyConfig(n_trajectories=4, n_saved=50, t_end=0.4, seed=2)
    ds = simulate_three_body(cfg)

    def gravity(params, s):
        return gravity_acceleration(s.x, s.h[:, 0], 1.0, 0.1)

    with jax.enable_x64(True):
        s0 = jax.vmap(dyn.State)(
            jnp.asarray(ds.x[:, 0], jnp.float64),
            jnp.asarray(ds.v[:, 0], jnp.float64),
            jnp.ones((4, 3, 1), jnp.float64),
        )
        symplectic = jax.jit(
            jax.vmap(lambda s: dyn.integrate(gravity, None, s, 0.4 / 49, 49, solver=Yoshida6()))
        )(s0)
        general = jax.jit(
            jax.vmap(
                lambda s: dyn.integrate(
                    gravity, None, s, 0.4 / 49, 49, solver=diffrax.Tsit5(), substeps=4
                )
            )
        )(s0)
    # The dataset starts from the float64 draw, stored as float32.
    np.testing.assert_allclose(np.asarray(symplectic.x), ds.x, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(general.x), ds.x, rtol=0, atol=1e-4)


@pytest.mark.usefixtures("allow_nans")
def test_first_nonfinite_names_the_step():
    xs = jnp.zeros((6, 3, 2)).at[4, 1, 0].set(jnp.nan).at[5].set(jnp.inf)
    assert int(dyn.first_nonfinite(xs)) == 4
    assert int(dyn.first_nonfinite(jnp.zeros((6, 3, 2)))) == -1
    batch = jnp.stack([xs, jnp.zeros((6, 3, 2))])
    np.testing.assert_array_equal(jax.vmap(dyn.first_nonfinite)(batch), [4, -1])


def test_bad_states_raise():
    state = _state(jax.random.key(0))
    with pytest.raises(ValueError, match=r"state.x and state.v must be \[M, n\]"):
        dyn.rollout(lambda p, s: s, None, state._replace(v=state.v[:2]), 3)
    with pytest.raises(ValueError, match=r"state.h must be \[M, F\]"):
        dyn.integrate(lambda p, s: s.x, None, state._replace(h=state.h[:2]), 0.1, 3)
    with pytest.raises(ValueError, match="num_steps"):
        dyn.integrate(lambda p, s: s.x, None, state, 0.1, 0)
    with pytest.raises(ValueError, match="velocity=True"):
        dyn.step_init(jax.random.key(0), egnn_jax.EGNNConfig(), state)


def test_edge_features_keep_equivariance_and_enter_the_potential_gradient():
    edge_fn = dyn.inverse_distance_features((0.05, 0.2, 0.8))
    with jax.enable_x64(True):
        state = _state(jax.random.key(8), dtype=jnp.float64)
        a = edge_fn(state.x)
        assert a.shape == (4, 4, 3)
        np.testing.assert_allclose(a[0, 0], [20.0, 5.0, 1.25])  # r = 0 on the diagonal
        r = float(jnp.linalg.norm(state.x[0] - state.x[1]))
        np.testing.assert_allclose(a[0, 1, 1], 1 / np.sqrt(r**2 + 0.04), rtol=1e-9)  # rsqrt
        np.testing.assert_allclose(dyn.distance_feature(state.x)[0, 1, 0], r, rtol=1e-12)

        params = _scale_coords(dyn.force_field_init(jax.random.key(9), CFG, state, edge_fn), 300)
        run = jax.jit(
            lambda x, v, h: dyn.integrate(
                lambda p, s: dyn.force_field(p, CFG, s, edge_fn),
                params,
                dyn.State(x, v, h),
                0.05,
                5,
            ).x[-1]
        )
        assert_equivariant(
            lambda h, x, v: (h, run(x, v, h)), jax.random.key(4), state.h, state.x, v=state.v
        )

        pot = dyn.potential_init(jax.random.key(10), CFG, state, edge_fn)
        acc = dyn.potential_acceleration(pot, CFG, state, edge_fn=edge_fn)
        eps = 1e-6
        bump = jnp.zeros_like(state.x).at[1, 2].set(eps)
        energy = lambda x: dyn.potential_energy(pot, CFG, state._replace(x=x), edge_fn)
        numeric = -(energy(state.x + bump) - energy(state.x - bump)) / (2 * eps)
        assert float(acc[1, 2]) == pytest.approx(float(numeric), rel=1e-6)
