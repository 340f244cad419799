"""Command-line synthesis with IndexTTS-2 (``indextts2-synthesize``).

One text: ::

    python -m experiments.synthesize --model checkpoints/IndexTTS-2 --text "Hello there." \
        --speaker_prompt voice.wav --out out.wav [--emotion_prompt sad.wav --emotion_alpha 0.8] \
        [--emotion_vector 0 0 0.6 0 0 0 0 0 | --emotion_text "I can't believe it!"] \
        [--target_tokens 250 | --duration 5.0] [--json]

Many jobs (one JSON object per line with the keys of ``IndexTTS2.synthesize_batch``; relative prompt
paths are read from the jobs file's folder): ::

    python -m experiments.synthesize --model DIR --jobs jobs.jsonl --out_dir wavs/ --batch_size 8

Streaming (infer_v2's ``stream_return``): ``--stream`` writes each text segment to ``--out`` as soon as it is
ready (the file is a valid WAV after every segment) and reports the time to the first audio;
``--quick_streaming_tokens 20`` makes the first segment short: ::

    python -m experiments.synthesize --model DIR --text_file book.txt --speaker_prompt voice.wav --out out.wav \
        --stream --quick_streaming_tokens 20

``--model`` takes an official model directory (``config.yaml`` + checkpoints), an exported bundle or a
converted checkpoint, or ``random:tiny`` / ``random:official`` (random weights, for smoke tests and
timing). Sampling defaults are infer_v2's (beam 3 with sampling, top-k 30, top-p 0.8, temperature 0.8,
repetition penalty 10); ``--no-do_sample --num_beams 1`` is greedy. ``--json`` prints a report with
per-stage timings (prompt features, conditioning, generation, latent, s2m, vocoder) and the real-time
factor. ``--compilation_cache DIR`` keeps the compiled stages on disk: the next run with the same model
config and shapes skips XLA's compiles (the report's ``compilation_cache`` counts the hits).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments import random_model_assets, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="indextts2-synthesize", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model dir / bundle / checkpoint, or random:tiny|random:official")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", help="text to speak")
    src.add_argument("--text_file", help="UTF-8 file with the text to speak")
    src.add_argument("--jobs", help="JSONL file of jobs (batch mode; needs --out_dir)")
    p.add_argument("--speaker_prompt", help="speaker reference audio")
    p.add_argument("--emotion_prompt", help="emotion reference audio")
    p.add_argument("--emotion_alpha", type=float, default=1.0, help="emotion strength (audio and vector modes)")
    p.add_argument("--emotion_vector", type=float, nargs=8, metavar="W",
                   help="8 weights: happy angry sad afraid disgusted melancholic surprised calm")
    p.add_argument("--normalize_emotion_vector", action="store_true",
                   help="apply the official webui's bias and 0.8 cap to --emotion_vector")
    p.add_argument("--use_random", action="store_true", help="vector mode: random feat rows instead of nearest")
    p.add_argument("--use_emotion_text", action="store_true",
                   help="text-to-emotion: the emotion model reads --emotion_text (default: the text) and gives the "
                        "8 weights of the vector mode")
    p.add_argument("--emotion_text", help="the text whose emotion to use (implies --use_emotion_text)")
    p.add_argument("--emotion_text_model",
                   help="the text-to-emotion model folder (a Qwen3 LM, the official qwen0.6bemo4-merge/); default: "
                        "the one an official model directory names")
    dur = p.add_mutually_exclusive_group()
    dur.add_argument("--target_tokens", type=int, help="exact number of semantic codes for the whole text")
    dur.add_argument("--duration", type=float, help="target duration in seconds (converted to codes)")
    p.add_argument("--do_sample", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--num_beams", type=int, default=3)
    p.add_argument("--top_k", type=int, default=30)
    p.add_argument("--top_p", type=float, default=0.8)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--repetition_penalty", type=float, default=10.0)
    p.add_argument("--length_penalty", type=float, default=0.0)
    p.add_argument("--max_mel_tokens", type=int, default=None,
                   help="most codes per segment (default 1500, or fewer when the model's GPT holds fewer positions)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_text_tokens_per_segment", type=int, default=120)
    p.add_argument("--interval_silence_ms", type=float, default=200)
    p.add_argument("--quick_streaming_tokens", type=int, default=0,
                   help="make the first segment short: merge segments only after this many text tokens")
    p.add_argument("--stream", action="store_true",
                   help="single text: write each segment to --out as soon as it is ready")
    p.add_argument("--diffusion_steps", type=int, default=None, help="CFM steps (default 25)")
    p.add_argument("--cfg_rate", type=float, default=None, help="CFM guidance (default 0.7)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--attention", default="einsum", choices=("einsum", "xla", "cudnn"),
                   help="the S2M estimator's attention (cudnn: flash attention, NVIDIA GPUs, --dtype bfloat16)")
    p.add_argument("--batch_size", type=int, default=1, help="segments run together (jobs mode default 8)")
    p.add_argument("--exact_vocoder", action="store_true", help="vocode each segment at its own length")
    p.add_argument("--bucket_conditioning", action="store_true",
                   help="pad prompts to buckets in the conditioning encoders too (fewer compiles, ~3e-4 drift)")
    p.add_argument("--out", help="output wav (single text)")
    p.add_argument("--out_dir", help="output folder (jobs mode)")
    p.add_argument("--compilation_cache", metavar="DIR",
                   help="JAX's persistent compilation cache: compiled stages are kept here for the next run")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def load_model(spec: str, dtype: str, **kwargs):
    import jax.numpy as jnp

    from indextts2_jax.infer.pipeline import IndexTTS2

    assets = random_model_assets(spec)
    if assets is not None:
        return IndexTTS2(assets, dtype=jnp.dtype(dtype), **kwargs)
    return IndexTTS2.from_pretrained(spec, dtype=jnp.dtype(dtype), **kwargs)


def _sampling(args) -> dict:
    return dict(do_sample=args.do_sample, num_beams=args.num_beams, top_k=args.top_k, top_p=args.top_p,
                temperature=args.temperature, repetition_penalty=args.repetition_penalty,
                length_penalty=args.length_penalty, max_mel_tokens=args.max_mel_tokens)


def main(argv=None, tts=None) -> dict:
    """Parse ``argv``, synthesize, write the outputs; returns the report. ``tts`` reuses a built model."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs:
        if not args.out_dir:
            parser.error("--jobs needs --out_dir")
        if args.stream:
            parser.error("--stream streams one text (--text or --text_file), not --jobs")
    else:
        if not (args.text is not None or args.text_file):
            parser.error("give --text, --text_file or --jobs")
        if not args.speaker_prompt:
            parser.error("--speaker_prompt is required")
        if not args.out:
            parser.error("--out is required")
    from indextts2_jax import compile_cache  # imports jax, as the model below does

    if args.compilation_cache:
        compile_cache.enable(args.compilation_cache)
    if tts is None:
        tts = load_model(args.model, args.dtype, diffusion_steps=args.diffusion_steps, cfg_rate=args.cfg_rate,
                         exact_vocoder=args.exact_vocoder, bucket_conditioning=args.bucket_conditioning,
                         attention=args.attention, emotion_text_model=args.emotion_text_model)
    progress = not args.no_progress
    if args.jobs:
        report = tts.synthesize_jsonl(args.jobs, args.out_dir, batch_size=max(args.batch_size, 1),
                                      progress=progress, **_sampling(args))
    else:
        text = args.text if args.text is not None else Path(args.text_file).read_text(encoding="utf-8")
        if args.emotion_vector is not None and args.normalize_emotion_vector:
            from indextts2_jax.infer.pipeline import normalize_emotion_vector

            args.emotion_vector = normalize_emotion_vector(args.emotion_vector)
        options = dict(emotion_prompt=args.emotion_prompt, emotion_vector=args.emotion_vector,
                       emotion_alpha=args.emotion_alpha, target_tokens=args.target_tokens,
                       duration_seconds=args.duration, seed=args.seed,
                       max_text_tokens_per_segment=args.max_text_tokens_per_segment,
                       interval_silence_ms=args.interval_silence_ms, use_emotion_text=args.use_emotion_text,
                       emotion_text=args.emotion_text, use_random=args.use_random,
                       quick_streaming_tokens=args.quick_streaming_tokens, **_sampling(args))
        if args.stream:
            report = _stream_to_wav(tts, text, args.speaker_prompt, args.out, progress, options)
        else:
            from indextts2_jax.infer.pipeline import write_wav

            wave, sr, report = tts.synthesize(text, args.speaker_prompt, batch_size=max(args.batch_size, 1),
                                              progress=progress, **options)
            write_wav(args.out, wave, sr)
        report = {k: v for k, v in report.items() if k != "batch"} | {"batch": report["batch"], "wav": args.out}
    if args.compilation_cache:
        report["compilation_cache"] = compile_cache.stats()
    if args.json:
        from indextts2_jax.infer.pipeline import _json_default

        print(json.dumps(report, indent=2, default=_json_default))
    else:
        b = report["batch"]
        print(f"{b['audio_seconds']:.2f} s of audio in {b['wall_s']:.2f} s (RTF {b['rtf']}); stages: "
              + ", ".join(f"{k} {v:.2f}s" for k, v in b["timings_s"].items()), file=sys.stderr)
    return report


def _stream_to_wav(tts, text: str, speaker_prompt, out, progress: bool, options: dict) -> dict:
    """``synthesize_stream`` into a 16-bit WAV written segment by segment (header updated after each one, so
    a reader sees every finished segment); returns the stream's final report."""
    import numpy as np
    import soundfile as sf

    chunks = tts.synthesize_stream(text, speaker_prompt, **options)  # bad input raises before the file exists
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    report = None
    with sf.SoundFile(str(out), "w", samplerate=tts.sample_rate, channels=1, subtype="PCM_16") as f:
        for chunk in chunks:
            f.write(np.clip(chunk.audio, -1.0, 1.0))
            f.flush()
            if progress:
                seconds = chunk.audio.shape[0] / chunk.sample_rate
                print(f"segment {chunk.segment + 1}/{chunk.num_segments}: {seconds:.2f} s of audio at "
                      f"{chunk.elapsed_s:.2f} s", file=sys.stderr)
            report = chunk.report if chunk.report is not None else report
    return report


def run(argv=None) -> None:
    """Console-script entry point: errors about the input end the program with a message, not a traceback."""
    run_cli(main, argv)


if __name__ == "__main__":
    run()
