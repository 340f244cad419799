"""T2S (UnifiedVoice GPT) decoding speed: tokens/s, time to first token, compile time, peak memory.

Random weights at the official size (model_dim 1280, 24 layers, 20 heads, 8194 codes) by default, or a
tiny model with ``--tiny``. Every generation is forced to emit exactly ``--new-tokens`` codes (the
exact-count mode), so runs are comparable. The whole decode is one jitted call (prefill + while_loop).

Usage::

    python -m benchmarks.gpt_decode --tiny                       # smoke run (CPU, seconds)
    python -m benchmarks.gpt_decode --batch 1 8 --new-tokens 500  # official size (GPU/TPU, or a big CPU)
    python -m benchmarks.gpt_decode --beams 3 --sample            # infer_v2's default decoding
    python -m benchmarks.gpt_decode --beams 3 --sample --budget 1500   # ... with its default code budget
    python -m benchmarks.gpt_decode --dtype bfloat16              # bf16 weights, KV cache and compute

Columns: ``batch``; ``mode``; ``compile s`` (lower + compile of the whole generate program); ``ops/step``
(work instructions in the decode loop's body after XLA's optimizations, ``benchmarks.common.loop_step_ops``:
on a GPU about the kernel launches per token, the cost beside the weight reads at batch 1); ``ttft s`` (time
to the first code: prefill + first selection, steady state); ``decode s`` (the timed generation of N codes,
median of ``--repeats`` after an untimed warm-up call); ``tok/s/seq`` (N / decode s: speed of one sequence)
and ``tok/s`` (batch x N / decode s: throughput); ``peak mem`` (process RSS high-water mark on CPU; the
device's ``peak_bytes_in_use`` on accelerators).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import loop_step_ops, peak_memory_bytes, random_like
from indextts2_jax.infer.generate import FIRST_STAGE_CODES, DecodeConfig, _generate_jit, _split
from indextts2_jax.models.gpt import ConditionModuleConfig, UnifiedVoice, UnifiedVoiceConfig, abstract_params


def tiny_config() -> UnifiedVoiceConfig:
    cond = ConditionModuleConfig(output_size=16, linear_units=32, attention_heads=2, num_blocks=1, perceiver_mult=2)
    return UnifiedVoiceConfig(model_dim=64, layers=2, heads=4, max_mel_tokens=600, max_text_tokens=64,
                              number_text_tokens=100, number_mel_codes=130, start_mel_token=128, stop_mel_token=129,
                              condition_module=cond, emo_condition_module=cond)


def random_params(cfg: UnifiedVoiceConfig, seed: int = 0) -> dict:
    """Random params (normal, std 0.02; 1-D gains/biases around 1), made on the device leaf by leaf."""
    return random_like(abstract_params(cfg), seed)


def peak_memory() -> str:
    value, kind = peak_memory_bytes()
    return f"{value / 2**30:.2f} GiB ({'device' if kind == 'device' else 'RSS'})"


def compile_program(model, settings: DecodeConfig, inputs: tuple):
    """AOT-compile the whole generate program; returns (a no-argument runner, compile seconds, the compiled
    program)."""
    static, knobs = _split(settings)
    t0 = time.perf_counter()
    program = _generate_jit.lower(model, static, knobs, *inputs).compile()
    return (lambda: program(knobs, *inputs)), time.perf_counter() - t0, program


def step_ops(program) -> int:
    """Work instructions of a compiled program's largest loop body (``loop_step_ops``): ~kernel launches per
    decode step on a GPU."""
    return max((sum(c.values()) for c in loop_step_ops(program.as_text() or "")), default=0)


def timed(fn, repeats: int):
    """(outputs, seconds of each of ``repeats`` calls) after one untimed warm-up call (the first call also
    waits for whatever was dispatched before it, e.g. the random weights; measured up to +4 s at 100 codes)."""
    out = fn()
    jax.block_until_ready(out.codes)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        jax.block_until_ready(out.codes)
        times.append(time.perf_counter() - t0)
    return out, times


def code_budget(args) -> int:
    """max_new_tokens of the timed generation: ``--budget``, at least ``--new-tokens`` + 1 (the KV cache holds
    the prefix + this many codes)."""
    return max(args.budget or args.new_tokens + 1, args.new_tokens + 1)


def run(args) -> list[dict]:
    cfg = tiny_config() if args.tiny else UnifiedVoiceConfig()
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    model = UnifiedVoice(cfg, dtype=dtype)
    params = random_params(cfg)
    if dtype != jnp.float32:  # serve from bf16 weights: a decode step then reads half the bytes
        params = jax.tree.map(lambda x: x.astype(dtype), params)
    n = args.new_tokens
    rows = []
    rng = np.random.default_rng(0)
    for batch, stage_codes in ((b, c) for b in args.batch for c in args.cache_stage_codes):
        decode = DecodeConfig(max_new_tokens=code_budget(args), num_beams=args.beams, do_sample=args.sample,
                              repetition_penalty=args.repetition_penalty, cache_stage_codes=stage_codes)
        first = DecodeConfig(max_new_tokens=1, num_beams=args.beams, do_sample=args.sample,
                             repetition_penalty=args.repetition_penalty)
        conds = jnp.asarray(rng.normal(0, 1, (batch, cfg.cond_rows, cfg.model_dim)), dtype)
        text = jnp.asarray(rng.integers(2, cfg.number_text_tokens, (batch, args.text_len)), jnp.int32)
        lengths = jnp.full((batch,), args.text_len, jnp.int32)
        target = jnp.full((batch,), n, jnp.int32)
        key = jax.random.PRNGKey(1)

        inputs = (params, conds, text, lengths, key, target)
        full, compile_s, program = compile_program(model, decode, inputs)
        out, times = timed(full, args.repeats)
        assert (np.asarray(out.lengths) == n).all(), "exact-count mode did not give N codes"
        first_code, _, _ = compile_program(model, first, inputs)  # the same program stopped after one code
        _, ttft = timed(first_code, args.repeats)
        decode_s = statistics.median(times)
        mode = f"beam{args.beams}" if args.beams > 1 else "greedy"
        mode += "+sample" if args.sample else ""
        rows.append({
            "batch": batch, "mode": mode, "stage codes": stage_codes, "compile s": f"{compile_s:.2f}",
            "ops/step": step_ops(program), "ttft s": f"{statistics.median(ttft):.4f}",
            "decode s": f"{decode_s:.3f}", "tok/s/seq": f"{n / decode_s:.1f}", "tok/s": f"{batch * n / decode_s:.1f}",
            "peak mem": peak_memory(),
        })
    return rows


def print_table(rows: list[dict], title: str) -> None:
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print(title)
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)) + " |")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model instead of the official size")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=100, help="codes generated per sequence (forced)")
    parser.add_argument("--text-len", type=int, default=30, help="BPE tokens of text per sequence")
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--budget", type=int, default=0,
                        help="max_new_tokens, which sizes the KV cache (0: --new-tokens + 1, a tight cache; the "
                             "pipeline's default is 1500)")
    parser.add_argument("--cache_stage_codes", type=int, nargs="+", default=[FIRST_STAGE_CODES],
                        help="DecodeConfig.cache_stage_codes values to time (0: one KV cache for the budget)")
    parser.add_argument("--sample", action="store_true", help="sample (top-k 30, top-p 0.8, T 0.8) instead of argmax")
    parser.add_argument("--repetition-penalty", type=float, default=10.0)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    rows = run(args)
    size = "tiny" if args.tiny else "official 1280/24/20"
    print_table(rows, f"UnifiedVoice decode, {size}, {args.dtype}, {args.new_tokens} codes, text {args.text_len}, "
                      f"budget {code_budget(args)}, "
                      f"device {jax.devices()[0].device_kind}")


if __name__ == "__main__":
    main()
