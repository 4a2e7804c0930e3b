"""Gradients through the simulators agree with central finite differences (float64)."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egnn_jax.sim import charged_trajectory, three_body_trajectory

X0 = np.array([[1.0, 0.0], [-0.5, 0.8], [-0.4, -0.9]])
V0 = np.array([[0.0, 0.4], [-0.3, -0.2], [0.3, -0.2]])
MASSES = np.array([1.0, 0.8, 1.2])


def _central_fd(f, x, h=1e-6):
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        g[idx] = (float(f(x + e)) - float(f(x - e))) / (2 * h)
    return g


def _three_body_loss(method):
    ts = jnp.linspace(0.0, 1.0, 11)
    target = jnp.array([[0.3, 0.1], [-0.2, 0.4], [0.1, -0.6]])
    kw = {"method": method, "substeps": 4, "rtol": 1e-12, "atol": 1e-12}

    def loss(x0, v0, masses, G):
        x, v = three_body_trajectory(x0, v0, masses, ts, G, 0.05, **kw)
        return jnp.sum((x[-1] - target) ** 2) + 0.1 * jnp.sum(v[-1] ** 2)

    return jax.jit(loss)


@pytest.mark.parametrize(
    "method,rtol",
    [pytest.param("yoshida6", 1e-6, marks=pytest.mark.slow), ("dopri8", 1e-5)],  # slow: 14 s
)
def test_three_body_grad_matches_finite_differences(method, rtol):
    with jax.enable_x64(True):
        loss = _three_body_loss(method)
        args = [jnp.asarray(a) for a in (X0, V0, MASSES, 1.0)]
        grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*args)
        for k in range(4):

            def f(a, k=k):
                new = list(args)
                new[k] = jnp.asarray(a)
                return loss(*new)

            fd = _central_fd(f, np.asarray(args[k]))
            np.testing.assert_allclose(np.asarray(grads[k]), fd, rtol=rtol, atol=1e-8)
        assert np.all(np.abs(np.asarray(grads[2])) > 1e-4)  # masses actually matter


def test_charged_grad_matches_finite_differences():
    rng = np.random.default_rng(1)
    x0 = 2.0 * rng.normal(size=(5, 3))  # well separated: no force component is clipped
    v0 = 0.5 * rng.normal(size=(5, 3))
    q = np.array([1.0, -1.0, 1.0, 1.0, -1.0])
    with jax.enable_x64(True):

        @jax.jit
        def loss(x0, v0, q):
            x, _ = charged_trajectory(x0, v0, q, n_frames=3, save_every=50)
            return jnp.sum(x[-1] ** 2) + jnp.sum(x[0, 0])

        args = [jnp.asarray(a) for a in (x0, v0, q)]
        grads = jax.grad(loss, argnums=(0, 1, 2))(*args)
        for k in range(3):

            def f(a, k=k):
                new = list(args)
                new[k] = jnp.asarray(a)
                return loss(*new)

            fd = _central_fd(f, np.asarray(args[k]))
            np.testing.assert_allclose(np.asarray(grads[k]), fd, rtol=1e-5, atol=1e-8)
        assert np.max(np.abs(np.asarray(grads[2]))) > 1e-6  # charges matter


@pytest.mark.slow  # over 10 s; `make test-slow`
def test_recover_masses_example():
    path = Path(__file__).resolve().parents[1] / "examples" / "recover_masses.py"
    spec = importlib.util.spec_from_file_location("recover_masses", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(n_obs=21, n_iter=150, verbose=False)
    assert out["loss"][-1] < 1e-3 * out["loss"][0]
    assert out["rel_error"] < 1e-3, out
