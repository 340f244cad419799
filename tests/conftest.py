"""Shared test setup.

Grain worker processes read absl flags; mark them parsed so pipelines work under pytest.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
except ImportError:  # pragma: no cover
    pass
