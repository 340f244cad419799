"""Training workdirs -> inference bundle -> synthesis with the demo's stacked-mel front-end (indextts2_jax/export.py).

The four stage workdirs (codec, gpt, s2mel, vocoder) are written here in the trainer's layout (``config.json`` =
the resolved demo config of the stage, shrunk; ``checkpoints/<step>/state`` = an Orbax ``TrainState`` through the
trainer's own CheckpointManager) with random params of each stage's training layout (codec with its decoder, GPT
with the stage-2 speaker classifier, S2M, vocoder generator in weight-norm form plus discriminators). Running the
real stages would cost minutes; the stage tests cover the training itself.
"""

from __future__ import annotations

import json
import shutil
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from experiments import export as export_cli
from indextts2_jax.errors import ConfigError
from indextts2_jax.export import STAGES, WorkdirExportError, assets_from_workdirs, load_bundle
from indextts2_jax.infer.random_assets import _fill, tiny_bpe

# random weights rarely emit the stop token: segments run to max_mel_tokens (the pipeline warns)
pytestmark = pytest.mark.filterwarnings("ignore:.*no stop token:RuntimeWarning")

SAMPLING = dict(do_sample=True, num_beams=1, top_k=30, top_p=0.9, temperature=1.0, max_mel_tokens=24)
TEXT = "hello world, this is a test."


def stage_config(stage: str, bpe_path):
    """The demo config of ``stage``, shrunk for compile time (the same shrink for every stage)."""
    from configs import demo

    c = demo.get_config(f"stage={stage}")
    c.model.gpt.layers = 1
    c.model.gpt.max_mel_tokens = 80
    c.model.semantic_codec.vocos_num_layers = 1
    c.model.s2mel.DiT.depth = 3
    c.aux.bigvgan.update(dict(upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8], upsample_initial_channel=32,
                              resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]]))
    c.checkpoint.async_save = False
    c.data.bpe_model = str(bpe_path)
    c.model.dataset.bpe_model = str(bpe_path)
    return c


def stage_params(stage: str, c, rng: np.random.Generator):
    """Random params in the layout the stage's training task checkpoints."""
    from indextts2_jax.models import bigvgan, s2mel, semantic_codec
    from indextts2_jax.models import gpt as gpt_lib

    key = jax.random.PRNGKey(0)
    if stage == "codec":
        from indextts2_jax.train.tasks.codec import codec_config_from

        return _fill(jax.eval_shape(lambda k: semantic_codec.init_params(codec_config_from(c), k), key), rng)
    if stage == "gpt":
        from indextts2_jax.train.tasks.gpt import model_config_from

        params = _fill(gpt_lib.abstract_params(model_config_from(c)), rng)
        params["speaker_classifier"] = {"hidden": {"kernel": np.ones((64, 8), np.float32)}}  # stage 2: dropped
        return params
    if stage == "s2mel":
        import dataclasses

        cfg = s2mel.S2MelConfig.from_official(c.model.s2mel.to_dict())
        cfg = dataclasses.replace(cfg, gpt_latent_dim=int(c.model.gpt.model_dim),
                                  gpt_layer_dims=cfg.gpt_layer_dims[:-1] + (cfg.length_regulator.in_channels,))
        return _fill(s2mel.abstract_params(cfg), rng)
    cfg = bigvgan.BigVGANConfig.from_official(c.aux.bigvgan.to_dict())
    generator = _fill(bigvgan.abstract_params(cfg, weight_norm=True), rng)  # trained with weight norm: folded
    return {"generator": generator, "discriminator": {"mpd": {"kernel": np.zeros((3, 4), np.float32)}}}


def write_stage_workdir(workdir, config, params, step: int) -> None:
    """A trainer workdir: config.json and an Orbax checkpoint of TrainState at ``step`` (trainer's manager)."""
    import orbax.checkpoint as ocp

    from indextts2_jax.train.trainer import TrainState, _checkpoint_manager

    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str))
    state = TrainState(step=jnp.asarray(step, jnp.int32), params=jax.tree.map(jnp.asarray, params),
                       opt_state={"count": jnp.asarray(step, jnp.int32)})
    mngr = _checkpoint_manager(config, str(workdir / "checkpoints"))
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
    mngr.wait_until_finished()
    mngr.close()


def _demo_campplus_stub(config):
    """Seeded CAMPPlus variables of ``config.aux.campplus`` (filled by leaf name: compiling its init costs ~1 min)."""
    from indextts2_jax.models import campplus

    cfg = campplus.CAMPPlusConfig.from_official(config.aux.campplus.to_dict())
    return _fill(campplus.abstract_variables(cfg), np.random.default_rng(1234))


@pytest.fixture(scope="module")
def campplus_source():
    """The S2M stage's ``demo_campplus_params``; a seeded stand-in until that task module lands."""
    try:
        from indextts2_jax.train.tasks.s2mel import demo_campplus_params  # noqa: F401
        yield "task"
        return
    except ImportError:
        pass
    mp = pytest.MonkeyPatch()
    stub = types.ModuleType("indextts2_jax.train.tasks.s2mel")
    stub.demo_campplus_params = _demo_campplus_stub
    mp.setitem(sys.modules, "indextts2_jax.train.tasks.s2mel", stub)
    yield "stub"
    mp.undo()


@pytest.fixture(scope="module")
def recipe_root(tmp_path_factory, campplus_source):
    root = tmp_path_factory.mktemp("runs")
    bpe = root / "bpe.model"
    bpe.write_bytes(tiny_bpe())
    rng = np.random.default_rng(0)
    for i, stage in enumerate(STAGES):
        c = stage_config(stage, bpe)
        write_stage_workdir(root / "stages" / stage, c, stage_params(stage, c, rng), step=5 + i)
    return root


@pytest.fixture(scope="module")
def bundle_dir(recipe_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "demo"
    assert export_cli.main(["--workdir", str(recipe_root), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def tts(bundle_dir):
    from indextts2_jax.infer.pipeline import IndexTTS2

    return IndexTTS2.from_pretrained(bundle_dir, diffusion_steps=2)


@pytest.fixture(scope="module")
def prompt(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompt") / "voice.wav"
    t = np.arange(int(1.2 * 22050)) / 22050
    wave = 0.2 * np.sin(2 * np.pi * 200 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    wave += 0.02 * np.random.default_rng(0).normal(size=t.size)
    sf.write(str(path), wave.astype(np.float32), 22050)
    return str(path)


def test_bundle_from_workdirs_holds_the_stages(recipe_root, bundle_dir):
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    assert set(meta["components"]) == {"gpt", "s2mel", "semantic_codec", "campplus", "bigvgan"}
    assert set(meta["files"]) == {"bpe_model"}  # no w2v-BERT stats, no emotion matrices
    assert meta["config"]["inference"]["semantic_features"] == "mel"
    assert meta["config"]["extensions"]["gpt"] == {"condition_input_size": 160, "emotion_dim": 64,
                                                  "duration_control": False}
    for i, stage in enumerate(STAGES):
        assert f"{stage}=" in meta["source"] and f"@{5 + i}" in meta["source"]
    bundle = load_bundle(bundle_dir)
    assert bundle.missing_components() == [] and bundle.w2v_stats is None and bundle.spk_matrix is None
    assert "speaker_classifier" not in bundle.params["gpt"]
    assert "decoder" in bundle.params["semantic_codec"]  # the codec as trained
    leaves = jax.tree_util.tree_leaves_with_path(bundle.params["bigvgan"])
    assert not any("gain" in jax.tree_util.keystr(p) for p, _ in leaves)  # weight norm folded
    # the params are the checkpoints' (equal leaf by leaf through the stage workdirs given one by one)
    again = assets_from_workdirs([recipe_root / "stages" / s for s in STAGES])
    for name in ("gpt", "semantic_codec", "s2mel"):
        for (pa, a), (pb, b) in zip(jax.tree_util.tree_leaves_with_path(again.params[name]),
                                    jax.tree_util.tree_leaves_with_path(bundle.params[name])):
            assert pa == pb and np.array_equal(np.asarray(a), np.asarray(b)), (name, jax.tree_util.keystr(pa))
    # the S2M stage trained without a GPT (s2mel.gpt_checkpoint ""): its untrained gpt_layer adds nothing
    last = bundle.params["s2mel"]["gpt_layer"]["layers_2"]
    assert not np.any(last["kernel"]) and not np.any(last["bias"]) and np.any(bundle.params["s2mel"]["gpt_layer"][
        "layers_0"]["kernel"])


def test_s2mel_trained_on_this_gpt_keeps_its_gpt_layer(recipe_root, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(recipe_root / "stages", root)
    cfg = json.loads((root / "s2mel" / "config.json").read_text())
    cfg["s2mel"]["gpt_checkpoint"] = str(root / "gpt")
    (root / "s2mel" / "config.json").write_text(json.dumps(cfg))
    assets = assets_from_workdirs([root], bpe_model=recipe_root / "bpe.model")
    assert np.any(assets.params["s2mel"]["gpt_layer"]["layers_2"]["kernel"]) and assets.extra["s2mel_gpt_latent"]


def test_synthesis_from_the_bundle_mel_front_end(tts, prompt):
    assert tts.semantic_features == "mel"
    assert tts.code_rate == pytest.approx(22050 / 256 / 2)
    wave, sr, report = tts.synthesize(TEXT, prompt, duration_seconds=0.4, seed=3, **SAMPLING)
    codes = int(round(0.4 * 22050 / 256 / 2))  # 17 codes
    (seg,) = report["segments"]
    assert seg["codes"] == codes and seg["mel_frames"] == 2 * codes  # one code = two mel frames
    assert sr == 22050 and wave.shape == (2 * codes * 256,)
    assert np.all(np.isfinite(wave)) and np.std(wave) > 0
    feats = tts.speaker_features(prompt)
    assert feats.emb.shape[2] == 160 and feats.length == (int(1.2 * 22050) // 256) // 2
    # the same seed gives the same audio; another seed other audio (sampling)
    again, _, _ = tts.synthesize(TEXT, prompt, duration_seconds=0.4, seed=3, **SAMPLING)
    np.testing.assert_array_equal(again, wave)
    other, _, _ = tts.synthesize(TEXT, prompt, duration_seconds=0.4, seed=4, **SAMPLING)
    assert other.shape == wave.shape and not np.array_equal(other, wave)


def test_stacked_mel_front_end_is_the_preprocess_feature(tts, prompt):
    from data_pipeline.preprocess import PreprocessOptions, _Context, _feature_mel_stacked
    from indextts2_jax import audio as audio_lib
    from indextts2_jax.infer.pipeline import stacked_mel_features

    wav_22k, _ = audio_lib.load_speaker_prompt(prompt)
    mel_cfg = tts.assets.config.model.s2mel.preprocess_params.to_dict()
    got = stacked_mel_features(wav_22k, tts.assets.config.model.s2mel.preprocess_params)
    ref = _feature_mel_stacked(_Context(None, wav_22k, PreprocessOptions(mel_config=mel_cfg), None))["mel_stacked"]
    np.testing.assert_array_equal(got, ref)
    mel = np.asarray(audio_lib.mel_spectrogram(wav_22k[None], tts.cfg.mel))[0]
    np.testing.assert_allclose(got[:, :80], mel[0: 2 * got.shape[0]: 2], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[:, 80:], mel[1: 2 * got.shape[0]: 2], rtol=0, atol=1e-5)


def test_emotion_vector_needs_matrices_and_code_budget_fits_the_gpt(tts, prompt):
    with pytest.raises(ConfigError, match="emotion matrices"):
        tts.synthesize(TEXT, prompt, emotion_vector=[0.5, 0, 0, 0, 0, 0, 0, 0], **SAMPLING)
    # the default 1500 codes per segment would overrun this GPT's 80-code position table: capped
    assert tts._decode_config({}).max_new_tokens == 80 + 1 == tts.cfg.gpt.mel_positions - 2
    with pytest.raises(ConfigError, match="mel positions"):
        tts.synthesize(TEXT, prompt, **dict(SAMPLING, max_mel_tokens=1500))


def test_missing_untrained_and_disagreeing_stages_are_listed(recipe_root, tmp_path, capsys):
    stages = recipe_root / "stages"
    only_three = tmp_path / "three"
    for stage in ("codec", "gpt", "s2mel"):
        shutil.copytree(stages / stage, only_three / stage)
    assert export_cli.main(["--workdir", str(only_three), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "vocoder stage (bigvgan): no training workdir found" in err
    assert not (tmp_path / "b").exists()

    # an untrained vocoder (config only) and a GPT trained against another codec size
    (only_three / "vocoder").mkdir()
    shutil.copy(stages / "vocoder" / "config.json", only_three / "vocoder" / "config.json")
    cfg = json.loads((only_three / "gpt" / "config.json").read_text())
    cfg["model"]["semantic_codec"]["codebook_size"] = 128
    (only_three / "gpt" / "config.json").write_text(json.dumps(cfg))
    # and an S2M trained on the latent of another GPT run
    cfg = json.loads((only_three / "s2mel" / "config.json").read_text())
    cfg["s2mel"]["gpt_checkpoint"] = str(tmp_path)
    (only_three / "s2mel" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WorkdirExportError) as e:
        assets_from_workdirs([only_three])
    msg = str(e.value)
    assert "3 problems" in msg and "has no checkpoint" in msg and "vocoder" in msg
    assert "gpt stage config disagrees with the codec stage on model.semantic_codec" in msg
    assert "trained on the latent of the GPT in" in msg

    with pytest.raises(WorkdirExportError, match="neither a training workdir"):
        assets_from_workdirs([tmp_path / "nothing"])
    assert export_cli.main(["--out", str(tmp_path / "b")]) == 2
    assert "give either --checkpoint" in capsys.readouterr().err


def test_w2v_bert_stages_take_w2v_bert_campplus_and_matrices_from_a_base_model(tmp_path):
    """Stages trained on real (1024-d w2v-BERT) features: the untrained parts come from ``base``."""
    from indextts2_jax.infer.assets import ModelAssets
    from indextts2_jax.infer.pipeline import IndexTTS2
    from indextts2_jax.infer.random_assets import tiny_config
    from indextts2_jax.models import campplus

    config = tiny_config(minimal=True)  # 1024-d semantic features: w2v-BERT, codec, length regulator
    camp = campplus.CAMPPlusConfig.from_official(config.aux.campplus.to_dict())
    rng = np.random.default_rng(1)
    rows = int(sum(config.model.emo_num))
    base = ModelAssets(  # a converted official model's untrained-by-us parts (w2v-BERT: a stand-in tree)
        config=config, params={"w2v_bert": {"feature_projection": {"bias": np.zeros(4, np.float32)}},
                               "campplus": _fill(campplus.abstract_variables(camp), rng)},
        w2v_stats={"mean": np.zeros(1024, np.float32), "var": np.ones(1024, np.float32)},
        spk_matrix=rng.normal(size=(rows, camp.embedding_size)).astype(np.float32),
        emo_matrix=rng.normal(size=(rows, int(config.model.gpt.model_dim))).astype(np.float32),
        bpe_model=tiny_bpe(), source="base")
    bpe = tmp_path / "bpe.model"
    bpe.write_bytes(base.bpe_model)
    for stage in STAGES:
        c = stage_config(stage, bpe)
        c.demo.semantic_features = "w2v_bert"
        c.model, c.aux = base.config.model, base.config.aux
        c.gpt.condition_input_size = 1024
        write_stage_workdir(tmp_path / stage, c, stage_params(stage, c, rng), step=2)
    with pytest.raises(WorkdirExportError, match="trained on w2v-BERT features.*pass base="):
        assets_from_workdirs([tmp_path])
    assets = assets_from_workdirs([tmp_path], base=base)
    assert assets.config.inference.semantic_features == "w2v_bert" and assets.missing_components() == []
    assert assets.params["w2v_bert"] is base.params["w2v_bert"] and assets.w2v_stats is base.w2v_stats
    assert assets.params["campplus"]["params"] is base.params["campplus"]["params"]
    np.testing.assert_array_equal(assets.emo_matrix, base.emo_matrix)
    tts = IndexTTS2(assets)
    assert tts.semantic_features == "w2v_bert" and tts.code_rate == pytest.approx(22050 / 256 / 1.72)
    assert tts.cfg.gpt.condition_input_size == 1024

