"""Generic, model-agnostic training loop shared by all experiments.

The whole data set lives on the device as a pytree of arrays with a leading sample axis.
Training runs in *chunks* of ``eval_every`` optimisation steps: one jitted call runs a
``jax.lax.scan`` over the chunk, drawing every mini-batch inside the compiled program by
indexing the device-resident training set with a PRNG permutation. After each chunk the
host fetches the per-step losses and the validation metrics in a single transfer, checks
for divergence, updates the best-so-far checkpoint and the progress bar, and (at
checkpoint points) writes Orbax checkpoints. The next chunk is dispatched *before* the
host blocks on the current one, so the accelerator is not starved by host work.

Determinism
-----------
Step ``s`` (0-based) belongs to epoch ``e = s // steps_per_epoch`` and uses the batch
``perm_e[p * B:(p + 1) * B]`` with ``p = s % steps_per_epoch`` and
``perm_e = jax.random.permutation(jax.random.fold_in(key, e), n_train)``. The batch is
therefore a pure function of ``(key, step)``, chunks always start at multiples of
``eval_every`` and checkpoints are only taken at chunk boundaries, so a resumed run
executes exactly the same compiled programs on exactly the same inputs as an
uninterrupted one (bitwise identical on the same machine).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import shutil
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from egnn_jax._atomic import atomic_open

__all__ = [
    "TrainResult",
    "TrainState",
    "TrainingDiverged",
    "checkpoint_dir",
    "init_train_state",
    "load_best_params",
    "make_optimizer",
    "make_train_chunk",
    "make_train_step",
    "save_json_atomic",
    "train",
    "train_concurrently",
    "interrupt_on_signals",
]

logger = logging.getLogger(__name__)

PyTree = Any
LossFn = Callable[[PyTree, PyTree], jax.Array]
EvalFn = Callable[[PyTree, PyTree], Mapping[str, jax.Array]]

_FORMAT_VERSION = 1

# Jitted functions reused across `train` calls with the same (hashable) inputs, so that
# repeated runs (tests, sweeps, resumes in one process) do not recompile.
_JIT_CACHE: OrderedDict = OrderedDict()
_JIT_CACHE_SIZE = 16
_JIT_CACHE_LOCK = threading.Lock()  # `train_concurrently` runs `train` from several threads


def _cached(cache_key: tuple, build: Callable[[], Any]) -> Any:
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


# --------------------------------------------------------------------------------------
# State, optimiser, pure step / chunk functions
# --------------------------------------------------------------------------------------


class TrainState(NamedTuple):
    """Complete, pure training state.

    Attributes:
        step: int32 scalar, number of optimisation steps already taken.
        params: model parameters (any pytree of arrays).
        opt_state: optax optimiser state.
        key: base PRNG key of the run; the shuffling key of epoch ``e`` is
            ``jax.random.fold_in(key, e)``. It is never split or advanced.
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    key: jax.Array


class TrainResult(NamedTuple):
    """What :func:`train` returns.

    Attributes:
        params: parameters of the best validation checkpoint (lowest ``val_loss``).
        best_metrics: validation metrics (floats) at the best checkpoint.
        best_step: step (number of optimisation steps taken) of the best checkpoint.
        history: one dict per evaluation: ``step``, ``train_loss`` (mean over the chunk
            that ended at ``step``), every metric returned by ``eval_fn`` and
            ``wall_time`` (seconds since the start of training, accumulated over resumes).
            When resuming, the entries of the previous sessions are included.
        wall_seconds: wall-clock seconds spent in this call to :func:`train`.
        num_steps: optimisation steps run in this call (0 if a finished run was resumed).
        resumed: whether the run continued from a checkpoint.
        final_state: the :class:`TrainState` after the last step.
    """

    params: PyTree
    best_metrics: dict[str, float]
    best_step: int
    history: list[dict[str, float]]
    wall_seconds: float
    num_steps: int
    resumed: bool
    final_state: TrainState


class TrainingDiverged(RuntimeError):
    """Raised when the training loss (or ``val_loss``) becomes NaN or infinite.

    Attributes:
        step: 1-based index of the first optimisation step whose loss was not finite
            (for a non-finite ``val_loss``: the step at which it was evaluated).
        last_finite_loss: the last finite training loss seen, or ``None``.
        checkpoint_step: step of the last good ``latest`` checkpoint on disk, or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        step: int,
        last_finite_loss: float | None,
        checkpoint_step: int | None,
    ):
        super().__init__(message)
        self.step = step
        self.last_finite_loss = last_finite_loss
        self.checkpoint_step = checkpoint_step


@functools.lru_cache(maxsize=32)
def make_optimizer(learning_rate: float = 5e-4, weight_decay: float = 1e-12):
    """Adam with L2 regularisation added to the gradient (``torch.optim.Adam(weight_decay=..)``).

    Arguments:
        learning_rate: Adam step size.
        weight_decay: coefficient of the ``weight_decay * params`` term added to the
            gradient *before* the Adam moments (coupled L2, not AdamW's decoupled decay).

    Returns:
        An ``optax.GradientTransformation``. It runs on the parameters flattened into one
        vector (`optax.flatten`): the same arithmetic, but one fused update instead of a few
        small kernels per parameter leaf, which matters for small models on a CPU.
    """
    return optax.flatten(
        optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))
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
        loss_fn: ``loss_fn(params, batch) -> scalar``, pure and traceable.
        optimizer: optax ``GradientTransformation``.

    Returns:
        The step function; it does not touch ``state.key``.
    """

    def checked_loss(params, batch):
        loss = loss_fn(params, batch)
        if jnp.shape(loss) != ():
            raise ValueError(f"loss_fn must return a scalar, got shape {jnp.shape(loss)}")
        return loss

    grad_fn = jax.value_and_grad(checked_loss)

    def train_step(state: TrainState, batch: PyTree) -> tuple[TrainState, jax.Array]:
        loss, grads = grad_fn(state.params, batch)
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
):
    """Jitted ``chunk(state, train_data) -> (state, losses[chunk_len])``.

    Runs ``chunk_len`` steps with ``jax.lax.scan``. Batches are drawn inside the compiled
    program: epoch ``e`` uses ``jax.random.permutation(fold_in(state.key, e), n_train)``
    and its ``n_train // batch_size`` consecutive slices (the remainder is dropped). The
    permutation is carried through the scan and recomputed only at epoch starts.

    Arguments:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        optimizer: optax ``GradientTransformation``.
        batch_size: samples per step.
        n_train: size of the leading axis of every training-data leaf.
        chunk_len: number of steps per call.

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
            st, loss = train_step(st, batch)
            return (st, perm), loss

        perm0 = permutation(state.step // steps_per_epoch)
        (state, _), losses = jax.lax.scan(body, (state, perm0), None, length=chunk_len)
        return state, losses

    return jax.jit(chunk)


def _make_evaluator(eval_fn: EvalFn, val_data: PyTree, eval_batch_size: int | None):
    """Return ``(evaluate(params) -> dict of device scalars, eval_shape(params))``."""
    whole = _cached(("eval", eval_fn), lambda: jax.jit(eval_fn))
    if eval_batch_size is None:
        return (lambda p: whole(p, val_data)), (lambda p: whole.eval_shape(p, val_data))

    n = _leading_size(val_data, "val_data")
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


# --------------------------------------------------------------------------------------
# Checkpointing
# --------------------------------------------------------------------------------------


def save_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def checkpoint_dir(workdir: str | Path, name: str) -> Path:
    """``workdir/checkpoints/<name>``: holds the ``latest`` and ``best`` Orbax managers."""
    return Path(workdir).expanduser().resolve() / "checkpoints" / name


def _manager(directory: Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        create=True,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(directory, options=options)


def _abstract(tree: PyTree) -> PyTree:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x), sharding=sharding),
        tree,
    )


def _is_typed_key(key) -> bool:
    return jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def _key_data(key) -> jax.Array:
    return jax.random.key_data(key) if _is_typed_key(key) else jnp.asarray(key)


class _Checkpoints:
    """``latest`` (full state + JSON metadata) and ``best`` (params + JSON) managers.

    Arrays are stored as flat leaf lists (restored with the caller's tree structure),
    which avoids any dependence on how Orbax serialises NamedTuples / custom nodes.
    """

    def __init__(self, root: Path):
        self.root = root
        self.latest = _manager(root / "latest")
        self.best = _manager(root / "best")

    def close(self) -> None:
        self.latest.close()
        self.best.close()

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save_latest(self, state: TrainState, best_params: PyTree, meta: dict) -> None:
        step = int(meta["step"])
        tree = {
            "step": state.step,
            "key": _key_data(state.key),
            "params": jax.tree.leaves(state.params),
            "opt_state": jax.tree.leaves(state.opt_state),
            "best_params": jax.tree.leaves(best_params),
        }
        args = ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
        if not self.latest.save(step, args=args, force=True):
            raise RuntimeError(f"Orbax refused to save the latest checkpoint at step {step}")
        self.latest.wait_until_finished()

    def restore_latest(self, template: TrainState) -> tuple[TrainState, PyTree, dict]:
        step = self.latest.latest_step()
        abstract = {
            "step": _abstract(template.step),
            "key": _abstract(_key_data(template.key)),
            "params": _abstract(jax.tree.leaves(template.params)),
            "opt_state": _abstract(jax.tree.leaves(template.opt_state)),
            "best_params": _abstract(jax.tree.leaves(template.params)),
        }
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        )
        restored = self.latest.restore(step, args=args)
        tree, meta = restored["state"], restored["meta"]
        key = tree["key"]
        if _is_typed_key(template.key):
            key = jax.random.wrap_key_data(key, impl=jax.random.key_impl(template.key))
        p_def = jax.tree.structure(template.params)
        state = TrainState(
            step=tree["step"],
            params=jax.tree.unflatten(p_def, tree["params"]),
            opt_state=jax.tree.unflatten(jax.tree.structure(template.opt_state), tree["opt_state"]),
            key=key,
        )
        return state, jax.tree.unflatten(p_def, tree["best_params"]), meta

    def best_step(self) -> int | None:
        return self.best.latest_step()

    def save_best(self, params: PyTree, step: int, metrics: dict) -> None:
        if self.best.latest_step() == step:
            return
        meta = {"step": step, "metrics": metrics}
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(jax.tree.leaves(params)), meta=ocp.args.JsonSave(meta)
        )
        if not self.best.save(step, args=args, force=True):
            raise RuntimeError(f"Orbax refused to save the best checkpoint at step {step}")
        self.best.wait_until_finished()


def load_best_params(workdir: str | Path, name: str, like_params: PyTree) -> PyTree:
    """Restore the best-validation parameters saved by :func:`train`.

    Arguments:
        workdir: the ``workdir`` given to :func:`train`.
        name: the run ``name`` given to :func:`train`.
        like_params: a pytree with the structure, shapes and dtypes of the parameters
            (e.g. freshly initialised params, or ``jax.eval_shape`` of the init).

    Returns:
        The parameters pytree (device arrays).

    Raises:
        FileNotFoundError: if no best checkpoint exists.
        ValueError: if the checkpoint does not match ``like_params``.
    """
    directory = checkpoint_dir(workdir, name) / "best"
    if not directory.is_dir():
        raise FileNotFoundError(f"no best checkpoint for run {name!r} in {directory}")
    with _manager(directory) as mngr:
        step = mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"no best checkpoint for run {name!r} in {directory}")
        leaves, treedef = jax.tree.flatten(like_params)
        try:
            restored = mngr.restore(
                step,
                args=ocp.args.Composite(params=ocp.args.StandardRestore(_abstract(leaves))),
            )
        except (ValueError, KeyError) as e:
            raise ValueError(
                f"best checkpoint in {directory} does not match like_params: {e}"
            ) from e
    return jax.tree.unflatten(treedef, list(restored["params"]))


# --------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------


def _leading_size(tree: PyTree, what: str) -> int:
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


def _check_positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def _check_key(key) -> None:
    if not hasattr(key, "dtype"):
        raise ValueError(f"key must be a JAX PRNG key, got {type(key).__name__}")
    if _is_typed_key(key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key, got shape {key.shape}")
    elif key.dtype != jnp.uint32 or key.ndim != 1:
        raise ValueError(
            "key must be a PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
            f"got dtype {key.dtype} and shape {key.shape}"
        )


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def train(
    *,
    name: str,
    loss_fn: LossFn,
    params: PyTree,
    train_data: PyTree,
    eval_fn: EvalFn,
    val_data: PyTree,
    key: jax.Array,
    num_steps: int,
    batch_size: int,
    eval_every: int,
    learning_rate: float = 5e-4,
    weight_decay: float = 1e-12,
    optimizer: optax.GradientTransformation | None = None,
    eval_batch_size: int | None = None,
    workdir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool | None = True,
    progress_position: int | None = None,
    stop: threading.Event | None = None,
    queue_next_chunk: bool = True,
) -> TrainResult:
    """Train ``params`` to minimise ``loss_fn`` and keep the best validation checkpoint.

    Arguments:
        name: run name; progress-bar label and checkpoint subfolder
            ``workdir/checkpoints/<name>/{latest,best}``.
        loss_fn: ``loss_fn(params, batch) -> scalar``; pure, ``batch`` is ``train_data``
            with leading axis ``batch_size``.
        params: initial parameters (pytree of arrays).
        train_data: pytree of arrays sharing a leading sample axis ``n_train``; it is put
            on the default device once.
        eval_fn: ``eval_fn(params, val_data) -> dict[str, scalar]``; pure, jitted here;
            must contain ``"val_loss"`` (lower is better; selects the best checkpoint).
            Other entries (e.g. a test loss on data bundled in ``val_data``) are recorded.
        val_data: pytree passed to ``eval_fn`` (put on the device once).
        key: PRNG key (``jax.random.key`` or legacy ``PRNGKey``) used only for shuffling;
            epoch ``e`` uses ``jax.random.fold_in(key, e)``.
        num_steps: total optimisation steps (multiple of ``eval_every``); when resuming,
            it may exceed the original value to extend a run.
        batch_size: samples per step; ``steps_per_epoch = n_train // batch_size``.
        eval_every: steps between evaluations, also the length of one compiled chunk.
        learning_rate, weight_decay: for the default optimiser :func:`make_optimizer`.
        optimizer: optional optax transformation overriding ``learning_rate`` /
            ``weight_decay``.
        eval_batch_size: evaluate ``val_data`` in batches of this size (all leaves then
            need a common leading axis) and average the metrics weighted by batch size,
            i.e. metrics must be per-sample means. ``None``: one call on the whole set.
        workdir: root for checkpoints; ``None`` disables checkpointing.
        checkpoint_every: steps between ``latest`` / ``best`` checkpoint writes (multiple
            of ``eval_every``; default ``eval_every``). The final state is always saved,
            and so is the last good state on divergence or ``KeyboardInterrupt``.
        resume: continue from ``workdir/checkpoints/<name>/latest`` if present (a fresh
            run otherwise). With ``resume=False`` an existing checkpoint folder of the
            same name is deleted.
        progress: show a tqdm bar (``None``: only when attached to a terminal).
        progress_position: line of the bar, for several runs at once (tqdm ``position``).
        stop: when this event is set, the run stops at the next chunk boundary as on a
            ``KeyboardInterrupt``: the state is saved for ``resume=True`` and
            ``KeyboardInterrupt`` is raised (how `train_concurrently` interrupts its runs).
        queue_next_chunk: dispatch the next chunk before waiting for the current one, so
            an accelerator never idles on host work. `train_concurrently` turns it off on
            a CPU: there, a chunk queued behind a running one was seen to run ahead of
            other threads' chunks, starving one run until the others had finished.

    Returns:
        A :class:`TrainResult` (best params / metrics / step, history, timings).

    Raises:
        ValueError: invalid arguments, or a ``resume`` with a checkpoint made with a
            different ``batch_size`` / ``eval_every`` / training-set size.
        TrainingDiverged: a training loss or ``val_loss`` became NaN/inf; the last good
            state stays in (or is written to) the ``latest`` checkpoint.
    """
    t_call = time.perf_counter()

    # ---- validation -------------------------------------------------------------------
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name:
        raise ValueError(f"name must be a non-empty string usable as a folder, got {name!r}")
    num_steps = _check_positive_int(num_steps, "num_steps")
    batch_size = _check_positive_int(batch_size, "batch_size")
    eval_every = _check_positive_int(eval_every, "eval_every")
    if num_steps % eval_every:
        raise ValueError(f"num_steps={num_steps} must be a multiple of eval_every={eval_every}")
    checkpoint_every = eval_every if checkpoint_every is None else checkpoint_every
    checkpoint_every = _check_positive_int(checkpoint_every, "checkpoint_every")
    if checkpoint_every % eval_every:
        raise ValueError(
            f"checkpoint_every={checkpoint_every} must be a multiple of eval_every={eval_every}"
        )
    if eval_batch_size is not None:
        eval_batch_size = _check_positive_int(eval_batch_size, "eval_batch_size")
        if eval_batch_size > _leading_size(val_data, "val_data"):
            raise ValueError("eval_batch_size exceeds the validation-set size")
    if resume and workdir is None:
        raise ValueError("resume=True requires a workdir")
    if not callable(loss_fn) or not callable(eval_fn):
        raise ValueError("loss_fn and eval_fn must be callable")
    if not jax.tree.leaves(params):
        raise ValueError("params has no array leaves")
    if not jax.tree.leaves(val_data):
        raise ValueError("val_data has no array leaves")
    _check_key(key)
    n_train = _leading_size(train_data, "train_data")
    if batch_size > n_train:
        raise ValueError(f"batch_size={batch_size} exceeds the training-set size {n_train}")
    steps_per_epoch = n_train // batch_size

    # ---- setup --------------------------------------------------------------------------
    if optimizer is None:
        optimizer = make_optimizer(learning_rate, weight_decay)
    train_data = jax.device_put(train_data)
    val_data = jax.device_put(val_data)
    state = init_train_state(params, optimizer, key)
    chunk_fn = _cached(
        ("chunk", loss_fn, optimizer, batch_size, n_train, eval_every),
        lambda: make_train_chunk(
            loss_fn, optimizer, batch_size=batch_size, n_train=n_train, chunk_len=eval_every
        ),
    )
    evaluate, eval_shape = _make_evaluator(eval_fn, val_data, eval_batch_size)

    # Fail fast (before a long first chunk) on wrong output types; the traces are cached
    # by jit, so this does not cost an extra trace.
    out_state, _ = chunk_fn.eval_shape(state, train_data)
    if jax.tree.structure(out_state.params) != jax.tree.structure(state.params):
        raise ValueError("the optimiser changed the parameter tree structure")
    metric_shapes = eval_shape(state.params)
    if not isinstance(metric_shapes, Mapping) or "val_loss" not in metric_shapes:
        raise ValueError("eval_fn must return a dict containing 'val_loss'")
    bad = [k for k, v in metric_shapes.items() if jnp.shape(v) != ()]
    if bad:
        raise ValueError(f"eval_fn must return scalars; non-scalar metrics: {bad}")

    config = {
        "batch_size": batch_size,
        "eval_every": eval_every,
        "n_train": n_train,
        "steps_per_epoch": steps_per_epoch,
    }
    history: list[dict[str, float]] = []
    best_params = state.params
    best_metrics: dict[str, float] = {}
    best_step = -1
    best_val = math.inf
    wall_offset = 0.0
    resumed = False
    step = 0
    ckpt: _Checkpoints | None = None
    saved_step: int | None = None  # step of the latest checkpoint on disk

    if workdir is not None:
        root = checkpoint_dir(workdir, name)
        if root.exists() and not resume:
            logger.warning("run %r: removing previous checkpoints in %s", name, root)
            shutil.rmtree(root)
        ckpt = _Checkpoints(root)
        if resume and ckpt.latest_step() is not None:
            state, best_params, meta = ckpt.restore_latest(state)
            if meta.get("format") != _FORMAT_VERSION:
                raise ValueError(f"unsupported checkpoint format in {root}")
            for k, v in config.items():
                if meta["config"].get(k) != v:
                    raise ValueError(
                        f"cannot resume run {name!r}: checkpoint has {k}={meta['config'].get(k)}"
                        f", this call has {k}={v}"
                    )
            if not np.array_equal(np.asarray(_key_data(state.key)), np.asarray(_key_data(key))):
                logger.warning("run %r: resuming with the checkpoint's PRNG key", name)
            step = saved_step = int(meta["step"])
            history = list(meta["history"])
            best_step = int(meta["best_step"])
            best_metrics = dict(meta["best_metrics"])
            best_val = float(best_metrics["val_loss"]) if best_step >= 0 else math.inf
            wall_offset = float(meta["wall_time"])
            resumed = True
            logger.info("run %r: resumed from step %d", name, step)
        elif resume:
            logger.info("run %r: no checkpoint to resume from, starting fresh", name)

    def meta_for(at_step: int, hist: list, wall: float) -> dict:
        return {
            "format": _FORMAT_VERSION,
            "name": name,
            "step": at_step,
            "history": hist,
            "best_step": best_step,
            "best_metrics": best_metrics,
            "wall_time": wall,
            "config": config,
        }

    def save(at_state: TrainState, at_step: int, hist: list, wall: float) -> None:
        nonlocal saved_step
        if ckpt is None or saved_step == at_step:
            return
        # latest first, then best: the best folder never runs ahead of the latest state.
        ckpt.save_latest(at_state, best_params, meta_for(at_step, hist, wall))
        saved_step = at_step
        if best_step >= 0:
            ckpt.save_best(best_params, best_step, best_metrics)

    t_start = time.perf_counter()
    start_step = step
    last_finite: float | None = None
    if history:
        last_finite = float(history[-1]["train_loss"])
    bar = tqdm(
        total=num_steps,
        initial=min(step, num_steps),
        desc=name,
        unit="step",
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
        position=progress_position,
    )

    def dispatch(st: TrainState):
        new_state, losses = chunk_fn(st, train_data)
        return new_state, losses, evaluate(new_state.params)

    try:
        pending = dispatch(state) if step < num_steps else None
        while pending is not None:
            new_state, losses_d, metrics_d = pending
            chunk_end = step + eval_every
            # Queue the next chunk before blocking, so the device never idles on the host.
            queued = queue_next_chunk and chunk_end < num_steps
            pending = dispatch(new_state) if queued else None
            losses, metrics = jax.device_get((losses_d, metrics_d))
            losses = np.asarray(losses)
            metrics = {k: float(v) for k, v in metrics.items()}
            finite = np.isfinite(losses)
            if not finite.all() or not math.isfinite(metrics["val_loss"]):
                if not finite.all():
                    bad_i = int(np.argmin(finite))
                    bad_step, what = step + bad_i + 1, f"training loss {losses[bad_i]}"
                    if bad_i > 0:
                        last_finite = float(losses[bad_i - 1])
                else:
                    bad_step, what = chunk_end, f"val_loss {metrics['val_loss']}"
                    last_finite = float(losses[-1])
                pending = None
                save(state, step, history, wall_offset + time.perf_counter() - t_start)
                where = (
                    f"; the last good checkpoint (step {saved_step}) is in {ckpt.root}"
                    if ckpt is not None and saved_step is not None
                    else ""
                )
                raise TrainingDiverged(
                    f"training run {name!r} diverged: non-finite {what} at step {bad_step} "
                    f"(last finite training loss: {_fmt(last_finite)}){where}",
                    step=bad_step,
                    last_finite_loss=last_finite,
                    checkpoint_step=saved_step,
                )
            last_finite = float(losses[-1])
            train_loss = float(np.mean(losses, dtype=np.float64))
            step, state = chunk_end, new_state
            if metrics["val_loss"] < best_val:
                best_val, best_step, best_params = metrics["val_loss"], step, state.params
                best_metrics = dict(metrics)
            wall = wall_offset + time.perf_counter() - t_start
            history.append({"step": step, "train_loss": train_loss, **metrics, "wall_time": wall})
            if step % checkpoint_every == 0 or step >= num_steps:
                save(state, step, history, wall)
            bar.set_postfix(
                loss=_fmt(train_loss), val=_fmt(metrics["val_loss"]), best=_fmt(best_val)
            )
            bar.update(eval_every)
            if stop is not None and stop.is_set() and step < num_steps:
                raise KeyboardInterrupt  # a queued chunk is dropped; `state` is saved
            if not queued and step < num_steps:
                pending = dispatch(state)
    except KeyboardInterrupt:
        # `state` is the last fully processed chunk boundary: save it for resume=True.
        save(state, step, history, wall_offset + time.perf_counter() - t_start)
        raise
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()

    return TrainResult(
        params=best_params,
        best_metrics=best_metrics,
        best_step=best_step,
        history=history,
        wall_seconds=time.perf_counter() - t_call,
        num_steps=step - start_step,
        resumed=resumed,
        final_state=state,
    )


def train_concurrently(
    runs: Mapping[str, Mapping[str, Any]], *, max_workers: int | None = None
) -> dict[str, TrainResult]:
    """Run several independent :func:`train` calls at the same time, one thread each.

    Small models leave most of a multi-core CPU idle (each step is a chain of small,
    mostly sequential kernels); XLA runs the programs of different threads side by side,
    so several models train in about the wall time of the slowest rather than the sum.
    Every run is the same pure computation as alone: results do not depend on the
    interleaving (each run is bitwise equal to a sequential one on the same machine).

    Arguments:
        runs: ``name -> keyword arguments of train`` (without ``name``, ``stop``,
            ``progress_position`` and ``queue_next_chunk``, which are set here). Order sets
            the progress-bar lines.
        max_workers: threads (default: one per run).

    Returns:
        ``name -> TrainResult``, in the order of ``runs``.

    Raises:
        The first run's exception (in ``runs`` order) once every run has ended, e.g.
        :class:`TrainingDiverged`. On ``KeyboardInterrupt`` every run saves its state at
        its next chunk boundary (resume with ``resume=True``), then it is re-raised.
    """
    from concurrent.futures import ThreadPoolExecutor, wait

    if not runs:
        return {}
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max_workers or len(runs), thread_name_prefix="train")
    on_cpu = jax.default_backend() == "cpu"
    # JAX's context-manager settings are thread-local: carry the caller's into each thread.
    settings = {
        jax.debug_nans: jax.config.jax_debug_nans,
        jax.debug_infs: jax.config.jax_debug_infs,
        jax.enable_x64: jax.config.jax_enable_x64,
        jax.default_matmul_precision: jax.config.jax_default_matmul_precision,
    }

    def run(**kwargs):
        with contextlib.ExitStack() as stack:
            for context, value in settings.items():
                stack.enter_context(context(value))
            return train(**kwargs)

    futures = {
        name: pool.submit(
            run,
            name=name,
            stop=stop,
            progress_position=i,
            queue_next_chunk=not on_cpu,
            **kwargs,
        )
        for i, (name, kwargs) in enumerate(runs.items())
    }
    try:
        wait(futures.values())
    except KeyboardInterrupt:
        stop.set()
        wait(futures.values())
        raise
    finally:
        pool.shutdown(wait=True)
    for future in futures.values():
        if future.exception() is not None:
            raise future.exception()
    return {name: future.result() for name, future in futures.items()}


def interrupt_on_signals() -> None:
    """Make SIGTERM (schedulers, ``kill``) and SIGINT act as Ctrl-C in the main thread.

    `train` and `train_concurrently` answer ``KeyboardInterrupt`` by saving every run's
    state at its next chunk boundary, so a terminated job resumes with ``--resume`` and
    loses nothing. SIGINT is reset too because a shell starts background jobs with it
    ignored. Meant for command-line entry points; a no-op outside the main thread, where
    Python does not allow signal handlers.
    """

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
