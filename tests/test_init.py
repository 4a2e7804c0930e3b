"""Every model's `init` makes its parameters on a two-node graph (`egnn_jax._init_graph`):
they must equal, bit for bit, a Flax init on the caller's own graph, whatever its layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import egnn_jax
from egnn_jax import eghn, fastegnn, hegnn
from egnn_jax._api import _validate as egnn_validate
from egnn_jax._egcl import EGNN
from egnn_jax._eghn import EGHN
from egnn_jax._fastegnn import FastEGNN
from egnn_jax._hegnn import HEGNN

M = 7


def assert_same_bits(new, old):
    assert jax.tree.structure(new) == jax.tree.structure(old)
    for (path, a), b in zip(jax.tree.leaves_with_path(new), jax.tree.leaves(old), strict=True):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def graph():
    x = jax.random.normal(jax.random.key(1), (M, 3))
    h = jax.random.normal(jax.random.key(2), (M, 2))
    senders, receivers = egnn_jax.complete_graph_edges(M)
    a = jnp.ones((M, M, 2))
    return dict(h=h, x=x, v=0.3 * x, a=a, senders=senders, receivers=receivers)


def test_egnn_edge_list_with_chunks(graph):
    g = graph
    config = egnn_jax.EGNNConfig(8, 1, velocity=True, attention=True, edge_chunk_size=8)
    a = egnn_jax.dense_to_sparse_edge_attr(g["a"])
    kw = dict(v=g["v"], edge_attr=a, senders=g["senders"], receivers=g["receivers"])

    @jax.jit
    def on_the_callers_graph(key, h, x, kw):
        graph = egnn_validate(
            config, h, x, kw["v"], kw["edge_attr"], None, kw["senders"], kw["receivers"], None, None
        )
        return EGNN(config).init(key, graph, h, x, kw["v"], kw["edge_attr"])

    key = jax.random.key(3)
    new = egnn_jax.init(key, config, g["h"], g["x"], **kw)
    assert_same_bits(new, on_the_callers_graph(key, g["h"], g["x"], kw))


def test_hegnn_edge_list(graph):
    g = graph
    config = egnn_jax.HEGNNConfig(8, 1, max_degree=2, velocity=True)
    a = egnn_jax.dense_to_sparse_edge_attr(g["a"])

    @jax.jit
    def on_the_callers_graph(key, h, x, v, a, s, r):
        graph = hegnn._validate(config, h, x, v, a, None, s, r, None)
        return HEGNN(config).init(key, graph, h, x, v, a)

    key = jax.random.key(4)
    args = (g["h"], g["x"], g["v"], a, g["senders"], g["receivers"])
    new = hegnn.init(
        key,
        config,
        g["h"],
        g["x"],
        v=g["v"],
        edge_attr=a,
        senders=g["senders"],
        receivers=g["receivers"],
    )
    assert_same_bits(new, on_the_callers_graph(key, *args))


def test_eghn_with_a_local_capacity(graph):
    g = graph
    config = egnn_jax.EGHNConfig(
        hidden_features=8, num_clusters=4, low_layers=1, pooling_layers=1, high_layers=1
    )
    bonds = jnp.zeros((M, M), bool).at[0, 1].set(True).at[1, 0].set(True)

    @jax.jit
    def on_the_callers_graph(key, h, x, v, a, bonds):
        graph = eghn._validate(config, h, x, v, a, bonds, None, 2)
        return EGHN(config, 2).init(key, graph, bonds, h, x, v, a)

    key = jax.random.key(5)
    new = eghn.init(
        key,
        config,
        g["h"],
        g["x"],
        g["v"],
        edge_attr=g["a"],
        local_adjacency=bonds,
        local_capacity=2,
    )
    assert_same_bits(new, on_the_callers_graph(key, g["h"], g["x"], g["v"], g["a"], bonds))


def test_fastegnn_packed_batch(graph):
    g = graph
    config = egnn_jax.FastEGNNConfig(8, 1, velocity=False, virtual_channels=4)
    mols = [
        egnn_jax.Graph(g["h"][:k], g["x"][:k], *egnn_jax.complete_graph_edges(k)) for k in (2, 3, 5)
    ]
    b = egnn_jax.pack_graphs(mols, max_nodes=16, max_edges=40, max_graphs=4)
    packed = dict(
        node_mask=b.node_mask,
        senders=b.senders,
        receivers=b.receivers,
        edge_mask=b.edge_mask,
        node_graph=b.node_graph,
        graph_mask=b.graph_mask,
    )

    @jax.jit
    def on_the_callers_graph(key, h, x, p):
        graph, mask, num_graphs = fastegnn._validate(
            config,
            h,
            x,
            None,
            None,
            p["node_mask"],
            p["senders"],
            p["receivers"],
            p["edge_mask"],
            p["node_graph"],
            p["graph_mask"],
        )
        return FastEGNN(config).init(
            key, graph, mask, h, x, None, None, p["node_graph"], num_graphs
        )

    key = jax.random.key(6)
    new = fastegnn.init(key, config, b.h, b.x, **packed)
    assert_same_bits(new, on_the_callers_graph(key, b.h, b.x, packed))


def test_one_compile_serves_every_graph_size_and_layout(graph):
    g = graph
    config = egnn_jax.EGNNConfig(8, 1)
    key = jax.random.key(7)
    first = egnn_jax.init(key, config, g["h"][:4], g["x"][:4])
    compiled = egnn_jax._api._init._cache_size()
    dense = egnn_jax.init(key, config, g["h"], g["x"])
    edges = dict(senders=g["senders"], receivers=g["receivers"])
    sparse = egnn_jax.init(
        key, egnn_jax.EGNNConfig(8, 1, edge_chunk_size=4), g["h"], g["x"], **edges
    )
    assert egnn_jax._api._init._cache_size() == compiled
    assert_same_bits(dense, first)
    assert_same_bits(sparse, first)
