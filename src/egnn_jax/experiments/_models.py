"""The models compared in the particle-dynamics experiments, behind one interface.

Every model is described by a hashable `ModelSpec` and used through two pure functions:

    params = spec.init(key, batch)        # batch: see `_featurise` (a few samples suffice)
    x_pred = spec.predict(params, batch)  # [B, M, d]

Kinds (the baselines of Satorras et al., ICML 2021, section 5.1):

- ``"linear"``: x0 + t v0 with one scalar t. It is *fitted*, not trained: `spec.init` returns
  the least-squares t on the batch it is given (pass the training set).
- ``"gnn"``: the non-equivariant message-passing baseline (`GNN`): node inputs
  concat(x0, v0, node_feat), messages from concat(h_i, h_j, a_ij), a linear decoder to x.
- ``"radial_field"``: the Radial Field baseline (`RadialField`), velocity variant.
- ``"egnn"``: `egnn_jax.apply` (no velocity; h = node_feat) under `jax.vmap`; the prediction
  is the output x. ``velocity=True`` gives EGNN-vel (eq. 7), fed v0 as the velocity.

`loss_fn_for(spec)` / `eval_fn_for(spec)` return (cached, hence stable and hashable)
`loss_fn(params, batch)` / `eval_fn(params, batch)` for `egnn_jax.experiments._train.train`.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import egnn_jax
from egnn_jax._egcl import (
    _linear,
    _safe_norm,
    _torch_bias_init,
    _torch_kernel_init,
    _xavier_uniform,
)

__all__ = [
    "GNN",
    "ModelSpec",
    "RadialField",
    "eval_fn_for",
    "fit_linear",
    "training_run",
    "loss_fn_for",
    "mse",
]

Kind = Literal["linear", "gnn", "radial_field", "egnn"]
KINDS = ("linear", "gnn", "radial_field", "egnn")
# The experiments' model names -> (kind, EGNN velocity variant).
MODELS = {
    "linear": ("linear", False),
    "gnn": ("gnn", False),
    "radial_field": ("radial_field", False),
    "egnn": ("egnn", False),
    "egnn_vel": ("egnn", True),
}


def _off_diagonal(m: int, dtype) -> jax.Array:
    """`[M, M, 1]` mask, 0 on self-pairs."""
    return (1.0 - jnp.eye(m, dtype=dtype))[:, :, None]


class GNN(nn.Module):
    """Non-equivariant message-passing GNN on one complete graph (the paper's "GNN" baseline).

    h = Embed(node_in); per layer: m_ij = phi_e(h_i, h_j, a_ij) (2-layer SiLU MLP on the
    concatenation), m_i = sum_{j != i} m_ij, h_i <- h_i + phi_h(h_i, m_i); then a 2-layer
    SiLU decoder to `out_features` (the predicted position), as the reference ``GNN``, with
    the reference's (PyTorch ``nn.Linear``) initialisation.

    Call arguments: node_in `[M, F]`, edge_attr `[M, M, A]` or None. Returns `[M, out]`.
    """

    out_features: int
    hidden_features: int = 64
    num_layers: int = 4

    @nn.compact
    def __call__(self, node_in, edge_attr=None):
        width, act = self.hidden_features, nn.silu
        m_nodes = node_in.shape[0]
        a_width = 0 if edge_attr is None else edge_attr.shape[-1]
        mask = _off_diagonal(m_nodes, node_in.dtype)
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

    Call arguments: x `[M, d]`, v `[M, d]`, edge_attr `[M, M, A]` or None. Returns x `[M, d]`.
    """

    hidden_features: int = 64
    num_layers: int = 4

    @nn.compact
    def __call__(self, x, v, edge_attr=None):
        width, act = self.hidden_features, nn.silu
        m_nodes = x.shape[0]
        mask = _off_diagonal(m_nodes, x.dtype)
        speed = _safe_norm(jnp.sum(v * v, axis=-1, keepdims=True))
        for i in range(self.num_layers):
            diff = x[:, None, :] - x[None, :, :]
            radial = _safe_norm(jnp.sum(diff * diff, axis=-1, keepdims=True))
            e = radial if edge_attr is None else jnp.concatenate([radial, edge_attr], -1)
            w = act(_linear(width, e.shape[-1], x.dtype, f"phi_hidden_{i}")(e))
            w = nn.Dense(1, use_bias=False, kernel_init=_xavier_uniform(0.001), name=f"phi_{i}")(w)
            w = jnp.tanh(w)
            shift = jnp.sum(diff * w * mask, axis=1) / max(m_nodes - 1, 1)
            phi_v = _linear(1, width, x.dtype, f"vel_out_{i}")(
                act(_linear(width, 1, x.dtype, f"vel_hidden_{i}")(speed))
            )
            x = x + shift + phi_v * v
        return x


def fit_linear(batch) -> dict:
    """Least-squares t of x_T = x0 + t v0 over all samples, nodes and axes (float64)."""
    x0 = np.asarray(batch["x0"], np.float64)
    v0 = np.asarray(batch["v0"], np.float64)
    target = np.asarray(batch["target"], np.float64)
    denom = float(np.sum(v0 * v0))
    t = float(np.sum(v0 * (target - x0)) / denom) if denom > 0 else 0.0
    return {"t": jnp.asarray(t, jnp.float32)}


def mse(pred, target) -> jax.Array:
    """Mean squared error over every element (``torch.nn.MSELoss``)."""
    return jnp.mean((pred - target) ** 2)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model of the comparison (hashable, so it can key jit caches).

    Attributes:
        name: run / checkpoint name, e.g. ``"egnn_vel"``.
        kind: ``"linear" | "gnn" | "radial_field" | "egnn"``.
        hidden_features, num_layers: width and depth (ignored by ``"linear"``).
        velocity: EGNN velocity variant (eq. 7); only for ``kind="egnn"``.
    """

    name: str
    kind: Kind
    hidden_features: int = 64
    num_layers: int = 4
    velocity: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.velocity and self.kind != "egnn":
            raise ValueError("velocity=True is an EGNN option")

    @property
    def trainable(self) -> bool:
        """False for the fitted linear baseline."""
        return self.kind != "linear"

    @property
    def egnn_config(self) -> egnn_jax.EGNNConfig:
        return egnn_jax.EGNNConfig(
            hidden_features=self.hidden_features,
            num_layers=self.num_layers,
            velocity=self.velocity,
        )

    def _gnn(self, dim: int) -> GNN:
        return GNN(dim, self.hidden_features, self.num_layers)

    def _rf(self) -> RadialField:
        return RadialField(self.hidden_features, self.num_layers)

    def init(self, key, batch):
        """Initial parameters from one or more samples (``"linear"``: least-squares fit)."""
        if self.kind == "linear":
            return fit_linear(batch)
        one = jax.tree.map(lambda a: jnp.asarray(a[0]), batch)
        if self.kind == "gnn":
            node_in = _gnn_inputs(one)
            model = self._gnn(one["x0"].shape[-1])
            return jax.jit(model.init)(key, node_in, one["edge_attr"])
        if self.kind == "radial_field":
            return jax.jit(self._rf().init)(key, one["x0"], one["v0"], one["edge_attr"])
        v = one["v0"] if self.velocity else None
        return egnn_jax.init(
            key, self.egnn_config, one["node_feat"], one["x0"], v=v, edge_attr=one["edge_attr"]
        )

    def predict(self, params, batch) -> jax.Array:
        """Predicted positions `[B, M, d]` (pure)."""
        if self.kind == "linear":
            return batch["x0"] + params["t"] * batch["v0"]
        if self.kind == "gnn":
            model = self._gnn(batch["x0"].shape[-1])
            fn = lambda n, a: model.apply(params, n, a)
            return jax.vmap(fn)(_gnn_inputs(batch), batch["edge_attr"])
        if self.kind == "radial_field":
            model = self._rf()
            fn = lambda x, v, a: model.apply(params, x, v, a)
            return jax.vmap(fn)(batch["x0"], batch["v0"], batch["edge_attr"])
        cfg = self.egnn_config

        def one(h, x, v, a):
            return egnn_jax.apply(params, cfg, h, x, v=v if cfg.velocity else None, edge_attr=a)[1]

        return jax.vmap(one)(batch["node_feat"], batch["x0"], batch["v0"], batch["edge_attr"])


def model_spec(name: str, hidden_features: int = 64, num_layers: int = 4) -> ModelSpec:
    """The `ModelSpec` of an experiment's model name (a key of `MODELS`)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {tuple(MODELS)}")
    kind, velocity = MODELS[name]
    return ModelSpec(name, kind, hidden_features, num_layers, velocity)


def _gnn_inputs(batch) -> jax.Array:
    return jnp.concatenate([batch["x0"], batch["v0"], batch["node_feat"]], axis=-1)


@functools.lru_cache(maxsize=64)
def loss_fn_for(spec: ModelSpec):
    """``loss_fn(params, batch) -> MSE`` (the same object for equal specs)."""

    def loss_fn(params, batch):
        return mse(spec.predict(params, batch), batch["target"])

    return loss_fn


@functools.lru_cache(maxsize=64)
def eval_fn_for(spec: ModelSpec):
    """``eval_fn(params, batch) -> {"val_loss": MSE}`` (the same object for equal specs)."""

    def eval_fn(params, batch):
        return {"val_loss": mse(spec.predict(params, batch), batch["target"])}

    return eval_fn


def training_run(spec: ModelSpec, key, train_data, val_data, **train_kwargs) -> dict:
    """Keyword arguments of `_train.train` for a trainable `spec`.

    The model's loss and evaluation functions, its parameters initialised from the first
    training sample, and its own initialisation and shuffling keys, derived from `key` and
    the model's name (so adding or removing a model leaves the others' results unchanged).
    `train_kwargs` (steps, batch size, workdir, ...) are passed through.
    """
    k_init, k_shuffle = jax.random.split(jax.random.fold_in(key, zlib.crc32(spec.name.encode())))
    return dict(
        loss_fn=loss_fn_for(spec),
        params=spec.init(k_init, jax.tree.map(lambda a: a[:1], train_data)),
        train_data=train_data,
        eval_fn=eval_fn_for(spec),
        val_data=val_data,
        key=k_shuffle,
        **train_kwargs,
    )
