"""The XLA flags indextts2_jax sets for the jaxlib it runs on (``indextts2_jax._xla_flags_for``)."""

import os
from importlib import metadata

import indextts2_jax

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
EIGEN = "--xla_cpu_multi_thread_eigen"


def test_jaxlib_0_11_gets_the_fft_deadlock_flags_and_no_other_line_does():
    f = indextts2_jax._xla_flags_for
    assert f("0.11.2", "") == f"{FLAG}=false {EIGEN}=false"
    assert f("0.11.0", "--xla_backend_optimization_level=0") == (
        f"--xla_backend_optimization_level=0 {FLAG}=false {EIGEN}=false")
    assert f("0.11.2", f"{FLAG}=true") == f"{FLAG}=true {EIGEN}=false"  # the user's choice stands
    assert f("0.11.2", f"{EIGEN}=true {FLAG}=true") == f"{EIGEN}=true {FLAG}=true"
    for version in ("0.10.2", "0.12.1", "0.9.0"):  # the flag is not needed there (nor known to every line)
        assert f(version, "--xla_backend_optimization_level=0") == "--xla_backend_optimization_level=0"


def test_the_running_jaxlib_has_its_workarounds_in_the_environment():
    # the package import (this suite imports it before any computation) put them where XLA reads them
    wanted = indextts2_jax._xla_flags_for(metadata.version("jaxlib"), "").split()
    assert all(flag in os.environ.get("XLA_FLAGS", "").split() for flag in wanted), os.environ.get("XLA_FLAGS")
