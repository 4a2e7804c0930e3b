"""HEGNN (Cen et al., NeurIPS 2024): EGNN with steerable features of degree 0 ... L.

The public API mirrors `egnn_jax.init` / `egnn_jax.apply` (same arguments, graphs and checks):

    config = egnn_jax.HEGNNConfig(hidden_features=64, num_layers=4, max_degree=3)
    params = egnn_jax.hegnn.init(key, config, h, x, v=v, edge_attr=a)
    h_out, x_out = egnn_jax.hegnn.apply(params, config, h, x, v=v, edge_attr=a, node_mask=mask)
    h_out, x_out, chi = egnn_jax.hegnn.apply(..., return_steerable=True)

The layer's equations and the choices taken from the reference code are in
`egnn_jax._hegnn` (the Flax modules `HEGNN`, `HEGNNLayer`, `SteerableInit`).
`egnn_jax.testing.assert_steerable_equivariant` checks h, x and chi.
"""

from __future__ import annotations

import functools

import jax
from jaxtyping import Array, Float

from ._api import (
    _check_indices_if_concrete,
    _check_params,
    _checked_indices,
    _shape,
    _validate_graph,
    _with_edge_mask,
)
from ._config import HEGNNConfig
from ._graph import DenseGraph, SparseGraph
from ._hegnn import HEGNN, HEGNNLayer, Steerable, SteerableInit, spherical_harmonics
from ._init_graph import InitShapes, check_at_trace_time, init_config
from ._typing import EdgeAttr, NodeFeatures, Positions

__all__ = [
    "HEGNN",
    "HEGNNConfig",
    "HEGNNLayer",
    "SteerableInit",
    "apply",
    "init",
    "spherical_harmonics",
]


def _validate(config: HEGNNConfig, h, x, v, edge_attr, node_mask, senders, receivers, edge_mask):
    """Static (trace-time) checks of every argument; returns the graph backend."""
    if not isinstance(config, HEGNNConfig):
        raise TypeError(f"config must be an egnn_jax.HEGNNConfig, got {type(config).__name__}")
    graph = _validate_graph(
        h,
        x,
        v,
        edge_attr,
        node_mask,
        senders,
        receivers,
        velocity=config.velocity,
        config_name="HEGNNConfig",
    )
    if x.shape[1] != 3:
        raise ValueError(
            f"HEGNN needs 3-D positions (its spherical harmonics are 3-D), got x {_shape(x)}"
        )
    return _with_edge_mask(graph, edge_mask)


def _check_hegnn_params(params, config: HEGNNConfig, h, edge_attr):
    """Clear errors when params were initialised for other widths, degrees or depths."""
    _check_params(
        params, h, edge_attr, edge_layer="steerable_init", init_name="egnn_jax.hegnn.init"
    )
    tree = params["params"]
    hidden = tree["embedding"]["kernel"].shape[1]
    if hidden != config.hidden_features:
        raise ValueError(
            f"params have hidden width {hidden}, but config.hidden_features is "
            f"{config.hidden_features}"
        )
    layers = sum(1 for name in tree if name.startswith("layer_"))
    if layers != config.num_layers:
        raise ValueError(
            f"params have {layers} layers, but config.num_layers is {config.num_layers}"
        )
    attr = 0 if edge_attr is None else edge_attr.shape[-1]
    try:
        degrees = tree["layer_0"]["edge_in"]["kernel"].shape[0] - 2 * hidden - attr - 1
    except KeyError as err:
        raise ValueError("params is not a tree returned by egnn_jax.hegnn.init") from err
    if degrees != config.max_degree + 1:
        raise ValueError(
            f"params were initialised with max_degree {degrees - 1}, but config.max_degree "
            f"is {config.max_degree}"
        )
    if ("vel_out" in tree["layer_0"]) != config.velocity:
        raise ValueError(
            f"params were initialised with velocity={not config.velocity}, but "
            f"config.velocity is {config.velocity}"
        )


@functools.partial(jax.jit, static_argnames=("config", "shapes"))
def _init(key, config: HEGNNConfig, shapes: InitShapes):
    inputs = shapes.inputs()
    graph = DenseGraph(inputs.node_mask)
    return HEGNN(config).init(key, graph, inputs.h, inputs.x, inputs.v, inputs.edge_attr)


@functools.partial(jax.jit, static_argnames=("config", "return_steerable"))
def _apply(
    params, config, h, x, v, edge_attr, node_mask, senders, receivers, edge_mask, return_steerable
):
    graph = _validate(config, h, x, v, edge_attr, node_mask, senders, receivers, edge_mask)
    _check_hegnn_params(params, config, h, edge_attr)
    graph = _checked_indices(graph, "egnn_jax.hegnn.apply")
    h_out, x_out, chi = _forward(params, config, graph, h, x, v, edge_attr)
    return (h_out, x_out, chi) if return_steerable else (h_out, x_out)


def _forward(
    params,
    config: HEGNNConfig,
    graph: DenseGraph | SparseGraph,
    h: NodeFeatures,
    x: Positions,
    v: Positions | None,
    edge_attr: EdgeAttr | None,
) -> tuple[Float[Array, "nodes out"], Positions, Steerable]:
    """The validated forward pass; its annotations are checked in the test suite."""
    return HEGNN(config).apply(params, graph, h, x, v, edge_attr)


def init(
    key,
    config: HEGNNConfig,
    h,
    x,
    v=None,
    edge_attr=None,
    node_mask=None,
    senders=None,
    receivers=None,
    edge_mask=None,
):
    """Initialise the parameters of a HEGNN stack (pure; jit-compiled).

    The parameter shapes depend only on the widths F and A (and on the config), so parameters
    initialised on a dense graph serve sparse graphs and any number of nodes.

    Arguments:
        key: a `jax.random` key.
        config: `HEGNNConfig`.
        h: `[M, F]` node features (dense) or `[N, F]` (sparse).
        x: `[M, 3]` positions (HEGNN is 3-D).
        v: `[M, 3]` velocities; required iff `config.velocity` (the default).
        edge_attr: `[M, M, A]` (dense) or `[E, A]` (sparse) edge attributes, or None.
        node_mask: `[M]` bool, dense graphs only; None means every node is real.
        senders: `[E]` int, sparse graphs only (message j -> i flows from `senders`).
        receivers: `[E]` int, sparse graphs only.
        edge_mask: `[E]` bool, sparse graphs only: False for edges that carry nothing
            (`egnn_jax.radius_graph`'s filler edges); None means every edge is real.

    Returns:
        A Flax parameter tree (`{"params": ...}`) in the floating dtype of `x`.

    Raises:
        ValueError: at trace time, naming the argument and its shape, for wrong ranks, shapes
            or dtypes, positions that are not 3-D, an empty graph, or a missing/extra `v`.
    """
    if senders is not None:
        _check_indices_if_concrete(senders, receivers, h.shape[0])
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
    )
    return _init(key, init_config(config), InitShapes.of(h, x, v, edge_attr))


def apply(
    params,
    config: HEGNNConfig,
    h,
    x,
    v=None,
    edge_attr=None,
    node_mask=None,
    senders=None,
    receivers=None,
    edge_mask=None,
    *,
    return_steerable: bool = False,
):
    """Run a HEGNN stack on one graph (pure; jit-compiled; composes with vmap and grad).

    Graphs as in `egnn_jax.apply`. Dense: the complete graph over the nodes where `node_mask`
    is True, without self-edges; padding nodes never influence real nodes; batch with
    `jax.vmap`. Sparse: the directed edges `senders[e] -> receivers[e]`; a batch is a
    disjoint union of graphs, and padding edges must connect padding nodes only.

    Arguments:
        params: the tree returned by `init`.
        config: the `HEGNNConfig` used at `init` (static).
        h: `[M, F]` node features (dense) or `[N, F]` (sparse).
        x: `[M, 3]` positions.
        v: `[M, 3]` initial velocities; required iff `config.velocity`.
        edge_attr: `[M, M, A]` (dense; entry `[i, j]` belongs to the edge j -> i) or `[E, A]`
            (sparse), or None. Must match the width used at `init`.
        node_mask: `[M]` bool (dense only); None means every node is real.
        senders: `[E]` int (sparse only).
        receivers: `[E]` int (sparse only).
        edge_mask: `[E]` bool (sparse only): False for edges that carry nothing, e.g. the
            filler edges of `egnn_jax.radius_graph`; None means every edge is real.
        return_steerable: also return the final steerable features chi (static).

    Returns:
        `(h_out, x_out)`: `[M, out_features or hidden_features]` invariant features and
        `[M, 3]` equivariant positions; with `return_steerable`, `(h_out, x_out, chi)` with
        chi `[M, (L + 1)^2]`, degrees 0 ... L concatenated in the basis of
        `e3nn_jax.Irreps.spherical_harmonics(L)` (under an orthogonal Q, including
        reflections, chi -> chi D(Q)^T with `D = irreps.D_from_matrix(Q)`).

    Raises:
        ValueError: at trace time for wrong ranks, shapes or dtypes (naming the argument and
            its shape), for params of another width, depth, `max_degree` or velocity setting,
            and, in eager calls, for edge indices outside `[0, N)`. Under an outer `jax.jit`,
            out-of-range indices raise an `equinox` runtime error instead.

    NaN or inf in an input is not checked: it reaches the outputs of that node and of every
    node it sends messages to (`jax.config.update("jax_debug_nans", True)` finds it).
    """
    if senders is not None:
        _check_indices_if_concrete(senders, receivers, h.shape[0])
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
        return_steerable,
    )
