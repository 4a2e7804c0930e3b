"""Public test helpers: check a function of a graph for E(n) equivariance.

from egnn_jax.testing import assert_equivariant
assert_equivariant(lambda h, x, **kw: egnn_jax.apply(params, cfg, h, x, **kw), key, h, x)
"""

from __future__ import annotations

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
    n_nodes, n = x.shape
    k_rot, k_shift, k_perm = jax.random.split(key, 3)
    q = random_orthogonal(k_rot, n, x.dtype, reflection)
    scale = 1.0 + jnp.max(jnp.abs(x))
    t = scale * jax.random.normal(k_shift, (1, n), x.dtype) if translation else jnp.zeros((1, n))
    t = t.astype(x.dtype)
    perm = jax.random.permutation(k_perm, n_nodes) if permutation else jnp.arange(n_nodes)

    def call(h, x, v, edge_attr, node_mask, senders, receivers):
        kwargs = dict(
            v=v, edge_attr=edge_attr, node_mask=node_mask, senders=senders, receivers=receivers
        )
        return fn(h, x, **{k: a for k, a in kwargs.items() if a is not None})

    h_out, x_out = call(h, x, v, edge_attr, node_mask, senders, receivers)

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
    h_t, x_t = call(h[perm], rotate(x[perm]) + t, tv, t_attr, t_mask, t_send, t_recv)

    rtol = _default_rtol(x.dtype) if rtol is None else rtol
    err_h = _max_rel_err(h_t, h_out[perm])
    err_x = _max_rel_err(x_t, rotate(x_out[perm]) + t)
    if not (err_h <= rtol and err_x <= rtol):
        raise AssertionError(
            f"not E({n})-equivariant: max relative error h {err_h:.3g}, x {err_x:.3g} "
            f"(rtol {rtol:.1g}; reflection={reflection}, translation={translation}, "
            f"permutation={permutation})"
        )
