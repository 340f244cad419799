"""Official model directory loading: resolution, strict conversion, the conversion cache, errors.

Uses a random-weight official-format directory at tiny sizes (``convert.tiny_official``), written
with torch (skipped without it). Params must come back bit-identical to what was written.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from indextts2_jax.convert import official
from indextts2_jax.convert.official import (
    check_official_model_dir,
    component_configs,
    load_official_model_dir,
)
from indextts2_jax.errors import CheckpointError, ModelDirectoryError

QWEN3_TINY = Path(__file__).parent / "data" / "qwen3_tiny"


@pytest.fixture(scope="session")
def tiny_official(tmp_path_factory):
    """A tiny random-weight official IndexTTS-2 directory (built once per test session), with the tiny Qwen3
    folder of tests/data/qwen3_tiny as its text-to-emotion model (config.yaml's qwen_emo_path)."""
    pytest.importorskip("torch")
    from indextts2_jax.convert.tiny_official import make_tiny_official_model_dir

    model = make_tiny_official_model_dir(tmp_path_factory.mktemp("official") / "IndexTTS-2", seed=0)
    qwen = model.path / "qwen0.6bemo4-merge"
    qwen.mkdir()
    for f in QWEN3_TINY.iterdir():
        if not f.name.startswith("reference."):  # the HF files only
            shutil.copyfile(f, qwen / f.name)
    return model


def assert_trees_equal(a, b, what=""):
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb, f"{what}: trees differ"
    for (path, x), y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, f"{what}{jax.tree_util.keystr(path)}"
        assert np.array_equal(x, y), f"{what}{jax.tree_util.keystr(path)} differs"


def link_copy(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    """A copy of the directory tree of ``src`` whose files are symlinks (cheap), leaving out ``skip`` paths."""
    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        if rel.parts and rel.parts[0] == "jax_cache":
            continue
        for f in files:
            r = rel / f
            if any(str(r).startswith(s) for s in skip):
                continue
            (dst / rel).mkdir(parents=True, exist_ok=True)
            os.symlink(src / r, dst / r)
    return dst


def test_round_trip_of_inverse_mappings(tiny_official):
    """to_torch_state_dict inverses: from_torch(to_torch(params)) gives the params back exactly."""
    from indextts2_jax.convert import tiny_official as tiny
    from indextts2_jax.models import campplus, gpt, semantic_codec, w2v_bert

    cc = component_configs(tiny_official.config)
    p = tiny_official.params
    assert_trees_equal(gpt.from_torch(tiny.gpt_to_torch(p["gpt"], cc["gpt"]), cc["gpt"]), p["gpt"], "gpt")
    assert_trees_equal(campplus.from_torch(tiny.campplus_to_torch(p["campplus"], cc["campplus"]), cc["campplus"]),
                       p["campplus"], "campplus")
    n = cc["w2v_bert"].layers_for_embedding
    back = w2v_bert.from_torch(tiny.w2v_bert_to_torch(p["w2v_bert"], cc["w2v_bert"]), cc["w2v_bert"], num_layers=n)
    assert_trees_equal(back, p["w2v_bert"], "w2v_bert")
    # weight-normed layers (codec FVQ projections) are folded again: equal to float32 rounding
    back = semantic_codec.from_torch(tiny.semantic_codec_to_torch(p["semantic_codec"], cc["semantic_codec"]),
                                     cc["semantic_codec"])
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(p["semantic_codec"])):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_check_resolves_official_layout(tiny_official):
    files = check_official_model_dir(tiny_official.path)
    root = tiny_official.path
    assert files["gpt"] == root / "gpt.pth" and files["s2mel"] == root / "s2mel.pth"
    assert files["w2v_bert"] == root / "hf_cache/w2v-bert-2.0/model.safetensors"
    assert files["semantic_codec"] == root / "hf_cache/semantic_codec_model.safetensors"
    assert files["campplus"] == root / "hf_cache/campplus_cn_common.bin"
    assert files["bigvgan"] == root / "hf_cache/bigvgan/bigvgan_generator.pt"
    assert files["spk_matrix"] == root / "feat1.pt" and files["emo_matrix"] == root / "feat2.pt"


def test_load_equals_written_then_cache_without_torch(tiny_official, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    before = dict(official.STATS)
    assets = load_official_model_dir(tiny_official.path, cache_dir=cache)
    assert official.STATS["torch_reads"] > before["torch_reads"]
    assert official.STATS["conversions"] - before["conversions"] == 6
    for name, params in tiny_official.params.items():
        assert_trees_equal(assets.params[name], params, name)
    np.testing.assert_array_equal(assets.w2v_stats["mean"], tiny_official.w2v_stats["mean"])
    np.testing.assert_array_equal(assets.w2v_stats["var"], tiny_official.w2v_stats["var"])
    np.testing.assert_array_equal(assets.spk_matrix, tiny_official.spk_matrix)
    np.testing.assert_array_equal(assets.emo_matrix, tiny_official.emo_matrix)
    assert assets.bpe_model == (tiny_official.path / "bpe.model").read_bytes()
    assert assets.config.model.gpt.model_dim == tiny_official.config.model.gpt.model_dim
    assert assets.config.aux.campplus.embedding_size == 64  # read off the checkpoint's shapes
    assert assets.config.aux.w2v_bert.get_emb_hidden_index == 1  # from hf_cache/w2v-bert-2.0/config.json
    assert assets.missing_components() == []

    # second load: from the cache, with torch made unimportable and the .pth reader disabled
    monkeypatch.setitem(sys.modules, "torch", None)

    def no_torch(path):
        raise AssertionError(f"torch file read on a cached load: {path}")

    monkeypatch.setattr(official, "_read_torch", no_torch)
    mid = dict(official.STATS)
    again = load_official_model_dir(tiny_official.path, cache_dir=cache)
    assert official.STATS["cache_hits"] == mid["cache_hits"] + 1
    assert official.STATS["conversions"] == mid["conversions"]
    assert official.STATS["torch_reads"] == mid["torch_reads"]
    for name, params in tiny_official.params.items():
        assert_trees_equal(again.params[name], params, name)
    assert again.config.to_dict() == assets.config.to_dict()

    bf16 = load_official_model_dir(tiny_official.path, cache_dir=cache, dtype="bfloat16")
    assert str(bf16.params["gpt"]["mel_head"]["kernel"].dtype) == "bfloat16"
    assert bf16.params["campplus"]["batch_stats"]["tdnn_bn"]["var"].dtype == np.float32


def test_changed_file_invalidates_cache(tiny_official, tmp_path):
    model = link_copy(tiny_official.path, tmp_path / "model", skip=("feat2.pt",))
    shutil.copy(tiny_official.path / "feat2.pt", model / "feat2.pt")
    cache = tmp_path / "cache"
    load_official_model_dir(model, cache_dir=cache)
    hits = official.STATS["cache_hits"]
    load_official_model_dir(model, cache_dir=cache)
    assert official.STATS["cache_hits"] == hits + 1
    st = os.stat(model / "feat2.pt")
    os.utime(model / "feat2.pt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    conv = official.STATS["conversions"]
    load_official_model_dir(model, cache_dir=cache)
    assert official.STATS["conversions"] == conv + 6  # converted again
    assert len([d for d in cache.iterdir() if not d.name.startswith(".")]) == 1  # the stale entry was removed


def test_missing_files_are_all_listed(tiny_official, tmp_path):
    model = link_copy(tiny_official.path, tmp_path / "model", skip=("gpt.pth", "hf_cache/bigvgan", "feat1.pt"))
    with pytest.raises(ModelDirectoryError) as err:
        load_official_model_dir(model, cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert "gpt.pth" in msg and "feat1.pt" in msg and "BigVGAN" in msg and "bigvgan_generator.pt" in msg
    assert str(model / "hf_cache" / "bigvgan") in msg  # where it looked
    assert "s2mel.pth" not in msg and "w2v-BERT" not in msg
    with pytest.raises(ModelDirectoryError, match="not found"):
        check_official_model_dir(tmp_path / "nowhere")


def test_aux_overrides_and_hf_snapshot_layout(tiny_official, tmp_path):
    model = link_copy(tiny_official.path, tmp_path / "model", skip=("hf_cache",))
    hf = model / "hf_cache"
    snap = hf / "models--nvidia--bigvgan_v2_22khz_80band_256x" / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    for f in ("config.json", "bigvgan_generator.pt"):
        os.symlink(tiny_official.path / "hf_cache/bigvgan" / f, snap / f)
    camp_snap = hf / "models--funasr--campplus" / "snapshots" / "fff"
    camp_snap.mkdir(parents=True)
    os.symlink(tiny_official.path / "hf_cache/campplus_cn_common.bin", camp_snap / "campplus_cn_common.bin")
    aux = tiny_official.path / "hf_cache"
    files = check_official_model_dir(model, w2v_bert=aux / "w2v-bert-2.0",
                                     semantic_codec=aux / "semantic_codec_model.safetensors")
    assert files["bigvgan"] == snap / "bigvgan_generator.pt"
    assert files["campplus"] == camp_snap / "campplus_cn_common.bin"
    assert files["w2v_bert"] == aux / "w2v-bert-2.0" / "model.safetensors"
    with pytest.raises(ModelDirectoryError, match="w2v-BERT"):
        check_official_model_dir(model)


def _with_config(tiny_official, tmp_path, edit) -> Path:
    model = link_copy(tiny_official.path, tmp_path / "model", skip=("config.yaml",))
    raw = yaml.safe_load((tiny_official.path / "config.yaml").read_text())
    edit(raw)
    (model / "config.yaml").write_text(yaml.safe_dump(raw))
    return model


def test_config_checkpoint_mismatch_names_component(tiny_official, tmp_path):
    model = _with_config(tiny_official, tmp_path / "a", lambda r: r["gpt"].update(layers=3))
    with pytest.raises(CheckpointError, match=r"^gpt \(.*gpt\.pth\).*h\.2"):
        load_official_model_dir(model, use_cache=False)
    model = _with_config(tiny_official, tmp_path / "b", lambda r: r["s2mel"]["wavenet"].update(num_layers=3))
    with pytest.raises(CheckpointError, match=r"^s2mel \("):
        load_official_model_dir(model, use_cache=False)
    model = _with_config(tiny_official, tmp_path / "c", lambda r: r["semantic_codec"].update(codebook_size=300))
    with pytest.raises(CheckpointError, match=r"^semantic_codec \(.*codebook"):
        load_official_model_dir(model, use_cache=False)


# (fixture component, case, model module, config class, inverse, key prefix the official file adds)
_OFFICIAL_LAYOUTS = [
    ("gpt_unified_voice", "infer_v2_path", "gpt", "UnifiedVoiceConfig", "gpt_to_torch"),
    ("bigvgan", "bigvgan_weightnorm", "bigvgan", "BigVGANConfig", "bigvgan_to_torch"),
    ("campplus", "campplus", "campplus", "CAMPPlusConfig", "campplus_to_torch"),
    ("semantic_codec", "quantize", "semantic_codec", "SemanticCodecConfig", "semantic_codec_to_torch"),
    ("w2v_bert", "batch_padded", "w2v_bert", "W2VBertConfig", "w2v_bert_to_torch"),
    ("s2mel", "pipeline", "s2mel", "S2MelConfig", "s2mel_to_torch"),
]


def _flat(obj, prefix=""):
    out = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize("layout", _OFFICIAL_LAYOUTS, ids=[f"{c}/{n}" for c, n, *_ in _OFFICIAL_LAYOUTS])
def test_inverse_writes_the_official_keys_and_shapes(layout):
    """The tiny writer's state dicts have exactly the keys and shapes of the official code's (fixture) ones;
    tensors that are not weight-normed come back with the official values."""
    import importlib

    from indextts2_jax.convert import tiny_official as tiny
    from tests.parity.cases import fixtures_root, get_case

    component, case, module, config_cls, inverse = layout
    c = get_case(str(fixtures_root() / component / f"{case}.npz"))
    mod = importlib.import_module(f"indextts2_jax.models.{module}")
    config = getattr(mod, config_cls).from_official(c.config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # s2mel: "ignoring entries not used by MyModel" (the fixture has more)
        params = mod.from_torch(c.params, config)
    kwargs = {}
    if module == "s2mel":
        kwargs = dict(content_codebook_size=c.config["DiT"]["content_codebook_size"],
                      regulator_codebook_size=c.config["length_regulator"]["content_codebook_size"])
    written = _flat(getattr(tiny, inverse)(params, config, **kwargs))
    if module == "s2mel":  # fixture keys are MyModel.state_dict() names ("models.<entry>."), the file's "net.<entry>."
        written = {"models." + k[len("net."):]: v for k, v in written.items()}
    if module == "bigvgan":
        written = {k[len("generator."):]: v for k, v in written.items()}
    official_keys = set(c.params)
    extra = set(written) - official_keys
    if module == "gpt":  # HF GPT-2 causal-mask buffers: written like older transformers did, ignored on load
        extra = {k for k in extra if not k.endswith(".attn.bias")}
    missing = official_keys - set(written)
    assert not extra and not missing, (sorted(extra)[:10], sorted(missing)[:10])
    for k in official_keys:
        assert np.shape(written[k]) == np.shape(c.params[k]), k
        weight_normed = k.endswith(("weight_g", "weight_v"))
        filler = any(s in k for s in ("x_embedder", "cond_embedder", "content_mask_embedder", "length_regulator.embed",
                                      "mask_token", "num_batches_tracked", "skip_in_linear", "pos_enc.pe",
                                      "masked_spec_embed"))
        if k.endswith("filter"):  # anti-aliasing filters: recomputed in float64, the official ones in float32
            np.testing.assert_allclose(written[k], c.params[k], rtol=0, atol=1e-7, err_msg=k)
        elif not weight_normed and not filler:
            np.testing.assert_array_equal(written[k], np.asarray(c.params[k], written[k].dtype), err_msg=k)


def test_loaded_config_is_the_written_one(tiny_official, tmp_path):
    assets = load_official_model_dir(tiny_official.path, cache_dir=tmp_path / "cache")
    assert assets.config.to_dict() == tiny_official.config.to_dict()
