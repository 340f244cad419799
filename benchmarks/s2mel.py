"""S2M CFM (DiT + WaveNet estimator, Euler + CFG) speed and memory, random weights.

    python -m benchmarks.s2mel                                  # official size, 10 s of audio, float32
    python -m benchmarks.s2mel --dtype bfloat16                 # GPU: bfloat16 compute, float32 params
    python -m benchmarks.s2mel --size tiny --target_frames 200 --steps 4   # smoke run on a shared CPU

Workload (infer_v2 defaults): 860 target mel frames (~10 s at 22.05 kHz / hop 256) after a 3 s prompt
(258 frames), 25 Euler steps, classifier-free guidance 0.7 (every step runs the estimator once on the
stacked [cond; uncond] batch of 2). The whole sampler is one jitted ``lax.scan``.

Columns: compile (s) = lower + compile; CFM (s) = best of ``--repeats`` runs after warm-up; per step
(ms); RTF = CFM time / generated audio seconds; estimator TFLOP/s from XLA's cost analysis; peak
memory = device ``peak_bytes_in_use`` on GPU/TPU, XLA's temp+argument+output bytes on CPU (plus the
process max RSS). CAMPPlus and BigVGAN are timed by their own benchmarks.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import call_times, print_table, random_like
from indextts2_jax.models import s2mel


def tiny_config() -> s2mel.S2MelConfig:
    return s2mel.S2MelConfig(
        length_regulator=s2mel.LengthRegulatorConfig(channels=64, in_channels=128),
        dit=s2mel.DiTConfig(hidden_dim=64, num_heads=4, depth=3, content_dim=64),
        wavenet=s2mel.WaveNetConfig(hidden_dim=64, num_layers=2),
    )


def bench_cfm(config: s2mel.S2MelConfig, target_frames: int = 860, prompt_frames: int = 258, steps: int = 25,
              cfg_rate: float = 0.7, batch: int = 1, dtype=jnp.float32, repeats: int = 3, seed: int = 0) -> dict:
    """Time the CFM sampler; returns one table row (dict)."""
    key = jax.random.key(seed)
    _, k_mu, k_p, k_s, k_z = jax.random.split(key, 5)
    params = random_like(s2mel.abstract_params(config)["estimator"], seed)  # leaf by leaf: no init peak
    t_len = prompt_frames + target_frames
    mu = jax.random.normal(k_mu, (batch, t_len, config.dit.content_dim), jnp.float32)
    prompt = jax.random.normal(k_p, (batch, prompt_frames, config.n_mels), jnp.float32)
    style = jax.random.normal(k_s, (batch, config.style_dim), jnp.float32)
    noise = jax.random.normal(k_z, (batch, t_len, config.n_mels), jnp.float32)
    x_lens = jnp.full((batch,), t_len, jnp.int32)
    prompt_lens = jnp.full((batch,), prompt_frames, jnp.int32)
    ts, dts = s2mel.euler_times(steps)
    args = (params, config, mu, x_lens, prompt, prompt_lens, style, noise, jnp.float32(1.0), jnp.asarray(ts),
            jnp.asarray(dts), float(cfg_rate), True, dtype, False)

    t0 = time.perf_counter()
    compiled = s2mel._cfm_sample.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    dyn = (params, mu, x_lens, prompt, prompt_lens, style, noise, jnp.float32(1.0), jnp.asarray(ts), jnp.asarray(dts))
    _, times = call_times(lambda: compiled(*dyn), repeats)  # after a warm-up call
    best = min(times)

    # XLA counts a scan body once, so take the FLOPs of one estimator call on the stacked batch x steps.
    flops = None
    try:
        n_est = 2 * batch if cfg_rate > 0 else batch
        est = jax.jit(lambda p, x, c: s2mel.DiT(config, dtype=dtype).apply(
            {"params": p}, x, x, jnp.full((n_est,), t_len), jnp.zeros((n_est,)), jnp.zeros((n_est, config.style_dim)),
            c, None, True))
        cost = est.lower(params, jnp.zeros((n_est, t_len, config.n_mels)),
                         jnp.zeros((n_est, t_len, config.dit.content_dim))).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = steps * float(cost.get("flops", 0.0)) or None
    except Exception:  # noqa: BLE001 - cost analysis is optional per backend
        pass
    dev = jax.devices()[0]
    peak = None
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        peak = stats["peak_bytes_in_use"]
    else:
        try:
            ma = compiled.memory_analysis()
            peak = ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
        except Exception:  # noqa: BLE001
            pass
    audio_s = target_frames * config.hop_length / config.sample_rate
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params))
    return {
        "device": f"{dev.platform}:{dev.device_kind}",
        "dtype": jnp.dtype(dtype).name,
        "params (M)": n_params / 1e6,
        "batch": batch,
        "frames": f"{prompt_frames}+{target_frames}",
        "steps": steps,
        "compile (s)": compile_s,
        "CFM (s)": best,
        "per step (ms)": 1e3 * best / steps,
        "RTF": best / (batch * audio_s),
        "TFLOP/s": (flops / best / 1e12) if flops else float("nan"),
        "peak mem (MiB)": (peak / 2**20) if peak else float("nan"),
        "max RSS (MiB)": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--target_frames", type=int, default=860)
    parser.add_argument("--prompt_seconds", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cfg_rate", type=float, default=0.7)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = s2mel.S2MelConfig() if args.size == "full" else tiny_config()
    prompt_frames = int(round(args.prompt_seconds * config.sample_rate / config.hop_length))
    row = bench_cfm(config, args.target_frames, prompt_frames, args.steps, args.cfg_rate, args.batch,
                    jnp.dtype(args.dtype), args.repeats)
    print(f"S2M CFM benchmark, size={args.size}: " + ", ".join(
        f"{f.name}={getattr(config.dit, f.name)}" for f in dataclasses.fields(config.dit)
        if f.name in ("hidden_dim", "depth", "num_heads")))
    print_table([row])


if __name__ == "__main__":
    main()
