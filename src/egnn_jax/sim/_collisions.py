"""Hard spheres in a box: elastic body–body and body–wall collisions at their exact times.

Between contacts a body flies straight (billiards, ``forces="none"``) or feels softened
gravity (``forces="gravity"``, the three-body data's force). Contacts are not found by
penetration-and-push but by asking when the next one happens:

* billiards: event-driven flight. The next contact of every pair (the smaller root of
  ``‖Δx + Δv τ‖ = 2r``) and every wall (``x + v τ = ±(L − r)``) is computed, the system flies
  to the earliest, reflects the velocities there and repeats; frames are read off the free
  flight between contacts. Exact up to round-off.
* gravity: Yoshida's fourth-order composition of kick–drift–kick leapfrog steps, each step cut
  at the first time a body's parabola ``x + τ v + τ² a / 2`` touches another or a wall (a
  root found by bracketed Newton iterations), so contacts are resolved inside the step and
  every piece remains a leapfrog step.

Layout ``[M, dim, *batch]`` (the batch last, as in ``_three_body.py``): the pair and wall loops
are unrolled over the few bodies and vectorised over the batch. The number of contacts per
trajectory (billiards) or per step (gravity) is bounded by a static ``max_events`` so every
loop is a fixed-length ``lax.scan`` that jits and vmaps; a trajectory that needs more is
re-simulated with a larger budget, and counted.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from ._dataset import Dataset, make_metadata
from ._three_body import gravity_acceleration, gravity_energy

__all__ = [
    "CollisionsConfig",
    "collisions_trajectory",
    "sample_collisions_initial_conditions",
    "simulate_collisions",
]

FORCES = ("none", "gravity")

# Yoshida's fourth-order composition of leapfrog steps (the "triple jump"): weights w1, w0, w1
# with 2 w1 + w0 = 1 and 2 w1³ + w0³ = 0.
_W1 = 1 / (2 - 2 ** (1 / 3))
_TRIPLE_JUMP = (_W1, 1 - 2 * _W1, _W1)


@dataclasses.dataclass(frozen=True)
class CollisionsConfig:
    """Configuration of a hard-sphere collisions dataset (defaults: 3 discs in 2-D, billiards).

    ``n_bodies`` spheres (discs in 2-D) of radius ``radius`` and mass ``mass`` in the box
    ``[−box, box]^dim``, perfectly elastic collisions with each other and with the walls.

    Initial conditions: centres uniform in ``[−(box − radius), box − radius]^dim`` drawn again
    until no two spheres overlap (at most ``placement_tries`` draws, then the trajectory is
    redrawn); velocity components ``N(0, speed_std²)``.

    Horizon: ``n_saved`` frames at ``t = linspace(0, t_end, n_saved)``. The defaults (radius
    0.1, box 1, speeds ~1, ``t_end = 5``) give a billiard trajectory 2.9 body–body and 14 wall
    contacts on average (median 3 and 14), and a body moves ~1 % of the box width per saved
    step. Only body–body contacts amplify small errors (curved surfaces defocus; a flat wall
    does not), so their number sets how far ahead the motion stays predictable.

    Forces between collisions: ``"none"`` (billiards, exact up to round-off) or ``"gravity"``
    (softened gravity ``G m_i m_j / sqrt(r² + softening²)``; fourth-order leapfrog composition
    with ``substeps`` steps per saved interval, cut at every contact).

    Accuracy: the relative energy error ``max_t |E(t) − E(0)| / (K(0) + |U(0)|)`` (relative to
    the energy scale, since E can be ≈ 0 when gravity nearly binds the bodies) must stay below
    ``energy_tol`` (gravity) or 1e-8 (billiards).

    ``max_events``: contacts allowed per trajectory (billiards); ``max_events_per_step``:
    contacts allowed per leapfrog piece (gravity). A trajectory that needs more, or exceeds the
    energy tolerance, is re-simulated once with ``refine_factor`` times the contact budget (and,
    with gravity, finer steps), then redrawn; both are counted in the metadata
    (``n_refined``, ``n_redrawn``).

    ``G`` and ``softening`` are stored in the metadata under those names; with
    ``forces="none"`` the metadata's ``G`` is 0.
    """

    n_trajectories: int = 10_000
    n_bodies: int = 3
    dim: int = 2
    radius: float = 0.1
    box: float = 1.0
    mass: float = 1.0
    speed_std: float = 1.0
    forces: str = "none"
    G: float = 1.0
    softening: float = 0.1
    t_end: float = 5.0
    n_saved: int = 500
    substeps: int = 16
    max_events: int = 128
    max_events_per_step: int = 2
    energy_tol: float = 1e-5
    refine_factor: int = 4
    placement_tries: int = 64
    max_redraws: int = 20
    chunk_size: int = 2_000
    seed: int = 0

    def __post_init__(self):
        if self.n_trajectories <= 0:
            raise ValueError(f"n_trajectories must be > 0; got {self.n_trajectories}")
        if self.n_bodies < 1:
            raise ValueError(f"n_bodies must be >= 1; got {self.n_bodies}")
        if self.dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3; got {self.dim}")
        if self.forces not in FORCES:
            raise ValueError(f"forces must be one of {FORCES}; got {self.forces!r}")
        for name in ("radius", "box", "mass", "speed_std", "t_end"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)}")
        if self.radius >= self.box:
            raise ValueError(f"radius ({self.radius}) must be smaller than box ({self.box})")
        packing = self.n_bodies * (2 * self.radius) ** self.dim / (2 * self.box) ** self.dim
        if packing > 0.5:
            raise ValueError(
                f"{self.n_bodies} bodies of radius {self.radius} fill {packing:.0%} of the box; "
                "random placement needs a looser packing (at most 50%)"
            )
        if self.n_saved < 2:
            raise ValueError(f"n_saved must be >= 2; got {self.n_saved}")
        for name in (
            "substeps",
            "max_events",
            "max_events_per_step",
            "refine_factor",
            "placement_tries",
            "max_redraws",
            "chunk_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)}")
        if self.G < 0 or self.softening < 0:
            raise ValueError("G and softening must be >= 0")

    @property
    def ts(self) -> np.ndarray:
        return np.linspace(0.0, self.t_end, self.n_saved)

    @property
    def event_budget(self) -> int:
        """Contacts one flight may resolve: per trajectory (billiards) or per leapfrog drift."""
        return self.max_events if self.forces == "none" else self.max_events_per_step

    @property
    def effective_G(self) -> float:
        """The gravitational constant the dynamics use: 0 for billiards."""
        return self.G if self.forces == "gravity" else 0.0


# ----------------------------------------------------------------------------------------------
# Events: when the next contact happens, and what it does
# ----------------------------------------------------------------------------------------------


def _pairs(n: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(n), 2))


def _contact_times(x, v, radius, box):
    """Time until each pair and each wall is next touched in free flight, ``[P + M·dim, *b]``.

    Rows: the ``P`` pairs in `_pairs` order, then body ``i``'s wall along axis ``d`` (the one
    it moves towards) at row ``P + i·dim + d``. ``inf`` where no contact lies ahead.
    """
    inf = jnp.asarray(jnp.inf, x.dtype)
    rows = []
    for i, j in _pairs(x.shape[0]):
        dx, dv = x[i] - x[j], v[i] - v[j]
        a = jnp.sum(dv * dv, axis=0)
        b = jnp.sum(dx * dv, axis=0)
        c = jnp.sum(dx * dx, axis=0) - (2 * radius) ** 2
        disc = b * b - a * c
        approaching = (b < 0) & (disc > 0)
        # The smaller root (−b − √disc)/a written as c/(−b + √disc): no cancellation when the
        # bodies graze, and exactly 0 when they already touch.
        root = c / (-b + jnp.sqrt(jnp.where(approaching, disc, 1.0)))
        rows.append(jnp.where(approaching, jnp.maximum(root, 0.0), inf))
    limit = box - radius
    wall = jnp.where(
        v > 0, (limit - x) / jnp.where(v > 0, v, 1.0), (-limit - x) / jnp.where(v < 0, v, -1.0)
    )
    wall = jnp.where(v == 0, inf, jnp.maximum(wall, 0.0))  # [M, dim, *b]
    rows.extend(wall.reshape((-1,) + wall.shape[2:]))
    return jnp.stack(rows)


def _collide(x, v, masses, radius, box, event, happens):
    """Apply contact ``event`` (a row of `_contact_times`, ``[*b]``) where ``happens``.

    Only approaching velocities are reflected, so a contact found a hair early or late can
    never send the bodies into each other or through a wall.
    """
    n = x.shape[0]
    pairs = _pairs(n)
    for p, (i, j) in enumerate(pairs):
        on = happens & (event == p)
        dx, dv = x[i] - x[j], v[i] - v[j]
        normal = dx / jnp.sqrt(jnp.sum(dx * dx, axis=0, keepdims=True))
        # Elastic: the normal components of the velocities are exchanged in the centre-of-
        # mass frame; momentum and kinetic energy are conserved exactly.
        u = jnp.minimum(jnp.sum(dv * normal, axis=0), 0.0) * 2 / (masses[i] + masses[j])
        impulse = jnp.where(on, u, 0.0)[None] * normal
        v = v.at[i].add(-masses[j][None] * impulse).at[j].add(masses[i][None] * impulse)
    wall = (event - len(pairs)).reshape((1, 1) + event.shape)
    slots = np.arange(n * x.shape[1]).reshape(x.shape[:2] + (1,) * event.ndim)
    hit = happens[None, None] & (wall == slots)
    side = jnp.where(x >= 0, 1.0, -1.0)
    # Snap the body onto the wall it touches so round-off cannot carry it through.
    x = jnp.where(hit, side * (box - radius), x)
    v = jnp.where(hit, -side * jnp.abs(v), v)
    return x, v


def _constraints(x, v, a, tau, radius, box):
    """Contact constraints along the parabolas ``x + τ v + τ² a / 2``, one ``τ`` per row.

    Arguments:
        x, v, a: positions, velocities, accelerations ``[M, dim, *b]``.
        tau: ``[C, *b]``, rows as in `_contact_times` (pairs, then body-axis walls).

    Returns:
        ``(c, dc/dτ)``, each ``[C, *b]``; ``c ≥ 0`` while apart: ``‖Δx‖² − (2r)²`` for a pair,
        ``(L − r) − |x|`` for a wall.
    """
    n, dim = x.shape[:2]
    pairs = _pairs(n)
    vals, slopes = [], []
    for p, (i, j) in enumerate(pairs):
        t = tau[p][None]
        d = (x[i] - x[j]) + t * (v[i] - v[j]) + 0.5 * t * t * (a[i] - a[j])
        dd = (v[i] - v[j]) + t * (a[i] - a[j])
        vals.append(jnp.sum(d * d, axis=0) - (2 * radius) ** 2)
        slopes.append(2 * jnp.sum(d * dd, axis=0))
    t = tau[len(pairs) :].reshape(x.shape)
    pos, vel = x + t * v + 0.5 * t * t * a, v + t * a
    vals.extend(((box - radius) - jnp.abs(pos)).reshape((n * dim,) + x.shape[2:]))
    slopes.extend((-jnp.sign(pos) * vel).reshape((n * dim,) + x.shape[2:]))
    return jnp.stack(vals), jnp.stack(slopes)


def _first_contacts(x, v, a, horizon, radius, box, newton_steps=8):
    """When each constraint first closes within ``horizon`` along the parabolas, ``[C, *b]``
    (``inf`` where it stays open).

    A sign change is looked for at ``horizon / 2`` and ``horizon``, then the crossing is
    found by Newton's method kept inside the bracket by bisection. The returned time is the
    bracket's open side, so the bodies touch without overlapping.
    """
    n_rows = len(_pairs(x.shape[0])) + x.shape[0] * x.shape[1]
    zeros = jnp.zeros((n_rows,) + x.shape[2:], x.dtype)
    end = jnp.broadcast_to(horizon, zeros.shape)
    c_start = jnp.maximum(_constraints(x, v, a, zeros, radius, box)[0], 0.0)
    c_mid = _constraints(x, v, a, end / 2, radius, box)[0]
    c_end = _constraints(x, v, a, end, radius, box)[0]
    hi = jnp.where(c_mid < 0, end / 2, end)
    c_hi = jnp.where(c_mid < 0, c_mid, c_end)
    found = c_hi < 0
    lo = zeros
    tau = jnp.where(found, hi * c_start / (c_start - jnp.where(found, c_hi, -1.0)), hi)

    def refine(carry, _):
        tau, lo, hi = carry
        c, slope = _constraints(x, v, a, tau, radius, box)
        lo = jnp.where(c >= 0, tau, lo)
        hi = jnp.where(c < 0, tau, hi)
        newton = tau - c / jnp.where(slope == 0, 1.0, slope)
        inside = (newton > lo) & (newton < hi) & (slope != 0)
        return (jnp.where(inside, newton, 0.5 * (lo + hi)), lo, hi), None

    def solve(tau, lo, hi):
        (tau, lo, hi), _ = jax.lax.scan(refine, (tau, lo, hi), None, length=newton_steps)
        return jnp.where(_constraints(x, v, a, tau, radius, box)[0] >= 0, tau, lo)

    # Contacts are rare per step: most steps of a whole batch skip the root finding.
    lo = jax.lax.cond(jnp.any(found), solve, lambda tau, lo, hi: lo, tau, lo, hi)
    return jnp.where(found, lo, jnp.inf)


def _gravity_flight(x, v, a, masses, radius, box, horizon, max_events, accel):
    """One leapfrog step of length ``horizon``, cut at every contact.

    Kick–drift–kick moves each body along the parabola ``x + τ v + τ² a / 2``; the step is
    split at the first time a parabola touches (`_first_contacts`), the contact is resolved,
    and the rest of the step is taken from there. Every piece is an ordinary leapfrog step,
    so the scheme stays second order through contacts (flying straight through a contact in
    the drift would leave a first-order energy error per contact).

    Returns ``(x, v, a, n_pair, n_wall, overflow)``.
    """
    n_pairs = len(_pairs(x.shape[0]))
    zeros = jnp.zeros(x.shape[2:], jnp.int32)

    def piece(carry, _):
        x, v, a, left, n_pair, n_wall = carry
        times = _first_contacts(x, v, a, left, radius, box)
        event = jnp.argmin(times, axis=0)
        tau = jnp.min(times, axis=0)
        happens = tau < left
        tau = jnp.where(happens, tau, left)[None, None]
        half = v + 0.5 * tau * a
        x = x + tau * half
        a = accel(x)
        v = half + 0.5 * tau * a
        x, v = _collide(x, v, masses, radius, box, event, happens)
        is_pair = happens & (event < n_pairs)
        return (x, v, a, left - tau[0, 0], n_pair + is_pair, n_wall + (happens & ~is_pair)), None

    left = jnp.broadcast_to(jnp.asarray(horizon, x.dtype), x.shape[2:])
    (x, v, a, left, n_pair, n_wall), _ = jax.lax.scan(
        piece, (x, v, a, left, zeros, zeros), None, length=max_events + 1
    )
    return x, v, a, n_pair, n_wall, left > 0


def _energies(x, v, masses, gravity, G, softening):
    """Kinetic and potential energy ``[*b]`` of ``x, v [M, dim, *b]``."""
    kinetic = 0.5 * jnp.sum(masses[:, None] * v * v, axis=(0, 1))
    if not gravity:
        return kinetic, jnp.zeros_like(kinetic)
    return kinetic, gravity_energy(x, v, masses, G, softening) - kinetic


def _billiards(x0, v0, masses, radius, box, t_end, n_saved, max_events):
    """Event-driven flight over the whole horizon (no forces): only the contacts cost work.

    Collects up to ``max_events`` contacts before ``t_end``, then reads every frame off the
    free flight that follows the last contact before it.
    """
    batch = x0.shape[2:]
    zeros = jnp.zeros(batch, jnp.int32)
    n_pairs = len(_pairs(x0.shape[0]))

    def contact(carry, _):
        x, v, t, n_pair, n_wall = carry
        times = _contact_times(x, v, radius, box)
        event = jnp.argmin(times, axis=0)
        tau = jnp.min(times, axis=0)
        happens = t + tau < t_end
        dt = jnp.where(happens, tau, 0.0)
        x, t = x + v * dt[None, None], t + dt
        x, v = _collide(x, v, masses, radius, box, event, happens)
        is_pair = happens & (event < n_pairs)
        carry = (x, v, t, n_pair + is_pair, n_wall + (happens & ~is_pair))
        return carry, (jnp.where(happens, t, jnp.inf), x, v)

    t0 = jnp.zeros(batch, x0.dtype)
    (x, v, t, n_pair, n_wall), (t_ev, x_ev, v_ev) = jax.lax.scan(
        contact, (x0, v0, t0, zeros, zeros), None, length=max_events
    )
    overflow = t + jnp.min(_contact_times(x, v, radius, box), axis=0) < t_end
    t_ev = jnp.concatenate([t0[None], t_ev])  # [E+1, *b], non-decreasing, inf past the end
    x_ev = jnp.concatenate([x0[None], x_ev])  # [E+1, M, dim, *b]
    v_ev = jnp.concatenate([v0[None], v_ev])
    ts = jnp.linspace(0.0, t_end, n_saved, dtype=x0.dtype)
    # The state at ts[k] flies on from the last contact at or before it: count the contacts
    # by the first frame they precede, then accumulate over frames.
    first_frame = jnp.searchsorted(ts, t_ev, side="left")  # [E+1, *b], n_saved when past
    columns = jnp.indices(first_frame.shape)[1:]
    counts = jnp.zeros((n_saved + 1,) + batch, jnp.int32).at[(first_frame, *columns)].add(1)
    last = jnp.cumsum(counts[:n_saved], axis=0) - 1  # [T, *b]
    pick = last[:, None, None]  # [T, 1, 1, *b]
    xs = jnp.take_along_axis(x_ev, pick, axis=0)
    vs = jnp.take_along_axis(v_ev, pick, axis=0)
    since = ts.reshape((-1, 1, 1) + (1,) * len(batch)) - jnp.take_along_axis(
        t_ev[:, None, None], pick, axis=0
    )
    return xs + vs * since, vs, n_pair, n_wall, overflow


def _integrate(
    x0, v0, masses, radius, box, t_end, G, softening, *, gravity, n_saved, substeps, max_events
):
    """Frames ``x, v [T, M, dim, *b]``, contact counts, overflow flag and energy error ``[*b]``.

    ``max_events``: contacts per trajectory (billiards) or per leapfrog drift (gravity).
    """
    if not gravity:
        xs, vs, n_pair, n_wall, overflow = _billiards(
            x0, v0, masses, radius, box, t_end, n_saved, max_events
        )
    else:
        dt = t_end / (n_saved - 1) / substeps

        def accel(x):
            return gravity_acceleration(x, masses, G, softening)

        def leapfrog(carry, _):
            x, v, a, n_pair, n_wall, overflow = carry
            for weight in _TRIPLE_JUMP:
                # A backward piece is a forward piece of the time-reversed motion: the
                # billiard flow is reversible, so contacts are found and resolved alike.
                sign = 1.0 if weight > 0 else -1.0
                x, v, a, p, w, o = _gravity_flight(
                    x, sign * v, a, masses, radius, box, abs(weight) * dt, max_events, accel
                )
                v = sign * v
                # A contact crossed forward, back and forward again happened once.
                n_pair, n_wall = n_pair + int(sign) * p, n_wall + int(sign) * w
                overflow = overflow | o
            return (x, v, a, n_pair, n_wall, overflow), None

        def frame(carry, _):
            carry = jax.lax.scan(leapfrog, carry, None, length=substeps)[0]
            return carry, carry[:2]

        zeros = jnp.zeros(x0.shape[2:], jnp.int32)
        init = (x0, v0, accel(x0), zeros, zeros, jnp.zeros(x0.shape[2:], bool))
        (_, _, _, n_pair, n_wall, overflow), (xs, vs) = jax.lax.scan(
            frame, init, None, length=n_saved - 1
        )
        xs = jnp.concatenate([x0[None], xs])
        vs = jnp.concatenate([v0[None], vs])
    kinetic, potential = jax.vmap(lambda a, b: _energies(a, b, masses, gravity, G, softening))(
        xs, vs
    )  # [T, *b]
    # Relative to the energy scale K + |U| rather than to E: a system can have E ≈ 0.
    energy = kinetic + potential
    scale = kinetic[0] + jnp.abs(potential[0])
    rel_err = jnp.max(jnp.abs(energy - energy[:1]), axis=0) / scale
    rel_err = jnp.where(jnp.isfinite(rel_err), rel_err, jnp.inf)
    return xs, vs, n_pair, n_wall, overflow, rel_err


# ----------------------------------------------------------------------------------------------
# Public single-trajectory core
# ----------------------------------------------------------------------------------------------


@jax.jit(static_argnames=("n_saved", "substeps", "max_events", "forces"))
def collisions_trajectory(
    x0,
    v0,
    masses,
    radius,
    box,
    t_end,
    *,
    n_saved: int,
    forces: str = CollisionsConfig.forces,
    G: float = CollisionsConfig.G,
    softening: float = CollisionsConfig.softening,
    substeps: int = CollisionsConfig.substeps,
    max_events: int | None = None,
):
    """Simulate one hard-sphere system; pure, ``jit``/``vmap``-able, differentiable between
    contacts (the contact times and reflections are smooth functions of the state as long as
    the order of the contacts does not change).

    Computation happens in the dtype of ``x0`` (use float64 for the dataset's accuracy).

    Arguments:
        x0: initial centres ``[M, dim]``, inside the box and not overlapping.
        v0: initial velocities ``[M, dim]``.
        masses: ``[M]``.
        radius: sphere radius (scalar).
        box: half-width ``L`` of the box ``[−L, L]^dim`` (scalar).
        t_end: time of the last frame; frames at ``linspace(0, t_end, n_saved)``.
        n_saved: number of frames (static).
        forces: ``"none"`` (billiards) or ``"gravity"`` (softened, ``G``, ``softening``).
        substeps: leapfrog steps per saved interval (gravity only).
        max_events: contacts allowed over the trajectory (billiards, default
            ``CollisionsConfig.max_events``) or per leapfrog drift (gravity, default
            ``CollisionsConfig.max_events_per_step``).

    Returns:
        A dict: ``x, v [T, M, dim]``, ``n_pair_contacts``, ``n_wall_contacts`` (ints),
        ``overflow`` (bool: more contacts were due than ``max_events`` allowed; the trajectory
        is then wrong) and ``rel_energy_error`` (max over frames of ``|E(t) − E(0)| / |E(0)|``).
    """
    x0 = jnp.asarray(x0)
    v0 = jnp.asarray(v0, x0.dtype)
    masses = jnp.asarray(masses, x0.dtype)
    if x0.ndim != 2 or x0.shape[1] not in (2, 3) or v0.shape != x0.shape:
        raise ValueError(f"x0, v0 must be [M, dim] with dim in (2, 3); got {x0.shape}, {v0.shape}")
    if masses.shape != x0.shape[:1]:
        raise ValueError(f"masses must be [M]={x0.shape[:1]}; got {masses.shape}")
    if forces not in FORCES:
        raise ValueError(f"forces must be one of {FORCES}; got {forces!r}")
    if max_events is None:
        defaults = CollisionsConfig()
        max_events = defaults.max_events if forces == "none" else defaults.max_events_per_step
    xs, vs, n_pair, n_wall, overflow, err = _integrate(
        x0[..., None],
        v0[..., None],
        masses[:, None],
        jnp.asarray(radius, x0.dtype),
        jnp.asarray(box, x0.dtype),
        t_end,
        G,
        softening,
        gravity=forces == "gravity",
        n_saved=n_saved,
        substeps=substeps,
        max_events=max_events,
    )
    return {
        "x": xs[..., 0],
        "v": vs[..., 0],
        "n_pair_contacts": n_pair[0],
        "n_wall_contacts": n_wall[0],
        "overflow": overflow[0],
        "rel_energy_error": err[0],
    }


def sample_collisions_initial_conditions(key, n_bodies, dim, radius, box, speed_std, tries):
    """Draw non-overlapping centres uniformly in the box and Gaussian velocities.

    Arguments:
        key: a JAX PRNG key.
        n_bodies, dim, tries: static ints; ``tries`` placements are drawn and the first
            without overlap is kept.
        radius, box, speed_std: scalars.

    Returns:
        ``(x0, v0, placed)``: ``[M, dim]`` each, and whether any of the tries had no overlap.
    """
    kx, kv = jax.random.split(key)
    limit = box - radius
    dtype = jnp.result_type(float)
    xs = jax.random.uniform(kx, (tries, n_bodies, dim), dtype, -limit, limit)
    gap = jnp.full((tries,), jnp.inf, dtype)
    for i, j in _pairs(n_bodies):
        gap = jnp.minimum(gap, jnp.linalg.norm(xs[:, i] - xs[:, j], axis=-1) - 2 * radius)
    ok = gap > 0
    x = xs[jnp.argmax(ok)]
    v = speed_std * jax.random.normal(kv, (n_bodies, dim), dtype)
    return x, v, jnp.any(ok)


# ----------------------------------------------------------------------------------------------
# Dataset generation
# ----------------------------------------------------------------------------------------------


@jax.jit(static_argnames=("cfg", "max_events", "substeps"))
def _simulate_keys(keys, cfg: CollisionsConfig, max_events: int, substeps: int):
    x0, v0, placed = jax.vmap(
        lambda k: sample_collisions_initial_conditions(
            k, cfg.n_bodies, cfg.dim, cfg.radius, cfg.box, cfg.speed_std, cfg.placement_tries
        )
    )(keys)
    b = keys.shape[0]
    masses = jnp.full((cfg.n_bodies, b), cfg.mass, x0.dtype)
    xs, vs, n_pair, n_wall, overflow, err = _integrate(
        jnp.moveaxis(x0, 0, -1),
        jnp.moveaxis(v0, 0, -1),
        masses,
        jnp.asarray(cfg.radius, x0.dtype),
        jnp.asarray(cfg.box, x0.dtype),
        cfg.t_end,
        cfg.G,
        cfg.softening,
        gravity=cfg.forces == "gravity",
        n_saved=cfg.n_saved,
        substeps=substeps,
        max_events=max_events,
    )
    return (
        jnp.moveaxis(xs, -1, 0),
        jnp.moveaxis(vs, -1, 0),
        n_pair,
        n_wall,
        overflow,
        err,
        placed,
    )


def _pad_to(n: int) -> int:
    # Bucket the sizes of re-simulated subsets so that they reuse a few compiled programs.
    return max(64, 1 << (n - 1).bit_length())


def _simulate_subset(keys, cfg, max_events, substeps):
    """Simulate ``keys`` (a whole chunk, or a few failures padded to a bucketed size)."""
    n = keys.shape[0]
    size = _pad_to(n) if n < min(cfg.chunk_size, cfg.n_trajectories) else n
    if size > n:
        keys = jnp.concatenate([keys, jnp.repeat(keys[:1], size - n, axis=0)])
    # Compile once per physics: the seed, sizes and retry policy do not enter the program.
    physics = dataclasses.replace(cfg, n_trajectories=1, seed=0, chunk_size=1, max_redraws=1)
    return [np.array(a)[:n] for a in _simulate_keys(keys, physics, max_events, substeps)]


def _simulate_chunk(keys_base, cfg: CollisionsConfig, stats: dict):
    """One chunk: simulate, refine the overflowing or inaccurate, redraw what still fails."""
    keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys_base)
    out = _simulate_subset(keys, cfg, cfg.event_budget, cfg.substeps)
    xs, vs, n_pair, n_wall, overflow, err, placed = out
    tol = cfg.energy_tol if cfg.forces == "gravity" else 1e-8

    def failing(overflow, err, placed):
        return ~placed | overflow | ~(err <= tol)

    for attempt in range(1, cfg.max_redraws + 2):
        bad = np.flatnonzero(failing(overflow, err, placed))
        if bad.size == 0:
            return xs, vs, n_pair, n_wall, err
        # Refine placed trajectories once: a larger contact budget where it overflowed, finer
        # steps where only the energy drifted. What still fails (or was not placed) is redrawn.
        for refine, budget, substeps in (
            (bad[placed[bad] & overflow[bad]], cfg.event_budget * cfg.refine_factor, cfg.substeps),
            (bad[placed[bad] & ~overflow[bad]], cfg.event_budget, cfg.substeps * cfg.refine_factor),
        ):
            if refine.size:
                stats["n_refined"] += int(refine.size)
                sub = _simulate_subset(keys[refine], cfg, budget, substeps)
                for whole, part in zip(out, sub, strict=True):
                    whole[refine] = part
        bad = np.flatnonzero(failing(overflow, err, placed))
        if bad.size == 0:
            return xs, vs, n_pair, n_wall, err
        if attempt > cfg.max_redraws:
            break
        stats["n_redrawn"] += int(bad.size)
        new_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_base[bad], attempt)
        keys = keys.at[bad].set(new_keys)
        sub = _simulate_subset(new_keys, cfg, cfg.event_budget, cfg.substeps)
        for whole, part in zip(out, sub, strict=True):
            whole[bad] = part
    raise RuntimeError(
        f"{bad.size} trajectories still fail (overlapping placement, more than "
        f"{cfg.event_budget * cfg.refine_factor} contacts in a flight, or energy error above "
        f"{tol}) after {cfg.max_redraws} redraws"
    )


def simulate_collisions(cfg: CollisionsConfig | None = None, *, progress: bool = False) -> Dataset:
    """Generate a hard-sphere collisions dataset (see :class:`CollisionsConfig`).

    Trajectory ``i`` depends only on ``(cfg, i)`` (key ``fold_in(key(seed), i)``), so the
    arrays do not depend on the chunking. Computed in float64, stored in float32.

    Arguments:
        cfg: the configuration (defaults: 10,000 billiard trajectories of 3 discs, 500 frames).
        progress: show a tqdm progress bar over chunks.

    Returns:
        A :class:`~egnn_jax.sim.Dataset` with ``x, v [N, T, M, dim]``, ``t [T]``,
        ``masses [N, M]``, ``radius`` and ``box`` (scalars), and metadata with ``G`` and
        ``softening``, the contact counts (median and total, body–body and wall), the energy
        error, and the refined / redrawn counts.
    """
    cfg = CollisionsConfig() if cfg is None else cfg
    start = time.perf_counter()
    stats = {"n_refined": 0, "n_redrawn": 0}
    n = cfg.n_trajectories
    parts: list[list[np.ndarray]] = [[] for _ in range(5)]
    with jax.enable_x64(True):
        base = jax.random.key(cfg.seed)
        keys_all = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(n))
        chunk = min(cfg.chunk_size, n)
        starts = range(0, n, chunk)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="collisions", unit="chunk", total=math.ceil(n / chunk))
        for s in starts:
            e = min(s + chunk, n)
            keys = keys_all[s:e]
            if e - s < chunk:  # pad the last chunk to the compiled shape
                keys = jnp.concatenate([keys, jnp.repeat(keys[:1], chunk - (e - s), axis=0)])
            for whole, part in zip(parts, _simulate_chunk(keys, cfg, stats), strict=True):
                whole.append(part[: e - s])
    xs, vs, n_pair, n_wall, err = (np.concatenate(p) for p in parts)
    extra = {
        "G": cfg.effective_G,
        "softening": cfg.softening,
        "forces": cfg.forces,
        "n_refined": stats["n_refined"],
        "n_redrawn": stats["n_redrawn"],
        "median_pair_contacts": float(np.median(n_pair)),
        "median_wall_contacts": float(np.median(n_wall)),
        "total_pair_contacts": int(np.sum(n_pair)),
        "total_wall_contacts": int(np.sum(n_wall)),
        "median_rel_energy_error": float(np.median(err)),
        "max_rel_energy_error": float(np.max(err)),
        "wall_seconds": time.perf_counter() - start,
        "integrator": "exact contact times; "
        + ("free flight" if cfg.forces == "none" else "kick-drift-kick leapfrog")
        + " (float64)",
    }
    return Dataset(
        x=xs.astype(np.float32),
        v=vs.astype(np.float32),
        t=cfg.ts,
        masses=np.full((n, cfg.n_bodies), cfg.mass, np.float32),
        charges=None,
        metadata=make_metadata("collisions", cfg, extra),
        rel_energy_error=err,
        radius=np.asarray(cfg.radius, np.float64),
        box=np.asarray(cfg.box, np.float64),
    )
