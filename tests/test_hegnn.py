"""HEGNN: the reference equations, E(3) equivariance of h, x and chi, graphs, bad input."""

import dataclasses
import functools

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _graphs import random_graph

import egnn_jax
from egnn_jax import hegnn
from egnn_jax.testing import assert_steerable_equivariant

# ---------------------------------------------------------------- an independent oracle


def _silu(z):
    return z / (1.0 + np.exp(-z))


def _dense(p, z):
    return z @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def _mlp(p, hidden, out, z):
    return _dense(p[out], _silu(_dense(p[hidden], z)))


@functools.partial(jax.jit, static_argnums=1)
def _sh(r, max_degree):
    """e3nn-jax's real spherical harmonics, as the reference's e3nn (normalize, "norm")."""
    irreps = e3nn.Irreps.spherical_harmonics(max_degree)
    return e3nn.spherical_harmonics(irreps, e3nn.IrrepsArray("1o", r), True, "norm").array


def oracle(params, cfg, h, x, v=None, edge_attr=None, mask=None):
    """The reference model (GLAD-RUC/HEGNN models/HEGNN.py) edge by edge in float64 NumPy."""
    p = params["params"]
    h, x = np.asarray(h, np.float64), np.asarray(x, np.float64)
    m_nodes, big_l = h.shape[0], cfg.max_degree
    degree = np.repeat(np.arange(big_l + 1), 2 * np.arange(big_l + 1) + 1)
    mask = np.ones(m_nodes, bool) if mask is None else np.asarray(mask)
    attr = lambda i, j: [] if edge_attr is None else np.asarray(edge_attr[i, j], np.float64)
    neighbours = [
        [j for j in range(m_nodes) if j != i and mask[i] and mask[j]] for i in range(m_nodes)
    ]
    mean = lambda terms, i: sum(terms) / len(neighbours[i]) if neighbours[i] else 0.0

    h = _dense(p["embedding"], h)
    sh = np.asarray(_sh(x[:, None] - x[None], big_l), np.float64)  # [M, M, (L + 1)^2]
    q = p["steerable_init"]
    chi = np.zeros((m_nodes, (big_l + 1) ** 2))
    for i in range(m_nodes):
        terms = []
        for j in neighbours[i]:
            r = x[i] - x[j]
            w = _silu(_mlp(q, "edge_in", "edge_out", np.r_[np.sqrt(r @ r), h[i], h[j], attr(i, j)]))
            terms.append(w[degree] * sh[i, j])
        chi[i] = mean(terms, i)

    for layer in range(cfg.num_layers):
        q = p[f"layer_{layer}"]
        new_h, new_x, new_chi = h.copy(), x.copy(), chi.copy()
        for i in range(m_nodes):
            msgs, shifts, d_chis = [], [], []
            for j in neighbours[i]:
                r = x[i] - x[j]
                ip = [chi[i, degree == ell] @ chi[j, degree == ell] for ell in range(big_l + 1)]
                m = _silu(_dense(q["edge_in"], np.r_[h[i], h[j], attr(i, j), r @ r, ip]))
                m = _silu(_dense(q["edge_out"], m))
                shifts.append(r * _mlp(q, "coord_hidden", "coord_out", m))
                d_chis.append(_mlp(q, "steer_hidden", "steer_out", m)[degree] * (chi[i] - chi[j]))
                msgs.append(m)
            new_x[i] = x[i] + mean(shifts, i)
            if cfg.velocity:
                new_x[i] += _mlp(q, "vel_hidden", "vel_out", h[i]) * np.asarray(v[i], np.float64)
            new_chi[i] = chi[i] + mean(d_chis, i)
            m_i = mean(msgs, i) + np.zeros(cfg.hidden_features)
            out = _mlp(q, "node_hidden", "node_out", np.r_[h[i], m_i])
            new_h[i] = h[i] + out if cfg.residual else out
        h, x, chi = new_h, new_x, new_chi
    if cfg.out_features is not None:
        h = _dense(p["readout"], h)
    return h, x, chi


CONFIGS = {
    "reference": egnn_jax.HEGNNConfig(hidden_features=16, num_layers=2, max_degree=2),
    "options": egnn_jax.HEGNNConfig(
        hidden_features=16,
        num_layers=2,
        max_degree=1,
        velocity=False,
        residual=True,
        out_features=3,
        stop_sh_gradient=False,
    ),
}


LEVELS = {
    L: egnn_jax.HEGNNConfig(hidden_features=16, num_layers=2, max_degree=L) for L in (0, 1, 3, 6)
}
LEVELS[2] = CONFIGS["reference"]


def _kwargs(cfg, v, a):
    return dict(v=v if cfg.velocity else None, edge_attr=a)


@functools.cache
def _params64(cfg, attr):
    """`hegnn.init`'s tree, drawn in NumPy: every leaf of a layer uniform in +-1/sqrt(fan_in)
    (the reference's PyTorch init, which `init` uses). `jax.eval_shape` gives the tree without
    compiling `init`, whose random draws take ~2 s to compile per config (checked once below).
    """
    h, x, v, a = random_graph(jax.random.key(0), num_nodes=3, attr=attr)
    shapes = jax.eval_shape(lambda: hegnn.init(jax.random.key(1), cfg, h, x, **_kwargs(cfg, v, a)))
    rng = np.random.default_rng(0)

    def draw(layer):
        bound = 1.0 / np.sqrt(layer["kernel"].shape[0])
        return {k: rng.uniform(-bound, bound, leaf.shape) for k, leaf in layer.items()}

    return {"params": jax.tree.map(draw, shapes["params"], is_leaf=lambda t: "kernel" in t)}


def _params(cfg, attr=2, dtype=jnp.float32):
    """Parameters for h of width 2 and edge attributes of width `attr`, in `dtype` (call
    float64 inside `jax.enable_x64(True)`)."""
    return jax.tree.map(lambda p: jnp.asarray(p, dtype), _params64(cfg, attr))


def test_init_draws_the_reference_distribution():
    cfg = egnn_jax.HEGNNConfig(hidden_features=16, num_layers=1, max_degree=2)
    h, x, v, a = random_graph(jax.random.key(0), num_nodes=3)
    params = hegnn.init(jax.random.key(1), cfg, h, x, v=v, edge_attr=a)
    want = _params(cfg)
    assert jax.tree.structure(params) == jax.tree.structure(want)
    for got, ref in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
        assert got.shape == ref.shape and got.dtype == ref.dtype
    for layer in jax.tree.leaves(params, is_leaf=lambda t: "kernel" in t):
        bound = 1.0 / np.sqrt(layer["kernel"].shape[0])
        for leaf in layer.values():
            assert np.max(np.abs(leaf)) <= bound
    assert np.std(params["params"]["layer_0"]["coord_out"]["kernel"]) > 0.05  # not EGNN's tiny


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_reference_equations(name):
    cfg = CONFIGS[name]
    with jax.enable_x64(True):
        h, x, v, a = random_graph(jax.random.key(0), dtype=jnp.float64)
        a = a if name == "reference" else None
        mask = jnp.array([True, True, True, True, False]) if name == "options" else None
        kw = _kwargs(cfg, v, a)
        params = _params(cfg, 0 if a is None else 2, jnp.float64)
        out = hegnn.apply(params, cfg, h, x, node_mask=mask, **kw, return_steerable=True)
        ref = oracle(params, cfg, h, x, mask=mask, **kw)
    for got, want in zip(out, ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert np.max(np.abs(ref[1] - np.asarray(x))) > 1e-2, "coordinate update is trivially small"
    assert np.max(np.abs(ref[2][:, 1:])) > 1e-2, "steerable features of degree >= 1 vanish"


def test_spherical_harmonics_are_unit_per_degree_and_degree_one_is_the_direction():
    r = jax.random.normal(jax.random.key(0), (6, 3))
    sh = jax.jit(hegnn.spherical_harmonics, static_argnums=1)
    y = sh(r, 3)
    degree = np.repeat(np.arange(4), 2 * np.arange(4) + 1)
    norms = np.sqrt(np.stack([np.sum(y[:, degree == ell] ** 2, -1) for ell in range(4)], -1))
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    np.testing.assert_allclose(y[:, 1:4], r / jnp.linalg.norm(r, axis=-1, keepdims=True), 1e-5)
    # r = 0 (coincident nodes): Y^(0) = 1, the rest 0, no NaN.
    np.testing.assert_array_equal(sh(jnp.zeros((6, 3)), 3), np.tile(np.eye(1, 16), (6, 1)))


# ---------------------------------------------------------------- shapes and degrees


def test_shapes_and_outputs():
    cfg = CONFIGS["options"]  # out_features=3, max_degree=1
    h, x, _, _ = random_graph(jax.random.key(0), attr=0)
    params = _params(cfg, attr=0)
    h_out, x_out, chi = hegnn.apply(params, cfg, h, x, return_steerable=True)
    assert h_out.shape == (5, 3) and x_out.shape == (5, 3) and chi.shape == (5, 4)
    assert params["params"]["layer_0"]["steer_out"]["kernel"].shape == (16, 2)
    two = hegnn.apply(params, cfg, h, x)
    assert len(two) == 2
    np.testing.assert_array_equal(two[1], x_out)


# ---------------------------------------------------------------- equivariance


@pytest.mark.parametrize("max_degree", sorted(LEVELS))
def test_equivariance_float64(max_degree, strict_dtypes):
    cfg = LEVELS[max_degree]
    with jax.enable_x64(True):
        h, x, v, a = random_graph(jax.random.key(max_degree), dtype=jnp.float64)
        params = _params(cfg, dtype=jnp.float64)
        fn = lambda h, x, **k: hegnn.apply(params, cfg, h, x, **k, return_steerable=True)
        h_out, x_out, chi = fn(h, x, v=v, edge_attr=a)
        assert h_out.shape == (5, 16) and x_out.shape == (5, 3)
        assert chi.shape == (5, (max_degree + 1) ** 2) == (5, cfg.steerable_features)
        assert float(jnp.max(jnp.abs(x_out - x))) > 1e-2
        assert float(jnp.max(jnp.abs(chi[:, (max_degree**2) :]))) > 1e-3  # the top degree
        for seed in range(2):
            assert_steerable_equivariant(
                fn, jax.random.key(100 + seed), h, x, v=v, edge_attr=a, irreps=max_degree
            )


@pytest.mark.parametrize("name", ["options", "max_degree_3"])
def test_equivariance_float32(name, strict_dtypes):
    cfg = CONFIGS.get(name, LEVELS[3])
    h, x, v, a = random_graph(jax.random.key(3))
    a = a if cfg.velocity else None
    kw = _kwargs(cfg, v, a)
    params = _params(cfg, 0 if a is None else 2)
    fn = lambda h, x, **k: hegnn.apply(params, cfg, h, x, **k, return_steerable=True)
    for seed in range(2):
        assert_steerable_equivariant(
            fn, jax.random.key(seed), h, x, **kw, irreps=cfg.max_degree, rtol=1e-5
        )


def test_equivariance_sparse_float64(strict_dtypes):
    cfg = LEVELS[3]
    with jax.enable_x64(True):
        h, x, v, _ = random_graph(jax.random.key(2), num_nodes=7, dtype=jnp.float64)
        senders = jnp.array([0, 1, 2, 3, 4, 5, 6, 0, 3, 5], jnp.int32)
        receivers = jnp.array([1, 2, 3, 4, 5, 6, 0, 4, 0, 2], jnp.int32)
        attr = jax.random.normal(jax.random.key(9), (10, 2), jnp.float64)
        kw = dict(v=v, edge_attr=attr, senders=senders, receivers=receivers)
        params = _params(cfg, dtype=jnp.float64)
        fn = lambda h, x, **k: hegnn.apply(params, cfg, h, x, **k, return_steerable=True)
        assert_steerable_equivariant(fn, jax.random.key(5), h, x, **kw, irreps=3)


def test_steerable_check_catches_a_wrong_parity():
    """chi^(1) is a polar vector (1o): declaring it axial (1e) must fail under a reflection
    and pass under a rotation, so the reflection check of chi is live."""
    cfg = CONFIGS["options"]
    h, x, _, _ = random_graph(jax.random.key(0), attr=0)
    params = _params(cfg, attr=0)
    fn = lambda h, x, **k: hegnn.apply(params, cfg, h, x, **k, return_steerable=True)
    with pytest.raises(AssertionError, match=r"steerable"):
        assert_steerable_equivariant(fn, jax.random.key(2), h, x, irreps="0e + 1e")
    assert_steerable_equivariant(fn, jax.random.key(2), h, x, irreps="0e + 1e", reflection=False)
    with pytest.raises(ValueError, match=r"4 columns.*dimension 9"):
        assert_steerable_equivariant(fn, jax.random.key(2), h, x, irreps=2)


# ---------------------------------------------------------------- graphs


def test_dense_equals_sparse():
    cfg = LEVELS[3]
    h, x, v, a = random_graph(jax.random.key(4))
    params = _params(cfg)
    dense = hegnn.apply(params, cfg, h, x, v=v, edge_attr=a, return_steerable=True)
    senders, receivers = egnn_jax.complete_graph_edges(5)
    sparse = hegnn.apply(
        params,
        cfg,
        h,
        x,
        v=v,
        edge_attr=egnn_jax.dense_to_sparse_edge_attr(a),
        senders=senders,
        receivers=receivers,
        return_steerable=True,
    )
    for got, want in zip(sparse, dense, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_an_edge_mask_drops_a_radius_graphs_filler_edges():
    """With `edge_mask`, a radius graph's edge list (filler edges included) gives what the
    list of its valid edges alone gives, and the gradient stays finite."""
    cfg = LEVELS[1]
    h, x, v, _ = random_graph(jax.random.key(7), num_nodes=8)
    graph = egnn_jax.radius_graph(x, 1.5, capacity=64)
    assert not bool(graph.overflow) and 0 < int(graph.edge_mask.sum()) < 64
    keep = np.asarray(graph.edge_mask)
    s, r = np.asarray(graph.senders), np.asarray(graph.receivers)
    attr = jnp.linalg.norm(x[s] - x[r], axis=-1, keepdims=True)
    masked = dict(senders=graph.senders, receivers=graph.receivers, edge_mask=graph.edge_mask)
    params = hegnn.init(jax.random.key(0), cfg, h, x, v=v, edge_attr=attr, **masked)

    def run(p, edge_attr, **edges):
        return hegnn.apply(p, cfg, h, x, v=v, edge_attr=edge_attr, **edges, return_steerable=True)

    got = run(params, attr, **masked)
    want = run(params, attr[keep], senders=jnp.asarray(s[keep]), receivers=jnp.asarray(r[keep]))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda p: sum(jnp.sum(o**2) for o in run(p, attr, **masked)))(params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    with pytest.raises(ValueError, match="edge_mask is for sparse graphs"):
        hegnn.apply(params, cfg, h, x, v=v, edge_mask=graph.edge_mask)


@pytest.mark.parametrize("sparse", [pytest.param(False, marks=pytest.mark.slow), True])
def test_rematerialised_layers_compute_the_same_values_and_gradients(sparse):
    """`HEGNNConfig(remat=True)` recomputes each layer in the backward pass: same numbers,
    same parameters, including chi's."""
    cfg = LEVELS[2]
    with jax.enable_x64(True):
        h, x, v, a = random_graph(jax.random.key(6), num_nodes=6, dtype=jnp.float64)
        kw = {"v": v}
        if sparse:
            senders, receivers = egnn_jax.complete_graph_edges(6)
            kw |= {"senders": senders, "receivers": receivers}
            kw |= {"edge_attr": egnn_jax.dense_to_sparse_edge_attr(a)}
        else:
            kw |= {"edge_attr": a, "node_mask": jnp.arange(6) < 5}
        remat = dataclasses.replace(cfg, remat=True)
        params = hegnn.init(jax.random.key(0), cfg, h, x, **kw)
        assert jax.tree.structure(hegnn.init(jax.random.key(0), remat, h, x, **kw)) == (
            jax.tree.structure(params)
        )

        def loss(p, c):
            h_out, x_out, chi = hegnn.apply(p, c, h, x, **kw, return_steerable=True)
            return jnp.sum(x_out**2) + jnp.sum(h_out**2) + jnp.sum(chi**2)

        (l1, g1), (l2, g2) = (jax.value_and_grad(loss)(params, c) for c in (cfg, remat))
        np.testing.assert_allclose(l2, l1, rtol=1e-13)
        for got, want in zip(jax.tree.leaves(g2), jax.tree.leaves(g1), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_padding_nodes_never_change_real_nodes():
    cfg = LEVELS[3]
    h, x, v, a = random_graph(jax.random.key(6))
    params = _params(cfg)
    ref = hegnn.apply(params, cfg, h, x, v=v, edge_attr=a, return_steerable=True)

    junk = random_graph(jax.random.key(8), num_nodes=7)
    pad = lambda real, fill: jnp.concatenate([real, 50.0 * fill[5:]])
    a_pad = (50.0 * junk[3]).at[:5, :5].set(a)
    x_pad = pad(x, junk[1]).at[6].set(x[0])  # a padding node on top of a real one
    mask = jnp.arange(7) < 5
    padded = hegnn.apply(
        params,
        cfg,
        pad(h, junk[0]),
        x_pad,
        v=pad(v, junk[2]),
        edge_attr=a_pad,
        node_mask=mask,
        return_steerable=True,
    )
    for got, want in zip(padded, ref, strict=True):
        np.testing.assert_allclose(got[:5], want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- transformations


def test_gradient_through_the_spherical_harmonics_matches_finite_differences():
    """stop_sh_gradient=False: the gradient with respect to x is the full derivative (central
    differences); the reference's detached harmonics (the default) give a different one.
    Coincident particles give finite gradients."""
    full = CONFIGS["options"]
    detached = dataclasses.replace(full, stop_sh_gradient=True)
    with jax.enable_x64(True):
        h, x, _, _ = random_graph(jax.random.key(3), num_nodes=4, attr=0, dtype=jnp.float64)
        params = _params(full, attr=0, dtype=jnp.float64)
        direction = jax.random.normal(jax.random.key(5), x.shape, jnp.float64)
        weights = jax.random.normal(jax.random.key(6), (4, 4), jnp.float64)

        def objective(params, x, cfg):
            h_out, x_out, chi = hegnn.apply(params, cfg, h, x, return_steerable=True)
            return jnp.sum(jnp.sin(x_out)) + jnp.sum(h_out**2) + jnp.sum(weights * chi)

        # One compiled program per config: gradients with respect to params and x.
        grad = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)), static_argnums=2)
        eps = 1e-5
        step = eps * direction
        value_plus, value_minus = grad(params, x + step, full)[0], grad(params, x - step, full)[0]
        fd = (value_plus - value_minus) / (2 * eps)
        (value, (_, g_full)), (value_detached, (_, g_detached)) = (
            grad(params, x, full),
            grad(params, x, detached),
        )
        g_full, g_detached = jnp.sum(g_full * direction), jnp.sum(g_detached * direction)
        np.testing.assert_allclose(g_full, fd, rtol=1e-6)
        np.testing.assert_allclose(value_detached, value, rtol=1e-12)
        assert abs(float(g_detached - fd)) > 1e-2 * abs(float(fd))

        # Coincident particles (r_ij = 0): finite value and gradients, also through the
        # harmonics and their normalisation.
        value, (g_params, g_x) = grad(params, x.at[1].set(x[0]), full)
        assert np.isfinite(value) and np.all(np.isfinite(g_x))
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(g_params))


def test_second_train_step_does_not_recompile():
    cfg = CONFIGS["reference"]
    h, x, v, a = random_graph(jax.random.key(0))
    hb, xb, vb, ab = (jnp.stack([t, t]) for t in (h, x, v, a))
    params = _params(cfg)
    opt = optax.adam(1e-3)
    traces = []

    @jax.jit
    def step(params, opt_state, hb, xb, vb, ab):
        traces.append(1)

        def loss(p):
            fwd = lambda h, x, v, a: hegnn.apply(p, cfg, h, x, v=v, edge_attr=a)[1]
            return jnp.mean((jax.vmap(fwd)(hb, xb, vb, ab) - xb) ** 2)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    state = opt.init(params)
    params, state, _ = step(params, state, hb, xb, vb, ab)
    params, state, _ = step(params, state, hb + 1.0, xb, vb, ab)
    assert len(traces) == 1
    assert step._cache_size() == 1


# ---------------------------------------------------------------- bad input


def _base():
    cfg = CONFIGS["reference"]
    h, x, v, a = random_graph(jax.random.key(0))
    return cfg, _params(cfg), h, x, v, a


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(h=jnp.ones((5,))), r"h must have rank 2.*\(5,\)"),
        (dict(x=jnp.ones((5, 2)), v=jnp.ones((5, 2))), r"3-D positions.*\(5, 2\)"),
        (dict(v=jnp.ones((5, 2))), r"v must have the shape of x.*\(5, 2\).*\(5, 3\)"),
        (dict(v=None), r"v \(\[nodes, n\]\) is required"),
        (dict(edge_attr=jnp.ones((5, 4, 2))), r"dense edge_attr.*\(5, 4, 2\)"),
        (dict(edge_attr=jnp.ones((5, 5, 3))), r"edge_attr of width 2.*\(5, 5, 3\)"),
        (dict(node_mask=jnp.ones((5,))), r"node_mask must be bool"),
        (dict(h=jnp.ones((5, 3))), r"h with 2 features.*\(5, 3\)"),
        (dict(x=jnp.ones((5, 3), jnp.int32)), r"x must be a floating-point array"),
        (dict(senders=jnp.array([0, 1])), r"senders and receivers go together"),
        (dict(params={"params": {}}), r"not a tree returned by egnn_jax.hegnn.init"),
        (dict(config=egnn_jax.HEGNNConfig(16, 2, max_degree=3)), r"max_degree 2.*is 3"),
        (dict(config=egnn_jax.HEGNNConfig(16, 3, max_degree=2)), r"2 layers.*num_layers is 3"),
        (dict(config=egnn_jax.HEGNNConfig(8, 2, max_degree=2)), r"hidden width 16.*is 8"),
        (dict(config=egnn_jax.HEGNNConfig(16, 2, 2, velocity=False), v=None), r"velocity=True"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(change, match):
    cfg, params, h, x, v, a = _base()
    kw = dict(params=params, config=cfg, h=h, x=x, v=v, edge_attr=a) | change
    with pytest.raises(ValueError, match=match):
        hegnn.apply(**kw)


def test_wrong_config_type_and_fields():
    cfg, params, h, x, v, a = _base()
    with pytest.raises(TypeError, match="HEGNNConfig"):  # (beartype's, under the test hook)
        hegnn.apply(params, egnn_jax.EGNNConfig(velocity=True), h, x, v=v, edge_attr=a)
    with pytest.raises(ValueError, match="use HEGNNConfig\\(velocity=True\\)"):
        hegnn.init(jax.random.key(0), egnn_jax.HEGNNConfig(velocity=False), h, x, v=v)
    with pytest.raises(ValueError, match="max_degree must be an int >= 0"):
        egnn_jax.HEGNNConfig(max_degree=-1)


def test_sparse_bad_indices_raise_value_error_eagerly():
    cfg, params, h, x, v, _ = _base()
    s = jnp.array([0, 1, 7], jnp.int32)
    r = jnp.array([1, 2, 3], jnp.int32)
    with pytest.raises(ValueError, match=r"senders has indices in \[0, 7\], outside \[0, 5\)"):
        hegnn.apply(params, cfg, h, x, v=v, edge_attr=jnp.ones((3, 2)), senders=s, receivers=r)
