"""Audio files to semantic codes (``indextts2-encode``): the quantized index bank as a batch job.

    python -m experiments.encode --model checkpoints/IndexTTS-2 --out codes.jsonl a.wav b.flac ...
    python -m experiments.encode --model bundle/ --out codes.jsonl --dir corpus/ --glob '**/*.wav' --batch_size 8
    python -m experiments.encode --model bundle/ --out codes.jsonl --list files.txt      # one path a line

Each file goes through the model's semantic front end (w2v-BERT 2.0 ``hidden_states[17]``, normalised, on the
16 kHz audio of infer_v2's speaker-prompt path; or the demo's stacked log-mel) and the semantic codec's
``quantize``: the codes the GPT predicts (50 per second officially, 43.07 with the demo front end). Files are
batched by length (``data_pipeline.model_features.ModelFeatures.codes``: each row equals the file run alone),
each batch split over all local devices (``--devices``); several hosts (or one process per device group) share
a file list with ``--process_index i --process_count n``, each writing its own ``--out``. Each length bucket is
a compiled program: ``--compilation_cache DIR`` keeps them for a resumed or repeated job.

Output: one JSON object per encoded file, ``{"audio": path, "codes": [...], "num_codes": T, "seconds": s}``,
appended and flushed chunk by chunk (``--chunk`` files). A killed run loses at most the chunk in flight: run
the same command again and the files already in ``--out`` are skipped (``--overwrite`` starts afresh). A file
that cannot be read (missing, corrupt, silent, shorter than ``--min_seconds``, longer than ``--max_seconds``)
is skipped and counted by reason; the summary (``--json``: the whole report) says how many and which.
``--model`` takes what ``indextts2-synthesize`` takes: an official model directory, a converted checkpoint,
an exported bundle, or ``random:tiny`` / ``random:official`` (random weights, for smoke tests and timing).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from experiments import random_model_assets, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="indextts2-encode", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model dir / bundle / checkpoint, or random:tiny|random:official")
    p.add_argument("audio", nargs="*", help="audio files")
    p.add_argument("--list", help="a text file of audio paths, one a line (relative ones: from its folder)")
    p.add_argument("--dir", help="a folder to take audio files from (with --glob)")
    p.add_argument("--glob", default="**/*.wav", help="pattern under --dir (default '**/*.wav')")
    p.add_argument("--out", required=True, help="output JSONL (appended to; files already there are skipped)")
    p.add_argument("--overwrite", action="store_true", help="start --out afresh instead of resuming it")
    p.add_argument("--batch_size", type=int, default=8, help="files per model call")
    p.add_argument("--frame_bucket", type=int, default=64,
                   help="feature frames padded to a multiple of this (one compiled program per multiple; 64 = "
                        "1.28 s at 50 Hz: larger, fewer compiles and more padding)")
    p.add_argument("--chunk", type=int, default=64, help="files read and written per step (the resume grain)")
    p.add_argument("--min_seconds", type=float, default=0.1, help="shorter files are skipped")
    p.add_argument("--max_seconds", type=float, default=60.0,
                   help="longer files are skipped (w2v-BERT attends over the whole file: memory grows with the "
                        "square of its length; 60 s is ~0.6 GB of scores per file and layer in float32)")
    p.add_argument("--devices", type=int, default=0,
                   help="local devices each batch is split over (0: all; weights replicated, rows sharded)")
    p.add_argument("--process_index", type=int, default=0, help="this process takes files i, i+n, i+2n, ...")
    p.add_argument("--process_count", type=int, default=1, help="n: processes (hosts) sharing the file list")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype of w2v-BERT and the codec encoder (the code argmax stays float32)")
    p.add_argument("--compilation_cache", metavar="DIR",
                   help="JAX's persistent compilation cache: a resumed or repeated job reads its compiled "
                        "programs (one per length bucket) from here")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--no_progress", action="store_true", help="no progress lines")
    return p


def _inputs(args, parser) -> list[str]:
    """The audio paths of the arguments, ``--list`` and ``--dir``, in that order, each once (normalised)."""
    paths = list(args.audio)
    if args.list:
        root = Path(args.list).parent
        try:
            lines = Path(args.list).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            parser.error(f"--list {args.list}: {e.strerror or e}")
        paths += [str(p if Path(p).is_absolute() else root / p) for p in (x.strip() for x in lines) if p]
    if args.dir:
        if not Path(args.dir).is_dir():
            parser.error(f"--dir {args.dir}: not a folder")
        paths += sorted(glob.glob(os.path.join(args.dir, args.glob), recursive=True))
    if not paths:
        parser.error("no audio: give files, --list or --dir")
    return list(dict.fromkeys(os.path.normpath(p) for p in paths))  # "./a.wav" and "a.wav" are one file


_LINE_START = b'{"audio": '  # how every output line begins (json.dumps of a dict whose first key is "audio")


def _resume(out: Path) -> set[str]:
    """The ``audio`` of every line an earlier run wrote to ``out``, read line by line (an output may be large).
    An unfinished last line (a run killed mid-write) is cut off; a file with any other line that is not ours is
    refused untouched (ConfigError). (``indextts2_jax.jsonl`` reads whole lines only; this needs the offsets.)"""
    from indextts2_jax.errors import ConfigError

    def foreign(which: str) -> ConfigError:
        return ConfigError(f"--out {out}: {which} is not an encoded file's line: is it another file? "
                           "(give a new --out, or --overwrite to replace it)")

    done, complete_bytes, partial = set(), 0, b""
    with open(out, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.endswith(b"\n"):  # only the last line can lack it
                partial = line
                break
            try:
                record = json.loads(line)
                ours = isinstance(record, dict) and "audio" in record and "codes" in record
            except (UnicodeDecodeError, json.JSONDecodeError):
                ours = False
            if not ours:
                raise foreign(f"line {lineno}")
            done.add(record["audio"])
            complete_bytes += len(line)
    if partial:
        if not partial.startswith(_LINE_START):
            raise foreign("its last line")
        os.truncate(out, complete_bytes)
    return done


def load_features(spec: str, dtype: str, batch_size: int, devices: int = 1, frame_bucket: int = 64):
    """``ModelFeatures`` with the codec only, for ``--model``'s path or ``random:tiny|official``, its batches
    split over ``devices`` local devices (0: all)."""
    from data_pipeline.model_features import ModelFeatures

    assets = random_model_assets(spec)
    return ModelFeatures(spec if assets is None else assets, semantic=False, codec=True, style=False,
                         batch_size=batch_size, frame_bucket=frame_bucket, dtype=dtype, devices=devices or None)


def main(argv=None, features=None) -> dict:
    """Parse ``argv``, encode, append to ``--out``; returns the report. ``features`` reuses a built
    ``ModelFeatures`` (``--model`` is then not loaded)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.batch_size, args.chunk, args.frame_bucket) < 1:
        parser.error("--batch_size, --chunk and --frame_bucket must be >= 1")
    if not 0 <= args.process_index < args.process_count:
        parser.error(f"--process_index {args.process_index} is outside 0..--process_count-1")
    if args.devices < 0:
        parser.error("--devices must be >= 0 (0: all local devices)")
    if args.min_seconds < 0.05 or args.max_seconds < args.min_seconds:
        parser.error("need 0.05 <= --min_seconds <= --max_seconds (the front ends need a few frames)")
    paths = _inputs(args, parser)[args.process_index::args.process_count]
    out = Path(args.out)
    if out.is_dir():
        parser.error(f"--out {out} is a folder; give a file (codes.jsonl)")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.overwrite or not out.exists():
        out.write_text("", encoding="utf-8")
    done = _resume(out)
    todo = [p for p in paths if p not in done]

    from indextts2_jax.audio import load_audio
    from indextts2_jax.errors import AudioError

    if args.compilation_cache:
        from indextts2_jax import compile_cache

        compile_cache.enable(args.compilation_cache)
    if features is None and todo:
        features = load_features(args.model, args.dtype, args.batch_size, args.devices, args.frame_bucket)
    skipped: list[dict] = []
    n_codes = 0
    audio_seconds = model_s = 0.0
    start = time.perf_counter()
    with open(out, "a", encoding="utf-8") as f:
        for c0 in range(0, len(todo), args.chunk):
            waves, names = [], []
            for path in todo[c0: c0 + args.chunk]:
                try:  # the speaker-prompt load of infer_v2 (librosa at 22.05 kHz), whole file
                    waves.append(load_audio(path, 22050, min_seconds=args.min_seconds, max_seconds=args.max_seconds))
                    names.append(path)
                except AudioError as e:
                    skipped.append({"audio": path, "reason": type(e).__name__, "error": str(e)})
            t0 = time.perf_counter()
            codes = features.codes(waves) if waves else []
            model_s += time.perf_counter() - t0
            for path, wave, c in zip(names, waves, codes):
                seconds = wave.shape[0] / 22050.0
                f.write(json.dumps({"audio": path, "codes": c.tolist(), "num_codes": int(c.shape[0]),
                                    "seconds": round(seconds, 4)}) + "\n")
                audio_seconds += seconds
                n_codes += int(c.shape[0])
            f.flush()
            if not args.no_progress:
                print(f"{min(c0 + args.chunk, len(todo))}/{len(todo)} files ({len(skipped)} skipped), "
                      f"{audio_seconds:.1f} s of audio", file=sys.stderr)
    wall = time.perf_counter() - start
    report = {"out": str(out), "files": len(paths), "already_done": len(paths) - len(todo),
              "encoded": len(todo) - len(skipped), "skipped": len(skipped),
              "skipped_by_reason": dict(Counter(s["reason"] for s in skipped)), "skipped_files": skipped,
              "codes": n_codes, "audio_seconds": round(audio_seconds, 3), "wall_s": round(wall, 3),
              "model_s": round(model_s, 3), "code_rate": getattr(features, "code_rate", None),
              "front_end": getattr(features, "front_end", None),
              "audio_seconds_per_second": round(audio_seconds / wall, 2) if wall > 0 else None}
    if args.compilation_cache:
        report["compilation_cache"] = compile_cache.stats()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"encoded {report['encoded']} files ({report['audio_seconds']:.1f} s of audio, {n_codes} codes) in "
              f"{wall:.1f} s -> {out}; {report['already_done']} already there; {len(skipped)} skipped"
              + "".join(f"\n  skipped {s['audio']}: {s['error']}" for s in skipped), file=sys.stderr)
    return report


def run(argv=None) -> None:
    """Console-script entry point: errors about the input end the program with a message, not a traceback."""
    run_cli(main, argv)


if __name__ == "__main__":
    run()
