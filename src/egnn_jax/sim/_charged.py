"""Charged-particle N-body benchmark (the EGNN paper's protocol), in pure JAX.

The scheme is the reference generator's fixed-step semi-implicit Euler, so it is written as a
``lax.scan`` (Diffrax would add per-step bookkeeping for no gain with a fixed first-order step);
it is pure and differentiable.  Internal layout is ``[M, dim, *batch]`` (trajectories last) so
XLA vectorises over the batch.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from ._dataset import Dataset, make_metadata
from ._kernels import inverse_sqrt

__all__ = [
    "SAMPLERS",
    "ChargedConfig",
    "charged_energy",
    "charged_forces",
    "charged_trajectory",
    "sample_charged_initial_conditions",
    "simulate_charged",
]

_SPLITS = ("train", "valid", "test")
SAMPLERS = ("jax", "numpy-legacy")


def charged_forces(x, charges, interaction_strength=1.0, max_force=100.0):
    """Coulomb-like forces ``F_i = k Σ_{j≠i} q_i q_j (x_i − x_j) / ‖x_i − x_j‖³``, clipped.

    Arguments:
        x: positions ``[M, dim, *batch]``.
        charges: ``[M, *batch]``.
        interaction_strength: k.
        max_force: each force component is clipped to ``[-max_force, max_force]`` after the
            sum over j, as in the reference generator.

    Returns:
        Forces ``[M, dim, *batch]``.
    """
    n = x.shape[0]
    force = [jnp.zeros_like(x[0]) for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            d = x[i] - x[j]
            inv_r = inverse_sqrt(jnp.sum(d * d, axis=0))
            f = (interaction_strength * charges[i] * charges[j] * inv_r * inv_r * inv_r)[None] * d
            force[i] = force[i] + f
            force[j] = force[j] - f
    return jnp.clip(jnp.stack(force), -max_force, max_force)


def charged_energy(x, v, charges, interaction_strength=1.0):
    """Total energy ``Σ ½ v² + k Σ_{i<j} q_i q_j / ‖x_i − x_j‖`` (unit masses).

    The potential of the unclipped Coulomb force: the clipping at ``max_force`` makes the
    simulated dynamics conserve it only between close encounters.

    Arguments:
        x, v: ``[M, dim, *batch]``.
        charges: ``[M, *batch]``.
        interaction_strength: k.

    Returns:
        Energy ``[*batch]``.
    """
    n = x.shape[0]
    kinetic = 0.5 * sum(jnp.sum(v[i] * v[i], axis=0) for i in range(n))
    potential = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            d = x[i] - x[j]
            inv_r = inverse_sqrt(jnp.sum(d * d, axis=0))
            potential = potential + interaction_strength * charges[i] * charges[j] * inv_r
    return kinetic + potential


def _run(x, v, charges, *, n_frames, save_every, dt, interaction_strength, max_force):
    """Semi-implicit Euler on layout ``[M, dim, *b]``; returns frames ``[T, M, dim, *b]``."""

    def step(carry, _):
        x, v = carry
        v = v + dt * charged_forces(x, charges, interaction_strength, max_force)
        x = x + dt * v
        return (x, v), None

    def frame(carry, _):
        carry, _ = jax.lax.scan(step, carry, None, length=save_every)
        return carry, carry

    _, (xs, vs) = jax.lax.scan(frame, (x, v), None, length=n_frames)
    return xs, vs


@jax.jit(static_argnames=("n_frames", "save_every"))
def charged_trajectory(
    x0,
    v0,
    charges,
    *,
    n_frames: int = 49,
    save_every: int = 100,
    dt=0.001,
    interaction_strength=1.0,
    max_force=100.0,
):
    """Integrate one charged system with the reference semi-implicit Euler scheme.

    One step is ``v ← v + dt·F(x)`` then ``x ← x + dt·v``.  Frame ``k`` (``k = 0 …
    n_frames−1``) is the state after ``save_every·(k+1)`` steps, i.e. at time
    ``dt·save_every·(k+1)``; the initial state is not included (as in the reference).
    Pure and differentiable (the gradient of a clipped force component is 0).

    Arguments:
        x0: initial positions ``[M, dim]``.
        v0: initial velocities ``[M, dim]``.
        charges: ``[M]``.
        n_frames, save_every: number of saved frames and steps between them (static).
        dt, interaction_strength, max_force: scheme parameters.

    Returns:
        ``(x, v)``, each ``[n_frames, M, dim]``.
    """
    x0 = jnp.asarray(x0)
    v0 = jnp.asarray(v0, x0.dtype)
    charges = jnp.asarray(charges, x0.dtype)
    if x0.ndim != 2 or x0.shape[1] not in (2, 3) or v0.shape != x0.shape:
        raise ValueError(
            f"x0, v0 must both be [M, dim] with dim in (2, 3); got {x0.shape}, {v0.shape}"
        )
    if charges.shape != x0.shape[:1]:
        raise ValueError(f"charges must be [M]={x0.shape[:1]}; got {charges.shape}")
    if n_frames <= 0 or save_every <= 0:
        raise ValueError("n_frames and save_every must be > 0")
    return _run(
        x0,
        v0,
        charges,
        n_frames=n_frames,
        save_every=save_every,
        dt=dt,
        interaction_strength=interaction_strength,
        max_force=max_force,
    )


@dataclasses.dataclass(frozen=True)
class ChargedConfig:
    """The EGNN / NRI charged-particles protocol (defaults reproduce it).

    ``n_particles`` particles with charges ±1 (probability ½ each); initial positions
    ``N(0, loc_std²)`` per coordinate, reflected into the box ``|x| ≤ box_size`` once at the
    start (velocity component flipped inwards, as the reference ``_clamp``); initial velocities
    of uniformly random direction and norm ``vel_norm``; ``n_steps`` semi-implicit Euler steps of
    ``dt`` with force components clipped to ``±max_force``; frames saved every ``save_every``
    steps, frame ``k`` being the state after ``save_every·(k+1)`` steps (so
    ``n_steps // save_every − 1 = 49`` frames; the benchmark maps frame 30 to frame 40).

    Splits: ``split`` in {"train", "valid", "test"} selects an independent PRNG stream,
    ``fold_in(key(seed), split_index)``, so the three splits of one seed never overlap; trajectory
    ``i`` uses ``fold_in(stream, i)``.  The benchmark uses 10,000 train (first 3,000 used),
    2,000 valid and 2,000 test trajectories (see :func:`charged_splits`).

    ``sampler`` chooses where the initial conditions come from:

    * ``"jax"`` (default): the JAX PRNG streams above.
    * ``"numpy-legacy"``: NumPy's legacy ``RandomState(seed)``, drawn in the reference
      generator's call order (``generate_dataset.py`` of the EGNN code). Per trajectory: charges
      by ``choice([-1, 0, 1], size=(M, 1), p=[½, 0, ½])``, positions ``randn(dim, M)·loc_std``,
      velocities ``randn(dim, M)`` rescaled to ``vel_norm``, then two ``randn(n_frames, dim, M)``
      observation-noise draws (noise 0, but they advance the stream). One stream runs through
      the train, valid and test splits in that order; ``legacy_split_sizes`` gives the sizes of
      the train and valid splits drawn before the later ones, so ``split="valid"`` skips that
      many trajectories. With ``seed=43`` and the default sizes this regenerates the paper's
      ``nbody_small`` data (the trajectories then follow from our integrator, which matches the
      reference loop). The reference scales ``loc_std`` by ``(M/5)^(1/3)``; here ``loc_std`` is
      used as given (the same for M = 5).

    ``precision``: "float64" (default, as the reference generator) or "float32" (~4x faster).
    The stored arrays are float32 either way.
    """

    n_trajectories: int = 10_000
    n_particles: int = 5
    dim: int = 3
    n_steps: int = 5_000
    save_every: int = 100
    dt: float = 0.001
    box_size: float = 5.0
    loc_std: float = 1.0
    vel_norm: float = 0.5
    interaction_strength: float = 1.0
    max_force: float = 100.0
    split: str = "train"
    precision: str = "float64"
    chunk_size: int = 1_000
    seed: int = 0
    sampler: str = "jax"
    legacy_split_sizes: tuple[int, int] = (10_000, 2_000)

    def __post_init__(self):
        if self.n_trajectories <= 0:
            raise ValueError(f"n_trajectories must be > 0; got {self.n_trajectories}")
        if self.dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3; got {self.dim}")
        if self.n_particles < 2:
            raise ValueError(f"n_particles must be >= 2; got {self.n_particles}")
        if self.save_every <= 0 or self.n_steps // self.save_every < 2:
            raise ValueError("need save_every > 0 and n_steps >= 2 * save_every")
        if self.split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}; got {self.split!r}")
        if self.precision not in ("float32", "float64"):
            raise ValueError(f"precision must be 'float32' or 'float64'; got {self.precision!r}")
        if self.chunk_size <= 0 or self.dt <= 0:
            raise ValueError("chunk_size and dt must be > 0")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}; got {self.sampler!r}")
        object.__setattr__(self, "legacy_split_sizes", tuple(self.legacy_split_sizes))
        if len(self.legacy_split_sizes) != 2 or min(self.legacy_split_sizes) < 0:
            raise ValueError(
                f"legacy_split_sizes must be two sizes >= 0; got {self.legacy_split_sizes}"
            )

    @property
    def n_frames(self) -> int:
        return self.n_steps // self.save_every - 1

    @property
    def ts(self) -> np.ndarray:
        return self.dt * self.save_every * np.arange(1, self.n_frames + 1)


def _reflect_into_box(x, v, box_size):
    """Reflect positions into ``|x| <= box_size`` once, flipping those velocity components
    inwards (the reference ``_clamp``)."""
    over, under = x > box_size, x < -box_size
    x = jnp.where(over, 2 * box_size - x, jnp.where(under, -2 * box_size - x, x))
    v = jnp.where(over, -jnp.abs(v), jnp.where(under, jnp.abs(v), v))
    return x, v


def sample_charged_initial_conditions(key, n_particles, dim, loc_std, vel_norm, box_size, dtype):
    """Draw ``(x0 [M, dim], v0 [M, dim], charges [M])`` for one system (see ChargedConfig)."""
    kq, kx, kv = jax.random.split(key, 3)
    charges = jnp.where(jax.random.bernoulli(kq, 0.5, (n_particles,)), 1.0, -1.0).astype(dtype)
    x = loc_std * jax.random.normal(kx, (n_particles, dim), dtype)
    v = jax.random.normal(kv, (n_particles, dim), dtype)
    v = v * (vel_norm / jnp.linalg.norm(v, axis=-1, keepdims=True))
    x, v = _reflect_into_box(x, v, box_size)
    return x, v, charges


def legacy_initial_conditions(cfg: ChargedConfig):
    """The initial conditions of ``cfg``'s split drawn by NumPy's legacy ``RandomState``.

    See the ``sampler="numpy-legacy"`` notes of :class:`ChargedConfig` for the call order.

    Returns:
        ``(x0, v0, charges)`` as float64 NumPy arrays ``[N, M, dim]``, ``[N, M, dim]``,
        ``[N, M]``, before the reflection into the box.
    """
    rng = np.random.RandomState(cfg.seed)
    n_train, n_valid = cfg.legacy_split_sizes
    skip = {"train": 0, "valid": n_train, "test": n_train + n_valid}[cfg.split]
    m, dim, n = cfg.n_particles, cfg.dim, cfg.n_trajectories
    x0, v0, q = np.empty((n, m, dim)), np.empty((n, m, dim)), np.empty((n, m))
    for i in range(skip + n):
        charges = rng.choice([-1.0, 0.0, 1.0], size=(m, 1), p=[0.5, 0.0, 0.5])
        x = rng.randn(dim, m) * cfg.loc_std
        v = rng.randn(dim, m)
        v = v * cfg.vel_norm / np.sqrt((v**2).sum(axis=0, keepdims=True))
        for _ in range(2):  # the reference's observation noise, scaled by 0 but drawn
            rng.randn(cfg.n_frames, dim, m)
        if i >= skip:
            x0[i - skip], v0[i - skip], q[i - skip] = x.T, v.T, charges[:, 0]
    return x0, v0, q


@jax.jit(static_argnames=("n_particles", "dim", "dtype"))
def _sample_batch(keys, *, n_particles, dim, dtype, loc_std, vel_norm, box_size):
    return jax.vmap(
        lambda k: sample_charged_initial_conditions(
            k, n_particles, dim, loc_std, vel_norm, box_size, dtype
        )
    )(keys)


@jax.jit(static_argnames=("n_frames", "save_every"))
def _simulate_batch(x0, v0, q, *, n_frames, save_every, dt, interaction_strength, max_force):
    """Integrate ``[B, M, dim]`` initial conditions; frames ``[B, T, M, dim]`` in float32."""
    xs, vs = _run(
        jnp.moveaxis(x0, 0, -1),
        jnp.moveaxis(v0, 0, -1),
        jnp.moveaxis(q, 0, -1),
        n_frames=n_frames,
        save_every=save_every,
        dt=dt,
        interaction_strength=interaction_strength,
        max_force=max_force,
    )
    to_np = lambda a: jnp.moveaxis(a, -1, 0).astype(jnp.float32)  # [B, T, M, dim]
    return to_np(xs), to_np(vs), q.astype(jnp.float32)


def simulate_charged(cfg: ChargedConfig | None = None, *, progress: bool = False):
    """Generate a charged-particles dataset following :class:`ChargedConfig`.

    Arguments:
        cfg: the configuration (defaults: 10,000 train trajectories of the EGNN protocol).
        progress: show a tqdm progress bar over chunks.

    Returns:
        A :class:`~egnn_jax.sim.Dataset` with ``x, v [N, T=49, M=5, dim=3]`` (float32),
        ``t [T]``, ``charges [N, M]`` (±1) and metadata.
    """
    cfg = ChargedConfig() if cfg is None else cfg
    start = time.perf_counter()
    n = cfg.n_trajectories
    chunk = min(cfg.chunk_size, n)
    use64 = cfg.precision == "float64"
    xs, vs, qs = [], [], []
    with jax.enable_x64(use64):
        dtype = jnp.float64 if use64 else jnp.float32
        if cfg.sampler == "numpy-legacy":
            x0, v0, q = (jnp.asarray(a, dtype) for a in legacy_initial_conditions(cfg))
            x0, v0 = _reflect_into_box(x0, v0, cfg.box_size)
        else:
            stream = jax.random.fold_in(jax.random.key(cfg.seed), _SPLITS.index(cfg.split))
            keys = jax.vmap(lambda i: jax.random.fold_in(stream, i))(jnp.arange(n))
            x0, v0, q = _sample_batch(
                keys,
                n_particles=cfg.n_particles,
                dim=cfg.dim,
                dtype=dtype,
                loc_std=cfg.loc_std,
                vel_norm=cfg.vel_norm,
                box_size=cfg.box_size,
            )
        starts = range(0, n, chunk)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="charged", unit="chunk", total=math.ceil(n / chunk))
        for s in starts:
            e = min(s + chunk, n)
            rows = np.arange(s, s + chunk)
            rows[rows >= e] = s  # pad the last chunk to the compiled shape
            x, v, qf = _simulate_batch(
                x0[rows],
                v0[rows],
                q[rows],
                n_frames=cfg.n_frames,
                save_every=cfg.save_every,
                dt=cfg.dt,
                interaction_strength=cfg.interaction_strength,
                max_force=cfg.max_force,
            )
            xs.append(np.asarray(x)[: e - s])
            vs.append(np.asarray(v)[: e - s])
            qs.append(np.asarray(qf)[: e - s])
    extra = {"wall_seconds": time.perf_counter() - start, "integrator": "semi-implicit Euler"}
    return Dataset(
        x=np.concatenate(xs),
        v=np.concatenate(vs),
        t=cfg.ts,
        masses=None,
        charges=np.concatenate(qs),
        metadata=make_metadata("charged", cfg, extra),
    )
