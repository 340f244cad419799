"""End-to-end synthesis (indextts2_jax/infer/pipeline.py, experiments/synthesize.py) at tiny random sizes.

One model (``random_assets(tiny_config(minimal=True))``, 2 diffusion steps) is shared by every test so the
jitted stages compile once per shape bucket; greedy decoding with few codes keeps the runs short.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from indextts2_jax import errors
from indextts2_jax.infer import pipeline
from indextts2_jax.infer.random_assets import random_assets, tiny_config
from indextts2_jax.models import gpt
from tests.tiny_model import tiny_tts

GREEDY = dict(do_sample=False, num_beams=1, repetition_penalty=10.0, max_mel_tokens=16)
# random weights rarely emit the stop token: segments run to max_mel_tokens (the pipeline warns)
pytestmark = pytest.mark.filterwarnings("ignore:.*no stop token:RuntimeWarning")

TEXT = "hello world, this is a test. the quick brown fox jumps over the lazy dog."
TEXT2 = "she sells sea shells by the sea shore. how much wood would a woodchuck chuck?"


@pytest.fixture(scope="module")
def tts(tmp_path_factory):
    return tiny_tts(tmp_path_factory.mktemp("tiny_official"))


def test_random_assets_complete():
    assets = random_assets(tiny_config(minimal=True), seed=0)
    assert assets.missing_components() == []
    cfgs = pipeline.component_configs(assets.config)
    assert assets.spk_matrix.shape == (73, cfgs.campplus.embedding_size)
    assert assets.emo_matrix.shape == (73, cfgs.gpt.model_dim)


def test_from_pretrained_converted_checkpoint(tts):
    """The official loader's conversion cache is a converted checkpoint: from_pretrained reads it (no torch)."""
    if not tts.assets.source.startswith("official:"):
        pytest.skip("needs the official-format fixture (torch)")
    root = Path(tts.assets.source.split(":", 1)[1].split(" (cache")[0])
    entries = sorted(root.glob("jax_cache/*/converted.json"))
    assert entries, "the official loader wrote no conversion cache"
    model = pipeline.IndexTTS2.from_pretrained(entries[0].parent)
    assert model.assets.source.startswith("converted:")
    flat_a = jax.tree_util.tree_leaves(model.assets.params["gpt"])
    flat_b = jax.tree_util.tree_leaves(tts.assets.params["gpt"])
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(flat_a, flat_b))


def test_from_pretrained_rejects_unknown_folder(tmp_path):
    with pytest.raises(errors.ModelDirectoryError):
        pipeline.IndexTTS2.from_pretrained(tmp_path)
    with pytest.raises(errors.ModelDirectoryError):
        pipeline.IndexTTS2.from_pretrained(tmp_path / "nope")


def _tone(path, seconds, sr, freq, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.2 * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.normal(size=t.size)
    sf.write(str(path), wave.astype(np.float32), sr)
    return str(path)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    d = tmp_path_factory.mktemp("prompts")
    return {
        "spk": _tone(d / "spk.wav", 1.5, 22050, 220.0, 0),
        "spk2": _tone(d / "spk2.wav", 1.5, 22050, 180.0, 1),
        "emo": _tone(d / "emo.wav", 1.3, 16000, 330.0, 2),
        "dir": d,
    }


def _expected_samples(tts, report):
    frames = [int(np.trunc(np.float32(s["codes"]) * np.float32(1.72))) for s in report["segments"]]
    n = len(frames)
    return sum(frames) * 256 + (n - 1) * int(22050 * 0.2)


def test_audio_length_finite_and_segments(tts, prompts):
    wave, sr, report = tts.synthesize(TEXT, prompts["spk"], max_text_tokens_per_segment=24, **GREEDY)
    assert sr == 22050 and wave.dtype == np.float32
    assert len(report["segments"]) >= 2
    assert np.all(np.isfinite(wave)) and np.max(np.abs(wave)) <= 1.0 and np.std(wave) > 0
    assert wave.shape[0] == _expected_samples(tts, report)
    for seg in report["segments"]:
        assert seg["mel_frames"] == int(np.float32(seg["codes"]) * np.float32(1.72))
        assert seg["samples"] == seg["mel_frames"] * 256
    # the silence between segments is exact zeros
    first = report["segments"][0]["samples"]
    assert np.all(wave[first: first + int(22050 * 0.2)] == 0)
    t = report["timings_s"]
    assert set(t) >= {"prompt", "conditioning", "generation", "latent", "s2m", "vocoder"} and report["rtf"] > 0


def test_bfloat16_synthesizer_holds_its_compute_weights_in_bfloat16(tts, prompts):
    """dtype=bfloat16: the GPT, S2M and BigVGAN weights live on the device in bfloat16 (half the memory; the
    DiT's freqs table stays float32, as in a bfloat16 bundle), w2v-BERT/codec/CAMPPlus keep float32; the
    caller's assets are untouched; the vocoder tracks the float32 one; synthesis meets an exact code count
    with finite audio, and the same seed gives the same audio."""
    assets = tts.assets  # the float32 synthesizer's device copy (its vocoder program is compiled)
    b16 = pipeline.IndexTTS2(assets, dtype=jnp.bfloat16, diffusion_steps=2)
    kinds = {name: {str(x.dtype) for x in jax.tree.leaves(b16.assets.params[name])} for name in b16.assets.params}
    for name in pipeline.COMPUTE_DTYPE_COMPONENTS:
        assert "bfloat16" in kinds[name], (name, kinds[name])
    assert kinds["gpt"] == {"bfloat16"} and kinds["bigvgan"] == {"bfloat16"}, kinds
    assert str(b16.assets.params["s2mel"]["estimator"]["t_embedder"]["freqs"].dtype) == "float32"
    for name in ("semantic_codec", "campplus"):
        assert kinds[name] == {"float32"}, (name, kinds[name])
    assert {str(x.dtype) for x in jax.tree.leaves(assets.params["gpt"])} == {"float32"}  # the caller's copy
    assert {str(x.dtype) for x in jax.tree.leaves(tts.params["gpt"])} == {"float32"}

    mel = np.random.default_rng(0).normal(-5, 1, (40, tts.cfg.bigvgan.num_mels)).astype(np.float32)
    ref, low = tts.vocode(mel), b16.vocode(mel)
    assert low.shape == ref.shape and np.all(np.isfinite(low))
    assert np.linalg.norm(low - ref) < 0.05 * np.linalg.norm(ref)  # bfloat16: ~3 significant digits per op

    opts = dict(target_tokens=12, seed=3, **GREEDY)
    wave, sr, report = b16.synthesize("hello world.", prompts["spk"], **opts)
    assert [s["codes"] for s in report["segments"]] == [12] and wave.shape[0] == _expected_samples(b16, report)
    assert np.all(np.isfinite(wave)) and np.std(wave) > 0
    again, _, _ = b16.synthesize("hello world.", prompts["spk"], **opts)
    np.testing.assert_array_equal(again, wave)


def test_attention_option_is_checked_and_reaches_the_s2m_estimator(tts):
    with pytest.raises(errors.ConfigError, match="attention='flash'"):
        pipeline.IndexTTS2(tts.assets, attention="flash")
    with pytest.raises(errors.ConfigError, match="bfloat16 or float16"):
        pipeline.IndexTTS2(tts.assets, attention="cudnn")  # float32
    fused = pipeline.IndexTTS2(tts.assets, attention="xla", diffusion_steps=2)
    assert fused.cfg.s2mel.dit.attention == "xla" and tts.cfg.s2mel.dit.attention == "einsum"
    assert fused.cfg.gpt == tts.cfg.gpt  # only the S2M estimator's config changes


def test_second_text_compiles_nothing(tts, prompts):
    tts.synthesize(TEXT, prompts["spk"], max_text_tokens_per_segment=24, **GREEDY)  # warm (no-op if warm)
    compiles = []

    def listener(event, duration, **kw):
        if "backend_compile" in event:
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        wave, _, report = tts.synthesize(TEXT2, prompts["spk"], max_text_tokens_per_segment=24, **GREEDY)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert report["batch"]["new_compiles"] == 0
    assert compiles == [], f"XLA compiled {len(compiles)} programs for a new text"
    assert report["batch"]["prompt_cache"]["hits"] >= 2 and report["batch"]["prompt_cache"]["misses"] == 0


def test_the_model_is_held_once_on_the_device():
    """The synthesizer keeps one copy of the weights: its own on the device; the host arrays the caller loaded
    are freed once the caller lets go of them (holding both doubled the model's memory)."""
    import gc
    import weakref

    assets = random_assets(tiny_config(minimal=True), seed=0)
    host_leaves = [weakref.ref(x) for x in jax.tree.leaves(assets.params) if isinstance(x, np.ndarray)]
    assert host_leaves
    tts = pipeline.IndexTTS2(assets, diffusion_steps=2)
    jax.block_until_ready(tts.params)
    del assets
    gc.collect()
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(tts.assets.params))
    # a host array still alive is the device array's own memory (XLA:CPU takes 64-byte aligned arrays zero-copy)
    device_memory = {x.unsafe_buffer_pointer() for x in jax.tree.leaves(tts.assets.params)}
    alive = [ref() for ref in host_leaves if ref() is not None]
    assert all(x.ctypes.data in device_memory for x in alive)
    assert len(alive) < len(host_leaves)  # the unaligned ones were copied, and their host arrays are gone
    # the stages' params are the assets' device arrays, not further copies
    stage_gpt, assets_gpt = jax.tree.leaves(tts.params["gpt"]), jax.tree.leaves(tts.assets.params["gpt"])
    assert {id(x) for x in stage_gpt} == {id(x) for x in assets_gpt}


def test_second_model_of_the_same_config_compiles_nothing(tts, prompts):
    """Synthesizers of one config share their jitted stages: other weights (a reloaded or fine-tuned model)
    run the compiled programs; other settings (diffusion steps) get their own."""
    import dataclasses

    wave, _, _ = tts.synthesize("hello world.", prompts["spk"], **GREEDY)  # warm (no-op if warm)
    scaled = jax.tree.map(lambda x: x * 1.01 if jnp.issubdtype(x.dtype, jnp.floating) else x, tts.assets.params)
    other = pipeline.IndexTTS2(dataclasses.replace(tts.assets, params=scaled), diffusion_steps=2)
    assert other.trace_counts is tts.trace_counts
    wave2, _, report = other.synthesize("hello world.", prompts["spk"], **GREEDY)
    assert report["batch"]["new_compiles"] == 0
    assert not np.array_equal(wave, wave2)  # its own weights
    assert pipeline.IndexTTS2(tts.assets, diffusion_steps=3).trace_counts is not tts.trace_counts


def test_a_live_synthesizer_keeps_its_stages_shared(tts):
    """More settings than the LRU keeps push this one's stages out of it; while ``tts`` holds them, a new
    synthesizer of its setting still finds them (nothing compiles twice for one setting in a process)."""
    others = [pipeline.IndexTTS2(tts.assets, diffusion_steps=10 + i) for i in range(pipeline._STAGES_KEPT + 1)]
    assert len({id(o.trace_counts) for o in others}) == len(others)
    assert pipeline.IndexTTS2(tts.assets, diffusion_steps=2).trace_counts is tts.trace_counts


def test_seed_determinism_and_sampling(tts, prompts):
    opts = dict(do_sample=True, num_beams=1, top_k=30, top_p=0.8, temperature=1.0, max_mel_tokens=16)
    a, _, ra = tts.synthesize("hello world.", prompts["spk"], seed=3, **opts)
    b, _, _ = tts.synthesize("hello world.", prompts["spk"], seed=3, **opts)
    c, _, _ = tts.synthesize("hello world.", prompts["spk"], seed=4, **opts)
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_target_tokens_exact(tts, prompts):
    wave, _, report = tts.synthesize(TEXT, prompts["spk"], target_tokens=21, max_text_tokens_per_segment=24,
                                     **GREEDY)
    codes = [s["codes"] for s in report["segments"]]
    assert sum(codes) == 21
    assert codes == pipeline.split_tokens(21, [s["text_tokens"] for s in report["segments"]])
    assert wave.shape[0] == _expected_samples(tts, report)
    # duration -> codes at 22050 / 256 / 1.72 codes per second, silences subtracted
    n = len(codes)
    assert tts.duration_to_tokens(2.0, n, 200) == round((2.0 - 0.2 * (n - 1)) * 22050 / 256 / 1.72)
    _, _, rep = tts.synthesize("hello world.", prompts["spk"], duration_seconds=0.3, **GREEDY)
    assert rep["segments"][0]["codes"] == round(0.3 * 22050 / 256 / 1.72)
    with pytest.raises(errors.ConfigError):
        tts.synthesize("hello world.", prompts["spk"], target_tokens=40, **GREEDY)  # > max_mel_tokens


def test_split_tokens_and_buckets():
    assert pipeline.split_tokens(10, [1, 1]) == [5, 5]
    assert sum(pipeline.split_tokens(101, [3, 7, 11])) == 101
    assert min(pipeline.split_tokens(5, [100, 1, 1])) >= 1
    assert [pipeline.bucket_size(n, 16) for n in (1, 16, 17, 25, 33, 49, 97)] == [16, 16, 24, 32, 48, 64, 128]
    assert pipeline.bucket_size(70, buckets=(50, 100)) == 100


def test_batch_equals_one_by_one(tts, prompts):
    jobs = [
        dict(text="hello world.", speaker_prompt=prompts["spk"], target_tokens=9, seed=1),
        dict(text="the quick brown fox jumps over the lazy dog.", speaker_prompt=prompts["spk2"], seed=2,
             emotion_prompt=prompts["emo"], emotion_alpha=0.6),
    ]
    batch = tts.synthesize_batch(jobs, batch_size=2, **GREEDY)
    for job, (wave_b, _, rep_b) in zip(jobs, batch):
        wave_1, _, rep_1 = tts.synthesize_batch([job], batch_size=1, **GREEDY)[0]
        assert [s["codes"] for s in rep_b["segments"]] == [s["codes"] for s in rep_1["segments"]]
        assert wave_b.shape == wave_1.shape
        # same codes; float32 rounding differs with the padded shapes (attention sums, conv tiling)
        np.testing.assert_allclose(wave_b, wave_1, atol=5e-5, rtol=0)  # measured 6e-6


def test_stream_equals_synthesize(tts, prompts):
    """synthesize_stream yields the segments in text order, silence first (but for segment 0); together they
    are synthesize's wave sample for sample; the last chunk carries the report with the time to first audio."""
    opts = dict(max_text_tokens_per_segment=24, **GREEDY)
    wave, _, report = tts.synthesize(TEXT, prompts["spk"], **opts)
    chunks = list(tts.synthesize_stream(TEXT, prompts["spk"], **opts))
    assert [c.segment for c in chunks] == list(range(len(report["segments"]))) and len(chunks) >= 2
    assert all(c.num_segments == len(chunks) and c.sample_rate == 22050 for c in chunks)
    assert [c.report is None for c in chunks] == [True] * (len(chunks) - 1) + [False]
    silence = report["silence_samples"]
    for c, seg in zip(chunks, report["segments"]):
        assert c.info == seg
        assert c.audio.shape[0] == seg["samples"] + (silence if c.segment else 0)
        if c.segment:
            assert not np.any(c.audio[:silence])
    np.testing.assert_array_equal(np.concatenate([c.audio for c in chunks]), wave)
    assert [c.elapsed_s for c in chunks] == sorted(c.elapsed_s for c in chunks)
    final = chunks[-1].report
    assert final["segments"] == report["segments"] and final["audio_seconds"] == report["audio_seconds"]
    # first_audio_s is rounded to 0.1 ms like the report's timings
    assert 0 < final["first_audio_s"] <= chunks[0].elapsed_s + 1e-4 and chunks[0].elapsed_s <= final["batch"]["wall_s"]
    assert final["batch"]["new_compiles"] == 0  # the same programs as synthesize


def test_quick_streaming_tokens_short_first_segment(tts, prompts):
    """quick_streaming_tokens reaches the segmentation: TEXT (15 + 20 tokens) is one segment at 40 tokens, two
    with quick_streaming_tokens=35; a target count is split over the segments; stream == synthesize."""
    opts = dict(max_text_tokens_per_segment=40, quick_streaming_tokens=35, target_tokens=20, **GREEDY)
    plain = tts.tokenizer.segment(TEXT, max_tokens=40)
    quick = tts.tokenizer.segment(TEXT, max_tokens=40, quick_streaming_tokens=35)
    assert len(plain) == 1 and len(quick) == 2 and len(quick[0]) < len(plain[0])
    chunks = list(tts.synthesize_stream(TEXT, prompts["spk"], **opts))
    assert [c.info["text_tokens"] for c in chunks] == [len(q) for q in quick]
    assert sum(c.info["codes"] for c in chunks) == 20
    wave, _, _ = tts.synthesize(TEXT, prompts["spk"], **opts)
    np.testing.assert_array_equal(np.concatenate([c.audio for c in chunks]), wave)


def test_stream_checks_input_before_iterating(tts, prompts):
    """Bad input raises at the call, before any chunk (and before the CLI creates its output file)."""
    with pytest.raises(errors.EmptyTextError):
        tts.synthesize_stream("   ", prompts["spk"], **GREEDY)
    with pytest.raises(errors.AudioFileNotFoundError):
        tts.synthesize_stream("hello world.", str(prompts["dir"] / "missing.wav"), **GREEDY)
    with pytest.raises(errors.ConfigError):
        tts.synthesize_stream("hello world.", prompts["spk"], quick_streaming_tokens=-1, **GREEDY)
    with pytest.raises(errors.ConfigError):
        tts.synthesize_stream("hello world.", prompts["spk"], beams=2)  # a typo in a sampling option


def test_vocoder_silence_padding_invariance(tts):
    """BigVGAN output over the real frames does not depend on how much silence mel follows (>= the margin)."""
    rng = np.random.default_rng(0)
    frames = 20
    mel = rng.normal(-5.0, 2.0, size=(1, frames, 80)).astype(np.float32)
    outs = []
    for total in (frames + tts.vocoder_margin, frames + tts.vocoder_margin + 24):
        padded = np.full((1, total, 80), pipeline.SILENCE_LOG_MEL, np.float32)
        padded[:, :frames] = mel
        outs.append(np.asarray(tts._vocode(tts.params, jnp.asarray(padded)))[0, : frames * 256])
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6, rtol=0)


def test_given_codes(tts, prompts):
    """``codes=`` speaks given semantic codes (no generation): the output has their length; in one batch with a
    generated job both equal their one-by-one runs; ``semantic_codes`` gives a recording's codes (the prompt
    front end + codec); bad codes are refused."""
    codes = tts.semantic_codes(prompts["spk2"])
    assert codes.dtype == np.int32 and codes.shape == (tts.speaker_features(prompts["spk2"]).length,)
    assert 0 <= codes.min() and codes.max() < tts.cfg.inference_codec.codebook_size
    wave, _, rep = tts.synthesize("hello world.", prompts["spk"], codes=codes[:12], seed=5)
    (seg,) = rep["segments"]
    assert seg["codes_given"] and seg["codes"] == 12 and seg["stopped"]
    assert wave.shape[0] == seg["samples"] == int(np.float32(12) * np.float32(1.72)) * 256
    assert np.all(np.isfinite(wave)) and np.std(wave) > 0
    jobs = [dict(text="hello world.", speaker_prompt=prompts["spk"], codes=codes[:12].tolist(), seed=5),
            dict(text="the quick brown fox.", speaker_prompt=prompts["spk2"], seed=2)]
    batch = tts.synthesize_batch(jobs, batch_size=2, **GREEDY)
    for job, (wave_b, _, rep_b) in zip(jobs, batch):
        wave_1, _, rep_1 = tts.synthesize_batch([job], batch_size=1, **GREEDY)[0]
        assert rep_b["segments"][0]["codes_given"] == ("codes" in job)
        assert rep_b["segments"][0]["codes"] == rep_1["segments"][0]["codes"]
        np.testing.assert_allclose(wave_b, wave_1, atol=5e-5, rtol=0)  # as test_batch_equals_one_by_one
    np.testing.assert_allclose(batch[0][0], wave, atol=5e-5, rtol=0)
    for bad, kw in (([1, 2], dict(target_tokens=4)), ([-1, 2], {}), ([[1, 2]], {}), ([], {}), ([0.5, 1.0], {}),
                    ([tts.cfg.inference_codec.codebook_size], {})):
        with pytest.raises(errors.ConfigError):
            tts.synthesize("hello world.", prompts["spk"], codes=bad, **kw)
    with pytest.raises(errors.ConfigError, match="one segment"):
        tts.synthesize(TEXT, prompts["spk"], codes=codes[:12], max_text_tokens_per_segment=24)


def test_vocode(tts):
    """``vocode`` of one mel equals its row in a batch with a longer mel (silence-padded buckets)."""
    rng = np.random.default_rng(1)
    a = rng.normal(-5.0, 2.0, size=(20, 80)).astype(np.float32)
    b = rng.normal(-5.0, 2.0, size=(45, 80)).astype(np.float32)
    wave = tts.vocode(a)
    assert wave.shape == (20 * 256,) and wave.dtype == np.float32
    rows = np.full((2, 45, 80), pipeline.SILENCE_LOG_MEL, np.float32)
    rows[0, :20], rows[1] = a, b
    together = tts._vocode_rows(rows, np.array([20, 45]))
    np.testing.assert_allclose(wave, np.clip(together[0], -1, 1), atol=1e-6, rtol=0)
    assert together[1].shape == (45 * 256,)
    with pytest.raises(errors.ConfigError):
        tts.vocode(a[:, :40])


def test_emotion_modes(tts, prompts):
    spk = prompts["spk"]
    base, _, r0 = tts.synthesize("hello world.", spk, **GREEDY)
    assert r0["emotion_mode"] == "speaker"
    audio, _, r1 = tts.synthesize("hello world.", spk, emotion_prompt=prompts["emo"], emotion_alpha=0.7, **GREEDY)
    assert r1["emotion_mode"] == "audio" and r1["emotion_alpha"] == 0.7
    vec = [0, 0, 0.5, 0, 0, 0, 0, 0.2]
    v, _, r2 = tts.synthesize("hello world.", spk, emotion_vector=vec, emotion_prompt=prompts["emo"], **GREEDY)
    assert r2["emotion_mode"] == "vector" and r2["emotion_prompt"] == spk and r2.get("warnings")
    _, _, r3 = tts.synthesize("hello world.", spk, emotion_vector=vec, emotion_alpha=0.5, **GREEDY)
    assert r3["emotion_vector"] == [0, 0, 0.25, 0, 0, 0, 0, 0.1]
    for w in (audio, v):
        assert np.all(np.isfinite(w)) and not np.array_equal(w[: base.size], base[: w.size])
    with pytest.raises(pipeline.EmotionTextUnavailableError, match="emotion_text_model"):
        tts.synthesize("hello world.", spk, use_emotion_text=True, **GREEDY)
    with pytest.raises(errors.ConfigError):
        tts.synthesize("hello world.", spk, emotion_vector=[1, 2, 3], **GREEDY)


def test_emotion_text_gives_the_vector_mode_with_the_models_weights(tts, prompts, monkeypatch):
    """use_emotion_text / emotion_text: the emotion model (the tiny random Qwen3 folder of
    tests/parity/test_qwen3.py) reads the text; synthesis then equals the vector mode with its weights."""
    from indextts2_jax.convert.official import emotion_text_dir
    from indextts2_jax.infer.emotion_text import QwenEmotion

    folder = Path(__file__).parent / "data" / "qwen3_tiny"
    model = pipeline.IndexTTS2(tts.assets, diffusion_steps=2, emotion_text_model=folder)
    spk = prompts["spk"]
    qwen = model.emotion_text_model()
    assert isinstance(qwen, QwenEmotion) and model.emotion_text_model() is qwen  # loaded once
    qwen.max_new_tokens = 8
    # a random model's answer is no JSON (-> calm); answer a real one to test the weights' path
    monkeypatch.setattr(qwen, "reply_text", lambda ids: '{"高兴": 0.6, "悲伤": 0.9, "自然": 0.1}')
    wave, _, report = model.synthesize("hello world.", spk, emotion_text="I feel gloomy.", emotion_alpha=0.5,
                                       **GREEDY)
    assert report["emotion_mode"] == "text" and report["emotion_text"]["text"] == "I feel gloomy."
    assert report["emotion_text"]["scores"]["melancholic"] == 0.9  # "gloomy": sad -> melancholic
    assert report["emotion_vector"] == [0.3, 0, 0, 0, 0, 0.45, 0, 0.05]  # scaled by emotion_alpha
    want, _, _ = model.synthesize("hello world.", spk, emotion_vector=[0.6, 0, 0, 0, 0, 0.9, 0, 0.1],
                                  emotion_alpha=0.5, **GREEDY)
    np.testing.assert_array_equal(wave, want)
    _, _, r2 = model.synthesize("hello world.", spk, use_emotion_text=True, emotion_vector=[0] * 8, **GREEDY)
    assert r2["emotion_text"]["text"] == "hello world." and any("emotion_vector ignored" in w for w in r2["warnings"])
    qwen.max_text_chars = 8  # a long text to speak is read by its beginning; an explicit emotion_text must fit
    _, _, r3 = model.synthesize("hello world.", spk, use_emotion_text=True, **GREEDY)
    assert r3["emotion_text"]["text"] == "hello wo" and any("first 8 of 12" in w for w in r3["warnings"])
    with pytest.raises(errors.ConfigError, match="at most 8"):
        model.synthesize("hello world.", spk, emotion_text="far too long", **GREEDY)
    # an official directory names its folder (config.yaml qwen_emo_path) when the folder is there
    cfg2 = tts.assets.config.copy_and_resolve_references()
    cfg2.model.qwen_emo_path = "qwen3_tiny/ "
    assert emotion_text_dir(cfg2, folder.parent) == str(folder)
    cfg2.model.qwen_emo_path = "absent/"
    assert emotion_text_dir(cfg2, folder.parent) is None


def test_normalize_emotion_vector():
    w = pipeline.normalize_emotion_vector([1.0, 0, 0, 0, 0, 0, 0, 0])
    assert w[0] == pytest.approx(0.8)  # 0.9375 after the bias, capped to a sum of 0.8
    w = pipeline.normalize_emotion_vector([0, 0, 0, 0, 0, 0, 0.4, 0.4])
    assert w == pytest.approx([0, 0, 0, 0, 0, 0, 0.275, 0.225])  # sum 0.5 <= 0.8: bias only


def test_emotion_vector_row_selection(tts):
    style = tts.spk_rows[2][1] * 3.0  # closest (cosine) to row 1 of category "sad"
    w = [0, 0, 1.0, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(tts.emotion_matrix_vector(style, w), tts.emo_rows[2][1], rtol=1e-6)


def test_prompt_cache_hit(tts, prompts):
    tts.synthesize("hello world.", prompts["spk"], **GREEDY)
    before = dict(tts.cache_stats)
    _, _, rep = tts.synthesize("hello again.", prompts["spk"], **GREEDY)
    assert tts.cache_stats["misses"] == before["misses"]
    assert tts.cache_stats["hits"] == before["hits"] + 2  # speaker + its own emotion path


def test_latent_packing_equals_teacher_forced(tts):
    """The packed latent of a padded row equals UnifiedVoice.teacher_forced on the unpadded row."""
    cfg = tts.cfg.gpt
    rng = np.random.default_rng(0)
    conds = jnp.asarray(rng.normal(size=(1, cfg.cond_rows, cfg.model_dim)).astype(np.float32))
    ids = rng.integers(3, 100, size=(1, 7)).astype(np.int32)
    codes = rng.integers(0, 200, size=(1, 5)).astype(np.int32)
    ref = tts.gpt_model.apply({"params": tts.params["gpt"]}, conds, jnp.asarray(ids), None, jnp.asarray(codes), None,
                              False, method=gpt.UnifiedVoice.teacher_forced)["latent"]
    pad_ids = np.concatenate([ids, np.ones((1, 9), np.int32)], 1)
    pad_codes = np.concatenate([codes, np.zeros((1, 27), np.int32)], 1)
    got = tts._latent(tts.params, conds, jnp.asarray(pad_ids), jnp.array([7]), jnp.asarray(pad_codes), jnp.array([5]))
    np.testing.assert_allclose(np.asarray(got)[:, :5], np.asarray(ref), atol=1e-5, rtol=1e-5)


def test_bad_inputs(tts, prompts):
    spk = prompts["spk"]
    with pytest.raises(errors.EmptyTextError):
        tts.synthesize("   ", spk, **GREEDY)
    with pytest.raises(errors.UnpronounceableTextError):
        tts.synthesize("?!… ✓✓", spk, **GREEDY)
    with pytest.raises(errors.AudioFileNotFoundError):
        tts.synthesize("hello world.", str(prompts["dir"] / "missing.wav"), **GREEDY)
    corrupt = prompts["dir"] / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(errors.AudioDecodeError):
        tts.synthesize("hello world.", str(corrupt), **GREEDY)
    silent = prompts["dir"] / "silent.wav"
    sf.write(str(silent), np.zeros(22050, np.float32), 22050)
    with pytest.raises(errors.SilentAudioError):
        tts.synthesize("hello world.", str(silent), **GREEDY)
    with pytest.raises(errors.SilentAudioError):
        tts.synthesize("hello world.", spk, emotion_prompt=str(silent), **GREEDY)
    with pytest.raises(errors.ConfigError):
        tts.synthesize("hello world.", spk, target_tokens=5, duration_seconds=1.0, **GREEDY)


def test_cli_writes_wav_and_json(tts, prompts, tmp_path, capsys):
    from experiments import synthesize as cli

    out = tmp_path / "out.wav"
    argv = ["--model", "unused", "--text", "hello world.", "--speaker_prompt", prompts["spk"], "--out", str(out),
            "--no-do_sample", "--num_beams", "1", "--max_mel_tokens", "16", "--target_tokens", "12", "--json",
            "--no_progress", "--emotion_vector", "0", "0", "0.3", "0", "0", "0", "0", "0"]
    cli.main(argv, tts=tts)
    report = json.loads(capsys.readouterr().out)
    data, sr = sf.read(str(out), dtype="int16")
    assert sr == 22050 and data.shape[0] == int(12 * 1.72) * 256
    assert report["segments"][0]["codes"] == 12 and report["emotion_mode"] == "vector"
    assert set(report["batch"]["timings_s"]) >= {"prompt", "conditioning", "generation", "latent", "s2m", "vocoder"}
    assert report["batch"]["rtf"] > 0

    # --stream writes the same audio segment by segment
    streamed = tmp_path / "streamed.wav"
    argv_stream = [a if a != str(out) else str(streamed) for a in argv] + ["--stream"]
    cli.main(argv_stream, tts=tts)
    report_stream = json.loads(capsys.readouterr().out)
    np.testing.assert_array_equal(sf.read(str(streamed), dtype="int16")[0], data)
    assert report_stream["first_audio_s"] > 0 and report_stream["wav"] == str(streamed)
    missing = tmp_path / "never.wav"
    with pytest.raises(errors.AudioFileNotFoundError):
        cli.main(["--model", "unused", "--text", "hello.", "--speaker_prompt", str(tmp_path / "nope.wav"),
                  "--out", str(missing), "--stream", "--no_progress"], tts=tts)
    assert not missing.exists()
    # --emotion_text reaches the job (this model has no emotion model folder: the clear error, nothing written)
    with pytest.raises(pipeline.EmotionTextUnavailableError, match="emotion_text_model"):
        cli.main(["--model", "unused", "--text", "hello.", "--speaker_prompt", prompts["spk"], "--out", str(missing),
                  "--emotion_text", "I am so happy!", "--no_progress"], tts=tts)
    assert not missing.exists()

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(j) for j in [
        {"text": "hello world.", "speaker_prompt": prompts["spk"], "target_tokens": 8, "id": "a"},
        {"text": "hello again.", "speaker_prompt": prompts["spk"], "target_tokens": 10, "out": "b.wav"},
    ]) + "\n")
    cli.main(["--model", "unused", "--jobs", str(jobs), "--out_dir", str(tmp_path / "wavs"), "--no-do_sample",
              "--num_beams", "1", "--max_mel_tokens", "16", "--batch_size", "2", "--no_progress"], tts=tts)
    rep = json.loads((tmp_path / "wavs" / "report.json").read_text())
    assert [j["wav"].split("/")[-1] for j in rep["jobs"]] == ["a.wav", "b.wav"]
    assert sf.info(str(tmp_path / "wavs" / "b.wav")).frames == int(np.float32(10) * np.float32(1.72)) * 256


def test_bucketed_stages_equal_unpadded(tts, prompts):
    """Padding to buckets changes nothing: w2v-BERT on the padded prompt equals the unpadded prompt, the
    conditioning uses the exact prompt, and the bucketed S2M stage equals s2mel.synthesize_mel (infer_v2's
    B=1 path) at exact sizes."""
    from indextts2_jax import audio as audio_lib
    from indextts2_jax.models import s2mel, semantic_codec

    spk = tts.speaker_features(prompts["spk"])
    _, wav_16k = audio_lib.load_speaker_prompt(prompts["spk"])
    feats, mask = audio_lib.w2v_bert_features([wav_16k])
    exact = tts._w2v(tts.params, jnp.asarray(feats), jnp.asarray(mask))
    t = spk.length
    assert exact.shape[1] == t < spk.emb.shape[1]
    np.testing.assert_allclose(np.asarray(spk.emb)[:, :t], np.asarray(exact), atol=1e-5 * float(np.max(np.abs(exact))),
                               rtol=0)  # measured 2e-7 relative
    lens = jnp.array([t])
    # the conditioning encoders run on the exact prompt length (infer_v2's numbers), cached per prompt pair
    emo = tts.emotion_features(prompts["spk"])
    key = ("cond", pipeline._file_key("speaker", prompts["spk"]), pipeline._file_key("emotion", prompts["spk"]))
    tts._resolve_job({"speaker_prompt": prompts["spk"]}, {}, collections.defaultdict(float))  # fills the cache
    cached = tts.prompt_cache[key]
    ref_cond = tts._conditioning(tts.params, exact, lens, emo.emb[:, : emo.length], jnp.array([emo.length]))
    for a, b in zip(cached, ref_cond):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * float(np.max(np.abs(b))), rtol=0)

    cfg = tts.cfg
    rng = np.random.default_rng(1)
    m = 11
    g = int(cfg.s2mel.target_frames([m])[0])
    codes = rng.integers(0, cfg.codec.codebook_size, (1, m)).astype(np.int32)
    lat = rng.normal(size=(1, m, cfg.gpt.model_dim)).astype(np.float32)
    keys = jax.random.PRNGKey(5)[None]
    mb, gb = 32, pipeline.bucket_size(g, 32)
    p, pb = spk.mel_length, spk.ref_mel.shape[1]
    # the CFM length: the pipeline's packed bucket of prompt + target, and the loosest, pb + gb
    t_lens = sorted({max(pb, min(tts._frame_bucket(p + g, 64), pb + gb)), pb + gb})
    assert len(t_lens) == 2, (p, pb, g, gb)
    outs = [tts._s2m(tts.params, spk.S_ref, lens, spk.ref_mel, jnp.array([p]), jnp.asarray(spk.style),
                     jnp.asarray(np.pad(lat, ((0, 0), (0, mb - m), (0, 0)))),
                     jnp.asarray(np.pad(codes, ((0, 0), (0, mb - m)))), jnp.array([m]), jnp.array([g]), keys,
                     g_max=gb, t_len=t_len) for t_len in t_lens]
    noise = pipeline._frame_noise(keys, jnp.array([p]), p + g, cfg.s2mel.n_mels)
    code_emb = semantic_codec.codec_vq2emb(tts.params["codec"], jnp.asarray(codes), cfg.codec)
    ref, frames = s2mel.synthesize_mel(tts.params["s2mel"], cfg.s2mel, spk.S_ref[:, :t], spk.ref_mel[:, :p],
                                       spk.style, lat, code_emb, n_steps=tts.diffusion_steps, cfg_rate=tts.cfg_rate,
                                       noise=noise)
    assert int(frames[0]) == g
    for got in outs:
        got = np.asarray(got)
        assert np.all(got[:, g:] == 0)
        np.testing.assert_allclose(got[:, :g], np.asarray(ref), atol=1e-4 * float(np.max(np.abs(ref))), rtol=0)
