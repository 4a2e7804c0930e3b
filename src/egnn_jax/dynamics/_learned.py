"""Learned dynamics from the EGNN, as pure ``init`` / ``apply`` pairs like `egnn_jax.init`.

Three families, each E(n)-equivariant:

* **step model** (`step_init`, `step`): the next saved state from the current one, directly
  (EGNN-vel for the positions, one more velocity-variant layer for the velocity change);
* **force field** (`force_field_init`, `force_field`): an acceleration ``a(x, v)`` to
  integrate with a solver (`integrate`); the EGNN's coordinate shift is the acceleration;
* **potential** (`potential_init`, `potential_energy`, `potential_acceleration`): a learned
  invariant potential energy U(x), forces ``-dU/dx`` by `jax.grad`; integrated by a
  symplectic solver, the energy ``K + U`` is conserved by construction up to the solver.

Every function takes one system as a `State` (`x`, `v` `[M, n]`, `h` `[M, F]`) and a dense
complete graph; batch with `jax.vmap`. `config` is an `egnn_jax.EGNNConfig`. `edge_fn`, if
given, maps the positions `[M, n]` to invariant edge attributes `[M, M, A]` (e.g.
`inverse_distance_features`), recomputed at every evaluation: inside a potential they are
differentiated too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from egnn_jax._api import apply, init
from egnn_jax._config import EGNNConfig

from ._rollout import State, _check_state

__all__ = [
    "distance_feature",
    "force_field",
    "force_field_init",
    "inverse_distance_features",
    "potential_acceleration",
    "potential_energy",
    "potential_init",
    "step",
    "step_init",
]


EdgeFn = Callable[[jax.Array], jax.Array]


def _velocity_arg(config: EGNNConfig, state: State):
    return state.v if config.velocity else None


def _edges(edge_fn: EdgeFn | None, x: jax.Array):
    return None if edge_fn is None else edge_fn(x)


def _pairwise_d2(x: jax.Array) -> jax.Array:
    diff = x[:, None, :] - x[None, :, :]
    return jnp.sum(diff * diff, axis=-1)


def distance_feature(x: jax.Array) -> jax.Array:
    """``|x_i - x_j|`` as a one-wide edge attribute ``[M, M, 1]`` (0 on the diagonal, with a
    zero gradient there)."""
    d2 = _pairwise_d2(x)
    positive = d2 > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0)[..., None]


def inverse_distance_features(scales: tuple[float, ...]) -> EdgeFn:
    """An `edge_fn`: ``1 / sqrt(|x_i - x_j|^2 + s^2)`` for each scale s, ``[M, M, len]``.

    Smooth and bounded at every separation, ~1/r far away: a basis in which force laws that
    span orders of magnitude over the distances in the data are easy to combine.
    """
    # NumPy, not jnp: building an edge_fn at import time must not start a JAX backend
    # (`jax.distributed.initialize` has to come first in a multi-host run).
    s2 = np.asarray(scales, np.float32) ** 2

    def edge_fn(x):
        return jax.lax.rsqrt(
            _pairwise_d2(x)[..., None] + jnp.asarray(s2, x.dtype).reshape(1, 1, -1)
        )

    return edge_fn


# --------------------------------------------------------------------------------------
# Step model
# --------------------------------------------------------------------------------------


def _head_config(config: EGNNConfig) -> EGNNConfig:
    return EGNNConfig(hidden_features=config.hidden_features, num_layers=1, velocity=True)


def step_init(key, config: EGNNConfig, state: State, edge_fn: EdgeFn | None = None) -> dict:
    """Parameters of the step model: ``{"trunk": EGNN-vel, "head": one velocity layer}``.

    Arguments:
        key: a `jax.random` key.
        config: the trunk's `EGNNConfig`; it must have ``velocity=True`` and no
            ``out_features`` (the head reads the trunk's hidden features).
        state: an example `State` (shapes only).
    """
    _check_state(state)
    if not config.velocity or config.out_features is not None:
        raise ValueError("the step model's trunk needs velocity=True and out_features=None")
    k_trunk, k_head = jax.random.split(key)
    a = _edges(edge_fn, state.x)
    trunk = init(k_trunk, config, state.h, state.x, v=state.v, edge_attr=a)
    # The head's init needs only the trunk's output shape: no forward pass to compile.
    h_out, _ = jax.eval_shape(
        lambda p: apply(p, config, state.h, state.x, v=state.v, edge_attr=a), trunk
    )
    h_out = jnp.zeros(h_out.shape, h_out.dtype)
    head = init(k_head, _head_config(config), h_out, state.x, v=state.v, edge_attr=a)
    return {"trunk": trunk, "head": head}


def step(params: dict, config: EGNNConfig, state: State, edge_fn: EdgeFn | None = None) -> State:
    """One saved interval ahead: ``x' = EGNN-vel(h, x, v)``, ``v' = v + head(h_L, x, v) - x``.

    Arguments:
        params: from `step_init`.
        config: the trunk's `EGNNConfig`.
        state: the current `State`.

    Returns:
        The next `State` (``h`` unchanged).
    """
    a = _edges(edge_fn, state.x)
    h_out, x_next = apply(params["trunk"], config, state.h, state.x, v=state.v, edge_attr=a)
    head_config = _head_config(config)
    _, x_head = apply(params["head"], head_config, h_out, state.x, v=state.v, edge_attr=a)
    return State(x_next, state.v + (x_head - state.x), state.h)


# --------------------------------------------------------------------------------------
# Force field
# --------------------------------------------------------------------------------------


def force_field_init(key, config: EGNNConfig, state: State, edge_fn: EdgeFn | None = None) -> dict:
    """Parameters of an EGNN force field (``config.velocity``: does it read velocities)."""
    _check_state(state)
    v, a = _velocity_arg(config, state), _edges(edge_fn, state.x)
    return init(key, config, state.h, state.x, v=v, edge_attr=a)


def force_field(
    params: dict, config: EGNNConfig, state: State, edge_fn: EdgeFn | None = None
) -> jax.Array:
    """The acceleration ``[M, n]``: the EGNN's total coordinate shift ``x_out - x``.

    Rotation- and reflection-equivariant, translation-invariant, permutation-equivariant.
    """
    v, a = _velocity_arg(config, state), _edges(edge_fn, state.x)
    _, x_out = apply(params, config, state.h, state.x, v=v, edge_attr=a)
    return x_out - state.x


# --------------------------------------------------------------------------------------
# Potential
# --------------------------------------------------------------------------------------


def _potential_config(config: EGNNConfig) -> EGNNConfig:
    return dataclasses.replace(config, velocity=False, out_features=1)


def potential_init(key, config: EGNNConfig, state: State, edge_fn: EdgeFn | None = None) -> dict:
    """Parameters of a learned potential: an EGNN (positions only) with a 1-wide read-out.

    `config`'s `velocity` and `out_features` are ignored (the potential depends on the
    positions only, and reads out one number per node).
    """
    _check_state(state)
    a = _edges(edge_fn, state.x)
    return init(key, _potential_config(config), state.h, state.x, edge_attr=a)


def potential_energy(
    params: dict, config: EGNNConfig, state: State, edge_fn: EdgeFn | None = None
) -> jax.Array:
    """U(x) = sum over nodes of the EGNN's read-out: an E(n)-invariant scalar."""
    a = _edges(edge_fn, state.x)
    h_out, _ = apply(params, _potential_config(config), state.h, state.x, edge_attr=a)
    return jnp.sum(h_out)


def potential_acceleration(
    params: dict,
    config: EGNNConfig,
    state: State,
    masses: jax.Array | None = None,
    edge_fn: EdgeFn | None = None,
) -> jax.Array:
    """``-dU/dx_i / m_i`` ``[M, n]`` (unit masses when `masses` is None)."""

    def energy(x):
        return potential_energy(params, config, state._replace(x=x), edge_fn)

    force = -jax.grad(energy)(state.x)
    if masses is None:
        return force
    return force / masses[:, None]
