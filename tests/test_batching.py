"""Packing graphs of different sizes into one padded edge list (`egnn_jax.pack_graphs`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import egnn_jax


def _graph(rng, n, dtype=np.float64, with_attr=True):
    pairs = [(j, i) for i in range(n) for j in range(n) if i != j and rng.random() < 0.7]
    senders = np.array([p[0] for p in pairs], np.int32)
    receivers = np.array([p[1] for p in pairs], np.int32)
    return egnn_jax.Graph(
        h=rng.normal(size=(n, 3)).astype(dtype),
        x=rng.normal(size=(n, 3)).astype(dtype),
        senders=senders,
        receivers=receivers,
        v=rng.normal(size=(n, 3)).astype(dtype),
        edge_attr=rng.normal(size=(len(pairs), 2)).astype(dtype) if with_attr else None,
    )


def _apply(params, config, g, edge_mask=None):
    return egnn_jax.apply(
        params,
        config,
        jnp.asarray(g.h),
        jnp.asarray(g.x),
        v=jnp.asarray(g.v),
        edge_attr=jnp.asarray(g.edge_attr),
        senders=jnp.asarray(g.senders),
        receivers=jnp.asarray(g.receivers),
        edge_mask=edge_mask,
    )


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_packed_graphs_give_each_graph_its_own_result(dtype, tol):
    with jax.enable_x64(dtype == np.float64):
        rng = np.random.default_rng(0)
        graphs = [_graph(rng, n, dtype) for n in (3, 6, 1, 4)]
        config = egnn_jax.EGNNConfig(hidden_features=16, num_layers=2, velocity=True)
        params = egnn_jax.init(
            jax.random.key(0),
            config,
            *(jnp.asarray(a) for a in graphs[0][:2]),
            v=jnp.asarray(graphs[0].v),
            edge_attr=jnp.asarray(graphs[0].edge_attr),
            senders=jnp.asarray(graphs[0].senders),
            receivers=jnp.asarray(graphs[0].receivers),
        )
        batch = egnn_jax.pack_graphs(graphs, max_nodes=20, max_edges=60, max_graphs=6)
        assert batch.h.shape == (20, 3) and batch.senders.shape == (60,)
        assert batch.graph_mask.tolist() == [True] * 4 + [False] * 2
        assert int(batch.node_mask.sum()) == 14 and batch.nodes_per_graph[4] == 6
        h, x = _apply(params, config, batch, batch.edge_mask)
        assert np.all(np.isfinite(h)) and np.all(np.isfinite(x))
        for g, h_g, x_g in zip(graphs, batch.unpack(h), batch.unpack(x), strict=True):
            h_ref, x_ref = _apply(params, config, g)
            np.testing.assert_allclose(h_g, h_ref, rtol=tol, atol=tol)
            np.testing.assert_allclose(x_g, x_ref, rtol=tol, atol=tol)
        # Graph readouts see only their own real nodes.
        sums = batch.sum_per_graph(x)
        means = batch.mean_per_graph(jnp.asarray(batch.h))
        for k, g in enumerate(graphs):
            np.testing.assert_allclose(sums[k], np.sum(batch.unpack(x)[k], axis=0), rtol=tol)
            np.testing.assert_allclose(means[k], g.h.mean(axis=0), rtol=tol)
        np.testing.assert_array_equal(sums[4:], 0)


def test_padding_edges_belong_to_the_padding_graph():
    rng = np.random.default_rng(1)
    batch = egnn_jax.pack_graphs(
        [_graph(rng, 2), _graph(rng, 3)], max_nodes=8, max_edges=20, max_graphs=3
    )
    real = np.asarray(batch.edge_mask)
    pad_node = int(batch.node_mask.sum())
    assert np.all(np.asarray(batch.senders)[~real] == pad_node)
    assert np.all(np.asarray(batch.receivers)[~real] == pad_node)
    assert np.all(np.asarray(batch.node_graph)[pad_node:] == 2)
    assert int(batch.edges_per_graph.sum()) == 20 and int(batch.nodes_per_graph.sum()) == 8


def test_batches_have_one_shape_and_compile_once():
    rng = np.random.default_rng(2)
    graphs = [_graph(rng, int(n), np.float32) for n in rng.integers(2, 7, size=12)]
    batches = list(egnn_jax.packed_batches(graphs, max_nodes=16, max_edges=60, max_graphs=5))
    assert sum(int(b.graph_mask.sum()) for b in batches) == 12
    assert len(batches) > 1
    assert {jax.tree.map(jnp.shape, b) == jax.tree.map(jnp.shape, batches[0]) for b in batches} == {
        True
    }
    config = egnn_jax.EGNNConfig(hidden_features=8, num_layers=1, velocity=True)
    b0 = batches[0]
    params = egnn_jax.init(
        jax.random.key(0),
        config,
        b0.h,
        b0.x,
        v=b0.v,
        edge_attr=b0.edge_attr,
        senders=b0.senders,
        receivers=b0.receivers,
    )
    energy = jax.jit(lambda p, b: jnp.sum(b.sum_per_graph(_apply(p, config, b, b.edge_mask)[1])))
    for b in batches:
        energy(params, b)
    assert energy._cache_size() == 1


def test_bad_inputs_are_named():
    rng = np.random.default_rng(3)
    g = _graph(rng, 4)
    budgets = dict(max_nodes=10, max_edges=40, max_graphs=3)
    with pytest.raises(ValueError, match="no graphs"):
        egnn_jax.pack_graphs([], **budgets)
    with pytest.raises(ValueError, match="max_nodes=4 < 5"):
        egnn_jax.pack_graphs([g], **budgets | {"max_nodes": 4})
    with pytest.raises(ValueError, match="max_graphs=1 < 2"):
        egnn_jax.pack_graphs([g], **budgets | {"max_graphs": 1})
    with pytest.raises(ValueError, match="no nodes"):
        egnn_jax.pack_graphs([g._replace(h=g.h[:0], x=g.x[:0])], **budgets)
    with pytest.raises(ValueError, match="outside"):
        egnn_jax.pack_graphs([g._replace(senders=g.senders + 10)], **budgets)
    with pytest.raises(ValueError, match="other feature sizes"):
        egnn_jax.pack_graphs([g, g._replace(edge_attr=None)], **budgets)
    with pytest.raises(ValueError, match="does not fit"):
        list(egnn_jax.packed_batches([g], **budgets | {"max_edges": 2}))
