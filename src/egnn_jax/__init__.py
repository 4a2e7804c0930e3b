"""E(n)-equivariant graph neural networks in JAX."""
