"""Shared test setup.

Grain worker processes read absl flags; mark them parsed so pipelines work under pytest.
"""

import os
import subprocess
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

# Compiling dominates the tests (most run a program once or a few times on tiny shapes), so the suite's
# XLA:CPU programs compile cheaply: LLVM -O0 (several times faster than -O3) and, where this jaxlib still
# has them (the 0.10 line does, 0.11.2 does not), XLA:CPU's elemental emitters instead of its MLIR fusion
# emitters (the whole suite 603 -> 455 s on 2 cores, the 8-device GPT train step's compile 12.5 -> 7.1 s).
# Numerics are unchanged within every test's tolerance (no fast-math either way). Set XLA_FLAGS yourself
# (XLA_FLAGS= for XLA's defaults) to test the code the benchmarks and users run.
FAST_COMPILE = "--xla_backend_optimization_level=0"
ELEMENTAL_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def _xla_knows(flag: str) -> bool:
    """Whether this jaxlib's XLA accepts ``flag`` (an unknown one aborts the process that starts a backend,
    so ask a throwaway one)."""
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices('cpu')"], capture_output=True,
                           env=dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu"), timeout=300)
    return probe.returncode == 0


if "XLA_FLAGS" not in os.environ:  # set here once; xdist workers and the tests' subprocesses inherit it
    os.environ["XLA_FLAGS"] = FAST_COMPILE + (f" {ELEMENTAL_EMITTERS}" if _xla_knows(ELEMENTAL_EMITTERS) else "")

try:
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
except ImportError:  # pragma: no cover
    pass
