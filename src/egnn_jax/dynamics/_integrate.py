"""Integrating a second-order vector field ``x'' = a(x, v)`` with a Diffrax solver."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import jax
import jax.numpy as jnp

from egnn_jax.sim._yoshida import Leapfrog

from ._rollout import State, _check_state

__all__ = ["integrate"]


def integrate(
    acceleration: Callable[[Any, State], jax.Array],
    params: Any,
    state0: State,
    dt: float,
    num_steps: int,
    *,
    solver: diffrax.AbstractSolver | None = None,
    substeps: int = 1,
    adjoint: diffrax.AbstractAdjoint | None = None,
) -> State:
    """Integrate ``x' = v, v' = acceleration(params, state)`` and save every `dt`; pure.

    Differentiable through the solve (Diffrax's adjoints; the default recursive
    checkpointing keeps the memory of a long trajectory small) and batched with `jax.vmap`.

    Arguments:
        acceleration: ``acceleration(params, state) -> [M, n]``, e.g. `force_field` or
            `potential_acceleration` with their config bound.
        params: its parameters (passed to the solver as ``args``, so every adjoint sees them).
        state0: the initial `State`; ``state0.h`` is carried unchanged.
        dt: time between saved states.
        num_steps: saved intervals (static).
        solver: a Diffrax solver for the state ``(x, v)`` with the vector field ``(v, a)``:
            the symplectic `egnn_jax.sim.Leapfrog` (default, one force evaluation per step)
            or `egnn_jax.sim.Yoshida6`, or any general solver (``diffrax.Tsit5()``, ...).
        substeps: solver steps per saved interval (constant step ``dt / substeps``).
        adjoint: a Diffrax adjoint (default ``diffrax.RecursiveCheckpointAdjoint()``).

    Returns:
        The trajectory as a `State` with a leading time axis of ``num_steps + 1`` entries
        (entry 0 is `state0`).
    """
    _check_state(state0)
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"substeps must be an int >= 1, got {substeps!r}")
    x0, v0, h = state0
    dtype = x0.dtype

    def vector_field(t, y, args):
        x, v = y
        return v, acceleration(args, State(x, v, h))

    n = num_steps * substeps
    dt = jnp.asarray(dt, dtype)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        Leapfrog() if solver is None else solver,
        jnp.zeros((), dtype),
        dt * num_steps,
        dt / substeps,
        (x0, v0),
        args=params,
        # The step grid contains the save grid: save the steps themselves (no interpolation).
        saveat=diffrax.SaveAt(t0=True, steps=True),
        stepsize_controller=diffrax.ConstantStepSize(),
        max_steps=n,
        adjoint=diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
    )
    xs, vs = (y[: n + 1 : substeps] for y in sol.ys)
    return State(xs, vs, jnp.broadcast_to(h, (num_steps + 1, *h.shape)))
