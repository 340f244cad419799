"""Manifest schema, JSONL round trip, validation errors, stable splits, and the corpus importers."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_pipeline import importers
from data_pipeline.manifest import (
    ManifestError,
    Utterance,
    read_manifest,
    split_of,
    split_utterances,
    write_manifest,
)


def _wav(path: Path, seconds: float = 0.5, sr: int = 16000, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format=fmt)
    return path


def test_manifest_roundtrip_relative_paths(tmp_path):
    _wav(tmp_path / "wavs" / "a.wav")
    utts = [Utterance("a", str(tmp_path / "wavs" / "a.wav"), "hello", "s1", "en", 0.5, 16000),
            Utterance("b", "/elsewhere/b.wav", "bye", "s2", "en", 1.0, 22050, emotion="sad")]
    m = tmp_path / "m.jsonl"
    assert write_manifest(m, utts) == 2
    lines = [json.loads(x) for x in m.read_text().splitlines()]
    assert lines[0]["audio_path"] == "wavs/a.wav" and "emotion" not in lines[0]
    assert lines[1]["audio_path"] == "/elsewhere/b.wav" and lines[1]["emotion"] == "sad"
    back = read_manifest(m)
    assert back[0].audio_path == str((tmp_path / "wavs" / "a.wav").resolve())
    assert back[1] == utts[1]
    assert back[0].duration == 0.5 and back[0].sample_rate == 16000


@pytest.mark.parametrize("line, match", [
    ('{"id": "x", "audio_path": "a.wav", "text": "t"}', "missing required field 'speaker'"),
    ('{"id": "x", "audio_path": "a.wav", "text": "t", "speaker": "s", "duration": -1}', "duration"),
    ('{"id": "x", "audio_path": "a.wav", "text": "t", "speaker": "s", "colour": 1}', "unknown field"),
    ('{"id": 3, "audio_path": "a.wav", "text": "t", "speaker": "s"}', "'id' must be a string"),
    ('{"id": "x", "audio_path": "a.wav", "text": "t", "speaker": "s"', "not valid JSON"),
    ('["x", "a.wav"]', "expected a JSON object, got list"),
])
def test_manifest_errors_name_the_line(tmp_path, line, match):
    m = tmp_path / "bad.jsonl"
    good = '{"id": "ok", "audio_path": "a.wav", "text": "t", "speaker": "s"}'
    m.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(ManifestError, match=match) as e:
        read_manifest(m)
    assert "bad.jsonl:3" in str(e.value)


def test_manifest_duplicate_ids(tmp_path):
    m = tmp_path / "dup.jsonl"
    good = '{"id": "ok", "audio_path": "a.wav", "text": "t", "speaker": "s"}'
    m.write_text(good + "\n" + good + "\n")
    with pytest.raises(ManifestError, match="dup.jsonl:2: duplicate id 'ok' \\(first on line 1\\)"):
        read_manifest(m)


def test_splits_are_stable_and_by_speaker():
    utts = [Utterance(f"u{i}", "a.wav", "t", f"s{i % 7}") for i in range(400)]
    before = {u.id: split_of(u, valid_fraction=0.2, test_fraction=0.1) for u in utts}
    counts = {s: list(before.values()).count(s) for s in ("train", "valid", "test")}
    assert 0.6 * 400 < counts["train"] < 0.8 * 400 and counts["valid"] > 40 and counts["test"] > 15
    # Adding utterances never moves an existing one.
    more = utts + [Utterance(f"new{i}", "a.wav", "t", "s0") for i in range(100)]
    groups = split_utterances(more, valid_fraction=0.2, test_fraction=0.1)
    after = {u.id: s for s, us in groups.items() for u in us}
    assert all(after[k] == v for k, v in before.items())
    # By speaker: a speaker's utterances all share one split.
    by_spk = split_utterances(utts, valid_fraction=0.3, by="speaker")
    spk_split = {}
    for s, us in by_spk.items():
        for u in us:
            assert spk_split.setdefault(u.speaker, s) == s


def test_import_ljspeech(tmp_path):
    root = tmp_path / "LJSpeech-1.1"
    _wav(root / "wavs" / "LJ001-0001.wav", 0.4, 22050)
    _wav(root / "wavs" / "LJ001-0002.wav", 0.6, 22050)
    (root / "metadata.csv").write_text(
        'LJ001-0001|Printing, in the 1st sense|Printing, in the first sense\n'
        'LJ001-0002|"Quoted" text|\n'
        'LJ001-0003|missing wav|missing wav\n', encoding="utf-8")
    utts = importers.import_ljspeech(root)
    assert [u.id for u in utts] == ["LJ001-0001", "LJ001-0002", "LJ001-0003"]
    assert utts[0].text == "Printing, in the first sense"
    assert utts[1].text == '"Quoted" text'  # raw column when the normalized one is empty
    assert utts[0].speaker == "ljspeech" and utts[0].sample_rate == 22050
    assert abs(utts[1].duration - 0.6) < 1e-3
    assert utts[2].duration == 0.0 and utts[2].sample_rate == 0  # listed; preprocessing reports it


def test_import_libritts(tmp_path):
    root = tmp_path / "LibriTTS_R"
    for split, spk, chap, n in [("train-clean-100", "19", "198", 2), ("dev-clean", "84", "121123", 1)]:
        for i in range(n):
            uid = f"{spk}_{chap}_000{i}_000000"
            _wav(root / split / spk / chap / f"{uid}.wav", 0.3, 24000)
            (root / split / spk / chap / f"{uid}.normalized.txt").write_text(f"Text {i} of {spk}.")
            (root / split / spk / chap / f"{uid}.original.txt").write_text("ORIGINAL")
    _wav(root / "dev-clean" / "84" / "121123" / "84_121123_0009_000000.wav")  # no transcript
    utts = importers.import_libritts(root)
    assert len(utts) == 3
    assert {u.speaker for u in utts} == {"libritts_19", "libritts_84"}
    assert all(u.sample_rate == 24000 and u.text.startswith("Text") for u in utts)
    # One split folder as the root works too.
    assert len(importers.import_libritts(root / "train-clean-100")) == 2


@pytest.mark.parametrize("layout", ["new", "old"])
def test_import_vctk(tmp_path, layout):
    root = tmp_path / "VCTK"
    for spk in ("p225", "p226"):
        for i in (1, 2):
            uid = f"{spk}_00{i}"
            if layout == "new":
                _wav(root / "wav48_silence_trimmed" / spk / f"{uid}_mic1.flac", 0.3, 48000, fmt="FLAC")
                _wav(root / "wav48_silence_trimmed" / spk / f"{uid}_mic2.flac", 0.3, 48000, fmt="FLAC")
            else:
                _wav(root / "wav48" / spk / f"{uid}.wav", 0.3, 48000)
            (root / "txt" / spk).mkdir(parents=True, exist_ok=True)
            (root / "txt" / spk / f"{uid}.txt").write_text(f"Please call {spk}.\n")
    (root / "txt" / "p226" / "p226_002.txt").unlink()  # an utterance without a transcript is left out
    utts = importers.import_vctk(root)
    assert [u.id for u in utts] == ["p225_001", "p225_002", "p226_001"]
    assert utts[0].speaker == "vctk_p225" and utts[0].text == "Please call p225." and utts[0].sample_rate == 48000
    if layout == "new":
        assert utts[0].audio_path.endswith("p225_001_mic1.flac")
        assert importers.import_vctk(root, mic="mic2")[0].audio_path.endswith("_mic2.flac")


def test_import_folder_and_table(tmp_path):
    root = tmp_path / "corpus"
    _wav(root / "alice" / "one.wav")
    (root / "alice" / "one.txt").write_text("first line\n")
    _wav(root / "bob" / "two.flac", fmt="FLAC")
    (root / "bob" / "two.lab").write_text("second")
    _wav(root / "bob" / "orphan.wav")
    utts = importers.import_folder(root)
    assert [(u.id, u.speaker, u.text) for u in utts] == [("alice_one", "alice", "first line"),
                                                        ("bob_two", "bob", "second")]
    table = tmp_path / "list.tsv"
    table.write_text("path\ttext\tspeaker\ncorpus/alice/one.wav\thello\tA\ncorpus/bob/two.flac\tworld\t\n")
    utts = importers.import_table(table, speaker="default")
    assert [(u.id, u.speaker, u.text) for u in utts] == [("one", "A", "hello"), ("two", "default", "world")]
    assert Path(utts[0].audio_path).exists() and utts[0].duration == pytest.approx(0.5)
    csv_file = tmp_path / "list.csv"
    csv_file.write_text('corpus/alice/one.wav,"hi, there"\n')
    assert importers.import_table(csv_file)[0].text == "hi, there"


def test_importer_cli(tmp_path):
    root = tmp_path / "corpus"
    _wav(root / "one.wav")
    (root / "one.txt").write_text("x")
    out = tmp_path / "m.jsonl"
    assert importers.main(["folder", str(root), "--out", str(out)]) == 0
    assert read_manifest(out)[0].speaker == "corpus"


def test_job_files_share_the_jsonl_reader(tmp_path):
    from indextts2_jax.errors import ConfigError
    from indextts2_jax.eval import load_jobs

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"wav": "out/a.wav", "text": "hi"}\n\n{"wav": "b.wav", "text": "x"\n')
    with pytest.raises(ConfigError, match="jobs.jsonl:3: not valid JSON"):
        load_jobs(jobs)
    jobs.write_text('{"wav": "out/a.wav", "text": "hi", "prompt": "p.wav"}\n')
    (item,) = load_jobs(jobs)
    assert item.wav == str(tmp_path / "out/a.wav") and item.prompt == str(tmp_path / "p.wav")
