"""A random-weight IndexTTS-2 model directory in the official file formats, at tiny sizes.

``make_tiny_official_model_dir(path)`` writes what ``IndexTeam/IndexTTS-2`` plus its ``hf_cache``
hold (reference §3.1-3.2), with random weights in the shapes of our models' params (drawn in NumPy
from each model's abstract init, ``jax.eval_shape``) turned into the official state-dict keys and layouts::

    config.yaml  gpt.pth  s2mel.pth  bpe.model  wav2vec2bert_stats.pt  feat1.pt  feat2.pt
    hf_cache/w2v-bert-2.0/{config.json, model.safetensors}
    hf_cache/semantic_codec_model.safetensors
    hf_cache/campplus_cn_common.bin
    hf_cache/bigvgan/{config.json, bigvgan_generator.pt}

It exists for tests (conversion, export, the synthesis pipeline) and needs torch to write the
``.pth``/``.pt`` files. The ``*_to_torch`` functions are the inverses of each model's ``from_torch``
(weight-normed layers are written as ``weight_g``/``weight_v`` like the official checkpoints; tensors
the official loaders carry but our models ignore, e.g. ``x_embedder`` or the anti-aliasing filter
buffers, are written too, so the directory exercises the converters' ignore rules).

Sizes (``tiny_config()``): ``configs/demo.py``'s model widths, spelled out (BigVGAN: 3 up-sampling
stages 8*8*4 with one AMP block each, hop 256 like the official model, so it compiles fast), except
where the official wiring fixes a width:
w2v-BERT ``hidden_size`` = 1024 (the GPT conditioning encoders read 1024-d features), the semantic
codec ``hidden_size`` = 1024 (it quantizes those features) and the length regulator's
``in_channels`` = 1024 (``gpt_layer`` ends at 1024). ``load_official_model_dir`` takes the S2M
``gpt_layer`` input width from ``gpt.model_dim`` (the official code hard-codes 1280 = model_dim).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from indextts2_jax.errors import CheckpointError

W2V_FEATURES = 1024  # fixed by the official wiring (see module docstring)


# ---------------------------------------------------------------------------------------------
# writing official keys
# ---------------------------------------------------------------------------------------------
def _f32(x) -> np.ndarray:
    return np.array(x, dtype=np.float32, order="C")  # (np.ascontiguousarray would turn 0-d into 1-d)


class _Writer:
    """Writes official ``prefix.name`` keys into ``store`` (the inverse of ``StateDict``'s helpers)."""

    def __init__(self, store: dict, prefix: str = ""):
        self.store = store
        self.prefix = prefix

    def sub(self, name) -> "_Writer":
        return _Writer(self.store, f"{self.prefix}{name}.")

    def put(self, name: str, value) -> None:
        key = self.prefix + name
        if key in self.store:
            raise KeyError(f"duplicate key {key}")
        arr = np.asarray(value)
        self.store[key] = np.array(arr, order="C") if arr.dtype.kind in "iub" else _f32(arr)

    def weight(self, w, weight_norm: bool = False, name: str = "weight") -> None:
        """A weight, plain or as torch ``weight_norm(dim=0)`` (g = per-row norm, v = w)."""
        w = _f32(w)
        if not weight_norm:
            self.put(name, w)
            return
        norm = np.sqrt(np.sum(w.astype(np.float64) ** 2, axis=tuple(range(1, w.ndim)), keepdims=True))
        self.put(name + "_g", norm.astype(np.float32))
        self.put(name + "_v", w)

    def bias(self, p: dict) -> None:
        if "bias" in p:
            self.put("bias", p["bias"])

    def linear(self, p: dict, weight_norm: bool = False) -> None:
        self.weight(np.asarray(p["kernel"]).T, weight_norm)
        self.bias(p)

    def hf_conv1d(self, p: dict) -> None:
        self.put("weight", p["kernel"])
        self.bias(p)

    def conv1d(self, p: dict, weight_norm: bool = False) -> None:
        self.weight(np.asarray(p["kernel"]).transpose(2, 1, 0), weight_norm)
        self.bias(p)

    def conv1d_as_dense(self, p: dict, weight_norm: bool = False) -> None:
        self.weight(np.asarray(p["kernel"]).T[:, :, None], weight_norm)
        self.bias(p)

    def conv2d(self, p: dict) -> None:
        self.weight(np.asarray(p["kernel"]).transpose(3, 2, 0, 1))
        self.bias(p)

    def conv_transpose1d(self, p: dict, weight_norm: bool = False) -> None:
        self.weight(np.asarray(p["kernel"]).transpose(1, 2, 0), weight_norm)
        self.bias(p)

    def layer_norm(self, p: dict, weight: str = "weight", bias: str | None = "bias") -> None:
        self.put(weight, p["scale"])
        if bias is not None:
            self.put(bias, p["bias"])

    def embedding(self, p: dict, name: str = "weight") -> None:
        self.put(name, p["embedding"])

    def batch_norm(self, params: dict | None, stats: dict) -> None:
        if params:
            self.put("weight", params["scale"])
            self.put("bias", params["bias"])
        self.put("running_mean", stats["mean"])
        self.put("running_var", stats["var"])
        self.put("num_batches_tracked", np.zeros((), np.int64))


def _np_tree(tree):
    return jax.tree.map(lambda a: np.asarray(a), tree)


# ---------------------------------------------------------------------------------------------
# per component: params -> official state dict
# ---------------------------------------------------------------------------------------------
def _conformer_to_torch(w: _Writer, p: dict, config) -> None:
    from indextts2_jax.nn.conformer import sinusoid_table

    c, f = config.output_size, config.subsampled_features
    emb = w.sub("embed")
    emb.sub("conv.0").conv2d(p["embed"]["conv"])
    out_kernel = np.asarray(p["embed"]["out"]["kernel"])  # (f * c_in, c_out), frequency-major rows
    emb.sub("out.0").put("weight", out_kernel.reshape(f, c, c).transpose(2, 1, 0).reshape(c, c * f))
    emb.sub("out.0").put("bias", p["embed"]["out"]["bias"])
    emb.put("pos_enc.pe", sinusoid_table(5000, c)[None])
    w.sub("after_norm").layer_norm(p["after_norm"])
    for i in range(config.num_blocks):
        bp = p[f"encoders_{i}"]
        blk = w.sub(f"encoders.{i}")
        att, a = blk.sub("self_attn"), bp["self_attn"]
        for n in ("linear_q", "linear_k", "linear_v", "linear_out", "linear_pos"):
            att.sub(n).linear(a[n])
        att.put("pos_bias_u", a["pos_bias_u"])
        att.put("pos_bias_v", a["pos_bias_v"])
        conv, cp = blk.sub("conv_module"), bp["conv_module"]
        conv.sub("pointwise_conv1").conv1d_as_dense(cp["pointwise_conv1"])
        conv.sub("depthwise_conv").conv1d(cp["depthwise_conv"])
        conv.sub("norm").layer_norm(cp["norm"])
        conv.sub("pointwise_conv2").conv1d_as_dense(cp["pointwise_conv2"])
        blk.sub("feed_forward.w_1").linear(bp["feed_forward"]["w_1"])
        blk.sub("feed_forward.w_2").linear(bp["feed_forward"]["w_2"])
        for n in ("norm_mha", "norm_conv", "norm_ff", "norm_final"):
            blk.sub(n).layer_norm(bp[n])


def _perceiver_to_torch(w: _Writer, p: dict, config) -> None:
    w.put("latents", p["latents"])
    if "proj_context" in p:
        w.sub("proj_context").linear(p["proj_context"])
    for i in range(config.depth):
        attn, ff = p[f"layers_{i}_attn"], p[f"layers_{i}_ff"]
        a = w.sub(f"layers.{i}.0")
        for n in ("to_q", "to_kv", "to_out"):
            a.put(f"{n}.weight", np.asarray(attn[n]["kernel"]).T)
        w.sub(f"layers.{i}.1.0").linear(ff["proj_in"])
        w.sub(f"layers.{i}.1.2").linear(ff["proj_out"])
    w.put("norm.gamma", p["norm_gamma"])


def gpt_to_torch(params: dict, config) -> dict[str, np.ndarray]:
    """UnifiedVoice params -> a flat official ``gpt.pth`` state dict (inverse of ``models.gpt.from_torch``)."""
    p = _np_tree(params)
    sd: dict[str, np.ndarray] = {}
    w = _Writer(sd)
    _conformer_to_torch(w.sub("conditioning_encoder"), p["conditioning_encoder"], config.condition_module.conformer())
    _perceiver_to_torch(w.sub("perceiver_encoder"), p["perceiver_encoder"], config.speaker_perceiver())
    _conformer_to_torch(w.sub("emo_conditioning_encoder"), p["emo_conditioning_encoder"],
                        config.emo_condition_module.conformer())
    _perceiver_to_torch(w.sub("emo_perceiver_encoder"), p["emo_perceiver_encoder"], config.emotion_perceiver())
    for n in ("emovec_layer", "emo_layer", "text_head", "mel_head"):
        w.sub(n).linear(p[n])
    for n in ("speed_emb", "text_embedding", "mel_embedding"):
        w.sub(n).embedding(p[n])
    w.sub("text_pos_embedding.emb").embedding(p["text_pos_embedding"])
    w.sub("mel_pos_embedding.emb").embedding(p["mel_pos_embedding"])
    w.sub("final_norm").layer_norm(p["final_norm"])
    g = w.sub("gpt")
    g.sub("ln_f").layer_norm(p["gpt"]["ln_f"])
    for i in range(config.layers):
        bp, blk = p["gpt"][f"h_{i}"], g.sub(f"h.{i}")
        blk.sub("ln_1").layer_norm(bp["ln_1"])
        blk.sub("ln_2").layer_norm(bp["ln_2"])
        blk.sub("attn.c_attn").hf_conv1d(bp["attn"]["c_attn"])
        blk.sub("attn.c_proj").hf_conv1d(bp["attn"]["c_proj"])
        blk.sub("mlp.c_fc").hf_conv1d(bp["mlp"]["c_fc"])
        blk.sub("mlp.c_proj").hf_conv1d(bp["mlp"]["c_proj"])
        n = 34 + config.max_text_tokens + config.max_mel_tokens  # HF causal-mask buffer (ignored on load)
        blk.put("attn.bias", np.tril(np.ones((min(n, 64), min(n, 64)), bool))[None, None])
    return sd


def _adaln_to_torch(w: _Writer, p: dict) -> None:
    w.sub("project_layer").linear(p["project_layer"])
    w.put("norm.weight", p["norm"]["weight"])


def _timestep_to_torch(w: _Writer, p: dict) -> None:
    w.put("freqs", p["freqs"])
    w.sub("mlp.0").linear(p["mlp_0"])
    w.sub("mlp.2").linear(p["mlp_2"])


def s2mel_to_torch(params: dict, config, rng: np.random.Generator | None = None,
                   content_codebook_size: int = 1024, regulator_codebook_size: int = 2048) -> dict:
    """S2M params -> the official ``s2mel.pth`` object ``{"net": {"cfm", "length_regulator", "gpt_layer"}}``.

    Tensors the official MyModel owns but inference never reads (``x_embedder``, ``cond_embedder``,
    ``content_mask_embedder``, ``input_pos``, unused ``skip_in_linear``, the regulator's discrete
    ``embedding``/``mask_token``) are filled from ``rng``; ``content_codebook_size`` /
    ``regulator_codebook_size`` are config.yaml's ``DiT.content_codebook_size`` /
    ``length_regulator.content_codebook_size`` (the sizes of those unused tables).
    """
    rng = rng or np.random.default_rng(0)
    p = _np_tree(params)
    d, n_mels = config.dit.hidden_dim, config.n_mels
    lr_sd: dict[str, np.ndarray] = {}
    lw = _Writer(lr_sd)
    lp = p["length_regulator"]
    lw.sub("content_in_proj").linear(lp["content_in_proj"])
    n = len(config.length_regulator.sampling_ratios)
    for s in range(n):
        lw.sub(f"model.{3 * s}").conv1d(lp[f"model_{3 * s}"])
        lw.sub(f"model.{3 * s + 1}").layer_norm(lp[f"model_{3 * s + 1}"])
    lw.sub(f"model.{3 * n}").conv1d(lp[f"model_{3 * n}"])
    ch = config.length_regulator.channels
    lw.put("embedding.weight", rng.normal(size=(regulator_codebook_size, ch)))
    lw.put("mask_token", rng.normal(size=(1, ch)))

    gl_sd: dict[str, np.ndarray] = {}
    for i in range(len(config.gpt_layer_dims)):
        _Writer(gl_sd).sub(i).linear(p["gpt_layer"][f"layers_{i}"])

    cfm: dict[str, np.ndarray] = {}
    e = _Writer(cfm).sub("estimator")
    ep = p["estimator"]
    _timestep_to_torch(e.sub("t_embedder"), ep["t_embedder"])
    _timestep_to_torch(e.sub("t_embedder2"), ep["t_embedder2"])
    for name in ("cond_projection", "cond_x_merge_linear", "conv1", "res_projection"):
        e.sub(name).linear(ep[name])
    if "skip_linear" in ep:
        e.sub("skip_linear").linear(ep["skip_linear"])
    else:
        e.sub("skip_linear").put("weight", rng.normal(size=(d, d + n_mels)))
        e.sub("skip_linear").put("bias", np.zeros(d))
    tr = e.sub("transformer")
    for i in range(config.dit.depth):
        lp_, ls = ep["transformer"][f"layers_{i}"], tr.sub(f"layers.{i}")
        ls.put("attention.wqkv.weight", np.asarray(lp_["attention"]["wqkv"]["kernel"]).T)
        ls.put("attention.wo.weight", np.asarray(lp_["attention"]["wo"]["kernel"]).T)
        for wname in ("w1", "w2", "w3"):
            ls.put(f"feed_forward.{wname}.weight", np.asarray(lp_["feed_forward"][wname]["kernel"]).T)
        _adaln_to_torch(ls.sub("attention_norm"), lp_["attention_norm"])
        _adaln_to_torch(ls.sub("ffn_norm"), lp_["ffn_norm"])
        if "skip_in_linear" in lp_:
            ls.sub("skip_in_linear").linear(lp_["skip_in_linear"])
        else:  # every official block owns one; only the U-ViT receiving layers use it
            ls.sub("skip_in_linear").put("weight", rng.normal(size=(d, 2 * d)) * 0.02)
            ls.sub("skip_in_linear").put("bias", np.zeros(d))
    _adaln_to_torch(tr.sub("norm"), ep["transformer"]["norm"])
    wn, wp = e.sub("wavenet"), ep["wavenet"]
    wn.sub("cond_layer.conv.conv").conv1d_as_dense(wp["cond_layer"], weight_norm=True)
    for i in range(config.wavenet.num_layers):
        wn.sub(f"in_layers.{i}.conv.conv").conv1d(wp[f"in_layers_{i}"], weight_norm=True)
        wn.sub(f"res_skip_layers.{i}.conv.conv").conv1d_as_dense(wp[f"res_skip_layers_{i}"], weight_norm=True)
    fl = e.sub("final_layer")
    fl.sub("adaLN_modulation.1").linear(ep["final_layer"]["adaLN_modulation_1"])
    fl.sub("linear").linear(ep["final_layer"]["linear"], weight_norm=True)
    e.sub("conv2").conv1d_as_dense(ep["conv2"])
    # owned by the official DiT, never called at inference
    e.sub("x_embedder").weight(rng.normal(size=(d, n_mels)) * 0.02, weight_norm=True)
    e.sub("x_embedder").put("bias", np.zeros(d))
    e.put("cond_embedder.weight", rng.normal(size=(content_codebook_size, d)))
    e.put("content_mask_embedder.weight", np.zeros((1, d)))
    e.put("input_pos", np.arange(config.dit.max_length, dtype=np.int64))
    return {"net": {"cfm": cfm, "length_regulator": lr_sd, "gpt_layer": gl_sd}}


def _vocos_to_torch(w: _Writer, p: dict, config) -> None:
    bb, bp = w.sub(0), p["backbone"]
    bb.sub("embed").conv1d(bp["embed"])
    bb.sub("norm").layer_norm(bp["norm"])
    bb.sub("final_layer_norm").layer_norm(bp["final_layer_norm"])
    for i in range(config.vocos_num_layers):
        blk, cp = bb.sub("convnext").sub(i), bp[f"convnext_{i}"]
        blk.sub("dwconv").conv1d(cp["dwconv"])
        blk.sub("norm").layer_norm(cp["norm"])
        blk.sub("pwconv1").linear(cp["pwconv1"])
        blk.sub("pwconv2").linear(cp["pwconv2"])
        blk.put("gamma", cp["gamma"])
    w.sub(1).linear(p["projection"])


def semantic_codec_to_torch(params: dict, config) -> dict[str, np.ndarray]:
    """RepCodec params -> the MaskGCT ``semantic_codec/model.safetensors`` state dict."""
    p = _np_tree(params)
    sd: dict[str, np.ndarray] = {}
    w = _Writer(sd)
    _vocos_to_torch(w.sub("encoder"), p["encoder"], config)
    if "decoder" in p:
        _vocos_to_torch(w.sub("decoder"), p["decoder"], config)
    q, qp = w.sub("quantizer.quantizers.0"), p["quantizer"]
    q.sub("in_project").conv1d_as_dense(qp["in_project"], weight_norm=True)
    q.sub("out_project").conv1d_as_dense(qp["out_project"], weight_norm=True)
    q.put("codebook.weight", qp["codebook"])
    return sd


def w2v_bert_to_torch(params: dict, config) -> dict[str, np.ndarray]:
    """W2VBert params (any number of layers) -> HF ``Wav2Vec2BertModel`` state dict."""
    p = _np_tree(params)
    sd: dict[str, np.ndarray] = {}
    w = _Writer(sd)
    fp = w.sub("feature_projection")
    fp.sub("layer_norm").layer_norm(p["feature_projection"]["layer_norm"])
    fp.sub("projection").linear(p["feature_projection"]["projection"])
    w.put("masked_spec_embed", np.zeros(config.hidden_size))
    for name, lp in sorted(p["encoder"].items(), key=lambda kv: int(kv[0].split("_")[1])):
        lw = w.sub(f"encoder.layers.{int(name.split('_')[1])}")
        for f in ("ffn1", "ffn2"):
            lw.sub(f"{f}_layer_norm").layer_norm(lp[f"{f}_layer_norm"])
            lw.sub(f"{f}.intermediate_dense").linear(lp[f]["intermediate_dense"])
            lw.sub(f"{f}.output_dense").linear(lp[f]["output_dense"])
        lw.sub("self_attn_layer_norm").layer_norm(lp["self_attn_layer_norm"])
        att = lw.sub("self_attn")
        for n in ("linear_q", "linear_k", "linear_v", "linear_out"):
            att.sub(n).linear(lp["self_attn"][n])
        att.sub("distance_embedding").embedding(lp["self_attn"]["distance_embedding"])
        conv, cp = lw.sub("conv_module"), lp["conv_module"]
        conv.sub("layer_norm").layer_norm(cp["layer_norm"])
        conv.sub("pointwise_conv1").conv1d_as_dense(cp["pointwise_conv1"])
        conv.sub("depthwise_conv").conv1d(cp["depthwise_conv"])
        conv.sub("depthwise_layer_norm").layer_norm(cp["depthwise_layer_norm"])
        conv.sub("pointwise_conv2").conv1d_as_dense(cp["pointwise_conv2"])
        lw.sub("final_layer_norm").layer_norm(lp["final_layer_norm"])
    return sd


def campplus_to_torch(variables: dict, config) -> dict[str, np.ndarray]:
    """CAMPPlus ``{"params", "batch_stats"}`` -> the official ``campplus_cn_common.bin`` state dict."""
    from indextts2_jax.models.campplus import BLOCK_LAYERS

    params, stats = _np_tree(variables["params"]), _np_tree(variables["batch_stats"])
    sd: dict[str, np.ndarray] = {}
    w = _Writer(sd)
    head, hp, hs = w.sub("head"), params["head"], stats["head"]
    head.sub("conv1").conv2d(hp["conv1"]["conv"])
    head.sub("bn1").batch_norm(hp["bn1"], hs["bn1"])
    for layer in (1, 2):
        for block in (0, 1):
            bw, bp, bs = head.sub(f"layer{layer}.{block}"), hp[f"layer{layer}_{block}"], hs[f"layer{layer}_{block}"]
            bw.sub("conv1").conv2d(bp["conv1"]["conv"])
            bw.sub("bn1").batch_norm(bp["bn1"], bs["bn1"])
            bw.sub("conv2").conv2d(bp["conv2"]["conv"])
            bw.sub("bn2").batch_norm(bp["bn2"], bs["bn2"])
            if "shortcut_conv" in bp:
                bw.sub("shortcut.0").conv2d(bp["shortcut_conv"]["conv"])
                bw.sub("shortcut.1").batch_norm(bp["shortcut_bn"], bs["shortcut_bn"])
    head.sub("conv2").conv2d(hp["conv2"]["conv"])
    head.sub("bn2").batch_norm(hp["bn2"], hs["bn2"])
    xv = w.sub("xvector")
    xv.sub("tdnn.linear").conv1d(params["tdnn_linear"])
    xv.sub("tdnn.nonlinear.batchnorm").batch_norm(params["tdnn_bn"], stats["tdnn_bn"])
    for i, n_layers in enumerate(BLOCK_LAYERS):
        for j in range(n_layers):
            name = f"block{i + 1}_tdnnd{j + 1}"
            lw, lp, ls = xv.sub(f"block{i + 1}.tdnnd{j + 1}"), params[name], stats[name]
            lw.sub("nonlinear1.batchnorm").batch_norm(lp["nonlinear1"], ls["nonlinear1"])
            lw.sub("linear1").conv1d_as_dense(lp["linear1"])
            lw.sub("nonlinear2.batchnorm").batch_norm(lp["nonlinear2"], ls["nonlinear2"])
            cam = lw.sub("cam_layer")
            cam.sub("linear_local").conv1d(lp["cam_layer"]["linear_local"])
            cam.sub("linear1").conv1d_as_dense(lp["cam_layer"]["linear1"])
            cam.sub("linear2").conv1d_as_dense(lp["cam_layer"]["linear2"])
        xv.sub(f"transit{i + 1}.nonlinear.batchnorm").batch_norm(params[f"transit{i + 1}_bn"],
                                                                 stats[f"transit{i + 1}_bn"])
        xv.sub(f"transit{i + 1}.linear").conv1d_as_dense(params[f"transit{i + 1}_linear"])
    xv.sub("out_nonlinear.batchnorm").batch_norm(params["out_nonlinear"], stats["out_nonlinear"])
    xv.sub("dense.linear").conv1d_as_dense(params["dense_linear"])
    xv.sub("dense.nonlinear.batchnorm").batch_norm(None, stats["dense_bn"])
    return sd


def bigvgan_to_torch(params: dict, config) -> dict:
    """BigVGAN params -> the official ``bigvgan_generator.pt`` object ``{"generator": state_dict}`` (weight-normed)."""
    from indextts2_jax.nn.alias_free import default_resample_filter

    p = _np_tree(params)
    sd: dict[str, np.ndarray] = {}
    w = _Writer(sd)
    filt = default_resample_filter(2, 12).astype(np.float32).reshape(1, 1, -1)

    def activation(aw: _Writer, ap: dict) -> None:
        aw.put("act.alpha", ap["alpha"])
        if "beta" in ap:
            aw.put("act.beta", ap["beta"])
        aw.put("upsample.filter", filt)
        aw.put("downsample.lowpass.filter", filt)

    w.sub("conv_pre").conv1d(p["conv_pre"], weight_norm=True)
    n_kernels = len(config.resblock_kernel_sizes)
    for i in range(len(config.upsample_rates)):
        w.sub(f"ups.{i}.0").conv_transpose1d(p[f"ups_{i}"], weight_norm=True)
        for j, dil in enumerate(config.resblock_dilation_sizes):
            n = i * n_kernels + j
            rb, bp = w.sub(f"resblocks.{n}"), p[f"resblocks_{n}"]
            for m in range(len(dil)):
                rb.sub(f"convs1.{m}").conv1d(bp[f"convs1_{m}"], weight_norm=True)
                rb.sub(f"convs2.{m}").conv1d(bp[f"convs2_{m}"], weight_norm=True)
            for m in range(2 * len(dil)):
                activation(rb.sub(f"activations.{m}"), bp[f"activations_{m}"])
    activation(w.sub("activation_post"), p["activation_post"])
    w.sub("conv_post").conv1d(p["conv_post"], weight_norm=True)
    return {"generator": sd}


# ---------------------------------------------------------------------------------------------
# the directory
# ---------------------------------------------------------------------------------------------
def tiny_config() -> ml_collections.ConfigDict:
    """``load_official_config`` layout (``model``, ``aux``, ``inference``) at tiny sizes (see module docstring).

    Every value spelled out here (``configs/demo.py``'s model widths at the time of writing), so that
    changes to the demo recipe do not change this directory.
    """
    from configs.indextts2 import inference_defaults, official_aux_config, official_model_config

    codebook = 256
    m = official_model_config()
    m.gpt.update(dict(model_dim=64, heads=4, layers=2, max_mel_tokens=250, max_text_tokens=120,
                      number_text_tokens=512, number_mel_codes=codebook + 2, start_mel_token=codebook,
                      stop_mel_token=codebook + 1))
    m.gpt.condition_module.update(dict(output_size=32, linear_units=64, attention_heads=2, num_blocks=1))
    m.gpt.emo_condition_module.update(dict(output_size=32, linear_units=64, attention_heads=2, num_blocks=1))
    m.semantic_codec.update(dict(codebook_size=codebook, hidden_size=W2V_FEATURES, codebook_dim=8, vocos_dim=32,
                                 vocos_intermediate_dim=64, vocos_num_layers=2))
    m.s2mel.length_regulator.update(dict(channels=64, in_channels=W2V_FEATURES, content_codebook_size=16))
    m.s2mel.DiT.update(dict(hidden_dim=64, num_heads=2, depth=3, content_dim=64, content_codebook_size=16))
    m.s2mel.wavenet.update(dict(hidden_dim=64, num_layers=2))
    m.s2mel.style_encoder.dim = 64
    a = official_aux_config()
    a.w2v_bert.update(dict(hidden_size=W2V_FEATURES, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
                           get_emb_hidden_index=1))
    a.campplus.update(dict(embedding_size=m.s2mel.style_encoder.dim, growth_rate=8, bn_size=2, init_channels=32))
    # 3 up-sampling stages of one AMP block each (hop 8*8*4 = 256 as the official 4*4*2*2*2*2): compiles fast
    a.bigvgan.update(dict(upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8], upsample_initial_channel=32,
                          resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]]))
    cfg = ml_collections.ConfigDict()
    cfg.model, cfg.aux, cfg.inference = m, a, inference_defaults()  # what load_official_config gives
    return cfg


BPE_LINES = (
    "hello world, this is a tiny test of the model.",
    "the quick brown fox jumps over the lazy dog!",
    "we convert the official checkpoints once and synthesize fast.",
    "你好，世界。今天天气很好。",
    "one two three four five six seven eight nine ten.",
)


@dataclass
class TinyOfficialModel:
    """What ``make_tiny_official_model_dir`` wrote: the directory, its config and the params it holds.

    ``params`` are in our format (what ``load_official_model_dir`` must return); ``w2v_bert`` holds
    only the layers IndexTTS-2 reads (``get_emb_hidden_index``), like the loader.
    """

    path: Path
    config: ml_collections.ConfigDict
    params: dict[str, Any]
    w2v_stats: dict[str, np.ndarray]
    spk_matrix: np.ndarray
    emo_matrix: np.ndarray
    files: dict[str, Path] = field(default_factory=dict)


def _assert_same(a, b, what: str, rtol: float = 0.0) -> None:
    """Two params trees have the same structure and values (``rtol``: max|a-b| <= rtol * max|a| per leaf)."""
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        raise CheckpointError(f"{what}: to_torch/from_torch round trip changed the tree")
    for (path, x), y in zip(la, lb):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            raise CheckpointError(f"{what}: round trip changed the shape of {jax.tree_util.keystr(path)}")
        err = float(np.max(np.abs(x - y))) if x.size else 0.0
        if err > rtol * float(np.max(np.abs(x)) if x.size else 0.0):
            raise CheckpointError(f"{what}: round trip changed {jax.tree_util.keystr(path)} (max abs diff {err})")


def random_params(shapes, rng: np.random.Generator):
    """Random params with the tree and shapes of ``shapes`` (e.g. a model's ``abstract_params``).

    Drawn in NumPy (compiling every component's init takes minutes on a small CPU): kernels and tables
    ~ N(0, 1/fan_in), biases ~ N(0, 0.02), norm scales ~ 1 + N(0, 0.1), BatchNorm running means
    ~ N(0, 0.1) and variances ~ U(0.5, 1.5), DiT ``freqs`` the sinusoidal frequencies.
    """
    def draw(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        shape = tuple(s.shape)
        if name == "freqs":
            half = shape[0]
            return np.exp(-np.log(10000.0) * np.arange(half, dtype=np.float32) / half).astype(np.float32)
        if name in ("scale", "weight", "gamma", "norm_gamma") and len(shape) == 1:
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        if name == "var":
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        if name in ("bias", "mean") or len(shape) <= 1:
            return (0.02 * rng.standard_normal(shape)).astype(np.float32)
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        return (rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def make_tiny_official_model_dir(path: str | os.PathLike, seed: int = 0,
                                 config: ml_collections.ConfigDict | None = None) -> TinyOfficialModel:
    """Write a random-weight official-format IndexTTS-2 directory at ``path``; returns what it holds.

    ``config``: ``tiny_config()`` layout (``model`` = config.yaml, ``aux`` = w2v-BERT/CAMPPlus/BigVGAN
    kwargs); default ``tiny_config()``. Needs torch (``.pth`` files) and sentencepiece.
    """
    import torch
    import yaml
    from safetensors.numpy import save_file

    from indextts2_jax.convert.official import component_configs
    from indextts2_jax.models import bigvgan, campplus, gpt, s2mel, semantic_codec, w2v_bert
    from indextts2_jax.text.tokenizer import train_bpe

    cfg = tiny_config() if config is None else config
    root = Path(path)
    (root / "hf_cache" / "w2v-bert-2.0").mkdir(parents=True, exist_ok=True)
    (root / "hf_cache" / "bigvgan").mkdir(parents=True, exist_ok=True)
    cc = component_configs(cfg)
    rng = np.random.default_rng(seed)

    def to_torch_tensors(tree):
        if isinstance(tree, dict):
            return {k: to_torch_tensors(v) for k, v in tree.items()}
        return torch.from_numpy(np.array(tree))

    params: dict[str, Any] = {}
    files: dict[str, Path] = {}

    def round_trip(name, p, to_fn, from_fn, select=lambda t: t):
        """(official object, from_fn(object)); checks that the params came back.

        Exact except weight-normed tensors, which come back from g * v / ||v|| within float32 rounding
        (checked to 1e-6 relative); the returned params are the ones a loader reads from the files."""
        obj = to_fn(p)
        q = from_fn(obj)
        _assert_same(select(p), q, name, rtol=1e-6)
        return obj, q

    sd, params["gpt"] = round_trip("gpt", random_params(gpt.abstract_params(cc["gpt"]), rng),
                                   lambda t: gpt_to_torch(t, cc["gpt"]), lambda o: gpt.from_torch(o, cc["gpt"]))
    files["gpt"] = root / "gpt.pth"
    torch.save(to_torch_tensors(sd), files["gpt"])

    n_codes = int(cfg.model.s2mel.DiT.content_codebook_size)
    n_reg_codes = int(cfg.model.s2mel.length_regulator.content_codebook_size)
    obj, params["s2mel"] = round_trip(
        "s2mel", random_params(s2mel.abstract_params(cc["s2mel"]), rng),
        lambda t: s2mel_to_torch(t, cc["s2mel"], np.random.default_rng(seed + 1), n_codes, n_reg_codes),
        lambda o: s2mel.from_torch(o, cc["s2mel"]))
    files["s2mel"] = root / "s2mel.pth"
    torch.save(to_torch_tensors(obj), files["s2mel"])

    sd, params["semantic_codec"] = round_trip(
        "semantic_codec", random_params(semantic_codec._abstract_params(cc["semantic_codec"]), rng),
        lambda t: semantic_codec_to_torch(t, cc["semantic_codec"]),
        lambda o: semantic_codec.from_torch(o, cc["semantic_codec"]))
    files["semantic_codec"] = root / "hf_cache" / "semantic_codec_model.safetensors"
    save_file(sd, str(files["semantic_codec"]))

    # w2v-BERT: every layer of the config written, only get_emb_hidden_index of them read
    wcfg = cc["w2v_bert"]
    n_used = wcfg.layers_for_embedding
    sd, params["w2v_bert"] = round_trip(
        "w2v_bert", random_params(w2v_bert._abstract_params(wcfg, wcfg.num_hidden_layers), rng),
        lambda t: w2v_bert_to_torch(t, wcfg),
        lambda o: w2v_bert.from_torch(o, wcfg, num_layers=n_used, ignore_unused_layers=True),
        lambda t: {"feature_projection": t["feature_projection"],
                   "encoder": {f"layers_{i}": t["encoder"][f"layers_{i}"] for i in range(n_used)}})
    files["w2v_bert"] = root / "hf_cache" / "w2v-bert-2.0" / "model.safetensors"
    save_file(sd, str(files["w2v_bert"]))
    hf = {"architectures": ["Wav2Vec2BertModel"], "model_type": "wav2vec2-bert", **cfg.aux.w2v_bert.to_dict()}
    (root / "hf_cache" / "w2v-bert-2.0" / "config.json").write_text(json.dumps(hf, indent=2))

    sd, params["campplus"] = round_trip(
        "campplus", random_params(campplus.abstract_variables(cc["campplus"]), rng),
        lambda t: campplus_to_torch(t, cc["campplus"]), lambda o: campplus.from_torch(o, cc["campplus"]))
    files["campplus"] = root / "hf_cache" / "campplus_cn_common.bin"
    torch.save(to_torch_tensors(sd), files["campplus"])

    obj, params["bigvgan"] = round_trip(
        "bigvgan", random_params(bigvgan.abstract_params(cc["bigvgan"]), rng),
        lambda t: bigvgan_to_torch(t, cc["bigvgan"]), lambda o: bigvgan.from_torch(o, cc["bigvgan"]))
    files["bigvgan"] = root / "hf_cache" / "bigvgan" / "bigvgan_generator.pt"
    torch.save(to_torch_tensors(obj), files["bigvgan"])
    h = dict(cfg.aux.bigvgan.to_dict(), num_gpus=0, batch_size=4, learning_rate=1e-4, seed=1234)
    (root / "hf_cache" / "bigvgan" / "config.json").write_text(json.dumps(h, indent=2))

    # stats, matrices
    hidden = wcfg.hidden_size
    stats = {"mean": rng.normal(size=hidden).astype(np.float32),
             "var": rng.uniform(0.5, 2.0, size=hidden).astype(np.float32)}
    torch.save({k: torch.from_numpy(v) for k, v in stats.items()}, root / "wav2vec2bert_stats.pt")
    n_rows = int(sum(cfg.model.emo_num))
    spk = rng.normal(size=(n_rows, cc["campplus"].embedding_size)).astype(np.float32)
    emo = rng.normal(size=(n_rows, cc["gpt"].model_dim)).astype(np.float32)
    torch.save(torch.from_numpy(spk), root / "feat1.pt")
    torch.save(torch.from_numpy(emo), root / "feat2.pt")

    # BPE
    vocab = min(int(cfg.model.gpt.number_text_tokens), 120)
    train_bpe(list(BPE_LINES) * 4, vocab, root / "bpe", hard_vocab_limit=False)

    # config.yaml
    model_yaml = json.loads(json.dumps(cfg.model.to_dict()))  # tuples -> lists
    (root / "config.yaml").write_text(yaml.safe_dump(model_yaml, sort_keys=False, allow_unicode=True))
    return TinyOfficialModel(path=root, config=cfg, params=params, w2v_stats=stats, spk_matrix=spk,
                             emo_matrix=emo, files=files)
