"""Graphs of different sizes packed into one padded edge list with static budgets.

A data set of molecules has a different node and edge count per graph; a jitted model wants
one shape. `pack_graphs` concatenates graphs (offsetting their edges) and pads to budgets
``(max_nodes, max_edges, max_graphs)`` chosen once, so every batch compiles to the same
program. As in jraph, one extra *padding graph* owns the padding nodes and edges: padding
edges join the first padding node to itself and are masked, so no real node receives a
message from padding. `packed_batches` cuts a data set into such batches greedily.

This is host-side data loading (NumPy), not traced code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Graph", "GraphBatch", "pack_graphs", "packed_batches"]


class Graph(NamedTuple):
    """One graph of a data set (NumPy or JAX arrays).

    Fields:
        h: `[N, F]` invariant node features.
        x: `[N, n]` positions.
        senders: `[E]` int, node j of each edge j -> i (0 <= j < N).
        receivers: `[E]` int, node i.
        v: `[N, n]` velocities, or None.
        edge_attr: `[E, A]` edge attributes, or None.
    """

    h: np.ndarray
    x: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    v: np.ndarray | None = None
    edge_attr: np.ndarray | None = None


class GraphBatch(NamedTuple):
    """Graphs packed into static budgets: `max_nodes` N, `max_edges` E, `max_graphs` G.

    Fields:
        h: `[N, F]`; padding rows are 0.
        x: `[N, n]`; padding rows are 0.
        v: `[N, n]` or None.
        edge_attr: `[E, A]` or None.
        senders, receivers: `[E]` int32, indices into the packed nodes.
        edge_mask: `[E]` bool, True for real edges (they come first).
        node_mask: `[N]` bool, True for real nodes (they come first).
        node_graph: `[N]` int32, the graph each node belongs to (padding nodes: the
            padding graph, the first one after the real graphs).
        graph_mask: `[G]` bool, True for the real graphs (they come first).
        nodes_per_graph: `[G]` int32 (the padding graph counts the padding nodes).
        edges_per_graph: `[G]` int32.

    Pass it to the sparse model as
    ``egnn_jax.apply(params, config, b.h, b.x, v=b.v, edge_attr=b.edge_attr,
    senders=b.senders, receivers=b.receivers, edge_mask=b.edge_mask)``.
    """

    h: jax.Array
    x: jax.Array
    v: jax.Array | None
    edge_attr: jax.Array | None
    senders: jax.Array
    receivers: jax.Array
    edge_mask: jax.Array
    node_mask: jax.Array
    node_graph: jax.Array
    graph_mask: jax.Array
    nodes_per_graph: jax.Array
    edges_per_graph: jax.Array

    def sum_per_graph(self, per_node: jax.Array) -> jax.Array:
        """`[N, ...]` -> `[G, ...]`: the sum over each graph's real nodes (0 for padding)."""
        mask = self.node_mask.reshape(self.node_mask.shape + (1,) * (per_node.ndim - 1))
        return jax.ops.segment_sum(
            jnp.where(mask, per_node, 0),
            self.node_graph,
            num_segments=self.graph_mask.shape[0],
        )

    def mean_per_graph(self, per_node: jax.Array) -> jax.Array:
        """`[N, ...]` -> `[G, ...]`: the mean over each graph's real nodes (0 for padding)."""
        sums = self.sum_per_graph(per_node)
        count = jnp.where(self.graph_mask, self.nodes_per_graph, 1).astype(sums.dtype)
        return sums / count.reshape(count.shape + (1,) * (sums.ndim - 1))

    def unpack(self, per_node) -> list[np.ndarray]:
        """`[N, ...]` -> one array per real graph (host side, for inspection)."""
        per_node = np.asarray(per_node)
        counts = np.asarray(self.nodes_per_graph)[np.asarray(self.graph_mask)]
        starts = np.concatenate([[0], np.cumsum(counts)])
        return [per_node[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]


def _as_graph(g, i: int) -> Graph:
    g = Graph(**g) if isinstance(g, dict) else g
    if not isinstance(g, Graph):
        raise TypeError(f"graph {i} must be an egnn_jax.Graph or a dict of its fields")
    h, x = np.asarray(g.h), np.asarray(g.x)
    s, r = np.asarray(g.senders), np.asarray(g.receivers)
    if h.ndim != 2 or x.ndim != 2 or h.shape[0] != x.shape[0]:
        raise ValueError(f"graph {i}: h [N, F] and x [N, n] must agree, got {h.shape}, {x.shape}")
    if h.shape[0] == 0:
        raise ValueError(f"graph {i} has no nodes")
    if s.shape != r.shape or s.ndim != 1 or not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"graph {i}: senders and receivers must be [E] ints of one shape")
    if s.size and (min(s.min(), r.min()) < 0 or max(s.max(), r.max()) >= h.shape[0]):
        raise ValueError(f"graph {i}: an edge refers to a node outside 0..{h.shape[0] - 1}")
    v = None if g.v is None else np.asarray(g.v)
    if v is not None and v.shape != x.shape:
        raise ValueError(f"graph {i}: v must have the shape of x {x.shape}, got {v.shape}")
    a = None if g.edge_attr is None else np.asarray(g.edge_attr)
    if a is not None and (a.ndim != 2 or a.shape[0] != s.shape[0]):
        raise ValueError(f"graph {i}: edge_attr must be [E={s.shape[0]}, A], got {a.shape}")
    return Graph(h, x, s, r, v, a)


def _stack(parts: list, rows: int, fill_rows: int) -> np.ndarray:
    joined = np.concatenate(parts, axis=0)
    pad = np.zeros((fill_rows,) + joined.shape[1:], joined.dtype)
    return np.concatenate([joined, pad], axis=0)[:rows]


def pack_graphs(
    graphs: Sequence[Graph | dict], *, max_nodes: int, max_edges: int, max_graphs: int
) -> GraphBatch:
    """Concatenate `graphs` and pad to the budgets (one `GraphBatch`, the same shapes always).

    Arguments:
        graphs: one or more `Graph`s (or dicts of their fields) with the same feature
            sizes and the same optional fields.
        max_nodes: static node budget; at least the graphs' nodes + 1 (the padding graph
            owns at least one node).
        max_edges: static edge budget; at least the graphs' edges.
        max_graphs: static graph budget; at least len(graphs) + 1 (the padding graph).

    Raises:
        ValueError: no graphs, inconsistent fields, an edge out of range, or a budget too
            small (the message gives what the graphs need).
    """
    graphs = [_as_graph(g, i) for i, g in enumerate(graphs)]
    if not graphs:
        raise ValueError("no graphs to pack")
    first = graphs[0]
    for i, g in enumerate(graphs):
        same = (
            g.h.shape[1] == first.h.shape[1]
            and g.x.shape[1] == first.x.shape[1]
            and (g.v is None) == (first.v is None)
            and (g.edge_attr is None) == (first.edge_attr is None)
            and (g.edge_attr is None or g.edge_attr.shape[1] == first.edge_attr.shape[1])
        )
        if not same:
            raise ValueError(f"graph {i} has other feature sizes or fields than graph 0")
    nodes = np.array([g.h.shape[0] for g in graphs])
    edges = np.array([g.senders.shape[0] for g in graphs])
    need = {
        "max_nodes": int(nodes.sum()) + 1,
        "max_edges": int(edges.sum()),
        "max_graphs": len(graphs) + 1,
    }
    have = {"max_nodes": max_nodes, "max_edges": max_edges, "max_graphs": max_graphs}
    short = {k: (have[k], need[k]) for k in need if have[k] < need[k]}
    if short:
        detail = ", ".join(f"{k}={got} < {want}" for k, (got, want) in short.items())
        raise ValueError(f"{len(graphs)} graphs do not fit the budgets: {detail}")

    real_nodes, real_edges, real_graphs = int(nodes.sum()), int(edges.sum()), len(graphs)
    offsets = np.concatenate([[0], np.cumsum(nodes)[:-1]])
    pad_node = real_nodes  # the padding graph's first node receives every padding edge
    senders = np.full(max_edges, pad_node, np.int32)
    receivers = np.full(max_edges, pad_node, np.int32)
    shifted = list(zip(graphs, offsets, strict=True))
    senders[:real_edges] = np.concatenate([g.senders + o for g, o in shifted])
    receivers[:real_edges] = np.concatenate([g.receivers + o for g, o in shifted])
    fill_n, fill_e = max_nodes - real_nodes, max_edges - real_edges

    def nodes_field(name):
        if getattr(first, name) is None:
            return None
        return jnp.asarray(_stack([getattr(g, name) for g in graphs], max_nodes, fill_n))

    node_graph = np.full(max_nodes, real_graphs, np.int32)
    node_graph[:real_nodes] = np.repeat(np.arange(real_graphs), nodes)
    nodes_per_graph = np.zeros(max_graphs, np.int32)
    nodes_per_graph[:real_graphs], nodes_per_graph[real_graphs] = nodes, fill_n
    edges_per_graph = np.zeros(max_graphs, np.int32)
    edges_per_graph[:real_graphs], edges_per_graph[real_graphs] = edges, fill_e
    edge_attr = None
    if first.edge_attr is not None:
        edge_attr = jnp.asarray(_stack([g.edge_attr for g in graphs], max_edges, fill_e))
    return GraphBatch(
        h=nodes_field("h"),
        x=nodes_field("x"),
        v=nodes_field("v"),
        edge_attr=edge_attr,
        senders=jnp.asarray(senders),
        receivers=jnp.asarray(receivers),
        edge_mask=jnp.asarray(np.arange(max_edges) < real_edges),
        node_mask=jnp.asarray(np.arange(max_nodes) < real_nodes),
        node_graph=jnp.asarray(node_graph),
        graph_mask=jnp.asarray(np.arange(max_graphs) < real_graphs),
        nodes_per_graph=jnp.asarray(nodes_per_graph),
        edges_per_graph=jnp.asarray(edges_per_graph),
    )


def packed_batches(
    graphs: Iterable[Graph | dict], *, max_nodes: int, max_edges: int, max_graphs: int
) -> Iterator[GraphBatch]:
    """Consecutive `graphs` packed greedily into `GraphBatch`es of the given budgets.

    A batch is closed when the next graph would not fit; shuffle the data set first for
    random batches. Every batch has the same shapes, so a jitted step compiles once.

    Raises:
        ValueError: a single graph does not fit the budgets.
    """
    pending: list[Graph] = []
    n_nodes = n_edges = 0
    for i, g in enumerate(graphs):
        g = _as_graph(g, i)
        n, e = g.h.shape[0], g.senders.shape[0]
        if n + 1 > max_nodes or e > max_edges or max_graphs < 2:
            raise ValueError(
                f"graph {i} ({n} nodes, {e} edges) does not fit the budgets "
                f"max_nodes={max_nodes} (needs {n + 1}), max_edges={max_edges}, "
                f"max_graphs={max_graphs} (needs 2)"
            )
        fits = (
            n_nodes + n + 1 <= max_nodes
            and n_edges + e <= max_edges
            and len(pending) + 2 <= max_graphs
        )
        if not fits:
            yield pack_graphs(
                pending, max_nodes=max_nodes, max_edges=max_edges, max_graphs=max_graphs
            )
            pending, n_nodes, n_edges = [], 0, 0
        pending.append(g)
        n_nodes, n_edges = n_nodes + n, n_edges + e
    if pending:
        yield pack_graphs(pending, max_nodes=max_nodes, max_edges=max_edges, max_graphs=max_graphs)
