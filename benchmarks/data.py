"""GPT-stage input pipeline throughput (examples/s per host) from preprocessed shards, 0/1/2 workers.

    python -m benchmarks.data                        # synthetic corpus, preprocessed into a temp dir
    python -m benchmarks.data --shards DIR --bpe_model M   # existing shards (split "train")

Without ``--shards`` it writes ``--num_utterances`` sine+noise wavs (1-10 s, 4 speakers), trains a
tiny BPE model and runs :mod:`data_pipeline.preprocess` (mel_stacked + text_ids), then times the
demo GPT pipeline (``configs/demo.py:stage=gpt``: batch 8, buckets 128/256/512 frames of 160-d
features, prompt crops from same-speaker utterances). "startup" is the time to the first batch
(worker spawn included); the rate counts valid examples over ``--batches`` batches after it.
Target: >= 500 examples/s per host with 2 workers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def build_shards(root: Path, num_utterances: int, num_workers: int) -> tuple[Path, str]:
    import soundfile as sf

    from data_pipeline import preprocess as pp
    from data_pipeline.manifest import Utterance, write_manifest
    from indextts2_jax.text.tokenizer import train_bpe

    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches".split()
    utts = []
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    for i in range(num_utterances):
        sr = 22050
        seconds = 1.0 + 9.0 * rng.random()
        t = np.arange(int(seconds * sr)) / sr
        wave = 0.3 * np.sin(2 * np.pi * (120 + 5 * (i % 40)) * t) + 0.02 * rng.standard_normal(t.shape)
        path = root / "wavs" / f"u{i:05d}.wav"
        sf.write(str(path), wave.astype(np.float32), sr, subtype="PCM_16")
        text = " ".join(rng.choice(words, size=int(3 + seconds * 2)))
        utts.append(Utterance(f"u{i:05d}", str(path), text, f"spk{i % 4}", "en", seconds, sr))
    write_manifest(root / "manifest.jsonl", utts)
    bpe = str(train_bpe([u.text for u in utts], 64, root / "bpe"))
    opts = pp.PreprocessOptions(features=("text_ids", "mel_stacked"), bpe_model=bpe, max_audio_seconds=12.0)
    t0 = time.perf_counter()
    rep = pp.preprocess(utts, root / "shards", opts, num_workers=num_workers, num_shards=4, valid_fraction=0.0,
                        progress=False)
    dt = time.perf_counter() - t0
    print(f"preprocessed {rep['total']['examples']} utterances ({rep['total']['hours'] * 60:.1f} min of audio) "
          f"with {num_workers} workers in {dt:.1f} s ({rep['total']['examples'] / dt:.1f} utt/s)")
    return root / "shards", bpe


def measure(shards: Path, bpe: str, workers: int, batches: int) -> tuple[float, float, int]:
    from configs import demo
    from data_pipeline.pipeline import make_pipeline

    cfg = demo.get_config("stage=gpt")
    t0 = time.perf_counter()
    p = make_pipeline(cfg, shards_dir=shards, num_workers=workers, process_index=0, process_count=1,
                      bpe_model=bpe)
    it = iter(p)
    next(it)
    startup = time.perf_counter() - t0
    n = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        n += int(next(it)["valid"].sum())
    return startup, n / (time.perf_counter() - t0), p.plan.host_batch_size


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", default="")
    ap.add_argument("--bpe_model", default="")
    ap.add_argument("--num_utterances", type=int, default=200)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--preprocess_workers", type=int, default=2)
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        if a.shards:
            shards, bpe = Path(a.shards), a.bpe_model
        else:
            shards, bpe = build_shards(Path(tmp), a.num_utterances, a.preprocess_workers)
        print(f"{'workers':>7} | {'batch':>5} | {'startup s':>9} | {'examples/s':>10}")
        print(f"{'-' * 7}-+-{'-' * 5}-+-{'-' * 9}-+-{'-' * 10}")
        for w in [int(x) for x in a.workers.split(",")]:
            startup, rate, b = measure(shards, bpe, w, a.batches)
            print(f"{w:>7} | {b:>5} | {startup:>9.2f} | {rate:>10.1f}")


if __name__ == "__main__":
    main()
