"""Preprocessing: bad files are skipped and reported, features are exact, restarts keep finished shards."""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_pipeline import preprocess as pp
from data_pipeline import shards as shard_io
from data_pipeline.manifest import Utterance, read_manifest, write_manifest

BAD = {  # id -> the reason preprocessing must report
    "bad_corrupt": "AudioDecodeError",
    "bad_silent": "SilentAudioError",
    "bad_missing": "AudioFileNotFoundError",
    "bad_short": "AudioTooShortError",
    "bad_long": "AudioTooLongError",
    "bad_clipped": "ClippedAudioError",
    "bad_notext": "EmptyTextError",
    "bad_nan": "NonFiniteAudioError",
}


def make_corpus(root: Path, num_speakers: int = 3, per_speaker: int = 8, bad: bool = True, seed: int = 0) -> Path:
    """Sine+noise wavs (0.6-2.6 s, mixed sample rates) for a few speakers, plus one file per BAD reason."""
    rng = np.random.default_rng(seed)
    wavs = root / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    utts = []

    def add(uid, wave, sr, text="some words here", speaker="spk0", write=True):
        path = wavs / f"{uid}.wav"
        if write:
            sf.write(str(path), wave, sr, subtype="PCM_16")
        utts.append(Utterance(uid, str(path), text, speaker, "en", len(wave) / sr, sr))

    for s in range(num_speakers):
        for i in range(per_speaker):
            sr = (16000, 22050, 24000)[(s + i) % 3]
            seconds = 0.6 + 2.0 * rng.random()
            t = np.arange(int(seconds * sr)) / sr
            wave = 0.3 * np.sin(2 * np.pi * (150 + 40 * s + 10 * i) * t) + 0.02 * rng.standard_normal(t.shape)
            add(f"spk{s}_{i:03d}", wave.astype(np.float32), sr, text=f"speaker {s} says number {i}.",
                speaker=f"spk{s}")
    if bad:
        sr = 16000
        t = np.arange(sr) / sr
        tone = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
        add("bad_silent", np.zeros(sr, np.float32), sr)
        add("bad_short", tone[: sr // 5], sr)
        add("bad_long", np.tile(tone, 21), sr)
        add("bad_clipped", np.clip(3 * tone / 0.3, -1, 1).astype(np.float32), sr)
        add("bad_notext", tone, sr, text="  ")
        add("bad_missing", tone, sr, write=False)
        nan = tone.copy()
        nan[100] = np.nan
        sf.write(str(wavs / "bad_nan.wav"), nan, sr, subtype="FLOAT")
        utts.append(Utterance("bad_nan", str(wavs / "bad_nan.wav"), "text", "spk0"))
        (wavs / "bad_corrupt.wav").write_bytes(b"RIFF" + rng.bytes(300))
        utts.append(Utterance("bad_corrupt", str(wavs / "bad_corrupt.wav"), "text", "spk1"))
    manifest = root / "manifest.jsonl"
    write_manifest(manifest, utts)
    return manifest


OPTIONS = pp.PreprocessOptions(features=("mel", "mel_stacked"), min_audio_seconds=0.5, max_audio_seconds=20.0)


def run(manifest, out, **kw):
    kw.setdefault("valid_fraction", 0.0)
    kw.setdefault("progress", False)
    kw.setdefault("num_shards", 3)
    return pp.preprocess(read_manifest(manifest), out, kw.pop("options", OPTIONS), **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    manifest = make_corpus(root)
    out = root / "shards"
    report = run(manifest, out)
    return manifest, out, report


def test_bad_files_are_skipped_and_reported(corpus):
    manifest, out, report = corpus
    assert report["complete"]
    assert report["total"]["examples"] == 24 and report["total"]["skipped"] == len(BAD)
    reasons = {s["id"]: s["reason"] for s in report["skipped"]}
    assert reasons == BAD
    assert report["skipped_by_reason"] == {r: 1 for r in BAD.values()}
    assert all(s["message"] and s["audio_path"] for s in report["skipped"])
    assert 0.6 * 24 / 3600 < report["total"]["hours"] < 2.7 * 24 / 3600
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["total"] == report["total"]
    assert sorted(os.listdir(out)) == sorted(
        ["dataset.json", "report.json"] + [shard_io.shard_name("train", i, 3) + sfx for i in range(3)
                                           for sfx in ("", ".done")])


def test_records_hold_exact_features(corpus):
    from indextts2_jax.audio import load_audio, mel_spectrogram

    manifest, out, _ = corpus
    paths = shard_io.list_shards(out, "train")
    records = [r for p in paths for r in shard_io.read_shard(p)]
    index = shard_io.load_index(paths)
    assert [r["id"] for r in records] == [e["id"] for e in index]
    assert sorted(r["id"] for r in records) == sorted(u.id for u in read_manifest(manifest) if u.id.startswith("spk"))
    speakers = json.loads((out / "dataset.json").read_text())["speakers"]
    rec = next(r for r in records if r["id"] == "spk1_001")  # a 24 kHz file: resampled to 22.05 kHz
    wave = load_audio(rec_path(manifest, "spk1_001"), 22050)  # librosa soxr_hq: same resampler
    assert rec["num_samples"] == wave.shape[0] and rec["sample_rate"] == 22050
    np.testing.assert_array_equal(pp.FeatureExtractor(OPTIONS).load(read_utt(manifest, "spk1_001")), wave)
    mel = np.asarray(mel_spectrogram(wave[None])[0])
    assert rec["mel"].shape == (wave.shape[0] // 256, 80) and rec["mel"].dtype == np.float32
    np.testing.assert_allclose(rec["mel"], mel, atol=2e-5, rtol=0)  # padded-for-jit path equals the direct one
    t2 = mel.shape[0] // 2
    np.testing.assert_array_equal(rec["mel_stacked"], rec["mel"][: 2 * t2].reshape(t2, 160))
    assert speakers[rec["speaker_index"]] == rec["speaker"] == "spk1"
    entry = next(e for e in index if e["id"] == "spk1_001")
    assert entry["lengths"] == {"mel": mel.shape[0], "mel_stacked": t2}


def rec_path(manifest, uid):
    return next(u.audio_path for u in read_manifest(manifest) if u.id == uid)


def test_restart_keeps_finished_shards(corpus, tmp_path):
    manifest, _, full = corpus
    out = tmp_path / "out"
    # Host 0 of 2 writes shards 0 and 2 only; the report says incomplete.
    r0 = run(manifest, out, process_index=0, process_count=2)
    assert not r0["complete"] and r0["splits"]["train"]["finished_shards"] == 2
    done = {p: os.stat(p).st_mtime_ns for p in shard_io.list_shards(out, "train", require_done=False)}
    assert len(done) == 2
    # An interrupted shard (file without .done) is redone; finished ones are not touched.
    victim = out / shard_io.shard_name("train", 1, 3)
    victim.write_bytes(b"partial")
    r = run(manifest, out)
    assert r["complete"] and r["total"] == full["total"]
    assert {p: os.stat(p).st_mtime_ns for p in done} == done
    assert len(list(shard_io.read_shard(victim))) == shard_io.read_done(victim)["num_records"] > 0
    with pytest.raises(ValueError, match="other shards"):
        run(manifest, out, num_shards=4)


def test_worker_processes_match_in_process(corpus, tmp_path):
    manifest, out, _ = corpus
    utts = [u for u in read_manifest(manifest) if u.speaker == "spk2"][:4] + \
        [u for u in read_manifest(manifest) if u.id == "bad_silent"]
    sub = tmp_path / "m.jsonl"
    write_manifest(sub, utts)
    r = run(sub, tmp_path / "w2", num_workers=2, num_shards=1)
    assert r["total"]["examples"] == 4 and r["skipped_by_reason"] == {"SilentAudioError": 1}
    got = {x["id"]: x for x in shard_io.read_shard(shard_io.list_shards(tmp_path / "w2", "train")[0])}
    ref = {x["id"]: x for p in shard_io.list_shards(out, "train") for x in shard_io.read_shard(p)}
    for uid, rec in got.items():
        np.testing.assert_allclose(rec["mel"], ref[uid]["mel"], atol=1e-5, rtol=0)


def test_feature_registry():
    with pytest.raises(NotImplementedError, match="w2v-BERT semantic features"):
        pp.check_features(["mel", "w2v_bert"])
    with pytest.raises(NotImplementedError, match="CAMPPlus"):
        pp.check_features(["campplus"])
    with pytest.raises(ValueError, match="unknown feature 'nope'"):
        pp.check_features(["nope"])
    assert pp.check_features(["mel", "mel", "wave"]) == ("mel", "wave")
    for f in pp.FEATURES.values():
        assert f.outputs, f.name
        assert (f.compute is None) == bool(f.todo), f.name


def test_other_features_and_text_ids(tmp_path):
    from indextts2_jax.text.tokenizer import TextTokenizer, train_bpe

    manifest = make_corpus(tmp_path, num_speakers=1, per_speaker=2, bad=False)
    utts = read_manifest(manifest)
    model = train_bpe([u.text for u in utts] * 20, 40, tmp_path / "bpe")
    opts = pp.PreprocessOptions(features=("text_ids", "wave", "w2v_bert_fbank", "campplus_fbank"),
                                bpe_model=str(model))
    rep = run(manifest, tmp_path / "o", options=opts, num_shards=1)
    assert rep["total"]["examples"] == 2
    recs = list(shard_io.read_shard(shard_io.list_shards(tmp_path / "o", "train")[0]))
    tok = TextTokenizer(str(model))
    for r in recs:
        u = next(x for x in utts if x.id == r["id"])
        assert r["text_ids"].tolist() == tok.encode(u.text) and r["text_ids"].dtype == np.int32
        assert r["wave"].dtype == np.int16 and r["wave"].shape == (r["num_samples"],)
        n16 = -(-r["num_samples"] * 16000 // 22050)
        frames = 1 + (n16 - 400) // 160
        assert r["w2v_bert_fbank"].shape == (frames // 2, 160)
        assert r["campplus_fbank"].shape == (frames, 80)


def test_cli(tmp_path):
    manifest = make_corpus(tmp_path, num_speakers=2, per_speaker=2, bad=False)
    out = tmp_path / "cli"
    rc = pp.main(["--config", "configs/demo.py:stage=gpt", "--manifest", str(manifest), "--out", str(out),
                  "--num_workers", "0", "--valid_fraction", "0", "--no_progress"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["complete"] and rep["total"]["examples"] == 4 and rep["features"] == ["mel_stacked"]
    (out / "report.json").unlink()
    assert pp.main(["--config", "configs/demo.py", "--out", str(out), "--report_only"]) == 0
    assert json.loads((out / "report.json").read_text()) == rep


def test_codec_roundtrip_and_refusals():
    ex = {"a": np.arange(6, dtype=np.float16).reshape(2, 3), "b": np.array([True, False]), "s": "héllo",
          "i": np.int64(3), "n": None, "l": [1, 2.5, "x"], "e": np.zeros((0, 160), np.float32)}
    back = shard_io.decode_example(shard_io.encode_example(ex))
    assert back["a"].dtype == np.float16 and back["a"].shape == (2, 3) and back["a"][1, 2] == 5
    assert back["b"].tolist() == [True, False] and back["s"] == "héllo" and back["i"] == 3 and back["n"] is None
    assert back["l"] == [1, 2.5, "x"] and back["e"].shape == (0, 160)
    with pytest.raises(TypeError, match="dtype object"):
        shard_io.encode_example({"x": np.array([object()])})
    with pytest.raises(TypeError, match="Utterance"):
        shard_io.encode_example({"x": Utterance("a", "b", "c", "d")})
    assert shard_io.parse_shard_name("dir/valid-00002-of-00008.array_record") == ("valid", 2, 8)


def read_utt(manifest, uid):
    return next(u for u in read_manifest(manifest) if u.id == uid)


def test_channels(tmp_path):
    sr = 16000
    t = np.arange(sr) / sr
    tone = 0.3 * np.sin(2 * np.pi * 200 * t)
    sf.write(str(tmp_path / "stereo.wav"), np.stack([tone, 0.5 * tone], axis=1).astype(np.float32), sr)
    utt = Utterance("stereo", str(tmp_path / "stereo.wav"), "two channels", "s")
    record, skip = pp.FeatureExtractor(dataclasses.replace(OPTIONS, mono="error"))(utt)
    assert record is None and skip["reason"] == "ChannelError" and "2 channels" in skip["message"]
    record, skip = pp.FeatureExtractor(OPTIONS)(utt)  # default: mixed down to mono
    assert skip is None and record["num_samples"] == 22050


def test_unexpected_error_is_reported_not_fatal(tmp_path, monkeypatch):
    manifest = make_corpus(tmp_path, num_speakers=1, per_speaker=1, bad=False)

    def boom(ctx):
        raise RuntimeError("decoder exploded")

    monkeypatch.setitem(pp.FEATURES, "mel", dataclasses.replace(pp.FEATURES["mel"], compute=boom))
    record, skip = pp.FeatureExtractor(OPTIONS)(read_manifest(manifest)[0])
    assert record is None and skip["reason"] == "unexpected RuntimeError" and "decoder exploded" in skip["message"]
