"""EGHN (`egnn_jax.eghn`): equivariance of the whole model with its pooling, masking, cut loss."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import egnn_jax
from egnn_jax.testing import assert_equivariant

# Two layers in each stage compose like the default three and compile in half the time.
CONFIG = egnn_jax.EGHNConfig(
    hidden_features=16, num_clusters=3, low_layers=2, pooling_layers=2, high_layers=2
)
# On the two-core CI machine, compiling the gradient of SMALL after the rest of a pytest-xdist
# worker's files crashed XLA (SIGABRT, then SIGSEGV; never alone): this depth passed there.
DEFAULT_DEPTH = egnn_jax.EGHNConfig(hidden_features=16, num_clusters=3)
SMALL = egnn_jax.EGHNConfig(
    hidden_features=8, num_clusters=3, low_layers=1, pooling_layers=2, high_layers=1
)
COMPLEX = np.array([0, 0, 1, 1, 1, 2, 2, 0, 2, 1])


def _system(dtype, n=10, pad=0):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (n, 3), dtype)
    v = jax.random.normal(k2, (n, 3), dtype)
    h = jnp.linalg.norm(v, axis=-1, keepdims=True)
    q = jnp.where(jax.random.bernoulli(k3, 0.5, (n,)), 1.0, -1.0).astype(dtype)
    same = COMPLEX[:n, None] == COMPLEX[None, :n]
    d2 = jnp.sum((x[:, None] - x[None]) ** 2, -1)
    attr = jnp.stack([q[:, None] * q[None], jnp.asarray(same, dtype), d2], -1)
    adj = jnp.asarray(same & ~np.eye(n, dtype=bool))
    if pad:
        grow = lambda a, value=0: jnp.concatenate(
            [a, jnp.full((pad,) + a.shape[1:], value, a.dtype)]
        )
        x, v, h = grow(x, 7.0), grow(v, 1.0), grow(h, 1.0)
        attr = jnp.pad(attr, ((0, pad), (0, pad), (0, 0)), constant_values=3.0)
        adj = jnp.pad(adj, ((0, pad), (0, pad)), constant_values=True)
    mask = jnp.arange(n + pad) < n
    return h, x, v, attr, adj, mask


def _as_graph_fn(params, config):
    """`assert_equivariant`'s signature: the local graph travels as a last edge channel (so it
    is permuted with the nodes); h_out carries the assignment and the cut loss too."""

    def fn(h, x, v=None, edge_attr=None, node_mask=None):
        adj = edge_attr[..., -1] > 0.5
        out = egnn_jax.eghn.apply(
            params, config, h, x, v, edge_attr[..., :-1], local_adjacency=adj, node_mask=node_mask
        )
        loss = jnp.broadcast_to(out.cut_loss, (h.shape[0], 1))
        return jnp.concatenate([out.h, out.assignment, loss], -1), out.x

    return fn


@pytest.mark.parametrize(
    "dtype, rtol",
    # float32 (14 s) in `make test-slow`: the EGNN's float32 checks stay in the fast suite.
    [(jnp.float64, 1e-10), pytest.param(jnp.float32, 1e-5, marks=pytest.mark.slow)],
)
def test_whole_model_is_equivariant_including_pooling(dtype, rtol):
    with jax.enable_x64(dtype == jnp.float64):
        h, x, v, attr, adj, mask = _system(dtype)
        params = egnn_jax.eghn.init(jax.random.key(1), CONFIG, h, x, v, attr, local_adjacency=adj)
        both = jnp.concatenate([attr, adj[..., None].astype(dtype)], -1)
        fn = _as_graph_fn(params, CONFIG)
        assert_equivariant(fn, jax.random.key(2), h, x, v=v, edge_attr=both, rtol=rtol)
        # With padding nodes as well (the mask is permuted with them).
        h, x, v, attr, adj, mask = _system(dtype, pad=3)
        both = jnp.concatenate([attr, adj[..., None].astype(dtype)], -1)
        assert_equivariant(
            fn, jax.random.key(3), h, x, v=v, edge_attr=both, node_mask=mask, rtol=rtol
        )


def test_padding_changes_nothing_for_the_real_particles():
    """The reference lets padding features leak into the clusters (~1e-4); ours masks them."""
    with jax.enable_x64(True):
        h, x, v, attr, adj, _ = _system(jnp.float64)
        params = egnn_jax.eghn.init(jax.random.key(1), CONFIG, h, x, v, attr, local_adjacency=adj)
        out = egnn_jax.eghn.apply(params, CONFIG, h, x, v, attr, local_adjacency=adj)
        hp, xp, vp, attrp, adjp, mask = _system(jnp.float64, pad=4)
        padded = egnn_jax.eghn.apply(
            params, CONFIG, hp, xp, vp, attrp, local_adjacency=adjp, node_mask=mask
        )
        out, padded = jax.tree.map(np.asarray, (out, padded))
    np.testing.assert_allclose(padded.x[:10], out.x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(padded.assignment[:10], out.assignment, rtol=0, atol=1e-12)
    np.testing.assert_allclose(padded.cut_loss, out.cut_loss, rtol=1e-12)
    np.testing.assert_array_equal(padded.x[10:], xp[10:])  # padding keeps its input
    assert (padded.assignment[10:] == 0).all()
    np.testing.assert_allclose(out.assignment.sum(-1), 1.0, rtol=1e-12)
    assert not np.allclose(out.x, x, atol=1e-3)  # the model does move the particles


@pytest.mark.slow  # over 10 s; `make test-slow`
def test_local_capacity_visits_only_the_local_edges_and_never_drops_one():
    """E-Pool on a tight edge list computes what it computes on every pair; an overflow
    raises instead of dropping edges."""
    local_edges = int(np.sum(COMPLEX[:, None] == COMPLEX[None, :]) - len(COMPLEX))  # 24
    with jax.enable_x64(True):
        h, x, v, attr, adj, mask = _system(jnp.float64, pad=2)
        params = egnn_jax.eghn.init(jax.random.key(1), CONFIG, h, x, v, attr, local_adjacency=adj)
        run = functools.partial(
            egnn_jax.eghn.apply, params, CONFIG, h, x, v, attr, local_adjacency=adj, node_mask=mask
        )
        every_pair, tight = jax.tree.map(np.asarray, (run(), run(local_capacity=local_edges)))
        for a, b in zip(every_pair, tight, strict=True):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)
        with pytest.raises(Exception, match="more edges than local_capacity=23"):
            jax.block_until_ready(run(local_capacity=local_edges - 1))
    with pytest.raises(ValueError, match="local_capacity must be a positive int"):
        run(local_capacity=0)


def test_cut_loss_is_zero_exactly_when_clusters_keep_the_local_edges():
    same = COMPLEX[:, None] == COMPLEX[None, :]
    adj = jnp.asarray(same & ~np.eye(10, dtype=bool))
    one_hot = jax.nn.one_hot(COMPLEX, 3)
    assert float(egnn_jax.eghn.cut_loss(one_hot, adj)) == pytest.approx(0.0, abs=1e-7)
    mixed = jax.nn.one_hot((COMPLEX + np.arange(10)) % 3, 3)
    assert float(egnn_jax.eghn.cut_loss(mixed, adj)) > 0.5
    # Saturated softmax: the loss is exactly 0 and its gradient must be finite (0), not NaN.
    grad = jax.grad(lambda s: egnn_jax.eghn.cut_loss(s, adj))(one_hot)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)
    uniform = jnp.full((10, 3), 1 / 3)
    expected = np.sqrt(3 * ((1 / np.sqrt(3) - 1) ** 2 + 2 / 3))  # rows (1, 1, 1)/sqrt(3)
    assert float(egnn_jax.eghn.cut_loss(uniform, adj)) == pytest.approx(expected, rel=1e-5)


def test_logit_bound_keeps_the_assignment_off_saturation():
    """With saturating weights the reference's softmax reaches exact 0/1 (no gradient to S);
    `logit_bound=b` keeps every entry above exp(-2b) / K and the cut loss's gradient alive."""
    h, x, v, attr, adj, mask = _system(jnp.float32)
    bounded = dataclasses.replace(SMALL, logit_bound=2.0)
    params = egnn_jax.eghn.init(jax.random.key(1), bounded, h, x, v, attr, local_adjacency=adj)
    big = jax.tree_util.tree_map_with_path(
        lambda path, p: 1e3 * p if "assign_out" in jax.tree_util.keystr(path) else p, params
    )

    def assignment(p, config):
        out = egnn_jax.eghn.apply(p, config, h, x, v, attr, local_adjacency=adj)
        return out.assignment

    floor = np.exp(-2 * 2.0) / 3
    assert float(jnp.min(assignment(big, bounded))) >= floor * (1 - 1e-5)
    reference = dataclasses.replace(SMALL, logit_bound=None)
    assert float(jnp.min(assignment(big, reference))) < 1e-12
    cut = lambda p: egnn_jax.eghn.cut_loss(assignment(p, bounded), adj)  # noqa: E731
    grad = jax.grad(cut)(big)["params"]
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grad))
    with pytest.raises(ValueError, match="logit_bound"):
        dataclasses.replace(SMALL, logit_bound=0.0)


def test_gradients_are_finite_and_reach_every_parameter():
    h, x, v, attr, adj, mask = _system(jnp.float32, pad=2)
    params = egnn_jax.eghn.init(
        jax.random.key(1), DEFAULT_DEPTH, h, x, v, attr, local_adjacency=adj
    )
    target = x + 0.1

    def loss(p):
        out = egnn_jax.eghn.apply(
            p, DEFAULT_DEPTH, h, x, v, attr, local_adjacency=adj, node_mask=mask
        )
        return jnp.mean((out.x - target)[:10] ** 2) + out.cut_loss

    grads = jax.grad(loss)(params)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert all(np.isfinite(g).all() for _, g in leaves)
    dead = [jax.tree_util.keystr(p) for p, g in leaves if not np.any(g)]
    assert not dead, dead


def test_bad_inputs_fail_with_clear_errors():
    h, x, v, attr, adj, mask = _system(jnp.float32)
    params = egnn_jax.eghn.init(jax.random.key(1), SMALL, h, x, v, attr, local_adjacency=adj)
    with pytest.raises(ValueError, match="local_adjacency must have shape"):
        egnn_jax.eghn.apply(params, SMALL, h, x, v, attr, local_adjacency=adj[:5])
    with pytest.raises(ValueError, match="local_adjacency must be bool"):
        egnn_jax.eghn.apply(params, SMALL, h, x, v, attr, local_adjacency=adj.astype(int))
    with pytest.raises(ValueError, match="v must have the shape of x"):
        egnn_jax.eghn.apply(params, SMALL, h, x, v[:3], attr, local_adjacency=adj)
    with pytest.raises(ValueError, match="edge_attr of width 3"):
        egnn_jax.eghn.apply(params, SMALL, h, x, v, attr[..., :2], local_adjacency=adj)
    other = dataclasses.replace(SMALL, num_clusters=4)
    with pytest.raises(ValueError, match="clusters"):
        egnn_jax.eghn.apply(params, other, h, x, v, attr, local_adjacency=adj)
    with pytest.raises(TypeError, match="EGHNConfig"):
        egnn_jax.eghn.apply(params, egnn_jax.EGNNConfig(), h, x, v, attr, local_adjacency=adj)
    with pytest.raises(ValueError, match="num_clusters"):
        egnn_jax.EGHNConfig(num_clusters=1)
