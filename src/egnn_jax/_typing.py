"""Shape aliases used across egnn-jax (checked with jaxtyping + beartype in the test suite).

Dimension names:
    M  nodes of one dense graph (real and padding)
    N  nodes of a sparse graph (a disjoint union of graphs)
    E  edges of a sparse graph
    F  node-feature width
    A  edge-attribute width
    n  spatial dimension
"""

from jaxtyping import Array, Bool, Float, Int

DenseNodeFeatures = Float[Array, "M F"]
DensePositions = Float[Array, "M n"]
DenseEdgeAttr = Float[Array, "M M A"]
NodeMask = Bool[Array, " M"]

SparseNodeFeatures = Float[Array, "N F"]
SparsePositions = Float[Array, "N n"]
SparseEdgeAttr = Float[Array, "E A"]
EdgeIndex = Int[Array, " E"]

__all__ = [
    "DenseEdgeAttr",
    "DenseNodeFeatures",
    "DensePositions",
    "EdgeIndex",
    "NodeMask",
    "SparseEdgeAttr",
    "SparseNodeFeatures",
    "SparsePositions",
]
