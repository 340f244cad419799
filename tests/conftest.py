"""Shared test setup.

Grain worker processes read absl flags; mark them parsed so pipelines work under pytest.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
# LLVM -O0 for the suite's XLA:CPU programs: compiling dominates the tests (most run a program once or
# a few times on tiny shapes), and -O0 compiles several times faster. Numerics are unchanged within
# every test's tolerance (no fast-math either way); set XLA_FLAGS yourself to test optimized code.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

try:
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
except ImportError:  # pragma: no cover
    pass
