"""Environment for the tests' JAX subprocesses (launchers, multi-device and multi-process runs)."""

import os
import re


def cpu_env(devices: int | None = None, cache_dir=None, **extra: str) -> dict[str, str]:
    """``os.environ`` plus: JAX on CPU, ``devices`` simulated host devices (None: the default), the suite's XLA
    flags (conftest's LLVM -O0 unless XLA_FLAGS was set by the user) and, with ``cache_dir``, JAX's persistent
    compilation cache there (every program cached, so a restarted run skips its compiles)."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")).split()
    if devices is not None:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags), **extra)
    if cache_dir is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env
