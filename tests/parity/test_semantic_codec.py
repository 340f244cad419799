"""Parity of the Flax semantic codec (RepCodec + factorized VQ) with the official one
(fixtures ``semantic_codec/*``).

Codes must be exactly equal (argmax; the fixture's smallest top-1/top-2 cosine gap is 0.005).
Float outputs: max relative error 1e-5 (float32; two small conv/linear stacks, differences are
summation order only, measured ~1e-7).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from indextts2_jax.errors import CheckpointError, ConfigError
from indextts2_jax.models import semantic_codec as sc
from tests.parity.cases import assert_close, cases, get_case, max_rel_err
from tests.subproc import cpu_env

TOL = 1e-5


@pytest.mark.parametrize("path", cases("semantic_codec"))
def test_semantic_codec_parity(path):
    case = get_case(path)
    config = sc.SemanticCodecConfig.from_official(case.config)
    params = sc.from_torch(case.params, config)
    model = sc.SemanticCodec(config)
    features = case.inputs["features"]
    out = jax.jit(lambda p, x: model.apply({"params": p}, x, method=sc.SemanticCodec.quantize_details))(
        params, features
    )
    np.testing.assert_array_equal(np.asarray(out["codes"]), case.outputs["codes"])
    assert_close(out["quantized"], case.outputs["quantized"], TOL, "quantized")
    assert_close(out["encoder_out"], case.outputs["encoder_out"].transpose(0, 2, 1), TOL, "encoder_out")
    assert_close(out["z_e"], case.outputs["projected_latents"].transpose(0, 2, 1), TOL, "z_e")

    # bfloat16 encoder (accelerators): encoder output to bf16 precision, quantizer still float32
    bf16 = sc.SemanticCodec(config, dtype=jnp.bfloat16).apply(
        {"params": params}, features, method=sc.SemanticCodec.quantize_details
    )
    assert bf16["encoder_out"].dtype == jnp.bfloat16 and bf16["z_e"].dtype == jnp.float32
    assert_close(bf16["encoder_out"], case.outputs["encoder_out"].transpose(0, 2, 1), 3e-2, "encoder_out (bf16)")

    codes, quantized = sc.codec_quantize(params, features, config)
    np.testing.assert_array_equal(np.asarray(codes), case.outputs["codes"])
    assert_close(quantized, case.outputs["quantized"], TOL, "codec_quantize")

    # vq2emb: the fixture's codes are in the official (n_quantizers=1, B, T) layout
    emb = sc.codec_vq2emb(params, case.inputs["vq2emb_codes"][0], config)
    assert_close(emb, case.outputs["vq2emb"], TOL, "vq2emb")
    emb_codes = sc.codec_vq2emb(params, case.outputs["codes"], config)
    assert_close(emb_codes, case.outputs["vq2emb_of_codes"], TOL, "vq2emb_of_codes")
    print(
        f"{case.id}: quantized {max_rel_err(quantized, case.outputs['quantized']):.2e}, "
        f"vq2emb {max_rel_err(emb, case.outputs['vq2emb']):.2e}"
    )


@pytest.mark.parametrize("path", cases("semantic_codec"))
def test_semantic_codec_batching_and_decoder(path):
    """vq2emb embeds every batch row (unlike the official B=1-only call); a padded batch row's
    codes equal the row alone; the training forward (with the converted decoder) runs."""
    case = get_case(path)
    config = sc.SemanticCodecConfig.from_official(case.config)
    params = sc.from_torch(case.params, config)
    x = case.inputs["features"][0]
    t = x.shape[0]
    short = t - 7
    batch = np.stack([x, np.concatenate([x[:short], np.full((7, x.shape[1]), 5.0, np.float32)])])
    mask = np.arange(t)[None] < np.array([[t], [short]])
    codes, quantized = sc.codec_quantize(params, batch, config, mask)
    codes = np.asarray(codes)
    np.testing.assert_array_equal(codes[0], case.outputs["codes"][0])
    alone, alone_q = sc.codec_quantize(params, x[None, :short], config)
    np.testing.assert_array_equal(codes[1, :short], np.asarray(alone)[0])
    assert_close(np.asarray(quantized)[1, :short], alone_q[0], 1e-5, "padded row vs alone")

    emb = np.asarray(sc.codec_vq2emb(params, codes, config))
    assert emb.shape == (2, t, config.hidden_size)
    np.testing.assert_allclose(emb[0], case.outputs["vq2emb_of_codes"][0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(emb[1, :short], np.asarray(sc.codec_vq2emb(params, alone, config))[0], atol=1e-5)

    out = jax.jit(sc.SemanticCodec(config).apply)({"params": params}, batch, mask)
    assert out["reconstruction"].shape == batch.shape
    assert np.isfinite(float(out["commit_loss"])) and float(out["codebook_loss"]) > 0
    np.testing.assert_allclose(float(out["commit_loss"]), 0.15 * float(out["codebook_loss"]), rtol=1e-5)


@pytest.mark.parametrize("path", cases("semantic_codec"))
def test_semantic_codec_conversion_is_strict(path):
    case = get_case(path)
    config = sc.SemanticCodecConfig.from_official(case.config)
    with pytest.raises(CheckpointError, match="unexpected"):
        sc.from_torch({**case.params, "quantizer.quantizers.1.codebook.weight": np.zeros((4, 8))}, config)
    broken = {k: v for k, v in case.params.items() if k != "encoder.0.convnext.1.gamma"}
    with pytest.raises(CheckpointError):
        sc.from_torch(broken, config)
    # without the decoder: its keys are ignored on purpose, and the tree has no decoder
    no_dec = sc.SemanticCodecConfig.from_official({**case.config, "with_decoder": False})
    assert "decoder" not in sc.from_torch(case.params, no_dec)
    with pytest.raises(ConfigError):
        sc.SemanticCodecConfig.from_official({**case.config, "num_quantizers": 2})


def test_official_defaults_param_count():
    c = sc.SemanticCodecConfig()
    shapes = nn.unbox(
        jax.eval_shape(sc.SemanticCodec(c).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 4, 1024), jnp.float32))
    )["params"]
    assert shapes["quantizer"]["codebook"].shape == (8192, 8)
    assert shapes["encoder"]["backbone"]["embed"]["kernel"].shape == (7, 1024, 384)
    assert len([k for k in shapes["encoder"]["backbone"] if k.startswith("convnext_")]) == 12


def test_encode_to_codes_batched_equals_one_by_one():
    """Waveforms -> codes in padded, bucketed batches equal the unpadded one-at-a-time path
    (extractor -> w2v-BERT layer k -> normalise -> quantize), using the fixtures' tiny models
    (both have width 32)."""
    from indextts2_jax import audio
    from indextts2_jax.models import w2v_bert

    w2v_case = get_case(cases("w2v_bert")[0].values[0])
    codec_case = get_case(cases("semantic_codec")[0].values[0])
    w2v_cfg = w2v_bert.W2VBertConfig.from_official(w2v_case.config)
    codec_cfg = sc.SemanticCodecConfig.from_official(codec_case.config)
    w2v_params = w2v_bert.from_torch(w2v_case.params, w2v_cfg)
    codec_params = sc.from_torch(codec_case.params, codec_cfg)
    stats = (w2v_case.inputs["semantic_mean"], w2v_case.inputs["semantic_var"])
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (16000, 9000, 12345)]

    codes = sc.encode_to_codes(waves, w2v_params, codec_params, stats, w2v_cfg, codec_cfg, batch_size=2)
    assert [c.shape for c in codes] == [(49,), (27,), (37,)]  # 75 fbank frames: the unpaired last one is dropped
    for wave, got in zip(waves, codes):
        feats, mask = audio.w2v_bert_features([wave])
        n = int(mask.sum())
        hidden = w2v_bert.w2v_bert_embed(w2v_params, feats, mask, *stats, w2v_cfg)[:, :n]
        want, _ = sc.codec_quantize(codec_params, hidden, codec_cfg)
        np.testing.assert_array_equal(got, np.asarray(want)[0])


def test_w2v_bert_and_codec_sharded_equal_single_device():
    """On 4 simulated CPU devices (mesh data=1, fsdp=2, tensor=2) with the project's logical-axis
    rules, params placed from their logical names and activations constrained give the same
    hidden states and exactly the same codes as one device."""
    import os
    import subprocess
    import sys
    import textwrap

    w2v_path = cases("w2v_bert")[0].values[0]
    codec_path = cases("semantic_codec")[0].values[0]
    get_case(w2v_path), get_case(codec_path)  # skip (or fail in CI) without fixtures
    script = textwrap.dedent(
        f"""
        import jax, numpy as np, flax.linen as nn
        from indextts2_jax import sharding
        from indextts2_jax.models import w2v_bert, semantic_codec as sc
        from tests.parity.cases import load_case
        assert len(jax.devices()) == 4
        from configs.common import LOGICAL_AXIS_RULES as rules
        mesh = sharding.make_mesh({{"data": 1, "fsdp": 2, "tensor": 2}})
        w, c = load_case({w2v_path!r}), load_case({codec_path!r})
        wcfg = w2v_bert.W2VBertConfig.from_official(w.config)
        ccfg = sc.SemanticCodecConfig.from_official(c.config)
        wp, cp = w2v_bert.from_torch(w.params, wcfg), sc.from_torch(c.params, ccfg)
        wm, cm = w2v_bert.W2VBert(wcfg), sc.SemanticCodec(ccfg)
        x, m = w.inputs["input_features"], w.inputs["attention_mask"]
        def place(model, params, *args):
            boxed = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
            return jax.device_put(params, sharding.logical_shardings(boxed, mesh, rules))
        wp_s = place(wm, wp, x[:, :4])
        cp_s = place(cm, cp, c.inputs["features"][:, :4])
        assert cp_s["quantizer"]["codebook"].sharding.spec[0] == "tensor"
        w_apply = jax.jit(lambda p, x, m: wm.apply({{"params": p}}, x, m, return_all=False))
        c_apply = jax.jit(lambda p, h: cm.apply({{"params": p}}, h, method=sc.SemanticCodec.quantize))
        h1 = np.asarray(w_apply(wp, x, m)); codes1, q1 = c_apply(cp, c.inputs["features"])
        with sharding.use_mesh(mesh, rules):
            h4 = np.asarray(w_apply(wp_s, x, m)); codes4, q4 = c_apply(cp_s, c.inputs["features"])
        assert np.abs(h4 - h1).max() <= 1e-5 * np.abs(h1).max(), np.abs(h4 - h1).max()
        np.testing.assert_array_equal(np.asarray(codes4), np.asarray(codes1))
        np.testing.assert_array_equal(np.asarray(codes4), c.outputs["codes"])
        assert np.abs(np.asarray(q4) - np.asarray(q1)).max() <= 1e-5 * np.abs(np.asarray(q1)).max()
        print("OK")
        """
    )
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = cpu_env(4)
    res = subprocess.run([sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-4000:]
