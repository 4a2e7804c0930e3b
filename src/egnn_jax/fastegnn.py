"""FastEGNN (Zhang et al., ICML 2024): EGNN with virtual nodes, for large or sparse graphs.

The public API mirrors `egnn_jax.init` / `egnn_jax.apply` (same graphs, same checks), on one
graph with its C virtual nodes:

    config = egnn_jax.FastEGNNConfig(hidden_features=64, num_layers=4, virtual_channels=3)
    edges = egnn_jax.shortest_edges(x, 0.5)       # or egnn_jax.radius_graph(...)
    kw = dict(senders=edges.senders, receivers=edges.receivers, edge_mask=edges.edge_mask)
    params = egnn_jax.fastegnn.init(key, config, h, x, v=v, edge_attr=a, **kw)
    out = egnn_jax.fastegnn.apply(params, config, h, x, v=v, edge_attr=a, **kw)
    out.x, out.h, out.virtual_x, out.virtual_h
    loss = mse(out.x, target) + 0.01 * egnn_jax.fastegnn.mmd_loss(key, out.x, out.virtual_x)

There is no periodic `box` (unlike `egnn_jax.apply`): the virtual nodes start at the centre of
mass and move relative to the real nodes, which has no meaning in a periodic cell; feed it
non-periodic edge lists (`radius_graph` without `box`, or `shortest_edges`).

Batch with `jax.vmap` over graphs of one padded size, or pack graphs of different sizes
into one edge list (`egnn_jax.pack_graphs`) and say which graph each node belongs to, so
that every graph gets its own C virtual nodes:

    b = egnn_jax.pack_graphs(graphs, max_nodes=..., max_edges=..., max_graphs=G)
    out = egnn_jax.fastegnn.apply(params, config, b.h, b.x, v=b.v, edge_attr=b.edge_attr,
                                  node_mask=b.node_mask, senders=b.senders,
                                  receivers=b.receivers, edge_mask=b.edge_mask,
                                  node_graph=b.node_graph, graph_mask=b.graph_mask)
    out.virtual_x  # [G, C, n]
    egnn_jax.fastegnn.mmd_loss(key, out.x, out.virtual_x, node_mask=b.node_mask,
                               node_graph=b.node_graph, graph_mask=b.graph_mask)

The layer's equations and the choices taken from the reference code are in
`egnn_jax._fastegnn`.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._api import (
    _check_indices_if_concrete,
    _checked_indices,
    _checked_node_mask,
    _validate_graph,
    _with_edge_mask,
    _with_edge_sharding,
)
from ._api import _check_params as _api_check_params
from ._config import FastEGNNConfig
from ._fastegnn import FastEGCL, FastEGNN, FastEGNNOutput, mmd_loss
from ._graph import DenseGraph
from ._init_graph import InitShapes, check_at_trace_time, init_config

__all__ = [
    "FastEGCL",
    "FastEGNN",
    "FastEGNNConfig",
    "FastEGNNOutput",
    "apply",
    "init",
    "mmd_loss",
]


def _validate(
    config, h, x, v, edge_attr, node_mask, senders, receivers, edge_mask, node_graph, graph_mask
):
    """Static (trace-time) checks; returns the real-real graph backend, the node mask and
    the number of graphs G."""
    graph, mask = _validate_graph_and_mask(
        config, h, x, v, edge_attr, node_mask, senders, receivers, edge_mask
    )
    return graph, mask, _validate_packing(node_graph, graph_mask, h.shape[0], senders is not None)


def _validate_graph_and_mask(config, h, x, v, edge_attr, node_mask, senders, receivers, edge_mask):
    if not isinstance(config, FastEGNNConfig):
        raise TypeError(f"config must be an egnn_jax.FastEGNNConfig, got {type(config).__name__}")
    sparse = senders is not None
    graph = _validate_graph(
        h,
        x,
        v,
        edge_attr,
        None if sparse else node_mask,
        senders,
        receivers,
        velocity=config.velocity,
        config_name="FastEGNNConfig",
    )
    graph = _with_edge_mask(graph, edge_mask)
    if isinstance(graph, DenseGraph):
        if config.edge_chunk_size is not None:
            raise ValueError(
                "FastEGNNConfig.edge_chunk_size chunks an edge list (senders, receivers); a "
                "dense graph has none: batch dense graphs with vmap, or pass an edge list"
            )
        return graph, graph.node_mask
    # The virtual nodes talk to every node, so a sparse graph's padding needs a mask too.
    return graph, _checked_node_mask(node_mask, h.shape[0])


def _validate_packing(node_graph, graph_mask, num_nodes: int, sparse: bool) -> int:
    """Static checks of a packed batch's `node_graph [M]` and `graph_mask [G]`; returns G."""
    if node_graph is None and graph_mask is None:
        return 1
    if node_graph is None or graph_mask is None:
        raise ValueError("node_graph and graph_mask go together (a packed batch)")
    if not sparse:
        raise ValueError(
            "a packed batch (node_graph) needs an edge list (senders, receivers): a dense "
            "graph would join every node of every graph"
        )
    if node_graph.shape != (num_nodes,) or not jnp.issubdtype(node_graph.dtype, jnp.integer):
        raise ValueError(
            f"node_graph must be an int array of shape ({num_nodes},), got shape "
            f"{getattr(node_graph, 'shape', None)} dtype {getattr(node_graph, 'dtype', None)}"
        )
    if graph_mask.ndim != 1 or graph_mask.dtype != jnp.bool_ or graph_mask.shape[0] < 1:
        raise ValueError(
            f"graph_mask must be a non-empty bool array [G], got shape "
            f"{getattr(graph_mask, 'shape', None)} dtype {getattr(graph_mask, 'dtype', None)}"
        )
    return graph_mask.shape[0]


def _check_if_concrete(h, senders, receivers, node_graph, graph_mask):
    """Eager calls get a ValueError for out-of-range edges or graphs before tracing."""
    if senders is not None:
        _check_indices_if_concrete(senders, receivers, h.shape[0])
    if node_graph is None or graph_mask is None or isinstance(node_graph, jax.core.Tracer):
        return
    a = np.asarray(node_graph)
    g = np.shape(graph_mask)[0] if np.ndim(graph_mask) == 1 else None
    if g is not None and a.size and (a.min() < 0 or a.max() >= g):
        raise ValueError(f"node_graph has graphs in [{a.min()}, {a.max()}], outside [0, {g})")


def _checked_node_graph(node_graph, num_graphs: int):
    if node_graph is None:
        return None
    bad = jnp.any((node_graph < 0) | (node_graph >= num_graphs))
    bad = eqx.error_if(bad, bad, f"egnn_jax.fastegnn: node_graph out of range [0, {num_graphs})")
    return jnp.where(bad, jnp.zeros_like(node_graph), node_graph)


def _check_params(params, config: FastEGNNConfig, h, edge_attr):
    """Clear errors when params were initialised for other widths, depths or channels."""
    _api_check_params(params, h, edge_attr, init_name="egnn_jax.fastegnn.init")
    tree = params["params"]
    try:
        virtual = tree["virtual_features"]
    except KeyError as err:
        raise ValueError("params is not a tree returned by egnn_jax.fastegnn.init") from err
    if virtual.shape != (config.virtual_channels, config.hidden_features):
        raise ValueError(
            f"params have {virtual.shape[0]} virtual channels of width {virtual.shape[1]}, but "
            f"the config has {config.virtual_channels} of width {config.hidden_features}"
        )
    layers = sum(1 for name in tree if name.startswith("layer_"))
    if layers != config.num_layers:
        raise ValueError(
            f"params have {layers} layers, but config.num_layers is {config.num_layers}"
        )
    if ("vel_out" in tree["layer_0"]) != config.velocity:
        raise ValueError(
            f"params were initialised with velocity={not config.velocity}, but "
            f"config.velocity is {config.velocity}"
        )


@functools.partial(jax.jit, static_argnames=("config", "shapes"))
def _init(key, config: FastEGNNConfig, shapes: InitShapes):
    inputs = shapes.inputs()
    graph = DenseGraph(inputs.node_mask)
    h, x, v, a = inputs.h, inputs.x, inputs.v, inputs.edge_attr
    return FastEGNN(config).init(key, graph, inputs.node_mask, h, x, v, a, None, 1)


@functools.partial(jax.jit, static_argnames=("config", "edge_sharding"))
def _apply(
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
    node_graph,
    graph_mask,
    edge_sharding,
):
    graph, mask, g = _validate(
        config, h, x, v, edge_attr, node_mask, senders, receivers, edge_mask, node_graph, graph_mask
    )
    _check_params(params, config, h, edge_attr)
    graph = _with_edge_sharding(graph, edge_sharding)
    graph = _checked_indices(graph, "egnn_jax.fastegnn.apply")
    node_graph = _checked_node_graph(node_graph, g)
    return FastEGNN(config).apply(params, graph, mask, h, x, v, edge_attr, node_graph, g)


def init(
    key,
    config: FastEGNNConfig,
    h,
    x,
    v=None,
    edge_attr=None,
    node_mask=None,
    senders=None,
    receivers=None,
    edge_mask=None,
    node_graph=None,
    graph_mask=None,
):
    """Initialise the parameters of a FastEGNN stack (pure; jit-compiled).

    Parameter shapes depend only on the widths F and A and on the config, so parameters
    initialised on one graph serve graphs of any size, dense or sparse.

    Arguments: as `apply` (without `params`); `key` is a `jax.random` key.

    Returns:
        A Flax parameter tree (`{"params": ...}`) in the floating dtype of `x`; its
        ``virtual_features [C, hidden_features]`` are the virtual nodes' initial features.
    """
    _check_if_concrete(h, senders, receivers, node_graph, graph_mask)
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
        node_graph,
        graph_mask,
    )
    return _init(key, init_config(config), InitShapes.of(h, x, v, edge_attr))


def apply(
    params,
    config: FastEGNNConfig,
    h,
    x,
    v=None,
    edge_attr=None,
    node_mask=None,
    senders=None,
    receivers=None,
    edge_mask=None,
    node_graph=None,
    graph_mask=None,
    edge_sharding=None,
) -> FastEGNNOutput:
    """Run a FastEGNN stack on one graph or a packed batch (pure; jit-compiled; composes
    with vmap and grad).

    The real-real messages run on the graph given: dense (the complete graph over the nodes
    where `node_mask` is True) or sparse (`senders[e] -> receivers[e]`, e.g. from
    `egnn_jax.shortest_edges` or `egnn_jax.radius_graph`). The C virtual nodes exchange
    messages with every real node (`node_mask`, for sparse graphs too).

    Arguments:
        params: the tree returned by `init`.
        config: the `FastEGNNConfig` used at `init` (static).
        h: `[M, F]` node features.
        x: `[M, n]` positions.
        v: `[M, n]` velocities; required iff `config.velocity` (the default).
        edge_attr: `[M, M, A]` (dense; entry `[i, j]` belongs to the edge j -> i) or `[E, A]`
            (sparse), or None. Must match the width used at `init`.
        node_mask: `[M]` bool, False for padding nodes (dense and sparse); None: all real.
        senders, receivers: `[E]` int (sparse only).
        edge_mask: `[E]` bool (sparse only): False for edges that carry nothing.
        node_graph: `[M]` int (sparse only, with `graph_mask`): the graph of each node of a
            packed batch (`egnn_jax.GraphBatch.node_graph`); each graph gets its own C
            virtual nodes, which see its real nodes only.
        graph_mask: `[G]` bool (`GraphBatch.graph_mask`); its length G is the number of
            graphs (static), padding graphs included.
        edge_sharding: sparse only, static: as in `egnn_jax.apply`, for the real-real edges
            (`egnn_jax.shard_edges(...).edge_sharding`; node arrays replicated).

    Returns:
        `FastEGNNOutput(h, x, virtual_h, virtual_x)`: h `[M, out_features or
        hidden_features]`, x `[M, n]`, virtual_h `[C, hidden_features]`, virtual_x `[C, n]`
        (`[G, C, ...]` for a packed batch).

    Raises:
        ValueError: at trace time for wrong ranks, shapes or dtypes (naming the argument),
            an empty graph, a missing or extra `v`, params of another width, depth, channel
            count or velocity setting, `node_graph` without `graph_mask` or on a dense graph;
            in eager calls, edge indices outside `[0, M)` or graphs outside `[0, G)` (under
            jit these raise at run time).
    """
    _check_if_concrete(h, senders, receivers, node_graph, graph_mask)
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
        node_graph,
        graph_mask,
        edge_sharding,
    )
