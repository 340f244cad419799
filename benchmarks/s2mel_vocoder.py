"""S2M (25 Euler steps with CFG), CAMPPlus and BigVGAN v2 for 10 s of audio in one table, random weights.

    python -m benchmarks.s2mel_vocoder                      # official sizes, float32 (CPU or GPU)
    python -m benchmarks.s2mel_vocoder --dtype bfloat16     # GPU: bfloat16 compute (issue target: S2M + BigVGAN
                                                            # for 10 s under 60 ms on an H100)
    python -m benchmarks.s2mel_vocoder --size tiny          # smoke run of the script

The rows come from ``benchmarks.s2mel.bench_cfm`` (860 target frames after a 258-frame / 3 s prompt) and
``benchmarks.vocoder.bench_campplus`` / ``bench_bigvgan`` (10 s prompt; 861 frames); see those scripts for
their columns. The last row adds S2M and BigVGAN: the mel-to-waveform part of synthesizing 10 s.
Columns: seconds (best of ``--repeats`` after a warm-up), real-time factor, compile seconds, peak memory
(device ``peak_bytes_in_use`` on GPU/TPU, XLA's buffer sizes on CPU) and the process's max RSS.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp

from benchmarks.common import print_table
from benchmarks.s2mel import bench_cfm
from benchmarks.s2mel import tiny_config as tiny_s2mel
from benchmarks.vocoder import bench_bigvgan, bench_campplus
from benchmarks.vocoder import tiny_configs as tiny_vocoders
from indextts2_jax.models import bigvgan, campplus, s2mel


def run(size: str = "official", dtype: str = "float32", repeats: int = 3, attention: str = "einsum") -> list[dict]:
    """The table's rows; ``attention``: the DiT's (``S2MelConfig.dit.attention``: einsum, xla or cudnn)."""
    dt = jnp.dtype(dtype)
    if size == "official":
        s_cfg, (c_cfg, b_cfg) = s2mel.S2MelConfig(), (campplus.CAMPPlusConfig(), bigvgan.BigVGANConfig())
        target, prompt, frames, prompt_s, steps = 860, 258, 861, 10.0, 25
    else:
        s_cfg, (c_cfg, b_cfg) = tiny_s2mel(), tiny_vocoders()
        target, prompt, frames, prompt_s, steps = 64, 16, 64, 2.0, 4
    s_cfg = dataclasses.replace(s_cfg, dit=dataclasses.replace(s_cfg.dit, attention=attention))
    cfm = bench_cfm(s_cfg, target, prompt, steps, 0.7, 1, dt, repeats)
    cp = bench_campplus(c_cfg, prompt_s, dt, repeats)
    bv = bench_bigvgan(b_cfg, frames, dt, repeats)
    audio_s = bigvgan.synthesis_seconds(frames, b_cfg)
    rows = [
        {"stage": f"S2M CFM, {steps} steps, CFG ({attention} attention)", "seconds": cfm["CFM (s)"], "RTF": cfm["RTF"],
         "compile (s)": cfm["compile (s)"], "peak mem (MiB)": cfm["peak mem (MiB)"]},
        {"stage": f"CAMPPlus, {prompt_s:g} s prompt", "seconds": cp["time (s)"], "RTF": cp["RTF"],
         "compile (s)": cp["compile (s)"], "peak mem (MiB)": cp["peak mem (MiB)"]},
        {"stage": f"BigVGAN v2, {frames} frames", "seconds": bv["time (s)"], "RTF": bv["RTF"],
         "compile (s)": bv["compile (s)"], "peak mem (MiB)": bv["peak mem (MiB)"]},
    ]
    total = cfm["CFM (s)"] + bv["time (s)"]
    rows.append({"stage": "S2M + BigVGAN", "seconds": total, "RTF": total / audio_s, "compile (s)": float("nan"),
                 "peak mem (MiB)": max(cfm["peak mem (MiB)"], bv["peak mem (MiB)"])})
    for r in rows:
        r["max RSS (MiB)"] = bv["max RSS (MiB)"]
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("official", "tiny"), default="official")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--attention", choices=("einsum", "xla", "cudnn"), default="einsum",
                   help="the DiT's attention (cudnn: flash attention, NVIDIA GPUs, bfloat16)")
    args = p.parse_args(argv)
    rows = run(args.size, args.dtype, args.repeats, args.attention)
    dev = jax.devices()[0]
    print(f"device: {dev.platform}:{dev.device_kind}, {args.dtype}, size={args.size}")
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
