"""The HEGNN layer and stack as Flax modules: EGNN plus steerable features of degree 0 ... L.

Paper: Cen et al., "Are High-Degree Representations Really Unnecessary in Equivariant Graph
Neural Networks?", NeurIPS 2024; reference code GLAD-RUC/HEGNN,
`models/HEGNN.py` (the N-body model). Messages flow from j to i; r_ij = x_i - x_j; every
aggregation is the mean over the neighbours of i, as in the reference (`scatter(...,
reduce="mean")`).

Initialisation (once, before the first layer; reference `SH_INIT`):

    w_ij      = SiLU(phi_w(|r_ij|, h_i, h_j, a_ij))               in R^(L+1)
    chi_i^(l) = mean_j w_ij^(l) Y^(l)(r_ij / |r_ij|)              l = 0 ... L

with Y^(l) the real spherical harmonics of `e3nn_jax` normalised to |Y^(l)| = 1
(`normalization="norm"`; Y^(0) = 1). Each layer (reference `HEGNN_Layer`):

    m_ij        = SiLU(phi_e(h_i, h_j, a_ij, |r_ij|^2, <chi_i^(0), chi_j^(0)>, ...,
                                                       <chi_i^(L), chi_j^(L)>))
    x_i        <- x_i + mean_j r_ij phi_x(m_ij)  [+ phi_v(h_i) v_i, velocity variant]
    chi_i^(l)  <- chi_i^(l) + mean_j phi_chi(m_ij)^(l) (chi_i^(l) - chi_j^(l))
    h_i        <- phi_h(h_i, mean_j m_ij)                       [h_i + ... with `residual`]

so degrees mix only through the invariant inner products. phi_* are two-layer SiLU MLPs of
width `hidden_features` with PyTorch's default initialisation (the reference's `BaseMLP`);
unlike EGNN's phi_x, HEGNN's phi_x has a bias and no tiny-gain last layer.

chi is stored as one array `[M, (L + 1)^2]`, degrees concatenated in the order of
`e3nn_jax.Irreps.spherical_harmonics(L)` (0e + 1o + 2e + ...). Per-degree sums and the
per-degree scaling are products with a static one-hot `[(L + 1)^2, L + 1]` matrix, so no
Python loop runs over the degrees and the backward pass has no scatter.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._config import HEGNNConfig
from ._egcl import DenseParams, _linear, _row, _safe_norm, rematerialised_layers
from ._graph import DenseGraph, SparseGraph

Graph = DenseGraph | SparseGraph
Steerable = Float[Array, "nodes steerable"]


@functools.cache
def _degree_one_hot(max_degree: int) -> np.ndarray:
    """`[(L + 1)^2, L + 1]` float64, static: entry [k, l] is 1 iff component k has degree l."""
    degree = np.repeat(np.arange(max_degree + 1), 2 * np.arange(max_degree + 1) + 1)
    return (degree[:, None] == np.arange(max_degree + 1)[None, :]).astype(np.float64)


def per_degree_sum(a: jax.Array, max_degree: int) -> jax.Array:
    """`[..., (L + 1)^2]` -> `[..., L + 1]`: the sum of the components of each degree."""
    one_hot = jnp.asarray(_degree_one_hot(max_degree), a.dtype)
    # "highest": an exact selection even where float32 products default to TF32 (GPUs).
    return jnp.matmul(a, one_hot, precision=jax.lax.Precision.HIGHEST)


def per_degree_expand(w: jax.Array, max_degree: int) -> jax.Array:
    """`[..., L + 1]` -> `[..., (L + 1)^2]`: every degree's value repeated over its 2l + 1
    components (the transpose of `per_degree_sum`)."""
    one_hot = jnp.asarray(_degree_one_hot(max_degree).T, w.dtype)
    return jnp.matmul(w, one_hot, precision=jax.lax.Precision.HIGHEST)


def spherical_harmonics(r: jax.Array, max_degree: int) -> jax.Array:
    """`[..., 3]` -> `[..., (L + 1)^2]`: the real spherical harmonics Y^(0) ... Y^(L) of r / |r|.

    `e3nn_jax` with `normalize=True, normalization="norm"` as the reference (`SH_INIT`), so
    |Y^(l)| = 1 for every l and r != 0; r = 0 gives Y^(0) = 1 and Y^(l > 0) = 0 (no NaN).
    Under an orthogonal Q, Y(Q r) = D(Q) Y(r) with D the block-diagonal Wigner matrices of
    the irreps 0e + 1o + 2e + ... (`e3nn_jax.Irreps.spherical_harmonics(L).D_from_matrix`).
    """
    import e3nn_jax as e3nn  # imported on first use: it costs ~1 s (scipy.signal, sympy)

    irreps = e3nn.Irreps.spherical_harmonics(max_degree)
    vectors = e3nn.IrrepsArray("1o", r)
    # e3nn's default adds a custom JVP built symbolically (sympy) at every trace, ~1 s at
    # L = 6; plain autodiff through the same recursion is exact and traces in milliseconds.
    sh = e3nn.spherical_harmonics(
        irreps, vectors, normalize=True, normalization="norm", algorithm=("recursive", "dense")
    )
    return sh.array


class SteerableInit(nn.Module):
    """The initial steerable features chi_i^(l) = mean_j w_ij^(l) Y^(l)(r_ij / |r_ij|).

    w_ij = SiLU(phi_w(|r_ij|, h_i, h_j, a_ij)), a two-layer SiLU MLP ending in a SiLU (the
    reference `SH_INIT.mlp_sh` has `last_act=True`; its input order is kept). Y is detached
    when `config.stop_sh_gradient` (reference: `.detach()`).

    Attributes:
        config: the stack's `HEGNNConfig`.

    Call arguments (nodes `[M, ...]`; edges `[M, M - 1, ...]` dense or `[E, ...]` sparse):
        graph: `DenseGraph` or `SparseGraph` backend.
        h: `[M, F]` node features (the embedded h).
        x: `[M, 3]` positions.
        edge_attr: edge attributes in the backend's layout (`graph.edge_view`), or None.

    Returns:
        chi: `[M, (L + 1)^2]`; 0 for nodes without neighbours.
    """

    config: HEGNNConfig

    @nn.compact
    def __call__(self, graph: Graph, h, x, edge_attr=None) -> Steerable:
        cfg = self.config
        width, degrees = cfg.hidden_features, cfg.max_degree + 1
        f = h.shape[-1]
        a = 0 if edge_attr is None else edge_attr.shape[-1]
        diff = graph.diff(x)
        dist = _safe_norm(jnp.sum(diff * diff, axis=-1))

        # phi_w's first layer is linear in [|r_ij|, h_i, h_j, a_ij]: h is projected per node.
        kernel, bias = DenseParams(1 + 2 * f + a, width, name="edge_in")(h.dtype)
        blocks = [kernel[1 : 1 + f], kernel[1 + f : 1 + 2 * f]]
        projected = jnp.split(h @ jnp.concatenate(blocks, axis=1), 2, axis=1)
        w = graph.pair(projected[0], projected[1])
        w = w + dist[..., None] * _row(kernel[0], w.ndim) + _row(bias, w.ndim)
        if edge_attr is not None:
            w = w + edge_attr @ kernel[1 + 2 * f :]
        w = nn.silu(_linear(degrees, width, h.dtype, "edge_out")(nn.silu(w)))

        sh = spherical_harmonics(diff, cfg.max_degree)
        if cfg.stop_sh_gradient:
            sh = jax.lax.stop_gradient(sh)
        chi = graph.aggregate(per_degree_expand(w, cfg.max_degree) * sh)
        return chi * graph.inv_degree(x.dtype)[:, None]


class HEGNNLayer(nn.Module):
    """One HEGNN layer: an EGNN-velocity layer whose messages also read the per-degree inner
    products of the steerable features, and which updates those features.

    Every message and update reads the layer's input (h, x, chi) (reference `Msg`, `Agg`,
    `Upd`), aggregations are neighbour means, chi has a residual, h none unless
    `config.residual`, and the coordinate differences are neither normalised nor clamped
    (the reference does neither).

    Attributes:
        config: the stack's `HEGNNConfig`.

    Call arguments (nodes `[M, ...]`; edges `[M, M - 1, ...]` dense or `[E, ...]` sparse):
        graph: `DenseGraph` or `SparseGraph` backend.
        h: `[M, F]` node features.
        x: `[M, 3]` positions.
        chi: `[M, (L + 1)^2]` steerable features.
        v: `[M, 3]` input velocities (velocity variant only, else None).
        edge_attr: edge attributes in the backend's layout (`graph.edge_view`), or None.

    Returns:
        `(h, x, chi)` updated: `[M, hidden_features]`, `[M, 3]`, `[M, (L + 1)^2]`.
    """

    config: HEGNNConfig

    @nn.compact
    def __call__(self, graph: Graph, h, x, chi: Steerable, v=None, edge_attr=None):
        cfg = self.config
        width, max_degree = cfg.hidden_features, cfg.max_degree
        degrees = max_degree + 1
        act = nn.silu

        def dense(features, name):  # every such layer reads a width-`width` input
            return _linear(features, width, h.dtype, name)

        f = h.shape[-1]
        a = 0 if edge_attr is None else edge_attr.shape[-1]
        diff = graph.diff(x)
        d2 = jnp.sum(diff * diff, axis=-1)
        inv_degree = graph.inv_degree(x.dtype)[:, None]

        # Every linear map of h in one product, as in EGCL: the h_i and h_j parts of phi_e's
        # first layer (input [h_i, h_j, a_ij, |r_ij|^2, inner products], the reference's
        # order), the h part of phi_h's first layer and phi_v's first layer.
        k_msg, b_msg = DenseParams(2 * f + a + 1 + degrees, width, name="edge_in")(h.dtype)
        k_node, b_node = DenseParams(f + width, width, name="node_hidden")(h.dtype)
        blocks = [k_msg[:f], k_msg[f : 2 * f], k_node[:f]]
        if cfg.velocity:
            k_vel, b_vel = DenseParams(f, width, name="vel_hidden")(h.dtype)
            blocks.append(k_vel)
        projected = jnp.split(h @ jnp.concatenate(blocks, axis=1), len(blocks), axis=1)

        # phi_e: m_ij, ending in a SiLU (reference `mlp_msg`, last_act=True).
        m = graph.pair(projected[0], projected[1])
        if edge_attr is not None:
            m = m + edge_attr @ k_msg[2 * f : 2 * f + a]
        m = m + d2[..., None] * _row(k_msg[2 * f + a], m.ndim) + _row(b_msg, m.ndim)
        inner = per_degree_sum(graph.pair_product(chi, chi), max_degree)  # [edges, L + 1]
        m = m + inner @ k_msg[2 * f + a + 1 :]
        m = act(m)
        m = act(dense(width, name="edge_out")(m))

        # phi_x and phi_chi read m_ij (two products: one fused [H, 2H] product was slower).
        k_coord, b_coord = DenseParams(width, width, name="coord_hidden")(h.dtype)
        k_steer, b_steer = DenseParams(width, width, name="steer_hidden")(h.dtype)
        w_x = dense(1, name="coord_out")(act(m @ k_coord + _row(b_coord, m.ndim)))  # [edges, 1]
        w_chi = dense(degrees, name="steer_out")(act(m @ k_steer + _row(b_steer, m.ndim)))

        shift = graph.aggregate(diff * w_x) * inv_degree
        if cfg.velocity:
            k_vout, b_vout = DenseParams(width, 1, name="vel_out")(h.dtype)
            phi_v = act(projected[3] + _row(b_vel, 2)) @ k_vout + _row(b_vout, 2)
            x = x + shift + phi_v * v
        else:
            x = x + shift

        d_chi = graph.diff(chi)
        chi = chi + graph.aggregate(per_degree_expand(w_chi, max_degree) * d_chi) * inv_degree

        # phi_h from the mean message (reference `Agg`: scatter mean; EGNN sums).
        m_i = graph.aggregate(m) * inv_degree
        out = act(projected[2] + m_i @ k_node[f:] + _row(b_node, 2))
        out = dense(width, name="node_out")(out)
        h = h + out if cfg.residual else out
        return h, x, chi


class HEGNN(nn.Module):
    """The HEGNN stack: a linear node embedding, the steerable initialisation, `num_layers`
    HEGNN layers and an optional linear read-out of h.

    Attributes:
        config: `HEGNNConfig`.

    Call arguments: as `HEGNNLayer`, without chi and with `h` of any width F (embedded to
    `hidden_features`).

    Returns:
        `(h, x, chi)`: h `[M, out_features or hidden_features]` invariant, x `[M, 3]`
        equivariant, chi `[M, (L + 1)^2]` (degrees 0 ... L, transforms with the Wigner D
        matrices of `e3nn_jax.Irreps.spherical_harmonics(L)`).
    """

    config: HEGNNConfig

    @nn.compact
    def __call__(self, graph: Graph, h, x, v=None, edge_attr=None):
        cfg = self.config
        h = _linear(cfg.hidden_features, h.shape[-1], h.dtype, "embedding")(h)
        if edge_attr is not None:
            edge_attr = graph.edge_view(edge_attr)
        chi = SteerableInit(cfg, name="steerable_init")(graph, h, x, edge_attr)
        if cfg.remat and not self.is_initializing():
            per_layer = [self.variables["params"][f"layer_{i}"] for i in range(cfg.num_layers)]
            layer = HEGNNLayer(cfg, parent=None)
            h, x, chi = rematerialised_layers(layer, per_layer, graph, (h, x, chi), v, edge_attr)
        else:
            for i in range(cfg.num_layers):
                h, x, chi = HEGNNLayer(cfg, name=f"layer_{i}")(graph, h, x, chi, v, edge_attr)
        if cfg.out_features is not None:
            h = _linear(cfg.out_features, cfg.hidden_features, h.dtype, "readout")(h)
        return h, x, chi
