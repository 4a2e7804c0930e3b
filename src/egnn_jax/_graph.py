"""Message-passing backends: a dense complete graph with a node mask, and a sparse edge list.

Both expose the same operations, so the EGCL and HEGNN layers are written once:

- `pair(at_receiver, at_sender)`: combine a per-node quantity of i and one of j on every edge;
- `pair_product(at_receiver, at_sender)`: their elementwise product a_i * b_j on every edge;
- `diff(x)`: x_i - x_j on every edge;
- `aggregate(per_edge)`: sum over the incoming edges of every node i;
- `inv_degree(dtype)`: 1 / (number of neighbours of i), 0 for isolated nodes.

- `edge_view(edge_attr)`: the user's edge attributes in the backend's edge layout;
- `aggregate_messages(message_fn, at_receiver, at_sender, x, edge_attr, weights=)`: the node
  sums of a per-edge function `message_fn(weights, at_receiver_i + at_sender_j, x_i - x_j,
  a_ij)`; a sparse graph can run it over chunks of edges, recomputed in the backward pass
  (`chunk_size`), and on each device's own edges (`edge_sharding`).

Edge arrays are `[M, M - 1, ...]` (receiver i, its k-th neighbour) for `DenseGraph` and `[E, ...]`
for `SparseGraph`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ._neighbours import minimum_image
from ._typing import EdgeHidden, EdgeVectors, NodeHidden, Positions


class DenseGraph(NamedTuple):
    """A complete graph over the real nodes of one padded graph, without self-edges.

    Edges are laid out as a neighbour list `[M, M - 1, ...]`: row i holds the edges j -> i for
    every j != i in increasing order. Compared with all `[M, M]` pairs this drops the M
    self-pairs (20% of the edge work at M = 5) and makes aggregation a plain sum over axis 1.

    Fields:
        node_mask: `[M]` bool, True for real nodes.
        box: `[n]` or scalar side lengths of a periodic cell (relative vectors are minimum
            images), or None.
    """

    node_mask: jax.Array
    box: jax.Array | None = None

    @property
    def _neighbour_index(self) -> np.ndarray:
        """`[M, M - 1]` int, static: the k-th neighbour of node i is k + 1 if k >= i, else k."""
        m = self.node_mask.shape[0]
        k = np.arange(m - 1)[None, :]
        return k + (k >= np.arange(m)[:, None])

    def _neighbour_rows(self, a: jax.Array) -> jax.Array:
        """`[M, ...]` -> `[M, M - 1, ...]`: row i lists a_j for every j != i."""
        return a[self._neighbour_index]

    @property
    def edge_mask(self) -> jax.Array:
        """`[M, M - 1]` bool: both ends real."""
        return self.node_mask[:, None] & self._neighbour_rows(self.node_mask)

    def edge_view(self, edge_attr: jax.Array) -> jax.Array:
        """`[M, M, A]` attributes (entry [i, j] for the edge j -> i) -> `[M, M - 1, A]`."""
        return jnp.take_along_axis(edge_attr, self._neighbour_index[:, :, None], axis=1)

    def pair(self, at_receiver: NodeHidden, at_sender: NodeHidden) -> EdgeHidden:
        return at_receiver[:, None, :] + self._neighbour_rows(at_sender)

    def pair_product(self, at_receiver: NodeHidden, at_sender: NodeHidden) -> EdgeHidden:
        return at_receiver[:, None, :] * self._neighbour_rows(at_sender)

    def diff(self, x: Positions) -> EdgeVectors:
        return minimum_image(x[:, None, :] - self._neighbour_rows(x), self.box)

    def aggregate(self, per_edge: jax.Array) -> jax.Array:
        # Masking here (not earlier) lets every edge computation stay a plain broadcast.
        mask = self.edge_mask.astype(per_edge.dtype)
        return jnp.sum(per_edge * mask[..., None], axis=1)

    def inv_degree(self, dtype) -> jax.Array:
        # A real node's neighbours are the other real nodes: O(M), not a sum over [M, M - 1].
        # (With a constant mask, XLA constant-folds that sum, which took seconds a compile.)
        real = self.node_mask.astype(dtype)  # counts of ones: exact below 2^24 nodes
        return _safe_inverse((jnp.sum(real) - real) * real)

    def aggregate_messages(
        self, message_fn, at_receiver, at_sender, x, edge_attr=None, chunk_size=None, weights=None
    ) -> tuple[jax.Array, ...]:
        if chunk_size is not None:
            raise ValueError(
                "chunk_size splits an edge list (senders/receivers); a dense graph has none "
                "(batch dense graphs with vmap instead)"
            )
        per_edge = message_fn(weights, self.pair(at_receiver, at_sender), self.diff(x), edge_attr)
        return tuple(self.aggregate(p) for p in per_edge)


class SparseGraph(NamedTuple):
    """A directed edge list over N nodes (a disjoint union of graphs, padding graphs included).

    Messages flow from `senders[e]` (node j) to `receivers[e]` (node i). Padding edges must
    connect padding nodes, as in jraph, so that they never reach real nodes, or be masked.

    Fields:
        senders: `[E]` int node indices.
        receivers: `[E]` int node indices.
        num_nodes: N, static (from a shape, never from data).
        edge_mask: `[E]` bool, False for edges that carry nothing (e.g. a radius graph's
            filler edges), or None (every edge is real).
        box: `[n]` or scalar side lengths of a periodic cell, or None.
        edge_sharding: None, or the `NamedSharding(mesh, PartitionSpec(axis))` the edge
            arrays are split with (`egnn_jax.shard_edges`), static: `aggregate_messages` then
            runs on each device's own edges and sums the nodes' partial sums once (below).
    """

    senders: jax.Array
    receivers: jax.Array
    num_nodes: int
    edge_mask: jax.Array | None = None
    box: jax.Array | None = None
    edge_sharding: NamedSharding | None = None

    def edge_view(self, edge_attr: jax.Array) -> jax.Array:
        return edge_attr

    def pair(self, at_receiver: NodeHidden, at_sender: NodeHidden) -> EdgeHidden:
        return at_receiver[self.receivers] + at_sender[self.senders]

    def pair_product(self, at_receiver: NodeHidden, at_sender: NodeHidden) -> EdgeHidden:
        return at_receiver[self.receivers] * at_sender[self.senders]

    def diff(self, x: Positions) -> EdgeVectors:
        return minimum_image(x[self.receivers] - x[self.senders], self.box)

    def aggregate(self, per_edge: jax.Array) -> jax.Array:
        return jax.ops.segment_sum(per_edge, self._targets(), num_segments=self.num_nodes)

    def _targets(self, receivers=None, keep=None) -> jax.Array:
        """The node each edge is summed into: its receiver, or N (out of range) if masked.

        The scatter drops out-of-range indices and its transpose reads them as zero, so a
        masked edge costs no pass over its messages to zero them.
        """
        if receivers is None:
            receivers, keep = self.receivers, self.edge_mask
        if keep is None:
            return receivers
        return jnp.where(keep, receivers, self.num_nodes)

    def inv_degree(self, dtype) -> jax.Array:
        if self.edge_mask is None:
            ones = jnp.ones(self.receivers.shape, dtype=dtype)
        else:
            ones = self.edge_mask.astype(dtype)
        return _safe_inverse(jax.ops.segment_sum(ones, self.receivers, num_segments=self.num_nodes))

    def aggregate_messages(
        self, message_fn, at_receiver, at_sender, x, edge_attr=None, chunk_size=None, weights=None
    ) -> tuple[jax.Array, ...]:
        """Node sums of `message_fn(weights, at_receiver_i + at_sender_j, x_i - x_j, a_ij)`.

        Arguments:
            message_fn: `(weights, pair [e, H], diff [e, n], edge_attr [e, A] or None)` -> a
                tuple of per-edge arrays `[e, ...]`, for any number e of edges. A pure
                function of its arguments: what it reads from its closure must be static
                (with `edge_sharding` it runs inside a `shard_map`).
            at_receiver, at_sender: `[N, H]` per-node terms paired on every edge.
            x: `[N, n]` positions (relative vectors are minimum images in a periodic box).
            edge_attr: `[E, A]` or None.
            weights: a pytree of arrays passed to `message_fn` (the layer's parameters).
            chunk_size: None: one pass over all edges. An int: the edges in chunks of about
                that many (a `lax.scan`), each chunk `jax.checkpoint`ed, so the backward pass
                recomputes its messages instead of storing them. The per-edge activations
                then never exist for all E edges at once, which saves their memory and, on a
                CPU, the time to write and re-read them; the price is one more forward pass
                over the edges. Same sums up to float rounding (another summation order).
                With `edge_sharding`, each device chunks its own edges.

        Returns:
            One `[N, ...]` sum over the incoming edges of every node per output of
            `message_fn`; masked edges contribute nothing.
        """
        if self.edge_sharding is not None:
            return self._messages_per_device(
                message_fn, weights, at_receiver, at_sender, x, edge_attr, chunk_size
            )
        num_edges = self.senders.shape[0]
        if chunk_size is None or chunk_size >= num_edges:
            pair, diff = self.pair(at_receiver, at_sender), self.diff(x)
            return tuple(self.aggregate(p) for p in message_fn(weights, pair, diff, edge_attr))
        return self._chunked_messages(
            message_fn, weights, at_receiver, at_sender, x, edge_attr, chunk_size
        )

    def _messages_per_device(
        self, message_fn, weights, at_receiver, at_sender, x, edge_attr, chunk_size
    ):
        """`aggregate_messages` with the edges split over a mesh axis, nodes replicated.

        Left to XLA's partitioner, a chunked scan over sharded edges gathers every chunk onto
        every device (each device then computes all edges), and even with chunks that span
        the devices it all-reduces the node sums after every chunk, forward and backward.
        Written per device instead (`jax.shard_map`), each device runs the scan over its own
        edges into its own partial sums, and one `psum` per call (and its transpose in the
        backward pass) reduces them, whatever the number of chunks.
        """
        sharding = self.edge_sharding
        axis = sharding.spec[0]  # one mesh axis, as the public entry points check
        keep = self.edge_mask
        if keep is None:
            keep = jnp.ones(self.senders.shape, bool)
        split, whole = PartitionSpec(axis), PartitionSpec()
        # Everything the per-device function reads is an argument: a value closed over from
        # outside the shard_map would keep the outer mesh's sharding in its backward pass.
        replicated = (weights, at_receiver, at_sender, x, self.box)
        edges = (self.senders, self.receivers, keep, edge_attr)

        def per_device(replicated, edges):
            # Cast to per-device values once, here: left to jnp, the cast would happen in
            # every chunk, and its transpose (a psum of the cotangents) with it.
            replicated = jax.tree.map(lambda a: _per_device(a, axis), replicated)
            weights, at_receiver, at_sender, x, box = replicated
            senders, receivers, keep, edge_attr = edges
            graph = SparseGraph(senders, receivers, self.num_nodes, keep, box)
            if chunk_size is None or chunk_size >= senders.shape[0]:
                partial = graph.aggregate_messages(
                    message_fn, at_receiver, at_sender, x, edge_attr, weights=weights
                )
            else:
                partial = graph._chunked_messages(
                    message_fn, weights, at_receiver, at_sender, x, edge_attr, chunk_size, axis
                )
            return tuple(jax.lax.psum(p, axis) for p in partial)

        return jax.shard_map(
            per_device, mesh=sharding.mesh, in_specs=(whole, split), out_specs=whole
        )(replicated, edges)

    def _chunked_messages(
        self,
        message_fn,
        weights,
        at_receiver,
        at_sender,
        x,
        edge_attr,
        chunk_size,
        varying_axis=None,
    ):
        """`aggregate_messages` over chunks; `varying_axis`: the mesh axis of the enclosing
        `shard_map` over edges, whose per-device partial sums the scan carries."""
        num_edges = self.senders.shape[0]
        # Balanced chunks: the padding is under one edge per chunk, not up to a whole chunk.
        num_chunks = -(-num_edges // chunk_size)
        size = -(-num_edges // num_chunks)
        pad = num_chunks * size - num_edges

        def chunks(a, fill):  # [E, ...] -> [num_chunks, size, ...], padding edges appended
            filler = jnp.full((pad,) + a.shape[1:], fill, a.dtype)
            a = jnp.concatenate([a, filler])
            return a.reshape((num_chunks, size) + a.shape[1:])

        keep = self.edge_mask
        if keep is None and pad:
            keep = jnp.ones(num_edges, bool)
        # Padding edges are the self-loop 0 -> 0, masked: every index stays in bounds.
        edges = (
            chunks(self.senders, 0),
            chunks(self.receivers, 0),
            None if keep is None else chunks(keep, False),
            None if edge_attr is None else chunks(edge_attr, 0),
        )

        def one_chunk(senders, receivers, attr):
            pair = at_receiver[receivers] + at_sender[senders]
            diff = minimum_image(x[receivers] - x[senders], self.box)
            return message_fn(weights, pair, diff, attr)

        example = (edges[0][0], edges[1][0], None if edge_attr is None else edges[3][0])
        shapes = jax.eval_shape(one_chunk, *example)
        sums = tuple(jnp.zeros((self.num_nodes,) + p.shape[1:], p.dtype) for p in shapes)
        if varying_axis is not None:
            sums = tuple(_per_device(s, varying_axis) for s in sums)

        @jax.checkpoint
        def step(sums, chunk):
            senders, receivers, keep, attr = chunk
            per_edge = one_chunk(senders, receivers, attr)
            targets = self._targets(receivers, keep)
            return tuple(
                total + jax.ops.segment_sum(p, targets, num_segments=self.num_nodes)
                for total, p in zip(sums, per_edge, strict=True)
            ), None

        sums, _ = jax.lax.scan(step, sums, edges)
        return sums


def _per_device(a: jax.Array, axis: str) -> jax.Array:
    """Inside a `shard_map`: `a` (the same on every device) typed as varying over `axis`."""
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(a, (axis,), to="varying")
    return jax.lax.pvary(a, (axis,))  # older jax: 0.8.1, the floor, has only pvary


def _safe_inverse(degree: jax.Array) -> jax.Array:
    """1/degree, and 0 for isolated (or padding) nodes instead of inf."""
    one = jnp.ones((), degree.dtype)
    return jnp.where(degree > 0, one / jnp.maximum(degree, one), jnp.zeros((), degree.dtype))


def complete_graph_edges(num_nodes: int) -> tuple[jax.Array, jax.Array]:
    """Edge list of the complete directed graph on `num_nodes` nodes without self-edges.

    Returns:
        `(senders, receivers)`, each `[num_nodes * (num_nodes - 1)]` int32, ordered by receiver.
    """
    # NumPy: the list depends on the static size only, and an eager jnp.nonzero would
    # compile a program for every size.
    receivers, senders = np.nonzero(~np.eye(num_nodes, dtype=bool))
    return jnp.asarray(senders, jnp.int32), jnp.asarray(receivers, jnp.int32)


def dense_to_sparse_edge_attr(edge_attr: jax.Array) -> jax.Array:
    """`[M, M, A]` dense edge attributes -> `[M (M - 1), A]` in `complete_graph_edges` order."""
    num_nodes = edge_attr.shape[0]
    senders, receivers = complete_graph_edges(num_nodes)
    return edge_attr[receivers, senders]
