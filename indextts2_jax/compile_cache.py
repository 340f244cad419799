"""JAX's persistent compilation cache for the launchers: a restarted server, synthesis job or training run reads
its compiled programs from disk instead of compiling them again.

    from indextts2_jax import compile_cache
    compile_cache.enable("~/.cache/indextts2_jax/xla")   # best before the first jitted call
    ...
    compile_cache.stats()   # {"dir": ..., "requests": 31, "hits": 31}

``experiments.synthesize``, ``experiments.serve``, ``experiments.train`` and ``experiments.encode`` take
``--compilation_cache DIR``.
This is JAX's own cache (``jax_compilation_cache_dir``; setting ``JAX_COMPILATION_CACHE_DIR`` does the same
without the counters) with two changes to its defaults: every program is written, whatever its compile time
or size (JAX skips programs that compiled in under 1 s, which is most of a small model's synthesis stages on
a CPU), and the counters below. Entries are keyed by the program, its compile options, the jax/XLA
version and the device kind, so a folder may be shared by runs, hosts and versions (a stale entry is missed,
never used). It holds programs only (our jitted stages take the params as arguments), but JAX runs what it
finds there: keep it where only you can write.

What it saves and what it cannot: XLA's compile of each program. Tracing and lowering still happen in every
new process (the demo bundle's first sentence on the 2-core CPU: 12.7 s cold, 5.2 s from the cache;
benchmarks/NOTES.md).
"""

from __future__ import annotations

import os
import threading

import jax
from jax.experimental.compilation_cache import compilation_cache as _jax_cache

_lock = threading.Lock()
_counts = {"requests": 0, "hits": 0}
_listening = False

_EVENTS = {"/jax/compilation_cache/compile_requests_use_cache": "requests",
           "/jax/compilation_cache/cache_hits": "hits"}


def _on_event(event: str, **_kwargs) -> None:
    key = _EVENTS.get(event)
    if key is not None:
        with _lock:
            _counts[key] += 1


def enable(path: str | os.PathLike, min_compile_time_s: float = 0.0) -> str:
    """Use ``path`` (created if missing; ``~`` expanded) as the persistent compilation cache from the next
    compile on, caching programs that compiled in at least ``min_compile_time_s``. Returns the absolute path.
    May be called after earlier compiles (the cache is re-initialized); programs already in memory are not
    written back."""
    global _listening
    folder = os.path.abspath(os.path.expanduser(os.fspath(path)))
    os.makedirs(folder, exist_ok=True)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _jax_cache.set_cache_dir(folder)
    _jax_cache.reset_cache()  # re-read the settings at the next compile (also after an earlier one)
    with _lock:
        if not _listening:
            jax.monitoring.register_event_listener(_on_event)
            _listening = True
    return folder


def disable() -> None:
    """Stop using a persistent cache (from the next compile on)."""
    _jax_cache.set_cache_dir(None)
    _jax_cache.reset_cache()


def stats() -> dict:
    """``{"dir", "requests", "hits"}``: the cache folder (None when off) and, since :func:`enable` was first
    called in this process, how many compiles asked the cache and how many were answered from it."""
    with _lock:
        counts = dict(_counts)
    return {"dir": jax.config.jax_compilation_cache_dir or None, **counts}
