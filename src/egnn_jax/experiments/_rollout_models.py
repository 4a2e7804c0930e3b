"""Learned simulators as model kinds of the registry (`_models.MODEL_KINDS`).

A batch holds whole trajectories: ``x``, ``v`` ``[B, T, M, n]`` at a constant saved-step
spacing ``dt`` (a spec option), and ``h`` ``[B, M, F]`` invariant node features (masses or
charges). Every kind rolls a system out from one state (`trajectory`); the trained ones learn
from windows of the trajectories:

* ``constant_velocity``: x(t) = x0 + t v0 (not trained; the floor).
* ``true_simulator``: the simulator's own force law, integrated as the learned force fields
  are (the ceiling).
* ``one_shot``: EGNN-vel from the first state to any horizon, the horizon ``t`` an invariant
  node feature (trained on random horizons up to the trajectories' length).

The trained kinds take an ``edge_features`` option (`EDGE_FEATURES`).
* ``step``: `egnn_jax.dynamics.step` rolled out one saved interval at a time. Trained on
  windows of ``window`` intervals from random starts: the loss averages the position and
  velocity MSE over the first K steps of each window, with K growing from 1 to ``window``
  over ``curriculum_steps`` optimisation steps (backpropagation through K steps), and Gaussian
  noise of scale ``noise`` added to each window's first state. ``window=1`` is the naive
  one-step model. With ``pushforward``, each step's input is the model's own previous
  prediction with its gradient stopped (Brandstetter et al., 2022): every step of the window
  trains the one-step map on the states the model itself produces, and no gradient flows
  back through earlier steps. With ``loss="log"`` the loss averages the log of each
  system's error instead (`LOSSES`).
* ``force_field``: `egnn_jax.dynamics.force_field` integrated by leapfrog (``substeps`` per
  saved interval), trained the same way through the solver.
* ``potential``: `egnn_jax.dynamics.potential_acceleration`, likewise.
* ``contact_step``: `egnn_jax.dynamics.contact_step` (bodies in a box, walls as mirror
  images), rolled out and trained like ``step``.

Validation (``val_loss``, which selects the best checkpoint): the position MSE averaged over a
whole rollout of the validation trajectories from their first state, each system's error
capped at ``BOUND`` (a runaway system counts as a bad one, not as a NaN). Rollouts used for
evaluation stop a system where a coordinate reaches ``BOUND`` (non-finite values count as
reaching it) and keep it there, so a diverging model stays finite; `diverged_from` finds the
step it left.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

import egnn_jax
from egnn_jax import dynamics as dyn
from egnn_jax.sim import Yoshida6, charged_forces, gravity_acceleration

__all__ = ["BOUND", "EDGE_FEATURES", "ROLLOUT_KINDS", "diverged_from"]

BOUND = 1e3  # |coordinate| at which an evaluation rollout counts as diverged

# The ``loss`` option: "mse" averages the squared errors of the window's states; "log"
# averages, over systems and steps, the log of each system's mean squared error at a step
# (plus LOG_LOSS_FLOOR, a little above float32's resolution of unit coordinates, squared,
# so an exact step is not pushed further). The log weighs every system by its own error: a
# few systems the model family cannot represent (two contacts within one step) no longer
# dominate the gradient, and the common case is fitted to its precision instead of to
# their compromise.
LOSSES = ("mse", "log")
LOG_LOSS_FLOOR = 1e-12

# The ``edge_features`` option: invariant edge attributes recomputed from the positions at
# every step. "inverse": 1/sqrt(r^2 + s^2) at three scales (none of them the simulator's
# softening), a basis for force laws that span orders of magnitude; "distance": r (the
# seed's feature).
INVERSE_SCALES = (0.05, 0.2, 0.8)
EDGE_FEATURES = {
    "none": None,
    "distance": dyn.distance_feature,
    "inverse": dyn.inverse_distance_features(INVERSE_SCALES),
}


def _egnn_config(spec, velocity: bool, layers: int | None = None) -> egnn_jax.EGNNConfig:
    return egnn_jax.EGNNConfig(
        hidden_features=spec.hidden_features,
        num_layers=spec.num_layers if layers is None else layers,
        velocity=velocity,
    )


def _edges(edge_fn, x):
    return None if edge_fn is None else edge_fn(x)


def _first_state(batch) -> dyn.State:
    return dyn.State(batch["x"][:, 0], batch["v"][:, 0], batch["h"])


def _one(batch) -> dict:
    return jax.tree.map(lambda a: a[0], batch)


def _clip(a: jax.Array) -> jax.Array:
    return jnp.clip(jnp.nan_to_num(a, nan=BOUND, posinf=BOUND, neginf=-BOUND), -BOUND, BOUND)


def _bounded(state: dyn.State) -> dyn.State:
    return state._replace(x=_clip(state.x), v=_clip(state.v))


def _frozen_once_out(new: dyn.State, old: dyn.State) -> dyn.State:
    """`new` within the bounds, or `old` if `old` had already left them."""
    out = jnp.any(jnp.abs(old.x) >= BOUND) | jnp.any(jnp.abs(old.v) >= BOUND)
    return jax.tree.map(lambda a, b: jnp.where(out, b, a), _bounded(new), old)


def _freeze_after_leaving(xs: jax.Array, vs: jax.Array):
    """One system's `[T, M, n]` trajectory held at the first state that reached `BOUND`."""
    out = jnp.any(jnp.abs(xs) >= BOUND, axis=(1, 2)) | jnp.any(jnp.abs(vs) >= BOUND, axis=(1, 2))
    first = jnp.where(jnp.any(out), jnp.argmax(out), xs.shape[0])
    keep = (jnp.arange(xs.shape[0]) <= first)[:, None, None]
    last = jnp.minimum(first, xs.shape[0] - 1)
    return jnp.where(keep, xs, xs[last]), jnp.where(keep, vs, vs[last])


def diverged_from(xs: jax.Array, vs: jax.Array | None = None) -> jax.Array:
    """First time index `[B]` at which a rollout reached `BOUND` or is not finite (T: never).

    Arguments:
        xs: `[B, T, M, n]` positions; vs: the same for velocities, or None.
    """
    bad = ~jnp.isfinite(xs) | (jnp.abs(xs) >= BOUND)
    if vs is not None:
        bad = bad | ~jnp.isfinite(vs) | (jnp.abs(vs) >= BOUND)
    bad = jnp.any(bad.reshape(*bad.shape[:2], -1), axis=-1)
    return jnp.where(jnp.any(bad, axis=1), jnp.argmax(bad, axis=1), xs.shape[1])


def _validation_loss(kind, spec, params, batch) -> dict:
    num_steps = batch["x"].shape[1] - 1
    xs, _ = jax.vmap(lambda s: kind.trajectory(spec, params, s, num_steps))(_first_state(batch))
    err = jnp.minimum(jnp.mean((xs - batch["x"]) ** 2, axis=(2, 3)), BOUND)  # [B, T], capped
    return {"val_loss": jnp.mean(err[:, 1:]), "val_mse_end": jnp.mean(err[:, -1])}


class _Rollout:
    """What the trained kinds share: windows, the curriculum, noise, the loss."""

    trainable: ClassVar[bool] = True
    inputs: ClassVar[tuple[str, ...]] = ("x", "v", "h")
    options: ClassVar[dict[str, Any]] = {
        "dt": None,
        "window": 1,
        "curriculum_steps": 0,
        "noise": 0.0,
        "edge_features": "none",
        "pushforward": False,
        "loss": "mse",
    }

    def validate(self, spec) -> None:
        opts = dict(spec.options)
        unknown = set(opts) - set(self.options)
        missing = [k for k, v in self.options.items() if v is None and k not in opts]
        if unknown or missing:
            raise ValueError(
                f"kind {spec.kind!r}: unknown options {sorted(unknown)}, missing {missing}"
            )
        if opts.get("edge_features", "none") not in EDGE_FEATURES:
            raise ValueError(f"edge_features must be one of {tuple(EDGE_FEATURES)}")
        if opts.get("loss", "mse") not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {opts['loss']!r}")

    def option(self, spec, name):
        return dict(spec.options).get(name, self.options[name])

    def edge_fn(self, spec):
        return EDGE_FEATURES[self.option(spec, "edge_features")]

    def loss(self, spec, params, batch, info):
        window = self.option(spec, "window")
        b, t = batch["x"].shape[:2]
        if window > t - 1:
            raise ValueError(f"window={window} needs trajectories of > {window} frames, got {t}")
        k_start, k_x, k_v = jax.random.split(info.key, 3)
        start = jax.random.randint(k_start, (b,), 0, t - window)
        take = lambda a: jax.vmap(lambda a, s: jax.lax.dynamic_slice_in_dim(a, s, window + 1))(
            a, start
        )
        xw, vw = take(batch["x"]), take(batch["v"])
        noise = self.option(spec, "noise")
        x0 = xw[:, 0] + noise * jax.random.normal(k_x, xw[:, 0].shape, xw.dtype)
        v0 = vw[:, 0] + noise * jax.random.normal(k_v, vw[:, 0].shape, vw.dtype)
        pushforward = self.option(spec, "pushforward")
        # Curriculum: the first K of the window's steps count, K from 1 to `window`.
        ramp = max(self.option(spec, "curriculum_steps"), 1)
        k = jnp.clip(1 + (info.step * window) // ramp, 1, window)

        def unroll(state):
            # A step past K holds the state and is computed from the window's first state:
            # a young model stepped on from its own output may run away, and even masked
            # out, a NaN inside a step poisons the gradient (0 * NaN = NaN).
            states = [state]
            for i in range(window):
                counts = partial(jnp.where, i < k)
                start = jax.tree.map(counts, states[-1], state)
                xs, vs = self.unroll(spec, params, start, 1, pushforward=pushforward)
                new = dyn.State(xs[-1], vs[-1], state.h)
                states.append(jax.tree.map(counts, new, states[-1]))
            return jnp.stack([s.x for s in states]), jnp.stack([s.v for s in states])

        xs, vs = jax.vmap(unroll)(dyn.State(x0, v0, batch["h"]))
        squared = (xs[:, 1:] - xw[:, 1:]) ** 2 + (vs[:, 1:] - vw[:, 1:]) ** 2
        if self.option(spec, "loss") == "log":
            per_system = jnp.mean(squared, axis=(2, 3))
            per_step = jnp.mean(jnp.log(per_system + LOG_LOSS_FLOOR), axis=0)  # [window]
        else:
            per_step = jnp.mean(squared, axis=(0, 2, 3))  # [window]
        counted = jnp.arange(window) < k
        return jnp.sum(jnp.where(counted, per_step, 0.0)) / jnp.sum(counted)

    def evaluate(self, spec, params, batch):
        return _validation_loss(self, spec, params, batch)

    def trajectory(self, spec, params, state, num_steps):
        """Evaluation rollout of one system: ``(xs, vs)`` `[T + 1, M, n]`, kept bounded."""
        xs, vs = self.unroll(spec, params, state, num_steps, bounded=True)
        return _freeze_after_leaving(_clip(xs), _clip(vs))


class _Step(_Rollout):
    def _config(self, spec):
        return _egnn_config(spec, velocity=True)

    def init(self, spec, key, batch):
        state = _one(_first_state(batch))
        return dyn.step_init(key, self._config(spec), state, self.edge_fn(spec))

    def unroll(self, spec, params, state, num_steps, bounded=False, pushforward=False):
        cfg, edge_fn = self._config(spec), self.edge_fn(spec)

        def step(p, s):
            if pushforward:  # the input is the model's own prediction, not a path back
                s = jax.lax.stop_gradient(s)
            new = dyn.step(p, cfg, s, edge_fn)
            return _frozen_once_out(new, s) if bounded else new

        traj = dyn.rollout(step, params, state, num_steps)
        return traj.x, traj.v


class _Integrated(_Rollout):
    """A learned acceleration integrated by leapfrog: ``init_fn`` and ``acceleration_fn``
    are the `egnn_jax.dynamics` pair of the kind, ``fn(..., config, state, edge_fn=...)``."""

    options: ClassVar[dict[str, Any]] = {**_Rollout.options, "substeps": 1}
    init_fn: ClassVar[Any]
    acceleration_fn: ClassVar[Any]

    def _config(self, spec):
        return _egnn_config(spec, velocity=False)

    def init(self, spec, key, batch):
        state = _one(_first_state(batch))
        return self.init_fn(key, self._config(spec), state, edge_fn=self.edge_fn(spec))

    def acceleration(self, spec):
        cfg, edge_fn, accel = self._config(spec), self.edge_fn(spec), self.acceleration_fn
        return lambda p, s: accel(p, cfg, s, edge_fn=edge_fn)

    def unroll(self, spec, params, state, num_steps, bounded=False, pushforward=False):
        if pushforward:
            raise ValueError("pushforward is an option of the step model")
        accel = self.acceleration(spec)
        if bounded:  # a runaway system stays finite; `trajectory` freezes it at the bound
            accel = lambda p, s, accel=accel: _clip(accel(p, _bounded(s)))
        traj = dyn.integrate(
            accel,
            params,
            state,
            self.option(spec, "dt"),
            num_steps,
            substeps=self.option(spec, "substeps"),
        )
        return traj.x, traj.v


class _ForceField(_Integrated):
    init_fn = staticmethod(dyn.force_field_init)
    acceleration_fn = staticmethod(dyn.force_field)


class _Potential(_Integrated):
    init_fn = staticmethod(dyn.potential_init)
    acceleration_fn = staticmethod(dyn.potential_acceleration)


class _ContactStep(_Rollout):
    """`egnn_jax.dynamics.contact_step`: bodies of ``radius`` in the box ``[−box, box]^n``,
    walls as mirror images; ``project`` adds the non-penetration projection."""

    options: ClassVar[dict[str, Any]] = {
        **_Rollout.options,
        "radius": None,
        "box": None,
        "project": False,
    }

    def _config(self, spec):
        return _egnn_config(spec, velocity=False)

    def _geometry(self, spec) -> dict:
        return {k: self.option(spec, k) for k in ("radius", "box", "dt")}

    def init(self, spec, key, batch):
        state = _one(_first_state(batch))
        return dyn.contact_step_init(key, self._config(spec), state, **self._geometry(spec))

    def unroll(self, spec, params, state, num_steps, bounded=False, pushforward=False):
        cfg, geometry = self._config(spec), self._geometry(spec)
        project = self.option(spec, "project")

        def step(p, s):
            if pushforward:
                s = jax.lax.stop_gradient(s)
            new = dyn.contact_step(p, cfg, s, **geometry, project=project)
            return _frozen_once_out(new, s) if bounded else new

        traj = dyn.rollout(step, params, state, num_steps)
        return traj.x, traj.v


class _OneShot(_Rollout):
    """EGNN-vel from the first state to the horizon t, with t as a node feature."""

    options: ClassVar[dict[str, Any]] = {"dt": None, "edge_features": "none"}

    def _config(self, spec):
        return _egnn_config(spec, velocity=True)

    def _features(self, state: dyn.State, t) -> jax.Array:
        speed = jnp.linalg.norm(state.v, axis=-1, keepdims=True)
        horizon = jnp.broadcast_to(jnp.asarray(t, state.x.dtype), speed.shape)
        return jnp.concatenate([state.h, speed, horizon], axis=-1)

    def predict(self, spec, params, state: dyn.State, t) -> jax.Array:
        h, a = self._features(state, t), _edges(self.edge_fn(spec), state.x)
        return egnn_jax.apply(params, self._config(spec), h, state.x, v=state.v, edge_attr=a)[1]

    def init(self, spec, key, batch):
        s = _one(_first_state(batch))
        h, a = self._features(s, 0.0), _edges(self.edge_fn(spec), s.x)
        return egnn_jax.init(key, self._config(spec), h, s.x, v=s.v, edge_attr=a)

    def loss(self, spec, params, batch, info):
        b, t = batch["x"].shape[:2]
        k = jax.random.randint(info.key, (b,), 1, t)
        target = jax.vmap(lambda a, i: a[i])(batch["x"], k)
        horizon = k.astype(batch["x"].dtype) * self.option(spec, "dt")
        pred = jax.vmap(lambda s, tt: self.predict(spec, params, s, tt))(
            _first_state(batch), horizon
        )
        return jnp.mean((pred - target) ** 2)

    def trajectory(self, spec, params, state, num_steps):
        ts = jnp.arange(1, num_steps + 1, dtype=state.x.dtype) * self.option(spec, "dt")
        # In blocks of horizons: all ~2,000 of the long test set at once, vmapped over its
        # 1,000 systems, are two million graphs' activations (tens of GB).
        xs = jax.lax.map(lambda t: self.predict(spec, params, state, t), ts, batch_size=64)
        xs = jnp.concatenate([state.x[None], xs])  # the given first state, then predictions
        return jnp.clip(xs, -BOUND, BOUND), None


class _Fixed:
    """Kinds without parameters to learn."""

    trainable: ClassVar[bool] = False
    inputs: ClassVar[tuple[str, ...]] = ("x", "v", "h")
    options: ClassVar[dict[str, Any]] = {"dt": None}

    validate = _Rollout.validate
    option = _Rollout.option

    def init(self, spec, key, batch):
        return {}

    def evaluate(self, spec, params, batch):
        return _validation_loss(self, spec, params, batch)


class _ConstantVelocity(_Fixed):
    def trajectory(self, spec, params, state, num_steps):
        ts = jnp.arange(num_steps + 1, dtype=state.x.dtype) * self.option(spec, "dt")
        xs = state.x[None] + ts[:, None, None] * state.v[None]
        return xs, jnp.broadcast_to(state.v, xs.shape)


class _TrueSimulator(_Fixed):
    """The simulator's force law: softened gravity integrated by Yoshida-6 (three-body), or
    the charged system's clipped Coulomb forces by its semi-implicit Euler steps."""

    options: ClassVar[dict[str, Any]] = {
        "dt": None,
        "system": None,
        "G": 1.0,
        "softening": 0.1,
        "sim_steps": 100,
    }

    def trajectory(self, spec, params, state, num_steps):
        dt = self.option(spec, "dt")
        if self.option(spec, "system") == "three-body":
            G, eps = self.option(spec, "G"), self.option(spec, "softening")

            def gravity(p, s):  # the kernel's layout [M, n] for one system, masses h[:, 0]
                return gravity_acceleration(s.x, s.h[:, 0], G, eps)

            traj = dyn.integrate(gravity, None, state, dt, num_steps, solver=Yoshida6())
            return traj.x, traj.v
        # Charged: v += h F(x); x += h v, `sim_steps` of them per saved interval.
        h = dt / self.option(spec, "sim_steps")
        q = state.h[:, 0]

        def interval(carry, _):
            def euler(c, _):
                x, v = c
                v = v + h * charged_forces(x, q)
                return (x + h * v, v), None

            carry, _ = jax.lax.scan(euler, carry, None, length=self.option(spec, "sim_steps"))
            return carry, carry

        _, (xs, vs) = jax.lax.scan(interval, (state.x, state.v), None, length=num_steps)
        return jnp.concatenate([state.x[None], xs]), jnp.concatenate([state.v[None], vs])


ROLLOUT_KINDS: dict[str, Any] = {
    "constant_velocity": _ConstantVelocity(),
    "true_simulator": _TrueSimulator(),
    "one_shot": _OneShot(),
    "step": _Step(),
    "force_field": _ForceField(),
    "potential": _Potential(),
    "contact_step": _ContactStep(),
}
