"""End-to-end IndexTTS-2 synthesis speed with random weights: real-time factor, per-stage times, peak memory.

    python -m benchmarks.synthesize                                  # official sizes, float32, CPU
    python -m benchmarks.synthesize --dtype bfloat16 --jobs 8        # GPU: bfloat16 compute, batch of 8 jobs
    python -m benchmarks.synthesize --size tiny --tokens 40 --prompt_seconds 2 --diffusion_steps 4   # smoke

Workload (matches benchmarks/NOTES.md's official CPU baseline row "end to end"): a new ``--prompt_seconds``
speaker prompt (features computed, not cached), one text segment, exactly ``--tokens`` codes per job
(generation's exact-count mode, so random weights give a fixed length: 500 codes = 860 mel frames = 10 s),
``--num_beams`` (default 3, infer_v2's beam sampling; 1 with ``--greedy``), the code budget
``--max_mel_tokens`` (default: the pipeline's, infer_v2's 1500, which sizes the KV cache: what a user runs;
pass ``--max_mel_tokens 500`` for a cache as tight as the output), ``--diffusion_steps`` Euler
steps with CFG 0.7, BigVGAN. Params are random (``random_assets(init="fast")``: shapes from each model's
init, values drawn in NumPy; no files).

``--stream N`` adds a streaming row (``synthesize_stream``, infer_v2's ``stream_return``): the sentence said N
times, one segment each (``max_text_tokens_per_segment`` = one sentence), ``--tokens`` codes per segment, a new
prompt; its table gives the time to the first audio beside the whole call's wall time.

Rows: ``batch 1`` = ``synthesize`` of one job; ``batch N`` = ``synthesize_batch`` of ``--jobs`` jobs with the
same prompt (its features cached; one batched pass through every stage). ``first call`` includes compilation.
Columns: stage seconds (prompt features, conditioning, generation, latent, s2m, vocoder), wall seconds, audio
seconds, RTF = wall / audio seconds, peak memory (device ``peak_bytes_in_use`` on GPU/TPU, max RSS on CPU).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import peak_memory_bytes

STAGE_COLUMNS = ("prompt", "conditioning", "generation", "latent", "s2m", "vocoder")
TEXT = ("The quick brown fox jumps over the lazy dog, and every morning we walk to the river to watch "
        "the boats go by.")


def _peak_memory_gb() -> tuple[float, str]:
    value, kind = peak_memory_bytes()
    return value / 2**30, {"device": "device peak", "max_rss": "max RSS"}[kind]


def _prompt(path: Path, seconds: float, seed: int = 0) -> str:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 22050)) / 22050
    wave = 0.2 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2.5 * t)) + 0.02 * rng.normal(size=t.size)
    sf.write(str(path), wave.astype(np.float32), 22050)
    return str(path)


def _row(name: str, report_batch: dict, wall: float) -> dict:
    t = report_batch["timings_s"]
    audio = report_batch["audio_seconds"]
    mem, _ = _peak_memory_gb()
    return dict(run=name, **{k: t.get(k, 0.0) for k in STAGE_COLUMNS}, wall=wall, audio=audio,
                rtf=wall / audio if audio else float("nan"), peak_gb=mem)


def _print_table(rows: list[dict], mem_kind: str) -> None:
    cols = ["run", *STAGE_COLUMNS, "wall", "audio", "rtf", "peak_gb"]
    head = ["run", "prompt s", "cond s", "gen s", "latent s", "s2m s", "vocoder s", "wall s", "audio s", "RTF",
            f"{mem_kind} GB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["run"]] + [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols[1:]]
        print("| " + " | ".join(cells) + " |")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=("official", "tiny"), default="official")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--attention", choices=("einsum", "xla", "cudnn"), default="einsum",
                   help="the S2M estimator's attention (cudnn: flash attention, NVIDIA GPUs, bfloat16)")
    p.add_argument("--tokens", type=int, default=500, help="codes per job (500 = 10 s of speech)")
    p.add_argument("--jobs", type=int, default=4, help="jobs in the batched row (0 = skip it)")
    p.add_argument("--prompt_seconds", type=float, default=10.0)
    p.add_argument("--num_beams", type=int, default=3)
    p.add_argument("--max_mel_tokens", type=int, default=None,
                   help="code budget per segment (sizes the KV cache); default: the pipeline's (1500, as infer_v2)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (num_beams 1, no sampling)")
    p.add_argument("--diffusion_steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stream", type=int, default=0, metavar="N",
                   help="also stream a text of N one-sentence segments (time to first audio); 0 = skip")
    args = p.parse_args(argv)

    from indextts2_jax.infer import random_assets as ra
    from indextts2_jax.infer.pipeline import IndexTTS2

    config = ra.official_config() if args.size == "official" else ra.tiny_config()
    t0 = time.perf_counter()
    # the host arrays are not kept: the pipeline holds the device copy (peak memory as a loaded model has it)
    tts = IndexTTS2(ra.random_assets(config, args.seed, init="fast"), dtype=jnp.dtype(args.dtype),
                    diffusion_steps=args.diffusion_steps, attention=args.attention)
    print(f"# {args.size} sizes, {args.dtype}, S2M attention {args.attention}, {jax.devices()[0].device_kind} "
          f"({jax.default_backend()}), "
          f"assets {time.perf_counter() - t0:.1f} s")
    sampling = dict(max_mel_tokens=args.max_mel_tokens, repetition_penalty=10.0)  # None: the pipeline default
    if args.greedy:
        sampling.update(do_sample=False, num_beams=1)
    else:
        sampling.update(do_sample=True, num_beams=args.num_beams)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        prompt = _prompt(Path(d) / "prompt.wav", args.prompt_seconds, args.seed)
        job = dict(text=TEXT, speaker_prompt=prompt, target_tokens=args.tokens, seed=args.seed)
        for name in ("batch 1, first call", "batch 1"):
            tts.prompt_cache.clear()  # a new prompt every time: its features are part of the work
            t = time.perf_counter()
            (_, _, rep), = tts.synthesize_batch([job], batch_size=1, **sampling)
            rows.append(_row(name, rep["batch"], time.perf_counter() - t))
        if args.jobs > 0:
            jobs = [dict(job, seed=args.seed + i) for i in range(args.jobs)]
            for name in (f"batch {args.jobs}, first call", f"batch {args.jobs}"):
                t = time.perf_counter()
                res = tts.synthesize_batch(jobs, batch_size=args.jobs, **sampling)
                rows.append(_row(name, res[0][2]["batch"], time.perf_counter() - t))
        stream_rows = _stream_rows(tts, prompt, args, sampling) if args.stream > 0 else []
    _, kind = _peak_memory_gb()
    print(f"# {args.tokens} codes/job = {int(args.tokens * 1.72)} mel frames; prompt {args.prompt_seconds} s; "
          f"{'greedy' if args.greedy else f'beam {args.num_beams} sampling'}; code budget "
          f"{tts._decode_config(sampling).max_new_tokens}; {args.diffusion_steps} CFM steps")
    _print_table(rows, kind)
    if stream_rows:
        print()
        print("| run | segments | first audio s | wall s | audio s | RTF |")
        print("|---|---|---|---|---|---|")
        for r in stream_rows:
            print(f"| {r['run']} | {r['segments']} | {r['first_audio']:.3f} | {r['wall']:.3f} | {r['audio']:.3f} | "
                  f"{r['rtf']:.3f} |")
    return rows + stream_rows


def _stream_rows(tts, prompt: str, args, sampling: dict) -> list[dict]:
    """``synthesize_stream`` of TEXT said ``args.stream`` times, one segment per sentence, ``args.tokens`` codes
    each, a new prompt: the time to the first chunk and the whole call."""
    sentence_tokens = len(tts.tokenizer.segment(TEXT)[0])
    text = " ".join([TEXT] * args.stream)
    tts.prompt_cache.clear()
    t = time.perf_counter()
    chunks = tts.synthesize_stream(text, prompt, target_tokens=args.tokens * args.stream, seed=args.seed,
                                   max_text_tokens_per_segment=sentence_tokens, **sampling)
    first = None
    for chunk in chunks:
        first = chunk.elapsed_s if first is None else first
        report = chunk.report
    wall = time.perf_counter() - t
    audio = report["audio_seconds"]
    return [dict(run="stream", segments=len(report["segments"]), first_audio=first, wall=wall, audio=audio,
                 rtf=wall / audio)]


if __name__ == "__main__":
    main()
