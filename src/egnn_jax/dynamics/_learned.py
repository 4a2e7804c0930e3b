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
complete graph; batch with `jax.vmap`. `config` is an `egnn_jax.EGNNConfig`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from egnn_jax._api import apply, init
from egnn_jax._config import EGNNConfig

from ._rollout import State, _check_state

__all__ = [
    "force_field",
    "force_field_init",
    "potential_acceleration",
    "potential_energy",
    "potential_init",
    "step",
    "step_init",
]


def _velocity_arg(config: EGNNConfig, state: State):
    return state.v if config.velocity else None


# --------------------------------------------------------------------------------------
# Step model
# --------------------------------------------------------------------------------------


def _head_config(config: EGNNConfig) -> EGNNConfig:
    return EGNNConfig(hidden_features=config.hidden_features, num_layers=1, velocity=True)


def step_init(key, config: EGNNConfig, state: State) -> dict:
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
    trunk = init(k_trunk, config, state.h, state.x, v=state.v)
    h_out, _ = apply(trunk, config, state.h, state.x, v=state.v)
    head = init(k_head, _head_config(config), h_out, state.x, v=state.v)
    return {"trunk": trunk, "head": head}


def step(params: dict, config: EGNNConfig, state: State) -> State:
    """One saved interval ahead: ``x' = EGNN-vel(h, x, v)``, ``v' = v + head(h_L, x, v) - x``.

    Arguments:
        params: from `step_init`.
        config: the trunk's `EGNNConfig`.
        state: the current `State`.

    Returns:
        The next `State` (``h`` unchanged).
    """
    h_out, x_next = apply(params["trunk"], config, state.h, state.x, v=state.v)
    _, x_head = apply(params["head"], _head_config(config), h_out, state.x, v=state.v)
    return State(x_next, state.v + (x_head - state.x), state.h)


# --------------------------------------------------------------------------------------
# Force field
# --------------------------------------------------------------------------------------


def force_field_init(key, config: EGNNConfig, state: State) -> dict:
    """Parameters of an EGNN force field (``config.velocity``: does it read velocities)."""
    _check_state(state)
    return init(key, config, state.h, state.x, v=_velocity_arg(config, state))


def force_field(params: dict, config: EGNNConfig, state: State) -> jax.Array:
    """The acceleration ``[M, n]``: the EGNN's total coordinate shift ``x_out - x``.

    Rotation- and reflection-equivariant, translation-invariant, permutation-equivariant.
    """
    _, x_out = apply(params, config, state.h, state.x, v=_velocity_arg(config, state))
    return x_out - state.x


# --------------------------------------------------------------------------------------
# Potential
# --------------------------------------------------------------------------------------


def _potential_config(config: EGNNConfig) -> EGNNConfig:
    return dataclasses.replace(config, velocity=False, out_features=1)


def potential_init(key, config: EGNNConfig, state: State) -> dict:
    """Parameters of a learned potential: an EGNN (positions only) with a 1-wide read-out.

    `config`'s `velocity` and `out_features` are ignored (the potential depends on the
    positions only, and reads out one number per node).
    """
    _check_state(state)
    return init(key, _potential_config(config), state.h, state.x)


def potential_energy(params: dict, config: EGNNConfig, state: State) -> jax.Array:
    """U(x) = sum over nodes of the EGNN's read-out: an E(n)-invariant scalar."""
    h_out, _ = apply(params, _potential_config(config), state.h, state.x)
    return jnp.sum(h_out)


def potential_acceleration(
    params: dict, config: EGNNConfig, state: State, masses: jax.Array | None = None
) -> jax.Array:
    """``-dU/dx_i / m_i`` ``[M, n]`` (unit masses when `masses` is None)."""
    force = -jax.grad(lambda x: potential_energy(params, config, state._replace(x=x)))(state.x)
    if masses is None:
        return force
    return force / masses[:, None]
