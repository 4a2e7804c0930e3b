"""Checkpoints with named trees, fingerprints, and the atomic file helper."""

from __future__ import annotations

import os
import stat

import jax.numpy as jnp
import numpy as np
import pytest

from egnn_jax import _atomic
from egnn_jax._atomic import atomic_open, save_json_atomic
from egnn_jax.experiments._checkpoint import (
    ABSENT,
    CheckpointMismatchError,
    FingerprintMismatchError,
    check_fingerprint,
    fingerprint_differences,
    load_params,
    manifest,
    read_params_meta,
    save_params,
)

H = 4


def _params(seed=0):
    rng = np.random.default_rng(seed)
    layer = lambda: {"kernel": jnp.asarray(rng.normal(size=(H, H)), jnp.float32)}
    return {"params": {"edge_out": layer(), "node_out": layer(), "scale": jnp.float32(2.0)}}


def test_round_trip_keeps_every_array_and_the_metadata(tmp_path):
    params = _params()
    save_params(tmp_path / "best", params, {"step": 7, "metrics": {"val_loss": 0.5}})
    back, meta = load_params(tmp_path / "best", _params(1))
    for path in ("edge_out", "node_out"):
        np.testing.assert_array_equal(
            back["params"][path]["kernel"], params["params"][path]["kernel"]
        )
    assert float(back["params"]["scale"]) == 2.0
    assert meta["step"] == 7 and meta["metrics"] == {"val_loss": 0.5}
    assert meta["manifest"]["params/edge_out/kernel"] == {"shape": [H, H], "dtype": "float32"}
    assert read_params_meta(tmp_path / "best")["step"] == 7
    assert read_params_meta(tmp_path / "nothing") is None
    # A later step replaces the earlier one; only one is kept.
    save_params(tmp_path / "best", _params(2), {"step": 9})
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["9"]


def test_two_same_shaped_kernels_cannot_swap_silently(tmp_path):
    """A refactor that renames a layer: a leaf-order restore would mix them up silently."""
    save_params(tmp_path / "best", _params(), {"step": 1})
    renamed = {
        "params": {
            "edge_mlp": {"kernel": jnp.zeros((H, H))},
            "node_out": {"kernel": jnp.zeros((H, H))},
            "scale": jnp.float32(0),
        }
    }
    with pytest.raises(CheckpointMismatchError) as info:
        load_params(tmp_path / "best", renamed)
    message = str(info.value)
    assert "params/edge_mlp/kernel is missing from the checkpoint" in message
    assert "params/edge_out/kernel is in the checkpoint but not in the model" in message


def test_a_shape_or_dtype_change_names_the_path(tmp_path):
    save_params(tmp_path / "best", _params(), {"step": 1})
    wider = _params()
    wider["params"]["node_out"]["kernel"] = jnp.zeros((H + 1, H))
    with pytest.raises(
        CheckpointMismatchError,
        match=r"params/node_out/kernel has shape \(4, 4\) "
        r"float32 in the checkpoint, the model expects \(5, 4\) float32",
    ):
        load_params(tmp_path / "best", wider)
    as_int = _params()
    as_int["params"]["scale"] = jnp.int32(2)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"params/scale has shape \(\) float32 in the checkpoint, the model expects "
        r"\(\) int32",
    ):
        load_params(tmp_path / "best", as_int)
    with pytest.raises(FileNotFoundError, match="no saved parameters"):
        load_params(tmp_path / "missing", _params())


def test_manifest_names_namedtuple_and_sequence_paths():
    import optax

    opt_state = optax.adam(1e-3).init({"w": jnp.zeros(3)})
    names = set(manifest({"opt_state": opt_state}))
    assert "opt_state/0/mu/w" in names and "opt_state/0/count" in names


def test_fingerprint_differences_name_field_and_both_values():
    saved = {"config": {"sampler": "jax", "dim": 2}, "data": {"train": "abc"}}
    now = {"config": {"sampler": "numpy-legacy", "dim": 2}, "data": {"train": "abc"}, "x": 1}
    assert fingerprint_differences(saved, now) == [
        ("config.sampler", "jax", "numpy-legacy"),
        ("x", ABSENT, 1),
    ]
    with pytest.raises(
        FingerprintMismatchError,
        match=r"run 'a' was made with other settings: config\.sampler: 'jax' there, "
        r"'numpy-legacy' now; x: \(absent\) there, 1 now; do this",
    ):
        check_fingerprint(saved, now, "run 'a'", "do this")
    check_fingerprint(saved, saved, "run 'a'")


def test_fields_added_later_count_as_their_default_in_older_fingerprints():
    saved = {"config": {"dim": 2}}
    now = {"config": {"dim": 2, "clip_norm": None, "lr_schedule": "constant"}}
    defaults = {"config.clip_norm": None, "config.lr_schedule": "constant"}
    check_fingerprint(saved, now, "run 'a'", defaults=defaults)
    changed = {"config": {"dim": 2, "clip_norm": None, "lr_schedule": "cosine"}}
    with pytest.raises(FingerprintMismatchError, match=r"lr_schedule: 'constant' there"):
        check_fingerprint(saved, changed, "run 'a'", defaults=defaults)
    # A default never overrides a value the run did save.
    saved_cosine = {"config": {"dim": 2, "lr_schedule": "cosine"}}
    with pytest.raises(FingerprintMismatchError, match=r"'cosine' there, 'constant' now"):
        check_fingerprint(saved_cosine, now, "run 'a'", defaults=defaults)


def test_atomic_files_get_normal_permissions_and_a_synced_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real_fsync(fd)

    monkeypatch.setattr(_atomic.os, "fsync", recording_fsync)
    old = os.umask(0o022)
    try:
        monkeypatch.setattr(_atomic, "_UMASK", _atomic._read_umask())
        path = save_json_atomic(tmp_path / "sub" / "a.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert synced == [False, True]  # the file's data, then the folder's entry
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_atomic_write_failure_leaves_the_old_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(path, "w") as f:
        f.write("new")
        raise RuntimeError("crash while writing")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_run_killed_before_its_first_checkpoint_counts_as_no_run(tmp_path):
    """An empty resumable state (killed before anything was saved) neither blocks --resume
    nor needs --overwrite; one with a row of metrics.json is still a run."""
    from egnn_jax.experiments._workdir import _runs_on_disk

    (tmp_path / "checkpoints" / "egnn" / "latest").mkdir(parents=True)
    assert _runs_on_disk(tmp_path, {}) == {}
    fingerprint = {"experiment": "x"}
    row = {"egnn": {"fingerprint": fingerprint}}
    assert _runs_on_disk(tmp_path, row) == {"egnn": fingerprint}
    save_params(tmp_path / "best" / "gnn", _params(), {"step": 0, "fingerprint": fingerprint})
    (tmp_path / "checkpoints" / "gnn" / "latest").mkdir(parents=True)
    assert _runs_on_disk(tmp_path, {}) == {"gnn": fingerprint}
