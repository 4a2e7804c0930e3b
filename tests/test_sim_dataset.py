"""Dataset cache (reuse, invalidation, corruption) and the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from egnn_jax.sim import (
    ChargedConfig,
    CorruptDatasetError,
    ThreeBodyConfig,
    cache_path,
    load_dataset,
    load_or_simulate,
    save_dataset,
)
from egnn_jax.sim.__main__ import main as cli_main

TINY = ChargedConfig(n_trajectories=8, n_steps=300, seed=5)


def test_cache_reuse(tmp_path):
    first = load_or_simulate(TINY, tmp_path, progress=False)
    assert first.metadata["cache"] == "generated"
    second = load_or_simulate(TINY, tmp_path, progress=False)
    assert second.metadata["cache"] == "hit"
    np.testing.assert_array_equal(first.x, second.x)
    np.testing.assert_array_equal(first.charges, second.charges)
    meta = second.metadata
    assert meta["config"]["seed"] == 5 and meta["seed"] == 5
    assert {"jax", "diffrax", "numpy"} <= set(meta["versions"])
    assert len(meta["content_hash"]) == 64
    assert [p.name for p in tmp_path.iterdir()] == [cache_path(TINY, tmp_path).name]  # no tmp


def test_cache_invalidation_on_config_change(tmp_path):
    load_or_simulate(TINY, tmp_path, progress=False)
    other = ChargedConfig(n_trajectories=8, n_steps=300, seed=6)
    assert cache_path(other, tmp_path) != cache_path(TINY, tmp_path)
    ds = load_or_simulate(other, tmp_path, progress=False)
    assert ds.metadata["cache"] == "generated" and ds.metadata["config"]["seed"] == 6
    # a file at the right name but holding another config is not trusted
    path = cache_path(TINY, tmp_path)
    path.write_bytes(cache_path(other, tmp_path).read_bytes())
    ds = load_or_simulate(TINY, tmp_path, progress=False)
    assert ds.metadata["cache"] == "generated" and ds.metadata["config"]["seed"] == 5


def test_truncated_file_is_regenerated_with_message(tmp_path, capsys):
    good = load_or_simulate(TINY, tmp_path, progress=False)
    path = cache_path(TINY, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDatasetError):
        load_dataset(path)
    ds = load_or_simulate(TINY, tmp_path, progress=False)
    assert "regenerating" in capsys.readouterr().err
    assert ds.metadata["cache"] == "generated"
    np.testing.assert_array_equal(ds.x, good.x)
    assert load_dataset(path).metadata["content_hash"] == good.metadata["content_hash"]


def test_tampered_arrays_fail_hash(tmp_path, capsys):
    ds = load_or_simulate(TINY, tmp_path, progress=False)
    path = cache_path(TINY, tmp_path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["x"] = arrays["x"] + 1.0
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(CorruptDatasetError, match="hash"):
        load_dataset(path)
    again = load_or_simulate(TINY, tmp_path, progress=False)
    assert "regenerating" in capsys.readouterr().err
    np.testing.assert_array_equal(again.x, ds.x)


def test_save_load_roundtrip_three_body(tmp_path):
    cfg = ThreeBodyConfig(n_trajectories=4, n_saved=10, dim=3, seed=1)
    ds = load_or_simulate(cfg, tmp_path, progress=False)
    back = load_dataset(save_dataset(ds, tmp_path / "copy.npz"))
    np.testing.assert_array_equal(back.masses, ds.masses)
    assert back.charges is None and back.metadata["kind"] == "three-body"
    assert "n_rejected" in back.metadata and "median_rel_energy_error" in back.metadata


def test_cli_three_body(tmp_path, capsys):
    out = tmp_path / "tb.npz"
    argv = ["three-body", "--n", "4", "--seed", "2", "--out", str(out), "--dim", "3"]
    assert cli_main([*argv, "--n-saved", "10", "--no-progress"]) == 0
    assert "rejected trajectories:" in capsys.readouterr().out
    with np.load(out) as f:
        assert f["x"].shape == (4, 10, 3, 3) and f["v"].shape == (4, 10, 3, 3)
        assert f["t"].shape == (10,) and f["masses"].shape == (4, 3)
        meta = json.loads(str(f["metadata_json"]))
    assert meta["config"]["dim"] == 3 and meta["config"]["seed"] == 2


def test_cli_charged_subprocess(tmp_path):
    out = tmp_path / "ch.npz"
    cmd = [sys.executable, "-m", "egnn_jax.sim", "charged", "--n", "3", "--seed", "1"]
    cmd += ["--out", str(out), "--n-steps", "300", "--no-progress"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    with np.load(out) as f:
        assert f["x"].shape == (3, 2, 5, 3) and f["charges"].shape == (3, 5)
        assert json.loads(str(f["metadata_json"]))["config"]["n_steps"] == 300


def test_cli_charged_numpy_legacy_split(tmp_path):
    # The valid split of a legacy stream is the continuation of its train split.
    common = ["charged", "--seed", "43", "--n-steps", "300", "--no-progress"]
    common += ["--sampler", "numpy-legacy", "--legacy-split-sizes", "2", "1"]
    both, valid = tmp_path / "train3.npz", tmp_path / "valid.npz"
    assert cli_main([*common, "--n", "3", "--out", str(both)]) == 0
    assert cli_main([*common, "--n", "1", "--split", "valid", "--out", str(valid)]) == 0
    with np.load(both) as a, np.load(valid) as b:
        np.testing.assert_array_equal(a["x"][2:], b["x"])
        meta = json.loads(str(b["metadata_json"]))
    assert meta["config"]["sampler"] == "numpy-legacy"
    assert meta["config"]["legacy_split_sizes"] == [2, 1]


@pytest.mark.parametrize("system", ["three-body", "charged"])
def test_cli_help_documents_options_and_defaults(system, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main([system, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--n ", "--seed", "--out", "--dim", "--no-progress"):
        assert opt in text
    assert text.count("(default:") >= 8


def test_cli_rejects_bad_input(tmp_path):
    with pytest.raises(SystemExit):
        cli_main(["three-body", "--n", "0", "--out", str(tmp_path / "a.npz")])
    with pytest.raises(SystemExit):
        cli_main(["three-body", "--dim", "4", "--out", str(tmp_path / "a.npz")])
