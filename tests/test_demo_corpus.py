"""Tests for the espeak-ng binding and the deterministic demo corpus (data_pipeline.demo_corpus)."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_pipeline.demo_corpus import BASE_SPEAKERS, build_demo_corpus, load_sentences, make_speakers
from data_pipeline.espeak import EspeakError, EspeakVoice, sample_rate, synthesize

NUM_UTTS = 40
NUM_SPEAKERS = 10
MANIFEST_KEYS = {"id", "audio_path", "text", "speaker", "language", "duration", "sample_rate"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "corpus"
    manifest = build_demo_corpus(out, num_utterances=NUM_UTTS, num_speakers=NUM_SPEAKERS, seed=0)
    return manifest


def _records(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _log_band_spectrum(wave: np.ndarray, sr: int, n_fft: int = 1024, hop: int = 256, n_bands: int = 40):
    """Long-term average log power in log-spaced bands (80 Hz..8 kHz) over non-silent frames, mean-removed."""
    frames = np.lib.stride_tricks.sliding_window_view(wave, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    energy = power.sum(1)
    power = power[energy > energy.max() * 1e-3]
    edges = np.geomspace(80, 8000, n_bands + 1) * n_fft / sr
    bins = np.arange(power.shape[1])
    bands = np.stack([power[:, (bins >= a) & (bins < b)].sum(1) for a, b in zip(edges[:-1], edges[1:])], 1)
    log_bands = np.log(bands.mean(0) + 1e-10)
    return log_bands - log_bands.mean()


def _median_f0(wave: np.ndarray, sr: int, fmin: float = 60.0, fmax: float = 500.0, n: int = 1024) -> float:
    """Median autocorrelation pitch over loud, clearly periodic frames."""
    f0s = []
    for start in range(0, len(wave) - n, n // 2):
        x = wave[start : start + n] - wave[start : start + n].mean()
        if np.sqrt(np.mean(x**2)) < 0.05:
            continue
        ac = np.fft.irfft(np.abs(np.fft.rfft(x, 2 * n)) ** 2)[:n]
        lo, hi = int(sr / fmax), int(sr / fmin)
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            f0s.append(sr / lag)
    return float(np.median(f0s)) if f0s else float("nan")


def test_espeak_binding_basics():
    assert sample_rate() == 22050
    text = "The quick brown fox jumps over the lazy dog."
    voice = EspeakVoice("en-us+f3", rate=170, pitch=60)
    first, sr = synthesize(text, voice)
    assert sr == 22050 and first.dtype == np.float32 and first.ndim == 1
    assert 1.0 < len(first) / sr < 6.0
    assert 0.1 < np.abs(first).max() <= 1.0
    synthesize("Something else entirely, with 123 numbers.", "en+klatt2")
    again, _ = synthesize(text, voice)
    np.testing.assert_array_equal(first, again)  # independent of what was synthesized in between
    slower, _ = synthesize(text, EspeakVoice("en-us+f3", rate=120, pitch=60))
    assert len(slower) > 1.2 * len(first)
    with pytest.raises(EspeakError, match="no voice"):
        synthesize("hello", "xx-nonexistent")
    with pytest.raises(EspeakError, match="variant"):
        synthesize("hello", "en+no_such_variant")


def test_sentence_list():
    lines = load_sentences()
    assert len(set(lines)) == len(lines) >= 2000
    word_counts = [len(s.split()) for s in lines]
    assert min(word_counts) >= 3 and max(word_counts) <= 25
    assert np.std(word_counts) > 3  # varied lengths
    assert sum(any(ch.isdigit() for ch in s) for s in lines) > 50  # some digits


def test_speaker_definitions():
    speakers = make_speakers(12)
    assert len({s.voice for s in speakers}) == 12 and len(BASE_SPEAKERS) >= 12
    many = make_speakers(30, seed=3)
    assert len({s.voice for s in many}) == 30 and len({s.speaker for s in many}) == 30


def test_manifest_schema_and_audio(corpus):
    root = corpus.parent
    records = _records(corpus)
    assert len(records) == NUM_UTTS
    assert len({r["id"] for r in records}) == NUM_UTTS
    speakers = json.loads((root / "speakers.json").read_text())
    assert len(speakers) == NUM_SPEAKERS
    for r in records:
        assert set(r) == MANIFEST_KEYS
        assert r["language"] == "en" and r["sample_rate"] == 22050 and r["speaker"] in speakers
        assert r["audio_path"] == f"wavs/{r['speaker']}/{r['id']}.wav"
        info = sf.info(str(root / r["audio_path"]))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (22050, 1, "PCM_16", "WAV")
        assert r["duration"] == pytest.approx(info.frames / 22050, abs=1e-5)
        wave, _ = sf.read(str(root / r["audio_path"]), dtype="float32")
        assert np.abs(wave).max() == pytest.approx(0.9, abs=2e-3)  # peak normalized
        assert np.sqrt(np.mean(wave**2)) > 0.03  # not silent
        loud = np.nonzero(np.abs(wave) > 0.05)[0]
        assert loud[0] < 0.15 * 22050 and len(wave) - loud[-1] < 0.25 * 22050  # silence trimmed
        seconds_per_char = r["duration"] / len(r["text"])
        assert 0.025 < seconds_per_char < 0.2, (r["text"], r["duration"])
    assert {r["speaker"] for r in records} == set(speakers)


def test_speakers_differ_acoustically(corpus):
    root = corpus.parent
    records = _records(corpus)
    feats, f0s, labels = [], [], []
    for r in records:
        wave, sr = sf.read(str(root / r["audio_path"]), dtype="float32")
        feats.append(_log_band_spectrum(wave, sr))
        f0s.append(_median_f0(wave, sr))
        labels.append(r["speaker"])
    feats, f0s, labels = np.array(feats), np.array(f0s), np.array(labels)
    speakers = sorted(set(labels))
    assert len(speakers) >= 10

    # Spectral envelope: utterances of one voice are closer to each other than to other voices' utterances.
    dist = np.linalg.norm(feats[:, None] - feats[None], axis=-1)
    same = (labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)
    different = labels[:, None] != labels[None]
    assert dist[same].mean() < 0.7 * dist[different].mean()
    # Leave-one-out nearest speaker centroid finds the right speaker most of the time (chance is 10%).
    hits = 0
    for i in range(len(labels)):
        others = np.arange(len(labels)) != i
        centroids = {s: feats[others & (labels == s)].mean(0) for s in speakers}
        hits += min(centroids, key=lambda s: np.linalg.norm(feats[i] - centroids[s])) == labels[i]
    assert hits / len(labels) >= 0.6

    # Pitch: a voice's utterances agree, and the voices span low (male) to high (female) pitch.
    per_speaker = {s: f0s[labels == s] for s in speakers}
    medians = np.array([np.nanmedian(v) for v in per_speaker.values()])
    assert np.nanmax(medians) > 2.0 * np.nanmin(medians)
    for s, values in per_speaker.items():
        assert np.nanmax(values) < 1.25 * np.nanmin(values), (s, values)


def test_deterministic_and_prefix_stable(corpus, tmp_path):
    root = corpus.parent
    other = tmp_path / "again"
    build_demo_corpus(other, num_utterances=NUM_UTTS, num_speakers=NUM_SPEAKERS, seed=0)
    assert _all_files(other) == _all_files(root)

    # Fewer utterances, built by two worker processes: the same first utterances, byte for byte.
    prefix = tmp_path / "prefix"
    manifest = build_demo_corpus(prefix, num_utterances=12, num_speakers=NUM_SPEAKERS, seed=0, num_workers=2)
    records = _records(manifest)
    assert records == _records(corpus)[:12]
    for r in records:
        assert (prefix / r["audio_path"]).read_bytes() == (root / r["audio_path"]).read_bytes()

    different = build_demo_corpus(tmp_path / "seed1", num_utterances=NUM_UTTS, num_speakers=NUM_SPEAKERS, seed=1)
    assert [r["text"] for r in _records(different)] != [r["text"] for r in _records(corpus)]


def test_idempotent_rerun(tmp_path):
    out = tmp_path / "c"
    manifest = build_demo_corpus(out, num_utterances=15, num_speakers=NUM_SPEAKERS, seed=7)
    before = _all_files(out)
    wavs = sorted(out.rglob("*.wav"))
    mtimes = {p: p.stat().st_mtime_ns for p in wavs}
    removed = wavs[3]
    removed.unlink()
    assert build_demo_corpus(out, num_utterances=15, num_speakers=NUM_SPEAKERS, seed=7) == manifest
    assert _all_files(out) == before  # the missing file is re-made identically
    for p in wavs:
        if p != removed:
            assert p.stat().st_mtime_ns == mtimes[p]  # existing files were skipped, not rewritten
    with pytest.raises(ValueError, match="different settings"):
        build_demo_corpus(out, num_utterances=15, num_speakers=NUM_SPEAKERS, seed=8)
