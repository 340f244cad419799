"""Converted checkpoints and inference bundles: CLIs, dtypes, integrity checks, exported functions."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import convert as convert_cli
from experiments import export as export_cli
from indextts2_jax.convert.official import (
    cast_params,
    component_configs,
    load_assets,
    load_converted,
    load_official_model_dir,
)
from indextts2_jax.errors import ModelDirectoryError
from indextts2_jax.export import BundleError, bundle_function, export_bundle, load_bundle, load_exported
from tests.test_convert_official import assert_trees_equal, tiny_official  # noqa: F401  (session fixture)

REPO = Path(__file__).resolve().parents[1]
HAVE_FLATBUFFERS = importlib.util.find_spec("flatbuffers") is not None


@pytest.fixture(scope="module")
def converted(tiny_official, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("converted") / "ckpt"
    assert convert_cli.main(["--model_dir", str(tiny_official.path), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def bundle_f32(converted, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "f32"
    # jax.export serialization needs the optional 'flatbuffers' package; without it the bundle has no functions
    fns = ["--serialize_functions", "--buckets", "bigvgan=12,s2mel_estimator=20", "--platforms", "cpu,cuda"]
    fns = fns if HAVE_FLATBUFFERS else []
    assert export_cli.main(["--checkpoint", str(converted), "--out", str(out), *fns]) == 0
    return out


def test_convert_cli_output_equals_written(tiny_official, converted, capsys):  # noqa: F811
    assets = load_converted(converted)
    for name, params in tiny_official.params.items():
        assert_trees_equal(assets.params[name], params, name)
    np.testing.assert_array_equal(assets.emo_matrix, tiny_official.emo_matrix)
    assert assets.bpe_model == (tiny_official.path / "bpe.model").read_bytes()
    meta = json.loads((converted / "converted.json").read_text())
    assert set(meta["components"]) == {"gpt", "s2mel", "semantic_codec", "w2v_bert", "campplus", "bigvgan"}


def test_export_cli_bundle_equals_checkpoint(tiny_official, bundle_f32, capsys):  # noqa: F811
    bundle = load_bundle(bundle_f32)
    assert bundle.extra["dtype"] == "float32"
    for name, params in tiny_official.params.items():
        assert_trees_equal(bundle.params[name], params, name)
    np.testing.assert_array_equal(bundle.w2v_stats["var"], tiny_official.w2v_stats["var"])
    np.testing.assert_array_equal(bundle.spk_matrix, tiny_official.spk_matrix)
    meta = json.loads((bundle_f32 / "bundle.json").read_text())
    assert set(meta["functions"]) == ({"bigvgan_T12", "s2mel_estimator_T20"} if HAVE_FLATBUFFERS else set())
    assert all(len(v["sha256"]) == 64 for v in meta["sha256"].values())


def test_bfloat16_bundle(tiny_official, converted, tmp_path):  # noqa: F811
    out = tmp_path / "bf16"
    assert export_cli.main(["--checkpoint", str(converted), "--out", str(out), "--dtype", "bfloat16"]) == 0
    bundle = load_bundle(out)
    assert bundle.extra["dtype"] == "bfloat16"
    for name, params in tiny_official.params.items():
        assert_trees_equal(bundle.params[name], cast_params(params, "bfloat16"), name)
    assert str(bundle.params["gpt"]["mel_head"]["kernel"].dtype) == "bfloat16"
    assert bundle.params["campplus"]["batch_stats"]["tdnn_bn"]["mean"].dtype == np.float32  # kept float32
    f32_bytes = sum(p.stat().st_size for p in (converted / "params").glob("*"))
    bf16_bytes = sum(p.stat().st_size for p in (out / "params").glob("*"))
    assert bf16_bytes < 0.6 * f32_bytes


def test_corrupt_truncated_missing_files_are_named(bundle_f32, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundle_f32, bad)
    gpt = bad / "params" / "gpt.msgpack"
    data = bytearray(gpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    gpt.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"params/gpt\.msgpack: sha256 mismatch"):
        load_bundle(bad)
    shutil.copy(bundle_f32 / "params" / "gpt.msgpack", gpt)
    codec = bad / "params" / "semantic_codec.msgpack"
    codec.write_bytes(codec.read_bytes()[:-100])
    (bad / "spk_matrix.npy").unlink()
    with pytest.raises(BundleError) as err:
        load_bundle(bad)
    assert "semantic_codec.msgpack" in str(err.value) and "truncated" in str(err.value)
    assert "spk_matrix.npy: missing" in str(err.value)
    # without the integrity check a truncated params file still fails clearly
    shutil.copy(bundle_f32 / "spk_matrix.npy", bad / "spk_matrix.npy")
    with pytest.raises(BundleError, match="semantic_codec"):
        load_bundle(bad, verify=False)


def test_emotion_text_model_travels_through_conversion_and_export(tiny_official, converted, bundle_f32,  # noqa: F811
                                                                  tmp_path):
    """The official directory's text-to-emotion folder (qwen_emo_path) is copied into the converted checkpoint
    and the bundle (hashed like every file); the loaded assets point at that copy; --no_emotion_text leaves it
    out; a corrupt copy is named."""
    from indextts2_jax.infer.emotion_text import QwenEmotion

    src = tiny_official.path / "qwen0.6bemo4-merge"
    assert load_official_model_dir(tiny_official.path).extra["emotion_text_dir"] == str(src.resolve())
    assert load_converted(converted).extra["emotion_text_dir"] == str(converted / "emotion_text")
    bundle = load_bundle(bundle_f32)
    folder = Path(bundle.extra["emotion_text_dir"])
    assert folder == bundle_f32 / "emotion_text"
    meta = json.loads((bundle_f32 / "bundle.json").read_text())
    assert "emotion_text/model.safetensors" in meta["sha256"] and meta["emotion_text"] == "emotion_text"
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in src.iterdir())
    text = "I am so happy today."
    assert QwenEmotion(folder).prompt_ids(text) == QwenEmotion(src).prompt_ids(text)
    plain = tmp_path / "plain"
    assert export_cli.main(["--checkpoint", str(converted), "--out", str(plain), "--no_emotion_text"]) == 0
    assert "emotion_text_dir" not in load_bundle(plain).extra and not (plain / "emotion_text").exists()
    # the standalone launcher finds the folder from each kind of model path
    from experiments import emotion_text as emo_cli

    for model in (src, tiny_official.path, converted, bundle_f32):
        assert emo_cli.emotion_folder(str(model)).resolve() in {src.resolve(), folder.resolve(),
                                                                 (converted / "emotion_text").resolve()}
    (row,) = emo_cli.main(["--model", str(bundle_f32), "--text", text, "--greedy", "--max_new_tokens", "6"])
    assert row["tokens"] <= 6 and len(row["vector"]) == 8
    with pytest.raises(SystemExit):
        emo_cli.main(["--model", str(plain), "--text", text])
    bad = tmp_path / "bad"
    shutil.copytree(bundle_f32, bad)
    weights = bad / "emotion_text" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(BundleError, match=r"emotion_text/model\.safetensors: .*truncated"):
        load_bundle(bad)


def test_load_bundle_imports_neither_torch_nor_training_code(bundle_f32):
    code = (
        "import sys\n"
        "from indextts2_jax.export import load_bundle\n"
        f"a = load_bundle({str(bundle_f32)!r})\n"
        "assert not a.missing_components()\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('indextts2_jax.train'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


@pytest.mark.skipif(not HAVE_FLATBUFFERS, reason="jax.export serialization needs the 'flatbuffers' package")
def test_serialized_functions_equal_jitted_originals(bundle_f32):
    from indextts2_jax.models.bigvgan import BigVGAN
    from indextts2_jax.models.s2mel import estimate

    bundle = load_bundle(bundle_f32)
    cc = component_configs(bundle.config)
    rng = np.random.default_rng(0)
    assert load_exported(bundle, "bigvgan_T12").platforms == ("cpu", "cuda")  # lowered for both, runs here on CPU

    mel = rng.normal(size=(1, 12, cc["bigvgan"].num_mels)).astype(np.float32)
    got = bundle_function(bundle, "bigvgan_T12")(bundle.params["bigvgan"], mel)
    want = jax.jit(lambda p, m: BigVGAN(cc["bigvgan"]).apply({"params": p}, m))(bundle.params["bigvgan"], mel)
    assert got.shape == (1, 12 * cc["bigvgan"].hop_length)
    # float32: the deserialized program is compiled on its own (its fusions may round differently);
    # 1e-5 is ~100 ulps for these |values| <= 1, far below any real difference
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)

    s = cc["s2mel"]
    t = 20
    x = rng.normal(size=(2, t, s.n_mels)).astype(np.float32)
    prompt = np.zeros_like(x)
    prompt[:, :5] = rng.normal(size=(2, 5, s.n_mels))
    x_lens = np.array([17, 17], np.int32)
    tt = np.array([0.3, 0.3], np.float32)
    style = rng.normal(size=(2, s.style_dim)).astype(np.float32)
    cond = rng.normal(size=(2, t, s.dit.content_dim)).astype(np.float32)
    est = bundle.params["s2mel"]["estimator"]
    got = bundle_function(bundle, "s2mel_estimator_T20")(est, x, prompt, x_lens, tt, style, cond)
    want = estimate(est, s, x, prompt, x_lens, tt, style, cond, per_item_padding=True)
    assert np.all(np.isfinite(np.asarray(got)))
    # same computation, separately compiled: equal to float32 rounding
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match="bigvgan_T12"):
        bundle_function(bundle, "bigvgan_T999")


def test_export_refuses_foreign_nonempty_dir_and_workdir(converted, tmp_path, capsys):
    assets = load_converted(converted)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        export_bundle(assets, tmp_path / "other")
    assert export_cli.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert "neither a training workdir" in capsys.readouterr().err  # workdir export: tests/test_export_workdir.py
    with pytest.raises(ValueError, match="dtype"):
        export_bundle(assets, tmp_path / "b", dtype="float16")


def test_load_assets_dispatches_on_what_the_folder_is(tiny_official, converted, bundle_f32, tmp_path):  # noqa: F811
    for path, kind in ((bundle_f32, "bundle:"), (converted, "converted:"), (tiny_official.path, "official:")):
        assets = load_assets(path)
        assert assets.source.startswith(kind)
        assert_trees_equal(assets.params["bigvgan"], tiny_official.params["bigvgan"], kind)
    assert str(load_assets(converted, dtype="bfloat16").params["s2mel"]["gpt_layer"]["layers_0"]["kernel"].dtype) \
        == "bfloat16"
    with pytest.raises(ModelDirectoryError, match="not an inference bundle"):
        load_assets(tmp_path)


def test_loaders_read_only_the_named_components(tiny_official, converted, bundle_f32, tmp_path):  # noqa: F811
    """``components`` (names, or a function of the config) keeps only those params, from every kind of folder;
    a converted checkpoint then does not read the other files at all; an absent name is an error."""
    from indextts2_jax.errors import MissingComponentsError
    from indextts2_jax.infer.configs import semantic_front_end

    def by_front_end(config):
        return ["w2v_bert", "semantic_codec"] if semantic_front_end(config) == "w2v_bert" else ["semantic_codec"]

    for path in (bundle_f32, converted, tiny_official.path):
        for components in (("campplus", "semantic_codec"), by_front_end):
            assets = load_assets(path, components=components)
            want = ["campplus", "semantic_codec"] if isinstance(components, tuple) else ["semantic_codec", "w2v_bert"]
            assert sorted(assets.params) == want, path
            for name in want:
                assert_trees_equal(assets.params[name], tiny_official.params[name], f"{path} {name}")
            assert assets.w2v_stats is not None and assets.bpe_model
        with pytest.raises(MissingComponentsError, match=r"lacks the components \['vocoder'\]"):
            load_assets(path, components=("gpt", "vocoder"))
    partial = tmp_path / "partial"
    shutil.copytree(converted, partial)
    meta = json.loads((partial / "converted.json").read_text())
    (partial / meta["components"]["gpt"]["file"]).unlink()  # the GPT's weights are gone: not needed here
    assert sorted(load_converted(partial, components=["bigvgan"]).params) == ["bigvgan"]
    with pytest.raises(FileNotFoundError):
        load_converted(partial)


def test_prepare_model_converts_an_official_dir_and_reads_no_weights(tiny_official, bundle_f32, tmp_path,  # noqa: F811
                                                                     monkeypatch):
    """Preprocessing's check before its workers start: an official dir is converted into its cache (the workers
    then read the cache); a bundle or checkpoint is checked without reading its weights."""
    import indextts2_jax.convert.official as official
    from data_pipeline.model_features import prepare_model

    copy = tmp_path / "IndexTTS-2"
    shutil.copytree(tiny_official.path, copy, ignore=shutil.ignore_patterns("jax_cache"))
    prepare_model(copy)
    assert len(list((copy / "jax_cache").glob("*/converted.json"))) == 1
    read = []
    monkeypatch.setattr(official, "read_params", lambda *a, **k: read.append(a) or {})
    monkeypatch.setattr("indextts2_jax.export.read_params", lambda *a, **k: read.append(a) or {})
    prepare_model(copy)
    prepare_model(bundle_f32)
    assert read == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_model(tmp_path / "nowhere")
