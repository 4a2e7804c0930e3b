"""The paper's baselines as Flax modules, with the reference code's inputs and initialisation.

Satorras, Hoogeboom & Welling (ICML 2021), section 5.1; reference code `vgsatorras/egnn`
(`n_body_system/model.py`: `GNN`, `RF_vel`; `models/gcl.py`: `GCL`, `GCL_rf_vel`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from egnn_jax._egcl import (
    _linear,
    _safe_norm,
    _torch_bias_init,
    _torch_kernel_init,
    _xavier_uniform,
)

__all__ = ["GNN", "RadialField"]


def _pair_mask(m: int, dtype, node_mask=None) -> jnp.ndarray:
    """`[M, M, 1]` mask: 1 on pairs of distinct real nodes (`node_mask` None: all real)."""
    off_diagonal = 1.0 - jnp.eye(m, dtype=dtype)
    if node_mask is None:
        return off_diagonal[:, :, None]
    real = node_mask.astype(dtype)
    return (off_diagonal * real[:, None] * real[None, :])[:, :, None]


class GNN(nn.Module):
    """Non-equivariant message-passing GNN on one complete graph (the reference ``GNN``).

    h = Embed(node_in); per layer (the reference ``GCL`` with ``recurrent=True``):
    m_ij = phi_e(h_i, h_j, a_ij) (2-layer SiLU MLP on the concatenation),
    m_i = sum_{j != i} m_ij, h_i <- h_i + phi_h(h_i, m_i); then a 2-layer SiLU decoder to
    `out_features` (the predicted position). PyTorch ``nn.Linear`` initialisation.

    The reference N-body code feeds it node_in = [x, v] (width 6 in 3-D) and the charge
    products q_i q_j as the only edge attribute.

    Call arguments: node_in `[M, F]`, edge_attr `[M, M, A]` or None, node_mask `[M]` bool or
    None (padding nodes send and receive no messages). Returns `[M, out]`.
    """

    out_features: int
    hidden_features: int = 64
    num_layers: int = 4

    @nn.compact
    def __call__(self, node_in, edge_attr=None, node_mask=None):
        width, act = self.hidden_features, nn.silu
        m_nodes = node_in.shape[0]
        a_width = 0 if edge_attr is None else edge_attr.shape[-1]
        mask = _pair_mask(m_nodes, node_in.dtype, node_mask)
        h = _linear(width, node_in.shape[-1], node_in.dtype, "embedding")(node_in)
        dense = lambda features, name: _linear(features, width, h.dtype, name)
        fan_in = 2 * width + a_width
        for i in range(self.num_layers):
            # The first message layer is linear in concat(h_i, h_j, a_ij): project the node
            # parts once per node, then pair them (same parameters as a Dense on the concat).
            kernel = self.param(f"edge_in_{i}_kernel", _torch_kernel_init, (fan_in, width))
            bias = self.param(f"edge_in_{i}_bias", _torch_bias_init(fan_in), (width,))
            m = (h @ kernel[:width])[:, None, :] + (h @ kernel[width : 2 * width])[None, :, :]
            m = m + bias[None, None, :]
            if edge_attr is not None:
                m = m + edge_attr @ kernel[2 * width :]
            m = act(m)
            m = act(dense(width, f"edge_out_{i}")(m))
            m_i = jnp.sum(m * mask, axis=1)
            node_in_i = jnp.concatenate([h, m_i], -1)
            out = act(_linear(width, 2 * width, h.dtype, f"node_hidden_{i}")(node_in_i))
            h = h + dense(width, f"node_out_{i}")(out)
        h = act(dense(width, "decoder_hidden")(h))
        return dense(self.out_features, "decoder")(h)


class RadialField(nn.Module):
    """Radial Field baseline with velocity (reference ``RF_vel``, and its initialisation).

    Per layer: x_i <- x_i + mean_{j != i} (x_i - x_j) phi(|x_i - x_j|, a_ij)
    + phi_v(|v_i|) v_i, with phi a SiLU MLP ending in a tiny (gain 0.001) linear layer and
    tanh. E(n)-equivariant; it has no node features.

    Call arguments: x `[M, d]`, v `[M, d]`, edge_attr `[M, M, A]` or None, node_mask `[M]`
    bool or None (the mean runs over the real neighbours). Returns x `[M, d]`.
    """

    hidden_features: int = 64
    num_layers: int = 4

    @nn.compact
    def __call__(self, x, v, edge_attr=None, node_mask=None):
        width, act = self.hidden_features, nn.silu
        m_nodes = x.shape[0]
        mask = _pair_mask(m_nodes, x.dtype, node_mask)
        neighbours = jnp.maximum(jnp.sum(mask, axis=1), 1.0)  # [M, 1]
        speed = _safe_norm(jnp.sum(v * v, axis=-1, keepdims=True))
        for i in range(self.num_layers):
            diff = x[:, None, :] - x[None, :, :]
            radial = _safe_norm(jnp.sum(diff * diff, axis=-1, keepdims=True))
            e = radial if edge_attr is None else jnp.concatenate([radial, edge_attr], -1)
            w = act(_linear(width, e.shape[-1], x.dtype, f"phi_hidden_{i}")(e))
            w = nn.Dense(1, use_bias=False, kernel_init=_xavier_uniform(0.001), name=f"phi_{i}")(w)
            w = jnp.tanh(w)
            shift = jnp.sum(diff * w * mask, axis=1) / neighbours
            phi_v = _linear(1, width, x.dtype, f"vel_out_{i}")(
                act(_linear(width, 1, x.dtype, f"vel_hidden_{i}")(speed))
            )
            x = x + shift + phi_v * v
        return x
