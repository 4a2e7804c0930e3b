"""EGHN's Flax modules: an EGNN on the particles, E-Pool, an EGNN on the clusters, E-UpPool.

Han, Huang, Xu, Rong, Huang & Sun, "Equivariant Graph Hierarchy-Based Neural Networks",
NeurIPS 2022; the equations follow the authors' code (hanjq17/EGHN, `model/eghn.py`):

1. Low level: ``h, x¹ = EGNN(h, x, v, e)`` on the complete graph; ``Δx = x¹ − x``.
2. E-Pool on the *local* graph (e.g. the bonds inside each rigid complex): vector channels
   ``Z_i = [x_i − x̄, Δx_i, v_i]``; per local edge the invariant ``G = normalise(Z_jᵀ Z_i)``,
   a message ``m_ij = MLP([G, h_i, h_j, e_ij])`` and a channel-mixing matrix
   ``M_ij = MLP(m_ij)`` (3 × 3); ``Z_i += mean_j Z_j M_ij``, ``h_i += MLP([h_i, Σ_j m_ij])``.
   The assignment ``S = softmax(Linear(tanh(Linear(h))))`` `[N, K]`.
3. Clusters: ``X_k, V_k, H_k`` are the S-weighted means of the particles' ``x, v, h``; the
   cluster graph is complete, with edge weight ``(Sᵀ A S)_kl`` (A: the complete graph);
   ``H', X' = EGNN(H, X, V, SᵀAS)``.
4. E-UpPool: per particle the vectors ``Z = [S (X' − X), x − S X, v − S V, Δx]``, their Gram
   matrix ``G = normalise(ZᵀZ)`` (4 × 4), ``c = MLP(MLP([G, h, S H']))`` (4 numbers), and
   ``x_out = S X' + Z c``.

A cut loss ``‖rownormalise(Sᵀ A_local S) − I‖_F`` asks every cluster to keep its local edges
(a particle's complex) inside itself.

Choices where this implementation differs from the reference (tested where they matter):
the last E-Pool layer has no vector update (the reference computes one and discards it);
padding particles are masked out of the cluster features (the reference lets their features
leak into H_k, so its output for a system changes by ~1e-4 with the batch's padding);
the cluster EGNN has no self-loops and reads the diagonal ``(SᵀAS)_kk`` as a node feature
instead (the reference passes it as a self-loop edge); the two EGNNs are `egnn_jax.EGNN`
configured like the reference's layer (`_REFERENCE_LAYER`: velocity variant, h replaced,
not added; the coordinate head at PyTorch's default scale, not the EGNN paper's 0.001 gain,
and without its bias; per-edge coordinate updates unclamped); the cut loss has a zero
gradient where it is exactly zero (the reference's ``torch.norm`` does; a plain square root
would give NaN once the softmax saturates).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp

from ._config import EGHNConfig, EGNNConfig
from ._egcl import EGNN, _linear
from ._graph import DenseGraph, SparseGraph
from ._neighbours import edge_list

__all__ = ["EGHN", "EGHNOutput", "EPool", "EUpPool", "cut_loss"]

# The EGHN code's own EGNN layer (`model/basic.py`, `EGNN_Layer`): h is replaced by phi_h, and
# phi_x ends in a PyTorch-default layer, U(±1/sqrt(64)) = Xavier gain 0.41 for width 64. With
# the EGNN paper's residual and 0.001 gain, both levels start by moving points only along v,
# so the vectors E-Pool and E-UpPool read (Δx, X' − X) start near zero; trained from there on
# the (3, 3) complexes, EGHN stayed behind EGNN (test 0.157 against 0.138).
_REFERENCE_LAYER = EGNNConfig(velocity=True, residual=False, coords_weight_gain=0.41)


class EGHNOutput(NamedTuple):
    """What `egnn_jax.eghn.apply` returns for one graph.

    Fields:
        h: `[N, H]` invariant particle features (the un-pooling's scalars).
        x: `[N, n]` predicted positions (equal to the input on padding particles).
        assignment: `[N, K]` the soft cluster assignment S (rows sum to 1; 0 on padding).
        cut_loss: `[]` ``‖rownormalise(Sᵀ A_local S) − I‖_F``.
    """

    h: jax.Array
    x: jax.Array
    assignment: jax.Array
    cut_loss: jax.Array


def _mlp(hidden, out, fan_in, dtype, name, last_act=False):
    """Linear, SiLU, Linear (then SiLU with `last_act`): the reference's two-layer MLP."""
    first = _linear(hidden, fan_in, dtype, f"{name}_hidden")
    second = _linear(out, hidden, dtype, f"{name}_out")

    def mlp(a):
        a = second(nn.silu(first(a)))
        return nn.silu(a) if last_act else a

    return mlp


def _normalised(g):
    """`g / max(|g|, 1e-12)` over the last axis, with a finite gradient at g = 0."""
    return g * jax.lax.rsqrt(jnp.maximum(jnp.sum(g * g, -1, keepdims=True), 1e-24))


def _gram(za, zb):
    """``[..., n, a]`` and ``[..., n, b]`` -> flattened normalised ``za^T zb`` ``[..., a·b]``."""
    g = jnp.einsum("...na,...nb->...ab", za, zb)
    return _normalised(g.reshape(g.shape[:-2] + (-1,)))


def cut_loss(assignment, local_adjacency):
    """``‖rownormalise(Sᵀ A S) − I‖_F`` for one graph.

    Arguments:
        assignment: S `[N, K]` (0 on padding rows).
        local_adjacency: A `[N, N]` bool or float (the local graph, no self-loops).

    Returns:
        A scalar: 0 when every cluster's local edges stay inside the cluster.
    """
    s = assignment
    c = s.T @ (local_adjacency.astype(s.dtype) @ s)
    c = _normalised(c)
    diff = c - jnp.eye(c.shape[0], dtype=c.dtype)
    squared = jnp.sum(diff * diff)
    positive = squared > 0
    # The double where keeps sqrt's infinite slope at 0 out of the gradient.
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def _local_edges(adjacency, node_mask, capacity: int) -> SparseGraph:
    """The local graph's real edges as a `capacity`-long masked edge list.

    Raises (at run time, also under jit): more real local edges than `capacity`.
    """
    found = edge_list(adjacency, capacity, node_mask)
    receivers = eqx.error_if(
        found.receivers,
        found.overflow,
        f"egnn_jax.eghn: the local graph has more edges than local_capacity={capacity}",
    )
    n = adjacency.shape[0]
    return SparseGraph(found.senders, receivers, n, edge_mask=found.edge_mask)


class EPool(nn.Module):
    """E-Pool: equivariant message passing on the local graph, then the soft assignment.

    Call arguments: `local` (`SparseGraph` of the local edges, with its edge mask), node mask
    `[N]` bool, h `[N, H]`, vectors Z `[N, n, 3]`, edge attributes of the local edges `[E, A]`
    or None. Returns S `[N, K]` (0 on padding).

    It runs on the local edges only (a few per particle), never on the complete graph: on the
    (10, 10) complexes that is ~1,100 edges per system instead of ~9,900.
    """

    config: EGHNConfig

    @nn.compact
    def __call__(self, local: SparseGraph, node_mask, h, z, edge_attr):
        cfg, width, dtype = self.config, self.config.hidden_features, h.dtype
        channels = z.shape[-1]
        count = jnp.maximum(local.aggregate(jnp.ones(local.senders.shape + (1,), dtype)), 1.0)
        a = 0 if edge_attr is None else edge_attr.shape[-1]
        for i in range(cfg.pooling_layers):
            z_i, z_j = z[local.receivers], z[local.senders]  # [E, n, c]
            g = _gram(z_j, z_i)
            parts = [g, h[local.receivers], h[local.senders]]
            if edge_attr is not None:
                parts.append(edge_attr)
            fan_in = channels * channels + 2 * width + a
            m = _mlp(width, width, fan_in, dtype, f"message_{i}", last_act=True)(
                jnp.concatenate(parts, -1)
            )
            if i < cfg.pooling_layers - 1:  # the last layer's vectors would reach nothing
                mix = _mlp(width, channels * channels, width, dtype, f"mix_{i}")(m)
                mix = mix.reshape(mix.shape[:-1] + (channels, channels))
                u = jnp.einsum("ena,eab->enb", z_j, mix)
                z = z + local.aggregate(u) / count[:, :, None]
            update = _mlp(width, width, 2 * width, dtype, f"node_{i}")
            h = h + update(jnp.concatenate([h, local.aggregate(m)], -1))
        head = _linear(cfg.pooling_head_factor * width, width, dtype, "assign_hidden")
        logits = _linear(cfg.num_clusters, cfg.pooling_head_factor * width, dtype, "assign_out")(
            jnp.tanh(head(h))
        )
        if cfg.logit_bound is not None:
            logits = cfg.logit_bound * jnp.tanh(logits / cfg.logit_bound)
        s = jax.nn.softmax(logits, axis=-1)
        return s * node_mask[:, None].astype(dtype)


class EUpPool(nn.Module):
    """E-UpPool: each particle's position from its clusters' and an equivariant correction.

    Call arguments: S `[N, K]`; cluster positions before / after `[K, n]`, velocities
    `[K, n]`, features `[K, H]`; particle x, v, Δx `[N, n]` and features h `[N, H]`.
    Returns ``(h_out [N, H], x_out [N, n])``.
    """

    config: EGHNConfig

    @nn.compact
    def __call__(self, s, big_x, big_x_new, big_v, big_h, x, v, dx, h):
        width, dtype = self.config.hidden_features, h.dtype
        pooled_x = s @ big_x
        z = jnp.stack([s @ (big_x_new - big_x), x - pooled_x, v - s @ big_v, dx], axis=-1)
        g = _gram(z, z)
        scalars = jnp.concatenate([g, h, s @ big_h], -1)
        h_out = _mlp(width, width, scalars.shape[-1], dtype, "scalar", last_act=True)(scalars)
        coefficients = _mlp(width, z.shape[-1], width, dtype, "coefficients")(h_out)
        return h_out, s @ big_x_new + jnp.einsum("nda,na->nd", z, coefficients)


class EGHN(nn.Module):
    """The whole EGHN on one dense graph (`egnn_jax.eghn.apply` is its checked entry point).

    Call arguments:
        graph: `DenseGraph` (its node mask marks the real particles).
        local_adjacency: `[N, N]` bool, the local graph (symmetric, no self-loops).
        h: `[N, F]` node features; x, v: `[N, n]`; edge_attr: `[N, N, A]` or None.

    Attributes:
        config: `EGHNConfig`.
        local_capacity: the most local edges E-Pool visits (None: N (N - 1), every pair).

    Returns:
        `EGHNOutput`.
    """

    config: EGHNConfig

    local_capacity: int | None = None

    @nn.compact
    def __call__(self, graph: DenseGraph, local_adjacency, h, x, v, edge_attr=None):
        cfg, width, dtype = self.config, self.config.hidden_features, x.dtype
        mask = graph.node_mask.astype(dtype)[:, None]
        low = dataclasses.replace(
            _REFERENCE_LAYER, hidden_features=width, num_layers=cfg.low_layers
        )
        h, x_low = EGNN(low, name="low")(graph, h, x, v, edge_attr)
        dx = (x_low - x) * mask

        n_real = jnp.maximum(jnp.sum(mask), 1.0)
        centroid = jnp.sum(x * mask, axis=0, keepdims=True) / n_real
        z = jnp.stack([(x - centroid) * mask, dx, v * mask], axis=-1)
        n = x.shape[0]
        capacity = n * (n - 1) if self.local_capacity is None else self.local_capacity
        local = _local_edges(local_adjacency, graph.node_mask, capacity)
        edges = None if edge_attr is None else edge_attr[local.receivers, local.senders]
        s = EPool(cfg, name="pool")(local, graph.node_mask, h, z, edges)

        weight = s / jnp.maximum(jnp.sum(s, axis=0, keepdims=True), 1e-5)  # [N, K]
        big_x, big_v = weight.T @ (x * mask), weight.T @ (v * mask)
        big_h = weight.T @ (h * mask)
        # S^T A S for the complete graph A over the real particles: (sum S)(sum S)^T - S^T S.
        total = jnp.sum(s, axis=0)
        links = total[:, None] * total[None, :] - s.T @ s
        k = cfg.num_clusters
        high = dataclasses.replace(
            _REFERENCE_LAYER, hidden_features=width, num_layers=cfg.high_layers
        )
        cluster_graph = DenseGraph(jnp.ones((k,), bool))
        cluster_h = jnp.concatenate([big_h, jnp.diagonal(links)[:, None]], -1)
        big_h_new, big_x_new = EGNN(high, name="high")(
            cluster_graph, cluster_h, big_x, big_v, links[..., None]
        )
        h_out, x_out = EUpPool(cfg, name="unpool")(
            s, big_x, big_x_new, big_v, big_h_new, x, v, dx, h
        )
        x_out = jnp.where(graph.node_mask[:, None], x_out, x)
        local_off_diagonal = jnp.where(jnp.eye(n, dtype=bool), False, local_adjacency)
        return EGHNOutput(h_out * mask, x_out, s, cut_loss(s, local_off_diagonal))
