"""Radius graphs: every directed pair of real nodes closer than a cutoff, periodic or not.

The edge list has a static capacity (so it jits and batches); the edges found beyond it are
reported by `RadiusGraph.overflow`, never dropped silently. Filler edges point from node 0 to
node 0 and carry ``edge_mask = False``; pass the mask on (`egnn_jax.apply(..., edge_mask=)`).

Two searches give the same edges: every pair (`O(N²)`, any box or none) and, in a periodic
box at least three cutoffs wide, a cell list (`O(N)`): the box is cut into cells no smaller
than the cutoff, each node is binned, and each node compares itself with the nodes of its own
and the adjacent cells only (3^n of them). The cell table has a static number of slots per
cell, so a crowded cell is reported like an edge overflow.

Why not jax-md's neighbour lists: jax-md 0.2.29 depends on jraph (unmaintained, partly broken
on current JAX) and pymatgen, and its `partition` module imports jraph at load time.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["RadiusGraph", "minimum_image", "radius_graph", "shortest_edges"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RadiusGraph:
    """A fixed-capacity directed edge list (both directions of every pair).

    Unpacks as ``senders, receivers, edge_mask, overflow = graph``; `num_edges` is an
    attribute. A pytree: it passes through `jit` and `vmap`.

    Fields:
        senders: `[capacity]` int32, node j of the edge j -> i (0 on filler edges).
        receivers: `[capacity]` int32, node i, in increasing order over the real edges.
        edge_mask: `[capacity]` bool, True for the real edges (they come first).
        overflow: `[]` bool, True when the list is incomplete: more pairs were within the
            cutoff than `capacity` (the list then holds the first `capacity` of them, by
            receiver), or, for the cell-list search, a cell held more nodes than its slots.
        num_edges: `[]` int32, how many directed pairs were found within the cutoff (also
            when that is more than `capacity`: the capacity to ask for next time). If
            `overflow` is set with `num_edges <= capacity`, a cell was too crowded: raise
            `cell_capacity`.
    """

    senders: jax.Array
    receivers: jax.Array
    edge_mask: jax.Array
    overflow: jax.Array
    num_edges: jax.Array

    def _contract(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        return self.senders, self.receivers, self.edge_mask, self.overflow

    def __iter__(self):
        return iter(self._contract())

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index):
        return self._contract()[index]

    def _replace(self, **changes) -> RadiusGraph:
        """A copy with some fields changed (as a NamedTuple's `_replace`)."""
        return dataclasses.replace(self, **changes)


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


def check_box(box, dim: int) -> None:
    """Raise ValueError for a box of the wrong shape, or (when concrete) a side <= 0 or NaN."""
    if box is None:
        return
    shape = jnp.shape(box)
    if shape not in ((), (dim,)):
        raise ValueError(f"box must be a scalar or have shape ({dim},), got {shape}")
    if not isinstance(box, jax.core.Tracer) and not np.all(np.asarray(box) > 0):
        raise ValueError(f"box side lengths must be > 0, got {box!r}")


def _check(x, cutoff, capacity, box, node_mask):
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must have shape [nodes >= 1, n >= 1], got {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be floating point, got dtype {x.dtype}")
    if isinstance(capacity, bool) or not isinstance(capacity, int | np.integer) or capacity < 1:
        raise ValueError(f"capacity must be a positive int (static), got {capacity!r}")
    if not isinstance(cutoff, jax.core.Tracer) and not float(cutoff) > 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff!r}")
    check_box(box, x.shape[1])
    if node_mask is not None and (node_mask.shape != x.shape[:1] or node_mask.dtype != bool):
        raise ValueError(
            f"node_mask must be bool of shape ({x.shape[0]},), got {node_mask.dtype} "
            f"{tuple(node_mask.shape)}"
        )


# "auto" uses the cell list from this size on: below it, comparing every pair is cheap and
# avoids the binning and the 3^n-cell candidate lists.
CELL_LIST_MIN_NODES = 2048


def radius_graph(
    x,
    cutoff,
    *,
    capacity: int,
    box=None,
    node_mask=None,
    method: str = "auto",
    cell_capacity: int | None = None,
) -> RadiusGraph:
    """All directed edges j -> i between real nodes with ``|x_i - x_j| < cutoff``.

    Arguments:
        x: `[N, n]` positions (inside the box when `box` is given; wrapped otherwise).
        cutoff: the radius (a Python float or a traced scalar; the cell list needs a
            Python float). With a box, it must be at most half the shortest side, so that
            each pair has one minimum image.
        capacity: static; the most directed edges the list holds.
        box: `[n]` or scalar side lengths of a periodic cell (origin at 0), or None.
        node_mask: `[N]` bool, False for padding nodes (they get no edges), or None.
        method: ``"all_pairs"`` (`O(N²)`), ``"cells"`` (a cell list, `O(N)`: needs a
            concrete `box` and `cutoff` with at least 3 cells of side >= cutoff along each
            axis), or ``"auto"``: cells when they apply and N >= `CELL_LIST_MIN_NODES`.
            A large system without periodicity gets the cell list too: shift it into
            ``[0, extent)`` and pass ``box = extent + cutoff``; no pair is then within the
            cutoff through the wrap, so the edges are the non-periodic ones (call `apply`
            without a box).
        cell_capacity: static; node slots per cell of the cell list (default: twice the
            mean occupancy N / cells, plus 8). A fuller cell sets `overflow`.

    Returns:
        `RadiusGraph`: ``senders, receivers, edge_mask, overflow`` (it unpacks as these
        four) and `num_edges`. Both methods give the same edge set; senders of one
        receiver may come in another order.

    Raises:
        ValueError: at trace time for wrong shapes or dtypes, a non-positive cutoff,
            capacity or box side, a cutoff over half a concrete box side, an unknown
            method, or ``"cells"`` where a cell list does not apply.
        A runtime error (`equinox`) when a real node's position is NaN or inf: that node
            would lose its edges silently.

    Composes with `jit` (capacity static) and `vmap`.
    """
    _check(x, cutoff, capacity, box, node_mask)
    concrete_box = box is not None and not isinstance(box, jax.core.Tracer)
    concrete_cutoff = not isinstance(cutoff, jax.core.Tracer)
    if concrete_box and concrete_cutoff and float(cutoff) > 0.5 * np.min(box):
        raise ValueError(
            f"cutoff {cutoff} exceeds half the box side {np.min(box)}: a pair could "
            "be within the cutoff through more than one image"
        )
    if method not in ("auto", "all_pairs", "cells"):
        raise ValueError(f"method must be 'auto', 'all_pairs' or 'cells', got {method!r}")
    cells = side = None
    if concrete_box and concrete_cutoff:
        side = tuple(float(s) for s in np.broadcast_to(np.asarray(box, np.float64), x.shape[1:]))
        cells = tuple(int(c) for c in np.floor(np.asarray(side) / float(cutoff)))
        if min(cells) < 3:
            cells = None  # adjacent cells would repeat through the periodic wrap
    if method == "cells" and cells is None:
        raise ValueError(
            "method='cells' needs a concrete box and cutoff with at least 3 cutoffs along "
            f"every side (box {box}, cutoff {cutoff})"
        )
    use_cells = method == "cells" or (
        method == "auto" and cells is not None and x.shape[0] >= CELL_LIST_MIN_NODES
    )
    if not use_cells:
        return _radius_graph(x, cutoff, capacity, box, node_mask)
    if cell_capacity is None:
        cell_capacity = int(np.ceil(2 * x.shape[0] / np.prod(cells))) + 8
    elif isinstance(cell_capacity, bool) or not isinstance(cell_capacity, int | np.integer):
        raise ValueError(f"cell_capacity must be a positive int, got {cell_capacity!r}")
    elif cell_capacity < 1:
        raise ValueError(f"cell_capacity must be a positive int, got {cell_capacity!r}")
    return _cell_radius_graph(
        x,
        node_mask,
        cutoff=float(cutoff),
        capacity=int(capacity),
        box=side,
        cells=cells,
        cell_capacity=int(cell_capacity),
    )


def shortest_edges(x, keep_fraction: float, *, node_mask=None, box=None) -> RadiusGraph:
    """The shortest `keep_fraction` of the directed edges of the complete graph.

    FastEGNN's reduced real-real graph (GLAD-RUC/FastEGNN, `datasets/nbody/dataset.py`:
    ``cutoff_rate`` = 1 - `keep_fraction`): of the M (M - 1) directed pairs of distinct
    nodes, the ``int(M (M - 1) keep_fraction)`` shortest. Both directions of a pair have
    the same length, so pairs are kept whole except at a tie on the last length.

    Arguments:
        x: `[M, n]` positions.
        keep_fraction: in (0, 1] (a Python float: the edge count is a static shape).
        node_mask: `[M]` bool, False for padding nodes (never an end of an edge); the edge
            count stays that of M nodes, and the edges with a padding end are masked out.
        box: `[n]` or scalar side lengths of a periodic cell (minimum-image lengths), or None.

    Returns:
        `RadiusGraph` with capacity ``int(M (M - 1) keep_fraction)``, receivers in
        increasing order; `overflow` is always False.

    Composes with `jit` and `vmap`.
    """
    _check(x, 1.0, 1, box, node_mask)
    if isinstance(keep_fraction, jax.core.Tracer) or not 0 < float(keep_fraction) <= 1:
        raise ValueError(f"keep_fraction must be a Python float in (0, 1], got {keep_fraction!r}")
    m = x.shape[0]
    count = int(m * (m - 1) * float(keep_fraction))
    if count < 1:
        raise ValueError(f"keep_fraction {keep_fraction} keeps no edge of {m} nodes")
    return _shortest_edges(x, count, box, node_mask)


@functools.partial(jax.jit, static_argnames="count")
def _shortest_edges(x, count, box, node_mask):
    m = x.shape[0]
    d = minimum_image(x[:, None, :] - x[None, :, :], box)
    d2 = jnp.sum(d * d, axis=-1)
    excluded = jnp.eye(m, dtype=bool)
    if node_mask is not None:
        excluded = excluded | ~(node_mask[:, None] & node_mask[None, :])
    d2 = jnp.where(excluded, jnp.inf, d2)
    _, flat = jax.lax.top_k(-d2.reshape(-1), count)
    pairs = jnp.zeros((m * m,), bool).at[flat].set(True).reshape(m, m) & ~excluded
    return edge_list(pairs, count)


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


def _finite(x, node_mask):
    """`x`, raising a runtime error if a real node's position is NaN or inf: it would
    compare false with every cutoff and silently lose its edges."""
    bad = ~jnp.isfinite(x).all(axis=1)
    if node_mask is not None:
        bad = bad & node_mask
    return eqx.error_if(x, jnp.any(bad), "radius_graph: x has NaN or inf at a real node")


@functools.partial(jax.jit, static_argnames="capacity")
def _radius_graph(x, cutoff, capacity, box, node_mask):
    x = _finite(x, node_mask)
    d = minimum_image(x[:, None, :] - x[None, :, :], box)  # [i, j]: x_i - x_j
    within = jnp.sum(d * d, axis=-1) < jnp.asarray(cutoff, x.dtype) ** 2
    return edge_list(within, capacity, node_mask)


@functools.partial(jax.jit, static_argnames=("cutoff", "capacity", "box", "cells", "cell_capacity"))
def _cell_radius_graph(x, node_mask, *, cutoff, capacity, box, cells, cell_capacity):
    x = _finite(x, node_mask)
    n, dim = x.shape
    num_cells = int(np.prod(cells))
    box_a = jnp.asarray(box, x.dtype)[None, :]
    cells_a = np.asarray(cells, np.int32)[None, :]
    # Bin every node; padding nodes go to one extra bin that no node looks into.
    cell = jnp.floor(jnp.mod(x, box_a) / (box_a / cells_a)).astype(jnp.int32)
    cell = jnp.clip(cell, 0, cells_a - 1)
    strides = np.cumprod((1,) + cells[:-1]).astype(np.int32)[None, :]
    flat = jnp.sum(cell * strides, axis=1)
    if node_mask is not None:
        flat = jnp.where(node_mask, flat, num_cells)
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)
    sorted_cell = flat[order]
    counts = jax.ops.segment_sum(jnp.ones((n,), jnp.int32), flat, num_segments=num_cells + 1)
    starts = jnp.cumsum(counts) - counts
    slot = jnp.arange(n, dtype=jnp.int32) - starts[sorted_cell]
    # Nodes past a cell's slots, and padding nodes, fall outside the table and are dropped.
    row = jnp.where(slot < cell_capacity, sorted_cell, num_cells)
    table = jnp.full((num_cells, cell_capacity), -1, jnp.int32)
    table = table.at[row, slot].set(order, mode="drop")
    crowded = jnp.max(counts[:num_cells]) > cell_capacity

    # Each node's candidates: the table rows of its own and the 3^n adjacent cells.
    offsets = np.asarray(list(itertools.product((-1, 0, 1), repeat=dim)), np.int32)
    around = jnp.mod(cell[:, None, :] + offsets[None, :, :], cells_a[None, :, :])
    around = jnp.sum(around * strides[None, :, :], axis=-1)  # [N, 3^n]
    candidates = table[around].reshape(n, -1)  # [N, 3^n * slots]
    safe = jnp.maximum(candidates, 0)
    d = minimum_image(x[:, None, :] - x[safe], box_a[0])
    within = (jnp.sum(d * d, axis=-1) < cutoff * cutoff) & (candidates >= 0)
    within = within & (candidates != jnp.arange(n, dtype=jnp.int32)[:, None])
    if node_mask is not None:
        within = within & node_mask[:, None]
    count = jnp.sum(within, dtype=jnp.int32)
    receivers, column = jnp.nonzero(within, size=capacity, fill_value=0)
    edge_mask = jnp.arange(capacity) < count
    senders = jnp.where(edge_mask, candidates[receivers, column], 0)
    return RadiusGraph(
        senders.astype(jnp.int32),
        receivers.astype(jnp.int32),
        edge_mask,
        (count > capacity) | crowded,
        count,
    )
