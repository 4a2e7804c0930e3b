"""Public test helpers: check a function of a graph for E(n) equivariance.

from egnn_jax.testing import assert_equivariant
assert_equivariant(lambda h, x, **kw: egnn_jax.apply(params, cfg, h, x, **kw), key, h, x)

`assert_steerable_equivariant` also checks steerable (spherical-tensor) node features, such as
HEGNN's chi, that transform with Wigner D matrices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def random_orthogonal(key, n: int, dtype=jnp.float32, reflection: bool = True) -> jax.Array:
    """A Haar-random `[n, n]` orthogonal matrix; with `reflection`, its determinant is -1."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (n, n), dtype=dtype))
    q = q * jnp.sign(jnp.diagonal(r))[None, :]  # makes the distribution Haar
    det_sign = jnp.sign(jnp.linalg.det(q))
    want = -1.0 if reflection else 1.0
    flip = jnp.ones((n,), dtype).at[0].set(jnp.where(det_sign == want, 1.0, -1.0).astype(dtype))
    return q * flip[None, :]


def _default_rtol(dtype) -> float:
    return 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def _max_rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))


def assert_equivariant(
    fn,
    key,
    h,
    x,
    v=None,
    edge_attr=None,
    node_mask=None,
    senders=None,
    receivers=None,
    *,
    rtol: float | None = None,
    reflection: bool = True,
    translation: bool = True,
    permutation: bool = True,
):
    """Assert that `fn` is E(n)-equivariant and permutation-equivariant on one graph.

    Draws a random orthogonal matrix Q (a reflection by default), a random translation t and a
    random node permutation P, then checks
        fn(P h, P x Q^T + t, P v Q^T) == (P h_out, P x_out Q^T + t),
    i.e. h invariant, x equivariant (v rotates but is not translated). Dense edge attributes
    `[M, M, A]` are permuted on both node axes; sparse `senders`/`receivers` are relabelled.

    Arguments:
        fn: called as `fn(h, x, **kwargs)` with whichever of v, edge_attr, node_mask, senders
            and receivers are not None; returns `(h_out [M, F'], x_out [M, n])`.
        key: `jax.random` key.
        h: `[M, F]`; x: `[M, n]`; v: `[M, n]` or None; edge_attr: `[M, M, A]`, `[E, A]` or None;
        node_mask: `[M]` or None; senders, receivers: `[E]` or None.
        rtol: error bound relative to max(1, max |expected|); default 1e-10 for float64
            inputs and 1e-5 otherwise.
        reflection, translation, permutation: which transformations to apply.

    Raises:
        AssertionError: with the largest relative error of h and x.
    """
    graph = (v, edge_attr, node_mask, senders, receivers)
    flags = dict(rtol=rtol, reflection=reflection, translation=translation, permutation=permutation)
    _check(fn, key, h, x, *graph, irreps=None, **flags)


def assert_steerable_equivariant(
    fn,
    key,
    h,
    x,
    v=None,
    edge_attr=None,
    node_mask=None,
    senders=None,
    receivers=None,
    *,
    irreps,
    rtol: float | None = None,
    reflection: bool = True,
    translation: bool = True,
    permutation: bool = True,
):
    """`assert_equivariant` for a function that also returns steerable node features.

    Checks, for 3-D positions, fn(P h, P x Q^T + t, P v Q^T) == (P h_out, P x_out Q^T + t,
    P s_out D(Q)^T) with D(Q) the block-diagonal Wigner D matrix of `irreps`
    (`e3nn_jax.Irreps.D_from_matrix`: under a reflection, det Q = -1, an irrep of parity p
    also gets the factor p). s_out must be translation-invariant.

    Arguments:
        fn: called as `assert_equivariant`'s, returning `(h_out [M, F'], x_out [M, 3],
            s_out [M, irreps.dim])`, e.g. `egnn_jax.hegnn.apply(..., return_steerable=True)`.
        key, h, x, v, edge_attr, node_mask, senders, receivers: as `assert_equivariant`.
        irreps: the irreps of s_out: an `e3nn_jax.Irreps` or its string, or an int L for the
            spherical-harmonic irreps 0e + 1o + 2e + ... up to L (HEGNN's chi).
        rtol, reflection, translation, permutation: as `assert_equivariant`.

    Raises:
        AssertionError: with the largest relative errors of h, x and s_out.
        ValueError: if x is not 3-D or s_out does not have `irreps.dim` columns.
    """
    import e3nn_jax as e3nn  # imported on first use (slow to import)

    if isinstance(irreps, int):
        irreps = e3nn.Irreps.spherical_harmonics(irreps)
    irreps = e3nn.Irreps(irreps)
    if x.shape[1] != 3:
        raise ValueError(f"steerable features need 3-D positions, got x {tuple(x.shape)}")
    graph = (v, edge_attr, node_mask, senders, receivers)
    flags = dict(rtol=rtol, reflection=reflection, translation=translation, permutation=permutation)
    _check(fn, key, h, x, *graph, irreps=irreps, **flags)


@functools.cache
def _d_from_matrix(irreps):
    """`irreps.D_from_matrix`, jitted once per irreps (eagerly it compiles op by op: ~1 s)."""
    return jax.jit(irreps.D_from_matrix)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _draw(key, x, reflection, translation, permutation, n_nodes):
    """Q `[n, n]`, t `[1, n]` and a node permutation `[M]` (one compiled program, not a dozen
    eager operations: the helper runs in many tests)."""
    n = x.shape[1]
    k_rot, k_shift, k_perm = jax.random.split(key, 3)
    q = random_orthogonal(k_rot, n, x.dtype, reflection)
    scale = 1.0 + jnp.max(jnp.abs(x))
    t = scale * jax.random.normal(k_shift, (1, n), x.dtype) if translation else jnp.zeros((1, n))
    t = t.astype(x.dtype)
    perm = jax.random.permutation(k_perm, n_nodes) if permutation else jnp.arange(n_nodes)
    return q, t, perm


@jax.jit
def _transform_inputs(q, t, perm, h, x, v, edge_attr, node_mask, senders, receivers):
    """The inputs under (Q, t, P); None stays None."""
    rotate = lambda a: a @ q.T
    tv = None if v is None else rotate(v[perm])
    if edge_attr is not None and senders is None:
        t_attr = edge_attr[perm][:, perm]
    else:
        t_attr = edge_attr
    t_mask = None if node_mask is None else node_mask[perm]
    t_send = t_recv = None
    if senders is not None:
        new_label = jnp.argsort(perm)
        t_send, t_recv = new_label[senders], new_label[receivers]
    return h[perm], rotate(x[perm]) + t, tv, t_attr, t_mask, t_send, t_recv


@jax.jit
def _transform_outputs(q, t, perm, d, out):
    """The expected outputs: h permuted, x rotated and translated, steerable times D^T."""
    expected = [out[0][perm], out[1][perm] @ q.T + t]
    if d is not None:
        expected.append(out[2][perm] @ d.astype(out[2].dtype).T)
    return expected


def _check(
    fn,
    key,
    h,
    x,
    v,
    edge_attr,
    node_mask,
    senders,
    receivers,
    *,
    irreps,
    rtol,
    reflection,
    translation,
    permutation,
):
    """The shared check; `irreps` None: fn returns (h, x); else (h, x, steerable)."""
    n_nodes, n = x.shape
    q, t, perm = _draw(key, x, reflection, translation, permutation, n_nodes)

    def call(h, x, v, edge_attr, node_mask, senders, receivers):
        kwargs = dict(
            v=v, edge_attr=edge_attr, node_mask=node_mask, senders=senders, receivers=receivers
        )
        return fn(h, x, **{k: a for k, a in kwargs.items() if a is not None})

    out = call(h, x, v, edge_attr, node_mask, senders, receivers)
    out_t = call(*_transform_inputs(q, t, perm, h, x, v, edge_attr, node_mask, senders, receivers))

    d = None
    if irreps is not None:
        if out[2].shape[-1] != irreps.dim:
            raise ValueError(
                f"the steerable output has {out[2].shape[-1]} columns, but irreps {irreps} "
                f"have dimension {irreps.dim}"
            )
        d = _d_from_matrix(irreps)(q)
    checked = 2 if d is None else 3
    expected = _transform_outputs(q, t, perm, d, tuple(out[:checked]))

    rtol = _default_rtol(x.dtype) if rtol is None else rtol
    names = ["h", "x", "steerable"][:checked]
    errors = {
        name: _max_rel_err(got, want)
        for name, got, want in zip(names, out_t[:checked], expected, strict=True)
    }
    if not all(err <= rtol for err in errors.values()):
        listed = ", ".join(f"{name} {err:.3g}" for name, err in errors.items())
        raise AssertionError(
            f"not E({n})-equivariant: max relative error {listed} "
            f"(rtol {rtol:.1g}; reflection={reflection}, translation={translation}, "
            f"permutation={permutation})"
        )
