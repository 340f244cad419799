"""Throughput of the semantic front-end: w2v-BERT (layers 0..k-1) + semantic codec -> codes.

Prints a table of seconds of audio encoded per second of wall time (higher is better), per stage
(``w2v``: features -> normalised layer-k hidden states; ``codec``: hidden states -> codes;
``total``: both in one jitted function), for each batch size, with random weights.

Input is the 160-dim SeamlessM4T feature sequence (50 frames per second of audio); the NumPy
feature extractor is not timed (it runs on the host, see ``indextts2_jax.audio``). Memory columns:
``xla_temp`` is the compiled function's temporary buffer size (``memory_analysis``); ``peak`` is
the device's ``peak_bytes_in_use`` where the backend reports it (GPU/TPU), else the process's
max RSS (CPU: includes params and everything else in the process).

Official size (w2v-BERT 2.0 layers 0-16 = 17 of 24, codec 8192 x 8, Vocos 384/2048/12):

    python -m benchmarks.semantic --size official --batch 1,8 --seconds 10              # CPU, float32
    python -m benchmarks.semantic --size official --batch 1,8 --seconds 10 --dtype bfloat16  # GPU

Tiny size (seconds on a laptop CPU): ``python -m benchmarks.semantic --size tiny``.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import call_times, peak_memory_bytes, random_like
from indextts2_jax.models import semantic_codec as sc
from indextts2_jax.models import w2v_bert

FRAMES_PER_SECOND = 50  # w2v-BERT frame rate (2 x 10 ms fbank frames)

SIZES = {
    "official": (w2v_bert.W2VBertConfig(), sc.SemanticCodecConfig(with_decoder=False)),
    "tiny": (
        w2v_bert.W2VBertConfig(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, get_emb_hidden_index=3
        ),
        sc.SemanticCodecConfig(
            codebook_size=64,
            hidden_size=32,
            codebook_dim=8,
            vocos_dim=24,
            vocos_intermediate_dim=48,
            vocos_num_layers=2,
            with_decoder=False,
        ),
    ),
}


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _build_fns(w2v_cfg, codec_cfg, dtype):
    n_layers = w2v_cfg.layers_for_embedding
    w2v_model = w2v_bert.W2VBert(w2v_cfg, num_layers=n_layers, dtype=dtype)
    codec_model = sc.SemanticCodec(codec_cfg, dtype=dtype)

    def w2v_fn(w2v_params, feats, mask, mean, var):
        hidden = w2v_model.apply({"params": w2v_params}, feats, mask, return_all=False)
        return w2v_bert.normalize_hidden(hidden, mean, var)

    def codec_fn(codec_params, hidden, mask):
        return codec_model.apply({"params": codec_params}, hidden, mask, method=sc.SemanticCodec.quantize)[0]

    def total_fn(w2v_params, codec_params, feats, mask, mean, var):
        return codec_fn(codec_params, w2v_fn(w2v_params, feats, mask, mean, var), mask)

    return jax.jit(w2v_fn), jax.jit(codec_fn), jax.jit(total_fn)


def _time(compiled, args, repeats: int) -> float:
    """Best of ``repeats`` calls after a warm-up call."""
    return min(call_times(lambda: compiled(*args), repeats)[1])


def run(size: str, batches, seconds: float, dtype_name: str, repeats: int, stages) -> list[dict]:
    w2v_cfg, codec_cfg = SIZES[size]
    dtype = jnp.dtype(dtype_name)
    # random weights leaf by leaf (a jitted model init peaked at ~3x the params: it would set "peak")
    w2v_params = random_like(w2v_bert._abstract_params(w2v_cfg, w2v_cfg.layers_for_embedding), 0)
    codec_params = random_like(sc._abstract_params(codec_cfg), 1)
    if dtype != jnp.float32:  # store weights in the compute dtype (inference)
        w2v_params = jax.tree.map(lambda x: x.astype(dtype), w2v_params)
        codec_params = jax.tree.map(lambda x: x.astype(dtype), codec_params)
    mean = jnp.zeros((w2v_cfg.hidden_size,), jnp.float32)
    var = jnp.ones((w2v_cfg.hidden_size,), jnp.float32)
    print(
        f"# {size}: w2v-BERT {w2v_cfg.hidden_size}d x {w2v_cfg.layers_for_embedding} layers "
        f"({_count(w2v_params) / 1e6:.1f}M params), codec {codec_cfg.codebook_size}x{codec_cfg.codebook_dim} "
        f"({_count(codec_params) / 1e6:.1f}M params), {dtype_name}, device {jax.devices()[0].device_kind}",
        flush=True,
    )
    w2v_jit, codec_jit, total_jit = _build_fns(w2v_cfg, codec_cfg, dtype)
    frames = int(round(seconds * FRAMES_PER_SECOND))
    rows = []
    for batch in batches:
        rng = np.random.default_rng(batch)
        feats = jnp.asarray(rng.standard_normal((batch, frames, w2v_cfg.feature_projection_input_dim)), jnp.float32)
        mask = jnp.ones((batch, frames), jnp.int32)
        hidden = jnp.asarray(rng.standard_normal((batch, frames, codec_cfg.hidden_size)), jnp.float32)
        jobs = {
            "w2v": (w2v_jit, (w2v_params, feats, mask, mean, var)),
            "codec": (codec_jit, (codec_params, hidden, mask)),
            "total": (total_jit, (w2v_params, codec_params, feats, mask, mean, var)),
        }
        for stage in stages:
            fn, args = jobs[stage]
            t0 = time.perf_counter()
            compiled = fn.lower(*args).compile()
            compile_s = time.perf_counter() - t0
            analysis = compiled.memory_analysis()
            temp = getattr(analysis, "temp_size_in_bytes", float("nan")) if analysis is not None else float("nan")
            step_s = _time(compiled, args, repeats)
            peak, peak_kind = peak_memory_bytes()
            rows.append(
                {
                    "stage": stage,
                    "batch": batch,
                    "audio_s": batch * seconds,
                    "step_ms": step_s * 1e3,
                    "audio_s_per_s": batch * seconds / step_s,
                    "compile_s": compile_s,
                    "xla_temp_mib": temp / 2**20,
                    "peak_mib": peak / 2**20,
                    "peak_kind": peak_kind,
                }
            )
            print(_format_row(rows[-1]), flush=True)
    return rows


_HEADER = (
    f"{'stage':>6} {'batch':>5} {'audio s':>8} {'step ms':>10} {'audio s/s':>10} {'compile s':>9} "
    f"{'xla temp MiB':>12} {'peak MiB':>9} {'peak is':>8}"
)


def _format_row(r: dict) -> str:
    return (
        f"{r['stage']:>6} {r['batch']:>5} {r['audio_s']:>8.1f} {r['step_ms']:>10.2f} {r['audio_s_per_s']:>10.1f} "
        f"{r['compile_s']:>9.1f} {r['xla_temp_mib']:>12.1f} {r['peak_mib']:>9.0f} {r['peak_kind']:>8}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--seconds", type=float, default=10.0, help="audio seconds per utterance")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (best is reported)")
    p.add_argument("--stages", default="w2v,codec,total", help="comma-separated: w2v, codec, total")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",") if b]
    stages = [s for s in args.stages.split(",") if s]
    bad = set(stages) - {"w2v", "codec", "total"}
    if bad:
        p.error(f"unknown stages {sorted(bad)}")
    print(_HEADER)
    run(args.size, batches, args.seconds, args.dtype, args.repeats, stages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
