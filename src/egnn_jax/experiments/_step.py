"""Pure training steps: the state, the optimiser, one step, a compiled chunk of steps.

Determinism: step ``s`` (0-based) belongs to epoch ``e = s // steps_per_epoch`` and uses the
batch ``perm_e[p * B:(p + 1) * B]`` with ``p = s % steps_per_epoch`` and
``perm_e = jax.random.permutation(jax.random.fold_in(key, e), n_train)``; its loss gets the
PRNG key ``step_key(key, s)`` and the step index (`StepInfo`). Everything a step does is a
pure function of ``(key, step)`` and the state, so a resumed run is bitwise the run that was
never interrupted.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "StepInfo",
    "TrainState",
    "cached",
    "init_train_state",
    "leading_size",
    "make_evaluator",
    "make_optimizer",
    "make_train_chunk",
    "make_train_step",
    "step_key",
]

PyTree = Any
LossFn = Callable[[PyTree, PyTree, "StepInfo"], jax.Array]
EvalFn = Callable[[PyTree, PyTree], Mapping[str, jax.Array]]

# Epoch e shuffles with fold_in(key, e); the losses draw from this stream instead, an epoch
# index no run reaches, so the two never share a key.
_LOSS_STREAM = 2**31 - 1


class TrainState(NamedTuple):
    """Complete, pure training state.

    Attributes:
        step: int32 scalar, number of optimisation steps already taken.
        params: model parameters (any pytree of arrays).
        opt_state: optax optimiser state.
        key: base PRNG key of the run (shuffling and the losses' keys derive from it; it
            is never split or advanced).
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    key: jax.Array


class StepInfo(NamedTuple):
    """What a loss learns about the step it is computed for.

    Attributes:
        key: this step's PRNG key, ``step_key(run key, step)`` (noise injection, random
            windows, ...).
        step: int32 scalar, the 0-based index of the step (schedules, curricula).
    """

    key: jax.Array
    step: jax.Array


def step_key(key: jax.Array, step) -> jax.Array:
    """The PRNG key the loss of step `step` (0-based) receives."""
    return jax.random.fold_in(jax.random.fold_in(key, _LOSS_STREAM), step)


@functools.lru_cache(maxsize=32)
def make_optimizer(
    learning_rate: float = 5e-4,
    weight_decay: float = 1e-12,
    decay_steps: int | None = None,
    clip_norm: float | None = None,
):
    """Adam with L2 regularisation added to the gradient (``torch.optim.Adam(weight_decay=..)``).

    Arguments:
        learning_rate: Adam step size (the initial one with `decay_steps`).
        weight_decay: coefficient of the ``weight_decay * params`` term added to the
            gradient *before* the Adam moments (coupled L2, not AdamW's decoupled decay).
        decay_steps: decay the step size to 0 along a cosine over this many steps; None:
            constant.
        clip_norm: scale the gradient down to this global norm when it is larger (before the
            weight decay is added); None: no clipping.

    Returns:
        An ``optax.GradientTransformation``. It runs on the parameters flattened into one
        vector (`optax.flatten`): the same arithmetic, but one fused update instead of a few
        small kernels per parameter leaf, which matters for small models on a CPU.
    """
    if decay_steps is not None:
        learning_rate = optax.cosine_decay_schedule(learning_rate, decay_steps)
    clip = [] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]
    return optax.flatten(
        optax.chain(*clip, optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))
    )


def _strong(tree: PyTree) -> PyTree:
    """Convert leaves to strongly-typed device arrays (weak types would force a retrace)."""

    def conv(x):
        x = jnp.asarray(x)
        return jnp.asarray(x, dtype=x.dtype)

    return jax.tree.map(conv, tree)


def init_train_state(params: PyTree, optimizer, key: jax.Array) -> TrainState:
    """Initial :class:`TrainState` (step 0) for ``params`` and an optax ``optimizer``."""
    params = _strong(params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=_strong(optimizer.init(params)),
        key=key,
    )


def make_train_step(loss_fn: LossFn, optimizer) -> Callable[[TrainState, PyTree], tuple]:
    """Pure ``train_step(state, batch) -> (state, loss)`` (one gradient step, not jitted).

    Arguments:
        loss_fn: ``loss_fn(params, batch, info) -> scalar``, pure and traceable; ``info`` is
            a `StepInfo`: the step's key ``step_key(state.key, state.step)`` and its index.
        optimizer: optax ``GradientTransformation``.

    Returns:
        The step function; it does not touch ``state.key``.
    """

    def checked_loss(params, batch, info):
        loss = loss_fn(params, batch, info)
        if jnp.shape(loss) != ():
            raise ValueError(f"loss_fn must return a scalar, got shape {jnp.shape(loss)}")
        return loss

    grad_fn = jax.value_and_grad(checked_loss)

    def train_step(state: TrainState, batch: PyTree) -> tuple[TrainState, jax.Array]:
        info = StepInfo(step_key(state.key, state.step), state.step)
        loss, grads = grad_fn(state.params, batch, info)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state, state.key), loss

    return train_step


def make_train_chunk(
    loss_fn: LossFn,
    optimizer,
    *,
    batch_size: int,
    n_train: int,
    chunk_len: int,
    batch_sharding: jax.sharding.Sharding | None = None,
):
    """Jitted ``chunk(state, train_data) -> (state, losses[chunk_len])``.

    Runs ``chunk_len`` steps with ``jax.lax.scan``. Batches are drawn inside the compiled
    program: epoch ``e`` uses ``jax.random.permutation(fold_in(state.key, e), n_train)``
    and its ``n_train // batch_size`` consecutive slices (the remainder is dropped). The
    permutation is carried through the scan and recomputed only at epoch starts.

    Arguments:
        loss_fn: ``loss_fn(params, batch, info) -> scalar`` (`StepInfo`).
        optimizer: optax ``GradientTransformation``.
        batch_size: samples per step.
        n_train: size of the leading axis of every training-data leaf.
        chunk_len: number of steps per call.
        batch_sharding: where each step's batch lives (`_sharding.DataParallel.batch`:
            split over the devices of a mesh); None: wherever the data is.

    Returns:
        The jitted chunk function (compiled once per input shapes/dtypes).
    """
    steps_per_epoch = n_train // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size={batch_size} exceeds the training-set size {n_train}")
    train_step = make_train_step(loss_fn, optimizer)

    def chunk(state: TrainState, data: PyTree) -> tuple[TrainState, jax.Array]:
        def permutation(epoch):
            return jax.random.permutation(jax.random.fold_in(state.key, epoch), n_train)

        def body(carry, _):
            st, perm = carry
            epoch, pos = jnp.divmod(st.step, steps_per_epoch)
            perm = jax.lax.cond(pos == 0, lambda: permutation(epoch), lambda: perm)
            idx = jax.lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size)
            batch = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), data)
            if batch_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            st, loss = train_step(st, batch)
            return (st, perm), loss

        perm0 = permutation(state.step // steps_per_epoch)
        (state, _), losses = jax.lax.scan(body, (state, perm0), None, length=chunk_len)
        return state, losses

    return jax.jit(chunk)


# Jitted functions reused across `train` calls with the same (hashable) inputs, so that
# repeated runs (tests, sweeps, resumes in one process) do not recompile.
_JIT_CACHE: OrderedDict = OrderedDict()
_JIT_CACHE_SIZE = 16
_JIT_CACHE_LOCK = threading.Lock()  # `train_concurrently` runs `train` from several threads


def cached(cache_key: tuple, build: Callable[[], Any]) -> Any:
    """`build()`, memoised under `cache_key` (no memo if the key is unhashable)."""
    try:
        hash(cache_key)
    except TypeError:  # unhashable loss/eval function: no reuse
        return build()
    with _JIT_CACHE_LOCK:
        if cache_key in _JIT_CACHE:
            _JIT_CACHE.move_to_end(cache_key)
            return _JIT_CACHE[cache_key]
        value = _JIT_CACHE[cache_key] = build()
        while len(_JIT_CACHE) > _JIT_CACHE_SIZE:
            _JIT_CACHE.popitem(last=False)
        return value


def leading_size(tree: PyTree, what: str) -> int:
    """The common leading (sample) axis of every leaf; a clear error otherwise."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError(f"{what} has no array leaves")
    sizes = set()
    for leaf in leaves:
        shape = jnp.shape(leaf)
        if len(shape) == 0:
            raise ValueError(f"{what} contains a scalar leaf; every leaf needs a sample axis")
        sizes.add(shape[0])
    if len(sizes) != 1:
        raise ValueError(f"{what} leaves have mismatched leading (sample) axes: {sorted(sizes)}")
    (n,) = sizes
    if n == 0:
        raise ValueError(f"{what} is empty")
    return n


def make_evaluator(eval_fn: EvalFn, val_data: PyTree, eval_batch_size: int | None):
    """Return ``(evaluate(params) -> dict of device scalars, eval_shape(params))``.

    With `eval_batch_size`, the data is evaluated in batches and the metrics averaged with
    the batch sizes as weights (so they must be per-sample means).
    """
    whole = cached(("eval", eval_fn), lambda: jax.jit(eval_fn))
    if eval_batch_size is None:
        return (lambda p: whole(p, val_data)), (lambda p: whole.eval_shape(p, val_data))

    n = leading_size(val_data, "val_data")
    nb, rem = divmod(n, eval_batch_size)
    full = jax.tree.map(
        lambda x: x[: nb * eval_batch_size].reshape(nb, eval_batch_size, *x.shape[1:]),
        val_data,
    )
    rest = jax.tree.map(lambda x: x[nb * eval_batch_size :], val_data)

    @jax.jit
    def batched_sums(params, full):
        per_batch = jax.lax.map(lambda b: dict(eval_fn(params, b)), full)
        return jax.tree.map(lambda m: jnp.sum(m, axis=0) * eval_batch_size, per_batch)

    def evaluate(params):
        sums = batched_sums(params, full)
        if rem:
            sums = jax.tree.map(lambda s, m: s + m * rem, sums, dict(whole(params, rest)))
        return jax.tree.map(lambda s: s / n, sums)

    def eval_shape(params):
        return whole.eval_shape(params, jax.tree.map(lambda x: x[:eval_batch_size], val_data))

    return evaluate, eval_shape
