"""Pure featurisation of particle systems into the batch dict every model consumes.

A *batch* is a dict of arrays with a leading sample axis B (the training loop indexes it):

    x0        [B, M, d]     positions at the input time
    v0        [B, M, d]     velocities at the input time
    node_feat [B, M, F]     invariant node features: |v0| (and the masses when they vary)
    edge_attr [B, M, M, A]  invariant edge attributes: |x0_i - x0_j| (A = 1; 0 on the diagonal)
    target    [B, M, d]     positions to predict (only when a target is given)

`featurise` is a pure `jax.numpy` function: it works on a single system (no B axis) as well
as on a batch, under `jit`/`vmap`, and it commutes with rotations, reflections, translations
(x0 only) and node permutations of its inputs, which is what the equivariance checks rely on.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = ["featurise", "masses_vary", "node_feature_names"]


def masses_vary(masses) -> bool:
    """Whether the masses differ anywhere (decides if they become node features)."""
    masses = np.asarray(masses)
    return bool(masses.size) and bool(np.ptp(masses) > 0)


def node_feature_names(include_masses: bool) -> list[str]:
    """Names of the `node_feat` columns `featurise` builds."""
    return ["|v0|", "mass"] if include_masses else ["|v0|"]


def featurise(x0, v0, masses=None, *, include_masses: bool = False, target=None) -> dict:
    """Build the model inputs from positions, velocities and masses (pure).

    Arguments:
        x0: `[..., M, d]` positions.
        v0: `[..., M, d]` velocities.
        masses: `[..., M]` masses; required when `include_masses`.
        include_masses: append the masses as a second node feature (use it when the masses
            vary across the data set; see `masses_vary`).
        target: optional `[..., M, d]` positions to predict, stored under `"target"`.

    Returns:
        The batch dict described in the module docstring (float32 arrays).
    """
    x0 = jnp.asarray(x0, jnp.float32)
    v0 = jnp.asarray(v0, jnp.float32)
    if x0.ndim < 2 or x0.shape != v0.shape:
        raise ValueError(f"x0 and v0 must share a shape [..., M, d], got {x0.shape} and {v0.shape}")
    speed = jnp.sqrt(jnp.sum(v0 * v0, axis=-1, keepdims=True))
    if include_masses:
        if masses is None:
            raise ValueError("include_masses=True needs masses")
        masses = jnp.asarray(masses, jnp.float32)
        if masses.shape != x0.shape[:-1]:
            raise ValueError(f"masses must have shape {x0.shape[:-1]}, got {masses.shape}")
        node_feat = jnp.concatenate([speed, masses[..., None]], axis=-1)
    else:
        node_feat = speed
    diff = x0[..., :, None, :] - x0[..., None, :, :]
    edge_attr = jnp.sqrt(jnp.sum(diff * diff, axis=-1, keepdims=True))
    batch = {"x0": x0, "v0": v0, "node_feat": node_feat, "edge_attr": edge_attr}
    if target is not None:
        target = jnp.asarray(target, jnp.float32)
        if target.shape != x0.shape:
            raise ValueError(f"target must have the shape of x0 {x0.shape}, got {target.shape}")
        batch["target"] = target
    return batch
