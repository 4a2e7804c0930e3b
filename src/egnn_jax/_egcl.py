"""The Equivariant Graph Convolutional Layer (EGCL) and the EGNN stack as Flax modules.

Paper: E(n) Equivariant Graph Neural Networks, Satorras, Hoogeboom & Welling, ICML 2021.
For one layer, with messages flowing from j to i over the graph's edges:

    m_ij = phi_e(h_i, h_j, |x_i - x_j|^2, a_ij)                       (eq. 3)
    x_i <- x_i + C sum_j (x_i - x_j) phi_x(m_ij)                       (eq. 4)
    m_i  = sum_j m_ij              (or sum_j e_ij m_ij, eq. 8)          (eq. 5)
    h_i <- h_i + phi_h(h_i, m_i)                                       (eq. 6)

and in the velocity variant (eq. 7) v_i = phi_v(h_i) v_i^init + C sum_j (x_i - x_j) phi_x(m_ij),
x_i <- x_i + v_i.

The modules take a graph backend (`DenseGraph` or `SparseGraph`), so dense and sparse
graphs share every parameter and every line of the layer.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ._config import EGNNConfig
from ._graph import DenseGraph, SparseGraph

Graph = DenseGraph | SparseGraph


def _xavier_uniform(gain: float) -> nn.initializers.Initializer:
    return nn.initializers.variance_scaling(gain**2, "fan_avg", "uniform")


# PyTorch's `nn.Linear` initialisation, which the reference code (and so the paper's numbers)
# relies on: kernel and bias uniform in +-1/sqrt(fan_in). Flax's default (LeCun normal, std
# 1/sqrt(fan_in)) is sqrt(3) times wider per layer; compounded over 4 layers with squared
# distances of ~100 as inputs, it makes the charged N-body training diverge.
_torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
    bound = 1.0 / max(fan_in, 1) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _linear(features: int, fan_in: int, dtype, name: str, **kwargs) -> nn.Dense:
    """A `nn.Dense` with the reference (PyTorch) initialisation."""
    kwargs.setdefault("kernel_init", _torch_kernel_init)
    return nn.Dense(
        features, param_dtype=dtype, bias_init=_torch_bias_init(fan_in), name=name, **kwargs
    )


def _safe_norm(d2: jax.Array) -> jax.Array:
    """sqrt(d2) with a finite (zero) gradient at d2 = 0, e.g. on self-pairs or coincident nodes."""
    positive = d2 > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, jnp.ones_like(d2))), 0.0)


class DenseParams(nn.Module):
    """The kernel `[in_features, features]` and bias `[features]` of a `nn.Dense`, unapplied.

    EGCL fuses several linear maps of the same input into one matrix product (below); declaring
    their parameters here keeps the parameter tree that of plain `nn.Dense` layers.
    """

    in_features: int
    features: int
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = _torch_kernel_init

    @nn.compact
    def __call__(self, dtype):
        kernel = self.param("kernel", self.kernel_init, (self.in_features, self.features), dtype)
        if not self.use_bias:
            return kernel, None
        bias = self.param("bias", _torch_bias_init(self.in_features), (self.features,), dtype)
        return kernel, bias


def message_weights(f, edge_in, edge_out, coord_hidden, coord_out, attention=None) -> dict:
    """The parameters of the per-edge message function (phi_e, phi_x), as one pytree.

    `edge_in` is phi_e's first layer `(kernel [2F + 1 + A, H], bias)`, of which the per-edge
    function reads the distance row and the edge-attribute rows (the h_i and h_j rows are
    applied per node); the others are `(kernel, bias)` pairs, `coord_out` a kernel.
    """
    kernel, bias = edge_in
    weights = {
        "d2": kernel[2 * f],
        "edge_bias": bias,
        "attr": kernel[2 * f + 1 :],
        "msg": edge_out,
        "coord_hidden": coord_hidden,
        "coord": coord_out,
    }
    if attention is not None:
        weights["attention"] = attention
    return weights


def edge_input_layer(w: dict, pair, diff, edge_attr):
    """phi_e's first linear layer on every edge (before its activation), and ‖x_i - x_j‖².

    Arguments:
        w: `message_weights`' pytree.
        pair: `[..., H]` the paired per-node projections of h_i and h_j.
        diff: `[..., n]` relative vectors x_i - x_j.
        edge_attr: `[..., A]` or None.

    Returns:
        `(pre_activation [..., H], d2 [...])`.
    """
    # Both forms below were measured (benchmarks/bench_scale.py, ~10 % of the chunked step
    # at 10,000 nodes on XLA:CPU). The distance term is an outer product written as a
    # [..., 1] @ [1, H] matrix product: as a broadcast multiply, its gradients became library
    # reductions that wrote d2 and the kernel row broadcast to [e, H] in every chunk. The
    # sum of squares is written out term by term, so it fuses into the ops that read it.
    d2 = diff[..., 0] * diff[..., 0]
    for k in range(1, diff.shape[-1]):
        d2 = d2 + diff[..., k] * diff[..., k]
    m = pair + d2[..., None] @ w["d2"][None, :] + _row(w["edge_bias"], pair.ndim)
    if edge_attr is not None:
        m = m + edge_attr @ w["attr"]
    return m, d2


def _row(vector: jax.Array, ndim: int) -> jax.Array:
    """`[H]` -> `[1, ..., 1, H]` of rank `ndim`: explicit broadcasting (strict rank promotion)."""
    return vector.reshape((1,) * (ndim - 1) + (-1,))


class EGCL(nn.Module):
    """One Equivariant Graph Convolutional Layer (eqs. 3-8).

    Attributes:
        config: the stack's `EGNNConfig` (hidden width and options).

    Call arguments (nodes `[M, ...]`; edges `[M, M - 1, ...]` dense or `[E, ...]` sparse):
        graph: `DenseGraph` or `SparseGraph` backend.
        h: `[M, F]` node features.
        x: `[M, n]` positions.
        v: `[M, n]` input velocities (velocity variant only, else None).
        edge_attr: edge attributes in the backend's layout (`graph.edge_view`), or None.

    Returns:
        `(h, x)` updated, same shapes as the inputs.
    """

    config: EGNNConfig

    @nn.compact
    def __call__(self, graph: Graph, h, x, v=None, edge_attr=None):
        cfg = self.config
        width = cfg.hidden_features
        act = nn.silu
        dtype = h.dtype

        def weights(features, name, in_features=width, **kwargs):
            return DenseParams(in_features, features, name=name, **kwargs)(dtype)

        # Parameters are declared up front (named as `nn.Dense` layers would be) because the
        # per-edge part below is a pure function that the graph may run chunk by chunk
        # inside a `lax.scan`, where Flax submodules cannot be called.
        f = h.shape[-1]
        a = 0 if edge_attr is None else edge_attr.shape[-1]
        k_edge, b_edge = weights(width, "edge_in", 2 * f + 1 + a)
        k_node, b_node = weights(width, "node_hidden", f + width)
        if cfg.velocity:
            k_vel, b_vel = weights(width, "vel_hidden", f)
        k_msg, b_msg = weights(width, "edge_out")
        if cfg.attention:
            k_att, b_att = weights(1, "attention")
        k_coord_hidden, b_coord_hidden = weights(width, "coord_hidden")
        k_coord, _ = weights(
            1, "coord_out", use_bias=False, kernel_init=_xavier_uniform(cfg.coords_weight_gain)
        )
        if cfg.velocity:
            k_vout, b_vout = weights(1, "vel_out")
        if cfg.edge_inference:
            k_inf, b_inf = weights(1, "edge_inference")
        k_out, b_out = weights(f, "node_out")

        # Every linear map of the layer input h, in one matrix product: the h_i and h_j parts
        # of phi_e's first layer (linear in [h_i, h_j, d2, a_ij], so they are projected once
        # per node and paired per edge, O(N F H) instead of O(E F H)), phi_v's first layer and
        # the h part of phi_h's first layer. Fewer, larger products matter on small graphs.
        blocks = [k_edge[:f], k_edge[f : 2 * f], k_node[:f]]
        if cfg.velocity:
            blocks.append(k_vel)
        projected = jnp.split(h @ jnp.concatenate(blocks, axis=1), len(blocks), axis=1)

        # The per-edge function takes its parameters as an argument, not from the closure,
        # so that the graph can hand them to a `shard_map` over edges (`edge_sharding`).
        weights = message_weights(
            f,
            (k_edge, b_edge),
            (k_msg, b_msg),
            (k_coord_hidden, b_coord_hidden),
            k_coord,
            (k_att, b_att) if cfg.attention else None,
        )
        if cfg.edge_inference:
            weights["inference"] = (k_inf, b_inf)

        def messages(w, pair, diff, edge_attr):
            """Per edge: the message m_ij seen by phi_h and the coordinate update."""
            # phi_e: message m_ij.
            m, d2 = edge_input_layer(w, pair, diff, edge_attr)
            m = act(m)
            m = act(m @ w["msg"][0] + _row(w["msg"][1], m.ndim))
            if cfg.attention:
                m = m * nn.sigmoid(m @ w["attention"][0] + _row(w["attention"][1], m.ndim))

            # phi_x: coordinate weights; tiny last layer so that training starts stable.
            kernel, bias = w["coord_hidden"]
            coord = act(m @ kernel + _row(bias, m.ndim)) @ w["coord"]
            if cfg.tanh:
                coord = jnp.tanh(coord) * cfg.coords_range
            form = cfg.normalize_form
            if form == "clean":
                # Unit directions with the norm detached (reference egnn_clean); eps keeps
                # coincident nodes at a zero update instead of 0/0.
                diff = diff / (jax.lax.stop_gradient(_safe_norm(d2))[..., None] + 1e-8)
            elif form == "nbody":
                diff = diff / (_safe_norm(d2)[..., None] + 1.0)
            trans = diff * coord
            if cfg.coords_clamp is not None:
                trans = jnp.clip(trans, -cfg.coords_clamp, cfg.coords_clamp)

            if cfg.edge_inference:
                m = m * nn.sigmoid(m @ w["inference"][0] + _row(w["inference"][1], m.ndim))
            return m, trans

        m_i, shift = graph.aggregate_messages(
            messages,
            projected[0],
            projected[1],
            x,
            edge_attr,
            chunk_size=cfg.edge_chunk_size,
            weights=weights,
        )
        if cfg.coords_agg == "mean":
            shift = shift * graph.inv_degree(x.dtype)[:, None]

        if cfg.velocity:
            phi_v = act(projected[3] + _row(b_vel, 2)) @ k_vout + _row(b_vout, 2)
            x = x + phi_v * v + shift
        else:
            x = x + shift

        # phi_h: node update from the (optionally edge-inferred) aggregated message.
        out = act(projected[2] + m_i @ k_node[f:] + _row(b_node, 2))
        out = out @ k_out + _row(b_out, 2)
        h = h + out if cfg.residual else out
        return h, x


class EGNN(nn.Module):
    """A stack of EGCL layers with a linear node embedding and an optional linear read-out.

    Attributes:
        config: `EGNNConfig`.

    Call arguments: as `EGCL`, with `h` of any width F (embedded to `hidden_features`).

    Returns:
        `(h, x)`: h `[M, out_features or hidden_features]`, x `[M, n]`.
    """

    config: EGNNConfig

    @nn.compact
    def __call__(self, graph: Graph, h, x, v=None, edge_attr=None):
        cfg = self.config
        h = _linear(cfg.hidden_features, h.shape[-1], h.dtype, "embedding")(h)
        if edge_attr is not None:
            edge_attr = graph.edge_view(edge_attr)
        if cfg.remat and not self.is_initializing():
            per_layer = [self.variables["params"][f"layer_{i}"] for i in range(cfg.num_layers)]
            layer = EGCL(cfg, parent=None)
            h, x = rematerialised_layers(layer, per_layer, graph, (h, x), v, edge_attr)
        else:
            for i in range(cfg.num_layers):
                h, x = EGCL(cfg, name=f"layer_{i}")(graph, h, x, v, edge_attr)
        if cfg.out_features is not None:
            h = _linear(cfg.out_features, cfg.hidden_features, h.dtype, "readout")(h)
        return h, x


def rematerialised_layers(layer: nn.Module, layer_params: list, graph, carry: tuple, *args):
    """`carry` through identical layers as a `lax.scan` of `jax.checkpoint`ed steps.

    The backward pass recomputes one layer at a time from its inputs (the carry) instead of
    storing every layer's edge activations. The scan is what makes the saving real: with
    the layers unrolled, XLA is free to schedule all recomputations before the first
    backward step, keeping everything alive again.

    Arguments:
        layer: an unbound layer module, called as ``layer(graph, *carry, *args)`` and
            returning the new carry.
        layer_params: each layer's ``params`` (same structure and shapes), in order.
        graph: the graph backend, passed first to every layer.
        carry: what each layer updates, e.g. ``(h, x)``.
        *args: what every layer reads unchanged (velocities, edge attributes).

    Returns:
        The carry after the last layer.
    """
    stacked = jax.tree.map(lambda *p: jnp.stack(p), *layer_params)

    @jax.checkpoint
    def step(c, params):
        return layer.apply({"params": params}, graph, *c, *args), None

    carry, _ = jax.lax.scan(step, tuple(carry), stacked)
    return carry
