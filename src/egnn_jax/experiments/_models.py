"""The one model registry: every model an experiment compares, behind one interface.

A model is a hashable `ModelSpec`; the framework uses it through pure functions:

    params = spec.init(key, batch)            # batch: a few samples (all of train for "linear")
    x_pred = spec.predict(params, batch)      # [B, M, d]
    loss = spec.loss(params, batch, info)     # scalar, for the training loop (`StepInfo`)
    metrics = spec.evaluate(params, batch)    # {"val_loss": ...}, selects the best checkpoint

The batch is a dict of arrays with a leading sample axis B, built by each experiment's
featurisation. Each model kind reads only its own inputs (`ModelKind.inputs`):

    x0         [B, M, d]     positions at the input time (every kind)
    v0         [B, M, d]     velocities at the input time (every kind)
    node_feat  [B, M, F]     invariant node features (EGNN)
    edge_attr  [B, M, M, A]  invariant edge attributes (EGNN, Radial Field)
    gnn_node   [B, M, Fg]    the GNN's node inputs (the reference feeds it [x, v])
    gnn_edge   [B, M, M, Ag] the GNN's edge inputs (the reference: the given attributes only)
    node_mask  [B, M]        bool, real nodes of systems padded to one M (optional: every
                             kind masks its messages and the loss is the MSE over real nodes)
    local_adjacency [B, M, M] bool, the local graph of EGHN's pooling
    target     [B, M, d]     positions to predict

Kinds (`MODEL_KINDS`): ``linear`` (x0 + t v0 with one scalar t, *fitted* by least squares, not
trained), ``gnn`` (`GNN`), ``radial_field`` (`RadialField`), ``egnn`` (`egnn_jax.apply` under
`jax.vmap`; options are `EGNNConfig` fields, e.g. ``velocity=True`` for eq. 7), ``hegnn``
(`egnn_jax.hegnn`, options `HEGNNConfig` fields, e.g. ``max_degree``), ``eghn``
(`egnn_jax.eghn`, options `EGHNConfig` fields and ``cut_weight``, the weight of its cut loss
in the training loss), ``fastegnn`` (`egnn_jax.fastegnn` on each system's shortest edges,
options `FastEGNNConfig` fields, ``keep_fraction``, ``mmd_weight``, ``mmd_sigma``). Named presets
(`PRESETS`): ``linear``, ``gnn``, ``radial_field``, ``egnn``, ``egnn_vel``. The learned
simulators of `_rollout_models` (``step``, ``force_field``, ``potential``, ``one_shot``, ...)
are kinds of the same registry, over batches of whole trajectories.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

import egnn_jax

from ._baselines import GNN, RadialField
from ._rollout_models import ROLLOUT_KINDS

__all__ = [
    "HEGNN_DEGREES",
    "MODEL_KINDS",
    "PRESETS",
    "ModelSpec",
    "fit_linear",
    "label",
    "masked_mse",
    "model_spec",
    "mse",
]


def mse(pred, target) -> jax.Array:
    """Mean squared error over every element (``torch.nn.MSELoss``)."""
    return jnp.mean((pred - target) ** 2)


def masked_mse(pred, batch) -> jax.Array:
    """The MSE over the real nodes of a batch (`mse` when it has no ``node_mask``): the
    squared errors summed over real nodes and axes, over (real nodes × d), as the EGHN
    reference's ``MaskMSELoss`` pools a whole batch."""
    if "node_mask" not in batch:
        return mse(pred, batch["target"])
    mask = batch["node_mask"].astype(pred.dtype)[..., None]
    err = (pred - batch["target"]) ** 2 * mask
    return jnp.sum(err) / (jnp.sum(mask) * pred.shape[-1])


def fit_linear(batch) -> dict:
    """Least-squares t of x_T = x0 + t v0 over all samples, nodes and axes (float64)."""
    x0 = np.asarray(batch["x0"], np.float64)
    v0 = np.asarray(batch["v0"], np.float64)
    target = np.asarray(batch["target"], np.float64)
    denom = float(np.sum(v0 * v0))
    t = float(np.sum(v0 * (target - x0)) / denom) if denom > 0 else 0.0
    return {"t": jnp.asarray(t, jnp.float32)}


def _first(batch) -> dict:
    return jax.tree.map(lambda a: jnp.asarray(a[0]), batch)


def _node_mask(batch) -> jax.Array:
    """`[B, M]` bool: the batch's node mask, or every node real."""
    if "node_mask" in batch:
        return batch["node_mask"]
    return jnp.ones(batch["x0"].shape[:2], bool)


class _Linear:
    trainable: ClassVar[bool] = False
    inputs: ClassVar[tuple[str, ...]] = ("x0", "v0")

    def init(self, spec, key, batch):
        return fit_linear(batch)

    def predict(self, spec, params, batch):
        return batch["x0"] + params["t"] * batch["v0"]


class _GNN:
    trainable: ClassVar[bool] = True
    inputs: ClassVar[tuple[str, ...]] = ("x0", "gnn_node", "gnn_edge")

    def _module(self, spec, batch) -> GNN:
        return GNN(batch["x0"].shape[-1], spec.hidden_features, spec.num_layers)

    def init(self, spec, key, batch):
        one = _first(batch)
        return jax.jit(self._module(spec, one).init)(key, one["gnn_node"], one["gnn_edge"])

    def predict(self, spec, params, batch):
        module = self._module(spec, batch)
        fn = lambda n, a, m: module.apply(params, n, a, m)
        return jax.vmap(fn)(batch["gnn_node"], batch["gnn_edge"], _node_mask(batch))


class _RadialField:
    trainable: ClassVar[bool] = True
    inputs: ClassVar[tuple[str, ...]] = ("x0", "v0", "edge_attr")

    def _module(self, spec) -> RadialField:
        return RadialField(spec.hidden_features, spec.num_layers)

    def init(self, spec, key, batch):
        one = _first(batch)
        return jax.jit(self._module(spec).init)(key, one["x0"], one["v0"], one["edge_attr"])

    def predict(self, spec, params, batch):
        module = self._module(spec)
        fn = lambda x, v, a, m: module.apply(params, x, v, a, m)
        return jax.vmap(fn)(batch["x0"], batch["v0"], batch["edge_attr"], _node_mask(batch))


class _EGNN:
    trainable: ClassVar[bool] = True
    speed_options: ClassVar[tuple[str, ...]] = ("remat",)
    inputs: ClassVar[tuple[str, ...]] = ("x0", "v0", "node_feat", "edge_attr")

    def config(self, spec) -> egnn_jax.EGNNConfig:
        return egnn_jax.EGNNConfig(
            hidden_features=spec.hidden_features,
            num_layers=spec.num_layers,
            **dict(spec.options),
        )

    def init(self, spec, key, batch):
        cfg, one = self.config(spec), _first(batch)
        v = one["v0"] if cfg.velocity else None
        return egnn_jax.init(key, cfg, one["node_feat"], one["x0"], v=v, edge_attr=one["edge_attr"])

    def predict(self, spec, params, batch):
        cfg = self.config(spec)

        def one(h, x, v, a, m):
            v = v if cfg.velocity else None
            return egnn_jax.apply(params, cfg, h, x, v=v, edge_attr=a, node_mask=m)[1]

        args = (batch["node_feat"], batch["x0"], batch["v0"], batch["edge_attr"])
        return jax.vmap(one)(*args, _node_mask(batch))


class _HEGNN(_EGNN):
    """HEGNN (`egnn_jax.hegnn`) on the EGNN's inputs; options are `HEGNNConfig` fields."""

    def config(self, spec) -> egnn_jax.HEGNNConfig:
        return egnn_jax.HEGNNConfig(
            hidden_features=spec.hidden_features,
            num_layers=spec.num_layers,
            **dict(spec.options),
        )

    def init(self, spec, key, batch):
        cfg, one = self.config(spec), _first(batch)
        v = one["v0"] if cfg.velocity else None
        return egnn_jax.hegnn.init(
            key, cfg, one["node_feat"], one["x0"], v=v, edge_attr=one["edge_attr"]
        )

    def predict(self, spec, params, batch):
        cfg = self.config(spec)

        def one(h, x, v, a):
            v = v if cfg.velocity else None
            return egnn_jax.hegnn.apply(params, cfg, h, x, v=v, edge_attr=a)[1]

        return jax.vmap(one)(batch["node_feat"], batch["x0"], batch["v0"], batch["edge_attr"])


class _EGHN:
    """EGHN (`egnn_jax.eghn`) on the EGNN's inputs plus the local graph; trained on the masked
    MSE plus ``cut_weight`` times the mean cut loss (the reference: 1). Option
    ``local_capacity``: `egnn_jax.eghn.apply`'s (E-Pool's edge budget per graph)."""

    trainable: ClassVar[bool] = True
    speed_options: ClassVar[tuple[str, ...]] = ("local_capacity",)
    inputs: ClassVar[tuple[str, ...]] = (
        "x0",
        "v0",
        "node_feat",
        "edge_attr",
        "local_adjacency",
        "node_mask",
    )

    def config(self, spec) -> egnn_jax.EGHNConfig:
        options = {k: v for k, v in spec.options if k not in ("cut_weight", "local_capacity")}
        return egnn_jax.EGHNConfig(hidden_features=spec.hidden_features, **options)

    def validate(self, spec) -> None:
        self.config(spec)
        if dict(spec.options).get("cut_weight", 1.0) < 0:
            raise ValueError("cut_weight must be >= 0")

    def init(self, spec, key, batch):
        one = _first(batch)
        return egnn_jax.eghn.init(
            key,
            self.config(spec),
            one["node_feat"],
            one["x0"],
            one["v0"],
            one["edge_attr"],
            local_adjacency=one["local_adjacency"],
            node_mask=_node_mask(batch)[0],
            local_capacity=dict(spec.options).get("local_capacity"),
        )

    def outputs(self, spec, params, batch):
        cfg, capacity = self.config(spec), dict(spec.options).get("local_capacity")

        def one(h, x, v, a, adj, m):
            return egnn_jax.eghn.apply(
                params, cfg, h, x, v, a, local_adjacency=adj, node_mask=m, local_capacity=capacity
            )

        args = (batch["node_feat"], batch["x0"], batch["v0"], batch["edge_attr"])
        return jax.vmap(one)(*args, batch["local_adjacency"], _node_mask(batch))

    def predict(self, spec, params, batch):
        return self.outputs(spec, params, batch).x

    def loss(self, spec, params, batch, info):
        out = self.outputs(spec, params, batch)
        weight = dict(spec.options).get("cut_weight", 1.0)
        return masked_mse(out.x, batch) + weight * jnp.mean(out.cut_loss)


class _FastEGNN:
    """FastEGNN (`egnn_jax.fastegnn`) on the EGNN's inputs, its real-real messages on the
    shortest ``keep_fraction`` of each system's edges (`egnn_jax.shortest_edges` at the input
    positions; the reference N-body script keeps 0.5); trained on the MSE plus ``mmd_weight``
    (reference 0.01) times `mmd_loss` (``mmd_sigma`` 1.5, 3 C real nodes drawn per system);
    validated on the MSE alone, as the reference. Other options: `FastEGNNConfig` fields."""

    trainable: ClassVar[bool] = True
    inputs: ClassVar[tuple[str, ...]] = ("x0", "v0", "node_feat", "edge_attr")
    _own = {"keep_fraction": 0.5, "mmd_weight": 0.01, "mmd_sigma": 1.5}

    def config(self, spec) -> egnn_jax.FastEGNNConfig:
        options = {k: v for k, v in spec.options if k not in self._own}
        return egnn_jax.FastEGNNConfig(
            hidden_features=spec.hidden_features, num_layers=spec.num_layers, **options
        )

    def option(self, spec, name):
        return dict(spec.options).get(name, self._own[name])

    def validate(self, spec) -> None:
        self.config(spec)
        if not 0 < self.option(spec, "keep_fraction") <= 1:
            raise ValueError("keep_fraction must be in (0, 1]")
        if self.option(spec, "mmd_weight") < 0 or self.option(spec, "mmd_sigma") <= 0:
            raise ValueError("mmd_weight must be >= 0 and mmd_sigma > 0")

    def _one(self, spec, params, h, x, v, a, mask):
        cfg = self.config(spec)
        edges = egnn_jax.shortest_edges(x, self.option(spec, "keep_fraction"), node_mask=mask)
        return egnn_jax.fastegnn.apply(
            params,
            cfg,
            h,
            x,
            v=v if cfg.velocity else None,
            edge_attr=a[edges.receivers, edges.senders],
            node_mask=mask,
            senders=edges.senders,
            receivers=edges.receivers,
            edge_mask=edges.edge_mask,
        )

    def init(self, spec, key, batch):
        one = _first(batch)
        cfg = self.config(spec)
        v = one["v0"] if cfg.velocity else None
        return egnn_jax.fastegnn.init(
            key, cfg, one["node_feat"], one["x0"], v=v, edge_attr=one["edge_attr"]
        )

    def outputs(self, spec, params, batch):
        fn = lambda h, x, v, a, m: self._one(spec, params, h, x, v, a, m)
        args = (batch["node_feat"], batch["x0"], batch["v0"], batch["edge_attr"])
        return jax.vmap(fn)(*args, _node_mask(batch))

    def predict(self, spec, params, batch):
        return self.outputs(spec, params, batch).x

    def loss(self, spec, params, batch, info):
        out = self.outputs(spec, params, batch)
        keys = jax.random.split(info.key, out.x.shape[0])
        sigma = self.option(spec, "mmd_sigma")
        mmd = jax.vmap(
            lambda k, x, z, m: egnn_jax.fastegnn.mmd_loss(k, x, z, sigma=sigma, node_mask=m)
        )(keys, out.x, out.virtual_x, _node_mask(batch))
        return masked_mse(out.x, batch) + self.option(spec, "mmd_weight") * jnp.mean(mmd)


# kind -> implementation. A new model family registers its kind here.
MODEL_KINDS: dict[str, Any] = {
    "linear": _Linear(),
    "gnn": _GNN(),
    "radial_field": _RadialField(),
    "egnn": _EGNN(),
    "hegnn": _HEGNN(),
    "eghn": _EGHN(),
    "fastegnn": _FastEGNN(),
    **ROLLOUT_KINDS,  # learned simulators over whole trajectories (`_rollout_models`)
}

# HEGNN's published variants (its N-body table): the name -> the highest degree L.
HEGNN_DEGREES = {"hegnn_l1": 1, "hegnn_l2": 2, "hegnn_l3": 3, "hegnn_l6": 6}

# Experiment-facing names -> (kind, options, label).
PRESETS: dict[str, tuple[str, dict[str, Any], str]] = {
    "linear": ("linear", {}, "Linear"),
    "gnn": ("gnn", {}, "GNN"),
    "radial_field": ("radial_field", {}, "Radial Field"),
    "egnn": ("egnn", {}, "EGNN"),
    "egnn_vel": ("egnn", {"velocity": True}, "EGNN-vel"),
    **{
        name: ("hegnn", {"max_degree": degree}, f"HEGNN l≤{degree}")
        for name, degree in HEGNN_DEGREES.items()
    },
}


def label(name: str) -> str:
    """The display name of a model (its preset's label, else the name itself)."""
    return PRESETS[name][2] if name in PRESETS else name


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model of a comparison (hashable: it keys jit caches, and its methods are stable).

    Attributes:
        name: run / checkpoint name, e.g. ``"egnn_vel"``.
        kind: a key of `MODEL_KINDS`.
        hidden_features, num_layers: width and depth (ignored by ``"linear"``).
        options: kind-specific settings as sorted ``(name, value)`` pairs (for ``"egnn"``:
            `EGNNConfig` fields such as ``velocity``).
    """

    name: str
    kind: str
    hidden_features: int = 64
    num_layers: int = 4
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {tuple(MODEL_KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "options", tuple(sorted(dict(self.options).items())))
        impl = MODEL_KINDS[self.kind]
        if hasattr(impl, "validate"):
            impl.validate(self)  # the options are checked now, not at first use
        elif self.kind in ("egnn", "hegnn"):
            impl.config(self)
        elif self.options:
            raise ValueError(f"kind {self.kind!r} takes no options, got {dict(self.options)}")

    @property
    def _impl(self):
        return MODEL_KINDS[self.kind]

    @property
    def trainable(self) -> bool:
        """False for fitted models (the linear baseline)."""
        return self._impl.trainable

    @property
    def inputs(self) -> tuple[str, ...]:
        """The batch keys the model reads (besides ``target``)."""
        return self._impl.inputs

    def to_dict(self) -> dict:
        """JSON-able description (part of a run's fingerprint). Options the kind lists in
        ``speed_options`` change how fast it runs, never what it computes: left out."""
        speed_only = getattr(self._impl, "speed_options", ())
        return {
            "name": self.name,
            "kind": self.kind,
            "hidden_features": self.hidden_features,
            "num_layers": self.num_layers,
            "options": {k: v for k, v in self.options if k not in speed_only},
        }

    def init(self, key, batch):
        """Initial parameters from one or more samples (``"linear"``: the least-squares fit)."""
        return self._impl.init(self, key, batch)

    def predict(self, params, batch) -> jax.Array:
        """Predicted positions `[B, M, d]` (pure)."""
        return self._impl.predict(self, params, batch)

    def loss(self, params, batch, info) -> jax.Array:
        """Training loss: the kind's own, else the MSE of the prediction (`info` is a
        `StepInfo`: the step's key and index)."""
        if hasattr(self._impl, "loss"):
            return self._impl.loss(self, params, batch, info)
        return masked_mse(self.predict(params, batch), batch)

    def evaluate(self, params, batch) -> dict[str, jax.Array]:
        """Validation metrics; ``val_loss`` selects the best checkpoint."""
        if hasattr(self._impl, "evaluate"):
            return self._impl.evaluate(self, params, batch)
        return {"val_loss": masked_mse(self.predict(params, batch), batch)}

    def trajectory(self, params, state, num_steps: int):
        """Learned simulators: roll one system out from `state` (`egnn_jax.dynamics.State`)
        for `num_steps` saved intervals; ``(xs, vs)`` `[num_steps + 1, M, n]` (`vs` None
        for models that predict no velocities)."""
        return self._impl.trajectory(self, params, state, num_steps)


def model_spec(name: str, hidden_features: int = 64, num_layers: int = 4) -> ModelSpec:
    """The `ModelSpec` of a preset name (a key of `PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose from {tuple(PRESETS)}")
    kind, options, _ = PRESETS[name]
    return ModelSpec(name, kind, hidden_features, num_layers, tuple(options.items()))
