"""CAMPPlus (speaker/style encoder) and BigVGAN v2 (vocoder) speed and memory, random weights.

    python -m benchmarks.vocoder                              # official sizes: 10 s prompt, 861 mel frames, float32
    python -m benchmarks.vocoder --dtype bfloat16             # GPU: bfloat16 compute, float32 params
    python -m benchmarks.vocoder --size tiny --frames 64 --prompt_seconds 2   # smoke run on a shared CPU

Workload: CAMPPlus on the Kaldi fbank of a ``--prompt_seconds`` prompt (100 frames/s, 80 bins;
``(1, 998, 80)`` for 10 s), BigVGAN v2 22 kHz/80 band/256x on ``--frames`` mel frames (861 = 10 s).
Official CPU baseline (shared/reference/official-cpu-baseline.md, 2 threads): CAMPPlus 0.095 s incl. fbank,
BigVGAN 10.8 s for 861 frames.

Columns: compile (s) = lower + compile; time (s) = best of ``--repeats`` runs after a warm-up;
RTF = time / audio seconds (prompt seconds for CAMPPlus); GFLOP from XLA's cost analysis; peak memory =
device ``peak_bytes_in_use`` on GPU/TPU, XLA's temp+argument+output bytes on CPU; max RSS of the process.
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import call_times, print_table, random_like
from indextts2_jax.models import bigvgan, campplus


def tiny_configs() -> tuple[campplus.CAMPPlusConfig, bigvgan.BigVGANConfig]:
    return (
        campplus.CAMPPlusConfig(growth_rate=8, bn_size=2, init_channels=32),
        bigvgan.BigVGANConfig(upsample_initial_channel=64),
    )


def _peak_bytes(compiled) -> float | None:
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return float(stats["peak_bytes_in_use"])
    try:
        ma = compiled.memory_analysis()
        return float(ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes)
    except Exception:  # noqa: BLE001 - optional per backend
        return None


def _flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", 0.0)) or None
    except Exception:  # noqa: BLE001
        return None


def _time(fn, args, repeats: int) -> tuple[float, float, object]:
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    _, times = call_times(lambda: compiled(*args), repeats)  # after a warm-up call
    return compile_s, min(times), compiled


def _row(name, shape, params, compile_s, best, audio_s, compiled, dtype) -> dict:
    dev = jax.devices()[0]
    flops = _flops(compiled)
    peak = _peak_bytes(compiled)
    return {
        "model": name,
        "device": f"{dev.platform}:{dev.device_kind}",
        "dtype": jnp.dtype(dtype).name,
        "params (M)": sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params)) / 1e6,
        "input": shape,
        "compile (s)": compile_s,
        "time (s)": best,
        "RTF": best / audio_s,
        "GFLOP": flops / 1e9 if flops else float("nan"),
        "GFLOP/s": flops / best / 1e9 if flops else float("nan"),
        "peak mem (MiB)": peak / 2**20 if peak else float("nan"),
        "max RSS (MiB)": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bench_campplus(config: campplus.CAMPPlusConfig, prompt_seconds: float = 10.0, dtype=jnp.float32,
                   repeats: int = 3, seed: int = 0) -> dict:
    frames = int((prompt_seconds * 16000 - 400) // 160 + 1)  # Kaldi fbank: 25 ms window, 10 ms shift, snip_edges
    variables = random_like(campplus.abstract_variables(config), seed)  # leaf by leaf: no init peak
    fbank = jax.random.normal(jax.random.key(seed + 1), (1, frames, config.feat_dim), jnp.float32)
    model = campplus.CAMPPlus(config, dtype=dtype)
    compile_s, best, compiled = _time(lambda v, f: model.apply(v, f), (variables, fbank), repeats)
    return _row("CAMPPlus", f"fbank (1,{frames},{config.feat_dim})", variables["params"], compile_s, best,
                prompt_seconds, compiled, dtype)


def bench_bigvgan(config: bigvgan.BigVGANConfig, frames: int = 861, dtype=jnp.float32, repeats: int = 3,
                  seed: int = 0) -> dict:
    params = random_like(bigvgan.abstract_params(config), seed)  # leaf by leaf: no init peak
    mel = jax.random.normal(jax.random.key(seed + 1), (1, frames, config.num_mels), jnp.float32) - 5.0
    model = bigvgan.BigVGAN(config, dtype=dtype)
    compile_s, best, compiled = _time(lambda p, m: model.apply({"params": p}, m), (params, mel), repeats)
    audio_s = bigvgan.synthesis_seconds(frames, config)
    return _row("BigVGAN v2", f"mel (1,{frames},{config.num_mels})", params, compile_s, best, audio_s, compiled,
                dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["official", "tiny"], default="official")
    ap.add_argument("--frames", type=int, default=861, help="BigVGAN mel frames (861 = 10 s at 22.05 kHz)")
    ap.add_argument("--prompt_seconds", type=float, default=10.0, help="CAMPPlus prompt length")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["campplus", "bigvgan"], default=None)
    args = ap.parse_args()
    dtype = jnp.dtype(args.dtype)
    if args.size == "official":
        cp_cfg, bv_cfg = campplus.CAMPPlusConfig(), bigvgan.BigVGANConfig()
    else:
        cp_cfg, bv_cfg = tiny_configs()
    rows = []
    if args.only in (None, "campplus"):
        rows.append(bench_campplus(cp_cfg, args.prompt_seconds, dtype, args.repeats))
    if args.only in (None, "bigvgan"):
        rows.append(bench_bigvgan(bv_cfg, args.frames, dtype, args.repeats))
    print(f"size={args.size}")
    print_table(rows)


if __name__ == "__main__":
    main()
