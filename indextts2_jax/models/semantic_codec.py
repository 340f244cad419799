"""MaskGCT semantic codec (RepCodec with one factorized VQ) in Flax, and batched encoding to codes.

IndexTTS2 uses it twice: ``quantize(w2v_features)`` gives the prompt's codes and their
embeddings (``S_ref``), and ``vq2emb(codes)`` embeds the GPT's generated codes (``S_infer``).

Structure (channels-last, B batch, T frames at 50 Hz, H = hidden_size):

- encoder: VocosBackbone(H -> vocos_dim) [Conv1d k7 p3 -> LN(1e-6) -> ConvNeXt blocks
  (depthwise Conv1d k7 p3 -> LN(1e-6) -> Linear -> exact GELU -> Linear -> * gamma -> residual)
  -> final LN(1e-6)] -> Linear(vocos_dim -> H).
- factorized VQ: ``z_e = in_project(x)`` (weight-norm 1x1 conv H -> codebook_dim, folded into a
  Dense at conversion); code = argmax of the cosine similarity of L2-normalised ``z_e`` and
  L2-normalised codebook rows (first index on ties); ``z_q`` = the RAW codebook row;
  ``quantized = out_project(z_e + (z_q - z_e))`` (straight-through; numerically as the official
  path, which may differ from ``out_project(z_q)`` in the last float bits).
- decoder: same shape as the encoder, used only by training (reconstruction); IndexTTS2 inference
  never runs it. It is converted when present (``with_decoder=True``, the checkpoint layout).

The quantizer always computes in float32 (it is tiny, and the code argmax must not depend on the
compute dtype); encoder/decoder follow ``dtype``.

Official quirk (``vq2emb``): infer_v2 calls ``quantizer.vq2emb(codes.unsqueeze(1))`` with codes
(B, T); ResidualVQ treats axis 0 as the quantizer axis, so only batch row 0 is embedded (correct
for B=1 only). :meth:`SemanticCodec.vq2emb` here takes (B, T) codes and embeds every row.

Padding: every method takes an optional ``mask`` (B, T); padded frames are zeroed before each
convolution, so the valid frames of a padded batch row equal that row run alone (the convs' zero
padding then sees exactly what it sees at a real sequence end).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax.convert.state_dict import StateDict, check_params_match
from indextts2_jax.errors import ConfigError
from indextts2_jax.nn import vq
from indextts2_jax.nn.depthwise import DepthwiseConv1D
from indextts2_jax.nn.layers import dense, layer_norm

__all__ = [
    "SemanticCodecConfig",
    "SemanticCodec",
    "from_torch",
    "init_params",
    "encode_to_codes",
    "codec_quantize",
    "codec_vq2emb",
]


@dataclasses.dataclass(frozen=True)
class SemanticCodecConfig:
    """RepCodec dims; defaults are IndexTTS2's ``semantic_codec`` section (MaskGCT codec).

    ``with_decoder``: build the (training-only) decoder half; the official checkpoint has it.
    ``commitment`` / ``codebook_loss_weight``: RepCodec's FVQ loss weights (0.15 / 1.0).
    ``input_norm``: not in the official codec (whose w2v-BERT inputs arrive normalized by the
    mean/var stats). Adds params ``input_mean``/``input_std`` (H,) and feeds the encoder
    ``(features - input_mean) / input_std``; the reconstruction is then in that normalized space.
    The params are constants for training (stop-gradient; the codec stage sets them from the data).
    The demo codec on raw log-mel frames needs it: without it every frame's projected latent
    points the same way (the mean spectrum dominates) and the codebook collapses within 10 steps.
    """

    codebook_size: int = 8192
    hidden_size: int = 1024
    codebook_dim: int = 8
    vocos_dim: int = 384
    vocos_intermediate_dim: int = 2048
    vocos_num_layers: int = 12
    with_decoder: bool = True
    commitment: float = 0.15
    codebook_loss_weight: float = 1.0
    input_norm: bool = False

    def __post_init__(self):
        if self.codebook_dim == self.hidden_size:
            raise ConfigError(
                "codebook_dim == hidden_size makes the FVQ projections identities; not supported "
                f"(got {self.codebook_dim})"
            )
        if min(self.codebook_size, self.hidden_size, self.codebook_dim, self.vocos_dim) <= 0:
            raise ConfigError(f"semantic codec dims must be positive: {self}")

    @classmethod
    def from_official(cls, d: Mapping[str, Any]) -> "SemanticCodecConfig":
        """From the ``semantic_codec`` cfg given to ``build_semantic_codec`` (RepCodec keys).

        ``num_quantizers`` must be 1 and ``downsample_scale`` unset/1 (the IndexTTS2/MaskGCT codec);
        other values raise ConfigError. Unknown keys raise ConfigError.
        """
        d = dict(d)
        nq = d.pop("num_quantizers", 1)
        ds = d.pop("downsample_scale", 1)
        if nq != 1:
            raise ConfigError(f"semantic codec num_quantizers={nq}: only 1 is supported (IndexTTS2 uses 1)")
        if ds not in (None, 1):
            raise ConfigError(f"semantic codec downsample_scale={ds}: only 1 (no down/up-sampling) is supported")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"semantic codec config has unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def _conv(features, kernel, groups, name, dtype, param_dtype, axes):
    if groups == features and groups > 1:  # depthwise: shifted sums (see indextts2_jax.nn.depthwise)
        return DepthwiseConv1D(
            features, kernel, (kernel // 2, kernel // 2), dtype=dtype, param_dtype=param_dtype,
            kernel_init=nn.with_logical_partitioning(nn.initializers.truncated_normal(0.02), axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[-1],)), name=name)
    return nn.Conv(
        features,
        kernel_size=(kernel,),
        padding=((kernel // 2, kernel // 2),),
        feature_group_count=groups,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.truncated_normal(0.02), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[-1],)),
        name=name,
    )


def _dense(features, axes, name, dtype, param_dtype, init_std=0.02):
    return dense(features, axes, name=name, dtype=dtype, param_dtype=param_dtype,
                 kernel_init=nn.initializers.truncated_normal(init_std))


def _layer_norm(name, param_dtype):
    return layer_norm(name, param_dtype=param_dtype, eps=1e-6, fast_variance=False)


def _zero_padded(x, mask):
    return x if mask is None else jnp.where(mask[..., None], x, 0)


class ConvNeXtBlock(nn.Module):
    """Vocos ConvNeXt block. x (B, T, D), mask (B, T) or None -> (B, T, D)."""

    dim: int
    intermediate_dim: int
    layer_scale: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        dt, pdt = self.dtype, self.param_dtype
        h = _conv(self.dim, 7, self.dim, "dwconv", dt, pdt, ("kernel", None, "embed"))(_zero_padded(x, mask))
        h = _layer_norm("norm", pdt)(h).astype(dt)
        h = _dense(self.intermediate_dim, ("embed", "mlp"), "pwconv1", dt, pdt)(h)
        h = jax.nn.gelu(h, approximate=False)
        h = _dense(self.dim, ("mlp", "embed"), "pwconv2", dt, pdt)(h)
        gamma = self.param(
            "gamma",
            nn.with_logical_partitioning(nn.initializers.constant(self.layer_scale), ("norm",)),
            (self.dim,),
            pdt,
        )
        return x + h * gamma.astype(dt)


class VocosBackbone(nn.Module):
    """Conv k7 (in -> D) -> LN -> ConvNeXt blocks -> LN. (B, T, in) -> (B, T, D)."""

    dim: int
    intermediate_dim: int
    num_layers: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        dt, pdt = self.dtype, self.param_dtype
        h = _conv(self.dim, 7, 1, "embed", dt, pdt, ("kernel", "conv_in", "embed"))(_zero_padded(x.astype(dt), mask))
        h = _layer_norm("norm", pdt)(h).astype(dt)
        for i in range(self.num_layers):
            h = ConvNeXtBlock(self.dim, self.intermediate_dim, 1.0 / self.num_layers, dt, pdt, name=f"convnext_{i}")(
                h, mask
            )
        return _layer_norm("final_layer_norm", pdt)(h).astype(dt)


class VocosEncoder(nn.Module):
    """``Sequential(VocosBackbone, Linear(D -> H))``: (B, T, H) -> (B, T, H)."""

    config: SemanticCodecConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        c = self.config
        h = VocosBackbone(
            c.vocos_dim, c.vocos_intermediate_dim, c.vocos_num_layers, self.dtype, self.param_dtype, name="backbone"
        )(x, mask)
        h = _dense(c.hidden_size, ("mlp", "embed"), "projection", self.dtype, self.param_dtype)(h)
        return nn.with_logical_constraint(h, ("batch", "length", "embed"))


class FactorizedVQ(nn.Module):
    """One factorized VQ (``FactorizedVectorQuantize``, L2-normalised search), float32.

    Params: ``in_project`` Dense(H -> d), ``out_project`` Dense(d -> H), ``codebook`` (K, d).
    """

    config: SemanticCodecConfig
    param_dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.in_project = _dense(c.codebook_dim, ("embed", None), None, jnp.float32, self.param_dtype)
        self.out_project = _dense(c.hidden_size, (None, "embed"), None, jnp.float32, self.param_dtype)
        self.codebook = self.param(
            "codebook",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), ("codebook", None)),
            (c.codebook_size, c.codebook_dim),
            self.param_dtype,
        )

    def __call__(self, x):
        """x (B, T, H) -> dict: codes (B, T) int32, quantized (B, T, H), z_e / z_q (B, T, d)."""
        z_e = self.in_project(x.astype(jnp.float32))
        codes = vq.nearest_code(z_e, self.codebook, metric="cosine")
        z_q = vq.lookup(self.codebook.astype(jnp.float32), codes)
        quantized = self.out_project(vq.straight_through(z_e, z_q))
        return {"codes": codes, "quantized": quantized, "z_e": z_e, "z_q": z_q}

    def embed(self, codes):
        """codes (B, T) int -> out_project(codebook[codes]) (B, T, H)."""
        return self.out_project(vq.lookup(self.codebook.astype(jnp.float32), codes))


class SemanticCodec(nn.Module):
    """RepCodec (MaskGCT semantic codec). Methods (``apply(..., method=...)``), all channels-last:

    - ``quantize(features, mask=None)`` -> (codes (B, T) int32, quantized (B, T, H)) (official
      ``RepCodec.quantize``).
    - ``quantize_details(features, mask=None)`` -> dict with ``encoder_out``, ``z_e``, ``z_q``,
      ``codes``, ``quantized``.
    - ``vq2emb(codes)`` (B, T) -> (B, T, H), every batch row (see the module doc for the official
      B=1 quirk).
    - ``decode(quantized, mask=None)`` -> reconstruction (B, T, H) (needs ``with_decoder``).
    - ``__call__(features, mask=None)`` -> the training forward: dict with ``reconstruction``,
      ``target`` (the features as the encoder reads them: ``normalize(features)``), ``codes``,
      ``quantized``, ``z_e``, ``z_q``, ``commit_loss``, ``codebook_loss``.
    - ``normalize(features)``: the ``input_norm`` step (identity without it).
    """

    config: SemanticCodecConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.encoder = VocosEncoder(c, self.dtype, self.param_dtype)
        self.quantizer = FactorizedVQ(c, self.param_dtype)
        if c.with_decoder:
            self.decoder = VocosEncoder(c, self.dtype, self.param_dtype)
        if c.input_norm:
            self.input_mean = self.param("input_mean", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                                    ("norm",)),
                                         (c.hidden_size,), jnp.float32)
            self.input_std = self.param("input_std", nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                                                  ("norm",)),
                                        (c.hidden_size,), jnp.float32)

    def normalize(self, features):
        """features (B, T, H) -> what the encoder reads (``input_norm``; else unchanged)."""
        if not self.config.input_norm:
            return features
        mean = jax.lax.stop_gradient(self.input_mean)
        std = jax.lax.stop_gradient(self.input_std)
        return ((features.astype(jnp.float32) - mean) / std).astype(features.dtype)

    def quantize_details(self, features, mask=None):
        mask = None if mask is None else jnp.asarray(mask).astype(bool)
        encoder_out = self.encoder(self.normalize(features), mask)
        out = self.quantizer(encoder_out)
        return {"encoder_out": encoder_out, **out}

    def quantize(self, features, mask=None):
        out = self.quantize_details(features, mask)
        return out["codes"], out["quantized"]

    def vq2emb(self, codes):
        return self.quantizer.embed(codes)

    def decode(self, quantized, mask=None):
        if not self.config.with_decoder:
            raise ConfigError("this SemanticCodec was built with with_decoder=False")
        mask = None if mask is None else jnp.asarray(mask).astype(bool)
        return self.decoder(quantized, mask)

    def __call__(self, features, mask=None):
        out = self.quantize_details(features, mask)
        loss_mask = None if mask is None else jnp.asarray(mask).astype(bool)
        commit, codebook = vq.vq_losses(
            out["z_e"], out["z_q"], loss_mask, self.config.commitment, self.config.codebook_loss_weight
        )
        out["commit_loss"], out["codebook_loss"] = commit, codebook
        out["target"] = self.normalize(features)
        if self.config.with_decoder:
            out["reconstruction"] = self.decode(out["quantized"], mask)
        return out


# --- jitted entry points -----------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("config", "dtype_name"))
def _quantize_jit(params, features, mask, config, dtype_name):
    model = SemanticCodec(config, dtype=jnp.dtype(dtype_name))
    return model.apply({"params": params}, features, mask, method=SemanticCodec.quantize)


def codec_quantize(params, features, config: SemanticCodecConfig, mask=None, dtype=jnp.float32):
    """Jitted ``quantize``: features (B, T, H) [, mask (B, T)] -> (codes (B, T), quantized (B, T, H))."""
    return _quantize_jit(params, features, mask, config, jnp.dtype(dtype).name)


@functools.partial(jax.jit, static_argnames=("config",))
def codec_vq2emb(params, codes, config: SemanticCodecConfig):
    """Jitted ``vq2emb``: codes (B, T) int -> (B, T, H) float32."""
    return SemanticCodec(config).apply({"params": params}, codes, method=SemanticCodec.vq2emb)


# --- params -----------------------------------------------------------------------------------


def init_params(config: SemanticCodecConfig, key, param_dtype=jnp.float32):
    """Random params (plain arrays) covering encoder, quantizer and (if configured) decoder."""
    model = SemanticCodec(config, param_dtype=param_dtype)
    x = jnp.zeros((1, 4, config.hidden_size), jnp.float32)
    return nn.unbox(jax.jit(model.init)(key, x))["params"]


def _abstract_params(config: SemanticCodecConfig):
    x = jax.ShapeDtypeStruct((1, 4, config.hidden_size), jnp.float32)
    return nn.unbox(jax.eval_shape(SemanticCodec(config).init, jax.random.key(0), x))["params"]


def _convert_vocos(sd: StateDict, c: SemanticCodecConfig) -> dict:
    bb = sd.sub(0)
    backbone = {
        "embed": bb.sub("embed").conv1d(bias=True),
        "norm": bb.sub("norm").layer_norm(),
        "final_layer_norm": bb.sub("final_layer_norm").layer_norm(),
    }
    for i in range(c.vocos_num_layers):
        blk = bb.sub("convnext").sub(i)
        backbone[f"convnext_{i}"] = {
            "dwconv": blk.sub("dwconv").conv1d(bias=True),
            "norm": blk.sub("norm").layer_norm(),
            "pwconv1": blk.sub("pwconv1").linear(bias=True),
            "pwconv2": blk.sub("pwconv2").linear(bias=True),
            "gamma": blk.take("gamma", (c.vocos_dim,)),
        }
    return {"backbone": backbone, "projection": sd.sub(1).linear(bias=True)}


def from_torch(state_dict: Mapping[str, Any], config: SemanticCodecConfig) -> dict:
    """RepCodec state dict (``semantic_codec/model.safetensors`` or a fixture) -> params. Strict.

    The FVQ's weight-norm 1x1 convs (``weight_g``/``weight_v``) are folded into Dense kernels.
    ``decoder.*`` is converted with ``config.with_decoder`` and otherwise ignored on purpose
    (inference never runs it).
    """
    c = config
    sd = StateDict(state_dict)
    q = sd.sub("quantizer").sub("quantizers").sub(0)
    params = {
        "encoder": _convert_vocos(sd.sub("encoder"), c),
        "quantizer": {
            "in_project": q.sub("in_project").conv1d_as_dense(bias=True),
            "out_project": q.sub("out_project").conv1d_as_dense(bias=True),
            "codebook": q.sub("codebook").take("weight", (c.codebook_size, c.codebook_dim)),
        },
    }
    if c.with_decoder:
        params["decoder"] = _convert_vocos(sd.sub("decoder"), c)
    else:
        sd.ignore(r"decoder\.")  # reconstruction half: training only, not built with with_decoder=False
    sd.finish()
    check_params_match(params, _abstract_params(c), "semantic codec params")
    return jax.tree.map(lambda a: np.asarray(a, np.float32), params)


# --- batched encoding: waveforms -> codes --------------------------------------------------------


def _bucket(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def encode_to_codes(
    waves_16k: Sequence[np.ndarray],
    w2v_params,
    codec_params,
    stats: tuple[np.ndarray, np.ndarray],
    w2v_config,
    codec_config: SemanticCodecConfig,
    *,
    batch_size: int = 8,
    frame_bucket: int = 64,
    dtype=jnp.float32,
) -> list[np.ndarray]:
    """16 kHz waveforms -> semantic codes, one (T_i,) int32 array per waveform (50 codes/s).

    The IndexTTS2 path, batched: SeamlessM4T features (``indextts2_jax.audio.w2v_bert_features``),
    w2v-BERT ``hidden_states[get_emb_hidden_index]`` (only the layers needed), ``(h - mean) /
    sqrt(var)``, codec ``quantize``. Waveforms are processed in sorted-by-length batches of
    ``batch_size``; frames are padded to a multiple of ``frame_bucket`` (bounding recompiles), and
    the attention mask / codec mask make every row's codes equal to those of the row run alone.

    Args:
      waves_16k: list of 1-D float waveforms in [-1, 1] at 16 kHz (each >= 560 samples).
      w2v_params: params of ``W2VBert(w2v_config, num_layers >= w2v_config.layers_for_embedding)``
        (extra layers are not run).
      codec_params: :func:`from_torch` / :func:`init_params` output.
      stats: ``(mean, var)``, e.g. ``w2v_bert.load_w2v_stats(path)``.
      dtype: compute dtype of w2v-BERT and the codec encoder (bfloat16 on accelerators); the code
        argmax is always float32.
    """
    from indextts2_jax import audio  # lazy: the front-end is optional for users of the models only
    from indextts2_jax.models import w2v_bert

    waves = [np.asarray(w, np.float32).reshape(-1) for w in waves_16k]
    mean, var = (np.asarray(s, np.float32) for s in stats)
    n_needed = w2v_config.layers_for_embedding
    w2v_params = dict(w2v_params)
    have = w2v_params.get("encoder", {})
    missing = [i for i in range(n_needed) if f"layers_{i}" not in have]
    if missing:
        raise ConfigError(f"encode_to_codes needs w2v-BERT layers 0..{n_needed - 1}; the params lack layers {missing}")
    w2v_params["encoder"] = {f"layers_{i}": have[f"layers_{i}"] for i in range(n_needed)}
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    out: list[np.ndarray | None] = [None] * len(waves)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        feats, mask = audio.w2v_bert_features([waves[i] for i in idx])
        t = _bucket(feats.shape[1], frame_bucket)
        rows = _bucket(len(idx), 1) if len(order) <= batch_size else batch_size
        feats_p = np.ones((rows, t, feats.shape[2]), np.float32)  # extractor pads with 1.0
        mask_p = np.zeros((rows, t), np.int32)
        feats_p[: len(idx), : feats.shape[1]] = feats
        mask_p[: len(idx), : feats.shape[1]] = mask
        mask_p[len(idx) :, 0] = 1  # dummy rows: one valid frame keeps every softmax well defined
        hidden = w2v_bert.w2v_bert_embed(w2v_params, feats_p, mask_p, mean, var, w2v_config, dtype)
        codes, _ = codec_quantize(codec_params, hidden, codec_config, mask_p, dtype)
        codes = np.asarray(codes)
        for row, i in enumerate(idx):
            out[i] = codes[row, : int(mask[row].sum())].astype(np.int32)
    return out
