"""Text-to-emotion (QwenEmotion's Qwen3-0.6B) generation speed and memory, random weights.

    python -m benchmarks.emotion_text                        # official size (Qwen3-0.6B), float32
    python -m benchmarks.emotion_text --dtype bfloat16       # bfloat16 weights and compute
    python -m benchmarks.emotion_text --size tiny            # smoke run

Workload: a prompt of ``--prompt_tokens`` ids (32: the chat template's ~20 tokens around a short sentence),
padded to its bucket as ``QwenEmotion`` pads it, then ``--new_tokens`` greedy tokens (80: the length of the
JSON answer with eight scores) with no eos id, so every run generates them all: one jitted program
(``emotion_text.generate_ids``), as the synthesizer runs it. The official runs HF transformers'
``Qwen3ForCausalLM.generate`` (``benchmarks/official_torch.py --stages qwen_emotion``: same sizes, float32).

Columns: compile (s) = the first call; time (s) = best of ``--repeats`` later calls; ms/token = time / new
tokens (prefill included); bytes of the weights; max RSS of the process. Floor: each decode step reads every
weight once (tied embeddings: the 151936 x 1024 table twice, as embedding row and as output projection).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import call_times, peak_memory_bytes, print_table, random_like
from indextts2_jax.infer.emotion_text import SamplingConfig, generate_ids
from indextts2_jax.models import qwen3

TINY = qwen3.Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def run(size: str, dtype: str, prompt_tokens: int, new_tokens: int, repeats: int, seed: int = 0) -> dict:
    cfg = qwen3.Qwen3Config() if size == "official" else TINY
    dt = jnp.dtype(dtype)
    model = qwen3.Qwen3LM(cfg, dtype=dt, param_dtype=dt)
    bucket = max(32, 1 << (prompt_tokens - 1).bit_length())
    ids = np.zeros((1, bucket), np.int32)
    ids[0, :prompt_tokens] = np.random.default_rng(seed).integers(0, cfg.vocab_size, prompt_tokens)
    ids = jnp.asarray(ids)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, model.init_cache(1, bucket), 0))["params"]
    t0 = time.perf_counter()
    params = jax.block_until_ready(random_like(abstract, seed))
    init_s = time.perf_counter() - t0
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    greedy = SamplingConfig(do_sample=False, eos_ids=())
    length = jnp.int32(prompt_tokens)

    def call():
        return generate_ids(model, params, ids, length, greedy, new_tokens, jax.random.key(0))

    first, times = call_times(call, repeats)
    out, count, done = call()
    assert int(count) == new_tokens and not bool(done)
    best = min(times)
    peak, kind = peak_memory_bytes()
    return {"size": size, "dtype": dtype, "prompt": prompt_tokens, "new tokens": new_tokens,
            "params (GB)": round(nbytes / 1e9, 3), "init (s)": round(init_s, 1), "compile (s)": round(first - best, 1),
            "time (s)": round(best, 3), "ms/token": round(best / new_tokens * 1e3, 1),
            "tokens/s": round(new_tokens / best, 1), f"peak {kind} (GiB)": round(peak / 2**30, 2)}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("official", "tiny"), default="official")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--prompt_tokens", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=80)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print(f"device: {jax.devices()[0].platform} {jax.devices()[0].device_kind}", flush=True)
    rows = [run(args.size, args.dtype, args.prompt_tokens, args.new_tokens, args.repeats)]
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
