"""Test set-up: 8 fake CPU devices (so sharding is really exercised) and strict dtype promotion.

The flag must be set before JAX initialises its backends, hence at import time of conftest.
"""
import os

# The concurrency-optimised thunk scheduler of XLA:CPU can start independent collectives in a
# different order on different fake devices; on a 2-core machine the blocked threads then starve
# the rendezvous and the process aborts after 40 s. Sequential scheduling avoids that.
#
# --xla_backend_optimization_level=0: LLVM compiles the kernels without optimisation. The suite's
# programs are tiny and run a few steps, so its time is XLA compiles (~85 % of a sharded-step
# test); this cuts each compile by about a third (a BatchTopK step 17 s -> 11 s on 2 cores;
# BENCHMARKS.md "Test-suite time"). It leaves the HLO passes (sharding, fusion, collectives) alone
# and keeps IEEE semantics (no fast-math), but it does round differently from the optimised build
# (FMA contraction, vectorised reduction order): Gemma activations of magnitude ~70 differed by up
# to 3e-3 between a child harvest without it and this process with it. So subprocesses whose results
# are compared with this process's must inherit these flags (test_checkpoint_faults, test_harvest).
XLA_TEST_FLAGS = ("--xla_force_host_platform_device_count=8 --xla_cpu_enable_concurrency_optimized_scheduler=false"
                  " --xla_backend_optimization_level=0")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + XLA_TEST_FLAGS).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Many tests compile the same program (one step config over several meshes, the CLI run twice, a
# resumed run): JAX's persistent compilation cache, in a directory fresh for each pytest session,
# compiles each such program once. Set as environment variables so that the CLI subprocesses the
# tests start, and the parallel workers (README's `-n` test command), share it. Compiles under
# 0.5 s are not worth the disk write.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxdict-tests-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    # pytest-xdist's workers inherit this environment from the controller, so they share the
    # cache. Without a size limit JAX writes entries without a lock, and one worker can read
    # another's half-written entry; with a limit (far above what the suite writes) it takes a
    # file lock around every read and write (jax/_src/lru_cache.py).
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(16 << 30))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(scope="session")
def devices():
    devs = jax.devices()
    assert len(devs) == 8, f"expected 8 fake CPU devices, got {len(devs)}"
    return devs
