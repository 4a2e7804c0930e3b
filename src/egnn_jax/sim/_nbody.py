"""Charged N-body systems of any size: the protocol of the GMN / HEGNN / FastEGNN generator.

The same physics as the EGNN paper's charged particles (``_charged.py``: Coulomb forces
``q_i q_j (x_i − x_j) / ‖x_i − x_j‖³``, components clipped to ±100, semi-implicit Euler with
dt = 0.001) with that generator's other choices: no box, initial positions of scale
``(N/5)^(1/3) + 0.1`` so that the density stays put as N grows, and frame ``k`` saved after
``100k + 1`` steps (its loop saves when ``t % 100 == 0`` right after step ``t + 1``).

Forces are computed pairwise over all ``[M, M]`` pairs at once, so the compiled program does
not grow with M (the 5-body simulator's unrolled pair loop would have 4,950 pairs at M = 100);
for small M the unrolled loop is faster and gives the same forces, so it is used up to
``_UNROLLED_UP_TO`` bodies. Layout ``[M, dim, *batch]`` as in ``_charged.py``.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from ._charged import charged_forces
from ._dataset import Dataset, make_metadata
from ._frames import SavedFrames
from ._kernels import inverse_sqrt

__all__ = ["NBodyConfig", "nbody_forces", "simulate_nbody"]

_SPLITS = ("train", "valid", "test")
_UNROLLED_UP_TO = 12


def nbody_forces(x, charges, interaction_strength=1.0, max_force=100.0):
    """The clipped Coulomb forces of :func:`charged_forces`, over all pairs at once.

    Arguments:
        x: positions ``[M, dim, *batch]``.
        charges: ``[M, *batch]``.
        interaction_strength, max_force: as in :func:`charged_forces`.

    Returns:
        Forces ``[M, dim, *batch]``.
    """
    m = x.shape[0]
    if m <= _UNROLLED_UP_TO:
        return charged_forces(x, charges, interaction_strength, max_force)
    d = x[:, None] - x[None, :]  # [M, M, dim, *b]: x_i - x_j
    self_pair = np.eye(m, dtype=bool).reshape((m, m) + (1,) * (x.ndim - 2))
    r2 = jnp.where(self_pair, 1.0, jnp.sum(d * d, axis=2))  # [M, M, *b]
    inv_r = jnp.where(self_pair, 0.0, inverse_sqrt(r2))
    size = interaction_strength * charges[:, None] * charges[None, :] * inv_r * inv_r * inv_r
    return jnp.clip(jnp.sum(size[:, :, None] * d, axis=1), -max_force, max_force)


@dataclasses.dataclass(frozen=True)
class NBodyConfig(SavedFrames):
    """The N-body 5/20/50/100 benchmark's data (defaults: its 5-body training split).

    ``n_bodies`` particles of unit mass with charges ±1 (probability ½ each); initial
    positions ``N(0, σ²)`` per coordinate with ``σ = (n_bodies / 5)^(1/3) + 0.1``; initial
    velocities of uniformly random direction and norm ``vel_norm``; ``n_steps`` semi-implicit
    Euler steps of ``dt`` (``v ← v + dt·F(x)``, then ``x ← x + dt·v``) with force components
    clipped to ``±max_force``; frame ``k`` is the state after ``save_every·k + 1`` steps, so
    ``ceil(n_steps / save_every) = 50`` frames; the benchmark maps frame 30 to frame 40.
    No box: the generator's ``box_size=None``.

    Splits: ``split`` in {"train", "valid", "test"} selects an independent PRNG stream,
    ``fold_in(key(seed), split_index)``; trajectory ``i`` uses ``fold_in(stream, i)``. The
    benchmark uses 5,000 train, 2,000 valid and 2,000 test trajectories with seed 43.

    ``frames``: keep only these saved frames (``None``: all). At 100 bodies the 50 frames of
    9,000 trajectories take 1 GB; the experiment keeps frames 30 and 40.

    ``precision``: "float64" (default, as the reference's NumPy) or "float32". The stored
    arrays are float32 either way.
    """

    n_trajectories: int = 5_000
    n_bodies: int = 5
    dim: int = 3
    n_steps: int = 5_000
    save_every: int = 100
    dt: float = 0.001
    vel_norm: float = 0.5
    interaction_strength: float = 1.0
    max_force: float = 100.0
    frames: tuple[int, ...] | None = None
    split: str = "train"
    precision: str = "float64"
    chunk_size: int = 500
    seed: int = 43

    def __post_init__(self):
        if self.n_trajectories <= 0:
            raise ValueError(f"n_trajectories must be > 0; got {self.n_trajectories}")
        if self.n_bodies < 2:
            raise ValueError(f"n_bodies must be >= 2; got {self.n_bodies}")
        if self.dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3; got {self.dim}")
        if self.save_every <= 0 or self.n_steps <= 0 or self.dt <= 0 or self.chunk_size <= 0:
            raise ValueError("save_every, n_steps, dt and chunk_size must be > 0")
        if self.split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}; got {self.split!r}")
        if self.precision not in ("float32", "float64"):
            raise ValueError(f"precision must be 'float32' or 'float64'; got {self.precision!r}")
        self._check_frames()

    @property
    def loc_std(self) -> float:
        return (self.n_bodies / 5) ** (1 / 3) + 0.1


def _initial_conditions(key, n_bodies, dim, loc_std, vel_norm, dtype):
    kq, kx, kv = jax.random.split(key, 3)
    charges = jnp.where(jax.random.bernoulli(kq, 0.5, (n_bodies,)), 1.0, -1.0).astype(dtype)
    x = loc_std * jax.random.normal(kx, (n_bodies, dim), dtype)
    v = jax.random.normal(kv, (n_bodies, dim), dtype)
    return x, v * (vel_norm / jnp.linalg.norm(v, axis=-1, keepdims=True)), charges


def _physics(cfg: NBodyConfig) -> dict:
    """The arguments of `_simulate_chunk` that `cfg` sets (static ones hashable)."""
    return dict(
        n_bodies=cfg.n_bodies,
        dim=cfg.dim,
        save_every=cfg.save_every,
        kept=cfg.kept_frames,
        dt=cfg.dt,
        loc_std=cfg.loc_std,
        vel_norm=cfg.vel_norm,
        strength=cfg.interaction_strength,
        max_force=cfg.max_force,
    )


@jax.jit(static_argnames=("n_bodies", "dim", "save_every", "kept", "dtype"))
def _simulate_chunk(
    keys,
    *,
    n_bodies,
    dim,
    save_every,
    kept,
    dt,
    loc_std,
    vel_norm,
    strength,
    max_force,
    dtype,
):
    """Draw and integrate ``[B]`` systems; ``x, v [B, T_kept, M, dim]``, ``q [B, M]`` (float32).

    Integration stops at the last kept frame: the later steps cannot change the kept ones,
    and the steps before it compile to the same arithmetic, so the bits are those of a run
    through every frame (tested). The batch size is part of the data: it sets how XLA
    vectorises the force sums, whose last bits then differ.
    """
    x0, v0, q = jax.vmap(lambda k: _initial_conditions(k, n_bodies, dim, loc_std, vel_norm, dtype))(
        keys
    )
    charges = jnp.moveaxis(q, 0, -1)  # [M, B]

    def step(carry, _):
        x, v = carry
        v = v + dt * nbody_forces(x, charges, strength, max_force)
        return (x + dt * v, v), None

    def frame(carry, _):
        carry, _ = jax.lax.scan(step, carry, None, length=save_every)
        return carry, carry

    first, _ = step((jnp.moveaxis(x0, 0, -1), jnp.moveaxis(v0, 0, -1)), None)
    _, (xs, vs) = jax.lax.scan(frame, first, None, length=max(kept))
    out = []
    for first_frame, rest in ((first[0], xs), (first[1], vs)):
        frames = jnp.concatenate([first_frame[None], rest])[np.asarray(kept)]  # [T, M, dim, B]
        out.append(jnp.moveaxis(frames, -1, 0).astype(jnp.float32))
    return out[0], out[1], q.astype(jnp.float32)


def simulate_nbody(cfg: NBodyConfig | None = None, *, progress: bool = False) -> Dataset:
    """Generate an N-body dataset following :class:`NBodyConfig`.

    Arguments:
        cfg: the configuration (defaults: 5,000 train trajectories of 5 bodies).
        progress: show a tqdm progress bar over chunks.

    Returns:
        A :class:`~egnn_jax.sim.Dataset` with ``x, v [N, T, M, 3]`` (float32; T = 50 or the
        kept ``frames``), ``t [T]``, ``charges [N, M]`` (±1) and metadata.
    """
    cfg = NBodyConfig() if cfg is None else cfg
    start = time.perf_counter()
    n, chunk = cfg.n_trajectories, min(cfg.chunk_size, cfg.n_trajectories)
    use64 = cfg.precision == "float64"
    xs, vs, qs = [], [], []
    with jax.enable_x64(use64):
        dtype = jnp.float64 if use64 else jnp.float32
        stream = jax.random.fold_in(jax.random.key(cfg.seed), _SPLITS.index(cfg.split))
        starts = range(0, n, chunk)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"nbody {cfg.n_bodies}", unit="chunk", total=-(-n // chunk))
        for s in starts:
            e = min(s + chunk, n)
            rows = np.arange(s, s + chunk)
            rows[rows >= e] = s  # pad the last chunk to the compiled shape
            keys = jax.vmap(lambda i: jax.random.fold_in(stream, i))(jnp.asarray(rows))
            x, v, q = _simulate_chunk(keys, **_physics(cfg), dtype=dtype)
            xs.append(np.asarray(x)[: e - s])
            vs.append(np.asarray(v)[: e - s])
            qs.append(np.asarray(q)[: e - s])
    extra = {
        "wall_seconds": time.perf_counter() - start,
        "integrator": "semi-implicit Euler",
        "loc_std": cfg.loc_std,
        "frames": list(cfg.kept_frames),
        "device": jax.devices()[0].device_kind,
    }
    return Dataset(
        x=np.concatenate(xs),
        v=np.concatenate(vs),
        t=cfg.ts,
        masses=None,
        charges=np.concatenate(qs),
        metadata=make_metadata("nbody", cfg, extra),
    )
