"""Shared helpers of the benchmark scripts: random params, call timing, peak memory, ops per loop step."""

from __future__ import annotations

import collections
import functools
import re
import resource
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _normal_leaf(key, shape: tuple, dtype, offset: float):
    return (0.02 * jax.random.normal(key, shape, jnp.float32) + offset).astype(dtype)


def random_like(abstract, seed: int = 0):
    """Random params for an abstract tree (``jax.ShapeDtypeStruct`` leaves): normal(0, 0.02), 1-D leaves
    around 1 (gains), made on the device leaf by leaf (one small program per distinct shape and dtype).

    Leaf by leaf, the peak memory is the params plus one leaf's scratch: one program making every leaf at
    once held ~6x the params at its peak (11.3 GB of RSS for the official GPT's 1.93 GB), which then showed
    as the decode benchmark's "peak mem"."""
    leaves, treedef = jax.tree.flatten(abstract)
    key = jax.random.key(seed)
    out = [_normal_leaf(jax.random.fold_in(key, i), tuple(x.shape), jnp.dtype(x.dtype), float(len(x.shape) == 1))
           for i, x in enumerate(leaves)]
    return jax.tree.unflatten(treedef, out)


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


# HLO instructions that launch no work of their own (tuple plumbing, views, literals)
_FREE_OPS = frozenset({"parameter", "get-tuple-element", "tuple", "constant", "bitcast"})
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_OPCODE = re.compile(r"=\s*(?:\([^=]*?\)|[\w\[\]{},:*\/ ]*?)\s([a-z][a-z0-9\-]*)\(")


def loop_step_ops(hlo_text: str) -> list[collections.Counter]:
    """Per ``while`` loop of a compiled program (``compiled.as_text()``, XLA's optimized HLO), the opcodes of
    its body's instructions that do work (fusions, library calls such as cuBLAS ``custom-call``s, dots,
    copies, ...; tuple plumbing, bitcasts and constants left out), as a Counter each, in program order.

    On a GPU each counted instruction is about one kernel (or a command-buffer node) per iteration: for a
    decode loop, the launches per generated token. A nested loop or conditional counts once here (and its
    own body is listed separately). XLA:CPU's counts are of its own fusions (it splits long reductions into
    reduce-window trees), not comparable with a GPU's.
    """
    comps: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = comps.setdefault(m.group(1), [])
            continue
        if line.startswith("}"):
            current = None
        elif current is not None and "=" in line:
            current.append(line)
    bodies = [m.group(1) for lines in comps.values() for line in lines if " while(" in line
              for m in [re.search(r"body=%?([\w.\-]+)", line)] if m]
    out = []
    for body in bodies:
        ops = collections.Counter()
        for line in comps.get(body, []):
            m = _OPCODE.search(line)
            if m and m.group(1) not in _FREE_OPS:
                ops[m.group(1)] += 1
        out.append(ops)
    return out
