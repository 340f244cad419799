"""Model features of preprocessing (w2v_bert, semantic_codes, campplus) on a tiny random-weight official model.

The stored features must equal the direct model calls of the inference path on the same audio
(``load_speaker_prompt``: 22.05 kHz load, torchaudio-style sinc resample to 16 kHz), a bad file is
skipped and reported, the GPT-stage pipeline reads the codes, and a model feature without a model
is refused with a clear error.
"""

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf

from data_pipeline import preprocess as pp
from data_pipeline import shards as shard_io
from data_pipeline.manifest import Utterance, read_manifest, write_manifest

pytest.importorskip("torch")  # make_tiny_official_model_dir writes .pth files

# Float tolerance (max|a - e| / max|e|) of the stored float32 embeddings against the unbatched calls:
# batching pads rows/frames (masked), and XLA may pick other reduction orders for other shapes; both
# are float32 rounding, measured ~1e-6. Codes are compared exactly.
EMB_TOL = 1e-4
MODEL_FEATURES = ("text_ids", "w2v_bert", "semantic_codes")
# CAMPPlus compiles are slow (~5-8 s per shape on a busy CPU even at tiny size), and the reference runs each
# utterance alone at its exact length, so it is checked on two utterances (one padded batch) in a run of its own.
CAMPPLUS_IDS = ("u0", "u1", "u_bad")


def rel_err(a, e):
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    return float(np.max(np.abs(a - e)) / max(np.max(np.abs(e)), 1e-30))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from indextts2_jax.convert.tiny_official import make_tiny_official_model_dir

    path = tmp_path_factory.mktemp("tiny_model") / "model"
    make_tiny_official_model_dir(path, seed=0)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Five voiced-like synthetic utterances (0.7-2.3 s, 2 speakers, mixed rates) and one corrupt file."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    utts = []
    for i, (seconds, sr) in enumerate([(0.7, 16000), (1.3, 22050), (2.3, 24000), (1.0, 44100), (1.7, 16000)]):
        t = np.arange(int(seconds * sr)) / sr
        f0 = 110 + 30 * i
        wave = sum(0.15 / k * np.sin(2 * np.pi * k * f0 * t * (1 + 0.05 * np.sin(3 * t))) for k in range(1, 6))
        wave = (wave * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t) ** 2) + 0.01 * rng.standard_normal(t.shape))
        path = root / f"u{i}.wav"
        sf.write(str(path), wave.astype(np.float32), sr, subtype="PCM_16")
        utts.append(Utterance(f"u{i}", str(path), f"hello world number {i}.", f"spk{i % 2}", "en", seconds, sr))
    (root / "bad.wav").write_bytes(b"RIFF" + rng.bytes(200))
    utts.append(Utterance("u_bad", str(root / "bad.wav"), "broken file", "spk0"))
    manifest = root / "manifest.jsonl"
    write_manifest(manifest, utts)
    return manifest


@pytest.fixture(scope="module")
def shards(model_dir, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "out"
    opts = pp.PreprocessOptions(features=MODEL_FEATURES, bpe_model=str(model_dir / "bpe.model"), model=str(model_dir),
                                semantic_dtype="float32", model_batch_size=4, min_audio_seconds=0.5)
    report = pp.preprocess(read_manifest(corpus), out, opts, num_shards=1, valid_fraction=0.0, progress=False)
    return out, report


@pytest.fixture(scope="module")
def campplus_shards(model_dir, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "campplus"
    utts = [u for u in read_manifest(corpus) if u.id in CAMPPLUS_IDS]
    opts = pp.PreprocessOptions(features=("campplus",), model=str(model_dir), min_audio_seconds=0.5)
    report = pp.preprocess(utts, out, opts, num_shards=1, valid_fraction=0.0, progress=False)
    return out, report


@pytest.fixture(scope="module")
def direct(model_dir):
    """The direct (unbatched, unpadded, B=1) model calls of the inference path."""
    import jax

    from indextts2_jax import audio
    from indextts2_jax.convert.official import component_configs, load_assets
    from indextts2_jax.models import campplus, semantic_codec, w2v_bert

    assets = load_assets(model_dir)
    cc = component_configs(assets.config)
    stats = (assets.w2v_stats["mean"], assets.w2v_stats["var"])
    camp = campplus.CAMPPlus(cc["campplus"])

    def run(path):
        wav_22k, wav_16k = audio.load_speaker_prompt(path, truncate_seconds=None)
        feats, mask = audio.w2v_bert_features([wav_16k])
        hidden = np.asarray(w2v_bert.w2v_bert_embed(assets.params["w2v_bert"], feats, mask, *stats, cc["w2v_bert"]))
        n = int(mask.sum())
        codes_b1, _ = semantic_codec.codec_quantize(assets.params["semantic_codec"], hidden, cc["semantic_codec"], mask)
        codes = semantic_codec.encode_to_codes([wav_16k], assets.params["w2v_bert"], assets.params["semantic_codec"],
                                               stats, cc["w2v_bert"], cc["semantic_codec"])[0]
        return {"wav_22k": wav_22k, "semantic_features": hidden[0, :n], "codes_b1": np.asarray(codes_b1)[0, :n],
                "codes": codes, "hidden_size": cc["w2v_bert"].hidden_size}

    def style(path):
        _, wav_16k = audio.load_speaker_prompt(path, truncate_seconds=None)
        fbank = audio.campplus_features(wav_16k[None])
        return np.asarray(jax.jit(camp.apply)(assets.params["campplus"], fbank))[0], cc["campplus"].embedding_size

    run.style = style
    return run


def records(out):
    return {r["id"]: r for p in shard_io.list_shards(out, "train") for r in shard_io.read_shard(p)}


def test_stored_features_equal_direct_model_calls(shards, corpus, direct):
    out, report = shards
    recs = records(out)
    assert sorted(recs) == [f"u{i}" for i in range(5)]
    err = 0.0
    for uid, rec in recs.items():
        utt = next(u for u in read_manifest(corpus) if u.id == uid)
        ref = direct(utt.audio_path)
        assert rec["num_samples"] == ref["wav_22k"].shape[0]  # the same 22.05 kHz audio as the inference path
        sem, codes = rec["semantic_features"], rec["semantic_codes"]
        assert sem.dtype == np.float32 and sem.shape == ref["semantic_features"].shape
        assert sem.shape[1] == ref["hidden_size"]
        assert codes.dtype == np.int32 and codes.shape == (sem.shape[0],)
        np.testing.assert_array_equal(codes, ref["codes"], err_msg=uid)
        np.testing.assert_array_equal(codes, ref["codes_b1"], err_msg=uid)
        err = max(err, rel_err(sem, ref["semantic_features"]))
        n16 = -(-rec["num_samples"] * 16000 // 22050)
        assert sem.shape[0] == (1 + (n16 - 400) // 160) // 2  # valid stacked w2v-BERT frames
    assert len({len(np.unique(r["semantic_codes"])) for r in recs.values()}) > 1  # codes are not constant
    print("semantic_features max rel err", err)
    assert err < EMB_TOL


def test_campplus_embedding_equals_direct_call(campplus_shards, corpus, direct):
    out, report = campplus_shards
    """The batched, padded, masked CAMPPlus (masked_campplus) equals each utterance run alone, unpadded."""
    out, report = campplus_shards
    assert report["total"]["examples"] == 2 and report["skipped_by_reason"] == {"AudioDecodeError": 1}
    recs = records(out)
    assert sorted(recs) == ["u0", "u1"]
    for uid, rec in recs.items():
        ref, size = direct.style(next(u for u in read_manifest(corpus) if u.id == uid).audio_path)
        emb = rec["speaker_embedding"]
        assert emb.dtype == np.float32 and emb.shape == (size,) and np.abs(emb).max() > 0
        print(uid, "speaker_embedding max rel err", rel_err(emb, ref))
        assert rel_err(emb, ref) < EMB_TOL
    assert rel_err(recs["u0"]["speaker_embedding"], recs["u1"]["speaker_embedding"]) > 1e-3


def test_bad_file_is_skipped_and_reported(shards):
    out, report = shards
    assert report["complete"] and report["total"]["examples"] == 5 and report["total"]["skipped"] == 1
    assert report["skipped_by_reason"] == {"AudioDecodeError": 1}
    assert report["skipped"][0]["id"] == "u_bad"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["features"] == list(MODEL_FEATURES)
    assert {"semantic_features", "semantic_codes"} <= set(meta["outputs"])
    done = shard_io.read_done(shard_io.list_shards(out, "train")[0])
    for e in done["examples"]:
        assert e["lengths"]["semantic_features"] == e["lengths"]["semantic_codes"] > 0


def test_gpt_pipeline_reads_features_and_codes(shards):
    import ml_collections

    from data_pipeline.pipeline import make_pipeline

    out, _ = shards
    recs = records(out)
    by_index = [r["id"] for p in shard_io.list_shards(out, "train") for r in shard_io.read_shard(p)]
    config = ml_collections.ConfigDict({"stage": "gpt", "global_batch_size": 2, "data": {
        "length_buckets": [64, 128], "max_text_tokens": 200, "num_workers": 0, "shuffle_seed": 0,
        "prompt_frames": 32, "prompt_min_frames": 8}})
    pipe = make_pipeline(config, "train", shards_dir=out, process_index=0, process_count=1, num_epochs=1,
                         num_workers=0)
    seen = 0
    for batch in pipe:
        b, length = batch["semantic_codes"].shape
        assert batch["semantic_features"].shape == (b, length, recs["u0"]["semantic_features"].shape[1])
        for row in np.nonzero(batch["valid"])[0]:
            rec = recs[by_index[int(batch["record_index"][row])]]
            n = int(batch["semantic_lengths"][row])
            assert n == rec["semantic_codes"].shape[0] <= length
            np.testing.assert_array_equal(batch["semantic_codes"][row, :n], rec["semantic_codes"])
            np.testing.assert_array_equal(batch["semantic_features"][row, :n], rec["semantic_features"])
            assert not batch["semantic_codes"][row, n:].any()
            ids = batch["text_ids"][row, : batch["text_lengths"][row]]
            np.testing.assert_array_equal(ids, rec["text_ids"])
            seen += 1
    assert seen == 5


def test_float16_storage_and_batch_independence(shards, corpus, model_dir):
    """Default storage is float16 (the float32 features rounded); one-at-a-time equals the batched records."""
    out, _ = shards
    recs = records(out)
    utts = [u for u in read_manifest(corpus) if u.id in ("u1", "u3")]
    opts = pp.PreprocessOptions(features=("w2v_bert", "semantic_codes"), model=str(model_dir), model_batch_size=1)
    ex = pp.FeatureExtractor(opts)
    for utt in utts:
        rec, skip = ex(utt)
        assert skip is None and rec["semantic_features"].dtype == np.float16
        np.testing.assert_array_equal(rec["semantic_features"], recs[utt.id]["semantic_features"].astype(np.float16))
        np.testing.assert_array_equal(rec["semantic_codes"], recs[utt.id]["semantic_codes"])


def test_failed_batch_falls_back_to_single_utterances(corpus, model_dir, monkeypatch):
    """An error in a batched model call skips only the utterance that fails on its own."""
    from data_pipeline.model_features import ModelFeatures

    utts = [u for u in read_manifest(corpus) if u.id in ("u0", "u1", "u2")]
    opts = pp.PreprocessOptions(features=("w2v_bert",), model=str(model_dir), semantic_dtype="float32")
    ex = pp.FeatureExtractor(opts)
    real_semantic = ModelFeatures.semantic
    calls = []

    def flaky(self, waves, codes=False, features=True):
        calls.append(len(waves))
        if any(w.shape[0] > 2 * 16000 for w in waves):  # u2 (2.3 s) fails, alone or in a batch
            raise FloatingPointError("model blew up")
        return real_semantic(self, waves, codes, features)

    monkeypatch.setattr(ModelFeatures, "semantic", flaky)
    results = ex.process(utts)
    assert calls == [3, 1, 1, 1]
    assert [r is not None for r, _ in results] == [True, True, False]
    assert results[2][1]["reason"] == "unexpected FloatingPointError" and "blew up" in results[2][1]["message"]
    assert results[0][0]["semantic_features"].shape[1] == ex.models.w2v_config.hidden_size


def test_model_feature_without_model_is_refused(corpus, tmp_path, capsys):
    for name in ("w2v_bert", "semantic_codes", "campplus"):
        with pytest.raises(pp.ModelRequiredError, match="--model"):
            pp.check_features(["mel", name])
    opts = pp.PreprocessOptions(features=("semantic_codes",))
    with pytest.raises(pp.ModelRequiredError, match="semantic codec codes.*--model PATH"):
        pp.preprocess(read_manifest(corpus), tmp_path / "o", opts, progress=False)
    with pytest.raises(pp.ModelRequiredError):
        pp.FeatureExtractor(dataclasses.replace(opts, features=("campplus",)))
    assert not (tmp_path / "o" / "dataset.json").exists()
    with pytest.raises(SystemExit):
        pp.main(["--config", "configs/demo.py:stage=gpt", "--manifest", str(corpus), "--out", str(tmp_path / "c"),
                 "--features", "w2v_bert", "--num_workers", "0"])
    err = capsys.readouterr().err
    assert "'w2v_bert'" in err and "--model PATH" in err
    with pytest.raises(FileNotFoundError):
        pp.FeatureExtractor(dataclasses.replace(opts, model=str(tmp_path / "nowhere")))


def test_default_features_with_model():
    """--model switches the gpt/codec defaults to the real features, unless the config reads the mel stand-ins."""
    import ml_collections

    demo = pp.load_config("configs/demo.py:stage=gpt")
    assert pp.options_from_config(demo, None, "", "M").features == ("mel_stacked",)  # demo.semantic_features="mel"
    real = ml_collections.ConfigDict({"stage": "gpt", "data": demo.data.to_dict()})
    opts = pp.options_from_config(real, None, "bpe.model", "M")
    assert opts.features == ("text_ids", "w2v_bert", "semantic_codes") and opts.model == "M"
    assert pp.options_from_config(real, None, "bpe.model", "").features == ("text_ids", "mel_stacked")
    real.stage = "codec"
    assert pp.options_from_config(real, None, "", "M").features == ("w2v_bert",)
