"""scripts/reference_nbody_scale.py and reference_complexes.py: our splits in the HEGNN and
EGHN authors' file layouts.

The training itself needs PyTorch and the authors' checkouts (not in CI); what is checked
here is that the authors' data set classes will read our systems at their frames (N-body:
`loc[:, 30]`, `vel[:, 30]`, `loc[:, 40]`, charges `[S, N, 1]`; complexes: 10 and 25).
"""

import ast
import importlib.util
import pickle
from pathlib import Path

import numpy as np


def _script(name: str):
    """Import `scripts/<name>.py` (the scripts folder is no package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _script("reference_nbody_scale")
reference_complexes = _script("reference_complexes")


def test_split_lands_at_the_reference_frames(tmp_path):
    rng = np.random.default_rng(0)
    s, n = 4, 5
    arrays = {
        "x0": rng.normal(size=(s, n, 3)).astype(np.float32),
        "v0": rng.normal(size=(s, n, 3)).astype(np.float32),
        "q": rng.choice([-1.0, 1.0], size=(s, n)).astype(np.float32),
        "xT": rng.normal(size=(s, n, 3)).astype(np.float32),
    }
    reference.write_reference_files(arrays, "valid", tmp_path)
    suffix = f"valid_charged{reference.DATASET_NAME}"
    loc = np.load(tmp_path / f"loc_{suffix}.npy")
    vel = np.load(tmp_path / f"vel_{suffix}.npy")
    charges = np.load(tmp_path / f"charges_{suffix}.npy")
    assert loc.shape == vel.shape == (s, 41, n, 3)
    np.testing.assert_array_equal(loc[:, 30], arrays["x0"])
    np.testing.assert_array_equal(loc[:, 40], arrays["xT"])
    np.testing.assert_array_equal(vel[:, 30], arrays["v0"])
    np.testing.assert_array_equal(charges, arrays["q"][..., None])
    assert np.load(tmp_path / f"edges_{suffix}.npy").shape == (s, n, n)
    with open(tmp_path / f"cfg_{suffix}.pkl", "rb") as f:
        assert pickle.load(f) is None


def test_stand_ins_only_for_missing_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(reference.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(reference.sys, "path", list(reference.sys.path))
    made = reference.install_shims(tmp_path)
    assert made == ["torch_scatter", "torch_sparse"]
    assert reference.sys.path[0] == str(tmp_path)
    tree = ast.parse((tmp_path / "torch_scatter" / "__init__.py").read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets}
    # what the authors' models import from torch_scatter
    assert {"scatter", "scatter_sum", "scatter_add", "scatter_mean"} <= names
    monkeypatch.setattr(reference.importlib.util, "find_spec", lambda name: object())
    assert reference.install_shims(tmp_path / "none") == []


def test_complexes_split_drops_padding_and_lists_each_complex(tmp_path):
    rng = np.random.default_rng(1)
    s, n = 2, 6
    node_mask = np.array([[True] * 6, [True] * 4 + [False] * 2])
    arrays = {
        "x0": rng.normal(size=(s, n, 3)).astype(np.float32),
        "v0": rng.normal(size=(s, n, 3)).astype(np.float32),
        "xT": rng.normal(size=(s, n, 3)).astype(np.float32),
        "q": rng.choice([-1.0, 1.0], size=(s, n)).astype(np.float32),
        "complex_id": np.array([[0, 1, 1, 0, 2, 2], [1, 0, 1, 0, 0, 0]], np.int32),
        "node_mask": node_mask,
    }
    reference_complexes.write_reference_files(arrays, "test", tmp_path, "2_3_5")

    def load(key):
        with open(tmp_path / f"{key}_test_charged2_3_5.pkl", "rb") as f:
            return pickle.load(f)

    loc, vel, charges, edges, cfg = (load(k) for k in ("loc", "vel", "charges", "edges", "cfg"))
    assert [a.shape for a in loc] == [(26, 6, 3), (26, 4, 3)]
    np.testing.assert_allclose(loc[1][10], arrays["x0"][1, :4])
    np.testing.assert_allclose(loc[1][25], arrays["xT"][1, :4])
    np.testing.assert_allclose(vel[0][10], arrays["v0"][0])
    assert charges[1].shape == (4, 1)
    q = arrays["q"][1, :4].astype(np.float64)
    np.testing.assert_allclose(edges[1], q[:, None] * q[None, :])
    assert cfg[0] == {"Complex": [[0, 3], [1, 2], [4, 5]]}
    assert cfg[1] == {"Complex": [[1, 3], [0, 2]]}
