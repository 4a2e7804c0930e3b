"""The two-node graph every model initialises its parameters on.

A Flax `init` runs the forward pass once to learn the parameter shapes, but the values come
from the key and each parameter's path, never from the inputs. So the models initialise on
this fixed graph, built from the caller's feature widths, spatial dimension and dtype alone:
one compiled init per (config, widths, n, dtype), whatever the size or layout (dense, edge
list, packed batch) of the caller's graph, where an init on that graph compiles anew for
every graph shape (XLA then drops the forward pass: the parameters do not depend on it, so
the saving is the compile, ~4 s for a 4-layer EGNN on this CPU). The tests check that the
parameters equal, bit for bit, those of an init on the caller's own graph.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NUM_NODES = 2


class InitInputs(NamedTuple):
    """Arrays of a two-node complete graph (dense layout, both nodes real).

    Fields:
        h: `[2, F]` node features.
        x: `[2, n]` positions, the two nodes apart (a zero distance is a NaN in some layers'
            gradients and normalisations, and the suite runs with `jax_debug_nans`).
        v: `[2, n]` velocities, or None.
        edge_attr: `[2, 2, A]` edge attributes, or None.
        node_mask: `[2]` bool, all True.
    """

    h: jnp.ndarray
    x: jnp.ndarray
    v: jnp.ndarray | None
    edge_attr: jnp.ndarray | None
    node_mask: jnp.ndarray


class InitShapes(NamedTuple):
    """What the parameters depend on, taken from the caller's arrays (hashable: a static
    argument of the jitted init)."""

    node_features: int
    edge_features: int | None
    dim: int
    dtype: np.dtype
    velocity: bool

    @classmethod
    def of(cls, h, x, v, edge_attr) -> InitShapes:
        attr = None if edge_attr is None else int(edge_attr.shape[-1])
        return cls(int(h.shape[1]), attr, int(x.shape[1]), np.dtype(x.dtype), v is not None)

    def inputs(self) -> InitInputs:
        """The two-node graph (built inside the jitted init: constants, no arguments)."""
        dtype, n = self.dtype, self.dim
        x = jnp.asarray(np.eye(NUM_NODES, n), dtype) + jnp.asarray(0.5, dtype)
        h = jnp.ones((NUM_NODES, self.node_features), dtype)
        v = -0.5 * x if self.velocity else None
        attr = self.edge_features
        a = None if attr is None else jnp.ones((NUM_NODES, NUM_NODES, attr), dtype)
        return InitInputs(h, x, v, a, jnp.ones((NUM_NODES,), bool))


def check_at_trace_time(validate, *args) -> None:
    """Run the trace-time checks `validate(*args)` on abstract values: their errors, without
    compiling anything."""

    def checked(*a):
        validate(*a)

    jax.eval_shape(checked, *args)


def init_config(config):
    """`config` without the options that change how, not what, a model computes
    (`remat`, `edge_chunk_size`: the same parameters), so that one compiled init serves
    them all."""
    names = {f.name for f in dataclasses.fields(config)}
    layout = {"remat": False, "edge_chunk_size": None}
    return dataclasses.replace(config, **{k: v for k, v in layout.items() if k in names})
