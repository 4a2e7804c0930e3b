"""The frozen hyper-parameter record shared by `init`, `apply` and the Flax modules."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class EGNNConfig:
    """Hyper-parameters of an EGNN stack (hashable, so it can be a static `jax.jit` argument).

    Defaults follow the paper (Satorras, Hoogeboom & Welling, ICML 2021) and its reference code.

    Attributes:
        hidden_features: width of every MLP and of the node embedding (paper: 64).
        num_layers: number of EGCL layers (paper: 4).
        velocity: use the velocity variant (eq. 7); `apply` then needs `v`.
        out_features: width of a final linear read-out of `h`; `None` returns the hidden
            features (width `hidden_features`).
        coords_agg: `"mean"` gives the coordinate update the constant C = 1/(number of
            neighbours of i), i.e. 1/(M-1) on a complete graph; `"sum"` gives C = 1.
        edge_inference: eq. 8, weight each message in the node aggregation by
            e_ij = sigmoid(phi_inf(m_ij)).
        attention: the reference code's gate: m_ij <- m_ij * sigmoid(phi_att(m_ij)) before
            both the coordinate and the node update.
        tanh: bound phi_x with tanh, scaled by `coords_range` (reference option).
        coords_range: scale of the tanh-bounded phi_x.
        normalize: use unit coordinate differences (x_i - x_j)/(|x_i - x_j| + eps) in the
            coordinate update (reference option); the squared distance fed to phi_e is unchanged.
        residual: h_i <- h_i + phi_h(h_i, m_i) (paper); `False` gives h_i <- phi_h(h_i, m_i).
        coords_weight_gain: Xavier-uniform gain of phi_x's last layer (reference: 0.001) so
            that training starts with nearly unchanged coordinates.
    """

    hidden_features: int = 64
    num_layers: int = 4
    velocity: bool = False
    out_features: int | None = None
    coords_agg: Literal["mean", "sum"] = "mean"
    edge_inference: bool = False
    attention: bool = False
    tanh: bool = False
    coords_range: float = 1.0
    normalize: bool = False
    residual: bool = True
    coords_weight_gain: float = 0.001

    def __post_init__(self):
        if self.hidden_features < 1:
            raise ValueError(f"hidden_features must be >= 1, got {self.hidden_features}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.out_features is not None and self.out_features < 1:
            raise ValueError(f"out_features must be None or >= 1, got {self.out_features}")
        if self.coords_agg not in ("mean", "sum"):
            raise ValueError(f"coords_agg must be 'mean' or 'sum', got {self.coords_agg!r}")
