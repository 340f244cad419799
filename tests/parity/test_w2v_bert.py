"""Parity of the Flax w2v-BERT encoder with HF ``Wav2Vec2BertModel`` (fixtures ``w2v_bert/*``).

Tolerance: max relative error 1e-4 (float32). The reference ran eager float32 on CPU; we differ
only in summation order (einsum vs matmul, gathered distance scores), which after 4 layers of
LayerNorm-renormalised residual blocks stays around 1e-6.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from indextts2_jax.errors import CheckpointError
from indextts2_jax.models import w2v_bert
from tests.parity.cases import assert_close, cases, get_case, max_rel_err

TOL = 1e-4


@pytest.mark.parametrize("path", cases("w2v_bert"))
def test_w2v_bert_parity(path):
    case = get_case(path)
    config = w2v_bert.W2VBertConfig.from_official(case.config)
    params = w2v_bert.from_torch(case.params, config)
    model = w2v_bert.W2VBert(config)
    feats, mask = case.inputs["input_features"], case.inputs["attention_mask"]
    hidden = jax.jit(model.apply)({"params": params}, feats, mask)
    expected = case.outputs["hidden_states"]
    assert len(hidden) == expected.shape[0]
    for i, (h, e) in enumerate(zip(hidden, expected)):
        assert_close(h, e, TOL, f"hidden_states[{i}]")
    # padded frames of hidden_states[0] are exactly zero, as in HF
    pad = ~mask.astype(bool)
    assert np.all(np.asarray(hidden[0])[pad] == 0)

    # get_emb: only the layers up to the selected index are converted and run
    idx = config.get_emb_hidden_index
    short = w2v_bert.from_torch(case.params, config, num_layers=idx, ignore_unused_layers=True)
    assert sorted(short["encoder"]) == [f"layers_{i}" for i in range(idx)]
    feat = w2v_bert.w2v_bert_embed(
        short, feats, mask, case.inputs["semantic_mean"], case.inputs["semantic_var"], config
    )
    assert_close(feat, case.outputs["feat"], TOL, "feat")
    print(
        f"{case.id}: max rel err last={max_rel_err(hidden[-1], expected[-1]):.2e} "
        f"feat={max_rel_err(feat, case.outputs['feat']):.2e}"
    )


@pytest.mark.parametrize("path", cases("w2v_bert")[:1])
def test_w2v_bert_conversion_is_strict(path):
    case = get_case(path)
    config = w2v_bert.W2VBertConfig.from_official(case.config)
    # unused layers without the flag: refused
    with pytest.raises(CheckpointError, match="ignore_unused_layers"):
        w2v_bert.from_torch(case.params, config, num_layers=2)
    # unknown key: refused
    with pytest.raises(CheckpointError, match="unexpected"):
        w2v_bert.from_torch({**case.params, "encoder.extra.weight": np.zeros(3)}, config)
    # missing key: refused
    broken = {k: v for k, v in case.params.items() if "layers.0.ffn1.output_dense.bias" not in k}
    with pytest.raises(CheckpointError, match="no key"):
        w2v_bert.from_torch(broken, config)


def test_stats_loader(tmp_path):
    mean, var = np.arange(4, dtype=np.float32), np.full(4, 4.0, np.float32)
    np.savez(tmp_path / "s.npz", mean=mean, var=var)
    np.save(tmp_path / "s.npy", np.stack([mean, var]))
    for name in ("s.npz", "s.npy"):
        m, v = w2v_bert.load_w2v_stats(tmp_path / name)
        np.testing.assert_array_equal(m, mean)
        np.testing.assert_array_equal(v, var)
    out = w2v_bert.normalize_hidden(jnp.ones((1, 2, 4)), mean, var)
    np.testing.assert_allclose(np.asarray(out)[0, 0], (1 - mean) / 2)
    np.save(tmp_path / "bad.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(CheckpointError):
        w2v_bert.load_w2v_stats(tmp_path / "bad.npy")


def test_official_config_defaults():
    c = w2v_bert.W2VBertConfig()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (1024, 24, 16, 4096)
    assert c.num_distance_embeddings == 73 and c.head_dim == 64 and c.layers_for_embedding == 17
    # the official model's 17-of-24 layers: abstract params hold layers 0..16 only
    shapes = jax.eval_shape(
        w2v_bert.W2VBert(c, num_layers=17).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 4, 160), jnp.float32)
    )
    layers = shapes["params"]["encoder"]
    assert sorted(layers, key=lambda s: int(s.split("_")[1]))[-1] == "layers_16" and len(layers) == 17
