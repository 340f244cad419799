"""Machine limits for roofline floors: memory bandwidth (large array copy, matrix-vector read) and
float32 matmul FLOP/s, measured with JAX on the default device.

    python -m benchmarks.machine

The GPT decode floor at batch 1 is ``weight_bytes / read_bandwidth``; benchmarks/NOTES.md records it.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from benchmarks.common import call_times


def _best_time(fn, *args, repeats: int = 5) -> float:
    """Best of ``repeats`` calls after a warm-up call."""
    return min(call_times(lambda: fn(*args), repeats)[1])


def copy_bandwidth(num_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes/s of ``x + 1`` over a large float32 array in place (one read + one write per element).

    The input buffer is donated, so the output reuses it: without donation each call writes a fresh
    1 GiB allocation and the page faults of first touch dominate (7 GB/s measured that way on a
    machine whose in-place rate is ~4x that).
    """
    step = jax.jit(lambda a: a + 1.0, donate_argnums=0)
    x = jax.block_until_ready(step(jnp.zeros((num_bytes // 4,), jnp.float32)))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = jax.block_until_ready(step(x))
        best = min(best, time.perf_counter() - t0)
    return 2 * num_bytes / best


def matvec_read_bandwidth(rows: int = 16384, cols: int = 8192, dtype=jnp.float32) -> float:
    """Bytes/s of reading a matrix once in a matrix-vector product (the decode-step pattern)."""
    w = jnp.ones((rows, cols), dtype)
    v = jnp.ones((cols,), dtype)
    t = _best_time(jax.jit(lambda a, b: a @ b), w, v)
    return rows * cols * jnp.dtype(dtype).itemsize / t


def matmul_flops(n: int = 2048, dtype=jnp.float32) -> float:
    a = jnp.ones((n, n), dtype)
    t = _best_time(jax.jit(lambda x, y: x @ y), a, a)
    return 2 * n**3 / t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copy_mib", type=int, default=1024)
    args = parser.parse_args()
    dev = jax.devices()[0]
    rows = [
        ("copy bandwidth (GB/s)", copy_bandwidth(args.copy_mib << 20) / 1e9),
        ("matvec read bandwidth (GB/s)", matvec_read_bandwidth() / 1e9),
        ("float32 matmul 2048^2 (GFLOP/s)", matmul_flops() / 1e9),
    ]
    print(f"device: {dev.platform} {getattr(dev, 'device_kind', '')}")
    print(f"| {'measure':<34} | {'value':>10} |")
    print(f"|{'-' * 36}|{'-' * 12}|")
    for name, val in rows:
        print(f"| {name:<34} | {val:>10.1f} |")


if __name__ == "__main__":
    main()
