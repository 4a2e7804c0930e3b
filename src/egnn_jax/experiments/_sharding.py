"""Data parallelism: a one-axis device mesh, parameters replicated, each batch split over it.

The training loop compiles the same chunk of steps for one device or for many; on a mesh,
each step's batch is constrained to `P("data")` (split along the sample axis) and the
parameters, optimiser state and data set are replicated, so XLA's SPMD partitioner runs the
forward and backward pass of each device's share of the batch in place and inserts the one
all-reduce of the gradients. The arithmetic is the single-device step's, up to the order of
that final sum (float32 round-off).

The data set is replicated rather than split because batches are random draws from the
whole set inside the compiled program: with the set split over devices every draw would
gather across them. The data sets of these experiments are megabytes.
"""

from __future__ import annotations

import platform
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["DataParallel", "data_parallel", "single_device"]

DATA_AXIS = "data"


class DataParallel(NamedTuple):
    """How a run is spread over devices.

    Fields:
        mesh: a `jax.sharding.Mesh` with the one axis ``"data"``.
        replicated: `NamedSharding` of parameters, optimiser state and data sets.
        batch: `NamedSharding` of a batch (leading sample axis split over ``"data"``).
    """

    mesh: Mesh
    replicated: NamedSharding
    batch: NamedSharding

    @property
    def num_devices(self) -> int:
        return int(self.mesh.devices.size)

    def describe(self) -> dict[str, Any]:
        """What `metrics.json` records under ``devices``."""
        devices = list(self.mesh.devices.flat)
        return {
            "count": self.num_devices,
            "mesh": dict(self.mesh.shape),
            "batch_axis": DATA_AXIS,
            "platform": devices[0].platform,
            "device_kind": devices[0].device_kind,
            "ids": [int(d.id) for d in devices],
            "processes": int(jax.process_count()),
            "host": platform.node(),
        }

    def put(self, tree):
        """`tree` replicated on every device of the mesh.

        With several processes (hosts), each passes its own copy, loaded on that host: the
        global array is assembled from the processes' local data
        (`jax.make_array_from_process_local_data`), nothing is sent between hosts.
        """
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated)

        def put_leaf(leaf):
            if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
                impl = jax.random.key_impl(leaf)
                data = put_leaf(jax.random.key_data(leaf))
                return jax.random.wrap_key_data(data, impl=impl)
            return jax.make_array_from_process_local_data(self.replicated, np.asarray(leaf))

        return jax.tree.map(put_leaf, tree)


def data_parallel(num_devices: int) -> DataParallel:
    """A data-parallel layout over the first `num_devices` of `jax.devices()`.

    Raises:
        ValueError: `num_devices` is not a positive int or exceeds the devices present
            (the message says how to get more CPU devices for a test).
    """
    if isinstance(num_devices, bool) or not isinstance(num_devices, int | np.integer):
        raise ValueError(f"devices must be a positive int, got {num_devices!r}")
    available = jax.device_count()
    if jax.process_count() > 1 and num_devices != available:
        raise ValueError(
            f"devices={num_devices}, but with {jax.process_count()} processes every one of "
            f"the {available} devices takes part: pass --devices {available}"
        )
    if not 1 <= num_devices <= available:
        raise ValueError(
            f"devices={num_devices}, but {available} {jax.default_backend()} device(s) are "
            "present (on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N before "
            "JAX starts gives N)"
        )
    mesh = Mesh(np.asarray(jax.devices()[:num_devices]), (DATA_AXIS,))
    return DataParallel(mesh, NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS)))


def single_device() -> dict[str, Any]:
    """What `metrics.json` records under ``devices`` for a run on the default device."""
    dev = jax.devices()[0]
    return {
        "count": 1,
        "mesh": None,
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "ids": [int(dev.id)],
        "processes": int(jax.process_count()),
        "host": platform.node(),
    }
