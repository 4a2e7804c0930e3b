"""egnn-jax: E(n)-equivariant graph neural networks (Satorras et al., ICML 2021) in JAX/Flax.

The public API:

    config = egnn_jax.EGNNConfig(hidden_features=64, num_layers=4, velocity=True)
    params = egnn_jax.init(key, config, h, x, v=v, edge_attr=a)
    h_out, x_out = egnn_jax.apply(params, config, h, x, v=v, edge_attr=a, node_mask=mask)

HEGNN (Cen et al., NeurIPS 2024; EGNN with steerable features of degree 0 ... L) has the same
entry points in its own namespace:

    config = egnn_jax.HEGNNConfig(hidden_features=64, num_layers=4, max_degree=3)
    params = egnn_jax.hegnn.init(key, config, h, x, v=v, edge_attr=a)
    h_out, x_out = egnn_jax.hegnn.apply(params, config, h, x, v=v, edge_attr=a)

EGHN (Han et al., NeurIPS 2022; learned clusters between two EGNNs) likewise, with the local
graph its pooling runs on:

    config = egnn_jax.EGHNConfig(hidden_features=64, num_clusters=3)
    params = egnn_jax.eghn.init(key, config, h, x, v, edge_attr=a, local_adjacency=adj)
    out = egnn_jax.eghn.apply(params, config, h, x, v, edge_attr=a, local_adjacency=adj)

FastEGNN (Zhang et al., ICML 2024; C virtual nodes beside a reduced graph) likewise:

    config = egnn_jax.FastEGNNConfig(hidden_features=64, virtual_channels=3)
    edges = egnn_jax.shortest_edges(x, 0.5)
    out = egnn_jax.fastegnn.apply(params, config, h, x, v=v, senders=edges.senders,
                                  receivers=edges.receivers, edge_mask=edges.edge_mask)
    out.x, out.virtual_x   # + egnn_jax.fastegnn.mmd_loss(key, out.x, out.virtual_x)

Large or periodic systems: `egnn_jax.radius_graph(x, cutoff, capacity=E, box=L)` gives an edge
list for `egnn_jax.apply(..., senders=, receivers=, edge_mask=, box=L)`.

One graph too large for a device: `egnn_jax.shard_edges(mesh, senders, receivers)` splits its
edge list over a `jax.sharding.Mesh` (nodes replicated, node sums all-reduced) for the same
`egnn_jax.apply` (with `edge_chunk_size`, also pass `edge_sharding=edges.edge_sharding`).

Graphs of different sizes (a data set of molecules): `egnn_jax.pack_graphs(graphs,
max_nodes=, max_edges=, max_graphs=)` packs them into one padded edge list of fixed shapes
(`egnn_jax.packed_batches` cuts a data set into such batches).

`egnn_jax.sim` holds the simulators, `egnn_jax.testing` the equivariance checks and
`egnn_jax.experiments` the training pipelines.
"""

from . import eghn as eghn
from . import fastegnn as fastegnn
from . import hegnn as hegnn
from . import testing as testing
from ._api import apply as apply
from ._api import init as init
from ._batching import Graph as Graph
from ._batching import GraphBatch as GraphBatch
from ._batching import pack_graphs as pack_graphs
from ._batching import packed_batches as packed_batches
from ._config import EGHNConfig as EGHNConfig
from ._config import EGNNConfig as EGNNConfig
from ._config import FastEGNNConfig as FastEGNNConfig
from ._config import HEGNNConfig as HEGNNConfig
from ._edge_sharding import ShardedEdges as ShardedEdges
from ._edge_sharding import shard_edges as shard_edges
from ._egcl import EGCL as EGCL
from ._egcl import EGNN as EGNN
from ._graph import DenseGraph as DenseGraph
from ._graph import SparseGraph as SparseGraph
from ._graph import complete_graph_edges as complete_graph_edges
from ._graph import dense_to_sparse_edge_attr as dense_to_sparse_edge_attr
from ._neighbours import RadiusGraph as RadiusGraph
from ._neighbours import minimum_image as minimum_image
from ._neighbours import radius_graph as radius_graph
from ._neighbours import shortest_edges as shortest_edges

__version__ = "0.1.0"
