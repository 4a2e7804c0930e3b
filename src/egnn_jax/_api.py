"""`init` and `apply`: the pure, jitted entry points research code calls."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jaxtyping import Array, Float

from ._config import EGNNConfig
from ._egcl import EGNN
from ._graph import DenseGraph, SparseGraph
from ._init_graph import InitShapes, check_at_trace_time, init_config
from ._neighbours import check_box
from ._typing import EdgeAttr, NodeFeatures, Positions


def _shape(a) -> str:
    return "None" if a is None else str(tuple(a.shape))


def _validate(
    config: EGNNConfig, h, x, v, edge_attr, node_mask, senders, receivers, edge_mask, box
):
    """Static (trace-time) checks of every argument; returns the graph backend."""
    if not isinstance(config, EGNNConfig):
        raise TypeError(f"config must be an egnn_jax.EGNNConfig, got {type(config).__name__}")
    graph = _validate_graph(
        h, x, v, edge_attr, node_mask, senders, receivers, velocity=config.velocity
    )
    if config.edge_chunk_size is not None and not isinstance(graph, SparseGraph):
        raise ValueError(
            "EGNNConfig.edge_chunk_size chunks an edge list (senders, receivers); a dense "
            "graph has none: batch dense graphs with vmap, or pass the graph as an edge list"
        )
    if box is not None:  # its shape was checked by `init` / `apply`, before tracing
        box = jnp.asarray(box, x.dtype)
        # A side <= 0 would turn every relative vector into NaN; the check is on a scalar.
        bad = jnp.any(~(box > 0))
        box = eqx.error_if(box, bad, "box side lengths must be > 0")
        graph = graph._replace(box=box)
    return _with_edge_mask(graph, edge_mask)


def _with_edge_mask(graph, edge_mask):
    """`graph` with the checked `edge_mask` (sparse graphs only); unchanged for None."""
    if edge_mask is None:
        return graph
    if not isinstance(graph, SparseGraph):
        raise ValueError("edge_mask is for sparse graphs (senders, receivers)")
    senders = graph.senders
    if edge_mask.shape != senders.shape or edge_mask.dtype != jnp.bool_:
        raise ValueError(
            f"edge_mask must be bool of shape {senders.shape}, got {_shape(edge_mask)} "
            f"dtype {edge_mask.dtype}"
        )
    return graph._replace(edge_mask=edge_mask)


def _checked_node_mask(node_mask, num_nodes: int):
    """The checked `[num_nodes]` bool node mask; None means every node is real."""
    if node_mask is None:
        return jnp.ones((num_nodes,), dtype=bool)
    if node_mask.shape != (num_nodes,) or node_mask.dtype != jnp.bool_:
        raise ValueError(
            f"node_mask must be bool of shape ({num_nodes},), "
            f"got shape {_shape(node_mask)} dtype {node_mask.dtype}"
        )
    return node_mask


def _validate_graph(
    h,
    x,
    v,
    edge_attr,
    node_mask,
    senders,
    receivers,
    *,
    velocity: bool,
    config_name: str = "EGNNConfig",
):
    """The checks `_validate` shares with the other models: arrays, velocity, graph layout.

    `velocity` says whether `v` is required (True) or forbidden (False); `config_name` names
    the config class in the message for an unexpected `v`.
    """
    for name, a in (("h", h), ("x", x)):
        if a is None or a.ndim != 2:
            raise ValueError(f"{name} must have rank 2 ([nodes, features]), got shape {_shape(a)}")
    if h.shape[0] != x.shape[0]:
        raise ValueError(
            f"h and x must have the same number of nodes, got h {_shape(h)} and x {_shape(x)}"
        )
    if h.shape[0] == 0:
        raise ValueError(f"empty graph: h {_shape(h)} and x {_shape(x)} have no nodes")
    if x.shape[1] == 0:
        raise ValueError(f"x must have a spatial dimension n >= 1, got x {_shape(x)}")
    floats = {"h": h, "x": x, "v": v, "edge_attr": edge_attr}
    dtypes = {k: a.dtype for k, a in floats.items() if a is not None}
    for k, dt in dtypes.items():
        if not jnp.issubdtype(dt, jnp.floating):
            raise ValueError(f"{k} must be a floating-point array, got dtype {dt}")
    if len(set(dtypes.values())) > 1:
        raise ValueError(f"h, x, v and edge_attr must share one dtype, got {dtypes}")

    if velocity:
        if v is None:
            raise ValueError("config.velocity is True, so v ([nodes, n]) is required")
        if v.shape != x.shape:
            raise ValueError(f"v must have the shape of x, got v {_shape(v)} and x {_shape(x)}")
    elif v is not None:
        raise ValueError(
            f"v was given but config.velocity is False; use {config_name}(velocity=True)"
        )

    num_nodes = h.shape[0]
    if (senders is None) != (receivers is None):
        raise ValueError(
            f"senders and receivers go together, got senders {_shape(senders)} "
            f"and receivers {_shape(receivers)}"
        )
    if senders is None:
        node_mask = _checked_node_mask(node_mask, num_nodes)
        if edge_attr is not None and (
            edge_attr.ndim != 3 or edge_attr.shape[:2] != (num_nodes, num_nodes)
        ):
            raise ValueError(
                f"dense edge_attr must have shape ({num_nodes}, {num_nodes}, A), "
                f"got {_shape(edge_attr)}"
            )
        return DenseGraph(node_mask)

    if node_mask is not None:
        raise ValueError(
            "node_mask is for dense graphs; a sparse graph's padding nodes are connected "
            "only to each other (jraph convention)"
        )
    for name, a in (("senders", senders), ("receivers", receivers)):
        if a.ndim != 1 or not jnp.issubdtype(a.dtype, jnp.integer):
            raise ValueError(f"{name} must be a rank-1 integer array, got {_shape(a)} {a.dtype}")
    if senders.shape != receivers.shape:
        raise ValueError(
            f"senders and receivers must have the same shape, got {_shape(senders)} "
            f"and {_shape(receivers)}"
        )
    if edge_attr is not None and (edge_attr.ndim != 2 or edge_attr.shape[0] != senders.shape[0]):
        raise ValueError(
            f"sparse edge_attr must have shape ({senders.shape[0]}, A), got {_shape(edge_attr)}"
        )
    return SparseGraph(senders, receivers, num_nodes)


def _check_params(
    params, h, edge_attr, *, edge_layer: str = "layer_0", init_name: str = "egnn_jax.init"
):
    """Clear errors when params were initialised for other feature widths.

    `edge_layer` names the module whose `edge_in` kernel reads `[h_i, h_j, one distance, a_ij]`
    (its width gives the edge-attribute width); `init_name` names the matching `init`.
    """
    try:
        embed = params["params"]["embedding"]["kernel"]
        edge_in = params["params"][edge_layer]["edge_in"]["kernel"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"params is not a tree returned by {init_name}") from err
    if embed.shape[0] != h.shape[1]:
        raise ValueError(f"params expect h with {embed.shape[0]} features, got h {_shape(h)}")
    hidden = embed.shape[1]
    attr_width = edge_in.shape[0] - 2 * hidden - 1
    got = 0 if edge_attr is None else edge_attr.shape[-1]
    if attr_width != got:
        raise ValueError(
            f"params expect edge_attr of width {attr_width}, got edge_attr {_shape(edge_attr)}"
        )
    if embed.dtype != h.dtype:
        raise ValueError(
            f"params have dtype {embed.dtype} but the inputs {h.dtype}; "
            "cast one of them (init gives params the dtype of x)"
        )


def _check_indices_if_concrete(senders, receivers, num_nodes: int):
    """Eager calls get a ValueError before tracing; traced calls are checked inside (below)."""
    for name, a in (("senders", senders), ("receivers", receivers)):
        if a is None or isinstance(a, jax.core.Tracer):
            continue
        a = np.asarray(a)
        if a.size and (a.min() < 0 or a.max() >= num_nodes):
            raise ValueError(
                f"{name} has indices in [{a.min()}, {a.max()}], outside [0, {num_nodes}) "
                f"for {num_nodes} nodes"
            )


def _checked_indices(graph, api_name: str = "egnn_jax.apply"):
    if not isinstance(graph, SparseGraph):
        return graph
    n = graph.num_nodes
    checked = []
    for name, a in (("senders", graph.senders), ("receivers", graph.receivers)):
        bad = jnp.any((a < 0) | (a >= n))
        # The check runs on the scalar, not on the `[E]` array: an edge list sharded over
        # devices would otherwise be gathered onto one device for it. The select keeps the
        # check alive (it is never taken: the error fires first).
        bad = eqx.error_if(bad, bad, f"{api_name}: {name} index out of range [0, {n})")
        checked.append(jnp.where(bad, jnp.zeros_like(a), a))
    return graph._replace(senders=checked[0], receivers=checked[1])


@functools.partial(jax.jit, static_argnames=("config", "shapes"))
def _init(key, config: EGNNConfig, shapes: InitShapes):
    inputs = shapes.inputs()
    graph = DenseGraph(inputs.node_mask)
    return EGNN(config).init(key, graph, inputs.h, inputs.x, inputs.v, inputs.edge_attr)


@functools.partial(jax.jit, static_argnames=("config", "edge_sharding"))
def _apply(
    params, config, h, x, v, edge_attr, node_mask, senders, receivers, edge_mask, box, edge_sharding
):
    graph = _validate(config, h, x, v, edge_attr, node_mask, senders, receivers, edge_mask, box)
    _check_params(params, h, edge_attr)
    graph = _with_edge_sharding(graph, edge_sharding)
    return _forward(params, config, _checked_indices(graph), h, x, v, edge_attr)


def _with_edge_sharding(graph, edge_sharding):
    """`graph` told how its edge arrays are split over devices (sparse graphs only)."""
    if edge_sharding is None:
        return graph
    if not isinstance(graph, SparseGraph):
        raise ValueError("edge_sharding is for sparse graphs (senders, receivers)")
    if not isinstance(edge_sharding, NamedSharding):
        raise TypeError(
            "edge_sharding must be the jax.sharding.NamedSharding of the edge arrays "
            f"(egnn_jax.shard_edges(...).edge_sharding), got {type(edge_sharding).__name__}"
        )
    spec = tuple(edge_sharding.spec)
    if len(spec) != 1 or not isinstance(spec[0], str):
        raise ValueError(
            "edge_sharding must split the edge axis over one mesh axis, "
            f"PartitionSpec(axis), got {edge_sharding.spec}"
        )
    devices = edge_sharding.mesh.shape[spec[0]]
    num_edges = graph.senders.shape[0]
    if num_edges % devices:
        raise ValueError(
            f"edge_sharding splits the edges over {devices} devices, but there are "
            f"{num_edges}, not a multiple (egnn_jax.shard_edges pads them)"
        )
    return graph._replace(edge_sharding=edge_sharding)


def _forward(
    params,
    config: EGNNConfig,
    graph: DenseGraph | SparseGraph,
    h: NodeFeatures,
    x: Positions,
    v: Positions | None,
    edge_attr: EdgeAttr | None,
) -> tuple[Float[Array, "nodes out"], Positions]:
    """The validated forward pass; its annotations are checked in the test suite."""
    return EGNN(config).apply(params, graph, h, x, v, edge_attr)


def init(
    key,
    config: EGNNConfig,
    h,
    x,
    v=None,
    edge_attr=None,
    node_mask=None,
    senders=None,
    receivers=None,
    edge_mask=None,
    box=None,
):
    """Initialise the parameters of an EGNN stack (pure; jit-compiled).

    The parameters depend only on the key, the config and the widths F and A, so parameters
    initialised on a dense graph serve sparse graphs and any number of nodes or spatial
    dimension n. They are made on a two-node graph of those widths: one compile per
    (config, F, A, n, dtype), not one per graph shape.

    Arguments:
        key: a `jax.random` key.
        config: `EGNNConfig`.
        h: `[M, F]` node features (dense) or `[N, F]` (sparse).
        x: `[M, n]` positions.
        v: `[M, n]` velocities; required iff `config.velocity`.
        edge_attr: `[M, M, A]` (dense) or `[E, A]` (sparse) edge attributes, or None.
        node_mask: `[M]` bool, dense graphs only; None means every node is real.
        senders: `[E]` int, sparse graphs only (message j -> i flows from `senders`).
        receivers: `[E]` int, sparse graphs only.
        edge_mask, box: as in `apply`.

    Returns:
        A Flax parameter tree (`{"params": ...}`) in the floating dtype of `x`.

    Raises:
        ValueError: at trace time, naming the argument and its shape, for wrong ranks, shapes
            or dtypes, an empty graph, or a missing/extra `v`.
    """
    if senders is not None:
        _check_indices_if_concrete(senders, receivers, h.shape[0])
    check_box(box, np.shape(x)[-1])
    check_at_trace_time(
        functools.partial(_validate, config),
        h,
        x,
        v,
        edge_attr,
        node_mask,
        senders,
        receivers,
        edge_mask,
        box,
    )
    return _init(key, init_config(config), InitShapes.of(h, x, v, edge_attr))


def apply(
    params,
    config: EGNNConfig,
    h,
    x,
    v=None,
    edge_attr=None,
    node_mask=None,
    senders=None,
    receivers=None,
    edge_mask=None,
    box=None,
    edge_sharding=None,
):
    """Run an EGNN stack on one graph (pure; jit-compiled; composes with vmap and grad).

    Dense graphs: the complete graph over the nodes where `node_mask` is True, without
    self-edges; padding nodes never influence real nodes. Batch dense graphs with `jax.vmap`.
    Sparse graphs: the directed edges `senders[e] -> receivers[e]`; a batch is a disjoint
    union of graphs, and padding edges must connect padding nodes only.

    Arguments:
        params: the tree returned by `init`.
        config: the `EGNNConfig` used at `init` (static).
        h: `[M, F]` node features (dense) or `[N, F]` (sparse).
        x: `[M, n]` positions.
        v: `[M, n]` initial velocities; required iff `config.velocity`.
        edge_attr: `[M, M, A]` (dense; entry `[i, j]` belongs to the edge j -> i) or `[E, A]`
            (sparse), or None. Must match the width used at `init`.
        node_mask: `[M]` bool (dense only); None means every node is real.
        senders: `[E]` int (sparse only).
        receivers: `[E]` int (sparse only).
        edge_mask: `[E]` bool (sparse only): False for edges that carry nothing, e.g. the
            filler edges of `egnn_jax.radius_graph`; None means every edge is real.
        box: `[n]` or scalar side lengths of a periodic cell with its origin at 0: every
            relative vector x_i - x_j is its minimum image. None: no periodicity.
        edge_sharding: sparse only, static: the `NamedSharding(mesh, PartitionSpec(axis))`
            the edge arrays are split with (`egnn_jax.shard_edges(...).edge_sharding`; the
            node arrays replicated). Each device then computes the messages of its own
            edges (in chunks of `config.edge_chunk_size`, if set) into partial node sums,
            reduced once per layer. None: XLA partitions whatever shardings the arrays
            carry, which is as good without chunks and gathers every chunk with them.

    Returns:
        `(h_out, x_out)`: `[M, out_features or hidden_features]` invariant features and
        `[M, n]` equivariant positions.

    Raises:
        ValueError: at trace time for wrong ranks, shapes or dtypes (naming the argument and
            its shape), and, in eager calls, for edge indices outside `[0, N)` or a box side
            <= 0. Under an outer `jax.jit`, those two raise an `equinox` runtime error.

    NaN or inf in an input is not checked (that would cost a reduction per call): it reaches
    the outputs of that node and of every node it sends messages to. Enable
    `jax.config.update("jax_debug_nans", True)` to find where a NaN first appears.
    """
    if senders is not None:
        _check_indices_if_concrete(senders, receivers, h.shape[0])
    check_box(box, np.shape(x)[-1])
    return _apply(
        params,
        config,
        h,
        x,
        v,
        edge_attr,
        node_mask,
        senders,
        receivers,
        edge_mask,
        box,
        edge_sharding,
    )
