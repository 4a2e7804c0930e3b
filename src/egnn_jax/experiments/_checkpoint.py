"""Orbax checkpoints with named trees, and the fingerprints that keep runs from mixing.

Every checkpoint stores its arrays as a nested dict keyed by the pytree's path names
(``params/layer_0/edge_in/kernel``, ``opt_state/1/0/mu/...``) together with a JSON manifest of
every name's shape and dtype. Restoring compares the manifest with the tree it restores into
and names the first paths that differ, instead of loading leaves by position: two kernels of
the same shape that swap places after a refactor are an error, not a silent mix-up.

A run's *fingerprint* (data content hashes, model spec, optimiser settings, seeds,
protocol) is stored with its checkpoints; `check_fingerprint` refuses to continue a run whose
fingerprint differs and names the field and both values.

Layout of one run ``name`` in a workdir:

    <workdir>/checkpoints/<name>/latest/<step>/   full state, for --resume (not committed)
    <workdir>/best/<name>/<step>/                  best-validation parameters (committed)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

__all__ = [
    "ABSENT",
    "CheckpointMismatchError",
    "FingerprintMismatchError",
    "RunCheckpoint",
    "RunExistsError",
    "best_dir",
    "check_fingerprint",
    "fingerprint_differences",
    "key_data",
    "latest_dir",
    "load_params",
    "manifest",
    "read_params_meta",
    "save_params",
]

PyTree = Any
FORMAT_VERSION = 2


class CheckpointMismatchError(ValueError):
    """A checkpoint's tree (names, shapes or dtypes) differs from the tree it restores into."""


class FingerprintMismatchError(ValueError):
    """A run would continue (or be reported next to) a run made with other data or settings."""


class RunExistsError(RuntimeError):
    """A new run would replace one already on disk, and neither resume nor overwrite was asked."""


def latest_dir(workdir: str | Path, name: str) -> Path:
    """``<workdir>/checkpoints/<name>/latest``: the resumable state of run `name`."""
    return Path(workdir).expanduser().resolve() / "checkpoints" / name / "latest"


def best_dir(workdir: str | Path, name: str) -> Path:
    """``<workdir>/best/<name>``: the best-validation parameters of run `name`."""
    return Path(workdir).expanduser().resolve() / "best" / name


# --------------------------------------------------------------------------------------
# Named trees
# --------------------------------------------------------------------------------------


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _named(tree: PyTree) -> tuple[list[str], list, Any]:
    """`(names, leaves, treedef)`: each leaf's path as ``a/b/c``, in flattening order."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = ["/".join(_key_name(k) for k in path) or "value" for path, _ in with_path]
    if len(set(names)) != len(names):
        raise ValueError("the tree has two leaves with the same path name")
    return names, [leaf for _, leaf in with_path], treedef


def _nest(names: list[str], leaves: list) -> dict:
    out: dict = {}
    for name, leaf in zip(names, leaves, strict=True):
        node = out
        *parents, last = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = leaf
    return out


def _lookup(nested: dict, name: str):
    for part in name.split("/"):
        nested = nested[part]
    return nested


def manifest(tree: PyTree) -> dict[str, dict]:
    """``{path name: {"shape": [...], "dtype": "float32"}}`` of every leaf."""
    names, leaves, _ = _named(tree)
    return {
        n: {"shape": list(jnp.shape(x)), "dtype": str(jnp.result_type(x))}
        for n, x in zip(names, leaves, strict=True)
    }


def check_manifest(saved: dict, expected: dict, where: Path) -> None:
    """Raise `CheckpointMismatchError` naming the paths whose presence, shape or dtype differ."""
    problems = []
    for name in sorted(set(saved) | set(expected)):
        if name not in expected:
            problems.append(f"{name} is in the checkpoint but not in the model")
        elif name not in saved:
            problems.append(f"{name} is missing from the checkpoint")
        elif saved[name] != expected[name]:
            got, want = saved[name], expected[name]
            problems.append(
                f"{name} has shape {tuple(got['shape'])} {got['dtype']} in the checkpoint, "
                f"the model expects {tuple(want['shape'])} {want['dtype']}"
            )
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointMismatchError(
            f"checkpoint {where} does not fit the model: {'; '.join(problems[:3])}{more}"
        )


def _abstract(tree: PyTree) -> PyTree:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x), sharding=sharding),
        tree,
    )


def _is_typed_key(key) -> bool:
    return jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def key_data(key) -> jax.Array:
    """The raw uint32 data of a typed or legacy PRNG key."""
    return jax.random.key_data(key) if _is_typed_key(key) else jnp.asarray(key)


def _like_key(data, template):
    if _is_typed_key(template):
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(template))
    return data


# --------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------


def _flatten_dict(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten_dict(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


class _Absent:
    def __repr__(self):
        return "(absent)"


ABSENT = _Absent()


def fingerprint_differences(
    saved: dict, current: dict, defaults: Mapping[str, Any] | None = None
) -> list[tuple[str, Any, Any]]:
    """``[(dotted field, saved value, current value)]`` for every field that differs.

    `defaults` maps dotted fields to the value an older run, made before the field
    existed, had in effect: such a field absent from `saved` counts as that value. A field
    absent on one side is reported as `ABSENT`.
    """
    a, b = _flatten_dict(saved), _flatten_dict(current)
    defaults = dict(defaults or {})
    diffs = []
    for field in sorted(set(a) | set(b)):
        va = a.get(field, defaults.get(field, ABSENT))
        vb = b.get(field, ABSENT)
        if va != vb:
            diffs.append((field, va, vb))
    return diffs


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:18] + "…" + text[-18:]


def check_fingerprint(
    saved: dict,
    current: dict,
    what: str,
    hint: str = "",
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Raise `FingerprintMismatchError` naming each differing field and both values.

    The message reads "<what> was made with other settings: <field>: <saved> there,
    <current> now; ...", then `hint` (what to do about it).
    """
    diffs = fingerprint_differences(saved, current, defaults)
    if diffs:
        listed = "; ".join(f"{f}: {_short(a)} there, {_short(b)} now" for f, a, b in diffs[:4])
        more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
        hint = f"; {hint}" if hint else ""
        raise FingerprintMismatchError(f"{what} was made with other settings: {listed}{more}{hint}")


# --------------------------------------------------------------------------------------
# Orbax managers
# --------------------------------------------------------------------------------------


def _manager(directory: Path, create: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        create=create,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(directory, options=options)


def _host_copy(leaf):
    """A NumPy copy of one saved leaf. In a multi-host run every saved tree is replicated
    (parameters, optimiser state), so each process holds it whole: its own replica is the
    value, and Orbax writes host arrays from the primary process only."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        if not leaf.is_fully_replicated:
            raise ValueError(f"cannot checkpoint a sharded array of shape {leaf.shape}")
        leaf = leaf.addressable_data(0)
    return np.asarray(leaf)


def _save(manager: ocp.CheckpointManager, step: int, arrays: dict, meta: dict) -> None:
    if jax.process_count() > 1:
        arrays = jax.tree.map(_host_copy, arrays)
    args = ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta))
    if not manager.save(step, args=args, force=True):
        raise RuntimeError(f"Orbax refused to save step {step} in {manager.directory}")
    manager.wait_until_finished()


def _read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def _restore(manager: ocp.CheckpointManager, step: int, template: PyTree, saved_manifest: dict):
    """Restore the named arrays of `step` into the structure of `template`."""
    names, leaves, treedef = _named(template)
    check_manifest(saved_manifest, manifest(template), Path(manager.directory) / str(step))
    abstract = _abstract(_nest(names, leaves))
    restored = manager.restore(
        step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(abstract))
    )["arrays"]
    return jax.tree.unflatten(treedef, [_lookup(restored, n) for n in names])


class RunCheckpoint:
    """The resumable state of one run: step, params, optimiser state, key and the best
    parameters so far, plus JSON metadata (history, best step, fingerprint, manifest)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._manager = _manager(directory)

    def close(self) -> None:
        self._manager.close()

    def step(self) -> int | None:
        return self._manager.latest_step()

    def meta(self) -> dict:
        return _read_meta(self._manager, self._manager.latest_step())

    @staticmethod
    def _tree(state, best_params) -> dict:
        return {
            "step": state.step,
            "key": key_data(state.key),
            "params": state.params,
            "opt_state": state.opt_state,
            "best_params": best_params,
        }

    def save(self, state, best_params, meta: dict) -> None:
        tree = self._tree(state, best_params)
        names, leaves, _ = _named(tree)
        meta = {**meta, "format": FORMAT_VERSION, "manifest": manifest(tree)}
        _save(self._manager, int(meta["step"]), _nest(names, leaves), meta)

    def restore(self, template_state) -> tuple[Any, PyTree, dict]:
        """`(state, best_params, meta)` of the latest step, in `template_state`'s structure."""
        step = self._manager.latest_step()
        meta = _read_meta(self._manager, step)
        if meta.get("format") != FORMAT_VERSION:
            raise CheckpointMismatchError(
                f"checkpoint {self.directory / str(step)} has format {meta.get('format')!r}, "
                f"this version reads format {FORMAT_VERSION}"
            )
        template = self._tree(template_state, template_state.params)
        tree = _restore(self._manager, step, template, meta["manifest"])
        state = type(template_state)(
            step=tree["step"],
            params=tree["params"],
            opt_state=tree["opt_state"],
            key=_like_key(tree["key"], template_state.key),
        )
        return state, tree["best_params"], meta


def save_params(directory: str | Path, params: PyTree, meta: dict) -> None:
    """Save `params` (any pytree) with `meta` (JSON; ``meta["step"]`` names the step) as the
    only checkpoint in `directory`, replacing an older step atomically."""
    with _manager(Path(directory)) as manager:
        if manager.latest_step() == int(meta["step"]):
            return
        names, leaves, _ = _named(params)
        meta = {**meta, "format": FORMAT_VERSION, "manifest": manifest(params)}
        _save(manager, int(meta["step"]), _nest(names, leaves), meta)


def has_saved_step(directory: str | Path) -> bool:
    """Whether `directory` holds a finished checkpoint; creates nothing. A run killed before
    its first save leaves only an empty folder: nothing to continue or to protect."""
    directory = Path(directory)
    if not directory.is_dir():
        return False
    with _manager(directory, create=False) as manager:
        return manager.latest_step() is not None


def read_params_meta(directory: str | Path) -> dict | None:
    """The metadata of the parameters saved in `directory`, or None if there are none."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    with _manager(directory, create=False) as manager:
        step = manager.latest_step()
        return None if step is None else _read_meta(manager, step)


def load_params(directory: str | Path, like: PyTree) -> tuple[PyTree, dict]:
    """Restore the parameters saved by `save_params` into the structure of `like`.

    Arguments:
        directory: the folder given to `save_params` (e.g. ``best_dir(workdir, name)``).
        like: a pytree with the names, shapes and dtypes of the parameters (freshly
            initialised params, or ``jax.eval_shape`` of the init).

    Returns:
        ``(params, meta)``.

    Raises:
        FileNotFoundError: nothing saved in `directory`.
        CheckpointMismatchError: the saved tree differs from `like` (the message names the
            first differing paths), or the checkpoint has another format version.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no saved parameters in {directory}")
    with _manager(directory, create=False) as manager:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no saved parameters in {directory}")
        meta = _read_meta(manager, step)
        if meta.get("format") != FORMAT_VERSION or "manifest" not in meta:
            raise CheckpointMismatchError(
                f"checkpoint {directory / str(step)} has format {meta.get('format')!r}, "
                f"this version reads format {FORMAT_VERSION}"
            )
        return _restore(manager, step, like, meta["manifest"]), meta
