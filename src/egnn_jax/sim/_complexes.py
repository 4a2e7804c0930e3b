"""Charged particles bound into rigid complexes: the M-complex data of EGHN (NeurIPS 2022).

The protocol of the public EGHN generator (`simulation/datagen/` of hanjq17/EGHN):

* Five *system types* per dataset, each a list of M distinct complex sizes drawn from
  2 … 2·avg − 2 with weight ``2·avg + 4 − size`` (sizes 2, 3 and 4 all weighted as 3); every
  trajectory picks one type uniformly. The reference crashes when M exceeds the number of
  possible sizes (``M > 2·avg − 3``, e.g. (5, 3)); here sizes are then drawn with replacement.
* Complex centres uniform in ``[−s, s]³``, ``s = (N/5)^(1/3) + 0.5``, redrawn while closer
  than 1.6 to an earlier centre (after 20 tries the last draw is kept); particles at a random
  direction and a distance ``U[0.6, 1.1) · d_min / 1.6`` from their centre (``d_min``: the
  smallest distance between centres); each complex a random subset of the particle indices.
* Charges ±1; Coulomb forces ``q_i q_j (x_i − x_j) / r³`` summed per particle, each component
  clipped to ±100; unit masses.
* Every complex is a rigid body, stepped by semi-implicit Euler with dt = 0.001:
  ``v_c += dt·ΣF / mass_c``, ``x_c += dt·v_c``; ``ω += dt·τ / J`` with the torque
  ``τ = Σ r × F`` and the reference's scalar inertia ``J = (1/3) Σ |r_⊥|²`` (``r_⊥``: the
  offsets perpendicular to the current axis ω); the offsets ``r`` are turned by the
  axis–angle rotation of angle ``|ω|·dt``; ``v = v_c + ω × r``.
  The reference divides the summed force by n² (its comment: "I did some modification
  here"), i.e. a complex of n particles translates as if its mass were n²; that is the
  default (``translational_mass="n_squared"``), and ``"n"`` gives the physical mass n, under
  which the total momentum Σ n_c v_c is conserved while no force is clipped.
* Initial velocities: every particle a random direction of norm 0.5; the complex's ``v_c``
  is their mean and ``ω`` the mean of ``r × (v − v_c) / |r|²``.
* Frame k is the state after ``100·k + 1`` steps (the reference records right after step
  ``t`` when ``t % 100 == 0``), 50 frames over 5,000 steps; a trajectory with a velocity
  component above 5 at the end (the reference's signed test) is redrawn.

Shapes are padded to the largest system of the five types: ``x, v [S, T, N_max, 3]``,
``charges [S, N_max]`` (0 on padding), ``complex_id [S, N_max]`` (−1 on padding) and
``node_mask [S, N_max]``. Everything after the host-side draw of the five types is one jitted,
vmapped JAX program in float64 (float32 would not keep the complexes rigid to 1e-6 over
5,000 rotations); trajectory ``i`` of a split draws from ``fold_in(fold_in(key(seed), split),
i)``, so the first 1,000 of 2,000 trajectories are the same as a run of 1,000 with the same
``chunk_size``. (Another chunk size compiles another vectorisation of the force sums, whose
last bits differ; the dynamics are chaotic, so a few percent of the trajectories then differ
visibly. `chunk_size` is part of the config and of the cache key.)
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from ._dataset import Dataset, make_metadata
from ._frames import SavedFrames
from ._kernels import inverse_sqrt

__all__ = [
    "ComplexesConfig",
    "complex_sizes",
    "complexes_trajectory",
    "simulate_complexes",
]

_SPLITS = ("train", "valid", "test")
_MASSES = ("n_squared", "n")
_CENTRE_TRIES = 20
_MIN_CENTRE_DISTANCE = 1.6


@dataclasses.dataclass(frozen=True)
class ComplexesConfig(SavedFrames):
    """An M-complex dataset (defaults: the EGHN protocol's (5, 5) training split).

    Attributes:
        n_trajectories: systems to simulate.
        n_complexes: M, complexes per system.
        avg_size: the nominal average complex size (sizes are drawn from 2 … 2·avg − 2).
        system_types: how many size lists a dataset draws (one picked per trajectory).
        n_steps, save_every, dt: 5,000 semi-implicit Euler steps of 0.001, a frame every 100.
        vel_norm: every particle's initial speed before the rigid projection (0.5).
        max_force: the clip of every force component (100); ``inf`` disables it.
        max_speed: a trajectory whose final velocity has a component above this is redrawn.
        translational_mass: ``"n_squared"`` (the reference) or ``"n"`` (physical).
        frames: keep only these saved frames (None: all 50).
        split: "train", "valid" or "test", an independent PRNG stream of `seed`; the five
            system types are shared by the splits (they depend on `seed` only).
        max_redraws: rounds of redrawing rejected trajectories before giving up.
        chunk_size: trajectories per compiled batch.
        seed: PRNG seed (the EGHN data: 43).
    """

    n_trajectories: int = 2_000
    n_complexes: int = 5
    avg_size: int = 5
    system_types: int = 5
    n_steps: int = 5_000
    save_every: int = 100
    dt: float = 0.001
    vel_norm: float = 0.5
    max_force: float = 100.0
    max_speed: float = 5.0
    translational_mass: str = "n_squared"
    frames: tuple[int, ...] | None = None
    split: str = "train"
    max_redraws: int = 20
    chunk_size: int = 250
    seed: int = 43

    def __post_init__(self):
        if self.n_trajectories <= 0:
            raise ValueError(f"n_trajectories must be > 0; got {self.n_trajectories}")
        if self.n_complexes < 1:
            raise ValueError(f"n_complexes must be >= 1; got {self.n_complexes}")
        if self.avg_size < 2:
            raise ValueError(
                f"avg_size must be >= 2 (complexes of >= 2 particles); got {self.avg_size}"
            )
        for name in ("system_types", "n_steps", "save_every", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not (self.dt > 0 and self.vel_norm >= 0 and self.max_force > 0 and self.max_speed > 0):
            raise ValueError("dt, max_force and max_speed must be > 0 and vel_norm >= 0")
        if self.translational_mass not in _MASSES:
            raise ValueError(
                f"translational_mass must be one of {_MASSES}; got {self.translational_mass!r}"
            )
        if self.split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}; got {self.split!r}")
        if self.max_redraws < 0:
            raise ValueError(f"max_redraws must be >= 0; got {self.max_redraws}")
        self._check_frames()

    @property
    def frame_spacing(self) -> float:
        """Time between saved frames (0.1)."""
        return self.dt * self.save_every


def complex_sizes(cfg: ComplexesConfig) -> np.ndarray:
    """The dataset's system types: ``[system_types, M]`` complex sizes (int), from `seed`.

    Drawn on the host (they fix the padded size): sizes 2 … 2·avg − 2 with the reference's
    weights, distinct within a type when there are at least M possible sizes, else with
    replacement (where the reference generator raises).
    """
    sizes = np.arange(2, 2 * cfg.avg_size - 1)
    weights = (2 * cfg.avg_size + 4 - sizes).astype(np.float64)
    weights[sizes <= 4] = 2 * cfg.avg_size + 1  # sizes 2, 3 and 4 weighted as size 3
    rng = np.random.default_rng([cfg.seed, 20220])
    distinct = cfg.n_complexes <= sizes.size
    return np.stack(
        [
            rng.choice(sizes, size=cfg.n_complexes, replace=not distinct, p=weights / weights.sum())
            for _ in range(cfg.system_types)
        ]
    ).astype(np.int32)


def _segment_sum(a, ids, m):
    """Sum `a [N, ...]` over the particles of each of `m` complexes (id m: padding, dropped)."""
    return jax.ops.segment_sum(a, ids, num_segments=m + 1)[:m]


def _cross(a, b):
    return jnp.stack(
        [
            a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
            a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
            a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0],
        ],
        axis=-1,
    )


def _coulomb(x, q, real, max_force):
    """Clipped Coulomb forces on every particle, `[N, 3]`; padding feels and exerts none."""
    n = x.shape[0]
    d = x[:, None, :] - x[None, :, :]
    pair = real[:, None] & real[None, :] & ~np.eye(n, dtype=bool)
    r2 = jnp.where(pair, jnp.sum(d * d, axis=-1), 1.0)
    inv_r = jnp.where(pair, inverse_sqrt(r2), 0.0)
    size = q[:, None] * q[None, :] * inv_r * inv_r * inv_r
    return jnp.clip(jnp.sum(size[..., None] * d, axis=1), -max_force, max_force)


def _unit(a):
    """`a / |a|` row-wise; zero rows stay zero (a complex at rest does not turn)."""
    n2 = jnp.sum(a * a, axis=-1, keepdims=True)
    safe = jnp.where(n2 > 0, n2, 1.0)
    return jnp.where(n2 > 0, a * inverse_sqrt(safe), 0.0)


def _initial_state(key, sizes_of_types, vel_norm, dtype):
    """One system: type, membership, charges, centres, offsets and rigid velocities."""
    n_types, m = sizes_of_types.shape
    n_max = int(sizes_of_types.sum(axis=1).max())
    k_type, k_q, k_centre, k_perm, k_dir, k_dist, k_vel = jax.random.split(key, 7)
    sizes = jnp.asarray(sizes_of_types)[jax.random.randint(k_type, (), 0, n_types)]
    n_real = jnp.sum(sizes)
    slot = jnp.arange(n_max)
    real = slot < n_real

    # Membership: complex c owns sizes[c] slots, then the real slots are shuffled so that every
    # complex is a random subset of the particle indices (padding keeps id m, at the end).
    ordered = jnp.searchsorted(jnp.cumsum(sizes), slot, side="right")
    order = jnp.argsort(jnp.where(real, jax.random.uniform(k_perm, (n_max,)), 2.0 + slot))
    ids = ordered[order]

    q = jnp.where(jax.random.bernoulli(k_q, 0.5, (n_max,)), 1.0, -1.0).astype(dtype)
    q = jnp.where(real, q, 0.0)

    # Centres: the first of `_CENTRE_TRIES` uniform draws far enough from the earlier centres.
    half = (n_real.astype(dtype) / 5) ** (1 / 3) + 0.5
    tries = half * jax.random.uniform(k_centre, (m, _CENTRE_TRIES, 3), dtype, -1.0, 1.0)

    def place(centres, c):
        d = tries[c][:, None, :] - centres[None, :, :]
        far = jnp.sum(d * d, -1) >= _MIN_CENTRE_DISTANCE**2
        ok = jnp.all(far | (jnp.arange(m) >= c)[None, :], axis=1)
        pick = jnp.where(jnp.any(ok), jnp.argmax(ok), _CENTRE_TRIES - 1)
        return centres.at[c].set(tries[c, pick]), None

    centres, _ = jax.lax.scan(place, jnp.zeros((m, 3), dtype), jnp.arange(m))
    dc = centres[:, None, :] - centres[None, :, :]
    dc2 = jnp.where(np.eye(m, dtype=bool), jnp.inf, jnp.sum(dc * dc, -1))
    reach = jnp.sqrt(jnp.min(dc2)) / _MIN_CENTRE_DISTANCE if m > 1 else jnp.asarray(1.0, dtype)

    direction = _unit(jax.random.normal(k_dir, (n_max, 3), dtype))
    distance = (jax.random.uniform(k_dist, (n_max, 1), dtype) / 2 + 0.6) * reach
    padded_centres = jnp.concatenate([centres, jnp.zeros((1, 3), dtype)])
    x = jnp.where(real[:, None], padded_centres[ids] + direction * distance, 0.0)
    v = vel_norm * _unit(jax.random.normal(k_vel, (n_max, 3), dtype))
    v = jnp.where(real[:, None], v, 0.0)

    count = jnp.maximum(sizes, 1).astype(dtype)[:, None]
    xc = _segment_sum(x, ids, m) / count
    vc = _segment_sum(v, ids, m) / count
    r = jnp.where(real[:, None], x - _pad(xc)[ids], 0.0)
    r2 = jnp.where(real, jnp.sum(r * r, -1), 1.0)
    spin = _cross(r, v - _pad(vc)[ids]) / r2[:, None]
    wc = _segment_sum(jnp.where(real[:, None], spin, 0.0), ids, m) / count
    return {"ids": ids, "real": real, "q": q, "sizes": sizes}, (xc, vc, wc, r)


def _pad(per_complex):
    """Append the padding complex's row (zeros), so that ``_pad(a)[ids]`` is safe."""
    return jnp.concatenate([per_complex, jnp.zeros_like(per_complex[:1])])


def _step(system, state, *, dt, max_force, mass_power):
    """One semi-implicit Euler step of every rigid complex (the reference's update)."""
    ids, real, q = system["ids"], system["real"], system["q"]
    xc, vc, wc, r = state
    m = xc.shape[0]
    x = _pad(xc)[ids] + r
    f = jnp.where(real[:, None], _coulomb(x, q, real, max_force), 0.0)
    mass = system["sizes"].astype(xc.dtype) ** mass_power
    vc = vc + dt * _segment_sum(f, ids, m) / mass[:, None]
    xc = xc + dt * vc
    axis = _pad(_unit(wc))[ids]
    r_perp = r - jnp.sum(r * axis, -1, keepdims=True) * axis
    inertia = _segment_sum(jnp.sum(r_perp * r_perp, -1), ids, m) / 3
    torque = _segment_sum(_cross(r, f), ids, m)
    wc = wc + dt * torque / jnp.maximum(inertia, 1e-300)[:, None]
    # Rodrigues: turn every offset about its complex's axis by |ω| dt.
    speed = jnp.sqrt(jnp.sum(wc * wc, -1))
    u, angle = _pad(_unit(wc))[ids], _pad(speed * dt)[ids]
    cos, sin = jnp.cos(angle)[:, None], jnp.sin(angle)[:, None]
    r = r * cos + _cross(u, r) * sin + u * jnp.sum(u * r, -1, keepdims=True) * (1 - cos)
    return xc, vc, wc, r


def _observe(system, state):
    ids, real = system["ids"], system["real"]
    xc, vc, wc, r = state
    x = jnp.where(real[:, None], _pad(xc)[ids] + r, 0.0)
    v = jnp.where(real[:, None], _pad(vc)[ids] + _cross(_pad(wc)[ids], r), 0.0)
    return x, v


def complexes_trajectory(
    key,
    sizes_of_types,
    *,
    n_steps=5_000,
    save_every=100,
    dt=0.001,
    vel_norm=0.5,
    max_force=100.0,
    translational_mass="n_squared",
):
    """Draw and integrate one system (pure; jit and vmap over `key`).

    Arguments:
        key: PRNG key of the system.
        sizes_of_types: ``[types, M]`` int (NumPy, static), from `complex_sizes`.
        n_steps, save_every, dt, vel_norm, max_force, translational_mass: as in
            `ComplexesConfig`.

    Returns:
        ``(x, v)`` ``[n_saved, N_max, 3]`` (frame k after ``save_every·k + 1`` steps), the
        final velocities ``[N_max, 3]`` (for the rejection test), and the system's
        ``charges [N_max]``, ``complex_id [N_max]`` (−1: padding), ``node_mask [N_max]``.
    """
    dtype = jnp.result_type(float)
    system, state = _initial_state(key, np.asarray(sizes_of_types), vel_norm, dtype)
    power = 2.0 if translational_mass == "n_squared" else 1.0
    step = lambda s, _: (_step(system, s, dt=dt, max_force=max_force, mass_power=power), None)
    n_saved = math.ceil(n_steps / save_every)

    def frame(s, _):
        s, _ = jax.lax.scan(step, s, None, length=save_every)
        return s, _observe(system, s)

    state, _ = step(state, None)
    first = _observe(system, state)
    state, (xs, vs) = jax.lax.scan(frame, state, None, length=n_saved - 1)
    state, _ = jax.lax.scan(step, state, None, length=n_steps - 1 - save_every * (n_saved - 1))
    x = jnp.concatenate([first[0][None], xs])
    v = jnp.concatenate([first[1][None], vs])
    ids = jnp.where(system["real"], system["ids"], -1)
    return (x, v), _observe(system, state)[1], system["q"], ids, system["real"]


@jax.jit(static_argnames=("sizes_key", "n_steps", "save_every", "kept", "translational_mass"))
def _simulate_chunk(
    keys,
    *,
    sizes_key,
    n_steps,
    save_every,
    kept,
    dt,
    vel_norm,
    max_force,
    max_speed,
    translational_mass,
):
    sizes = np.asarray(sizes_key, np.int32)  # static: it fixes the padded size

    def one(key):
        (x, v), v_end, q, ids, mask = complexes_trajectory(
            key,
            sizes,
            n_steps=n_steps,
            save_every=save_every,
            dt=dt,
            vel_norm=vel_norm,
            max_force=max_force,
            translational_mass=translational_mass,
        )
        rejected = jnp.any(v_end > max_speed)
        rows = np.asarray(kept)
        return x[rows].astype(jnp.float32), v[rows].astype(jnp.float32), q, ids, mask, rejected

    return jax.vmap(one)(keys)


def _chunk(cfg: ComplexesConfig, sizes: np.ndarray, stream, rows: np.ndarray, stats: dict):
    """Simulate trajectories `rows`, redrawing the rejected ones (attempt a: key fold_in a)."""
    physics = dict(
        sizes_key=tuple(map(tuple, sizes.tolist())),
        n_steps=cfg.n_steps,
        save_every=cfg.save_every,
        kept=cfg.kept_frames,
        dt=cfg.dt,
        vel_norm=cfg.vel_norm,
        max_force=cfg.max_force,
        max_speed=cfg.max_speed,
        translational_mass=cfg.translational_mass,
    )
    out, todo = None, np.arange(rows.size)
    for attempt in range(cfg.max_redraws + 1):
        padded = np.concatenate([todo, np.full(rows.size - todo.size, todo[0])])
        keys = jax.vmap(lambda i, a: jax.random.fold_in(jax.random.fold_in(stream, i), a))(
            jnp.asarray(rows[padded]), jnp.full(rows.size, attempt)
        )
        res = [np.array(a)[: todo.size] for a in _simulate_chunk(keys, **physics)]
        if out is None:
            out = res[:5]
        else:
            for whole, part in zip(out, res[:5], strict=True):
                whole[todo] = part
        todo = todo[res[5]]
        if todo.size == 0:
            return out
        stats["n_redrawn"] += int(todo.size)
    raise RuntimeError(
        f"{todo.size} trajectories still exceed max_speed={cfg.max_speed} after "
        f"{cfg.max_redraws} redraws"
    )


def simulate_complexes(cfg: ComplexesConfig | None = None, *, progress: bool = False) -> Dataset:
    """Generate an M-complex dataset following :class:`ComplexesConfig`.

    Returns:
        A :class:`~egnn_jax.sim.Dataset`: ``x, v [S, T, N_max, 3]`` (float32; zero on
        padding), ``t [T]``, ``charges [S, N_max]``, ``complex_id [S, N_max]`` (int32, −1 on
        padding), ``node_mask [S, N_max]``; the metadata holds ``system_types`` (the size
        lists), ``frame_spacing`` and ``n_redrawn``.
    """
    cfg = ComplexesConfig() if cfg is None else cfg
    start = time.perf_counter()
    sizes = complex_sizes(cfg)
    n, chunk = cfg.n_trajectories, min(cfg.chunk_size, cfg.n_trajectories)
    stats = {"n_redrawn": 0}
    parts = []
    with jax.enable_x64(True):
        stream = jax.random.fold_in(jax.random.key(cfg.seed), _SPLITS.index(cfg.split))
        starts = range(0, n, chunk)
        if progress:
            from tqdm.auto import tqdm

            label = f"complexes ({cfg.n_complexes}, {cfg.avg_size})"
            starts = tqdm(starts, desc=label, unit="chunk", total=-(-n // chunk))
        for s in starts:
            e = min(s + chunk, n)
            rows = np.arange(s, s + chunk)
            rows[rows >= e] = s  # pad the last chunk to the compiled shape
            parts.append([a[: e - s] for a in _chunk(cfg, sizes, stream, rows, stats)])
    x, v, q, ids, mask = (np.concatenate(a) for a in zip(*parts, strict=True))
    extra = {
        "wall_seconds": time.perf_counter() - start,
        "integrator": "semi-implicit Euler, rigid complexes",
        "system_types": sizes.tolist(),
        "frame_spacing": cfg.frame_spacing,
        "frames": list(cfg.kept_frames),
        "n_redrawn": stats["n_redrawn"],
        "device": jax.devices()[0].device_kind,
    }
    return Dataset(
        x=x,
        v=v,
        t=cfg.ts,
        masses=None,
        charges=q.astype(np.float32),
        metadata=make_metadata("complexes", cfg, extra),
        complex_id=ids.astype(np.int32),
        node_mask=mask.astype(bool),
    )
