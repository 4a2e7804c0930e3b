"""FastEGNN (Zhang et al., ICML 2024): an EGNN with C virtual nodes per graph.

Every graph gets C virtual nodes with positions Z `[C, n]` (initialised at the real nodes'
centre of mass) and features S `[C, H]` (learned, shared by every graph). Each virtual node
is connected to every real node, so a sparse real-real graph still passes global messages.
One layer, with real nodes i, j and virtual nodes c, c':

    m_ij  = phi_e(h_i, h_j, |x_i - x_j|^2, a_ij)                      real-real (as EGNN)
    G     = (Z - x̄)^T (Z - x̄)                                        [C, C] Gram matrix
    m_ic  = phi_ev(h_i, s_c, |z_c - x_i|, G_c)                         real-virtual
    x_i  <- x_i + mean_j (x_i - x_j) phi_x(m_ij)
                + mean_c (x_i - z_c) phi_xv(m_ic) + phi_v(h_i) v_i
    z_c  <- z_c + mean_i (z_c - x_i) phi_X(m_ic)
    h_i  <- h_i + phi_h(h_i, mean_j m_ij, m_i1, ..., m_iC)
    s_c  <- s_c + phi_hv(s_c, mean_i m_ic)

where x̄ is the real nodes' mean position and G_c the c-th row of G. The virtual nodes are
an *ordered* set (each has its own features, and the concatenation m_i1 ... m_iC keeps their
order), which is what lets them play distinct roles. Choices taken from the reference code
(GLAD-RUC/FastEGNN, `models/FastEGNN.py`): the real-virtual message reads the distance
|z_c - x_i| (not its square); the node update takes the *mean* of the real-real messages;
the virtual-node features start from a standard normal draw; every coordinate MLP's last
layer is Xavier-uniform with gain 0.001, as in EGNN.

Training adds `mmd_loss` (between predicted real positions and the virtual nodes) to the
task loss, which spreads the virtual nodes over the system instead of letting them collapse
onto the centre of mass.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ._config import FastEGNNConfig
from ._egcl import (
    DenseParams,
    Graph,
    _linear,
    _row,
    _safe_norm,
    _xavier_uniform,
    edge_input_layer,
    message_weights,
)


class FastEGNNOutput(NamedTuple):
    """What `egnn_jax.fastegnn.apply` returns for one graph (or a packed batch).

    Fields:
        h: `[M, out_features or hidden_features]` invariant node features.
        x: `[M, n]` equivariant positions.
        virtual_h: `[C, hidden_features]` invariant features of the virtual nodes
            (`[G, C, hidden_features]` for a packed batch of G graphs).
        virtual_x: `[C, n]` equivariant positions of the virtual nodes (`[G, C, n]`).
    """

    h: jax.Array
    x: jax.Array
    virtual_h: jax.Array
    virtual_x: jax.Array


def masked_mean(a: jax.Array, node_mask: jax.Array) -> jax.Array:
    """Mean of `a [M, ...]` over the rows where `node_mask [M]` is True (0 if there are none)."""
    w = node_mask.astype(a.dtype).reshape((-1,) + (1,) * (a.ndim - 1))
    count = jnp.maximum(jnp.sum(node_mask.astype(a.dtype)), jnp.ones((), a.dtype))
    return jnp.sum(a * w, axis=0) / count


def graph_mean(
    a: jax.Array, node_mask: jax.Array, node_graph: jax.Array | None, num_graphs: int
) -> jax.Array:
    """`[M, ...]` -> `[G, ...]`: each graph's mean over its real nodes (0 if it has none).

    `node_graph [M]` says which graph each node belongs to; None: one graph (G = 1).
    """
    if node_graph is None:
        return masked_mean(a, node_mask)[None]
    mask = node_mask.astype(a.dtype)
    sums = jax.ops.segment_sum(
        a * mask.reshape((-1,) + (1,) * (a.ndim - 1)), node_graph, num_segments=num_graphs
    )
    count = jax.ops.segment_sum(mask, node_graph, num_segments=num_graphs)
    count = jnp.maximum(count, jnp.ones((), a.dtype))
    return sums / count.reshape((-1,) + (1,) * (a.ndim - 1))


def _per_node(per_graph: jax.Array, node_graph: jax.Array | None) -> jax.Array:
    """`[G, ...]` -> the row of each node's graph: `[M, ...]`, or `[1, ...]` to broadcast."""
    return per_graph if node_graph is None else per_graph[node_graph]


class FastEGCL(nn.Module):
    """One FastEGNN layer (the equations of the module docstring).

    Attributes:
        config: the stack's `FastEGNNConfig`.

    Call arguments (edges `[M, M - 1, ...]` dense or `[E, ...]` sparse):
        graph: `DenseGraph` or `SparseGraph`, the real-real edges.
        node_mask: `[M]` bool, the real nodes (the virtual nodes talk to these only).
        h: `[M, H]` node features; x: `[M, n]` positions; v: `[M, n]` or None.
        edge_attr: real-real edge attributes in the backend's layout, or None.
        virtual_h: `[G, C, H]`; virtual_x: `[G, C, n]`: the C virtual nodes of each of G
            graphs.
        node_graph: `[M]` int, the graph of each node (a packed batch), or None: G = 1.

    Returns:
        `(h, x, virtual_h, virtual_x)` updated, same shapes.
    """

    config: FastEGNNConfig

    @nn.compact
    def __call__(
        self, graph: Graph, node_mask, h, x, v, edge_attr, virtual_h, virtual_x, node_graph=None
    ):
        cfg = self.config
        width, act, dtype = cfg.hidden_features, nn.silu, h.dtype

        def dense(features, name):  # every such layer reads a width-`width` input
            return _linear(features, width, dtype, name)

        def coord_mlp(m, name):
            """phi_xv / phi_X: a hidden layer, then a bias-free tiny scalar (phi_x, the same
            for the real-real edges, is in `messages` below)."""
            w = act(dense(width, name=f"{name}_hidden")(m))
            kernel, _ = DenseParams(
                width, 1, use_bias=False, kernel_init=_xavier_uniform(0.001), name=f"{name}_out"
            )(dtype)
            w = w @ kernel
            return jnp.tanh(w) if cfg.tanh else w

        f = h.shape[-1]
        num_graphs, c = virtual_x.shape[:2]

        def mean_per_graph(a):
            return graph_mean(a, node_mask, node_graph, num_graphs)

        a = 0 if edge_attr is None else edge_attr.shape[-1]

        # Real-real messages phi_e (EGNN's, with h_i and h_j projected once per node), as a
        # pure per-edge function that the graph may run chunk by chunk (`edge_chunk_size`);
        # hence its parameters are declared here, named as `nn.Dense` layers would be.
        k_edge, b_edge = DenseParams(2 * f + 1 + a, width, name="edge_in")(dtype)
        k_msg, b_msg = DenseParams(width, width, name="edge_out")(dtype)
        if cfg.attention:
            k_att, b_att = DenseParams(width, 1, name="attention")(dtype)
        k_coord_hidden, b_coord_hidden = DenseParams(width, width, name="coord_hidden")(dtype)
        k_coord, _ = DenseParams(
            width, 1, use_bias=False, kernel_init=_xavier_uniform(0.001), name="coord_out"
        )(dtype)

        weights = message_weights(
            f,
            (k_edge, b_edge),
            (k_msg, b_msg),
            (k_coord_hidden, b_coord_hidden),
            k_coord,
            (k_att, b_att) if cfg.attention else None,
        )

        def messages(w, pair, diff, edge_attr):
            """Per edge: the message m_ij and the coordinate update (x_i - x_j) phi_x(m_ij)."""
            m, d2 = edge_input_layer(w, pair, diff, edge_attr)
            m = act(act(m) @ w["msg"][0] + _row(w["msg"][1], m.ndim))
            if cfg.attention:
                m = m * nn.sigmoid(m @ w["attention"][0] + _row(w["attention"][1], m.ndim))
            if cfg.normalize:
                diff = diff / (jax.lax.stop_gradient(_safe_norm(d2))[..., None] + 1e-8)
            kernel, bias = w["coord_hidden"]
            coord = act(m @ kernel + _row(bias, m.ndim)) @ w["coord"]
            return m, diff * (jnp.tanh(coord) if cfg.tanh else coord)

        m_sum, shift = graph.aggregate_messages(
            messages,
            h @ k_edge[:f],
            h @ k_edge[f : 2 * f],
            x,
            edge_attr,
            chunk_size=cfg.edge_chunk_size,
            weights=weights,
        )

        # Real-virtual messages phi_ev, from h_i, s_c, |z_c - x_i| and the Gram row G_c.
        # Each node sees the C virtual nodes of its own graph.
        to_virtual = _per_node(virtual_x, node_graph) - x[:, None, :]  # [M, C, n]: z_c - x_i
        distance = _safe_norm(jnp.sum(to_virtual * to_virtual, axis=-1))  # [M, C]
        centred = virtual_x - mean_per_graph(x)[:, None, :]  # [G, C, n]
        gram = jnp.einsum("gcn,gdn->gcd", centred, centred)  # [G, C, C]
        k_virt, b_virt = DenseParams(2 * f + 1 + c, width, name="virtual_edge_in")(dtype)
        per_node = h @ k_virt[:f]  # [M, H]
        per_channel = virtual_h @ k_virt[f : 2 * f] + gram @ k_virt[2 * f + 1 :]  # [G, C, H]
        mv = per_node[:, None, :] + _per_node(per_channel, node_graph) + _row(b_virt, 3)
        mv = mv + distance[..., None] * _row(k_virt[2 * f], 3)
        mv = act(dense(width, name="virtual_edge_out")(act(mv)))  # [M, C, H]
        if cfg.attention:
            mv = mv * nn.sigmoid(dense(1, name="virtual_attention")(mv))

        # Coordinates of the real nodes.
        inv_degree = graph.inv_degree(dtype)[:, None]  # both mean aggregations use it
        if cfg.coords_agg == "mean":
            shift = shift * inv_degree
        pull = jnp.mean(-to_virtual * coord_mlp(mv, "virtual_coord"), axis=1)  # [M, n]
        x_new = x + shift + pull
        if cfg.velocity:
            k_vel, b_vel = DenseParams(f, width, name="vel_hidden")(dtype)
            k_vout, b_vout = DenseParams(width, 1, name="vel_out")(dtype)
            phi_v = act(h @ k_vel + _row(b_vel, 2)) @ k_vout + _row(b_vout, 2)
            x_new = x_new + phi_v * v

        # Coordinates of the virtual nodes: the mean over the real nodes.
        virtual_x_new = virtual_x + mean_per_graph(to_virtual * coord_mlp(mv, "virtual_position"))

        # Features: real nodes see the mean real message and every virtual message in order.
        m_i = m_sum * inv_degree
        node_in = jnp.concatenate([h, m_i, mv.reshape(mv.shape[0], c * width)], axis=-1)
        out = _linear(width, node_in.shape[-1], dtype, "node_hidden")(node_in)
        out = _linear(f, width, dtype, "node_out")(act(out))
        h_new = h + out if cfg.residual else out

        virtual_in = jnp.concatenate([virtual_h, mean_per_graph(mv)], axis=-1)
        out = _linear(width, virtual_in.shape[-1], dtype, "virtual_node_hidden")(virtual_in)
        out = _linear(virtual_h.shape[-1], width, dtype, "virtual_node_out")(act(out))
        virtual_h_new = virtual_h + out if cfg.residual else out
        return h_new, x_new, virtual_h_new, virtual_x_new


class FastEGNN(nn.Module):
    """A linear node embedding, learned virtual-node features, `num_layers` `FastEGCL`s and
    an optional linear read-out.

    Attributes:
        config: `FastEGNNConfig`.

    Call arguments: as `FastEGCL` without the virtual nodes (their positions start at each
    graph's centre of mass, their features at the learned `virtual_features`), with `h` of
    any width F, and `num_graphs` G (static) with `node_graph`.

    Returns:
        `FastEGNNOutput`; its virtual fields are `[G, C, ...]` with `node_graph`, `[C, ...]`
        without.
    """

    config: FastEGNNConfig

    @nn.compact
    def __call__(
        self, graph: Graph, node_mask, h, x, v=None, edge_attr=None, node_graph=None, num_graphs=1
    ):
        cfg = self.config
        dtype = h.dtype
        h = _linear(cfg.hidden_features, h.shape[-1], dtype, "embedding")(h)
        if edge_attr is not None:
            edge_attr = graph.edge_view(edge_attr)
        virtual_h = self.param(
            "virtual_features",
            nn.initializers.normal(1.0),
            (cfg.virtual_channels, cfg.hidden_features),
            dtype,
        )
        num_graphs = 1 if node_graph is None else num_graphs
        virtual_h = jnp.broadcast_to(virtual_h, (num_graphs,) + virtual_h.shape)
        centre = graph_mean(x, node_mask, node_graph, num_graphs)  # [G, n]
        virtual_x = jnp.broadcast_to(
            centre[:, None, :], (num_graphs, cfg.virtual_channels, x.shape[-1])
        )
        for i in range(cfg.num_layers):
            h, x, virtual_h, virtual_x = FastEGCL(cfg, name=f"layer_{i}")(
                graph, node_mask, h, x, v, edge_attr, virtual_h, virtual_x, node_graph
            )
        if cfg.out_features is not None:
            h = _linear(cfg.out_features, cfg.hidden_features, dtype, "readout")(h)
        if node_graph is None:
            virtual_h, virtual_x = virtual_h[0], virtual_x[0]
        return FastEGNNOutput(h, x, virtual_h, virtual_x)


@functools.partial(jax.jit, static_argnames=("sigma", "num_samples"))
def mmd_loss(
    key: jax.Array,
    x: jax.Array,
    virtual_x: jax.Array,
    *,
    sigma: float = 1.5,
    num_samples: int | None = None,
    node_mask: jax.Array | None = None,
    node_graph: jax.Array | None = None,
    graph_mask: jax.Array | None = None,
) -> jax.Array:
    """FastEGNN's MMD regulariser between real positions and the virtual nodes (pure;
    jit-compiled).

    As the reference training loop computes it (`utils/train.py`): with the kernel
    k(a, b) = exp(-|a - b| / (2 sigma^2)) (the distance, not its square) and S real nodes
    drawn at random without replacement,

        loss = mean_{c, c'} k(z_c, z_c') - 2 mean_{s, c} k(x_s, z_c).

    The real-real term of a full MMD is left out, as there: it does not depend on Z.

    Arguments:
        key: a `jax.random` key (which real nodes are drawn).
        x: `[M, n]` real positions (the model's predictions).
        virtual_x: `[C, n]` virtual-node positions.
        sigma: kernel width (reference: 1.5).
        num_samples: S (static); default 3 C (reference: `--sample 3`), at most M.
        node_mask: `[M]` bool, the real nodes (padding nodes are never drawn).
        node_graph: `[M]` int, for a packed batch of G graphs (`egnn_jax.GraphBatch`):
            each node's graph; then `virtual_x` is `[G, C, n]` and the loss is the mean of
            the graphs' losses (each draws its S nodes among its own).
        graph_mask: `[G]` bool, the real graphs (the mean skips the others); with
            `node_graph` only, default all.

    Returns:
        The scalar loss.
    """
    if node_graph is not None:
        return _packed_mmd_loss(
            key, x, virtual_x, sigma, num_samples, node_mask, node_graph, graph_mask
        )
    if graph_mask is not None:
        raise ValueError("graph_mask goes with node_graph (a packed batch)")
    m, c = x.shape[0], virtual_x.shape[0]
    samples = min(3 * c if num_samples is None else num_samples, m)
    if samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if node_mask is None:
        node_mask = jnp.ones((m,), bool)
    scores = jnp.where(node_mask, jax.random.uniform(key, (m,), x.dtype), -1.0)
    score, drawn = jax.lax.top_k(scores, samples)
    valid = (score >= 0).astype(x.dtype)  # fewer real nodes than samples: the rest are dropped

    def kernel(a, b):
        d = a[:, None, :] - b[None, :, :]
        return jnp.exp(-_safe_norm(jnp.sum(d * d, axis=-1)) / (2 * sigma**2))

    l_vv = jnp.mean(kernel(virtual_x, virtual_x))
    k_rv = jnp.sum(kernel(x[drawn], virtual_x) * valid[:, None])
    l_rv = 2 * k_rv / (jnp.maximum(jnp.sum(valid), 1.0) * c)
    return l_vv - l_rv


def _packed_mmd_loss(key, x, virtual_x, sigma, num_samples, node_mask, node_graph, graph_mask):
    if virtual_x.ndim != 3:
        raise ValueError(f"with node_graph, virtual_x must be [G, C, n], got {virtual_x.shape}")
    num_graphs, m = virtual_x.shape[0], x.shape[0]
    if node_graph.shape != (m,):
        raise ValueError(f"node_graph must be [M={m}], got {node_graph.shape}")
    if graph_mask is None:
        graph_mask = jnp.ones((num_graphs,), bool)
    if graph_mask.shape != (num_graphs,):
        raise ValueError(f"graph_mask must be [G={num_graphs}], got {graph_mask.shape}")
    if node_mask is None:
        node_mask = jnp.ones((m,), bool)

    # One graph at a time over all M nodes, its own masked: O(G M), simple and exact.
    def one(key, g, z):
        return mmd_loss(
            key, x, z, sigma=sigma, num_samples=num_samples, node_mask=node_mask & (node_graph == g)
        )

    keys = jax.random.split(key, num_graphs)
    losses = jax.vmap(one)(keys, jnp.arange(num_graphs), virtual_x)
    weight = graph_mask.astype(losses.dtype)
    return jnp.sum(losses * weight) / jnp.maximum(jnp.sum(weight), 1.0)
