"""Shape aliases used across egnn-jax; the test suite checks them with jaxtyping + beartype.

Dimension names: `nodes` (M for a dense graph, N for a sparse one), `features` (F), `edges`
(the edge layout: `M M-1` dense, `E` sparse), `attr` (A), `dim` (the spatial dimension n),
`hidden` (the MLP width H).
"""

from jaxtyping import Array, Bool, Float, Int

NodeFeatures = Float[Array, "nodes features"]
Positions = Float[Array, "nodes dim"]
EdgeAttr = Float[Array, "*edges attr"]
NodeMask = Bool[Array, " nodes"]
EdgeIndex = Int[Array, " edges"]
NodeHidden = Float[Array, "nodes hidden"]
EdgeHidden = Float[Array, "*edges hidden"]
EdgeVectors = Float[Array, "*edges dim"]
EdgeScalars = Float[Array, "*edges"]

__all__ = [
    "EdgeAttr",
    "EdgeHidden",
    "EdgeIndex",
    "EdgeScalars",
    "EdgeVectors",
    "NodeFeatures",
    "NodeHidden",
    "NodeMask",
    "Positions",
]
