"""WeNet-style Conformer encoder used by the IndexTTS2 conditioning paths (reference §5.1).

Only the configuration the release uses is implemented: ``conv2d2`` subsampling, ``rel_pos``
attention (the variant *without* ``rel_shift``), pre-norm blocks without macaron FF, with the
convolution module (kernel 15), SiLU activations, LayerNorm eps 1e-5, no dropout (inference).

Shapes (B batch, T input frames, F input features, T' = (T - 1) // 2, C = output_size):
  xs (B, T, F), lengths (B,) -> ys (B, T', C), mask (B, T') bool.

Parameter layout notes (the converter is :func:`conformer_from_torch`):
  * ``embed/conv`` is a Flax Conv kernel (3, 3, 1, C).
  * ``embed/out`` is a Dense whose kernel rows are ordered frequency-major ``f * C + c`` so that the
    channels-last conv output (B, T', F', C) flattens without a transpose. The official Linear
    flattens channel-major (``c * F' + f``); the converter permutes its rows accordingly.
  * The sinusoid table ``embed.pos_enc.pe`` is recomputed, never stored; conversion checks it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax.convert.state_dict import StateDict
from indextts2_jax.errors import CheckpointError, ConfigError
from indextts2_jax.nn.depthwise import DepthwiseConv1D
from indextts2_jax.nn.layers import dense, layer_norm


def sinusoid_table(length: int, dim: int) -> np.ndarray:
    """The standard sinusoid table (length, dim): even dims sin, odd dims cos, ``10000^(2i/dim)``.

    Computed like the official buffer (float32 ``exp(arange * -(ln 10000 / dim))``) so it matches to
    float32 rounding.
    """
    position = np.arange(length, dtype=np.float32)[:, None]
    div_term = np.exp(np.arange(0, dim, 2, dtype=np.float32) * np.float32(-(math.log(10000.0) / dim)))
    table = np.zeros((length, dim), dtype=np.float32)
    table[:, 0::2] = np.sin(position * div_term)
    table[:, 1::2] = np.cos(position * div_term)
    return table


@dataclass(frozen=True)
class ConformerConfig:
    """Constructor kwargs of the official ``ConformerEncoder`` that the release uses."""

    input_size: int = 1024
    output_size: int = 512
    attention_heads: int = 8
    linear_units: int = 2048
    num_blocks: int = 6
    cnn_module_kernel: int = 15
    max_len: int = 5000  # rows of the sinusoid buffer (only checked by the converter)

    @classmethod
    def from_official(cls, d: Mapping) -> "ConformerConfig":
        """From ``ConformerEncoder(**d)`` kwargs; rejects settings this port does not implement."""
        d = dict(d)
        required = {
            "input_layer": "conv2d2",
            "pos_enc_layer_type": "rel_pos",
            "normalize_before": True,
            "concat_after": False,
            "macaron_style": False,
            "use_cnn_module": True,
        }
        for key, want in required.items():
            if key in d and d.pop(key) != want:
                raise ConfigError(f"ConformerEncoder: only {key}={want!r} is implemented")
        rate = d.pop("dropout_rate", 0.0)
        del rate  # inference only: dropout is off
        known = {"input_size", "output_size", "attention_heads", "linear_units", "num_blocks", "cnn_module_kernel"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"ConformerEncoder: unknown kwargs {sorted(unknown)}")
        cfg = cls(**d)
        if cfg.output_size % cfg.attention_heads:
            raise ConfigError("ConformerEncoder: output_size must be divisible by attention_heads")
        if cfg.cnn_module_kernel % 2 != 1:
            raise ConfigError("ConformerEncoder: cnn_module_kernel must be odd")
        return cfg

    @property
    def subsampled_features(self) -> int:
        """F' = (F - 1) // 2: the frequency width after the stride-2 3x3 conv."""
        return (self.input_size - 1) // 2


def subsampled_mask(lengths: jax.Array, num_frames: int) -> jax.Array:
    """(B,) valid lengths -> (B, T') bool mask of the subsampled frames (official ``mask[:, :, 2::2]``)."""
    mask = jnp.arange(num_frames)[None, :] < lengths[:, None]
    return mask[:, 2::2]


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with the WeNet relative-position terms, without ``rel_shift``.

    score[b,h,i,j] = ((q_i + u_h) . k_j + (q_i + v_h) . p_j) / sqrt(d_k), p = linear_pos(pe[j]).
    """

    size: int
    heads: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, pos_emb: jax.Array) -> jax.Array:
        """x (B, T, C), mask (B, T) bool key mask, pos_emb (T, C) -> (B, T, C)."""
        b, t, c = x.shape
        dk = c // self.heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = dense(c, ("embed", "mlp"), name="linear_q", **kw)(x).reshape(b, t, self.heads, dk)
        k = dense(c, ("embed", "mlp"), name="linear_k", **kw)(x).reshape(b, t, self.heads, dk)
        v = dense(c, ("embed", "mlp"), name="linear_v", **kw)(x).reshape(b, t, self.heads, dk)
        p = dense(c, ("embed", "mlp"), use_bias=False, name="linear_pos", **kw)(pos_emb).reshape(t, self.heads, dk)
        bias_init = nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("heads", "kv"))
        pos_bias_u = self.param("pos_bias_u", bias_init, (self.heads, dk), self.param_dtype)
        pos_bias_v = self.param("pos_bias_v", bias_init, (self.heads, dk), self.param_dtype)
        content = jnp.einsum("bihd,bjhd->bhij", q + pos_bias_u.astype(q.dtype), k)
        position = jnp.einsum("bihd,jhd->bhij", q + pos_bias_v.astype(q.dtype), p)
        scores = (content + position).astype(jnp.float32) / math.sqrt(dk)
        key_mask = mask[:, None, None, :]
        scores = jnp.where(key_mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1) * key_mask  # masked keys get exactly 0 (official re-zeroing)
        out = jnp.einsum("bhij,bjhd->bihd", probs.astype(v.dtype), v).reshape(b, t, c)
        return dense(c, ("mlp", "embed"), name="linear_out", **kw)(out)


class ConvolutionModule(nn.Module):
    """Pointwise conv -> GLU -> depthwise conv (same padding) -> LayerNorm -> SiLU -> pointwise conv."""

    channels: int
    kernel_size: int = 15
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """x (B, T, C), mask (B, T) bool -> (B, T, C); padded frames are zero in and out."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = jnp.where(mask[:, :, None], x, 0)
        x = dense(2 * self.channels, ("embed", "mlp"), name="pointwise_conv1", **kw)(x)
        value, gate = jnp.split(x, 2, axis=-1)
        x = value * jax.nn.sigmoid(gate)
        pad = (self.kernel_size - 1) // 2
        x = DepthwiseConv1D(
            self.channels,
            self.kernel_size,
            (pad, pad),
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("kernel", "conv_in", "conv_out")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
            name="depthwise_conv",
            **kw,
        )(x)
        x = layer_norm("norm", param_dtype=self.param_dtype)(x).astype(self.dtype)
        x = jax.nn.silu(x)
        x = dense(self.channels, ("mlp", "embed"), name="pointwise_conv2", **kw)(x)
        return jnp.where(mask[:, :, None], x, 0)


class FeedForward(nn.Module):
    """Linear -> SiLU -> Linear."""

    channels: int
    hidden: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = jax.nn.silu(dense(self.hidden, ("embed", "mlp"), name="w_1", **kw)(x))
        return dense(self.channels, ("mlp", "embed"), name="w_2", **kw)(x)


class ConformerBlock(nn.Module):
    """x += MHSA(LN(x)); x += Conv(LN(x)); x += FF(LN(x)); x = LN(x)."""

    config: ConformerConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, pos_emb: jax.Array) -> jax.Array:
        """x (B, T', C), mask (B, T'), pos_emb (T', C) -> (B, T', C)."""
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = cfg.output_size

        def norm(name):
            return lambda y: layer_norm(name, param_dtype=self.param_dtype)(y).astype(self.dtype)

        x = x + RelPositionAttention(c, cfg.attention_heads, name="self_attn", **kw)(norm("norm_mha")(x), mask, pos_emb)
        x = x + ConvolutionModule(c, cfg.cnn_module_kernel, name="conv_module", **kw)(norm("norm_conv")(x), mask)
        x = x + FeedForward(c, cfg.linear_units, name="feed_forward", **kw)(norm("norm_ff")(x))
        x = norm("norm_final")(x)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class _KernelBias(nn.Module):
    """Declares ``kernel`` and ``bias`` exactly as nn.Conv / :func:`dense` do (names, inits, logical
    axes) and returns them, for layers that compute with their params in a custom way."""

    kernel_shape: tuple[int, ...]
    kernel_axes: tuple[str | None, ...]
    bias_axis: str
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), self.kernel_axes),
                            self.kernel_shape, self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.bias_axis,)),
                          (self.kernel_shape[-1],), self.param_dtype)
        return kernel, bias


def subsampling_freq_chunk(freq_out: int, channels: int, target_rows: int = 4096) -> int | None:
    """Frequency bins per chunk for the chunked subsampling (see :class:`Conv2dSubsampling2`).

    The largest proper divisor ``d`` of ``freq_out`` (F') with ``d * channels <= target_rows``
    (contraction rows per chunk); None when there is none (F' prime, or 1).
    """
    best = None
    for d in range(2, freq_out):
        if freq_out % d == 0 and d * channels <= target_rows:
            best = d
    return best


class Conv2dSubsampling2(nn.Module):
    """Conv2d(1 -> C, 3x3, stride 2, no padding) + ReLU, flatten, Linear(C * F' -> C), then x * sqrt(C).

    Params: ``conv/kernel`` (3, 3, 1, C), ``conv/bias`` (C,), ``out/kernel`` (F' * C, C) with
    frequency-major rows, ``out/bias`` (C,).

    Two equal computations (float32 sums in another order: ~1e-6 relative):

    * plain: the whole conv output (B, T', F', C) then one (B T', F' C) x (F' C, C) matmul;
    * chunked (``chunked=True``, or ``None`` = automatically on CPU when the Linear's kernel is
      >= 64 MB: the official 261632 x 512 one is 536 MB): a ``lax.scan`` over chunks of ``fc``
      frequency bins (:func:`subsampling_freq_chunk`) computes the conv of the chunk's input columns
      and accumulates its (B T', fc C) x (fc C, C) product. On a 2-core CPU the one matmul with
      K = 261632 runs at ~143 GFLOP/s against ~195 for K <= 32768, and the 260 MB conv output never
      materializes: the official-size subsampling takes 0.36 s instead of 0.63 s.
    """

    config: ConformerConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    chunked: bool | None = None

    CHUNK_MIN_BYTES = 64 << 20

    @nn.compact
    def __call__(self, xs: jax.Array) -> jax.Array:
        """xs (B, T, F) -> (B, T', C) already scaled by sqrt(C)."""
        c = self.config.output_size
        b, t_in, f_in = xs.shape
        t, f = (t_in - 3) // 2 + 1, (f_in - 3) // 2 + 1
        kernel, bias = _KernelBias((3, 3, 1, c), ("kernel", None, "conv_in", "conv_out"), "conv_out",
                                   self.param_dtype, name="conv")()
        w, w_bias = _KernelBias((f * c, c), ("mlp", "embed"), "embed", self.param_dtype, name="out")()
        kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
        w, w_bias = w.astype(self.dtype), w_bias.astype(self.dtype)
        x = xs.astype(self.dtype)[..., None]

        def conv_relu(cols):  # (B, T, 2 n + 1, 1) -> (B, T', n, C)
            y = jax.lax.conv_general_dilated(cols, kernel, (2, 2), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jax.nn.relu(y + bias)

        fc = subsampling_freq_chunk(f, c)
        chunked = self.chunked
        if chunked is None:
            chunked = jax.default_backend() == "cpu" and w.size * w.dtype.itemsize >= self.CHUNK_MIN_BYTES
        if chunked and fc is not None:
            w_chunks = w.reshape(f // fc, fc * c, c)  # frequency-major rows: contiguous chunks

            def body(acc, i_w):
                i, w_i = i_w
                cols = jax.lax.dynamic_slice_in_dim(x, 2 * fc * i, 2 * fc + 1, axis=2)
                y = conv_relu(cols).reshape(b, t, fc * c)
                return acc + jnp.einsum("btk,kn->btn", y, w_i), None

            out, _ = jax.lax.scan(body, jnp.zeros((b, t, c), self.dtype), (jnp.arange(f // fc), w_chunks))
            out = out + w_bias
        else:
            y = conv_relu(x).reshape(b, t, f * c)  # frequency-major; the converter permutes the Linear rows
            out = jnp.einsum("btk,kn->btn", y, w) + w_bias
        return out * math.sqrt(c)


class ConformerEncoder(nn.Module):
    """The official ``ConformerEncoder`` (conv2d2, rel_pos, pre-norm, conv module)."""

    config: ConformerConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    subsampling_chunked: bool | None = None  # Conv2dSubsampling2.chunked (None: automatic)

    @nn.compact
    def __call__(self, xs: jax.Array, lengths: jax.Array, return_intermediates: bool = False):
        """xs (B, T, F) float, lengths (B,) int -> (ys (B, T', C), mask (B, T') bool).

        With ``return_intermediates`` a third item is a dict: ``embed_x`` (B, T', C), ``pos_emb`` (T', C),
        ``layer_outputs`` (num_blocks, B, T', C).
        """
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        mask = subsampled_mask(lengths, xs.shape[1])
        x = Conv2dSubsampling2(cfg, name="embed", chunked=self.subsampling_chunked, **kw)(xs)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        t = x.shape[1]
        pos_emb = jnp.asarray(sinusoid_table(t, cfg.output_size), dtype=self.dtype)
        embed_x = x
        layer_outputs = []
        for i in range(cfg.num_blocks):
            x = ConformerBlock(cfg, name=f"encoders_{i}", **kw)(x, mask, pos_emb)
            layer_outputs.append(x)
        ys = layer_norm("after_norm", param_dtype=self.param_dtype)(x).astype(self.dtype)
        if return_intermediates:
            return ys, mask, {"embed_x": embed_x, "pos_emb": pos_emb, "layer_outputs": jnp.stack(layer_outputs)}
        return ys, mask


def conformer_from_torch(sd: StateDict, config: ConformerConfig) -> dict:
    """Params of :class:`ConformerEncoder` from an official ``ConformerEncoder`` state dict view.

    Consumes every key under ``sd`` (``embed.pos_enc.pe`` is checked against the recomputed table).
    The caller runs ``finish()`` on the root view.
    """
    c, f = config.output_size, config.subsampled_features
    heads = config.attention_heads
    emb = sd.sub("embed")
    pe = emb.take("pos_enc.pe")
    rows = min(pe.shape[1], 256)
    if pe.shape[-1] != c or not np.allclose(pe[0, :rows], sinusoid_table(rows, c), atol=1e-4):
        raise CheckpointError(f"{emb.key('pos_enc.pe')}: not the standard sinusoid table of width {c}")
    out_w = emb.sub("out.0").take("weight", (c, c * f))
    # channel-major (c * F' + f) columns -> frequency-major (f * C + c) kernel rows
    out_kernel = out_w.reshape(c, c, f).transpose(2, 1, 0).reshape(f * c, c)
    params = {
        "embed": {
            "conv": emb.sub("conv.0").conv2d(bias=True),
            "out": {"kernel": np.ascontiguousarray(out_kernel), "bias": emb.sub("out.0").take("bias", (c,))},
        },
        "after_norm": sd.sub("after_norm").layer_norm(),
    }
    for i in range(config.num_blocks):
        blk = sd.sub(f"encoders.{i}")
        att = blk.sub("self_attn")
        conv = blk.sub("conv_module")
        params[f"encoders_{i}"] = {
            "self_attn": {
                "linear_q": att.sub("linear_q").linear(bias=True),
                "linear_k": att.sub("linear_k").linear(bias=True),
                "linear_v": att.sub("linear_v").linear(bias=True),
                "linear_out": att.sub("linear_out").linear(bias=True),
                "linear_pos": att.sub("linear_pos").linear(bias=False),
                "pos_bias_u": att.take("pos_bias_u", (heads, c // heads)),
                "pos_bias_v": att.take("pos_bias_v", (heads, c // heads)),
            },
            "conv_module": {
                "pointwise_conv1": conv.sub("pointwise_conv1").conv1d_as_dense(bias=True),
                "depthwise_conv": conv.sub("depthwise_conv").conv1d(bias=True),
                "norm": conv.sub("norm").layer_norm(),
                "pointwise_conv2": conv.sub("pointwise_conv2").conv1d_as_dense(bias=True),
            },
            "feed_forward": {
                "w_1": blk.sub("feed_forward.w_1").linear(bias=True),
                "w_2": blk.sub("feed_forward.w_2").linear(bias=True),
            },
            "norm_mha": blk.sub("norm_mha").layer_norm(),
            "norm_conv": blk.sub("norm_conv").layer_norm(),
            "norm_ff": blk.sub("norm_ff").layer_norm(),
            "norm_final": blk.sub("norm_final").layer_norm(),
        }
    return params


def init_shapes(module: nn.Module, *args) -> dict:
    """Plain (unboxed) abstract params of ``module.init(key, *args)``: a tree of ShapeDtypeStructs."""
    shapes = jax.eval_shape(lambda *a: module.init(jax.random.PRNGKey(0), *a), *args)
    return nn.unbox(shapes)["params"]


def from_torch(state_dict: Mapping[str, np.ndarray], config: ConformerConfig) -> dict:
    """Strict conversion of a standalone official ``ConformerEncoder`` state dict to params."""
    from indextts2_jax.convert.state_dict import check_params_match

    sd = StateDict(state_dict)
    params = conformer_from_torch(sd, config)
    sd.finish()
    xs = jax.ShapeDtypeStruct((1, 9, config.input_size), jnp.float32)
    lengths = jax.ShapeDtypeStruct((1,), jnp.int32)
    check_params_match(params, init_shapes(ConformerEncoder(config), xs, lengths), "ConformerEncoder params")
    return params
