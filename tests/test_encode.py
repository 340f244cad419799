"""``python -m experiments.encode``: audio files to semantic codes, batched, resumable, bad files skipped.

Random tiny models of both semantic front ends (w2v-BERT, as the official model; the demo's stacked log-mel).
The codes of the batch job must equal the synthesizer's one-file path (``IndexTTS2.semantic_codes``, the
front end run alone at the file's own length) exactly.
"""

import functools
import json
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import soundfile as sf

from experiments import encode
from tests.subproc import REPO, cpu_env


def _voiced(seconds: float, sr: int, f0: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    wave = sum(0.15 / k * np.sin(2 * np.pi * k * f0 * t * (1 + 0.05 * np.sin(3 * t))) for k in range(1, 5))
    return (wave * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t) ** 2) + 0.01 * rng.standard_normal(t.shape)).astype(
        np.float32)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    """Five files of different lengths and rates (one stereo), a corrupt file and a silent one."""
    root = tmp_path_factory.mktemp("audio")
    for i, (seconds, sr) in enumerate([(0.6, 22050), (1.4, 16000), (0.9, 24000), (2.1, 22050), (1.1, 44100)]):
        wave = _voiced(seconds, sr, 110 + 25 * i, i)
        if i == 4:
            wave = np.stack([wave, 0.5 * wave], axis=1)
        sf.write(str(root / f"u{i}.wav"), wave, sr, subtype="PCM_16")
    (root / "bad.wav").write_bytes(b"RIFF" + np.random.default_rng(9).bytes(300))
    sf.write(str(root / "silent.wav"), np.zeros(22050, np.float32), 22050, subtype="PCM_16")
    return root


def _mel_front_end_config():
    """The demo's model sizes with its stacked-mel front end (no w2v-BERT), as an exported demo bundle has."""
    from configs import demo

    c = demo.get_config("scale=1")
    out = ml_collections.ConfigDict()
    out.model, out.aux, out.inference = c.model, c.aux, c.inference
    out.inference.semantic_features = "mel"
    out.extensions = ml_collections.ConfigDict({"gpt": {"condition_input_size": c.gpt.condition_input_size,
                                                        "emotion_dim": c.gpt.emotion_dim}})
    return out


@functools.lru_cache(maxsize=None)
def _assets(front_end: str):
    from indextts2_jax.infer import random_assets as ra

    return ra.random_assets(ra.tiny_config(minimal=True) if front_end == "w2v_bert" else _mel_front_end_config(), 0)


@pytest.fixture(scope="module", params=["w2v_bert", "mel"])
def model(request):
    """(front end, assets, ModelFeatures) of a random tiny model."""
    from data_pipeline.model_features import ModelFeatures

    assets = _assets(request.param)
    feats = ModelFeatures(assets, semantic=False, codec=True, style=False, batch_size=2)
    assert feats.front_end == request.param
    return request.param, assets, feats


def test_encode_equals_one_file_path_skips_bad_files_and_resumes(model, audio_dir, tmp_path):
    from indextts2_jax.infer.pipeline import IndexTTS2

    front_end, assets, feats = model
    good = [str(audio_dir / f"u{i}.wav") for i in range(5)]
    bad = [str(audio_dir / "bad.wav"), str(audio_dir / "silent.wav"), str(audio_dir / "missing.wav")]
    out = tmp_path / "codes.jsonl"

    # a first run over three files (chunks of 2: two appends), then the whole list: only the rest is encoded
    first = encode.main(["--model", "unused", "--out", str(out), "--chunk", "2", "--batch_size", "2", "--no_progress",
                         *good[:3]], features=feats)
    assert (first["encoded"], first["skipped"], first["already_done"]) == (3, 0, 0)
    with open(out, "a", encoding="utf-8") as f:  # a line cut by a kill mid-write is dropped and redone
        f.write('{"audio": "' + good[3] + '", "codes": [1, 2')
    second = encode.main(["--model", "unused", "--out", str(out), "--chunk", "3", "--batch_size", "2", "--no_progress",
                          *good, *bad], features=feats)
    assert (second["encoded"], second["already_done"], second["skipped"]) == (2, 3, 3)
    assert second["skipped_by_reason"] == {"AudioDecodeError": 1, "SilentAudioError": 1, "AudioFileNotFoundError": 1}
    assert {s["audio"] for s in second["skipped_files"]} == set(bad)
    assert second["front_end"] == front_end

    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["audio"] for r in lines] == good  # each file once, in the order given
    tts = IndexTTS2(assets)
    for r in lines:
        want = tts.semantic_codes(r["audio"])
        np.testing.assert_array_equal(np.asarray(r["codes"], np.int32), want)
        assert r["num_codes"] == len(r["codes"]) > 0
        assert r["num_codes"] == pytest.approx(r["seconds"] * feats.code_rate, abs=2)
    assert second["codes"] == sum(r["num_codes"] for r in lines[3:])

    # all done: nothing to encode, nothing loaded (no --model needed to exist)
    third = encode.main(["--model", str(tmp_path / "nowhere"), "--out", str(out), "--no_progress", *good])
    assert (third["encoded"], third["already_done"]) == (0, 5)
    assert len(out.read_text(encoding="utf-8").splitlines()) == 5


def test_encode_inputs_from_a_list_and_a_folder(audio_dir, tmp_path):
    lst = tmp_path / "files.txt"
    lst.write_text(f"{audio_dir / 'u1.wav'}\n\n{audio_dir / 'u0.wav'}\n", encoding="utf-8")
    args = encode.build_parser().parse_args(["--model", "m", "--out", "o", f"{audio_dir}/./u0.wav",
                                             "--list", str(lst), "--dir", str(audio_dir), "--glob", "u[34].wav"])
    assert encode._inputs(args, encode.build_parser()) == [str(audio_dir / n) for n in
                                                           ("u0.wav", "u1.wav", "u3.wav", "u4.wav")]


def test_encode_processes_share_a_file_list(model, audio_dir, tmp_path):
    """--process_index i --process_count n: files i, i+n, ... of the list; together the processes cover it once."""
    _, _, feats = model
    files = [str(audio_dir / f"u{i}.wav") for i in range(5)]
    got = []
    for i in range(2):
        out = tmp_path / f"codes.{i}.jsonl"
        encode.main(["--model", "unused", "--out", str(out), "--process_index", str(i), "--process_count", "2",
                     "--no_progress", *files], features=feats)
        got.append([json.loads(line)["audio"] for line in out.read_text(encoding="utf-8").splitlines()])
    assert got == [files[0::2], files[1::2]]


@pytest.mark.parametrize("argv, message", [
    (["--out", "o.jsonl"], "no audio"),
    (["--out", "o.jsonl", "--dir", "/nonexistent_dir_xyz"], "not a folder"),
    (["--out", "o.jsonl", "a.wav", "--min_seconds", "0"], "--min_seconds"),
    (["--out", "o.jsonl", "a.wav", "--batch_size", "0"], "--batch_size"),
    (["--out", "o.jsonl", "a.wav", "--frame_bucket", "0"], "--frame_bucket"),
    (["--out", "o.jsonl", "a.wav", "--process_index", "2", "--process_count", "2"], "--process_index"),
    (["--out", "o.jsonl", "a.wav", "--devices", "-1"], "--devices"),
])
def test_encode_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        encode.main(["--model", "m", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_encode_refuses_an_out_file_it_did_not_write(audio_dir, tmp_path, capsys):
    """Resuming appends to --out: a file that is not an encode output (a wav, a manifest) is left as it was."""
    other = tmp_path / "notes.txt"
    other.write_bytes(b"my notes\nno trailing newline")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"id": "u0", "audio_path": "u0.wav"}\n', encoding="utf-8")
    one_line = tmp_path / "one_line.txt"
    one_line.write_bytes(b"a file without a newline")
    for out in (other, manifest, one_line, audio_dir / "u0.wav"):
        before = out.read_bytes()
        with pytest.raises(SystemExit) as e:
            encode.run(["--model", str(tmp_path / "unused"), "--out", str(out), str(audio_dir / "u1.wav")])
        assert e.value.code == 2 and "is not an encoded file's line" in capsys.readouterr().err
        assert out.read_bytes() == before
    with pytest.raises(SystemExit) as e:
        encode.main(["--model", "m", "--out", str(tmp_path), str(audio_dir / "u1.wav")])
    assert e.value.code == 2 and "is a folder" in capsys.readouterr().err


def test_encode_reports_a_model_that_is_not_there(tmp_path, capsys):
    wav = tmp_path / "a.wav"
    sf.write(str(wav), _voiced(0.5, 22050, 120, 0), 22050)
    with pytest.raises(SystemExit) as e:
        encode.run(["--model", str(tmp_path / "no_model"), "--out", str(tmp_path / "o.jsonl"), str(wav)])
    assert e.value.code == 2 and "no_model" in capsys.readouterr().err


def test_preprocess_codes_of_a_demo_front_end_model(audio_dir, tmp_path):
    """``data_pipeline.preprocess``'s ``semantic_codes`` with a stacked-mel model (an exported demo bundle): the
    codes of the synthesizer's path; the ``w2v_bert`` feature, which such a model cannot give, is refused."""
    from data_pipeline import preprocess as pp
    from data_pipeline import shards as shard_io
    from data_pipeline.manifest import Utterance
    from indextts2_jax.errors import ConfigError
    from indextts2_jax.export import export_bundle
    from indextts2_jax.infer.pipeline import IndexTTS2

    assets = _assets("mel")
    bundle = export_bundle(assets, tmp_path / "bundle")
    utts = [Utterance(f"u{i}", str(audio_dir / f"u{i}.wav"), f"number {i}.", "spk0") for i in (0, 3)]
    opts = pp.PreprocessOptions(features=("semantic_codes",), model=str(bundle), model_batch_size=2)
    pp.preprocess(utts, tmp_path / "shards", opts, num_shards=1, valid_fraction=0.0, progress=False)
    recs = {r["id"]: r for p in shard_io.list_shards(tmp_path / "shards", "train") for r in shard_io.read_shard(p)}
    tts = IndexTTS2(assets)
    assert sorted(recs) == ["u0", "u3"]
    for u in utts:
        np.testing.assert_array_equal(recs[u.id]["semantic_codes"], tts.semantic_codes(u.audio_path))
    with pytest.raises(ConfigError, match="stacked log-mel"):
        pp.FeatureExtractor(pp.PreprocessOptions(features=("w2v_bert",), model=str(bundle)))
    with pytest.raises(ConfigError, match="local devices"):  # --model_devices reaches the model
        pp.FeatureExtractor(pp.PreprocessOptions(features=("semantic_codes",), model=str(bundle), model_devices=99))


def test_model_features_refuse_more_devices_than_there_are():
    import jax

    from data_pipeline.model_features import ModelFeatures
    from indextts2_jax.errors import ConfigError

    n = jax.local_device_count()
    with pytest.raises(ConfigError, match=f"this process has {n} local devices"):
        ModelFeatures(_assets("mel"), semantic=False, style=False, devices=n + 1)


def test_random_model_specs():
    from experiments import random_model_assets

    assert random_model_assets("checkpoints/IndexTTS-2") is None  # a path: loaded by the launcher
    with pytest.raises(SystemExit, match="random:tiny or random:official"):
        random_model_assets("random:huge")


_DATA_PARALLEL = """
import numpy as np, jax
from data_pipeline.model_features import ModelFeatures
from indextts2_jax.audio import resample_22k_to_16k
from indextts2_jax.infer import random_assets as ra

assert jax.local_device_count() == 8
assets = ra.random_assets(ra.tiny_config(minimal=True), 0)
rng = np.random.default_rng(0)
waves = [(0.1 * rng.standard_normal(int(22050 * s))).astype(np.float32) for s in (0.5, 1.2, 0.8, 1.6, 0.7)]
one = ModelFeatures(assets, batch_size=4)
spread = ModelFeatures(assets, batch_size=4, devices=None)
assert (one.num_devices, spread.num_devices) == (1, 8)
assert len(spread._rows(np.zeros((8, 3)))[0].sharding.device_set) == 8
for a, b in zip(one.codes(waves), spread.codes(waves)):
    np.testing.assert_array_equal(a, b)
w16 = [resample_22k_to_16k(w) for w in waves]
for a, b in zip(one.style(w16), spread.style(w16)):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())
print("SAME")
"""


def test_model_features_split_over_devices_give_the_one_device_results(tmp_path):
    """``ModelFeatures(devices=None)`` on 8 simulated devices (rows sharded, weights replicated): the codes equal
    one device's exactly, the CAMPPlus embeddings within float32 rounding (1e-5 of the largest: other shapes
    may sum in another order)."""
    proc = subprocess.run([sys.executable, "-c", _DATA_PARALLEL], cwd=REPO, env=cpu_env(devices=8),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "SAME" in proc.stdout, proc.stderr[-3000:]


def test_encode_resumed_in_a_new_process_reads_its_programs_from_the_cache(audio_dir, tmp_path):
    """``--compilation_cache``: a job stopped and resumed in a new process compiles nothing new for the lengths it
    had seen (every compile request of the resumed part is a hit) and writes the same codes as one whole run."""
    files = [str(audio_dir / f"u{i}.wav") for i in (0, 2, 4)]  # 0.6, 0.9, 1.1 s: one 64-frame bucket
    reports = []
    for n, out in ((2, "resumed.jsonl"), (3, "resumed.jsonl"), (3, "whole.jsonl")):
        argv = ["--model", "random:tiny", "--out", str(tmp_path / out), "--batch_size", "1", "--json",
                "--no_progress", "--compilation_cache", str(tmp_path / ("xla" if out == "resumed.jsonl" else "xla2")),
                *files[:n]]
        proc = subprocess.run([sys.executable, "-m", "experiments.encode", *argv], cwd=REPO, env=cpu_env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        reports.append(json.loads(proc.stdout))
    first, resumed, whole = reports
    assert (first["encoded"], resumed["encoded"], resumed["already_done"]) == (2, 1, 2)
    assert first["compilation_cache"]["requests"] > 0 and first["compilation_cache"]["hits"] == 0
    assert resumed["compilation_cache"]["hits"] == resumed["compilation_cache"]["requests"] > 0
    assert (tmp_path / "resumed.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()
