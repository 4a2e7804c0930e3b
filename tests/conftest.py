"""Test-wide JAX settings: NaNs raise, implicit rank promotion raises, fast compiles."""

import atexit
import os
import shutil
import tempfile

# The suite is dominated by XLA compile time of many small programs; the backend's
# optimisation passes cost more than they save there. Set before JAX starts its backend.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
).strip()

# One compilation cache for the whole run, shared through the environment by the xdist
# workers and the command-line tests' child processes: the same programs (a model's init,
# a simulator) are compiled again in every test file (their caches are dropped below) and
# in every child. Only programs that take a while to compile are worth a disk entry. The
# process that makes the folder (the first to load this file) removes it at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="egnn_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

import gc  # noqa: E402

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


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test file.

    Each XLA:CPU executable holds a few memory mappings until its cache entry dies; a
    pytest-xdist worker that compiles the ~20,000 small programs of half the suite (NaN
    checking runs eager ops one by one) passed Linux's default limit of 65,530 mappings
    per process, and the next compile crashed (SIGSEGV or SIGABRT inside XLA, no message).
    """
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def strict_dtypes():
    """Strict dtype promotion (no silent float32 <-> float64 mixing) for one test."""
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture
def allow_nans():
    """jax_debug_nans off, for tests that make NaNs on purpose."""
    with jax.debug_nans(False):
        yield
