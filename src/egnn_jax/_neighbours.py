"""Radius graphs: every directed pair of real nodes closer than a cutoff, periodic or not.

The edge list has a static capacity (so it jits and batches); the edges found beyond it are
reported by `RadiusGraph.overflow`, never dropped silently. Filler edges point from node 0 to
node 0 and carry ``edge_mask = False``; pass the mask on (`egnn_jax.apply(..., edge_mask=)`).

Why not jax-md's neighbour lists: jax-md 0.2.29 depends on jraph (unmaintained, partly broken
on current JAX) and pymatgen, and its `partition` module imports jraph at load time; the
all-pairs search below is what a cell list would refine, and it is exact.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["RadiusGraph", "minimum_image", "radius_graph"]


class RadiusGraph(NamedTuple):
    """A fixed-capacity directed edge list (both directions of every pair).

    Fields:
        senders: `[capacity]` int32, node j of the edge j -> i (0 on filler edges).
        receivers: `[capacity]` int32, node i, in increasing order over the real edges.
        edge_mask: `[capacity]` bool, True for the real edges (they come first).
        overflow: `[]` bool, True when more pairs were within the cutoff than `capacity`
            (the list then holds the first `capacity` of them, by receiver).
        num_edges: `[]` int32, how many directed pairs were within the cutoff (also when
            that is more than `capacity`: the capacity to ask for next time).
    """

    senders: jax.Array
    receivers: jax.Array
    edge_mask: jax.Array
    overflow: jax.Array
    num_edges: jax.Array


def minimum_image(d, box):
    """Relative vectors `d [..., n]` wrapped into the periodic cell (None: unchanged).

    Arguments:
        d: `[..., n]` differences x_i - x_j.
        box: `[n]` or scalar side lengths of a cell with its origin at 0, or None.
    """
    if box is None:
        return d
    box = jnp.broadcast_to(jnp.asarray(box, d.dtype), d.shape[-1:])
    box = box.reshape((1,) * (d.ndim - 1) + box.shape)  # explicit ranks (strict promotion)
    return d - box * jnp.round(d / box)


def _check(x, cutoff, capacity, box, node_mask):
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must have shape [nodes >= 1, n >= 1], got {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be floating point, got dtype {x.dtype}")
    if isinstance(capacity, bool) or not isinstance(capacity, int | np.integer) or capacity < 1:
        raise ValueError(f"capacity must be a positive int (static), got {capacity!r}")
    if not isinstance(cutoff, jax.core.Tracer) and not float(cutoff) > 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff!r}")
    if box is not None:
        shape = jnp.shape(box)
        if shape not in ((), (x.shape[1],)):
            raise ValueError(f"box must be a scalar or have shape ({x.shape[1]},), got {shape}")
        if not isinstance(box, jax.core.Tracer) and not np.all(np.asarray(box) > 0):
            raise ValueError(f"box side lengths must be > 0, got {box!r}")
    if node_mask is not None and (node_mask.shape != x.shape[:1] or node_mask.dtype != bool):
        raise ValueError(
            f"node_mask must be bool of shape ({x.shape[0]},), got {node_mask.dtype} "
            f"{tuple(node_mask.shape)}"
        )


def radius_graph(x, cutoff, *, capacity: int, box=None, node_mask=None) -> RadiusGraph:
    """All directed edges j -> i between real nodes with ``|x_i - x_j| < cutoff``.

    Arguments:
        x: `[N, n]` positions (inside the box when `box` is given; wrapped otherwise).
        cutoff: the radius (a Python float or a traced scalar). With a box, it must be at
            most half the shortest side, so that each pair has one minimum image.
        capacity: static; the most directed edges the list holds.
        box: `[n]` or scalar side lengths of a periodic cell (origin at 0), or None.
        node_mask: `[N]` bool, False for padding nodes (they get no edges), or None.

    Returns:
        `RadiusGraph` ``(senders, receivers, edge_mask, overflow, num_edges)``.

    Raises:
        ValueError: at trace time for wrong shapes or dtypes, a non-positive cutoff,
            capacity or box side, or a cutoff over half a concrete box side.

    The search compares all pairs (`O(N²)` time, memory in chunks of receivers is future
    work); it composes with `jit` (capacity static) and `vmap`.
    """
    _check(x, cutoff, capacity, box, node_mask)
    if box is not None and not isinstance(box, jax.core.Tracer):
        if not isinstance(cutoff, jax.core.Tracer) and float(cutoff) > 0.5 * np.min(box):
            raise ValueError(
                f"cutoff {cutoff} exceeds half the box side {np.min(box)}: a pair could "
                "be within the cutoff through more than one image"
            )
    return _radius_graph(x, cutoff, capacity, box, node_mask)


def edge_list(pairs, capacity: int, node_mask=None) -> RadiusGraph:
    """`[N, N]` bool pairs (entry [i, j]: the edge j -> i) -> a fixed-capacity edge list.

    Self-pairs and pairs with a padding end (`node_mask` False) are left out; the first
    `capacity` of the rest, by receiver, are kept and `overflow` says whether any was not.
    """
    n = pairs.shape[0]
    pairs = pairs & ~jnp.eye(n, dtype=bool)
    if node_mask is not None:
        pairs = pairs & node_mask[:, None] & node_mask[None, :]
    count = jnp.sum(pairs, dtype=jnp.int32)
    receivers, senders = jnp.nonzero(pairs, size=capacity, fill_value=0)
    return RadiusGraph(
        senders.astype(jnp.int32),
        receivers.astype(jnp.int32),
        jnp.arange(capacity) < count,
        count > capacity,
        count,
    )


@functools.partial(jax.jit, static_argnames="capacity")
def _radius_graph(x, cutoff, capacity, box, node_mask):
    d = minimum_image(x[:, None, :] - x[None, :, :], box)  # [i, j]: x_i - x_j
    within = jnp.sum(d * d, axis=-1) < jnp.asarray(cutoff, x.dtype) ** 2
    return edge_list(within, capacity, node_mask)
