"""FastEGNN (`egnn_jax.fastegnn`), its reduced graph (`egnn_jax.shortest_edges`) and MMD loss."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import egnn_jax
from egnn_jax.testing import assert_equivariant, random_orthogonal

CONFIG = egnn_jax.FastEGNNConfig(hidden_features=16, num_layers=2, virtual_channels=3)


@pytest.fixture(autouse=True)
def _x64():
    """float64 available (each test picks its dtype explicitly; float32 stays float32)."""
    with jax.enable_x64(True):
        yield


def _system(dtype, n=9, pad=0):
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    x = 2.0 * jax.random.normal(k1, (n, 3), dtype)
    v = jax.random.normal(k2, (n, 3), dtype)
    q = jnp.where(jax.random.bernoulli(k3, 0.5, (n, 1)), 1.0, -1.0).astype(dtype)
    h = jnp.concatenate([jnp.linalg.norm(v, axis=-1, keepdims=True), q], -1)
    d = jnp.linalg.norm(x[:, None] - x[None], axis=-1)
    a = jnp.stack([d, q * q[:, 0][None]], -1)
    if pad:
        x = jnp.concatenate([x, jnp.full((pad, 3), 5.0, dtype)])
        v = jnp.concatenate([v, jnp.ones((pad, 3), dtype)])
        h = jnp.concatenate([h, jnp.ones((pad, 2), dtype)])
        a = jnp.pad(a, ((0, pad), (0, pad), (0, 0)), constant_values=2.0)
    return h, x, v, a, jnp.arange(n + pad) < n


COORD_HEADS = ("coord_out", "virtual_coord_out", "virtual_position_out")


def _params(dtype, config=CONFIG, **kw):
    h, x, v, a, _ = _system(dtype)
    params = egnn_jax.fastegnn.init(jax.random.key(0), config, h, x, v=v, edge_attr=a)
    # Trained coordinate heads are not 1e-3 small: scale them so that every term of the
    # position updates shows in the checks.
    return jax.tree_util.tree_map_with_path(
        lambda path, p: p * 300 if str(path[-2].key) in COORD_HEADS else p,
        params,
    )


def _virtual_invariants(out):
    """Per-node invariants of the virtual nodes: their features and distances to x_i."""
    d = jnp.linalg.norm(out.x[:, None, :] - out.virtual_x[None], axis=-1)
    vh = jnp.broadcast_to(out.virtual_h.reshape(1, -1), (out.x.shape[0], out.virtual_h.size))
    return jnp.concatenate([out.h, d, vh], -1)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_equivariant_dense_and_sparse(dtype):
    params = _params(dtype)
    h, x, v, a, _ = _system(dtype)

    def dense(h, x, v=None, edge_attr=None):
        out = egnn_jax.fastegnn.apply(params, CONFIG, h, x, v=v, edge_attr=edge_attr)
        return _virtual_invariants(out), out.x

    assert_equivariant(dense, jax.random.key(1), h, x, v=v, edge_attr=a)

    edges = egnn_jax.shortest_edges(x, 0.5)
    a_sparse = a[edges.receivers, edges.senders]

    def sparse(h, x, v=None, edge_attr=None, senders=None, receivers=None):
        out = egnn_jax.fastegnn.apply(
            params, CONFIG, h, x, v=v, edge_attr=edge_attr, senders=senders, receivers=receivers
        )
        return _virtual_invariants(out), out.x

    assert_equivariant(
        sparse,
        jax.random.key(2),
        h,
        x,
        v=v,
        edge_attr=a_sparse,
        senders=edges.senders,
        receivers=edges.receivers,
    )


def test_virtual_positions_equivariant_and_start_at_centre():
    dtype = jnp.float64
    params = _params(dtype)
    h, x, v, a, _ = _system(dtype)
    q = random_orthogonal(jax.random.key(5), 3, dtype)
    t = jnp.asarray([[0.3, -1.2, 2.0]], dtype)
    out = egnn_jax.fastegnn.apply(params, CONFIG, h, x, v=v, edge_attr=a)
    moved = egnn_jax.fastegnn.apply(params, CONFIG, h, x @ q.T + t, v=v @ q.T, edge_attr=a)
    np.testing.assert_allclose(moved.virtual_x, out.virtual_x @ q.T + t, atol=1e-10)
    np.testing.assert_allclose(moved.virtual_h, out.virtual_h, atol=1e-10)
    # Distinct roles: the virtual nodes leave the centre of mass in different directions.
    gaps = np.linalg.norm(
        np.asarray(out.virtual_x)[:, None] - np.asarray(out.virtual_x)[None], axis=-1
    )
    assert gaps[~np.eye(3, dtype=bool)].min() > 1e-3


def test_dense_equals_sparse_complete_graph():
    dtype = jnp.float64
    params = _params(dtype)
    h, x, v, a, _ = _system(dtype)
    senders, receivers = egnn_jax.complete_graph_edges(x.shape[0])
    dense = egnn_jax.fastegnn.apply(params, CONFIG, h, x, v=v, edge_attr=a)
    sparse = egnn_jax.fastegnn.apply(
        params,
        CONFIG,
        h,
        x,
        v=v,
        edge_attr=egnn_jax.dense_to_sparse_edge_attr(a),
        senders=senders,
        receivers=receivers,
    )
    for got, want in zip(sparse, dense, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(  # 36 edges: 8 chunks of 5 (`make test-slow`), or 2 of 18
    "edge_chunk_size", [pytest.param(5, marks=pytest.mark.slow), 35]
)
def test_edge_chunks_compute_the_same_values_and_gradients(edge_chunk_size):
    """`FastEGNNConfig(edge_chunk_size=C)` reorders the real-real sums only (float64)."""
    config = dataclasses.replace(CONFIG, attention=True, normalize=True, tanh=True)
    chunked = dataclasses.replace(config, edge_chunk_size=edge_chunk_size)
    h, x, v, a, _ = _system(jnp.float64)
    e = egnn_jax.shortest_edges(x, 0.5)  # the shortest half of the complete graph's edges
    attr = a[e.receivers, e.senders]
    mask = e.edge_mask & (jnp.arange(e.senders.shape[0]) % 5 != 0)  # and some masked
    kw = dict(senders=e.senders, receivers=e.receivers, edge_mask=mask)
    params = egnn_jax.fastegnn.init(jax.random.key(0), config, h, x, v, attr, **kw)

    def loss(p, x, attr, c):
        out = egnn_jax.fastegnn.apply(p, c, h, x, v, attr, **kw)
        return jnp.sum(out.h**2) + jnp.sum(jnp.sin(out.x)) + jnp.sum(out.virtual_x**2)

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
    (l1, g1), (l2, g2) = (grad(params, x, attr, c) for c in (config, chunked))
    np.testing.assert_allclose(l2, l1, rtol=1e-12)
    for want, got in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="dense graph"):
        egnn_jax.fastegnn.apply(params, chunked, h, x, v, a)
    with pytest.raises(ValueError, match="edge_chunk_size"):
        dataclasses.replace(CONFIG, edge_chunk_size=0)


@pytest.mark.parametrize("sparse", [False, True])
def test_padding_nodes_change_nothing(sparse):
    dtype = jnp.float64
    params = _params(dtype)
    n, pad = 9, 4
    h, x, v, a, _ = _system(dtype, n)
    hp, xp, vp, ap, mask = _system(dtype, n, pad)
    want = egnn_jax.fastegnn.apply(params, CONFIG, h, x, v=v, edge_attr=a)
    if sparse:
        e_ref = egnn_jax.shortest_edges(x, 0.5)
        # The same real edges, then filler edges between padding nodes, masked out.
        filler = jnp.array([n, n + 1, n + 2], jnp.int32)
        e = e_ref._replace(
            senders=jnp.concatenate([e_ref.senders, filler]),
            receivers=jnp.concatenate([e_ref.receivers, filler[::-1]]),
            edge_mask=jnp.concatenate([e_ref.edge_mask, jnp.zeros(3, bool)]),
        )
        want = egnn_jax.fastegnn.apply(
            params,
            CONFIG,
            h,
            x,
            v=v,
            edge_attr=a[e_ref.receivers, e_ref.senders],
            senders=e_ref.senders,
            receivers=e_ref.receivers,
        )
        got = egnn_jax.fastegnn.apply(
            params,
            CONFIG,
            hp,
            xp,
            v=vp,
            edge_attr=ap[e.receivers, e.senders],
            node_mask=mask,
            senders=e.senders,
            receivers=e.receivers,
            edge_mask=e.edge_mask,
        )
    else:
        got = egnn_jax.fastegnn.apply(params, CONFIG, hp, xp, v=vp, edge_attr=ap, node_mask=mask)
    np.testing.assert_allclose(got.x[:n], want.x, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.h[:n], want.h, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.virtual_x, want.virtual_x, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.virtual_h, want.virtual_h, rtol=1e-10, atol=1e-12)


def _reference_layer(p, h, x, v, a, z, s, silu=lambda t: t / (1 + np.exp(-t))):
    """The reference `E_GCL_vel.forward` (GLAD-RUC/FastEGNN `models/FastEGNN.py`) for one graph,
    written with its concatenations and per-edge MLPs in float64 NumPy (complete graph)."""
    lin = lambda name, t: (
        t @ np.asarray(p[name]["kernel"])
        + (np.asarray(p[name]["bias"]) if "bias" in p[name] else 0.0)
    )
    m_count, c = x.shape[0], z.shape[0]
    row, col = np.nonzero(~np.eye(m_count, dtype=bool))  # row: receiver i, col: sender j
    coord_diff = x[row] - x[col]
    radial = np.sum(coord_diff**2, 1, keepdims=True)
    edge = silu(
        lin(
            "edge_out",
            silu(lin("edge_in", np.concatenate([h[row], h[col], radial, a[row, col]], 1))),
        )
    )
    vdiff = z[None, :, :] - x[:, None, :]  # [M, C, 3]: (X - x)
    vradial = np.linalg.norm(vdiff, axis=-1, keepdims=True)  # [M, C, 1]
    m_x = (z - x.mean(0)) @ (z - x.mean(0)).T  # [C, C]
    vin = np.concatenate(
        [
            np.repeat(h[:, None], c, 1),
            np.repeat(s[None], m_count, 0),
            vradial,
            np.repeat(m_x[None], m_count, 0),
        ],
        -1,
    )
    vedge = silu(lin("virtual_edge_out", silu(lin("virtual_edge_in", vin))))  # [M, C, H]
    coord_mlp = lambda name, t: (
        silu(lin(f"{name}_hidden", t)) @ np.asarray(p[f"{name}_out"]["kernel"])
    )
    trans = coord_diff * coord_mlp("coord", edge)
    agg = np.zeros_like(x)
    np.add.at(agg, row, trans)
    x_new = x + agg / (m_count - 1)
    x_new = x_new + np.mean(-vdiff * coord_mlp("virtual_coord", vedge), axis=1)
    x_new = x_new + lin("vel_out", silu(lin("vel_hidden", h))) * v
    z_new = z + np.mean(vdiff * coord_mlp("virtual_position", vedge), axis=0)
    msg = np.zeros((m_count, edge.shape[1]))
    np.add.at(msg, row, edge)
    msg = msg / (m_count - 1)
    node_in = np.concatenate([h, msg, vedge.reshape(m_count, -1)], 1)
    h_new = h + lin("node_out", silu(lin("node_hidden", node_in)))
    s_new = s + lin(
        "virtual_node_out", silu(lin("virtual_node_hidden", np.concatenate([s, vedge.mean(0)], 1)))
    )
    return h_new, x_new, s_new, z_new


def test_matches_a_transcription_of_the_reference_equations():
    dtype = jnp.float64
    params = _params(dtype)
    h, x, v, a, _ = _system(dtype)
    tree = jax.tree.map(np.asarray, params["params"])
    hn = np.asarray(h) @ tree["embedding"]["kernel"] + tree["embedding"]["bias"]
    xn, vn, an = np.asarray(x), np.asarray(v), np.asarray(a)
    z = np.repeat(xn.mean(0)[None], CONFIG.virtual_channels, 0)
    s = tree["virtual_features"]
    for i in range(CONFIG.num_layers):
        hn, xn, s, z = _reference_layer(tree[f"layer_{i}"], hn, xn, vn, an, z, s)
    out = egnn_jax.fastegnn.apply(params, CONFIG, h, x, v=v, edge_attr=a)
    for got, want in ((out.h, hn), (out.x, xn), (out.virtual_h, s), (out.virtual_x, z)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("box", [None, 6.0])
def test_shortest_edges_match_a_brute_force_search(box):
    rng = np.random.default_rng(0)
    m = 23
    x = rng.uniform(0, 6, (m, 3))
    mask = np.arange(m) < 20
    e = egnn_jax.shortest_edges(jnp.asarray(x), 0.3, node_mask=jnp.asarray(mask), box=box)
    count = int(m * (m - 1) * 0.3)
    assert e.senders.shape == (count,) and not bool(e.overflow)
    d = x[:, None] - x[None]
    if box is not None:
        d = d - box * np.round(d / box)
    d = np.linalg.norm(d, axis=-1)
    real = mask[:, None] & mask[None] & ~np.eye(m, dtype=bool)
    lengths = np.sort(d[real])
    kept = np.asarray(e.edge_mask)
    assert kept.sum() == min(count, real.sum())
    r, s = np.asarray(e.receivers)[kept], np.asarray(e.senders)[kept]
    assert mask[r].all() and mask[s].all() and (r != s).all()
    assert len(set(zip(r, s, strict=True))) == kept.sum()
    np.testing.assert_allclose(np.sort(d[r, s]), lengths[: kept.sum()])
    assert (np.diff(r) >= 0).all()  # by receiver, for segment sums


def test_shortest_edges_errors():
    x = jnp.zeros((4, 3))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="keep_fraction"):
            egnn_jax.shortest_edges(x, bad)
    with pytest.raises(ValueError, match="keeps no edge"):
        egnn_jax.shortest_edges(x, 0.01)


def _mmd_numpy(x, z, sigma):
    k = lambda a, b: np.exp(-np.linalg.norm(a[:, None] - b[None], axis=-1) / (2 * sigma**2))
    return k(z, z).mean() - 2 * k(x, z).mean()


def test_mmd_loss_matches_the_reference_formula():
    rng = np.random.default_rng(1)
    x, z = rng.normal(size=(7, 3)), rng.normal(size=(3, 3))
    got = egnn_jax.fastegnn.mmd_loss(
        jax.random.key(0), jnp.asarray(x), jnp.asarray(z), num_samples=7
    )
    np.testing.assert_allclose(got, _mmd_numpy(x, z, 1.5), rtol=1e-12)
    # Padding nodes are never drawn, even when fewer real nodes remain than samples.
    mask = np.arange(7) < 4
    x_far = np.where(mask[:, None], x, 1e3)
    for seed in range(5):
        got = egnn_jax.fastegnn.mmd_loss(
            jax.random.key(seed), jnp.asarray(x_far), jnp.asarray(z), node_mask=jnp.asarray(mask)
        )
        np.testing.assert_allclose(got, _mmd_numpy(x[:4], z, 1.5), rtol=1e-12)
    # A random draw of S < M nodes is one of the subsets, and the gradient is finite.
    grad = jax.grad(
        lambda z: egnn_jax.fastegnn.mmd_loss(jax.random.key(0), jnp.asarray(x), z, num_samples=3)
    )(jnp.asarray(np.repeat(z[:1], 3, 0)))
    assert np.isfinite(np.asarray(grad)).all()


def test_training_on_the_mmd_alone_brings_the_point_sets_together():
    """The MMD regulariser has a gradient and training on it alone lowers it, by bringing
    the real nodes' predicted positions and the virtual nodes together (in training the
    task loss keeps the real nodes where they belong)."""
    dtype = jnp.float32
    params = _params(dtype)
    h, x, v, a, _ = _system(dtype)

    def loss(p):
        out = egnn_jax.fastegnn.apply(p, CONFIG, h, x, v=v, edge_attr=a)
        return egnn_jax.fastegnn.mmd_loss(jax.random.key(0), out.x, out.virtual_x, num_samples=9)

    def gap(p):  # mean distance from a real node to its nearest virtual node
        out = egnn_jax.fastegnn.apply(p, CONFIG, h, x, v=v, edge_attr=a)
        d = jnp.linalg.norm(out.x[:, None, :] - out.virtual_x[None, :, :], axis=-1)
        return float(jnp.mean(jnp.min(d, axis=1)))

    grads = jax.grad(loss)(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    optimiser = optax.adam(1e-2)
    state = optimiser.init(params)
    step = jax.jit(lambda p, s: _adam_step(optimiser, loss, p, s))
    trained = params
    for _ in range(30):
        trained, state = step(trained, state)
    assert float(loss(trained)) < float(loss(params)) - 0.5
    assert gap(trained) < 0.1 * gap(params)


def _adam_step(optimiser, loss, params, state):
    updates, state = optimiser.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state


def test_errors_name_the_problem():
    dtype = jnp.float32
    params = _params(dtype)
    h, x, v, a, _ = _system(dtype)
    with pytest.raises(TypeError, match="FastEGNNConfig"):
        egnn_jax.fastegnn.apply(params, egnn_jax.EGNNConfig(), h, x, v=v, edge_attr=a)
    other = dataclasses.replace(CONFIG, virtual_channels=4)
    with pytest.raises(ValueError, match="virtual channels"):
        egnn_jax.fastegnn.apply(params, other, h, x, v=v, edge_attr=a)
    with pytest.raises(ValueError, match="layers"):
        egnn_jax.fastegnn.apply(
            params, dataclasses.replace(CONFIG, num_layers=3), h, x, v=v, edge_attr=a
        )
    with pytest.raises(ValueError, match="v .* is required"):
        egnn_jax.fastegnn.apply(params, CONFIG, h, x, edge_attr=a)
    with pytest.raises(ValueError, match="edge_mask is for sparse"):
        egnn_jax.fastegnn.apply(params, CONFIG, h, x, v=v, edge_attr=a, edge_mask=jnp.ones(3, bool))
    with pytest.raises(ValueError, match="node_mask"):
        egnn_jax.fastegnn.apply(
            params,
            CONFIG,
            h,
            x,
            v=v,
            edge_attr=a[:2, 0],
            senders=jnp.array([0, 1]),
            receivers=jnp.array([1, 0]),
            node_mask=jnp.ones(3, bool),
        )
    with pytest.raises(ValueError, match="empty graph"):
        egnn_jax.fastegnn.apply(params, CONFIG, h[:0], x[:0], v=v[:0])
    with pytest.raises(ValueError, match="virtual_channels"):
        egnn_jax.FastEGNNConfig(virtual_channels=0)


def test_vmap_and_jit_compose():
    dtype = jnp.float32
    params = _params(dtype)
    h, x, v, a, _ = _system(dtype)
    batch = jax.tree.map(lambda t: jnp.stack([t, t * 1.1]), (h, x, v, a))

    @jax.jit
    def predict(h, x, v, a):
        e = egnn_jax.shortest_edges(x, 0.5)
        return egnn_jax.fastegnn.apply(
            params,
            CONFIG,
            h,
            x,
            v=v,
            edge_attr=a[e.receivers, e.senders],
            senders=e.senders,
            receivers=e.receivers,
            edge_mask=e.edge_mask,
        ).x

    got = jax.vmap(predict)(*batch)
    np.testing.assert_allclose(got[0], predict(h, x, v, a), rtol=1e-5, atol=1e-6)


def _packable(dtype, sizes):
    """Graphs of the given sizes (their shortest half of edges) as `egnn_jax.Graph`s."""
    graphs = []
    for n in sizes:
        h, x, v, a, _ = _system(dtype, n)
        e = egnn_jax.shortest_edges(x, 0.5)
        keep = np.asarray(e.edge_mask)
        s, r = np.asarray(e.senders)[keep], np.asarray(e.receivers)[keep]
        graphs.append(egnn_jax.Graph(h=h, x=x, v=v, senders=s, receivers=r, edge_attr=a[r, s]))
    return graphs


def _packed_kw(b):
    return dict(
        v=b.v,
        edge_attr=b.edge_attr,
        node_mask=b.node_mask,
        senders=b.senders,
        receivers=b.receivers,
        edge_mask=b.edge_mask,
        node_graph=b.node_graph,
        graph_mask=b.graph_mask,
    )


def test_a_packed_batch_equals_its_graphs_one_by_one():
    dtype = jnp.float64
    params = _params(dtype)
    graphs = _packable(dtype, (5, 9, 7))
    b = egnn_jax.pack_graphs(graphs, max_nodes=25, max_edges=80, max_graphs=5)
    got = egnn_jax.fastegnn.apply(params, CONFIG, b.h, b.x, **_packed_kw(b))
    assert got.virtual_x.shape == (5, CONFIG.virtual_channels, 3)
    assert got.virtual_h.shape == (5, CONFIG.virtual_channels, CONFIG.hidden_features)
    for i, (g, x_i, h_i) in enumerate(zip(graphs, b.unpack(got.x), b.unpack(got.h), strict=True)):
        want = egnn_jax.fastegnn.apply(
            params,
            CONFIG,
            g.h,
            g.x,
            v=g.v,
            edge_attr=g.edge_attr,
            senders=jnp.asarray(g.senders),
            receivers=jnp.asarray(g.receivers),
        )
        np.testing.assert_allclose(x_i, want.x, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(h_i, want.h, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got.virtual_x[i], want.virtual_x, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got.virtual_h[i], want.virtual_h, rtol=1e-10, atol=1e-12)


def test_a_packed_batch_mmd_is_the_mean_over_its_real_graphs():
    dtype = jnp.float64
    params = _params(dtype)
    graphs = _packable(dtype, (5, 9, 7))
    b = egnn_jax.pack_graphs(graphs, max_nodes=25, max_edges=80, max_graphs=5)
    out = egnn_jax.fastegnn.apply(params, CONFIG, b.h, b.x, **_packed_kw(b))
    # More samples than any graph has nodes: every real node is drawn, so the draw is exact.
    got = egnn_jax.fastegnn.mmd_loss(
        jax.random.key(1),
        out.x,
        out.virtual_x,
        num_samples=12,
        node_mask=b.node_mask,
        node_graph=b.node_graph,
        graph_mask=b.graph_mask,
    )
    want = [
        egnn_jax.fastegnn.mmd_loss(jax.random.key(2), x_i, out.virtual_x[i], num_samples=12)
        for i, x_i in enumerate(b.unpack(out.x))
    ]
    np.testing.assert_allclose(got, np.mean(want), rtol=1e-12)
    # Padding graphs do not count: their virtual nodes alone would give a loss of 1.
    everything = egnn_jax.fastegnn.mmd_loss(
        jax.random.key(1),
        out.x,
        out.virtual_x,
        num_samples=12,
        node_mask=b.node_mask,
        node_graph=b.node_graph,
    )
    assert not np.isclose(everything, got)


def test_a_packed_batch_trains_without_recompiling():
    dtype = jnp.float32
    params = _params(dtype)
    batches = [
        egnn_jax.pack_graphs(_packable(dtype, sizes), max_nodes=25, max_edges=80, max_graphs=5)
        for sizes in ((5, 9, 7), (8, 6))
    ]
    optimiser = optax.adam(1e-3)
    traces = []

    @jax.jit
    def step(params, state, b):
        traces.append(1)

        def loss(p):
            out = egnn_jax.fastegnn.apply(p, CONFIG, b.h, b.x, **_packed_kw(b))
            err = jnp.where(b.node_mask[:, None], out.x - b.x - b.v, 0.0)
            mmd = egnn_jax.fastegnn.mmd_loss(
                jax.random.key(0),
                out.x,
                out.virtual_x,
                node_mask=b.node_mask,
                node_graph=b.node_graph,
                graph_mask=b.graph_mask,
            )
            return jnp.sum(err**2) / jnp.sum(b.node_mask) + 0.01 * mmd

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = optimiser.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    state = optimiser.init(params)
    for b in batches:
        params, state, value = step(params, state, b)
        assert np.isfinite(value)
    assert len(traces) == 1


def test_packed_batch_errors():
    dtype = jnp.float32
    params = _params(dtype)
    b = egnn_jax.pack_graphs(_packable(dtype, (5, 9)), max_nodes=16, max_edges=60, max_graphs=3)
    kw = _packed_kw(b)
    with pytest.raises(ValueError, match="go together"):
        egnn_jax.fastegnn.apply(params, CONFIG, b.h, b.x, **{**kw, "graph_mask": None})
    with pytest.raises(ValueError, match="node_graph must be an int array"):
        egnn_jax.fastegnn.apply(
            params, CONFIG, b.h, b.x, **{**kw, "node_graph": b.node_graph.astype(jnp.float32)}
        )
    with pytest.raises(ValueError, match="outside"):
        egnn_jax.fastegnn.apply(params, CONFIG, b.h, b.x, **{**kw, "node_graph": b.node_graph + 1})
    h, x, v, a, _ = _system(dtype)
    with pytest.raises(ValueError, match="dense graph"):
        egnn_jax.fastegnn.apply(
            params,
            CONFIG,
            h,
            x,
            v=v,
            edge_attr=a,
            node_graph=jnp.zeros(h.shape[0], jnp.int32),
            graph_mask=jnp.ones(1, bool),
        )
    with pytest.raises(ValueError, match="graph_mask goes with node_graph"):
        egnn_jax.fastegnn.mmd_loss(jax.random.key(0), x, x[:3], graph_mask=jnp.ones(1, bool))

    # Under jit the graph indices are only known at run time: a clear error, not a clamp.
    @jax.jit
    def run(node_graph):
        return egnn_jax.fastegnn.apply(
            params, CONFIG, b.h, b.x, **{**kw, "node_graph": node_graph}
        ).x

    with pytest.raises(Exception, match="node_graph out of range"):
        jax.block_until_ready(run(b.node_graph + 1))
