"""The frozen hyper-parameter records shared by `init`, `apply` and the Flax modules."""

from __future__ import annotations

import dataclasses
import operator
from typing import Literal


def _check_edge_chunk_size(value) -> None:
    """None, or an integer >= 1 (NumPy integers too; bools and floats are refused)."""
    if value is None:
        return
    try:
        ok = not isinstance(value, bool) and operator.index(value) >= 1
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"edge_chunk_size must be None or an int >= 1, got {value!r}")


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
        edge_inference: eq. 8 of the paper: weight each message in the *node* aggregation by
            e_ij = sigmoid(phi_inf(m_ij)); the coordinate update uses the ungated m_ij.
        attention: the reference code's gate (`E_GCL(attention=True)`): m_ij <- m_ij *
            sigmoid(phi_att(m_ij)) right after phi_e, so it gates the message seen by *both*
            phi_x (coordinates) and the node aggregation. With both options on, the node
            aggregation sees m_ij gated twice, sigmoid(phi_att) * e_ij (phi_inf reads the
            attention-gated message), and the coordinate update once.
        tanh: bound phi_x with tanh, scaled by `coords_range` (reference option; the
            reference code multiplies by no range, i.e. `coords_range=1`).
        coords_range: scale of the tanh-bounded phi_x.
        normalize: the coordinate update uses rescaled differences instead of x_i - x_j; the
            squared distance fed to phi_e is unchanged. `False`: none. `True` or `"clean"`:
            (x_i - x_j) / (stop_gradient(|x_i - x_j|) + 1e-8), the reference's
            `egnn_clean.E_GCL(normalize=True)` (unit vectors; the norm is detached).
            `"nbody"`: (x_i - x_j) / (|x_i - x_j| + 1), the reference N-body code's
            `E_GCL(norm_diff=True)` (bounded by 1, not unit; gradients flow through the norm).
        coords_clamp: clamp every per-edge coordinate update (x_i - x_j) phi_x(m_ij) to
            [-coords_clamp, coords_clamp] before aggregation, as the reference N-body
            `E_GCL.coord_model` always does with 100 (there a guard against blow-ups, never
            active in normal training). It clips each component, so while it is active the
            update is not rotation-equivariant. `None`: no clamp.
        residual: h_i <- h_i + phi_h(h_i, m_i) (paper); `False` gives h_i <- phi_h(h_i, m_i).
        coords_weight_gain: Xavier-uniform gain of phi_x's last layer (reference: 0.001) so
            that training starts with nearly unchanged coordinates.
        remat: rematerialise each layer in the backward pass (`jax.checkpoint` inside a
            `lax.scan` over the layers): the gradient stores one layer's edge activations
            at a time instead of every layer's, for about one more forward pass of compute.
            Same parameters and results; for graphs whose edges do not fit otherwise.
        edge_chunk_size: edge lists only (`senders`/`receivers`). None: each layer computes
            its messages for all E edges at once. An int: in chunks of about that many edges,
            each recomputed in the backward pass, so a layer's edge activations never exist
            for more than one chunk: memory O(N H + chunk H) per layer instead of O(E H),
            and on a CPU far less time spent touching fresh memory (chunks of ~8,192 edges:
            27x fewer temporaries and 3.9x faster at 300,000 edges in
            `benchmarks/bench_scale.py`). Same parameters; same results up to float
            rounding. Costs one more forward pass over the edges, like `remat`; the two
            compose, at two more passes. Dense graphs raise an error with it. With edges
            split over devices (`shard_edges`), also pass `edge_sharding=` to `apply`, so
            that each device chunks its own edges (without it XLA gathers the edges onto
            every device: correct, but no longer distributed).
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
    normalize: bool | Literal["clean", "nbody"] = False
    coords_clamp: float | None = None
    residual: bool = True
    coords_weight_gain: float = 0.001
    remat: bool = False
    edge_chunk_size: int | None = None

    def __post_init__(self):
        if self.hidden_features < 1:
            raise ValueError(f"hidden_features must be >= 1, got {self.hidden_features}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.out_features is not None and self.out_features < 1:
            raise ValueError(f"out_features must be None or >= 1, got {self.out_features}")
        _check_edge_chunk_size(self.edge_chunk_size)
        if self.coords_agg not in ("mean", "sum"):
            raise ValueError(f"coords_agg must be 'mean' or 'sum', got {self.coords_agg!r}")
        if self.normalize not in (False, True, "clean", "nbody"):
            raise ValueError(
                f"normalize must be False, True, 'clean' or 'nbody', got {self.normalize!r}"
            )
        if self.coords_clamp is not None and not self.coords_clamp > 0:
            raise ValueError(f"coords_clamp must be None or > 0, got {self.coords_clamp}")

    @property
    def normalize_form(self) -> Literal["none", "clean", "nbody"]:
        """`normalize` as one name: "none", "clean" (also for True) or "nbody"."""
        if self.normalize is False:
            return "none"
        return "clean" if self.normalize is True else self.normalize


@dataclasses.dataclass(frozen=True)
class HEGNNConfig:
    """Hyper-parameters of a HEGNN stack (hashable, so it can be a static `jax.jit` argument).

    HEGNN (Cen et al., "Are High-Degree Representations Really Unnecessary in Equivariant Graph
    Neural Networks?", NeurIPS 2024) adds to every node steerable features chi^(l) of degrees
    l = 0 ... `max_degree` that interact only through their per-degree inner products.
    Defaults follow the authors' N-body code (GLAD-RUC/HEGNN, `models/HEGNN.py`,
    `main_nbody.py`).

    Attributes:
        hidden_features: width of every MLP and of the node embedding (reference: 64).
        num_layers: number of HEGNN layers (reference: 4).
        max_degree: L, the highest degree of the steerable features; chi holds
            (L + 1)^2 numbers per node (reference default `--ell 2`; the paper reports
            L = 1, 2, 3, 6). L = 0 leaves one invariant scalar per node.
        velocity: the EGNN velocity variant, x_i <- x_i + mean_j (x_i - x_j) phi_x(m_ij)
            + phi_v(h_i) v_i (the reference N-body model always uses it); `apply` then
            needs `v`. `False` drops the phi_v term (the reference's expressivity model).
        out_features: width of a final linear read-out of `h`; `None` returns the hidden
            features (width `hidden_features`).
        residual: h_i <- h_i + phi_h(h_i, m_i); the reference (default `False`) replaces h,
            h_i <- phi_h(h_i, m_i).
        stop_sh_gradient: the reference detaches the spherical harmonics Y(r_ij / |r_ij|)
            that initialise chi, so no gradient reaches x through the edge *directions* of the
            initialisation (only through |r_ij| and the layers). `False` differentiates
            through them, which a force field taking -grad_x needs.
        remat: rematerialise each layer in the backward pass, as `EGNNConfig.remat`: one
            layer's edge activations stored at a time, for about one more forward pass.
            Same parameters and results.
    """

    hidden_features: int = 64
    num_layers: int = 4
    max_degree: int = 2
    velocity: bool = True
    out_features: int | None = None
    residual: bool = False
    stop_sh_gradient: bool = True
    remat: bool = False

    def __post_init__(self):
        if self.hidden_features < 1:
            raise ValueError(f"hidden_features must be >= 1, got {self.hidden_features}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if not isinstance(self.max_degree, int) or self.max_degree < 0:
            raise ValueError(f"max_degree must be an int >= 0, got {self.max_degree!r}")
        if self.out_features is not None and self.out_features < 1:
            raise ValueError(f"out_features must be None or >= 1, got {self.out_features}")

    @property
    def steerable_features(self) -> int:
        """(max_degree + 1)^2: the width of chi, degrees 0 ... L concatenated."""
        return (self.max_degree + 1) ** 2


@dataclasses.dataclass(frozen=True)
class EGHNConfig:
    """Hyper-parameters of an EGHN (hashable, so it can be a static `jax.jit` argument).

    EGHN (Han et al., "Equivariant Graph Hierarchy-Based Neural Networks", NeurIPS 2022):
    an EGNN on the particles, an equivariant pooling (E-Pool) that assigns every particle
    softly to `num_clusters` clusters, an EGNN on the clusters, and an equivariant un-pooling
    (E-UpPool) back to the particles. Defaults follow the authors' simulation code
    (hanjq17/EGHN, `main_simulation.py`).

    Attributes:
        hidden_features: width of every MLP and embedding (reference: 64).
        num_clusters: K, the clusters of the pooling (reference default 3).
        low_layers: EGNN layers on the particles' complete graph (3).
        pooling_layers: E-Pool message-passing layers on the local graph (3).
        high_layers: EGNN layers on the K clusters (3).
        pooling_head_factor: the assignment head is Linear(H, factor·H), tanh,
            Linear(factor·H, K) (reference: 8).
        logit_bound: None (reference) or b > 0: the assignment logits pass through
            b·tanh(logits / b) before the softmax. The cut loss is 0 only for a one-hot
            assignment, so unbounded logits grow until the softmax saturates and the
            assignment gets no gradient: one update that moves every particle into one
            cluster is then permanent (the collapse seen in the M-complex run). With a
            bound the smallest entry stays above exp(-2b) / K and collapse costs a loss
            with a live gradient. Not in the authors' code.
    """

    hidden_features: int = 64
    num_clusters: int = 3
    low_layers: int = 3
    pooling_layers: int = 3
    high_layers: int = 3
    pooling_head_factor: int = 8
    logit_bound: float | None = None

    def __post_init__(self):
        for name in ("hidden_features", "num_clusters", "low_layers", "high_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_clusters < 2:
            raise ValueError(f"num_clusters must be >= 2, got {self.num_clusters}")
        if self.pooling_layers < 0 or self.pooling_head_factor < 1:
            raise ValueError("pooling_layers must be >= 0 and pooling_head_factor >= 1")
        if self.logit_bound is not None and not self.logit_bound > 0:
            raise ValueError(f"logit_bound must be None or > 0, got {self.logit_bound}")


@dataclasses.dataclass(frozen=True)
class FastEGNNConfig:
    """Hyper-parameters of a FastEGNN stack (hashable, so it can be a static `jax.jit` argument).

    FastEGNN (Zhang et al., "Improving Equivariant Graph Neural Networks on Large Geometric
    Graphs via Virtual Nodes Learning", ICML 2024): an EGNN on a reduced graph of the real
    nodes, plus `virtual_channels` virtual nodes per graph that exchange messages with every
    real node. Defaults follow the authors' N-body code (GLAD-RUC/FastEGNN,
    `models/FastEGNN.py`, `main_nbody.py`, `run_nbody.sh`).

    Attributes:
        hidden_features: width of every MLP, of the node embedding and of the virtual nodes'
            features (reference: 64).
        num_layers: number of layers (reference: 4).
        virtual_channels: C, the virtual nodes per graph (reference N-body script: 3).
        velocity: x_i also moves by phi_v(h_i) v_i (the reference always does); `apply`
            then needs `v`.
        out_features: width of a final linear read-out of `h`; `None` returns the hidden
            features.
        coords_agg: the real-real coordinate update is the `"mean"` (reference) or `"sum"`
            over a node's incoming edges.
        attention: gate the real-real and the real-virtual messages by sigmoid(linear(m)).
        normalize: real-real coordinate updates use unit directions (norm detached).
        tanh: bound the three coordinate MLPs' outputs with tanh.
        residual: h <- h + phi_h(...) and S <- S + phi_hv(...) (reference: True).
        edge_chunk_size: as `EGNNConfig.edge_chunk_size`, for the real-real edges of an edge
            list (the real-virtual messages are per node, `[N, C, H]`, and never chunked).
    """

    hidden_features: int = 64
    num_layers: int = 4
    virtual_channels: int = 3
    velocity: bool = True
    out_features: int | None = None
    coords_agg: Literal["mean", "sum"] = "mean"
    attention: bool = False
    normalize: bool = False
    tanh: bool = False
    residual: bool = True
    edge_chunk_size: int | None = None

    def __post_init__(self):
        _check_edge_chunk_size(self.edge_chunk_size)
        for name in ("hidden_features", "num_layers", "virtual_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.out_features is not None and self.out_features < 1:
            raise ValueError(f"out_features must be None or >= 1, got {self.out_features}")
        if self.coords_agg not in ("mean", "sum"):
            raise ValueError(f"coords_agg must be 'mean' or 'sum', got {self.coords_agg!r}")
