"""S2M (semantic-to-mel): length regulator, ``gpt_layer``, DiT+WaveNet CFM estimator, Euler sampler, loss.

Official counterpart: ``MyModel(cfg.s2mel, use_gpt_latent=True)`` (``indextts/s2mel/modules/*``) and the
s2mel steps of ``indextts/infer_v2.py``. Everything here is channels-last: mels are ``(B, T, n_mels)``,
content is ``(B, T, C)``; :func:`estimate_official_layout` offers the official ``(B, n_mels, T)`` boundary.

Params: a plain dict ``{"length_regulator": ..., "gpt_layer": ..., "estimator": ...}``
(:func:`init_params`, :func:`from_torch`). Each entry is the param tree of one Linen module
(:class:`InterpolateRegulator`, :class:`GptLayer`, :class:`DiT`).

Functions:
- :func:`length_regulate`: content (B, T_in, C_in) -> (B, T_out, C) at the mel frame rate.
- :func:`estimate`: the DiT velocity field.
- :func:`cfm_inference`: the Euler sampler with classifier-free guidance (one jitted function).
- :func:`synthesize_mel`: infer_v2's s2mel steps from the codec/GPT outputs to the mel for the vocoder.
- :func:`cfm_loss`: the conditional flow-matching training loss.

Batching (an extension; the official sampler only runs B=1): every entry point takes optional per-item
lengths. With them, each item of a padded batch gives the same result as running it alone at B=1
(interpolation from its own length, GroupNorm statistics and WaveNet reflect padding at its own
length, padded keys masked in attention). Without them the official padded-batch semantics apply.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax.convert.state_dict import StateDict, check_params_match
from indextts2_jax.errors import CheckpointError, ConfigError
from indextts2_jax.nn.dit import DiTTransformer, TimestepEmbedder, swiglu_hidden_size
from indextts2_jax.nn.layers import dense

Dtype = Any

# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LengthRegulatorConfig:
    """``s2mel.length_regulator`` (continuous input, no VQ, no f0)."""

    channels: int = 512
    in_channels: int = 1024
    sampling_ratios: tuple[int, ...] = (1, 1, 1, 1)  # only the count matters: one conv stage each
    groups: int = 1  # GroupNorm groups (MyModel keeps the default 1)


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """``s2mel.DiT`` (the CFM estimator's transformer part)."""

    hidden_dim: int = 512
    num_heads: int = 8
    depth: int = 13
    in_channels: int = 80  # mel bins
    content_dim: int = 512
    style_condition: bool = True
    uvit_skip_connection: bool = True
    long_skip_connection: bool = True
    class_dropout_prob: float = 0.1  # training: CFG condition dropout
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    max_length: int = 16384  # official RoPE table / input_pos length (block_size is hard-coded to 16384)
    # how the transformer attends (not in the official config): "einsum" (ours), or jax.nn.dot_product_attention's
    # "xla" / "cudnn" (flash attention on NVIDIA GPUs, bfloat16; nn/dit.py SelfAttention)
    attention: str = "einsum"


@dataclasses.dataclass(frozen=True)
class WaveNetConfig:
    """``s2mel.wavenet`` (the estimator's head)."""

    hidden_dim: int = 512
    num_layers: int = 8
    kernel_size: int = 5
    dilation_rate: int = 1
    p_dropout: float = 0.2  # training only


@dataclasses.dataclass(frozen=True)
class S2MelConfig:
    """IndexTTS-2 ``s2mel`` section (official full-size defaults)."""

    length_regulator: LengthRegulatorConfig = LengthRegulatorConfig()
    dit: DiTConfig = DiTConfig()
    wavenet: WaveNetConfig = WaveNetConfig()
    style_dim: int = 192
    gpt_latent_dim: int = 1280  # MyModel hard-codes gpt_layer = 1280 -> 256 -> 128 -> 1024
    gpt_layer_dims: tuple[int, ...] = (256, 128, 1024)
    sigma_min: float = 1e-6
    reg_loss_type: str = "l1"
    frames_per_code: float = 1.72  # infer_v2: target mel frames = (code_lens * 1.72).long()
    sample_rate: int = 22050
    hop_length: int = 256

    @property
    def n_mels(self) -> int:
        return self.dit.in_channels

    @classmethod
    def from_official(cls, d: Mapping) -> "S2MelConfig":
        """From the official ``s2mel`` config section (as in config.yaml / the fixture json ``config``)."""
        d = dict(d)
        dit, wn, lr = dict(d.get("DiT", {})), dict(d.get("wavenet", {})), dict(d.get("length_regulator", {}))

        def unsupported(flag: bool, what: str):
            if flag:
                raise ConfigError(f"s2mel config: {what} is not supported by this port (IndexTTS-2 does not use it)")

        unsupported(d.get("dit_type", "DiT") != "DiT", f"dit_type={d.get('dit_type')!r}")
        unsupported(dit.get("final_layer_type", "wavenet") != "wavenet",
                    f"DiT.final_layer_type={dit.get('final_layer_type')!r}")
        for flag in ("time_as_token", "style_as_token", "is_causal", "f0_condition", "zero_prompt_speech_token"):
            unsupported(bool(dit.get(flag, False)), f"DiT.{flag}=true")
        for flag in ("is_discrete", "vector_quantize", "f0_condition"):
            unsupported(bool(lr.get(flag, False)), f"length_regulator.{flag}=true")
        unsupported(int(lr.get("n_codebooks", 1)) != 1, f"length_regulator.n_codebooks={lr.get('n_codebooks')}")
        if bool(dit.get("style_condition", True)) != bool(wn.get("style_condition", True)):
            raise ConfigError("s2mel config: DiT.style_condition must equal wavenet.style_condition (official assert)")
        if int(dit.get("hidden_dim", 512)) != int(wn.get("hidden_dim", 512)):
            # FinalLayer(wavenet.hidden_dim) is modulated by t1 (DiT.hidden_dim): the official code needs them equal.
            raise ConfigError("s2mel config: DiT.hidden_dim must equal wavenet.hidden_dim (FinalLayer takes t1)")
        if int(wn.get("kernel_size", 5)) % 2 != 1:
            raise ConfigError("s2mel config: wavenet.kernel_size must be odd (official assert)")
        reg = d.get("reg_loss_type", "l1")
        if reg not in ("l1", "l2"):
            raise ConfigError(f"s2mel config: reg_loss_type={reg!r} (expected 'l1' or 'l2')")
        try:
            return cls(
                length_regulator=LengthRegulatorConfig(
                    channels=int(lr.get("channels", 512)),
                    in_channels=int(lr.get("in_channels", 1024)),
                    sampling_ratios=tuple(int(r) for r in lr.get("sampling_ratios", (1, 1, 1, 1))),
                ),
                dit=DiTConfig(
                    hidden_dim=int(dit.get("hidden_dim", 512)),
                    num_heads=int(dit.get("num_heads", 8)),
                    depth=int(dit.get("depth", 13)),
                    in_channels=int(dit.get("in_channels", 80)),
                    content_dim=int(dit.get("content_dim", 512)),
                    style_condition=bool(dit.get("style_condition", True)),
                    uvit_skip_connection=bool(dit.get("uvit_skip_connection", False)),
                    long_skip_connection=bool(dit.get("long_skip_connection", True)),
                    class_dropout_prob=float(dit.get("class_dropout_prob", 0.1)),
                ),
                wavenet=WaveNetConfig(
                    hidden_dim=int(wn.get("hidden_dim", 512)),
                    num_layers=int(wn.get("num_layers", 8)),
                    kernel_size=int(wn.get("kernel_size", 5)),
                    dilation_rate=int(wn.get("dilation_rate", 1)),
                    p_dropout=float(wn.get("p_dropout", 0.2)),
                ),
                style_dim=int(d.get("style_encoder", {}).get("dim", 192)),
                reg_loss_type=reg,
                sample_rate=int(d.get("preprocess_params", {}).get("sr", 22050)),
                hop_length=int(d.get("preprocess_params", {}).get("spect_params", {}).get("hop_length", 256)),
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(f"s2mel config: bad value ({e})") from e

    def target_frames(self, code_lens) -> np.ndarray:
        """infer_v2's ``(code_lens * 1.72).long()``: float32 product truncated toward zero. (B,) int."""
        prod = np.asarray(code_lens, dtype=np.float32) * np.float32(self.frames_per_code)
        return np.trunc(prod).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------


def sequence_mask(lengths: jax.Array, max_length: int) -> jax.Array:
    """(B,) lengths -> (B, max_length) bool, True for frames < length."""
    return jnp.arange(max_length)[None, :] < jnp.asarray(lengths)[:, None]


def legacy_nearest_indices(in_len: int, out_len: int) -> np.ndarray:
    """torch ``F.interpolate(mode='nearest')`` source indices: ``min(floor(f32(i) * f32(in/out)), in-1)``."""
    scale = np.float32(in_len) / np.float32(out_len)
    idx = np.floor(np.arange(out_len, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_len - 1)


def _conv_kernel_init(axes=("kernel", "conv_in", "conv_out")):
    return nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)


def _mish(x):
    return x * jnp.tanh(jax.nn.softplus(x))


# ------------------------------------------------------------------------------------------------
# Length regulator
# ------------------------------------------------------------------------------------------------


class InterpolateRegulator(nn.Module):
    """Continuous-content length regulator (official ``InterpolateRegulator``, is_discrete=False).

    ``content_in_proj`` Linear -> legacy nearest interpolation to ``out_len`` frames -> per sampling
    ratio [Conv1d k3 (zero pad 1), GroupNorm(groups), Mish] -> Conv1d k1 -> times the ``ylens`` mask.

    x (B, T_in, in_channels), ylens (B,) int, out_len static (the official uses ``max(ylens)``) ->
    (B, out_len, channels).

    ``x_lens`` (B,) (optional, per-item mode): item b is interpolated from its own ``x_lens[b]`` frames
    to ``ylens[b]``, its frames >= ``ylens[b]`` are zeroed before every conv and excluded from the
    GroupNorm statistics, so it equals a B=1 run on the unpadded item. Without ``x_lens`` every item
    is stretched from the padded ``T_in`` and statistics see all ``out_len`` frames (official).
    """

    config: LengthRegulatorConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, ylens, out_len: int | None = None, x_lens=None):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, t_in, _ = x.shape
        h = dense(cfg.channels, ("embed", "mlp"), name="content_in_proj", **kw)(x)
        interpolate = len(cfg.sampling_ratios) > 0
        if interpolate:
            if out_len is None:
                raise ValueError("length regulator: out_len (static, e.g. max(ylens)) is required")
            if x_lens is None:
                h = h[:, legacy_nearest_indices(t_in, out_len)]
            else:
                scale = jnp.asarray(x_lens).astype(jnp.float32) / jnp.asarray(ylens).astype(jnp.float32)
                idx = jnp.floor(jnp.arange(out_len, dtype=jnp.float32)[None, :] * scale[:, None]).astype(jnp.int32)
                idx = jnp.clip(idx, 0, jnp.asarray(x_lens)[:, None] - 1)
                h = jnp.take_along_axis(h, idx[:, :, None], axis=1)
        else:  # no interpolation: lengths clamp to the input length
            out_len = t_in
            ylens = jnp.minimum(jnp.asarray(ylens), t_in)
        mask = sequence_mask(ylens, out_len)[:, :, None]
        per_item = x_lens is not None
        n = len(cfg.sampling_ratios)
        for s in range(n):
            if per_item:
                h = jnp.where(mask, h, 0)
            h = nn.Conv(cfg.channels, (3,), padding=((1, 1),), kernel_init=_conv_kernel_init(),
                        name=f"model_{3 * s}", **kw)(h)
            h = GroupNorm1d(cfg.groups, param_dtype=self.param_dtype, name=f"model_{3 * s + 1}")(
                h, mask if per_item else None)
            h = _mish(h)
        if per_item:
            h = jnp.where(mask, h, 0)
        h = nn.Conv(cfg.channels, (1,), kernel_init=_conv_kernel_init(), name=f"model_{3 * n}", **kw)(h)
        out = h * mask.astype(h.dtype)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))


class GroupNorm1d(nn.Module):
    """GroupNorm over (time, channels-in-group) in float32, eps 1e-5, per-channel affine ``scale``/``bias``.

    x (B, T, C), mask (B, T, 1) bool or None (None: statistics over every frame, as torch) -> (B, T, C).
    """

    groups: int = 1
    eps: float = 1e-5
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        c = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)), (c,),
                           self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)), (c,),
                          self.param_dtype)
        b, t, _ = x.shape
        g = self.groups
        xf = x.astype(jnp.float32).reshape(b, t, g, c // g)
        if mask is None:
            mean = jnp.mean(xf, axis=(1, 3), keepdims=True)
            var = jnp.mean(jnp.square(xf - mean), axis=(1, 3), keepdims=True)
        else:
            m = mask.astype(jnp.float32)[:, :, :, None]  # (B, T, 1, 1)
            count = jnp.maximum(jnp.sum(m, axis=1, keepdims=True) * (c // g), 1.0)
            mean = jnp.sum(xf * m, axis=(1, 3), keepdims=True) / count
            var = jnp.sum(jnp.square((xf - mean) * m), axis=(1, 3), keepdims=True) / count
        y = ((xf - mean) * jax.lax.rsqrt(var + self.eps)).reshape(b, t, c)
        return (y * scale + bias).astype(x.dtype)


class GptLayer(nn.Module):
    """MyModel's ``gpt_layer``: Linear 1280->256 -> Linear 256->128 -> Linear 128->1024, no activations.

    latent (B, m, gpt_latent_dim) -> (B, m, 1024).
    """

    dims: tuple[int, ...] = (256, 128, 1024)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, latent):
        h = latent
        for i, d in enumerate(self.dims):
            h = dense(d, ("embed", "mlp"), dtype=self.dtype, param_dtype=self.param_dtype, name=f"layers_{i}")(h)
        return h


# ------------------------------------------------------------------------------------------------
# Estimator: WaveNet head, FinalLayer, DiT
# ------------------------------------------------------------------------------------------------


def reflect_pad_time(x, lengths, left: int, right: int):
    """Reflect-pad the time axis like the official ``SConv1d`` (``pad1d(mode='reflect')``).

    x (B, T, C), lengths (B,) int: item b is reflected at its own last valid frame ``lengths[b] - 1``
    (``lengths = T`` gives plain reflect padding). As the official, a sequence no longer than the
    padding is first extended with zeros to ``max(left, right) + 1`` frames. Frames past an item's
    reflected border hold arbitrary values (they only feed outputs that get masked).
    Returns (B, left + T + right, C).
    """
    b, t, _ = x.shape
    lengths = jnp.asarray(lengths)[:, None]
    ext = jnp.maximum(lengths, max(left, right) + 1)
    i = jnp.arange(-left, t + right)[None, :]
    r = jnp.where(i < 0, -i, i)
    r = jnp.where(r >= ext, 2 * (ext - 1) - r, r)
    valid = (r >= 0) & (r < lengths) & (r < t)
    g = jnp.take_along_axis(x, jnp.clip(r, 0, t - 1)[:, :, None], axis=1)
    return jnp.where(valid[:, :, None], g, 0).astype(x.dtype)


class WaveNet(nn.Module):
    """Official ``WN`` with ``SConv1d`` (reflect padding) convs, conditioned on a global vector.

    x (B, T, H), mask (B, T) bool, g (B, H_g), pad_lens (B,) where reflect padding turns -> (B, T, H).
    Layer i: ``a = in_layer_i(x) + cond_layer(g)[2H*i : 2H*(i+1)]``; ``acts = tanh(a[:H]) * sigmoid(a[H:])``;
    ``rs = res_skip_i(acts)``; for i < L-1: ``x = (x + rs[:H]) * mask``, ``out += rs[H:]``; last: ``out += rs``.
    Returns ``out * mask``. The input is not masked before the first conv (official).
    """

    config: WaveNetConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, g, pad_lens, deterministic: bool = True):
        cfg = self.config
        h_dim = cfg.hidden_dim
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        fmask = mask[:, :, None].astype(x.dtype)
        g_all = dense(2 * h_dim * cfg.num_layers, ("embed", "mlp"), name="cond_layer", **kw)(g)  # (B, 2HL)
        output = jnp.zeros_like(x)
        for i in range(cfg.num_layers):
            dilation = cfg.dilation_rate ** i
            total = (cfg.kernel_size - 1) * dilation
            right = total // 2
            left = total - right
            xp = reflect_pad_time(x, pad_lens, left, right)
            a = nn.Conv(2 * h_dim, (cfg.kernel_size,), padding="VALID", kernel_dilation=(dilation,),
                        kernel_init=_conv_kernel_init(), name=f"in_layers_{i}", **kw)(xp)
            a = a + g_all[:, None, 2 * h_dim * i: 2 * h_dim * (i + 1)].astype(a.dtype)
            acts = jnp.tanh(a[..., :h_dim]) * jax.nn.sigmoid(a[..., h_dim:])
            acts = nn.Dropout(cfg.p_dropout)(acts, deterministic=deterministic)
            last = i == cfg.num_layers - 1
            rs = dense(h_dim if last else 2 * h_dim, ("mlp", "embed"), name=f"res_skip_layers_{i}", **kw)(acts)
            if not last:
                x = (x + rs[..., :h_dim]) * fmask
                output = output + rs[..., h_dim:]
            else:
                output = output + rs
        return output * fmask


class FinalLayer(nn.Module):
    """``[shift, scale] = Linear(SiLU(c))``; ``Linear_wn(LayerNorm(x) * (1 + scale) + shift)``.

    x (B, T, H), c (B, D) -> (B, T, H). LayerNorm without affine, eps 1e-6, in float32.
    """

    hidden: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, c):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        mod = dense(2 * self.hidden, ("embed", "mlp"), name="adaLN_modulation_1", **kw)(nn.silu(c))
        shift, scale = mod[:, None, : self.hidden], mod[:, None, self.hidden:]
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        normed = ((xf - mean) * jax.lax.rsqrt(var + 1e-6)).astype(x.dtype)
        x = normed * (1 + scale) + shift
        return dense(self.hidden, ("embed", "mlp"), name="linear", **kw)(x)


class DiT(nn.Module):
    """The CFM estimator (official ``DiT`` with ``final_layer_type='wavenet'``), channels-last.

    x (B, T, n_mels) noisy mel, prompt_x (B, T, n_mels), x_lens (B,) int, t (B,) flow time,
    style (B, style_dim), cond (B, T, content_dim) -> velocity (B, T, n_mels).

    ``drop_condition`` (B,) bool (training CFG dropout): zero the prompt, projected content and style
    inputs of those items (official: after ``cond_projection``). ``per_item_padding``: WaveNet reflect
    padding at each item's ``x_lens`` instead of at the padded length T (official). Activations are sown
    into the ``intermediates`` collection under the official ``inter_*`` names.
    """

    config: S2MelConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, prompt_x, x_lens, t, style, cond, drop_condition=None, per_item_padding: bool = False,
                 deterministic: bool = True):
        cfg, dcfg = self.config, self.config.dit
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, t_len, _ = x.shape
        hidden = dcfg.hidden_dim
        x = x.astype(self.dtype)
        t1 = TimestepEmbedder(hidden, name="t_embedder", **kw)(t)
        self.sow("intermediates", "inter_t_embedder", t1)
        cond = dense(hidden, ("embed", "mlp"), name="cond_projection", **kw)(cond)
        self.sow("intermediates", "inter_cond_projection", cond)
        parts = [prompt_x.astype(self.dtype), cond.astype(self.dtype)]
        if dcfg.style_condition:
            parts.append(jnp.broadcast_to(style.astype(self.dtype)[:, None, :], (b, t_len, style.shape[-1])))
        conditions = jnp.concatenate(parts, axis=-1)
        if drop_condition is not None:
            conditions = jnp.where(jnp.asarray(drop_condition)[:, None, None], 0, conditions)
        x_in = dense(hidden, ("mlp", "embed"), name="cond_x_merge_linear", **kw)(
            jnp.concatenate([x, conditions], axis=-1))
        x_in = nn.with_logical_constraint(x_in, ("batch", "length", "embed"))
        self.sow("intermediates", "inter_cond_x_merge_linear", x_in)
        x_mask = sequence_mask(x_lens, t_len)
        x_res = DiTTransformer(
            depth=dcfg.depth, dim=hidden, num_heads=dcfg.num_heads, head_dim=hidden // dcfg.num_heads,
            ffn_hidden=swiglu_hidden_size(hidden), uvit_skip_connection=dcfg.uvit_skip_connection,
            norm_eps=dcfg.norm_eps, rope_base=dcfg.rope_base, attention=dcfg.attention, name="transformer", **kw,
        )(x_in, t1[:, None, :], x_mask)
        self.sow("intermediates", "inter_transformer", x_res)
        if dcfg.long_skip_connection:
            x_res = dense(hidden, ("mlp", "embed"), name="skip_linear", **kw)(jnp.concatenate([x_res, x], axis=-1))
            self.sow("intermediates", "inter_skip_linear", x_res)
        wcfg = cfg.wavenet
        h = dense(wcfg.hidden_dim, ("embed", "mlp"), name="conv1", **kw)(x_res)
        self.sow("intermediates", "inter_conv1", h)
        t2 = TimestepEmbedder(wcfg.hidden_dim, name="t_embedder2", **kw)(t)
        self.sow("intermediates", "inter_t_embedder2", t2)
        pad_lens = jnp.asarray(x_lens) if per_item_padding else jnp.full((b,), t_len, jnp.int32)
        h = WaveNet(wcfg, name="wavenet", **kw)(h, x_mask, t2, pad_lens, deterministic=deterministic)
        self.sow("intermediates", "inter_wavenet", h)
        res = dense(wcfg.hidden_dim, ("embed", "mlp"), name="res_projection", **kw)(x_res)
        self.sow("intermediates", "inter_res_projection", res)
        h = FinalLayer(wcfg.hidden_dim, name="final_layer", **kw)(h + res, t1)
        self.sow("intermediates", "inter_final_layer", h)
        out = dense(dcfg.in_channels, ("mlp", "embed"), name="conv2", **kw)(h)
        return out.astype(jnp.float32)


# ------------------------------------------------------------------------------------------------
# Init and conversion
# ------------------------------------------------------------------------------------------------


def _modules(config: S2MelConfig, dtype=jnp.float32, param_dtype=jnp.float32):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    return {
        "length_regulator": InterpolateRegulator(config.length_regulator, **kw),
        "gpt_layer": GptLayer(config.gpt_layer_dims, **kw),
        "estimator": DiT(config, **kw),
    }


def _init_inputs(config: S2MelConfig):
    t, b = 8, 1
    f32 = jnp.float32
    return {
        "length_regulator": (jnp.zeros((b, 4, config.length_regulator.in_channels), f32), jnp.full((b,), t), t),
        "gpt_layer": (jnp.zeros((b, 4, config.gpt_latent_dim), f32),),
        "estimator": (
            jnp.zeros((b, t, config.n_mels), f32), jnp.zeros((b, t, config.n_mels), f32), jnp.full((b,), t),
            jnp.zeros((b,), f32), jnp.zeros((b, config.style_dim), f32), jnp.zeros((b, t, config.dit.content_dim), f32),
        ),
    }


def init_params(config: S2MelConfig, key: jax.Array, unbox: bool = True, param_dtype=jnp.float32) -> dict:
    """Random params ``{"length_regulator", "gpt_layer", "estimator"}`` (jitted).

    ``unbox=False`` keeps the ``nn.Partitioned`` boxes (logical axis names) for sharding rules.
    """
    return _init_params_jit(config, key, unbox, param_dtype)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _init_params_jit(config, key, unbox, param_dtype):
    return _init_params(config, key, unbox, param_dtype)


def _init_params(config: S2MelConfig, key: jax.Array, unbox: bool = True, param_dtype=jnp.float32) -> dict:
    mods = _modules(config, param_dtype=param_dtype)
    inputs = _init_inputs(config)
    keys = jax.random.split(key, len(mods))
    out = {}
    for k, (name, mod) in zip(keys, mods.items()):
        if name == "length_regulator":
            x, ylens, n = inputs[name]
            variables = mod.init(k, x, ylens, n)
        else:
            variables = mod.init(k, *inputs[name])
        p = variables["params"]
        out[name] = nn.meta.unbox(p) if unbox else p
    return out


def abstract_params(config: S2MelConfig) -> dict:
    """``jax.eval_shape`` of :func:`init_params` (ShapeDtypeStructs)."""
    return jax.eval_shape(lambda k: _init_params(config, k), jax.random.key(0))


def _np_dense(sd: StateDict) -> dict:
    return {k: np.asarray(v, np.float32) for k, v in sd.linear(bias=True).items()}


def _convert_length_regulator(sd: StateDict, config: S2MelConfig) -> dict:
    cfg = config.length_regulator
    sd.ignore(r"embedding\.weight$", r"mask_token$")  # discrete-input table + mask token: unused (is_discrete=false)
    p = {"content_in_proj": _np_dense(sd.sub("content_in_proj"))}
    n = len(cfg.sampling_ratios)
    for s in range(n):
        p[f"model_{3 * s}"] = sd.sub(f"model.{3 * s}").conv1d(bias=True)
        p[f"model_{3 * s + 1}"] = sd.sub(f"model.{3 * s + 1}").layer_norm()
    p[f"model_{3 * n}"] = sd.sub(f"model.{3 * n}").conv1d(bias=True)
    return p


def _convert_gpt_layer(sd: StateDict, config: S2MelConfig) -> dict:
    return {f"layers_{i}": _np_dense(sd.sub(i)) for i in range(len(config.gpt_layer_dims))}


def _convert_timestep_embedder(sd: StateDict) -> dict:
    return {"freqs": sd.take("freqs"), "mlp_0": _np_dense(sd.sub("mlp.0")), "mlp_2": _np_dense(sd.sub("mlp.2"))}


def _convert_adaln(sd: StateDict) -> dict:
    return {"project_layer": _np_dense(sd.sub("project_layer")), "norm": {"weight": sd.take("norm.weight")}}


def _convert_estimator(sd: StateDict, config: S2MelConfig) -> dict:
    """Keys of ``CFM.state_dict()`` (``estimator.*``) -> DiT params."""
    dcfg, wcfg = config.dit, config.wavenet
    e = sd.sub("estimator")
    # Unused at inference and in training (see spec §3.4): x_embedder (weight-normed Linear never called),
    # cond_embedder (discrete-content table; the DiT always uses cond_projection), content_mask_embedder,
    # input_pos (an arange buffer; positions are implicit here).
    e.ignore(r"x_embedder\.", r"cond_embedder\.weight$", r"content_mask_embedder\.weight$", r"input_pos$")
    p: dict[str, Any] = {
        "t_embedder": _convert_timestep_embedder(e.sub("t_embedder")),
        "cond_projection": _np_dense(e.sub("cond_projection")),
        "cond_x_merge_linear": _np_dense(e.sub("cond_x_merge_linear")),
    }
    tr = e.sub("transformer")
    layers = {}
    receive = dcfg.uvit_skip_connection
    for i in range(dcfg.depth):
        ls = tr.sub(f"layers.{i}")
        layer = {
            "attention": {
                "wqkv": {"kernel": np.ascontiguousarray(ls.take("attention.wqkv.weight").T)},
                "wo": {"kernel": np.ascontiguousarray(ls.take("attention.wo.weight").T)},
            },
            "feed_forward": {w: {"kernel": np.ascontiguousarray(ls.take(f"feed_forward.{w}.weight").T)}
                             for w in ("w1", "w2", "w3")},
            "attention_norm": _convert_adaln(ls.sub("attention_norm")),
            "ffn_norm": _convert_adaln(ls.sub("ffn_norm")),
        }
        if receive and i > dcfg.depth // 2:
            layer["skip_in_linear"] = _np_dense(ls.sub("skip_in_linear"))
        else:
            # Every official block owns skip_in_linear; only the U-ViT receiving layers (i > depth//2) call it.
            ls.ignore(r"skip_in_linear\.")
        layers[f"layers_{i}"] = layer
    layers["norm"] = _convert_adaln(tr.sub("norm"))
    p["transformer"] = layers
    if dcfg.long_skip_connection:
        p["skip_linear"] = _np_dense(e.sub("skip_linear"))
    else:
        e.ignore(r"skip_linear\.")  # built by the official DiT but only called with long_skip_connection
    p["conv1"] = _np_dense(e.sub("conv1"))
    p["t_embedder2"] = _convert_timestep_embedder(e.sub("t_embedder2"))
    wn = e.sub("wavenet")
    wp = {"cond_layer": wn.sub("cond_layer.conv.conv").conv1d_as_dense(bias=True)}
    for i in range(wcfg.num_layers):
        wp[f"in_layers_{i}"] = wn.sub(f"in_layers.{i}.conv.conv").conv1d(bias=True)
        wp[f"res_skip_layers_{i}"] = wn.sub(f"res_skip_layers.{i}.conv.conv").conv1d_as_dense(bias=True)
    p["wavenet"] = wp
    p["res_projection"] = _np_dense(e.sub("res_projection"))
    fl = e.sub("final_layer")
    p["final_layer"] = {"adaLN_modulation_1": _np_dense(fl.sub("adaLN_modulation.1")),
                        "linear": _np_dense(fl.sub("linear"))}
    p["conv2"] = e.sub("conv2").conv1d_as_dense(bias=True)
    return p


def _to_f32_tree(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), tree)


def _finish(sd: StateDict, params: dict, expected: dict, what: str) -> dict:
    sd.finish()
    params = _to_f32_tree(params)
    check_params_match(params, expected, what)
    return params


def length_regulator_from_torch(state_dict: Mapping[str, Any], config: S2MelConfig) -> dict:
    """``InterpolateRegulator.state_dict()`` (``s2mel.pth['net']['length_regulator']``) -> LR params."""
    sd = StateDict(_strip_module(state_dict))
    return _finish(sd, _convert_length_regulator(sd, config), abstract_params(config)["length_regulator"],
                   "length_regulator params")


def gpt_layer_from_torch(state_dict: Mapping[str, Any], config: S2MelConfig) -> dict:
    """``gpt_layer`` Sequential state dict (keys ``0.weight`` ...) -> GptLayer params."""
    sd = StateDict(_strip_module(state_dict))
    return _finish(sd, _convert_gpt_layer(sd, config), abstract_params(config)["gpt_layer"], "gpt_layer params")


def estimator_from_torch(state_dict: Mapping[str, Any], config: S2MelConfig) -> dict:
    """``CFM.state_dict()`` (``s2mel.pth['net']['cfm']``, keys ``estimator.*``) -> DiT params."""
    sd = StateDict(_strip_module(state_dict))
    return _finish(sd, _convert_estimator(sd, config), abstract_params(config)["estimator"], "estimator params")


_ENTRIES = ("cfm", "length_regulator", "gpt_layer")


def _strip_module(tensors: Mapping[str, Any]) -> dict:
    """Drop one leading DDP ``module.`` from each key (as ``load_checkpoint2`` does)."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in tensors.items()}


def _entries(state_dict: Mapping[str, Any]) -> dict[str, dict]:
    """Split a checkpoint into MyModel entries: ``{"cfm": {...}, "length_regulator": {...}, "gpt_layer": {...}}``.

    Accepts the ``s2mel.pth`` object (``{"net": {entry: state_dict}, "optimizer": ..., ...}``; other
    top-level items are ignored: optimizer/scheduler/ema/epoch/iters are training state), or a flat dict
    with keys ``net.<entry>.<key>``, ``models.<entry>.<key>`` (``MyModel.state_dict()``) or
    ``<entry>.<key>``; ``module.`` prefixes are dropped.
    """
    if "net" in state_dict and isinstance(state_dict["net"], Mapping):
        nested = state_dict["net"]
        entries = {name: _strip_module(dict(sub)) for name, sub in nested.items() if isinstance(sub, Mapping)}
    else:
        entries: dict[str, dict] = {}
        for k, v in state_dict.items():
            key = k[len("module."):] if k.startswith("module.") else k
            for pre in ("net.", "models."):
                if key.startswith(pre):
                    key = key[len(pre):]
                    break
            entry, _, rest = key.partition(".")
            if not rest:
                raise CheckpointError(f"s2mel checkpoint: key {k!r} does not name a MyModel entry")
            entries.setdefault(entry, {})[rest[len("module."):] if rest.startswith("module.") else rest] = v
    missing = [e for e in _ENTRIES if e not in entries]
    if missing:
        raise CheckpointError(f"s2mel checkpoint lacks {missing} (has {sorted(entries)})")
    extra = sorted(set(entries) - set(_ENTRIES))
    if extra:
        # load_checkpoint2 only loads the entries MyModel(use_gpt_latent=True) has; it skips the rest.
        warnings.warn(f"s2mel checkpoint: ignoring entries not used by MyModel(use_gpt_latent=True): {extra}",
                      stacklevel=3)
    return {e: entries[e] for e in _ENTRIES}


def from_torch(state_dict: Mapping[str, Any], config: S2MelConfig) -> dict:
    """The whole S2M (``s2mel.pth``) -> ``{"length_regulator", "gpt_layer", "estimator"}`` params.

    Strict: every tensor of the three entries is consumed or ignored with a reason, and the tree is
    checked against :func:`abstract_params`.
    """
    entries = _entries(state_dict)
    flat = {f"{e}.{k}": v for e, sub in entries.items() for k, v in sub.items()}
    sd = StateDict(flat)
    params = {
        "length_regulator": _convert_length_regulator(sd.sub("length_regulator"), config),
        "gpt_layer": _convert_gpt_layer(sd.sub("gpt_layer"), config),
        "estimator": _convert_estimator(sd.sub("cfm"), config),
    }
    return _finish(sd, params, abstract_params(config), "s2mel params")


# ------------------------------------------------------------------------------------------------
# Functional entry points
# ------------------------------------------------------------------------------------------------


def length_regulate(lr_params, config: S2MelConfig, x, ylens, out_len: int | None = None, x_lens=None,
                    dtype=jnp.float32):
    """Length regulator. x (B, T_in, C_in), ylens (B,) -> (B, out_len, C); ``out_len`` defaults to max(ylens)."""
    if out_len is None:
        out_len = int(np.max(np.asarray(ylens)))
    return _length_regulate(lr_params, config, x, jnp.asarray(ylens), out_len, x_lens, dtype)


@functools.partial(jax.jit, static_argnames=("config", "out_len", "dtype"))
def _length_regulate(lr_params, config, x, ylens, out_len, x_lens, dtype):
    mod = InterpolateRegulator(config.length_regulator, dtype=dtype)
    return mod.apply({"params": lr_params}, x, ylens, out_len, x_lens)


def gpt_layer_apply(gpt_params, config: S2MelConfig, latent, dtype=jnp.float32):
    """gpt_layer (B, m, 1280) -> (B, m, 1024)."""
    return GptLayer(config.gpt_layer_dims, dtype=dtype).apply({"params": gpt_params}, latent)


def estimate(est_params, config: S2MelConfig, x, prompt_x, x_lens, t, style, cond, *, drop_condition=None,
             per_item_padding: bool = False, dtype=jnp.float32, return_intermediates: bool = False):
    """The DiT velocity, channels-last: x/prompt_x (B, T, n_mels), cond (B, T, content_dim) -> (B, T, n_mels).

    With ``return_intermediates`` also returns ``{inter_name: array}`` in the official layouts
    (``inter_wavenet`` transposed to (B, H, T) as stored in the fixtures).
    """
    return _estimate(est_params, config, jnp.asarray(x), jnp.asarray(prompt_x), jnp.asarray(x_lens),
                     jnp.asarray(t, jnp.float32), jnp.asarray(style), jnp.asarray(cond),
                     None if drop_condition is None else jnp.asarray(drop_condition), per_item_padding, dtype,
                     return_intermediates)


@functools.partial(jax.jit, static_argnames=("config", "per_item_padding", "dtype", "return_intermediates"))
def _estimate(est_params, config, x, prompt_x, x_lens, t, style, cond, drop_condition, per_item_padding, dtype,
              return_intermediates):
    mod = DiT(config, dtype=dtype)
    args = (x, prompt_x, x_lens, t, style, cond, drop_condition, per_item_padding)
    if not return_intermediates:
        return mod.apply({"params": est_params}, *args)
    out, state = mod.apply({"params": est_params}, *args, mutable=["intermediates"])
    inter = {k: v[0] for k, v in state["intermediates"].items()}
    if "inter_wavenet" in inter:
        inter["inter_wavenet"] = jnp.swapaxes(inter["inter_wavenet"], 1, 2)
    return out, inter


def estimate_official_layout(est_params, config: S2MelConfig, x, prompt_x, x_lens, t, style, cond, **kw):
    """:func:`estimate` with the official ``(B, n_mels, T)`` layout for x, prompt_x and the output."""
    res = estimate(est_params, config, jnp.swapaxes(x, 1, 2), jnp.swapaxes(prompt_x, 1, 2), x_lens, t, style, cond,
                   **kw)
    if isinstance(res, tuple):
        return jnp.swapaxes(res[0], 1, 2), res[1]
    return jnp.swapaxes(res, 1, 2)


# ------------------------------------------------------------------------------------------------
# CFM sampler
# ------------------------------------------------------------------------------------------------


def euler_times(n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(t fed at each step, dt of each step), both (n_steps,) float32, as the official solver makes them.

    ``t_span = torch.linspace(0, 1, n+1)`` in float32 (first half ``start + step*i``, second half
    ``end - step*(n-i)``); ``dt_k = t_span[k] - t_span[k-1]``; ``t`` starts at ``t_span[0]`` and
    accumulates ``t += dt`` in float32.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    points = n_steps + 1
    f32 = np.float32
    step = (f32(1) - f32(0)) / f32(points - 1)
    span = np.empty(points, f32)
    for i in range(points):
        span[i] = f32(0) + step * f32(i) if i < points // 2 else f32(1) - step * f32(points - 1 - i)
    dts = np.array([span[k] - span[k - 1] for k in range(1, points)], f32)
    ts = np.empty(n_steps, f32)
    t = span[0]
    for k in range(n_steps):
        ts[k] = t
        t = f32(t + dts[k])
    return ts, dts


def cfm_inference(est_params, config: S2MelConfig, mu, x_lens, prompt, style, n_steps: int = 25,
                  cfg_rate: float = 0.7, *, noise=None, key=None, temperature: float = 1.0, prompt_lens=None,
                  per_item_padding: bool = True, dtype=jnp.float32, return_trajectory: bool = False):
    """Euler sampler of the CFM with classifier-free guidance (``BASECFM.inference`` + ``solve_euler``).

    mu (B, T, content_dim), x_lens (B,) valid frames, prompt (B, P, n_mels) reference mel, style
    (B, style_dim) -> mel (B, T, n_mels) whose prompt frames are 0 (slice them off afterwards).

    ``noise`` (B, T, n_mels) is the initial z (multiplied by ``temperature``); without it z is drawn
    from ``key``. ``prompt_lens`` (B,) lets each item have its own prompt length (default P for all).
    Each step evaluates the estimator once on the stacked batch [cond; uncond] (uncond zeroes prompt,
    style and mu), ``v = (1 + r) v_cond - r v_uncond``, ``x += dt v`` and re-zeroes the prompt frames.
    ``return_trajectory`` also returns ``{"step_x", "step_t", "step_dphi_cond", "step_dphi_uncond"}``
    (per step; ``step_dphi_uncond`` is zeros when ``cfg_rate == 0``).

    ``per_item_padding`` (default True): the WaveNet reflects at each item's ``x_lens`` so a padded item
    equals its own unpadded run. It changes nothing when ``x_lens`` equals T (infer_v2's B=1 call);
    False reproduces the official treatment of padded inputs (reflect at T).
    ``dtype`` is the estimator's compute dtype (bfloat16 on accelerators); x stays float32.
    """
    mu = jnp.asarray(mu)
    b, t_len, _ = mu.shape
    if noise is None:
        if key is None:
            raise ValueError("cfm_inference: give noise or a PRNG key")
        noise = jax.random.normal(key, (b, t_len, config.n_mels), jnp.float32)
    prompt = jnp.asarray(prompt, jnp.float32)
    p_len = prompt.shape[1]
    if p_len > t_len:
        raise ValueError(f"cfm_inference: prompt has {p_len} frames but mu only {t_len}")
    if prompt_lens is None:
        prompt_lens = jnp.full((b,), p_len, jnp.int32)
    ts, dts = euler_times(int(n_steps))
    res = _cfm_sample(est_params, config, mu, jnp.asarray(x_lens), prompt, jnp.asarray(prompt_lens),
                      jnp.asarray(style, jnp.float32), jnp.asarray(noise, jnp.float32), jnp.float32(temperature),
                      jnp.asarray(ts), jnp.asarray(dts), float(cfg_rate), per_item_padding, dtype, return_trajectory)
    return res if return_trajectory else res[0]


@functools.partial(jax.jit, static_argnames=("config", "cfg_rate", "per_item_padding", "dtype", "return_trajectory"))
def _cfm_sample(est_params, config, mu, x_lens, prompt, prompt_lens, style, noise, temperature, ts, dts, cfg_rate,
                per_item_padding, dtype, return_trajectory):
    b, t_len, _ = mu.shape
    is_prompt = (jnp.arange(t_len)[None, :] < prompt_lens[:, None])[:, :, None]
    prompt_x = jnp.zeros((b, t_len, config.n_mels), jnp.float32).at[:, : prompt.shape[1]].set(prompt)
    prompt_x = jnp.where(is_prompt, prompt_x, 0)
    x = jnp.where(is_prompt, 0, noise * temperature)
    model = DiT(config, dtype=dtype)
    use_cfg = cfg_rate > 0
    if use_cfg:
        st_prompt = jnp.concatenate([prompt_x, jnp.zeros_like(prompt_x)], axis=0)
        st_style = jnp.concatenate([style, jnp.zeros_like(style)], axis=0)
        st_mu = jnp.concatenate([mu, jnp.zeros_like(mu)], axis=0)
        st_lens = jnp.concatenate([x_lens, x_lens], axis=0)
    r_cond, r_uncond = np.float32(1.0 + cfg_rate), np.float32(cfg_rate)

    def step(x, t_dt):
        t, dt = t_dt
        if use_cfg:
            v_all = model.apply({"params": est_params}, jnp.concatenate([x, x], axis=0), st_prompt, st_lens,
                                jnp.full((2 * b,), t), st_style, st_mu, None, per_item_padding)
            v_cond, v_uncond = v_all[:b], v_all[b:]
            v = r_cond * v_cond - r_uncond * v_uncond
        else:
            v_cond = model.apply({"params": est_params}, x, prompt_x, x_lens, jnp.full((b,), t), style, mu, None,
                                 per_item_padding)
            v_uncond = jnp.zeros_like(v_cond)
            v = v_cond
        x_new = jnp.where(is_prompt, 0, x + dt * v)
        traj = (x, t, v_cond, v_uncond) if return_trajectory else None
        return x_new, traj

    x, traj = jax.lax.scan(step, x, (ts, dts))
    if not return_trajectory:
        return (x,)
    names = ("step_x", "step_t", "step_dphi_cond", "step_dphi_uncond")
    return x, dict(zip(names, traj))


# ------------------------------------------------------------------------------------------------
# Whole S2M step of infer_v2
# ------------------------------------------------------------------------------------------------


def synthesize_mel(params, config: S2MelConfig, S_ref, ref_mel, style, gpt_latent, S_code_emb, code_lens=None, *,
                   n_steps: int = 25, cfg_rate: float = 0.7, noise=None, key=None, temperature: float = 1.0,
                   ref_lens=None, S_ref_lens=None, per_item_padding: bool = True, dtype=jnp.float32,
                   return_intermediates: bool = False):
    """infer_v2's S2M steps, from codec/GPT outputs to the mel handed to the vocoder.

    S_ref (B, T_s, 1024) prompt semantic features (codec-quantized), ref_mel (B, P, n_mels) prompt mel,
    style (B, style_dim), gpt_latent (B, m, 1280), S_code_emb (B, m, 1024) = ``vq2emb(codes)``,
    code_lens (B,) (default m). Steps: ``prompt_condition = LR(S_ref, P)``; ``S_infer = S_code_emb +
    gpt_layer(gpt_latent)``; ``G = (code_lens * 1.72).long()``; ``cond = LR(S_infer, G)``;
    ``mu = [prompt_condition, cond]``; CFM; drop the prompt frames.

    Returns ``(vc_target (B, max G, n_mels), G (B,))``; frames >= G[b] are 0. With
    ``return_intermediates`` returns a dict of every intermediate (official names) instead.

    Batching: ``ref_lens``/``S_ref_lens``/``code_lens`` give each item its lengths (defaults: the full
    padded sizes, which is the official B=1 path); each item then matches its own B=1 run.
    ``noise`` is the initial CFM noise, (B, max(P_b + G_b), n_mels); without it, it is drawn from ``key``.
    """
    S_ref = jnp.asarray(S_ref, jnp.float32)
    ref_mel = jnp.asarray(ref_mel, jnp.float32)
    b, p_max = ref_mel.shape[0], ref_mel.shape[1]
    m = S_code_emb.shape[1]
    code_lens = np.full((b,), m, np.int64) if code_lens is None else np.asarray(code_lens, np.int64)
    ref_lens = np.full((b,), p_max, np.int64) if ref_lens is None else np.asarray(ref_lens, np.int64)
    S_ref_lens = np.full((b,), S_ref.shape[1], np.int64) if S_ref_lens is None else np.asarray(S_ref_lens, np.int64)
    target_lens = config.target_frames(code_lens)
    g_max = int(target_lens.max())
    total = ref_lens + target_lens
    t_len = int(total.max())
    if noise is None:
        if key is None:
            raise ValueError("synthesize_mel: give noise or a PRNG key")
        noise = jax.random.normal(key, (b, t_len, config.n_mels), jnp.float32)
    if tuple(noise.shape) != (b, t_len, config.n_mels):
        raise ValueError(f"synthesize_mel: noise shape {tuple(noise.shape)}, expected {(b, t_len, config.n_mels)}")
    ts, dts = euler_times(int(n_steps))
    out = _synthesize(params, config, S_ref, jnp.asarray(S_ref_lens), ref_mel, jnp.asarray(ref_lens),
                      jnp.asarray(style, jnp.float32), jnp.asarray(gpt_latent, jnp.float32),
                      jnp.asarray(S_code_emb, jnp.float32), jnp.asarray(code_lens), jnp.asarray(target_lens),
                      jnp.asarray(noise, jnp.float32), jnp.float32(temperature), jnp.asarray(ts), jnp.asarray(dts),
                      p_max, g_max, t_len, float(cfg_rate), per_item_padding, dtype)
    out["target_lengths"] = target_lens
    if return_intermediates:
        return out
    return out["vc_target"], target_lens


@functools.partial(jax.jit, static_argnames=("config", "p_max", "g_max", "t_len", "cfg_rate", "per_item_padding",
                                             "dtype"))
def _synthesize(params, config, S_ref, S_ref_lens, ref_mel, ref_lens, style, gpt_latent, S_code_emb, code_lens,
                target_lens, noise, temperature, ts, dts, p_max, g_max, t_len, cfg_rate, per_item_padding, dtype):
    lr = InterpolateRegulator(config.length_regulator, dtype=dtype)
    prompt_condition = lr.apply({"params": params["length_regulator"]}, S_ref, ref_lens, p_max, S_ref_lens)
    gpt_out = GptLayer(config.gpt_layer_dims, dtype=dtype).apply({"params": params["gpt_layer"]}, gpt_latent)
    S_infer = S_code_emb + gpt_out.astype(jnp.float32)
    cond = lr.apply({"params": params["length_regulator"]}, S_infer, target_lens, g_max, code_lens)
    # mu[b] = [prompt_condition[b, :P_b], cond[b, :G_b]], zero-padded to t_len.
    pos = jnp.arange(t_len)[None, :]
    src = jnp.where(pos < ref_lens[:, None], pos, p_max + pos - ref_lens[:, None])
    both = jnp.concatenate([prompt_condition, cond], axis=1)
    src = jnp.clip(src, 0, both.shape[1] - 1)
    total = ref_lens + target_lens
    mu = jnp.take_along_axis(both, src[:, :, None], axis=1)
    mu = jnp.where((pos < total[:, None])[:, :, None], mu, 0)
    (full,) = _cfm_sample(params["estimator"], config, mu, total, ref_mel, ref_lens, style, noise, temperature, ts,
                          dts, cfg_rate, per_item_padding, dtype, False)
    j = jnp.arange(g_max)[None, :]
    idx = jnp.clip(ref_lens[:, None] + j, 0, t_len - 1)
    vc_target = jnp.take_along_axis(full, idx[:, :, None], axis=1)
    vc_target = jnp.where((j < target_lens[:, None])[:, :, None], vc_target, 0)
    return {
        "prompt_condition": prompt_condition,
        "gpt_layer_out": gpt_out,
        "S_infer": S_infer,
        "cond": cond,
        "cat_condition": mu,
        "vc_target_full": full,
        "vc_target": vc_target,
    }


# ------------------------------------------------------------------------------------------------
# Training loss
# ------------------------------------------------------------------------------------------------


def cfm_loss(est_params, config: S2MelConfig, x1, mu, style, prompt_lens, x_lens, key, *,
             cond_drop_prob: float | None = None, per_example_drop: bool = False, wavenet_dropout: bool = True,
             per_item_padding: bool = True, dtype=jnp.float32):
    """Conditional flow-matching loss (official ``BASECFM.forward`` + the DiT's training dropout). Pure.

    x1 (B, T, n_mels) target mel, mu (B, T, content_dim) content condition (length-regulated),
    style (B, style_dim), prompt_lens (B,), x_lens (B,) valid frames, key a PRNG key.

    t ~ U(0, 1) per item, z ~ N(0, I); ``y = (1 - (1 - sigma_min) t) z + t x1``, target
    ``u = x1 - (1 - sigma_min) z``. The prompt region ``[:prompt_len]`` of x1 is given as ``prompt_x``
    and zeroed in y. Loss: L1 (``reg_loss_type='l2'``: squared error) over frames
    ``[prompt_len, x_len)`` and all mel bins, mean per utterance, then mean over the batch.

    CFG condition dropout: with probability ``cond_drop_prob`` (default ``config.dit.class_dropout_prob``)
    the prompt, (projected) content and style inputs are zeroed: one draw for the whole batch
    (official) or one per example (``per_example_drop``). ``wavenet_dropout`` applies the WaveNet's
    ``p_dropout`` (training mode). ``per_item_padding`` (default) makes each item's loss independent of
    the padding (reflect padding at its own length), as at B=1 inference.

    Returns ``(loss, aux)`` with ``aux = {"per_utterance": (B,), "t": (B,), "cond_dropped": (B,)}``.
    """
    x1 = jnp.asarray(x1, jnp.float32)
    b, t_len, n_mels = x1.shape
    k_t, k_z, k_drop, k_dropout = jax.random.split(key, 4)
    sigma = config.sigma_min
    t = jax.random.uniform(k_t, (b,), jnp.float32)
    z = jax.random.normal(k_z, x1.shape, jnp.float32)
    tt = t[:, None, None]
    y = (1 - (1 - sigma) * tt) * z + tt * x1
    u = x1 - (1 - sigma) * z
    frames = jnp.arange(t_len)[None, :]
    is_prompt = frames < jnp.asarray(prompt_lens)[:, None]
    valid = frames < jnp.asarray(x_lens)[:, None]
    prompt_x = jnp.where(is_prompt[:, :, None], x1, 0)
    y = jnp.where(is_prompt[:, :, None], 0, y)
    p = config.dit.class_dropout_prob if cond_drop_prob is None else cond_drop_prob
    if per_example_drop:
        dropped = jax.random.uniform(k_drop, (b,)) < p
    else:
        dropped = jnp.broadcast_to(jax.random.uniform(k_drop, ()) < p, (b,))
    v = DiT(config, dtype=dtype).apply(
        {"params": est_params}, y, prompt_x, jnp.asarray(x_lens), t, style, mu, dropped, per_item_padding,
        not wavenet_dropout, rngs={"dropout": k_dropout},
    )
    err = jnp.abs(v - u) if config.reg_loss_type == "l1" else jnp.square(v - u)
    weight = (valid & ~is_prompt).astype(jnp.float32)
    per_utt = jnp.sum(err * weight[:, :, None], axis=(1, 2)) / jnp.maximum(n_mels * jnp.sum(weight, axis=1), 1.0)
    return jnp.mean(per_utt), {"per_utterance": per_utt, "t": t, "cond_dropped": dropped}
