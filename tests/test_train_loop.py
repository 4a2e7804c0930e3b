"""Tests of the training loop (egnn_jax.experiments._loop / _step) on a toy linear model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from egnn_jax._atomic import save_json_atomic
from egnn_jax.experiments import _loop, _step
from egnn_jax.experiments._checkpoint import (
    FingerprintMismatchError,
    RunExistsError,
    best_dir,
    latest_dir,
    load_params,
)
from egnn_jax.experiments._concurrency import interrupt_on_signals, train_concurrently
from egnn_jax.experiments._loop import TrainingDiverged, train
from egnn_jax.experiments._step import (
    init_train_state,
    make_optimizer,
    make_train_chunk,
    step_key,
)


def load_best_params(workdir, name, like):
    return load_params(best_dir(workdir, name), like)[0]


def checkpoint_dir(workdir, name):
    return latest_dir(workdir, name).parent


D = 3
N_TRAIN = 96
N_VAL = 40
W_TRUE = np.array([2.0, -1.0, 0.5], np.float32)


def _data(seed: int, n: int, w=W_TRUE):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype(np.float32)
    y = x @ np.asarray(w, np.float32) + 0.3 + 0.01 * rng.normal(size=n).astype(np.float32)
    return {"x": x, "y": y.astype(np.float32)}


TRAIN = _data(0, N_TRAIN)
VAL = _data(1, N_VAL)


def init_params():
    return {"w": jnp.zeros((D,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def loss_fn(params, batch, info):
    pred = batch["x"] @ params["w"] + params["b"]
    return jnp.mean((pred - batch["y"]) ** 2)


def eval_fn(params, data):
    pred = data["x"] @ params["w"] + params["b"]
    err = pred - data["y"]
    return {"val_loss": jnp.mean(err**2), "val_mae": jnp.mean(jnp.abs(err))}


def _run_kwargs(**overrides):
    kwargs = dict(
        loss_fn=loss_fn,
        params=init_params(),
        train_data=TRAIN,
        eval_fn=eval_fn,
        val_data=VAL,
        key=jax.random.key(0),
        num_steps=60,
        batch_size=16,  # 6 steps per epoch: chunks of 10 steps straddle epochs
        eval_every=10,
        learning_rate=0.05,
        progress=False,
    )
    kwargs.update(overrides)
    return kwargs


def run(**overrides):
    return train(**({"name": "toy"} | _run_kwargs(**overrides)))


def assert_trees_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def strip_wall(history):
    return [{k: v for k, v in h.items() if k != "wall_time"} for h in history]


def test_loss_decreases():
    res = run()
    hist = res.history
    assert [h["step"] for h in hist] == [10, 20, 30, 40, 50, 60]
    assert hist[-1]["train_loss"] < 0.05 * hist[0]["train_loss"]
    initial_val = float(eval_fn(init_params(), VAL)["val_loss"])
    assert res.best_metrics["val_loss"] < 0.05 * initial_val
    assert res.num_steps == 60 and not res.resumed
    assert int(res.final_state.step) == 60
    assert set(hist[0]) == {"step", "train_loss", "val_loss", "val_mae", "wall_time"}


def test_without_a_terminal_each_evaluation_is_logged_in_place_of_the_bar(caplog):
    # pytest's captured stderr is no terminal, so `progress=None` disables the bar.
    with caplog.at_level("INFO", logger="egnn_jax.experiments._loop"):
        run(num_steps=20, progress=None)
    lines = [r.getMessage() for r in caplog.records if "step" in r.getMessage()]
    assert len(lines) == 2
    assert lines[1].startswith("run 'toy': step 20 of 20 (epoch 3.33333), loss ")
    caplog.clear()
    with caplog.at_level("INFO", logger="egnn_jax.experiments._loop"):
        run(num_steps=20, progress=False)
    assert not [r for r in caplog.records if "step" in r.getMessage()]


def test_same_seed_same_result_and_seed_matters():
    a = run(num_steps=30)
    b = run(num_steps=30)
    assert_trees_equal(a.final_state, b.final_state)
    assert strip_wall(a.history) == strip_wall(b.history)
    c = run(num_steps=30, key=jax.random.key(1))
    assert not np.array_equal(np.asarray(a.final_state.params["w"]), c.final_state.params["w"])


def test_legacy_uint32_key_accepted():
    res = run(num_steps=10, key=jax.random.PRNGKey(0))
    assert np.isfinite(res.best_metrics["val_loss"])


def test_batches_follow_fold_in_epoch_permutations():
    # SGD(lr=1) on loss = -sum(c[idx]) increments c at every sampled index.
    n, bs = 10, 3  # 3 steps per epoch, one sample dropped per epoch
    key = jax.random.key(3)
    opt = optax.sgd(1.0)
    # chunks of 2 steps: most chunks start in the middle of an epoch
    chunk = make_train_chunk(
        lambda p, b, i: -jnp.sum(p["c"][b["i"]]), opt, batch_size=bs, n_train=n, chunk_len=2
    )
    state = init_train_state({"c": jnp.zeros(n)}, opt, key)
    data = {"i": jnp.arange(n)}
    for first_step in range(0, 12, 2):
        prev = state.params["c"]
        state, losses = chunk(state, data)
        expected = np.zeros(n)
        for s in (first_step, first_step + 1):
            epoch, pos = divmod(s, n // bs)
            perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
            expected[perm[pos * bs : (pos + 1) * bs]] += 1
        np.testing.assert_array_equal(np.asarray(state.params["c"] - prev), expected)
        assert losses.shape == (2,)
    assert float(state.params["c"].sum()) == 12 * bs
    assert int(state.step) == 12
    assert chunk._cache_size() == 1


def test_resume_equals_uninterrupted(tmp_path):
    full = run(workdir=tmp_path / "full", checkpoint_every=20)
    half = run(workdir=tmp_path / "split", num_steps=30, checkpoint_every=20)
    assert half.num_steps == 30
    _step._JIT_CACHE.clear()  # the resumed run compiles afresh, as in a new process
    resumed = run(workdir=tmp_path / "split", resume=True, checkpoint_every=20)
    assert resumed.resumed and resumed.num_steps == 30
    assert_trees_equal(full.final_state, resumed.final_state)
    assert_trees_equal(full.params, resumed.params)
    assert full.best_step == resumed.best_step
    assert full.best_metrics == resumed.best_metrics
    assert strip_wall(full.history) == strip_wall(resumed.history)
    # Resuming a finished run trains no further and returns the same result.
    again = run(workdir=tmp_path / "split", resume=True, checkpoint_every=20)
    assert again.num_steps == 0 and again.best_step == full.best_step
    assert_trees_equal(again.params, full.params)
    # resume=True without a checkpoint starts fresh.
    fresh = run(workdir=tmp_path / "other", resume=True, num_steps=10)
    assert not fresh.resumed and fresh.num_steps == 10


def test_keyboard_interrupt_saves_state_and_resume_is_exact(tmp_path, monkeypatch):
    full = run(num_steps=40)
    real_get = jax.device_get
    calls = {"n": 0}

    def flaky_get(x):
        calls["n"] += 1
        if calls["n"] == 3:  # while waiting for the third chunk (steps 21..30)
            raise KeyboardInterrupt
        return real_get(x)

    monkeypatch.setattr(_loop.jax, "device_get", flaky_get)
    # checkpoint_every=40: step 20 is only on disk thanks to the interrupt handler.
    with pytest.raises(KeyboardInterrupt):
        run(num_steps=40, workdir=tmp_path, checkpoint_every=40)
    monkeypatch.setattr(_loop.jax, "device_get", real_get)
    assert sorted(p.name for p in (checkpoint_dir(tmp_path, "toy") / "latest").iterdir()) == ["20"]
    resumed = run(num_steps=40, workdir=tmp_path, checkpoint_every=40, resume=True)
    assert resumed.resumed and resumed.num_steps == 20
    assert_trees_equal(full.final_state, resumed.final_state)
    assert strip_wall(full.history) == strip_wall(resumed.history)


def poison_after(k: int) -> optax.GradientTransformation:
    """Turns the updates into NaN from the (k+1)-th update on."""

    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(updates, count, params=None):
        scale = jnp.where(count >= k, jnp.nan, 1.0)
        return jax.tree.map(lambda u: u * scale, updates), count + 1

    return optax.GradientTransformation(init, update)


def test_nan_raises_and_keeps_last_good_checkpoint(tmp_path, allow_nans):
    # The 24th update writes NaN params, so the loss of step 25 is the first NaN.
    opt = optax.chain(make_optimizer(0.05, 0.0), poison_after(23))
    with pytest.raises(TrainingDiverged, match=r"step 25\b") as info:
        run(optimizer=opt, workdir=tmp_path, checkpoint_every=30)
    err = info.value
    assert err.step == 25
    assert err.last_finite_loss is not None and np.isfinite(err.last_finite_loss)
    assert err.checkpoint_step == 20  # flushed on divergence (not a checkpoint_every multiple)
    root = checkpoint_dir(tmp_path, "toy")
    assert [p.name for p in (root / "latest").iterdir()] == ["20"]
    assert sorted(p.name for p in best_dir(tmp_path, "toy").iterdir()) == ["20"]
    best = load_best_params(tmp_path, "toy", init_params())
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(best))
    # The saved best equals the best of an identical run stopped before the NaN.
    ref = run(optimizer=optax.chain(make_optimizer(0.05, 0.0), poison_after(23)), num_steps=20)
    assert_trees_equal(best, ref.params)


def test_best_checkpoint_is_lowest_val_loss(tmp_path):
    # Validation targets come from w = W_TRUE / 2: val_loss first falls, then rises.
    val = _data(1, N_VAL, w=W_TRUE / 2)
    res = run(val_data=val, workdir=tmp_path, num_steps=80)
    vals = [h["val_loss"] for h in res.history]
    i = int(np.argmin(vals))
    assert 0 < i < len(vals) - 1, vals  # interior minimum: selection is non-trivial
    assert res.best_step == res.history[i]["step"]
    assert res.best_metrics == {k: res.history[i][k] for k in ("val_loss", "val_mae")}
    assert float(eval_fn(res.params, val)["val_loss"]) == pytest.approx(vals[i], rel=1e-6)
    assert not np.array_equal(np.asarray(res.params["w"]), res.final_state.params["w"])
    assert_trees_equal(load_best_params(tmp_path, "toy", init_params()), res.params)


def test_no_recompilation_across_chunks():
    traces = {"loss": 0, "eval": 0}

    def counting_loss(params, batch, info):
        traces["loss"] += 1
        return loss_fn(params, batch, info)

    def counting_eval(params, data):
        traces["eval"] += 1
        return eval_fn(params, data)

    res = run(loss_fn=counting_loss, eval_fn=counting_eval, num_steps=40)
    assert len(res.history) == 4
    assert traces == {"loss": 1, "eval": 1}


def test_batched_evaluation_matches_whole():
    a = run(num_steps=20)
    b = run(num_steps=20, eval_batch_size=16)  # 2 batches of 16 + remainder of 8
    for ha, hb in zip(a.history, b.history, strict=True):
        assert hb["val_loss"] == pytest.approx(ha["val_loss"], rel=1e-5)
        assert hb["val_mae"] == pytest.approx(ha["val_mae"], rel=1e-5)


def test_save_json_atomic(tmp_path):
    path = tmp_path / "sub" / "r.json"
    save_json_atomic(path, {"a": 1, "b": [1.5]})
    save_json_atomic(path, {"a": 2})
    assert path.read_text().strip().startswith("{")
    import json

    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"batch_size": N_TRAIN + 1}, "exceeds the training-set size"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"eval_every": 0}, "eval_every must be a positive int"),
        ({"num_steps": 55}, "multiple of eval_every"),
        ({"checkpoint_every": 15}, "checkpoint_every"),
        ({"train_data": {"x": TRAIN["x"], "y": TRAIN["y"][:-1]}}, "mismatched leading"),
        ({"train_data": {}}, "no array leaves"),
        ({"resume": True}, "require a workdir"),
        ({"eval_fn": lambda p, d: {"loss": loss_fn(p, d, None)}}, "val_loss"),
        ({"eval_fn": lambda p, d: {"val_loss": jnp.zeros(2)}}, "scalars"),
        ({"loss_fn": lambda p, b, i: (b["x"] @ p["w"]) ** 2}, "scalar"),
        ({"patience": 0}, "patience"),
        ({"overwrite": True}, "require a workdir"),
        ({"key": 0}, "PRNG key"),
        ({"name": "a/b"}, "name"),
        ({"eval_batch_size": N_VAL + 1}, "eval_batch_size"),
    ],
)
def test_bad_arguments(overrides, match):
    with pytest.raises(ValueError, match=match):
        run(**overrides)


def test_resume_with_different_settings_is_rejected(tmp_path):
    run(workdir=tmp_path, num_steps=10)
    with pytest.raises(FingerprintMismatchError, match=r"loop\.batch_size: 16 there, 8 now"):
        run(workdir=tmp_path, num_steps=20, batch_size=8, resume=True)
    # Another seed was a warning once; now the shuffling key is part of the fingerprint.
    with pytest.raises(FingerprintMismatchError, match=r"loop\.key"):
        run(workdir=tmp_path, num_steps=20, key=jax.random.key(5), resume=True)
    fp = {"data": {"train": "abc"}}
    run(workdir=tmp_path / "fp", num_steps=10, fingerprint=fp)
    with pytest.raises(FingerprintMismatchError, match=r"data\.train: 'abc' there, 'xyz' now"):
        run(
            workdir=tmp_path / "fp",
            num_steps=20,
            fingerprint={"data": {"train": "xyz"}},
            resume=True,
        )
    run(workdir=tmp_path / "fp", num_steps=20, fingerprint=fp, resume=True)  # same: fine


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    first = run(workdir=tmp_path, num_steps=20)
    with pytest.raises(RunExistsError, match="resume it or overwrite it"):
        run(workdir=tmp_path, num_steps=20)
    assert (latest_dir(tmp_path, "toy") / "20").is_dir()  # nothing was deleted
    again = run(workdir=tmp_path, num_steps=20, overwrite=True)
    assert again.num_steps == 20 and not again.resumed
    assert_trees_equal(again.params, first.params)


def test_a_run_killed_before_its_first_save_is_no_run(tmp_path):
    """Killed before its first checkpoint (SIGKILL, a machine restart), a run leaves empty
    folders only: a plain start trains it afresh instead of refusing."""
    latest_dir(tmp_path, "toy").mkdir(parents=True)
    best_dir(tmp_path, "toy").mkdir(parents=True)
    fresh = run(workdir=tmp_path, num_steps=20)
    assert fresh.num_steps == 20 and not fresh.resumed
    with pytest.raises(RunExistsError, match="resume it or overwrite it"):
        run(workdir=tmp_path, num_steps=20)  # now it has saved, so it is a run


def test_resuming_to_fewer_steps_is_an_error(tmp_path):
    run(workdir=tmp_path, num_steps=40)
    with pytest.raises(ValueError, match="already done 40 steps"):
        run(workdir=tmp_path, num_steps=20, resume=True)


def test_best_parameters_without_resumable_state_cannot_be_resumed(tmp_path):
    run(workdir=tmp_path, num_steps=20)
    import shutil

    shutil.rmtree(checkpoint_dir(tmp_path, "toy"))  # as in a clone: only best/ is committed
    with pytest.raises(RunExistsError, match="no resumable state"):
        run(workdir=tmp_path, num_steps=40, resume=True)


def test_early_stopping_and_its_resume(tmp_path):
    # The validation targets come from w / 2, so val_loss has an interior minimum.
    val = _data(1, N_VAL, w=W_TRUE / 2)
    full = run(val_data=val, num_steps=200)
    vals = [h["val_loss"] for h in full.history]
    best = int(np.argmin(vals))
    res = run(val_data=val, num_steps=200, patience=3, workdir=tmp_path)
    assert res.stopped_early and res.steps_done == full.history[best + 3]["step"] < 200
    assert res.best_step == full.best_step
    assert strip_wall(res.history) == strip_wall(full.history[: best + 4])
    again = run(val_data=val, num_steps=200, patience=3, workdir=tmp_path, resume=True)
    assert again.num_steps == 0 and again.stopped_early and again.best_step == res.best_step


def test_step_index_reaches_the_loss():
    """A schedule on the step index: the loss is 0 until step 6, then the usual one."""

    def scheduled(params, batch, info):
        return jnp.where(info.step >= 6, loss_fn(params, batch, info), 0.0 * params["b"])

    res = run(loss_fn=scheduled, num_steps=10, eval_every=5, batch_size=16)
    assert res.history[0]["train_loss"] == 0.0 and res.history[1]["train_loss"] > 0.0
    np.testing.assert_array_equal(
        np.asarray(run(loss_fn=scheduled, num_steps=5, eval_every=5, batch_size=16).params["w"]),
        0.0,
    )


def test_loss_keys_are_a_pure_function_of_key_and_step(tmp_path):
    def noisy_loss(params, batch, info):  # noise injection: the gradient depends on the key
        noise = 0.1 * jax.random.normal(info.key, (1, D))
        pred = (batch["x"] + noise) @ params["w"] + params["b"]
        return jnp.mean((pred - batch["y"]) ** 2)

    a = run(loss_fn=noisy_loss, num_steps=40)
    b = run(loss_fn=noisy_loss, num_steps=40)
    assert_trees_equal(a.final_state, b.final_state)
    clean = run(num_steps=40)
    assert not np.array_equal(np.asarray(a.final_state.params["w"]), clean.final_state.params["w"])
    run(loss_fn=noisy_loss, num_steps=20, workdir=tmp_path)
    resumed = run(loss_fn=noisy_loss, num_steps=40, workdir=tmp_path, resume=True)
    assert_trees_equal(a.final_state, resumed.final_state)
    # The losses' keys never coincide with the epochs' shuffling keys.
    k = jax.random.key(0)
    keys = {tuple(np.asarray(jax.random.key_data(step_key(k, s)))) for s in range(200)}
    shuffles = {
        tuple(np.asarray(jax.random.key_data(jax.random.fold_in(k, e)))) for e in range(200)
    }
    assert len(keys) == 200 and not keys & shuffles


def test_divergence_in_first_chunk_then_resume(tmp_path, allow_nans):
    with pytest.raises(TrainingDiverged) as info:
        run(optimizer=optax.chain(make_optimizer(0.05, 0.0), poison_after(3)), workdir=tmp_path)
    assert info.value.step == 5 and info.value.checkpoint_step == 0
    with pytest.raises(FileNotFoundError):
        load_best_params(tmp_path, "toy", init_params())
    # Same optimiser-state structure, without the poison: resumes from step 0.
    healthy = optax.chain(make_optimizer(0.05, 0.0), poison_after(10**9))
    res = run(optimizer=healthy, workdir=tmp_path, num_steps=20, resume=True)
    assert res.resumed and res.num_steps == 20 and res.best_step > 0


def test_concurrent_runs_equal_sequential_runs(tmp_path):
    keys = {"a": 0, "b": 1, "c": 2}
    alone = {n: run(name=n, num_steps=40, key=jax.random.key(k)) for n, k in keys.items()}
    together = train_concurrently(
        {
            n: _run_kwargs(num_steps=40, key=jax.random.key(k), workdir=tmp_path)
            for n, k in keys.items()
        }
    )
    assert list(together) == ["a", "b", "c"]
    for n in keys:
        assert_trees_equal(alone[n].final_state, together[n].final_state)
        assert strip_wall(alone[n].history) == strip_wall(together[n].history)
        assert (checkpoint_dir(tmp_path, n) / "latest" / "40").is_dir()


def test_concurrent_divergence_is_raised_after_the_other_runs_finish(tmp_path, allow_nans):
    # `allow_nans` is a thread-local JAX setting: this also checks it reaches the workers.
    bad = optax.chain(optax.adam(0.05), poison_after(14))
    with pytest.raises(TrainingDiverged, match="'bad' diverged"):
        train_concurrently(
            {
                "good": _run_kwargs(num_steps=40, workdir=tmp_path),
                "bad": _run_kwargs(num_steps=40, optimizer=bad, workdir=tmp_path),
            }
        )
    assert (checkpoint_dir(tmp_path, "good") / "latest" / "40").is_dir()
    assert (checkpoint_dir(tmp_path, "bad") / "latest" / "10").is_dir()


def test_stop_event_saves_state_then_resume_is_exact(tmp_path):
    import threading

    full = run(num_steps=40)
    stop = threading.Event()
    stop.set()  # seen after the first chunk
    with pytest.raises(KeyboardInterrupt):
        run(num_steps=40, workdir=tmp_path, checkpoint_every=40, stop=stop)
    assert sorted(p.name for p in (checkpoint_dir(tmp_path, "toy") / "latest").iterdir()) == ["10"]
    resumed = run(num_steps=40, workdir=tmp_path, checkpoint_every=40, resume=True)
    assert resumed.num_steps == 30
    assert_trees_equal(full.final_state, resumed.final_state)
    assert strip_wall(full.history) == strip_wall(resumed.history)


def test_queueing_the_next_chunk_does_not_change_results():
    queued = run(num_steps=40, queue_next_chunk=True)
    in_turn = run(num_steps=40, queue_next_chunk=False)
    assert_trees_equal(queued.final_state, in_turn.final_state)
    assert strip_wall(queued.history) == strip_wall(in_turn.history)


def test_sigterm_acts_as_keyboard_interrupt():
    import os
    import signal
    import time

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        interrupt_on_signals()
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this returns
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_gradient_clipping_and_cosine_decay():
    params = {"w": jnp.zeros(3)}
    huge, unit = {"w": jnp.array([300.0, 400.0, 0.0])}, {"w": jnp.array([0.6, 0.8, 0.0])}
    clipped = make_optimizer(0.1, 0.0, clip_norm=1.0)
    a, _ = clipped.update(huge, clipped.init(params), params)
    b, _ = clipped.update(unit, clipped.init(params), params)
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6)  # clipped to the same gradient
    # Cosine decay: the step size reaches 0 at the end of the schedule.
    decayed = make_optimizer(0.1, 0.0, decay_steps=4)
    state = decayed.init(params)
    steps = []
    for _ in range(5):
        update, state = decayed.update(unit, state, params)
        steps.append(float(jnp.linalg.norm(update["w"])))
    # (Adam's first update is the step size times the sign of each nonzero gradient entry.)
    assert steps[0] == pytest.approx(0.1 * 2**0.5, rel=1e-3) and steps[-1] == pytest.approx(
        0.0, abs=1e-9
    )
    assert steps == sorted(steps, reverse=True)
