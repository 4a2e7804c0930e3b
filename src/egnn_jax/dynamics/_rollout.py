"""A system's state and stepping it forward: `State`, `rollout`, `first_nonfinite`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["State", "first_nonfinite", "rollout"]


class State(NamedTuple):
    """The state of one system (batch it with `jax.vmap`).

    Fields:
        x: `[M, n]` positions.
        v: `[M, n]` velocities.
        h: `[M, F]` invariant node features (masses, charges, ...); carried unchanged.
    """

    x: jax.Array
    v: jax.Array
    h: jax.Array


def _check_state(state: State) -> None:
    x, v, h = state
    if jnp.ndim(x) != 2 or jnp.shape(v) != jnp.shape(x):
        raise ValueError(
            f"state.x and state.v must be [M, n], got {jnp.shape(x)} and {jnp.shape(v)}"
        )
    if jnp.ndim(h) != 2 or jnp.shape(h)[0] != jnp.shape(x)[0]:
        raise ValueError(f"state.h must be [M, F] with M = {jnp.shape(x)[0]}, got {jnp.shape(h)}")


def rollout(
    step_fn: Callable[[Any, State], State],
    params: Any,
    state0: State,
    num_steps: int,
    *,
    checkpoint: bool = False,
) -> State:
    """Apply a learned step `num_steps` times (``jax.lax.scan``); pure.

    Works under `jax.jit`, `jax.vmap` (over systems) and `jax.grad` (training through the
    whole unrolled trajectory).

    Arguments:
        step_fn: ``step_fn(params, state) -> state`` (one saved interval ahead).
        params: its parameters.
        state0: the initial `State` (`x`, `v` `[M, n]`, `h` `[M, F]`).
        num_steps: number of steps (static).
        checkpoint: rematerialise each step in the backward pass (`jax.checkpoint`), so that
            training through hundreds of steps stores one state per step instead of every
            intermediate activation.

    Returns:
        The trajectory as a `State` whose fields have a leading time axis of length
        ``num_steps + 1`` (entry 0 is `state0`).
    """
    _check_state(state0)
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}")
    step = jax.checkpoint(step_fn) if checkpoint else step_fn

    def body(state, _):
        new = step(params, state)
        return new, new

    _, states = jax.lax.scan(body, state0, None, length=num_steps)
    return jax.tree.map(lambda first, rest: jnp.concatenate([first[None], rest]), state0, states)


def first_nonfinite(trajectory: jax.Array) -> jax.Array:
    """Index of the first time step with a NaN or infinite entry, or -1 if none.

    Arguments:
        trajectory: `[T, ...]`, one system (``jax.vmap(first_nonfinite)`` for a batch).

    Returns:
        int32 scalar.
    """
    bad = ~jnp.all(jnp.isfinite(trajectory.reshape(trajectory.shape[0], -1)), axis=1)
    return jnp.where(jnp.any(bad), jnp.argmax(bad), -1).astype(jnp.int32)
