"""Random graphs and parameters shared by the core tests."""

import jax
import jax.numpy as jnp

import egnn_jax


def random_graph(key, num_nodes=5, n=3, features=2, attr=2, dtype=jnp.float32):
    """h [M, F], x [M, n], v [M, n], dense edge_attr [M, M, A] (symmetric, like distances)."""
    kh, kx, kv, ka = jax.random.split(key, 4)
    h = jax.random.normal(kh, (num_nodes, features), dtype)
    x = jax.random.normal(kx, (num_nodes, n), dtype)
    v = jax.random.normal(kv, (num_nodes, n), dtype)
    a = jax.random.normal(ka, (num_nodes, num_nodes, attr), dtype) if attr else None
    if a is not None:
        a = a + jnp.swapaxes(a, 0, 1)
    return h, x, v, a


def scaled_params(key, config, h, x, gain=1000.0, **graph):
    """Parameters whose phi_x last layer is scaled up from its tiny (gain 0.001) init.

    With the reference init the coordinate update is ~1e-3 of x, which would let an
    equivariance test pass for a layer that ignored the update altogether.
    """
    params = egnn_jax.init(key, config, h, x, **graph)

    def scale(path, p):
        names = [getattr(k, "key", None) for k in path]
        return p * gain if "coord_out" in names else p

    return jax.tree_util.tree_map_with_path(scale, params)
