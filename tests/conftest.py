"""Give JAX 8 CPU devices before it initialises, so multi-device code is tested on any machine."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module, drop JAX's compiled programs and traces.

    Each xdist worker runs hundreds of tests in one process; jit caches keep every executable alive,
    so without this a worker's memory grew to ~5 GB by half of the suite (measured), and two workers
    plus the multi-process tests' children come close to a 24 GB CI machine's memory (a CI run died
    with a segmentation fault inside an XLA compile at 89%). Programs are rarely shared across
    modules, so little is recompiled."""
    yield
    import jax

    jax.clear_caches()
    gc.collect()
