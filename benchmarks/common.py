"""Shared measuring helpers of the benchmark scripts: call timing and peak memory."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import jax


def call_times(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """Seconds of a first call (compile + run for a fresh jitted function: the warm-up) and of each of
    ``repeats`` later calls; every call waits for its outputs (``jax.block_until_ready``)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, times


def peak_memory_bytes() -> tuple[float, str]:
    """(bytes, kind): the default device's ``peak_bytes_in_use`` ("device") where it reports one
    (GPU, TPU), else this process's maximum resident set size ("max_rss"; Linux reports KiB)."""
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return float(stats["peak_bytes_in_use"]), "device"
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "max_rss"


def print_table(rows: list[dict]) -> None:
    """A markdown table of ``rows`` (the first row's keys are the columns; floats to 4 digits)."""
    cols = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |")
