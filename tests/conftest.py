"""Test-wide JAX settings: NaNs raise, implicit rank promotion raises, fast compiles."""

import os

# The suite is dominated by XLA compile time of many small programs; the backend's
# optimisation passes cost more than they save there. Set before JAX starts its backend.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
).strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from jaxtyping import install_import_hook  # noqa: E402

# Check the jaxtyping shape annotations of the core at run time (as equinox/diffrax do).
with install_import_hook(
    ["egnn_jax._api", "egnn_jax._graph", "egnn_jax._egcl", "egnn_jax._hegnn", "egnn_jax.hegnn"],
    "beartype.beartype",
):
    import egnn_jax  # noqa: E402, F401

jax.config.update("jax_debug_nans", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def strict_dtypes():
    """Strict dtype promotion (no silent float32 <-> float64 mixing) for one test."""
    with jax.numpy_dtype_promotion("strict"):
        yield
