"""A contact-aware step model for hard bodies in a box, as a pure ``init`` / ``apply`` pair.

Walls at fixed positions break translation and rotation symmetry: an E(n)-equivariant
network that sees only the bodies cannot represent a wall bounce. What remains is the box's
own group (the reflections and axis permutations of a cube centred at the origin), and a
model is exactly equivariant to it if it sees the walls through **mirror images**: each body
reflected across each of the ``2·dim`` walls, with its velocity reflected too. A body touches
a wall exactly when it touches its own image there, and an elastic bounce off the wall is an
elastic collision with the image; so one learned pairwise contact rule handles both kinds.

The step: every body ``i`` meets its partners ``k`` (the other bodies and its own images).
Per pair, the invariants that make contact learnable, in the body radius's units:

* the gap ``g = ‖x_i − x_k‖ − 2r`` and the relative speed ``‖v_i − v_k‖``;
* free flight's time of impact ``τ`` (the smaller root of ``‖Δx + τ Δv‖ = 2r``, as the
  simulator computes it): whether it falls within the step, and the fraction of the step
  left after it, ``f = 1 − τ/dt`` (0 without a contact);
* the approach speed ``u = (v_i − v_k)·n`` along the normal ``n`` at that contact (the
  current normal ``Δx/‖Δx‖`` when there is none);
* the masses (node features) and whether the partner is an image.

An MLP maps them to four coefficients ``a, b, c, d`` and the update is

    v_i' = v_i + Σ_k (a u) n + b (v_i − v_k),
    x_i' = x_i + dt v_i + Σ_k (c u dt) n + (d dt) (v_i − v_k),

the form of an impulse along the contact normal and of the position it changes after the
contact; ``a`` and ``c`` act only on pairs whose contact falls within the step (an impulse
is what a contact is), ``b`` and ``d`` on every pair. The exact elastic collision is in this
family (``a = −2m_k / (m_i + m_k)`` where the contact falls within the step, ``c = a f``,
``b = d = 0``; exact for one contact per step); the model has to learn it from the data. The
output layer starts at zero: an untrained model is free flight.
Equivariant to the box group and to permutations of the bodies (tested); not to rotations
or translations, which do not map the box onto itself.

``project=True`` adds a non-penetration projection after the step: bodies are clipped into
the box and overlapping pairs pushed apart along their normal, one pass over the pairs (both
equivariant to the box group). A body pushed out of one overlap into a third body can keep a
rare overlap (6 in a million predicted frames of the collisions experiment).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from egnn_jax._config import EGNNConfig

from ._rollout import State, _check_state

__all__ = ["contact_step", "contact_step_init", "mirror_images"]


def mirror_images(x: jax.Array, v: jax.Array, box) -> tuple[jax.Array, jax.Array]:
    """Each body's reflections across the ``2·dim`` walls of ``[−box, box]^dim``.

    Arguments:
        x, v: positions and velocities ``[M, dim]``.
        box: the half-width ``L`` (scalar).

    Returns:
        ``(x_images, v_images)``, each ``[M, 2·dim, dim]``; image ``2d + s`` is the reflection
        across the wall ``x_d = −L`` (``s = 0``) or ``x_d = +L`` (``s = 1``).
    """
    dim = x.shape[-1]
    xs, vs = [], []
    for d in range(dim):
        for wall in (-box, box):
            xs.append(x.at[:, d].set(2 * wall - x[:, d]))
            vs.append(v.at[:, d].set(-v[:, d]))
    return jnp.stack(xs, axis=1), jnp.stack(vs, axis=1)


class _ContactMLP(nn.Module):
    hidden: int
    depth: int

    @nn.compact
    def __call__(self, features):
        h = features
        for _ in range(self.depth):
            h = nn.silu(nn.Dense(self.hidden)(h))
        # Zero output: the untrained model flies freely, the right answer away from contact.
        return nn.Dense(4, kernel_init=nn.initializers.zeros)(h)


def _mlp(config: EGNNConfig) -> _ContactMLP:
    return _ContactMLP(config.hidden_features, config.num_layers)


def _partners(state: State, box):
    """Every body's partners: the other bodies, then its own mirror images.

    Returns ``x_p, v_p [M, K, dim]``, ``h_p [M, K, F]`` and ``is_image [M, K]`` with
    ``K = M − 1 + 2·dim``.
    """
    m = state.x.shape[0]
    others = np.array([[j for j in range(m) if j != i] for i in range(m)], dtype=np.int32)
    others = others.reshape(m, m - 1)
    xi, vi = mirror_images(state.x, state.v, box)
    n_img = xi.shape[1]
    x_p = jnp.concatenate([state.x[others], xi], axis=1)
    v_p = jnp.concatenate([state.v[others], vi], axis=1)
    h_img = jnp.broadcast_to(state.h[:, None], (m, n_img, state.h.shape[-1]))
    h_p = jnp.concatenate([state.h[others], h_img], axis=1)
    is_image = np.concatenate([np.zeros((m, m - 1)), np.ones((m, n_img))], axis=1)
    return x_p, v_p, h_p, jnp.asarray(is_image, state.x.dtype)


def _pair_geometry(state: State, radius, box, dt):
    """Per (body, partner): the invariant features ``[M, K, F']``, the normal at the contact
    that free flight predicts within the step (the current normal if none) ``[M, K, dim]``,
    the relative velocity ``[M, K, dim]`` and the approach speed along that normal
    ``[M, K]``."""
    x_p, v_p, h_p, is_image = _partners(state, box)
    rel = state.x[:, None] - x_p  # [M, K, dim]
    rel_v = state.v[:, None] - v_p
    d2 = jnp.sum(rel * rel, axis=-1)
    gap = jnp.sqrt(d2) - 2 * radius
    # Free flight's time of impact: the smaller root of ‖rel + τ rel_v‖ = 2r (as the
    # simulator computes it), kept when it falls within this step.
    a = jnp.sum(rel_v * rel_v, axis=-1)
    b = jnp.sum(rel * rel_v, axis=-1)
    disc = b * b - a * (d2 - (2 * radius) ** 2)
    closing = (b < 0) & (disc > 0)
    # Safe denominators in the branch `where` discards: its gradient would still be NaN.
    root = -b + jnp.sqrt(jnp.where(closing, disc, 1.0))
    impact = (d2 - (2 * radius) ** 2) / jnp.where(closing, root, 1.0)
    impact = jnp.where(closing, jnp.maximum(impact, 0.0), jnp.inf)
    hits = impact < dt
    tau = jnp.where(hits, impact, 0.0)
    at_contact = rel + tau[..., None] * rel_v
    normal = at_contact / jnp.sqrt(jnp.sum(at_contact * at_contact, axis=-1, keepdims=True))
    approach = jnp.sum(rel_v * normal, axis=-1)
    # The fraction of the step left after the contact (0: no contact within the step): the
    # exact bounce is linear in it and in its indicator.
    after = jnp.where(hits, 1.0 - tau / dt, 0.0)
    speed = jnp.sqrt(a + 1e-12)
    h_i = jnp.broadcast_to(state.h[:, None], h_p.shape)
    features = jnp.concatenate(
        [
            jnp.stack(
                [
                    gap / radius,
                    approach * dt / radius,
                    speed * dt / radius,
                    after,
                    hits.astype(gap.dtype),
                    is_image,
                ],
                axis=-1,
            ),
            h_i,
            h_p,
        ],
        axis=-1,
    )
    return features, normal, rel_v, approach


def contact_step_init(key, config: EGNNConfig, state: State, *, radius, box, dt) -> dict:
    """Parameters of `contact_step` (``config``: ``hidden_features`` and ``num_layers`` of the
    contact MLP).

    Arguments:
        key: a `jax.random` key.
        config: an `EGNNConfig`; its width and depth size the MLP.
        state: an example `State` (shapes only): ``x, v [M, dim]``, ``h [M, F]``.
        radius, box, dt: the bodies' radius, the box half-width and the step.
    """
    _check_state(state)
    features, *_ = _pair_geometry(state, radius, box, dt)
    return _mlp(config).init(key, features)


def _project(x: jax.Array, radius, box) -> jax.Array:
    """Clip into the box, then push overlapping pairs apart along their normal (one pass)."""
    x = jnp.clip(x, -(box - radius), box - radius)
    m = x.shape[0]
    for i in range(m):
        for j in range(i + 1, m):
            rel = x[i] - x[j]
            dist = jnp.sqrt(jnp.sum(rel * rel))
            push = 0.5 * jnp.maximum(2 * radius - dist, 0.0) * rel / dist
            x = x.at[i].add(push).at[j].add(-push)
    return jnp.clip(x, -(box - radius), box - radius)


def contact_step(
    params: dict, config: EGNNConfig, state: State, *, radius, box, dt, project: bool = False
) -> State:
    """One saved interval ``dt`` ahead for bodies of radius ``radius`` in ``[−box, box]^dim``.

    Arguments:
        params: from `contact_step_init`.
        config: the same `EGNNConfig`.
        state: the current `State` (one system; batch with `jax.vmap`).
        radius, box, dt: as in `contact_step_init`.
        project: apply the non-penetration projection after the step.

    Returns:
        The next `State` (``h`` unchanged).
    """
    features, normal, rel_v, approach = _pair_geometry(state, radius, box, dt)
    coef = _mlp(config).apply(params, features)  # [M, K, 4]
    # The normal impulse and its position change act only at a contact within the step.
    hits = features[..., 4:5]
    a, b, c, d = (coef[..., k : k + 1] for k in range(4))
    a, c = hits * a, hits * c
    u = approach[..., None]
    dv = jnp.sum(a * u * normal + b * rel_v, axis=1)
    dx = jnp.sum(c * u * dt * normal + d * dt * rel_v, axis=1)
    x = state.x + dt * state.v + dx
    if project:
        x = _project(x, radius, box)
    return State(x, state.v + dv, state.h)
