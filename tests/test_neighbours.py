"""`egnn_jax.radius_graph` against a brute-force NumPy search; EGNN on periodic systems."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import egnn_jax


def _brute_force(x, cutoff, box=None, mask=None):
    """{(receiver, sender)} by two Python loops over the minimum images."""
    x = np.asarray(x, np.float64)
    pairs = set()
    for i, j in itertools.product(range(len(x)), repeat=2):
        if i == j or (mask is not None and not (mask[i] and mask[j])):
            continue
        d = x[i] - x[j]
        if box is not None:
            d = d - box * np.round(d / box)
        if np.sqrt(np.sum(d * d)) < cutoff:
            pairs.add((i, j))
    return pairs


def _edges(graph):
    m = np.asarray(graph.edge_mask)
    receivers, senders = np.asarray(graph.receivers)[m], np.asarray(graph.senders)[m]
    return set(zip(receivers.tolist(), senders.tolist(), strict=True))


@pytest.mark.parametrize("box", [None, np.array([3.0, 4.0, 5.0]), 4.0])
def test_matches_a_brute_force_search(box):
    rng = np.random.default_rng(0)
    side = np.broadcast_to(4.0 if box is None else box, (3,))
    x = rng.uniform(0, 1, (60, 3)) * side
    mask = rng.uniform(size=60) > 0.2
    expected = _brute_force(x, 1.2, None if box is None else np.broadcast_to(box, (3,)), mask)
    graph = egnn_jax.radius_graph(
        jnp.asarray(x, jnp.float32), 1.2, capacity=2000, box=box, node_mask=jnp.asarray(mask)
    )
    assert _edges(graph) == expected and len(expected) > 50
    assert int(graph.num_edges) == len(expected) and not bool(graph.overflow)
    # The contract: it unpacks as (senders, receivers, edge_mask, overflow).
    senders, receivers, edge_mask, overflow = graph
    assert senders is graph.senders and receivers is graph.receivers
    assert edge_mask is graph.edge_mask and overflow is graph.overflow and graph[3] is overflow
    # Both directions of every pair; receivers sorted; fillers point 0 -> 0.
    assert all((j, i) in expected for i, j in expected)
    real = np.asarray(graph.edge_mask)
    assert np.all(np.diff(np.asarray(graph.receivers)[real]) >= 0)
    assert (
        not np.asarray(graph.receivers)[~real].any() and not np.asarray(graph.senders)[~real].any()
    )


def test_overflow_is_reported_and_jit_vmap_compose():
    x = jax.random.uniform(jax.random.key(0), (4, 30, 3)) * 3.0
    fn = jax.jit(jax.vmap(lambda p: egnn_jax.radius_graph(p, 1.0, capacity=8, box=3.0)))
    graphs = fn(x)
    counts = [len(_brute_force(p, 1.0, np.full(3, 3.0))) for p in np.asarray(x)]
    np.testing.assert_array_equal(np.asarray(graphs.num_edges), counts)
    np.testing.assert_array_equal(np.asarray(graphs.overflow), np.asarray(counts) > 8)
    assert all(c > 8 for c in counts) and np.asarray(graphs.edge_mask).all()


def test_bad_inputs_fail_with_clear_errors():
    x = jnp.zeros((5, 3))
    with pytest.raises(ValueError, match="capacity must be a positive int"):
        egnn_jax.radius_graph(x, 1.0, capacity=0)
    with pytest.raises(ValueError, match="cutoff must be > 0"):
        egnn_jax.radius_graph(x, 0.0, capacity=4)
    with pytest.raises(ValueError, match="exceeds half the box side"):
        egnn_jax.radius_graph(x, 2.0, capacity=4, box=3.0)
    with pytest.raises(ValueError, match="box must be a scalar or have shape"):
        egnn_jax.radius_graph(x, 1.0, capacity=4, box=jnp.ones(2))
    with pytest.raises(ValueError, match="x must have shape"):
        egnn_jax.radius_graph(jnp.zeros((0, 3)), 1.0, capacity=4)
    with pytest.raises(ValueError, match="node_mask must be bool"):
        egnn_jax.radius_graph(x, 1.0, capacity=4, node_mask=jnp.ones(5))
    s, r = jnp.array([0, 1]), jnp.array([1, 0])
    params = egnn_jax.init(
        jax.random.key(0), egnn_jax.EGNNConfig(8, 1), x, x, senders=s, receivers=r
    )
    with pytest.raises(ValueError, match="edge_mask must be bool of shape"):
        egnn_jax.apply(params, egnn_jax.EGNNConfig(8, 1), x, x, senders=s, receivers=r, edge_mask=s)
    with pytest.raises(ValueError, match="edge_mask is for sparse graphs"):
        egnn_jax.apply(params, egnn_jax.EGNNConfig(8, 1), x, x, edge_mask=s > 0)
    # A box side <= 0 (or NaN) would make every relative vector NaN: eager calls raise a
    # ValueError, and under an outer jit a runtime error names it.
    config = egnn_jax.EGNNConfig(8, 1)
    for bad in (0.0, jnp.array([1.0, -1.0, 1.0]), float("nan")):
        with pytest.raises(ValueError, match="box side lengths must be > 0"):
            egnn_jax.apply(params, config, x, x, senders=s, receivers=r, box=bad)
        with pytest.raises(ValueError, match="box side lengths must be > 0"):
            egnn_jax.radius_graph(x, 1.0, capacity=4, box=bad)
    jitted = jax.jit(lambda b: egnn_jax.apply(params, config, x, x, senders=s, receivers=r, box=b))
    assert np.isfinite(np.asarray(jitted(jnp.float32(4.0))[1])).all()
    with pytest.raises(Exception, match="box side lengths must be > 0"):
        jax.block_until_ready(jitted(jnp.float32(0.0)))


@pytest.mark.usefixtures("allow_nans")
def test_a_nan_position_is_an_error_not_lost_edges():
    """A NaN position would compare false with every cutoff; at a padding node it is fine."""
    y = jax.random.uniform(jax.random.key(0), (3000, 3)) * 12.0
    for method in ("all_pairs", "cells"):
        search = functools.partial(
            egnn_jax.radius_graph, cutoff=1.0, capacity=40_000, box=12.0, method=method
        )
        with pytest.raises(Exception, match="x has NaN or inf at a real node"):
            jax.block_until_ready(search(y.at[7, 1].set(jnp.nan)))
        padded = search(y.at[7, 1].set(jnp.nan), node_mask=jnp.arange(3000) != 7)
        assert not bool(padded.overflow) and int(padded.num_edges) > 0


def _periodic_system(dtype, n=40, side=4.0):
    k1, k2 = jax.random.split(jax.random.key(3))
    x = jax.random.uniform(k1, (n, 3), dtype) * side
    h = jax.random.normal(k2, (n, 2), dtype)
    return h, x


def test_masked_filler_edges_change_nothing():
    with jax.enable_x64(True):
        h, x = _periodic_system(jnp.float64)
        config = egnn_jax.EGNNConfig(hidden_features=16, num_layers=2)
        graph = egnn_jax.radius_graph(x, 1.5, capacity=600, box=4.0)
        m = np.asarray(graph.edge_mask)
        assert 0 < m.sum() < 600
        s, r = graph.senders, graph.receivers
        params = egnn_jax.init(jax.random.key(0), config, h, x, senders=s, receivers=r)
        padded = egnn_jax.apply(
            params, config, h, x, senders=s, receivers=r, edge_mask=graph.edge_mask, box=4.0
        )
        exact = egnn_jax.apply(params, config, h, x, senders=s[m], receivers=r[m], box=4.0)
        for a, b in zip(padded, exact, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype, atol", [(jnp.float64, 1e-10), (jnp.float32, 1e-4)])
def test_egnn_on_a_periodic_box_respects_its_symmetries(dtype, atol):
    """Periodic translations, the cube's axis permutations and its reflection x -> L - x."""
    side, cutoff = 4.0, 1.5
    # A coordinate head at full scale, so that the nodes move by far more than the tolerance.
    config = egnn_jax.EGNNConfig(hidden_features=16, num_layers=2, coords_weight_gain=1.0)
    with jax.enable_x64(dtype == jnp.float64):
        h, x = _periodic_system(dtype, side=side)

        def run(params, x):
            g = egnn_jax.radius_graph(x, cutoff, capacity=800, box=side)
            assert not bool(g.overflow)
            return egnn_jax.apply(
                params,
                config,
                h,
                x,
                senders=g.senders,
                receivers=g.receivers,
                edge_mask=g.edge_mask,
                box=side,
            )

        g = egnn_jax.radius_graph(x, cutoff, capacity=800, box=side)
        params = egnn_jax.init(
            jax.random.key(1), config, h, x, senders=g.senders, receivers=g.receivers
        )
        h_out, x_out = run(params, x)
        assert float(jnp.max(jnp.abs(x_out - x))) > 1e-2  # the layer does move the nodes

        def same_position(a, b):  # equal modulo the box
            d = egnn_jax.minimum_image(a - b, jnp.asarray(side, dtype))
            np.testing.assert_allclose(np.asarray(d), 0.0, atol=atol)

        shift = jnp.asarray([[1.7, -3.1, 0.4]], dtype)
        h_t, x_t = run(params, jnp.mod(x + shift, side))
        np.testing.assert_allclose(np.asarray(h_t), np.asarray(h_out), atol=atol)
        same_position(x_t, x_out + shift)

        h_p, x_p = run(params, x[:, ::-1])  # a permutation of the cube's axes
        np.testing.assert_allclose(np.asarray(h_p), np.asarray(h_out), atol=atol)
        same_position(x_p, x_out[:, ::-1])

        h_r, x_r = run(params, side - x)  # reflection through the centre
        np.testing.assert_allclose(np.asarray(h_r), np.asarray(h_out), atol=atol)
        same_position(x_r, side - x_out)


def test_without_a_box_a_distant_image_is_not_a_neighbour():
    x = jnp.array([[0.1, 0.0, 0.0], [3.9, 0.0, 0.0]])
    assert int(egnn_jax.radius_graph(x, 1.0, capacity=2).num_edges) == 0
    assert int(egnn_jax.radius_graph(x, 1.0, capacity=2, box=4.0).num_edges) == 2


def test_a_box_one_cutoff_wider_than_the_system_gives_its_non_periodic_edges():
    """The documented recipe for an O(N) search without periodicity: shift the nodes into
    [0, extent) and pass box = extent + cutoff; no pair is within the cutoff through the
    wrap, so the edges are the non-periodic ones (and their relative vectors plain
    differences, which `apply` without a box then uses)."""
    rng = np.random.default_rng(5)
    x = rng.uniform(-3.0, 5.0, (400, 3))
    cutoff = 1.3
    expected = _brute_force(x, cutoff)
    lower = x.min(axis=0)
    extent = x.max(axis=0) - lower
    graph = egnn_jax.radius_graph(
        jnp.asarray(x - lower), cutoff, capacity=6000, box=extent + cutoff, method="cells"
    )
    assert _edges(graph) == expected and len(expected) > 500 and not bool(graph.overflow)


@pytest.mark.parametrize("dim, box", [(3, np.array([4.0, 5.0, 6.5])), (2, 6.0), (3, 4.5)])
def test_cell_list_finds_the_brute_force_edges(dim, box):
    rng = np.random.default_rng(dim)
    side = np.broadcast_to(box, (dim,))
    # Points on the cell borders and outside the box (wrapped) included.
    x = rng.uniform(-0.2, 1.2, (150, dim)) * side
    x[:5] = np.round(x[:5] / 1.25) * 1.25
    mask = rng.uniform(size=150) > 0.15
    expected = _brute_force(np.mod(x, side), 1.25, side, mask)
    graph = egnn_jax.radius_graph(
        jnp.asarray(x), 1.25, capacity=4000, box=box, node_mask=jnp.asarray(mask), method="cells"
    )
    assert _edges(graph) == expected and len(expected) > 100
    assert int(graph.num_edges) == len(expected) and not bool(graph.overflow)
    real = np.asarray(graph.edge_mask)
    assert np.all(np.diff(np.asarray(graph.receivers)[real]) >= 0)
    assert not np.asarray(graph.senders)[~real].any()
    # The same edge list under jit and vmap.
    batched = jax.jit(
        jax.vmap(lambda p: egnn_jax.radius_graph(p, 1.25, capacity=4000, box=box, method="cells"))
    )(jnp.stack([jnp.asarray(x)] * 2))
    assert (
        np.asarray(batched.num_edges).tolist()
        == [len(_brute_force(np.mod(x, side), 1.25, side))] * 2
    )


def test_cell_list_reports_a_crowded_cell_and_a_full_edge_list():
    x = jnp.concatenate([jnp.full((6, 3), 0.5), jnp.full((2, 3), 3.0)])  # 6 nodes in one cell
    crowded = egnn_jax.radius_graph(x, 1.0, capacity=100, box=4.0, method="cells", cell_capacity=4)
    assert bool(crowded.overflow) and int(crowded.num_edges) <= 100
    roomy = egnn_jax.radius_graph(x, 1.0, capacity=100, box=4.0, method="cells", cell_capacity=6)
    assert not bool(roomy.overflow) and int(roomy.num_edges) == 6 * 5 + 2
    full = egnn_jax.radius_graph(x, 1.0, capacity=10, box=4.0, method="cells")
    assert bool(full.overflow) and int(full.num_edges) == 32


def test_cell_list_applies_only_where_it_can():
    x = jnp.zeros((10, 3))
    with pytest.raises(ValueError, match="at least 3 cutoffs"):
        egnn_jax.radius_graph(x, 1.5, capacity=4, box=4.0, method="cells")
    with pytest.raises(ValueError, match="at least 3 cutoffs"):
        egnn_jax.radius_graph(x, 1.0, capacity=4, method="cells")
    with pytest.raises(ValueError, match="method must be"):
        egnn_jax.radius_graph(x, 1.0, capacity=4, method="kd_tree")
    with pytest.raises(ValueError, match="cell_capacity"):
        egnn_jax.radius_graph(x, 1.0, capacity=4, box=4.0, method="cells", cell_capacity=0)
    # "auto" uses every pair for small graphs and where cells do not fit.
    small = egnn_jax.radius_graph(x, 1.5, capacity=100, box=4.0)
    assert int(small.num_edges) == 90
