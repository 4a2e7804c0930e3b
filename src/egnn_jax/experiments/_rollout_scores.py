"""What the experiments that roll learned simulators out share: compiled rollouts, the
errors of a rollout against the truth, the ``--evaluate`` file checks and JSON, and number
formatting for their tables."""

from __future__ import annotations

import functools
import logging
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from egnn_jax.dynamics import State

from ._experiment import EvaluationFileError
from ._models import ModelSpec
from ._rollout_models import diverged_from

__all__ = [
    "RolloutErrors",
    "check_trajectory_file",
    "curves_output",
    "format_score",
    "roll_out",
    "roller",
]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=32)
def roller(spec: ModelSpec, num_steps: int):
    """``(params, State [B, ...]) -> (xs, vs) [B, T, M, n]``, jitted and vmapped over systems."""
    return jax.jit(jax.vmap(lambda p, s: spec.trajectory(p, s, num_steps), in_axes=(None, 0)))


class RolloutErrors(NamedTuple):
    """A batch's rollouts from their first states, compared with the truth.

    Attributes:
        xs, vs: the predicted positions and velocities ``[B, T, M, n]`` (vs may be None), with
            the true states in place of a diverged system's from the step it diverged.
        start: the step each system diverged at ``[B]`` (T: never).
        gone: whether a system had diverged by each step ``[B, T]``.
        per_system: position MSE per system and step ``[B, T]``, Infinity once diverged.
    """

    xs: jax.Array
    vs: jax.Array | None
    start: jax.Array
    gone: jax.Array
    per_system: jax.Array


def roll_out(spec: ModelSpec, params, batch: dict, dt: float) -> RolloutErrors:
    """Roll every system of ``batch`` (``x``, ``v`` ``[B, T, M, n]``, ``h``) out from its first
    state; a diverged system is logged, and its states replaced by the true ones before any
    arithmetic (so no NaN is ever made, not even under jax_debug_nans)."""
    xs_true, vs_true = batch["x"], batch["v"]
    num_steps = xs_true.shape[1] - 1
    xs, vs = roller(spec, num_steps)(params, State(xs_true[:, 0], vs_true[:, 0], batch["h"]))
    start = diverged_from(xs, vs)
    gone = jnp.arange(num_steps + 1)[None, :] >= start[:, None]
    if jnp.any(start <= num_steps):
        first = int(jnp.min(start))
        logger.warning(
            "%s diverged in %d of %d systems, first at step %d (t = %.4g)",
            spec.name,
            int(jnp.sum(start <= num_steps)),
            len(start),
            first,
            first * dt,
        )
    safe = lambda pred, true: jnp.where(gone[:, :, None, None], true, pred)
    xs = safe(xs, xs_true)
    vs = None if vs is None else safe(vs, vs_true)
    per_system = jnp.where(gone, jnp.inf, jnp.mean((xs - xs_true) ** 2, axis=(2, 3)))
    return RolloutErrors(xs, vs, start, gone, per_system)


def check_trajectory_file(x, v, t, node, node_key: str, dt: float) -> str | None:
    """What is wrong with an ``--evaluate`` file's trajectories, or None."""
    if x.ndim != 4 or v.shape != x.shape:
        return f"x and v must be [N, T, M, dim], got {x.shape} and {v.shape}"
    if t.shape != x.shape[1:2] or x.shape[1] < 2:
        return f"t must be [T] with T = {x.shape[1]} >= 2, got {t.shape}"
    if not np.allclose(np.diff(t), dt, rtol=1e-5, atol=0):
        return (
            f"the saved-time spacing must be the training one, {dt:.6g}; "
            f"got {np.diff(t).min():.6g} to {np.diff(t).max():.6g}"
        )
    if node.shape not in ((x.shape[0], x.shape[2]), (x.shape[2],)):
        return f"{node_key} must be [N, M] or [M], got {node.shape}"
    if not all(np.all(np.isfinite(a)) for a in (x, v, t, node)):
        return "the file has NaN or infinite entries"
    return None


def raise_if(problem: str | None, path) -> None:
    if problem:
        raise EvaluationFileError(f"{path}: {problem}")


def curves_output(scores: dict, batch: dict) -> dict:
    """The ``--evaluate`` JSON: ``{"t": [...], "models": {name: {"mse": [...],
    "energy_rel_err": [...] or null}}}``."""
    return {
        "t": np.asarray(batch["t"]).tolist(),
        "models": {
            name: {"mse": s["mse_curve"], "energy_rel_err": s["energy_curve"]}
            for name, s in scores.items()
        },
    }


def format_score(value, pct: bool = False) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "diverged"
    return f"{100 * value:.2g}%" if pct else f"{value:.3g}"
