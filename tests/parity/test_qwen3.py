"""Qwen3 (QwenEmotion's model) against HF transformers: tests/data/qwen3_tiny, made by
tests/data/make_qwen3_fixture.py with ``Qwen3ForCausalLM`` (random weights, float32, CPU).

Tolerance: the logits of a 2-layer float32 model agree to ~1e-6 relative to their scale (float32 rounding
in a different op order); 1e-4 of the largest |logit| leaves room for other BLAS builds. Greedy ids must be
identical (the reference's top-2 logits are far apart compared with that error: checked below).
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from indextts2_jax.errors import ConfigError
from indextts2_jax.infer.emotion_text import QwenEmotion, SamplingConfig, generate_ids
from indextts2_jax.models import qwen3

FOLDER = Path(__file__).resolve().parents[1] / "data" / "qwen3_tiny"


@pytest.fixture(scope="module")
def ref():
    data = np.load(FOLDER / "reference.npz")
    return {k: data[k] for k in data.files} | json.loads((FOLDER / "reference.json").read_text())


@pytest.fixture(scope="module")
def emo():
    return QwenEmotion(FOLDER, max_new_tokens=24)


def test_chat_prompt_ids_equal_hf_apply_chat_template(emo, ref):
    from indextts2_jax.infer.emotion_text import render_chat_prompt

    text = ref["messages"][1]["content"]
    assert render_chat_prompt(emo.template, text) == ref["prompt_text"]
    assert emo.prompt_ids(text) == ref["prompt_ids"].tolist()


def test_prefill_logits_match_hf(emo, ref):
    ids = jnp.asarray(ref["prompt_ids"][None])
    cache = emo.model.init_cache(1, ids.shape[1])
    logits, _ = emo.model.apply({"params": emo.params}, ids, cache, 0)
    want = ref["logits"]
    err = np.abs(np.asarray(logits[0]) - want).max() / np.abs(want).max()
    assert err < 1e-4, err


def test_padded_prompt_and_cached_decode_give_hf_greedy_ids(emo, ref):
    """The jitted generation: the prompt padded to its bucket (39 -> 64 slots), prefill, 24 one-token steps
    on the KV cache; no eos id (as the reference), so it runs all 24."""
    greedy = SamplingConfig(do_sample=False, eos_ids=())
    ids = ref["prompt_ids"]
    padded = np.zeros((1, 64), np.int32)
    padded[0, : ids.size] = ids
    out, count, done = generate_ids(emo.model, emo.params, jnp.asarray(padded), jnp.int32(ids.size), greedy, 24,
                                    jax.random.PRNGKey(0))
    assert int(count) == 24 and not bool(done)
    np.testing.assert_array_equal(np.asarray(out), ref["greedy_ids"])
    top2 = np.sort(ref["logits"][-1])[-2:]
    assert top2[1] - top2[0] > 1e-3  # the first pick is not a near-tie


def test_sampling_is_seeded_and_stops_at_eos(emo):
    a = emo.generate("I am so happy today.", seed=3)
    b = emo.generate("I am so happy today.", seed=3)
    assert a == b
    ids, finished = a
    assert 0 < len(ids) <= 24
    if finished:
        assert ids[-1] in emo.sampling.eos_ids and not set(ids[:-1]) & set(emo.sampling.eos_ids)
    result = emo("I am so happy today.", seed=3)
    again = emo("I am so happy today.", seed=3)
    assert again.cached and not result.cached and again.scores == result.scores and again.reply == result.reply
    assert list(result.scores) == ["happy", "angry", "sad", "afraid", "disgusted", "melancholic", "surprised",
                                   "calm"]
    assert len(result.vector) == 8 and all(0.0 <= v <= 1.2 for v in result.vector)


def test_folder_errors(tmp_path, emo):
    from indextts2_jax.errors import ModelDirectoryError

    with pytest.raises(ModelDirectoryError, match="not found"):
        QwenEmotion(tmp_path / "absent")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="qwen3"):
        QwenEmotion(tmp_path)
    with pytest.raises(ConfigError, match="empty"):
        emo("   ")
    with pytest.raises(ConfigError, match="characters"):
        emo("x" * 5000)


def test_checkpoint_of_another_config_is_named():
    from indextts2_jax.convert.state_dict import load_safetensors

    state = load_safetensors(FOLDER / "model.safetensors")
    cfg = qwen3.Qwen3Config.from_hf(json.loads((FOLDER / "config.json").read_text()))
    with pytest.raises(ConfigError, match="model.layers.0.mlp.gate_proj.weight has shape"):
        qwen3.from_hf(state, qwen3.Qwen3Config(**{**cfg.__dict__, "intermediate_size": 128}))
    with pytest.raises(ConfigError, match="does not use"):
        qwen3.from_hf(state, qwen3.Qwen3Config(**{**cfg.__dict__, "num_hidden_layers": 1}))


def test_bfloat16_checkpoint_loads_as_float32(tmp_path, ref):
    """Qwen3 releases store bfloat16 tensors (the official emotion model too, or float16): they load through
    safetensors' NumPy reader (ml_dtypes' bfloat16) and run in the asked dtype. Tolerance: the weights lost
    their low 16 bits (relative 2^-8), so the logits move by ~1e-2 of their scale."""
    import shutil

    from safetensors.numpy import save_file

    from indextts2_jax.convert.state_dict import load_safetensors

    folder = tmp_path / "bf16"
    shutil.copytree(FOLDER, folder)
    state = load_safetensors(FOLDER / "model.safetensors")
    save_file({k: v.astype(jnp.bfloat16) for k, v in state.items()}, folder / "model.safetensors")
    assert load_safetensors(folder / "model.safetensors")["model.norm.weight"].dtype == jnp.bfloat16
    emo = QwenEmotion(folder)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(emo.params))
    ids = jnp.asarray(ref["prompt_ids"][None])
    logits, _ = emo.model.apply({"params": emo.params}, ids, emo.model.init_cache(1, ids.shape[1]), 0)
    err = np.abs(np.asarray(logits[0]) - ref["logits"]).max() / np.abs(ref["logits"]).max()
    assert 0 < err < 3e-2, err
