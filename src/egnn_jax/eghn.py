"""EGHN (Han et al., NeurIPS 2022): equivariant graph hierarchies with learned clusters.

The public API mirrors `egnn_jax.init` / `egnn_jax.apply` on one dense graph, plus the local
graph the pooling runs on (e.g. the bonds inside each rigid complex):

    config = egnn_jax.EGHNConfig(hidden_features=64, num_clusters=3)
    params = egnn_jax.eghn.init(key, config, h, x, v, edge_attr=a, local_adjacency=adj)
    out = egnn_jax.eghn.apply(params, config, h, x, v, edge_attr=a, local_adjacency=adj,
                              node_mask=mask)
    out.x, out.h, out.assignment, out.cut_loss

Train with ``mse(out.x, target) + λ · out.cut_loss`` (the reference: λ = 1). Batch with
`jax.vmap` over graphs padded to one size. The equations and the choices taken from the
reference code are in `egnn_jax._eghn`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ._api import _shape, _validate_graph
from ._config import EGHNConfig
from ._eghn import EGHN, EGHNOutput, EPool, EUpPool, cut_loss
from ._graph import DenseGraph
from ._init_graph import NUM_NODES, InitShapes, check_at_trace_time, init_config

__all__ = ["EGHN", "EGHNConfig", "EGHNOutput", "EPool", "EUpPool", "apply", "cut_loss", "init"]


def _validate(config, h, x, v, edge_attr, local_adjacency, node_mask, local_capacity):
    if not isinstance(config, EGHNConfig):
        raise TypeError(f"config must be an egnn_jax.EGHNConfig, got {type(config).__name__}")
    if local_capacity is not None and (
        isinstance(local_capacity, bool)
        or not isinstance(local_capacity, int)
        or local_capacity < 1
    ):
        raise ValueError(f"local_capacity must be a positive int or None, got {local_capacity!r}")
    graph = _validate_graph(
        h, x, v, edge_attr, node_mask, None, None, velocity=True, config_name="EGHNConfig"
    )
    n = h.shape[0]
    if local_adjacency is None or local_adjacency.shape != (n, n):
        raise ValueError(
            f"local_adjacency must have shape ({n}, {n}), got {_shape(local_adjacency)}"
        )
    if local_adjacency.dtype != jnp.bool_:
        raise ValueError(f"local_adjacency must be bool, got dtype {local_adjacency.dtype}")
    return graph


def _check_params(params, config: EGHNConfig, h, edge_attr):
    try:
        tree = params["params"]
        embed = tree["low"]["embedding"]["kernel"]
        clusters = tree["pool"]["assign_out"]["kernel"].shape[1]
        edge_in = tree["low"]["layer_0"]["edge_in"]["kernel"]
    except (KeyError, TypeError) as err:
        raise ValueError("params is not a tree returned by egnn_jax.eghn.init") from err
    if embed.shape[0] != h.shape[1]:
        raise ValueError(f"params expect h with {embed.shape[0]} features, got h {_shape(h)}")
    if embed.shape[1] != config.hidden_features or clusters != config.num_clusters:
        raise ValueError(
            f"params have hidden width {embed.shape[1]} and {clusters} clusters, but the config "
            f"has {config.hidden_features} and {config.num_clusters}"
        )
    attr = edge_in.shape[0] - 2 * embed.shape[1] - 1
    got = 0 if edge_attr is None else edge_attr.shape[-1]
    if attr != got:
        raise ValueError(f"params expect edge_attr of width {attr}, got {_shape(edge_attr)}")
    if embed.dtype != h.dtype:
        raise ValueError(f"params have dtype {embed.dtype} but the inputs {h.dtype}")


@functools.partial(jax.jit, static_argnames=("config", "shapes"))
def _init(key, config: EGHNConfig, shapes: InitShapes):
    inputs = shapes.inputs()
    both_bonded = ~jnp.eye(NUM_NODES, dtype=bool)
    model = EGHN(config, None)
    graph = DenseGraph(inputs.node_mask)
    return model.init(key, graph, both_bonded, inputs.h, inputs.x, inputs.v, inputs.edge_attr)


@functools.partial(jax.jit, static_argnames=("config", "local_capacity"))
def _apply(params, config, h, x, v, edge_attr, local_adjacency, node_mask, local_capacity):
    graph = _validate(config, h, x, v, edge_attr, local_adjacency, node_mask, local_capacity)
    _check_params(params, config, h, edge_attr)
    model = EGHN(config, local_capacity)
    return model.apply(params, graph, local_adjacency, h, x, v, edge_attr)


def init(
    key,
    config: EGHNConfig,
    h,
    x,
    v,
    edge_attr=None,
    *,
    local_adjacency,
    node_mask=None,
    local_capacity: int | None = None,
):
    """Initialise an EGHN's parameters (pure; jit-compiled).

    Arguments:
        key: a `jax.random` key.
        config: `EGHNConfig`.
        h: `[N, F]` invariant node features; x, v: `[N, n]` positions and velocities.
        edge_attr: `[N, N, A]` invariant edge attributes (entry `[i, j]`: the edge j -> i) or
            None.
        local_adjacency: `[N, N]` bool, the local graph of the pooling and the cut loss.
        node_mask: `[N]` bool (None: every node is real).
        local_capacity: static; the most directed local edges between real nodes that a graph
            may have (None: N (N - 1)). E-Pool's cost grows with it, so pass the dataset's
            largest count (e.g. ``int(adjacency.sum((-1, -2)).max())``) when the local graph
            is sparse.

    Returns:
        A Flax parameter tree in the floating dtype of `x`; its shapes depend on F, A and the
        config only, so it serves graphs of any size.

    Raises:
        ValueError: at trace time for wrong ranks, shapes or dtypes, naming the argument.
    """
    check_at_trace_time(
        lambda *a: _validate(config, *a, local_capacity),
        h,
        x,
        v,
        edge_attr,
        local_adjacency,
        node_mask,
    )
    return _init(key, init_config(config), InitShapes.of(h, x, v, edge_attr))


def apply(
    params,
    config: EGHNConfig,
    h,
    x,
    v,
    edge_attr=None,
    *,
    local_adjacency,
    node_mask=None,
    local_capacity: int | None = None,
) -> EGHNOutput:
    """Run an EGHN on one graph (pure; jit-compiled; composes with vmap and grad).

    The complete graph over the nodes where `node_mask` is True carries the particle-level
    EGNN; `local_adjacency` (restricted to real nodes) carries E-Pool and the cut loss.
    Padding nodes influence nothing; their output positions are their inputs.

    Arguments:
        params: the tree returned by `init`; config: the `EGHNConfig` used there (static).
        h, x, v, edge_attr, local_adjacency, node_mask, local_capacity: as in `init`.

    Returns:
        `EGHNOutput` ``(h [N, H], x [N, n], assignment [N, K], cut_loss [])``: x is
        E(n)-equivariant, h, the assignment and the cut loss invariant, and all of them
        permutation-equivariant in the nodes.

    Raises:
        ValueError: at trace time, as `init`, and for params of another width, cluster
            count or feature width.
        EquinoxRuntimeError: at run time (also under jit) when a graph has more local edges
            than `local_capacity`; they are never silently dropped.
    """
    return _apply(params, config, h, x, v, edge_attr, local_adjacency, node_mask, local_capacity)
