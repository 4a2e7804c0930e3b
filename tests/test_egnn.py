"""The EGCL/EGNN core: paper equations, equivariance, dense == sparse, padding, bad input."""

import dataclasses
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _graphs import random_graph, scaled_params

import egnn_jax
from egnn_jax.testing import assert_equivariant

# ---------------------------------------------------------------- an independent oracle


def _silu(z):
    return z / (1.0 + np.exp(-z))


def _dense(p, z):
    out = z @ np.asarray(p["kernel"], np.float64)
    return out + np.asarray(p["bias"], np.float64) if "bias" in p else out


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def oracle(params, cfg, h, x, v=None, edge_attr=None, mask=None):
    """Eqs. 3-8 written edge by edge in float64 NumPy, straight from the paper."""
    p = params["params"]
    h, x = np.asarray(h, np.float64), np.asarray(x, np.float64)
    v = None if v is None else np.asarray(v, np.float64)
    m_nodes = h.shape[0]
    mask = np.ones(m_nodes, bool) if mask is None else np.asarray(mask)
    h = _dense(p["embedding"], h)
    for layer in range(cfg.num_layers):
        q = p[f"layer_{layer}"]
        new_h, new_x = h.copy(), x.copy()
        for i in range(m_nodes):
            msum = np.zeros(cfg.hidden_features)
            shift = np.zeros(x.shape[1])
            neighbours = [j for j in range(m_nodes) if j != i and mask[i] and mask[j]]
            for j in neighbours:
                d = x[i] - x[j]
                parts = [h[i], h[j], [d @ d]]
                if edge_attr is not None:
                    parts.append(np.asarray(edge_attr[i, j], np.float64))
                m = _silu(_dense(q["edge_in"], np.concatenate(parts)))
                m = _silu(_dense(q["edge_out"], m))
                if cfg.attention:
                    m = m * _sigmoid(_dense(q["attention"], m))
                w = _dense(q["coord_out"], _silu(_dense(q["coord_hidden"], m)))
                if cfg.tanh:
                    w = np.tanh(w) * cfg.coords_range
                if cfg.normalize_form == "clean":
                    d = d / (np.sqrt(d @ d) + 1e-8)
                elif cfg.normalize_form == "nbody":
                    d = d / (np.sqrt(d @ d) + 1.0)
                trans = d * w
                if cfg.coords_clamp is not None:
                    trans = np.clip(trans, -cfg.coords_clamp, cfg.coords_clamp)
                shift += trans
                if cfg.edge_inference:
                    m = m * _sigmoid(_dense(q["edge_inference"], m))
                msum += m
            if cfg.coords_agg == "mean" and neighbours:
                shift /= len(neighbours)
            if cfg.velocity:
                phi_v = _dense(q["vel_out"], _silu(_dense(q["vel_hidden"], h[i])))
                new_x[i] = x[i] + phi_v * v[i] + shift
            else:
                new_x[i] = x[i] + shift
            out = _dense(q["node_out"], _silu(_dense(q["node_hidden"], np.r_[h[i], msum])))
            new_h[i] = h[i] + out if cfg.residual else out
        h, x = new_h, new_x
    if cfg.out_features is not None:
        h = _dense(p["readout"], h)
    return h, x


CONFIGS = {
    "paper": egnn_jax.EGNNConfig(hidden_features=16, num_layers=2),
    "velocity": egnn_jax.EGNNConfig(hidden_features=16, num_layers=2, velocity=True),
    "options": egnn_jax.EGNNConfig(
        hidden_features=16,
        num_layers=2,
        velocity=True,
        attention=True,
        edge_inference=True,
        tanh=True,
        coords_range=3.0,
        normalize=True,
        coords_agg="sum",
        out_features=3,
    ),
    "no_residual": egnn_jax.EGNNConfig(hidden_features=16, num_layers=2, residual=False),
    # The reference N-body layer's normalisation, with a clamp that is active (see below).
    "nbody_clamped": egnn_jax.EGNNConfig(
        hidden_features=16, num_layers=2, velocity=True, normalize="nbody", coords_clamp=0.05
    ),
}


def _kwargs(cfg, v, a):
    return dict(v=v if cfg.velocity else None, edge_attr=a)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_paper_equations(name):
    cfg = CONFIGS[name]
    with jax.enable_x64(True):
        h, x, v, a = random_graph(jax.random.key(0), dtype=jnp.float64)
        kw = _kwargs(cfg, v, a)
        params = scaled_params(jax.random.key(1), cfg, h, x, **kw)
        h_out, x_out = egnn_jax.apply(params, cfg, h, x, **kw)
        h_ref, x_ref = oracle(params, cfg, h, x, **kw)
    np.testing.assert_allclose(h_out, h_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(x_out, x_ref, rtol=1e-10, atol=1e-10)
    assert np.max(np.abs(x_ref - np.asarray(x))) > 1e-2, "coordinate update is trivially small"


def test_coords_agg_mean_is_sum_over_neighbours():
    """C = 1/(M - 1) on a complete graph: the mean update is the sum update / (M - 1)."""
    kw = dict(hidden_features=8, num_layers=1)
    h, x, _, _ = random_graph(jax.random.key(2), num_nodes=6, attr=0)
    mean_cfg = egnn_jax.EGNNConfig(**kw, coords_agg="mean")
    sum_cfg = egnn_jax.EGNNConfig(**kw, coords_agg="sum")
    params = scaled_params(jax.random.key(3), mean_cfg, h, x)
    _, x_mean = egnn_jax.apply(params, mean_cfg, h, x)
    _, x_sum = egnn_jax.apply(params, sum_cfg, h, x)
    np.testing.assert_allclose(x_sum - x, 5.0 * (x_mean - x), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- equivariance


# Every dimension and every dtype in the fast suite: 3-D in both dtypes, 2-D in float64 (the
# tight check), 5-D in float32; the other two pairs in `make test-slow` (~3 s of compiles each).
_DIMENSION_DTYPE = [
    (3, "float32"),
    (3, "float64"),
    (2, "float64"),
    (5, "float32"),
    pytest.param(2, "float32", marks=pytest.mark.slow),
    pytest.param(5, "float64", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("n, dtype", _DIMENSION_DTYPE)
@pytest.mark.parametrize("name", ["velocity", "options"])
def test_equivariance_dense(n, dtype, name, strict_dtypes):
    cfg = CONFIGS[name]
    with jax.enable_x64(dtype == "float64"):
        h, x, v, a = random_graph(jax.random.key(n), n=n, dtype=jnp.dtype(dtype))
        kw = _kwargs(cfg, v, a)
        params = scaled_params(jax.random.key(7), cfg, h, x, **kw)
        _, x_out = egnn_jax.apply(params, cfg, h, x, **kw)
        assert float(jnp.max(jnp.abs(x_out - x))) > 1e-2
        fn = lambda h, x, **k: egnn_jax.apply(params, cfg, h, x, **k)
        for seed in range(3):
            assert_equivariant(fn, jax.random.key(100 + seed), h, x, **kw)


@pytest.mark.parametrize("n, dtype", _DIMENSION_DTYPE)
@pytest.mark.parametrize("edge_chunk_size", [None, 3])  # 3: 10 edges in 4 chunks, 2 padding
def test_equivariance_sparse(n, dtype, edge_chunk_size, strict_dtypes):
    cfg = dataclasses.replace(CONFIGS["options"], edge_chunk_size=edge_chunk_size)
    with jax.enable_x64(dtype == "float64"):
        h, x, v, _ = random_graph(jax.random.key(n), num_nodes=7, n=n, dtype=jnp.dtype(dtype))
        senders = jnp.array([0, 1, 2, 3, 4, 5, 6, 0, 3, 5], jnp.int32)
        receivers = jnp.array([1, 2, 3, 4, 5, 6, 0, 4, 0, 2], jnp.int32)
        attr = jax.random.normal(jax.random.key(9), (10, 2), jnp.dtype(dtype))
        kw = dict(v=v, edge_attr=attr, senders=senders, receivers=receivers)
        params = scaled_params(jax.random.key(7), cfg, h, x, **kw)
        fn = lambda h, x, **k: egnn_jax.apply(params, cfg, h, x, **k)
        assert_equivariant(fn, jax.random.key(5), h, x, **kw)


def test_assert_equivariant_catches_a_broken_function():
    h, x, v, _ = random_graph(jax.random.key(0))

    def not_equivariant(h, x, v):
        return h, x + jnp.array([[1.0, 0.0, 0.0]]) * jnp.sum(x[:, :1])

    with pytest.raises(AssertionError, match="not E\\(3\\)-equivariant"):
        assert_equivariant(not_equivariant, jax.random.key(1), h, x, v=v)


def test_random_orthogonal_has_requested_determinant():
    for seed in range(4):
        q = egnn_jax.testing.random_orthogonal(jax.random.key(seed), 4)
        np.testing.assert_allclose(q @ q.T, np.eye(4), atol=1e-5)
        assert np.linalg.det(q) == pytest.approx(-1.0, abs=1e-5)


# ---------------------------------------------------------------- graphs


@pytest.mark.parametrize("name", ["velocity", "options"])
def test_dense_equals_sparse(name):
    cfg = CONFIGS[name]
    h, x, v, a = random_graph(jax.random.key(4), num_nodes=6)
    kw = _kwargs(cfg, v, a)
    params = scaled_params(jax.random.key(5), cfg, h, x, **kw)
    h_d, x_d = egnn_jax.apply(params, cfg, h, x, **kw)
    senders, receivers = egnn_jax.complete_graph_edges(6)
    a_sparse = egnn_jax.dense_to_sparse_edge_attr(a)
    h_s, x_s = egnn_jax.apply(
        params, cfg, h, x, v=kw["v"], edge_attr=a_sparse, senders=senders, receivers=receivers
    )
    np.testing.assert_allclose(h_s, h_d, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x_s, x_d, rtol=1e-5, atol=1e-5)


def test_sparse_disjoint_union_equals_separate_dense_graphs():
    cfg = CONFIGS["velocity"]
    g1 = random_graph(jax.random.key(1), num_nodes=3, attr=0)
    g2 = random_graph(jax.random.key(2), num_nodes=5, attr=0)
    params = scaled_params(jax.random.key(3), cfg, g1[0], g1[1], v=g1[2])
    s1, r1 = egnn_jax.complete_graph_edges(3)
    s2, r2 = egnn_jax.complete_graph_edges(5)
    cat = lambda i: jnp.concatenate([g1[i], g2[i]])
    h_u, x_u = egnn_jax.apply(
        params,
        cfg,
        cat(0),
        cat(1),
        v=cat(2),
        senders=jnp.concatenate([s1, s2 + 3]),
        receivers=jnp.concatenate([r1, r2 + 3]),
    )
    for g, rows in ((g1, slice(0, 3)), (g2, slice(3, 8))):
        h_d, x_d = egnn_jax.apply(params, cfg, g[0], g[1], v=g[2])
        np.testing.assert_allclose(h_u[rows], h_d, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(x_u[rows], x_d, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["velocity", "options"])
def test_padding_nodes_never_change_real_nodes(name):
    cfg = CONFIGS[name]
    h, x, v, a = random_graph(jax.random.key(6), num_nodes=4)
    kw = _kwargs(cfg, v, a)
    params = scaled_params(jax.random.key(7), cfg, h, x, **kw)
    h_ref, x_ref = egnn_jax.apply(params, cfg, h, x, **kw)

    junk = random_graph(jax.random.key(8), num_nodes=7)
    pad = lambda real, fill: jnp.concatenate([real, 50.0 * fill[4:]])
    a_pad = 50.0 * junk[3]
    a_pad = a_pad.at[:4, :4].set(a)
    mask = jnp.arange(7) < 4
    kw_pad = _kwargs(cfg, pad(v, junk[2]), a_pad)
    h_p, x_p = egnn_jax.apply(
        params, cfg, pad(h, junk[0]), pad(x, junk[1]), node_mask=mask, **kw_pad
    )
    np.testing.assert_allclose(h_p[:4], h_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x_p[:4], x_ref, rtol=1e-5, atol=1e-5)


def test_single_real_node_is_left_in_place():
    cfg = CONFIGS["paper"]
    h, x, _, _ = random_graph(jax.random.key(0), num_nodes=3, attr=0)
    params = scaled_params(jax.random.key(1), cfg, h, x)
    mask = jnp.array([True, False, False])
    _, x_out = egnn_jax.apply(params, cfg, h, x, node_mask=mask)
    np.testing.assert_allclose(x_out[0], x[0], atol=1e-6)


# ---------------------------------------------------------------- transformations


def test_jit_equals_eager_and_vmap_equals_loop():
    cfg = CONFIGS["options"]
    keys = jax.random.split(jax.random.key(3), 4)
    graphs = [random_graph(k) for k in keys]
    hb, xb, vb, ab = (jnp.stack([g[i] for g in graphs]) for i in range(4))
    params = scaled_params(jax.random.key(4), cfg, hb[0], xb[0], v=vb[0], edge_attr=ab[0])
    batched = jax.vmap(lambda h, x, v, a: egnn_jax.apply(params, cfg, h, x, v=v, edge_attr=a))
    h_jit, x_jit = jax.jit(batched)(hb, xb, vb, ab)
    with jax.disable_jit():
        h_eager, x_eager = egnn_jax.apply(params, cfg, hb[2], xb[2], v=vb[2], edge_attr=ab[2])
    np.testing.assert_allclose(h_jit[2], h_eager, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x_jit[2], x_eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_coincident_particles_give_finite_outputs_and_gradients(name):
    cfg = CONFIGS[name]
    h, x, v, a = random_graph(jax.random.key(0))
    x = x.at[1].set(x[0])  # two particles on top of each other
    kw = _kwargs(cfg, v, a)
    params = scaled_params(jax.random.key(1), cfg, h, x, **kw)

    def loss(params, x):
        h_out, x_out = egnn_jax.apply(params, cfg, h, x, **kw)
        return jnp.sum(x_out**2) + jnp.sum(h_out**2)

    value, (g_params, g_x) = jax.value_and_grad(loss, argnums=(0, 1))(params, x)
    assert np.isfinite(value)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(g_params))
    assert np.all(np.isfinite(g_x))


def test_second_train_step_does_not_recompile():
    cfg = CONFIGS["velocity"]
    h, x, v, a = random_graph(jax.random.key(0))
    hb, xb, vb, ab = (jnp.stack([t, t]) for t in (h, x, v, a))
    params = egnn_jax.init(jax.random.key(1), cfg, h, x, v=v, edge_attr=a)
    opt = optax.adam(1e-3)
    traces = []

    @jax.jit
    def step(params, opt_state, hb, xb, vb, ab):
        traces.append(1)

        def loss(p):
            fwd = lambda h, x, v, a: egnn_jax.apply(p, cfg, h, x, v=v, edge_attr=a)[1]
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
    cfg = CONFIGS["velocity"]
    h, x, v, a = random_graph(jax.random.key(0))
    params = egnn_jax.init(jax.random.key(1), cfg, h, x, v=v, edge_attr=a)
    return cfg, params, h, x, v, a


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(h=jnp.ones((5,))), r"h must have rank 2.*\(5,\)"),
        (dict(x=jnp.ones((4, 3))), r"same number of nodes.*\(5, 2\).*\(4, 3\)"),
        (dict(v=jnp.ones((5, 2))), r"v must have the shape of x.*\(5, 2\).*\(5, 3\)"),
        (dict(v=None), r"v \(\[nodes, n\]\) is required"),
        (dict(edge_attr=jnp.ones((5, 4, 2))), r"dense edge_attr.*\(5, 4, 2\)"),
        (dict(edge_attr=jnp.ones((5, 5, 3))), r"edge_attr of width 2.*\(5, 5, 3\)"),
        (dict(node_mask=jnp.ones((4,), bool)), r"node_mask must be bool of shape \(5,\)"),
        (dict(node_mask=jnp.ones((5,))), r"node_mask must be bool"),
        (dict(h=jnp.ones((5, 3))), r"h with 2 features.*\(5, 3\)"),
        (dict(h=jnp.ones((0, 2)), x=jnp.ones((0, 3)), v=jnp.ones((0, 3))), r"empty graph"),
        (dict(x=jnp.ones((5, 3), jnp.int32)), r"x must be a floating-point array"),
        (dict(senders=jnp.array([0, 1])), r"senders and receivers go together"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(change, match):
    cfg, params, h, x, v, a = _base()
    kw = dict(h=h, x=x, v=v, edge_attr=a) | change
    with pytest.raises(ValueError, match=match):
        egnn_jax.apply(params, cfg, **kw)


def test_sparse_bad_indices_raise_value_error_eagerly():
    cfg, params, h, x, v, _ = _base()
    s = jnp.array([0, 1, 7], jnp.int32)
    r = jnp.array([1, 2, 3], jnp.int32)
    with pytest.raises(ValueError, match=r"senders has indices in \[0, 7\], outside \[0, 5\)"):
        egnn_jax.apply(params, cfg, h, x, v=v, edge_attr=jnp.ones((3, 2)), senders=s, receivers=r)
    with pytest.raises(ValueError, match=r"senders and receivers must have the same shape"):
        egnn_jax.apply(
            params, cfg, h, x, v=v, edge_attr=jnp.ones((3, 2)), senders=s % 5, receivers=r[:2]
        )


def test_sparse_bad_indices_raise_inside_jit():
    cfg, params, h, x, v, _ = _base()
    s = jnp.array([0, 1, 7], jnp.int32)
    r = jnp.array([1, 2, 3], jnp.int32)
    f = jax.jit(
        lambda s, r: egnn_jax.apply(
            params, cfg, h, x, v=v, edge_attr=jnp.ones((3, 2)), senders=s, receivers=r
        )
    )
    with pytest.raises(Exception, match="senders index out of range"):
        jax.block_until_ready(f(s, r))


def test_mixed_dtypes_are_rejected():
    cfg, params, h, x, v, a = _base()
    with jax.enable_x64(True):
        with pytest.raises(ValueError, match="must share one dtype"):
            egnn_jax.apply(params, cfg, h, x.astype(jnp.float64), v=v, edge_attr=a)


# ---------------------------------------------------------------- README


def test_readme_example_runs():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    example = [b for b in blocks if "egnn_jax.apply" in b]
    assert example, "README has no python example calling egnn_jax.apply"
    exec(compile(example[0], "README.md", "exec"), {})


@pytest.mark.parametrize(
    "sparse",
    [pytest.param(False, marks=pytest.mark.slow), True],  # dense: 14 s
)
def test_rematerialised_layers_compute_the_same_values_and_gradients(sparse):
    """`EGNNConfig(remat=True)` recomputes each layer in the backward pass: same numbers."""
    with jax.enable_x64(True):
        k1, k2 = jax.random.split(jax.random.key(4))
        x = jax.random.normal(k1, (12, 3), jnp.float64)
        h = jax.random.normal(k2, (12, 2), jnp.float64)
        kw = {"v": 0.5 * x}
        if sparse:
            g = egnn_jax.radius_graph(x, 1.5, capacity=200)
            kw |= {"senders": g.senders, "receivers": g.receivers, "edge_mask": g.edge_mask}
        else:
            kw |= {"node_mask": jnp.arange(12) < 10}
        config = egnn_jax.EGNNConfig(16, 3, velocity=True, coords_weight_gain=1.0)
        remat = dataclasses.replace(config, remat=True)
        params = egnn_jax.init(jax.random.key(0), config, h, x, **kw)
        assert jax.tree.structure(egnn_jax.init(jax.random.key(0), remat, h, x, **kw)) == (
            jax.tree.structure(params)
        )

        def loss(p, c):
            h_out, x_out = egnn_jax.apply(p, c, h, x, **kw)
            return jnp.sum(x_out**2) + jnp.sum(h_out**2)

        (l1, g1), (l2, g2) = (jax.value_and_grad(loss)(params, c) for c in (config, remat))
        np.testing.assert_allclose(l2, l1, rtol=1e-13)
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


_BOUNDED = dict(tanh=True, coords_range=2.0, coords_clamp=0.05, normalize="clean")


@pytest.mark.parametrize(
    "edge_chunk_size, remat, options",
    [
        # One edge per chunk: 400 scan steps to compile and run; `make test-slow`.
        pytest.param(1, False, {}, marks=pytest.mark.slow),
        (7, False, {}),
        (64, False, _BOUNDED),
        (399, False, {}),  # two chunks of 200 (E = 400); 400 is the one-pass path
        (7, True, {}),
    ],
)
def test_edge_chunks_compute_the_same_values_and_gradients(edge_chunk_size, remat, options):
    """`EGNNConfig(edge_chunk_size=C)` only reorders the sums: values and gradients (of the
    parameters, positions, features and edge attributes) equal the one-pass layer's, with a
    periodic box, masked filler edges, edge attributes and the per-edge options on (attention
    and edge inference; then either the `"nbody"` normalisation or the bounded updates:
    tanh, the clamp, active on some edges, and `"clean"` unit directions)."""
    side = 3.0
    with jax.enable_x64(True):
        k1, k2, k3 = jax.random.split(jax.random.key(6), 3)
        x = jax.random.uniform(k1, (20, 3), jnp.float64) * side
        h = jax.random.normal(k2, (20, 2), jnp.float64)
        g = egnn_jax.radius_graph(x, 1.2, capacity=400, box=side)
        assert not bool(g.overflow) and int(g.num_edges) < 400  # so some edges are masked
        attr = jax.random.normal(k3, (400, 2), jnp.float64)
        kw = dict(senders=g.senders, receivers=g.receivers, edge_mask=g.edge_mask, box=side)
        config = egnn_jax.EGNNConfig(
            16,
            2,
            velocity=True,
            attention=True,
            edge_inference=True,
            coords_weight_gain=1.0,
            remat=remat,
            **({"normalize": "nbody"} | options),
        )
        chunked = dataclasses.replace(config, edge_chunk_size=edge_chunk_size)
        params = egnn_jax.init(jax.random.key(0), config, h, x, 0.5 * x, attr, **kw)
        assert jax.tree.structure(
            egnn_jax.init(jax.random.key(0), chunked, h, x, 0.5 * x, attr, **kw)
        ) == jax.tree.structure(params)

        def loss(p, h, x, attr, c):
            h_out, x_out = egnn_jax.apply(p, c, h, x, 0.5 * x, attr, **kw)
            return jnp.sum(jnp.sin(x_out)) + jnp.sum(h_out**2)

        grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
        (l1, g1), (l2, g2) = (grad(params, h, x, attr, c) for c in (config, chunked))
        np.testing.assert_allclose(l2, l1, rtol=1e-12)
        for grads in (g1, g2):  # masked edges: no gradient reaches their attributes
            assert float(jnp.max(jnp.abs(grads[3][int(g.num_edges) :]))) == 0.0
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("edge_chunk_size", [None, 5])
def test_masked_edges_between_real_nodes_count_for_nothing(edge_chunk_size):
    """Masked edges that join real nodes (not padding) change no value or gradient: the
    layer equals the one on the list without them, one pass or in chunks."""
    with jax.enable_x64(True):
        k1, k2, k3 = jax.random.split(jax.random.key(9), 3)
        x = jax.random.normal(k1, (7, 3), jnp.float64)
        h = jax.random.normal(k2, (7, 2), jnp.float64)
        senders, receivers = egnn_jax.complete_graph_edges(7)
        keep = jax.random.bernoulli(k3, 0.6, senders.shape)
        kept = np.flatnonzero(np.asarray(keep))
        config = egnn_jax.EGNNConfig(
            8, 2, velocity=True, coords_weight_gain=1.0, edge_chunk_size=edge_chunk_size
        )
        masked = dict(senders=senders, receivers=receivers, edge_mask=keep)
        compact = dict(senders=senders[kept], receivers=receivers[kept])
        params = egnn_jax.init(jax.random.key(0), config, h, x, 0.5 * x, **masked)

        def loss(p, x, kw):
            h_out, x_out = egnn_jax.apply(p, config, h, x, 0.5 * x, **kw)
            return jnp.sum(jnp.sin(x_out)) + jnp.sum(h_out**2)

        grad = jax.value_and_grad(loss, argnums=(0, 1))
        (l1, g1), (l2, g2) = grad(params, x, compact), grad(params, x, masked)
        np.testing.assert_allclose(l2, l1, rtol=1e-12)
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


def test_edge_chunks_compose_with_vmap():
    """A batch of graphs with one edge list (vmap over positions and features)."""
    with jax.enable_x64(True):
        k1, k2 = jax.random.split(jax.random.key(8))
        x = jax.random.normal(k1, (3, 6, 3), jnp.float64)
        h = jax.random.normal(k2, (3, 6, 2), jnp.float64)
        senders, receivers = egnn_jax.complete_graph_edges(6)
        mask = jnp.arange(30) % 4 != 0
        config = egnn_jax.EGNNConfig(8, 2, coords_weight_gain=1.0)
        chunked = dataclasses.replace(config, edge_chunk_size=4)
        kw = dict(senders=senders, receivers=receivers, edge_mask=mask)
        params = egnn_jax.init(jax.random.key(0), config, h[0], x[0], **kw)
        run = lambda c: jax.vmap(lambda h, x: egnn_jax.apply(params, c, h, x, **kw))(h, x)
        for want, got in zip(run(config), run(chunked), strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def test_edge_chunks_keep_only_one_chunk_of_edge_activations():
    """The point of chunks: the compiled gradient's temporaries stop growing with E."""
    n = 2000
    x = jax.random.uniform(jax.random.key(0), (n, 3)) * n ** (1 / 3)
    g = egnn_jax.radius_graph(x, 1.5, capacity=20 * n, box=n ** (1 / 3))
    h = jnp.ones((n, 1))
    kw = dict(senders=g.senders, receivers=g.receivers, edge_mask=g.edge_mask)

    def temporaries(config):
        params = egnn_jax.init(jax.random.key(0), config, h, x, **kw)

        def loss(p):
            h_out, x_out = egnn_jax.apply(p, config, h, x, **kw)
            return jnp.sum(h_out**2) + jnp.sum(x_out**2)

        compiled = jax.jit(jax.grad(loss)).lower(params).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain = temporaries(egnn_jax.EGNNConfig(32, 2))
    chunked = temporaries(egnn_jax.EGNNConfig(32, 2, edge_chunk_size=1024))
    # One [E, 32] float32 edge array alone is 5 MB here; the plain layer keeps ~dozen per layer.
    assert plain > 40 * 2**20
    assert chunked < plain / 8, (plain, chunked)


def test_edge_chunks_are_for_edge_lists_and_positive_ints():
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValueError, match="edge_chunk_size"):
            egnn_jax.EGNNConfig(edge_chunk_size=bad)
    assert egnn_jax.EGNNConfig(edge_chunk_size=np.int64(8)).edge_chunk_size == 8
    cfg, params, h, x, v, a = _base()
    chunked = dataclasses.replace(cfg, edge_chunk_size=4)
    with pytest.raises(ValueError, match="dense graph"):
        egnn_jax.apply(params, chunked, h, x, v=v, edge_attr=a)
