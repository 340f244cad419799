"""Deterministic multi-speaker English demo corpus synthesized with espeak-ng.

    python -m data_pipeline.demo_corpus --out DIR [--num_utterances N --num_speakers K --seed S --num_workers W]

Layout written under ``out_dir``:
    wavs/<speaker>/<id>.wav   22.05 kHz mono 16-bit PCM (espeak-ng's native rate), silence lightly trimmed,
                              peak normalized to 0.9
    manifest.jsonl            one JSON object per utterance, in utterance order:
                              {"id", "audio_path" (relative to the manifest's folder), "text", "speaker",
                               "language": "en", "duration" (seconds), "sample_rate"}
    speakers.json             {speaker: {"voice": EspeakVoice fields, "description": ...}}
    corpus_config.json        what determines the content (seed, speakers, sentence list hash, version)

Determinism: utterance i always gets the same sentence, speaker and noise seed for a given (seed, num_speakers,
sentence list), and each utterance is synthesized from a freshly loaded espeak-ng (see data_pipeline.espeak),
so the same arguments give byte-identical wavs and manifest, whatever the order or number of worker processes.
The assignment is prefix-stable: a larger num_utterances keeps the first utterances unchanged.
Re-running skips wav files that already exist; re-running in a folder built with a different seed, speaker set
or sentence list raises an error instead of mixing corpora.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from data_pipeline.espeak import EspeakVoice, synthesize

__all__ = ["SpeakerDef", "BASE_SPEAKERS", "make_speakers", "load_sentences", "plan_utterances", "build_demo_corpus"]

CORPUS_FORMAT_VERSION = 1
SAMPLE_RATE = 22050
PEAK_LEVEL = 0.9
DEFAULT_SENTENCES = Path(__file__).parent / "data" / "sentences.txt"


@dataclass(frozen=True)
class SpeakerDef:
    """One demo speaker: an espeak voice (base voice + variant + prosody) and a human description."""

    speaker: str
    voice: EspeakVoice
    description: str

    def to_dict(self) -> dict:
        return {"voice": self.voice.to_dict(), "description": self.description}


def _spk(name: str, pitch: int, rate: int, pitch_range: int, description: str) -> tuple[EspeakVoice, str]:
    return EspeakVoice(name=name, rate=rate, pitch=pitch, pitch_range=pitch_range), description


# Hand-picked voices that differ in accent (base voice), voice quality/formants (variant), pitch, rate and
# intonation range. Alternating female/male so any prefix is mixed.
BASE_SPEAKERS: tuple[tuple[EspeakVoice, str], ...] = (
    _spk("en-us+f3", 60, 165, 60, "female, US accent, medium-high pitch"),
    _spk("en-us+m3", 40, 175, 50, "male, US accent, medium-low pitch"),
    _spk("en+f2", 70, 155, 70, "female, British accent, high pitch, slow, lively intonation"),
    _spk("en+m1", 30, 185, 40, "male, British accent, low pitch, fast"),
    _spk("en-gb-scotland+f4", 50, 160, 55, "female, Scottish accent"),
    _spk("en-us-nyc+m4", 45, 190, 45, "male, New York accent, fast"),
    _spk("en-029+f1", 65, 170, 65, "female, Caribbean accent"),
    _spk("en-gb-x-rp+m2", 35, 150, 60, "male, British received pronunciation, slow"),
    _spk("en-us+f5", 80, 180, 50, "female, US accent, very high pitch"),
    _spk("en-us+klatt", 45, 170, 50, "male, US accent, Klatt formant synthesizer"),
    _spk("en+linda", 55, 165, 45, "female, British accent, bright"),
    _spk("en+m7", 20, 145, 35, "male, British accent, very low pitch, slow, flat"),
    _spk("en-us+belinda", 45, 175, 60, "female, US accent"),
    _spk("en-gb-x-gbclan+m6", 40, 165, 55, "male, Lancashire accent"),
    _spk("en-us+Annie", 55, 160, 75, "female, US accent, wide intonation"),
    _spk("en-us+klatt3", 55, 180, 40, "male, US accent, Klatt synthesizer, higher pitch"),
)
_EXTRA_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "klatt", "klatt2")
_EXTRA_BASES = ("en-us", "en", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc")


def make_speakers(num_speakers: int, seed: int = 0) -> list[SpeakerDef]:
    """``num_speakers`` speaker definitions named spk00, spk01, ...

    The first ones come from BASE_SPEAKERS (fixed); beyond those, distinct combinations of base voice x variant
    x pitch x rate x range are drawn with ``seed``.
    """
    if num_speakers < 1:
        raise ValueError(f"num_speakers must be >= 1, got {num_speakers}")
    voices = [v for v, _ in BASE_SPEAKERS[:num_speakers]]
    descriptions = [d for _, d in BASE_SPEAKERS[:num_speakers]]
    rng = np.random.default_rng([seed, 1])
    while len(voices) < num_speakers:
        voice = EspeakVoice(
            name=f"{rng.choice(_EXTRA_BASES)}+{rng.choice(_EXTRA_VARIANTS)}",
            pitch=int(rng.integers(15, 86)),
            rate=int(rng.integers(140, 196)),
            pitch_range=int(rng.integers(30, 81)),
        )
        if voice not in voices:
            voices.append(voice)
            descriptions.append("random combination")
    width = max(2, len(str(num_speakers - 1)))
    return [SpeakerDef(f"spk{i:0{width}d}", v, d) for i, (v, d) in enumerate(zip(voices, descriptions))]


def load_sentences(path: str | os.PathLike | None = None) -> list[str]:
    """Non-empty, stripped lines of the sentence file (default: data_pipeline/data/sentences.txt)."""
    path = Path(path) if path is not None else DEFAULT_SENTENCES
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    sentences = [line for line in lines if line]
    if not sentences:
        raise ValueError(f"no sentences in {path}")
    return sentences


@dataclass(frozen=True)
class UtterancePlan:
    index: int
    id: str
    text: str
    speaker: str
    voice: EspeakVoice
    noise_seed: int
    rel_path: str


def plan_utterances(
    num_utterances: int, speakers: list[SpeakerDef], sentences: list[str], seed: int
) -> list[UtterancePlan]:
    """Deterministic, prefix-stable assignment of sentences and speakers to utterances 0..N-1.

    Sentences are taken in a seeded random order (each used once before any repeats, a new seeded order per
    pass); utterance i goes to speaker (i + offset) mod K with a seeded offset, so speakers get N/K each.
    """
    rng = np.random.default_rng([seed, 0])
    offset = int(rng.integers(len(speakers)))
    order: list[int] = []
    plans = []
    for i in range(num_utterances):
        if i >= len(order):
            order.extend(np.random.default_rng([seed, 2, len(order) // len(sentences)]).permutation(len(sentences)))
        spk = speakers[(i + offset) % len(speakers)]
        utt_id = f"{spk.speaker}_{i:06d}"
        noise_seed = int.from_bytes(hashlib.sha256(f"{seed}/{i}".encode()).digest()[:4], "little") & 0x7FFFFFFF
        plans.append(
            UtterancePlan(i, utt_id, sentences[order[i]], spk.speaker, spk.voice, noise_seed,
                          f"wavs/{spk.speaker}/{utt_id}.wav")
        )
    return plans


def trim_and_normalize(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Light silence trim (frames below -45 dB of the loudest 10 ms frame, keeping 50 ms margins), peak to 0.9.

    wave: float32 (T,). Returns float32 (T',).
    """
    frame = max(1, sample_rate // 100)
    n_frames = len(wave) // frame
    if n_frames > 0:
        rms = np.sqrt(np.mean(wave[: n_frames * frame].reshape(n_frames, frame).astype(np.float64) ** 2, axis=1))
        loud = np.nonzero(rms > rms.max() * 10 ** (-45 / 20))[0]
        if len(loud):
            margin = sample_rate // 20
            start = max(0, loud[0] * frame - margin)
            end = min(len(wave), (loud[-1] + 1) * frame + margin)
            wave = wave[start:end]
    peak = float(np.max(np.abs(wave))) if len(wave) else 0.0
    if peak > 0:
        wave = wave * (PEAK_LEVEL / peak)
    return wave.astype(np.float32)


def _write_wav_atomic(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    pcm = np.clip(np.round(wave * 32767.0), -32768, 32767).astype(np.int16)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    sf.write(str(tmp), pcm, sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def _make_utterance(root: str, plan: UtterancePlan) -> tuple[int, int, bool]:
    """Synthesize one utterance unless its wav exists. Returns (index, num_samples, synthesized)."""
    path = Path(root) / plan.rel_path
    if path.exists():
        return plan.index, sf.info(str(path)).frames, False
    wave, sr = synthesize(plan.text, plan.voice, seed=plan.noise_seed)
    if sr != SAMPLE_RATE:
        raise RuntimeError(f"espeak-ng produced {sr} Hz audio, expected {SAMPLE_RATE}")
    wave = trim_and_normalize(wave, sr)
    if len(wave) == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {plan.id}: {plan.text!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_wav_atomic(path, wave, sr)
    return plan.index, len(wave), True


def _make_batch(args: tuple[str, list[UtterancePlan]]) -> list[tuple[int, int, bool]]:
    root, plans = args
    return [_make_utterance(root, p) for p in plans]


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_demo_corpus(
    out_dir: str | os.PathLike,
    num_utterances: int = 2000,
    num_speakers: int = 12,
    seed: int = 0,
    sentences_path: str | os.PathLike | None = None,
    num_workers: int | None = None,
) -> Path:
    """Build (or complete) the demo corpus in ``out_dir``; returns the path of manifest.jsonl.

    num_workers: processes used for synthesis (spawned; each loads its own espeak-ng). None picks
        1 for small corpora (< 200 utterances) and min(cpu count, 8) otherwise. The output does not depend on it.
        With more than one worker, a script calling this must guard its entry point with
        ``if __name__ == "__main__":`` (multiprocessing "spawn" re-imports the main module).
    """
    if num_utterances < 1:
        raise ValueError(f"num_utterances must be >= 1, got {num_utterances}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sentences = load_sentences(sentences_path)
    speakers = make_speakers(num_speakers, seed)
    plans = plan_utterances(num_utterances, speakers, sentences, seed)

    config = {
        "format_version": CORPUS_FORMAT_VERSION,
        "seed": seed,
        "num_speakers": num_speakers,
        "sentences_sha256": hashlib.sha256("\n".join(sentences).encode()).hexdigest(),
        "speakers": {s.speaker: s.to_dict() for s in speakers},
        "sample_rate": SAMPLE_RATE,
        "peak_level": PEAK_LEVEL,
    }
    config_path = out / "corpus_config.json"
    config_text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    if config_path.exists():
        if config_path.read_text(encoding="utf-8") != config_text:
            raise ValueError(
                f"{out} holds a demo corpus built with different settings (see {config_path}); "
                "use a fresh folder or delete it"
            )
    else:
        _write_text_atomic(config_path, config_text)

    if num_workers is None:
        num_workers = 1 if num_utterances < 200 else min(os.cpu_count() or 1, 8)
    num_samples = [0] * len(plans)
    if num_workers <= 1:
        results = _make_batch((str(out), plans))
    else:
        batch = 25
        jobs = [(str(out), plans[i : i + batch]) for i in range(0, len(plans), batch)]
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(num_workers) as pool:
            results = [r for rs in pool.imap_unordered(_make_batch, jobs) for r in rs]
            pool.close()  # let the workers exit normally so they remove their private espeak-ng files
            pool.join()
    for index, n, _ in results:
        num_samples[index] = n

    lines = []
    for p, n in zip(plans, num_samples):
        record = {
            "id": p.id,
            "audio_path": p.rel_path,
            "text": p.text,
            "speaker": p.speaker,
            "language": "en",
            "duration": round(n / SAMPLE_RATE, 6),
            "sample_rate": SAMPLE_RATE,
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    _write_text_atomic(out / "speakers.json", json.dumps(config["speakers"], indent=2, sort_keys=True) + "\n")
    manifest = out / "manifest.jsonl"
    _write_text_atomic(manifest, "\n".join(lines) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the deterministic espeak-ng demo corpus.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num_utterances", type=int, default=2000)
    parser.add_argument("--num_speakers", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sentences", default=None, help="sentence file (default: the bundled list)")
    parser.add_argument("--num_workers", type=int, default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifest = build_demo_corpus(
        args.out, args.num_utterances, args.num_speakers, args.seed, args.sentences, args.num_workers
    )
    elapsed = time.perf_counter() - start
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    hours = sum(r["duration"] for r in records) / 3600
    print(
        f"{manifest}: {len(records)} utterances, {len({r['speaker'] for r in records})} speakers, "
        f"{hours:.3f} hours of audio, built in {elapsed:.1f} s"
    )


if __name__ == "__main__":
    main()
