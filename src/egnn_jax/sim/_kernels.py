"""Arithmetic the simulators share, written to give the same bits on every CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["inverse_sqrt"]


def inverse_sqrt(x: jax.Array) -> jax.Array:
    """1 / sqrt(x), correctly rounded (IEEE sqrt, then IEEE division) on every CPU.

    XLA rewrites ``1 / sqrt(x)`` into ``rsqrt(x)``, which on AVX-512 CPUs is lowered to an
    approximation refined by Newton steps whose last bits differ from the AVX2 result. The
    simulators are chaotic: those bits grow into visibly different trajectories, so a dataset
    generated on one machine could not be regenerated on another. The optimisation barrier
    keeps the two correctly rounded operations apart.
    """
    return 1.0 / jax.lax.optimization_barrier(jnp.sqrt(x))
