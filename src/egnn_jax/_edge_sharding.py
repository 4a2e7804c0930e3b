"""One large graph over several devices: its edges split between them, its nodes on every one.

Edge work (messages, their MLPs, the gathers and the per-edge backward pass) is where a large
sparse graph spends its time and memory: ~30 edges per node on a radius graph. Splitting the
edge list over a mesh axis and replicating the node arrays lets XLA's SPMD partitioner run
`egnn_jax.apply` unchanged: each device gathers its edges' end points from its full copy of
the nodes, and every node sum (`segment_sum` over the receivers) becomes a per-device partial
sum followed by one all-reduce. No edge array is ever gathered onto one device.

Edge chunks (`EGNNConfig.edge_chunk_size`) are a `lax.scan` over the edge list, which the
partitioner cannot split that way: it gathers the edge arrays onto every device, and every
device computes every chunk. Passing `edge_sharding=ShardedEdges.edge_sharding` to
`egnn_jax.apply` (or `fastegnn.apply`) runs the messages per device instead (a `shard_map`):
each device scans its own edges into partial node sums, reduced once per layer.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class ShardedEdges(NamedTuple):
    """An edge list padded to a multiple of a mesh axis' size and split along it.

    Pass the fields to `egnn_jax.apply` (or `hegnn.apply`, `fastegnn.apply`) as `senders=`,
    `receivers=`, `edge_mask=`, `edge_attr=` (and `edge_sharding=` to `egnn_jax.apply`,
    needed with `EGNNConfig.edge_chunk_size`); put the node arrays on `replicated`.

    Fields:
        senders: `[E']` int32, E' = E rounded up to a multiple of the axis size; padding edges
            are the self-loop 0 -> 0.
        receivers: `[E']` int32.
        edge_mask: `[E']` bool: False on the padding edges and on edges the caller masked.
        edge_attr: `[E', A]` attributes (zeros on padding edges), or None.
        replicated: the `NamedSharding` that puts an array whole on every device of the mesh.
        edge_sharding: the `NamedSharding` of the edge arrays (split along the axis); pass it
            to `egnn_jax.apply(..., edge_sharding=)` so that each device runs the layer's
            edge work (chunked or not) on its own edges.
    """

    senders: jax.Array
    receivers: jax.Array
    edge_mask: jax.Array
    edge_attr: jax.Array | None
    replicated: NamedSharding
    edge_sharding: NamedSharding


def shard_edges(
    mesh: Mesh,
    senders,
    receivers,
    *,
    edge_mask=None,
    edge_attr=None,
    axis: str | None = None,
) -> ShardedEdges:
    """Split one graph's edge list over the devices of `mesh` along `axis`.

    Arguments:
        mesh: a `jax.sharding.Mesh`.
        senders: `[E]` int node indices (messages flow from senders to receivers).
        receivers: `[E]` int node indices.
        edge_mask: `[E]` bool, or None (every edge is real).
        edge_attr: `[E, A]` edge attributes, or None.
        axis: the mesh axis to split over; may be omitted when the mesh has one axis.

    Returns:
        `ShardedEdges`, its edge arrays sharded over `axis` (each device holds E' / size
        consecutive edges).

    Raises:
        ValueError: for mismatched or non-1-D index arrays, an empty edge list, or an axis
            the mesh does not have.
    """
    if axis is None:
        if len(mesh.axis_names) != 1:
            raise ValueError(f"mesh has axes {mesh.axis_names}: name the one to split edges over")
        axis = mesh.axis_names[0]
    if axis not in mesh.axis_names:
        raise ValueError(f"axis {axis!r} is not one of the mesh's axes {mesh.axis_names}")
    senders, receivers = np.asarray(senders), np.asarray(receivers)
    if senders.ndim != 1 or senders.shape != receivers.shape:
        raise ValueError(
            f"senders and receivers must be [E] of one length, got {senders.shape} and "
            f"{receivers.shape}"
        )
    num_edges = senders.shape[0]
    if num_edges == 0:
        raise ValueError("the edge list is empty")
    for name, a in (("edge_mask", edge_mask), ("edge_attr", edge_attr)):
        if a is not None and (np.ndim(a) < 1 or np.shape(a)[0] != num_edges):
            raise ValueError(f"{name} must have {num_edges} rows (one per edge), got {np.shape(a)}")

    pad = -num_edges % mesh.shape[axis]
    mask = np.ones(num_edges, bool) if edge_mask is None else np.asarray(edge_mask, bool)

    def padded(a, fill):
        a = np.asarray(a)
        return np.concatenate([a, np.full((pad,) + a.shape[1:], fill, a.dtype)])

    split = NamedSharding(mesh, PartitionSpec(axis))
    edges = [padded(senders, 0).astype(np.int32), padded(receivers, 0).astype(np.int32)]
    edges.append(padded(mask, False))
    put = [jax.device_put(a, split) for a in edges]
    attr = None if edge_attr is None else jax.device_put(padded(edge_attr, 0), split)
    return ShardedEdges(*put, attr, NamedSharding(mesh, PartitionSpec()), split)
