"""BigVGAN v2 generator (mel -> waveform), channels-last Flax port, and the official checkpoint converter.

Structure (official ``BigVGAN`` with ``resblock="1"``):
  conv_pre Conv1d(num_mels -> C0, k7, p3)
  for stage i: ConvTranspose1d(C_i -> C_i/2, k_i, stride u_i, padding (k_i-u_i)//2), then the mean of
               len(resblock_kernel_sizes) AMPBlock1s (one per kernel size)
  activation_post (anti-aliased Snake/SnakeBeta) -> conv_post Conv1d(C_last -> 1, k7, p3, bias optional)
  -> tanh, or clamp to [-1, 1] when ``use_tanh_at_final`` is false.
AMPBlock1(k, dilations): for each d: x += conv2(act(conv1_d(act(x)))), conv1 with dilation d, conv2 dilation 1,
both "same" padded; every act is an anti-aliased activation (``indextts2_jax.nn.alias_free``).

Shapes: mel (B, T, num_mels) -> wav (B, T * prod(upsample_rates)).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax.convert.state_dict import StateDict, check_params_match
from indextts2_jax.errors import CheckpointError, ConfigError
from indextts2_jax.nn.alias_free import SnakeActivation1d, default_resample_filter

Array = jnp.ndarray

# Keys of the official BigVGAN config.json that do not shape the generator (training, discriminators, data).
_NON_GENERATOR_KEYS = frozenset(
    {
        "num_gpus", "batch_size", "learning_rate", "adam_b1", "adam_b2", "lr_decay", "seed",
        "use_cqtd_instead_of_mrd", "cqtd_filters", "cqtd_max_filters", "cqtd_filters_scale", "cqtd_dilations",
        "cqtd_hop_lengths", "cqtd_n_octaves", "cqtd_bins_per_octaves", "mpd_reshapes", "use_spectral_norm",
        "discriminator_channel_mult", "use_multiscale_melloss", "lambda_melloss", "clip_grad_norm",
        "segment_size", "num_freq", "fmax_for_loss", "normalize_volume", "num_workers", "dist_config",
        "resolutions", "mel_fmax_for_loss", "use_cuda_kernel", "weight_norm_removed",
    }
)


@dataclass(frozen=True)
class BigVGANConfig:
    """BigVGAN v2 generator hyperparameters; defaults = ``nvidia/bigvgan_v2_22khz_80band_256x``."""

    num_mels: int = 80
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4)
    upsample_initial_channel: int = 1536
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    activation: str = "snakebeta"
    snake_logscale: bool = True
    use_tanh_at_final: bool = False
    use_bias_at_final: bool = False
    # Audio settings (not used by the generator itself; the mel front-end and losses read them).
    sampling_rate: int = 22050
    n_fft: int = 1024
    hop_size: int = 256
    win_size: int = 1024
    fmin: float = 0.0
    fmax: float | None = None

    def __post_init__(self):
        if self.resblock != "1":
            # The official AMPBlock2.forward returns None, so no working checkpoint uses it.
            raise ConfigError(f"BigVGAN resblock {self.resblock!r} is not supported (only '1', AMPBlock1)")
        if self.activation not in ("snake", "snakebeta"):
            raise ConfigError(f"BigVGAN activation must be 'snake' or 'snakebeta', got {self.activation!r}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ConfigError("upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ConfigError("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise ConfigError("upsample_initial_channel must be divisible by 2**len(upsample_rates)")

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame (prod(upsample_rates))."""
        return int(np.prod(self.upsample_rates))

    def stage_channels(self, i: int) -> int:
        """Channels after up-sampling stage ``i``."""
        return self.upsample_initial_channel // 2 ** (i + 1)

    @classmethod
    def from_official(cls, h: Mapping[str, Any]) -> BigVGANConfig:
        """From the official hyperparameters (config.json / AttrDict ``h``).

        Training, discriminator and data keys are accepted and ignored; unknown keys raise ConfigError.
        Missing ``use_tanh_at_final``/``use_bias_at_final`` default to True as in the official code.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(h) - fields - _NON_GENERATOR_KEYS)
        if unknown:
            raise ConfigError(f"unknown BigVGAN config keys: {unknown}")
        kw: dict[str, Any] = {k: v for k, v in h.items() if k in fields}
        for key in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
            if key in kw:
                kw[key] = tuple(int(v) for v in kw[key])
        if "resblock_dilation_sizes" in kw:
            kw["resblock_dilation_sizes"] = tuple(tuple(int(v) for v in d) for d in kw["resblock_dilation_sizes"])
        kw["resblock"] = str(kw.get("resblock", "1"))
        kw["use_tanh_at_final"] = bool(h.get("use_tanh_at_final", True))
        kw["use_bias_at_final"] = bool(h.get("use_bias_at_final", True))
        return cls(**kw)


def _conv_init(std: float | None):
    init = nn.initializers.normal(std) if std is not None else nn.initializers.lecun_normal()
    return nn.with_logical_partitioning(init, ("kernel", "conv_in", "conv_out"))


_bias_init = nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",))


def _weight_normed(module: nn.Module, kernel: Array, norm_axes: tuple[int, ...], gain_axis_name: str) -> Array:
    """``gain * kernel / ||kernel||`` with the norm over ``norm_axes``; ``gain`` (one per remaining axis entry)
    is a param initialised to the initial kernel's norm, so the initial weight is the drawn kernel.
    """
    kept = [a for a in range(kernel.ndim) if a not in norm_axes]
    (axis,) = kept
    k32 = kernel.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(k32**2, axis=norm_axes, keepdims=True))

    def gain_init(_, shape, dtype):
        return norm.reshape(shape).astype(dtype)

    gain = module.param("gain", nn.with_logical_partitioning(gain_init, (gain_axis_name,)), (kernel.shape[axis],),
                        module.param_dtype)
    shape = [1] * kernel.ndim
    shape[axis] = kernel.shape[axis]
    return k32 * (gain.astype(jnp.float32).reshape(shape) / jnp.maximum(norm, 1e-12))


class Conv1d(nn.Module):
    """'Same'-padded 1-D conv on (B, T, C_in) -> (B, T, C_out); params ``kernel`` (k, C_in, C_out), ``bias``.

    ``weight_norm=True``: ``kernel`` is the direction v and ``gain`` (C_out,) the norm g (torch ``weight_norm``).
    """

    features: int
    kernel_size: int
    dilation: int = 1
    use_bias: bool = True
    init_std: float | None = 0.01
    weight_norm: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param(
            "kernel", _conv_init(self.init_std), (self.kernel_size, x.shape[-1], self.features), self.param_dtype
        )
        if self.weight_norm:
            kernel = _weight_normed(self, kernel, (0, 1), "conv_out")
        pad = (self.kernel_size * self.dilation - self.dilation) // 2
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=(1,),
            padding=[(pad, pad)],
            rhs_dilation=(self.dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"),
            precision=self.precision,
        )
        if self.use_bias:
            y = y + self.param("bias", _bias_init, (self.features,), self.param_dtype).astype(self.dtype)
        return y


class ConvTranspose1d(nn.Module):
    """PyTorch-semantics ConvTranspose1d on (B, T, C_in) -> (B, (T-1)*stride - 2*padding + k, C_out).

    Param ``kernel`` (k, C_in, C_out): input frame t adds ``x[t] @ kernel[j]`` to output ``t*stride + j - padding``
    (torch weight (C_in, C_out, k) transposed, no flip). Computed in polyphase form: one matmul with all taps,
    then an overlap-add of ``ceil(k/stride)`` shifted blocks, so no zero-stuffed samples are multiplied.
    ``weight_norm=True``: ``gain`` (C_in,) as torch's ``weight_norm`` on a (C_in, C_out, k) weight.
    """

    features: int
    kernel_size: int
    stride: int
    padding: int = 0
    init_std: float | None = 0.01
    weight_norm: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, u = self.kernel_size, self.stride
        kernel = self.param("kernel", _conv_init(self.init_std), (k, x.shape[-1], self.features), self.param_dtype)
        if self.weight_norm:
            kernel = _weight_normed(self, kernel, (0, 2), "conv_in")
        bias = self.param("bias", _bias_init, (self.features,), self.param_dtype)
        n_blocks = -(-k // u)
        kernel = jnp.pad(kernel.astype(self.dtype), ((0, n_blocks * u - k), (0, 0), (0, 0)))
        kernel = kernel.reshape(n_blocks, u, x.shape[-1], self.features)
        taps = jnp.einsum("btc,nucd->btnud", x.astype(self.dtype), kernel, precision=self.precision)
        b, t = x.shape[:2]
        blocks = None
        for i in range(n_blocks):
            shifted = jnp.pad(taps[:, :, i], ((0, 0), (i, n_blocks - 1 - i), (0, 0), (0, 0)))
            blocks = shifted if blocks is None else blocks + shifted
        full = blocks.reshape(b, (t + n_blocks - 1) * u, self.features)
        out_len = (t - 1) * u - 2 * self.padding + k
        return full[:, self.padding : self.padding + out_len] + bias.astype(self.dtype)


class AMPBlock1(nn.Module):
    """Residual block of (anti-aliased act -> dilated conv -> act -> conv) pairs; (B, T, C) -> (B, T, C)."""

    channels: int
    kernel_size: int
    dilations: tuple[int, ...]
    use_beta: bool = True
    logscale: bool = True
    weight_norm: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    precision: Any = None
    init_std: float | None = 0.01

    @nn.compact
    def __call__(self, x: Array) -> Array:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
                      weight_norm=self.weight_norm, init_std=self.init_std)
        for j, d in enumerate(self.dilations):
            act1 = SnakeActivation1d(self.channels, self.use_beta, self.logscale, param_dtype=self.param_dtype,
                                     name=f"activations_{2 * j}")
            act2 = SnakeActivation1d(self.channels, self.use_beta, self.logscale, param_dtype=self.param_dtype,
                                     name=f"activations_{2 * j + 1}")
            h = act1(x)
            h = Conv1d(self.channels, self.kernel_size, dilation=d, name=f"convs1_{j}", **common)(h)
            h = act2(h)
            h = Conv1d(self.channels, self.kernel_size, dilation=1, name=f"convs2_{j}", **common)(h)
            x = x + h
        return x


class BigVGAN(nn.Module):
    """BigVGAN v2 generator: mel (B, T, num_mels) -> waveform (B, T * hop_length), in [-1, 1].

    ``remat=True`` rematerialises each AMP block in the backward pass (training memory).
    ``weight_norm=True`` parametrises every conv as the official training does (``kernel`` = v, ``gain`` = g);
    :func:`remove_weight_norm` folds such params into the plain (inference) layout.
    ``init_std``: kernels of the upsampling and AMP-block convs ~ N(0, init_std) at init, the official
    0.01; None = fan-in scaled (lecun normal); ``conv_pre`` is always fan-in scaled and ``conv_post``
    always N(0, 0.01) (as officially). Narrow generators need None: each upsampling conv multiplies
    the signal by about ``0.01 * sqrt(2 C_in)``, so a 64-channel demo generator starts at ~1e-9
    output, where the mel loss's ``log(max(mel, 1e-5))`` has zero gradient (the official 1536
    channels start near 1e-4).
    """

    config: BigVGANConfig = BigVGANConfig()
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    precision: Any = None
    remat: bool = False
    weight_norm: bool = False
    init_std: float | None = 0.01

    @nn.compact
    def __call__(self, mel: Array) -> Array:
        cfg = self.config
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
                      weight_norm=self.weight_norm)
        inits = dict(init_std=self.init_std)
        use_beta = cfg.activation == "snakebeta"
        block_cls = nn.remat(AMPBlock1) if self.remat else AMPBlock1
        x = Conv1d(cfg.upsample_initial_channel, 7, init_std=None, name="conv_pre", **common)(mel.astype(self.dtype))
        n_kernels = len(cfg.resblock_kernel_sizes)
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            ch = cfg.stage_channels(i)
            x = ConvTranspose1d(ch, k, u, (k - u) // 2, name=f"ups_{i}", **common, **inits)(x)
            x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
            total = None
            for j, (rk, rd) in enumerate(zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)):
                y = block_cls(ch, rk, tuple(rd), use_beta, cfg.snake_logscale, name=f"resblocks_{i * n_kernels + j}",
                              **common, **inits)(x)
                total = y if total is None else total + y
            x = total / n_kernels
        x = SnakeActivation1d(x.shape[-1], use_beta, cfg.snake_logscale, param_dtype=self.param_dtype,
                              name="activation_post")(x)
        x = Conv1d(1, 7, use_bias=cfg.use_bias_at_final, name="conv_post", **common)(x)  # N(0, 0.01): quiet start
        x = x.astype(jnp.float32)[..., 0]
        return jnp.tanh(x) if cfg.use_tanh_at_final else jnp.clip(x, -1.0, 1.0)


@functools.lru_cache(maxsize=16)
def abstract_params(config: BigVGANConfig, param_dtype=jnp.float32, weight_norm: bool = False) -> dict:
    """ShapeDtypeStructs of the generator's params (no allocation)."""
    model = BigVGAN(config, param_dtype=param_dtype, weight_norm=weight_norm)
    mel = jax.ShapeDtypeStruct((1, 4, config.num_mels), jnp.float32)
    return jax.eval_shape(lambda m: nn.unbox(model.init(jax.random.PRNGKey(0), m))["params"], mel)


def init_params(config: BigVGANConfig, rng: jax.Array, param_dtype=jnp.float32, weight_norm: bool = False) -> dict:
    """Randomly initialised plain params (as the official init: conv weights ~ N(0, 0.01))."""
    model = BigVGAN(config, param_dtype=param_dtype, weight_norm=weight_norm)
    mel = jnp.zeros((1, 4, config.num_mels), jnp.float32)
    return jax.jit(lambda r: nn.unbox(model.init(r, mel))["params"])(rng)


_FILTER_ATOL = 1e-6


def _check_filter(sd: StateDict, name: str, expected: np.ndarray) -> None:
    """Consume a stored resampling-filter buffer and check it is the standard Kaiser-sinc filter.

    The filters are fixed functions of (ratio, kernel size); the model computes them, so a checkpoint
    whose buffers differ would silently change the model: refuse it instead.
    """
    if not sd.has(name):
        return
    stored = np.asarray(sd.take(name), dtype=np.float64).reshape(-1)
    if stored.shape != expected.shape or np.max(np.abs(stored - expected)) > _FILTER_ATOL:
        raise CheckpointError(
            f"{sd.key(name)}: stored anti-aliasing filter {stored} differs from the 12-tap Kaiser-sinc filter "
            f"(cutoff 0.25, half-width 0.3) this port computes: {expected}"
        )


def _activation_from_torch(sd: StateDict, use_beta: bool) -> dict:
    filt = default_resample_filter(2, 12)
    _check_filter(sd, "upsample.filter", filt)
    _check_filter(sd, "downsample.lowpass.filter", filt)
    out = {"alpha": sd.take("act.alpha")}
    if use_beta:
        out["beta"] = sd.take("act.beta")
    return out


def _conv_from_torch(sd: StateDict, bias: bool, transposed: bool, weight_norm: bool) -> dict:
    """One (transposed) conv; with ``weight_norm`` as {kernel: v, gain: g} (g computed if the weight is plain)."""
    if not weight_norm:
        return sd.conv_transpose1d(bias=bias) if transposed else sd.conv1d(bias=bias)
    if sd.has("weight_v"):
        v, g = sd.take("weight_v"), sd.take("weight_g")
    else:
        v = sd.take("weight")
        g = np.sqrt(np.sum(np.asarray(v, np.float64) ** 2, axis=tuple(range(1, v.ndim))))
    out = {
        "kernel": np.ascontiguousarray(v.transpose(2, 0, 1) if transposed else v.transpose(2, 1, 0)),
        "gain": np.asarray(g).reshape(-1),
    }
    if bias:
        out["bias"] = sd.take("bias")
    return out


def from_torch(state_dict: Mapping[str, Any], config: BigVGANConfig, weight_norm: bool = False) -> dict:
    """Official BigVGAN state dict (``{'generator': sd}`` or flat; weight-normed or not) -> plain params.

    ``weight_norm=False`` (inference): ``weight_g``/``weight_v`` are folded (for ConvTranspose1d the norm is per
    input channel). ``weight_norm=True`` (for ``BigVGAN(weight_norm=True)``, fine-tuning as the official
    training does): v and g are kept; a plain checkpoint gets ``g = ||w||``. The stored anti-aliasing filter
    buffers are consumed and checked against the computed filter.
    """
    if "generator" in state_dict and isinstance(state_dict["generator"], Mapping):
        state_dict = state_dict["generator"]
    sd = StateDict(state_dict)
    use_beta = config.activation == "snakebeta"
    n_kernels = len(config.resblock_kernel_sizes)
    wn = weight_norm
    params: dict[str, Any] = {"conv_pre": _conv_from_torch(sd.sub("conv_pre"), True, False, wn)}
    for i in range(len(config.upsample_rates)):
        params[f"ups_{i}"] = _conv_from_torch(sd.sub(f"ups.{i}.0"), True, True, wn)
        for j, dil in enumerate(config.resblock_dilation_sizes):
            n = i * n_kernels + j
            rb = sd.sub(f"resblocks.{n}")
            block: dict[str, Any] = {}
            for m in range(len(dil)):
                block[f"convs1_{m}"] = _conv_from_torch(rb.sub(f"convs1.{m}"), True, False, wn)
                block[f"convs2_{m}"] = _conv_from_torch(rb.sub(f"convs2.{m}"), True, False, wn)
            for m in range(2 * len(dil)):
                block[f"activations_{m}"] = _activation_from_torch(rb.sub(f"activations.{m}"), use_beta)
            params[f"resblocks_{n}"] = block
    params["activation_post"] = _activation_from_torch(sd.sub("activation_post"), use_beta)
    params["conv_post"] = _conv_from_torch(sd.sub("conv_post"), config.use_bias_at_final, False, wn)
    sd.finish()
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    check_params_match(params, abstract_params(config, weight_norm=weight_norm), "BigVGAN params")
    return params


def remove_weight_norm(params: Mapping[str, Any]) -> dict:
    """Fold ``{kernel: v, gain: g}`` convs of a ``BigVGAN(weight_norm=True)`` into plain kernels (for inference).

    Conv kernels (k, C_in, C_out) are normalised per output channel; ConvTranspose kernels (``ups_*``, torch
    layout (C_in, C_out, k)) per input channel.
    """

    def fold(tree: Mapping[str, Any], transposed: bool) -> dict:
        out = {}
        for name, value in tree.items():
            if isinstance(value, Mapping):
                out[name] = fold(value, name.startswith("ups_"))
            elif name == "gain":
                continue
            elif name == "kernel" and "gain" in tree:
                v = np.asarray(value, np.float64)
                axes = (0, 2) if transposed else (0, 1)
                norm = np.sqrt(np.sum(v * v, axis=axes, keepdims=True))
                g = np.asarray(tree["gain"], np.float64).reshape(norm.shape)
                out[name] = (g * v / norm).astype(np.asarray(value).dtype)
            else:
                out[name] = value
        return out

    return fold(params, False)


def synthesis_seconds(num_frames: int, config: BigVGANConfig) -> float:
    """Audio duration (s) produced from ``num_frames`` mel frames."""
    return num_frames * config.hop_length / config.sampling_rate


__all__ = [
    "AMPBlock1",
    "BigVGAN",
    "BigVGANConfig",
    "Conv1d",
    "ConvTranspose1d",
    "abstract_params",
    "from_torch",
    "init_params",
    "remove_weight_norm",
    "synthesis_seconds",
]
