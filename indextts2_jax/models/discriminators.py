"""GAN discriminators for BigVGAN training (Flax, channels-last): multi-period (MPD) and multi-resolution
STFT (MRD) discriminators.

BigVGAN v2 trains with MPD (periods 2, 3, 5, 7, 11) plus a multi-scale sub-band CQT discriminator (CQTD,
built on nnAudio's ``CQT2010v2``). The CQT is not ported here: this module provides BigVGAN v1's
multi-resolution STFT discriminator (``DiscriminatorR``) in its place, with v1's resolutions
(n_fft, hop, win) = (1024, 120, 600), (2048, 240, 1200), (512, 50, 240). ``DiscriminatorConfig.from_official``
accepts the v2 config.json (its ``cqtd_*`` keys are read and ignored).

Every discriminator returns ``(logits, feature_maps)``; :class:`VocoderDiscriminator` runs all of them on a
waveform batch (B, T) and returns the lists ``logits`` [(B, N_i)] and ``feature_maps`` [[arrays]] in the order
MPD periods, then MRD resolutions. Convs are weight-normed like the official ones (``kernel`` = direction v,
``gain`` = per-output-channel norm g, initialised to ``||v||`` so the initial weight is the drawn kernel).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax.errors import ConfigError

Array = jnp.ndarray
LRELU_SLOPE = 0.1

V1_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
# torch's default Conv2d init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_torch_conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Discriminator hyperparameters (BigVGAN config.json names); defaults = BigVGAN v2 MPD + v1 MRD."""

    mpd_reshapes: tuple[int, ...] = (2, 3, 5, 7, 11)
    discriminator_channel_mult: float = 1.0
    resolutions: tuple[tuple[int, int, int], ...] = V1_RESOLUTIONS
    mrd_channel_mult: float | None = None
    use_spectral_norm: bool = False

    def __post_init__(self):
        if self.use_spectral_norm:
            raise ConfigError("use_spectral_norm=True is not supported (BigVGAN's configs use weight norm)")
        for r in self.resolutions:
            if len(r) != 3:
                raise ConfigError(f"each MRD resolution is (n_fft, hop, win), got {r}")

    @classmethod
    def from_official(cls, h: Mapping[str, Any]) -> DiscriminatorConfig:
        """From a BigVGAN config.json; keys that do not concern these discriminators are ignored."""
        kw: dict[str, Any] = {}
        if "mpd_reshapes" in h:
            kw["mpd_reshapes"] = tuple(int(p) for p in h["mpd_reshapes"])
        if "discriminator_channel_mult" in h:
            kw["discriminator_channel_mult"] = float(h["discriminator_channel_mult"])
        if "resolutions" in h:
            kw["resolutions"] = tuple(tuple(int(v) for v in r) for r in h["resolutions"])
        if "mrd_channel_mult" in h:
            kw["mrd_channel_mult"] = float(h["mrd_channel_mult"])
        if "use_spectral_norm" in h:
            kw["use_spectral_norm"] = bool(h["use_spectral_norm"])
        return cls(**kw)

    def replace(self, **kw) -> DiscriminatorConfig:
        return dataclasses.replace(self, **kw)


class WNConv2d(nn.Module):
    """Weight-normed 2-D conv on (B, H, W, C): ``w = gain * kernel / ||kernel||`` (norm per output channel)."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(_torch_conv_init, ("kernel", "kernel", "conv_in", "conv_out")),
            shape,
            self.param_dtype,
        )
        kernel_value = nn.unbox(kernel)

        def gain_init(_, gain_shape, dtype):
            return jnp.sqrt(jnp.sum(kernel_value.astype(jnp.float32) ** 2, axis=(0, 1, 2))).astype(dtype)

        gain = self.param("gain", nn.with_logical_partitioning(gain_init, ("conv_out",)), (self.features,),
                          self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
                          (self.features,), self.param_dtype)
        k32 = kernel.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(k32**2, axis=(0, 1, 2)) + 1e-12)
        weight = (k32 * (gain.astype(jnp.float32) / norm)).astype(self.dtype)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            weight,
            window_strides=self.strides,
            padding=[(self.padding[0], self.padding[0]), (self.padding[1], self.padding[1])],
            rhs_dilation=self.dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + bias.astype(self.dtype)


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN/BigVGAN ``DiscriminatorP``: wav (B, T) folded to (B, T/p, p) and 2-D convs along time.

    Returns logits (B, N) and 6 feature maps (B, H, p, C).
    """

    period: int
    channel_mult: float = 1.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, wav: Array) -> tuple[Array, list[Array]]:
        b, t = wav.shape
        if t % self.period:
            n_pad = self.period - t % self.period
            wav = jnp.pad(wav, ((0, 0), (0, n_pad)), mode="reflect")
            t += n_pad
        x = wav.reshape(b, t // self.period, self.period, 1)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        widths = [int(c * self.channel_mult) for c in (32, 128, 512, 1024)]
        fmaps = []
        for i, width in enumerate(widths):
            x = nn.leaky_relu(WNConv2d(width, (5, 1), (3, 1), (2, 0), name=f"convs_{i}", **kw)(x), LRELU_SLOPE)
            fmaps.append(x)
        x = nn.leaky_relu(WNConv2d(widths[-1], (5, 1), (1, 1), (2, 0), name="convs_4", **kw)(x), LRELU_SLOPE)
        fmaps.append(x)
        x = WNConv2d(1, (3, 1), (1, 1), (1, 0), name="conv_post", **kw)(x)
        fmaps.append(x)
        return x.reshape(b, -1), fmaps


def stft_magnitude(wav: Array, n_fft: int, hop: int, win: int) -> Array:
    """|STFT| as BigVGAN v1's MRD computes it: reflect pad (n_fft-hop)/2 both sides, no centering, rectangular
    ``win``-sample window centred in ``n_fft``; wav (B, T) -> (B, frames, n_fft//2 + 1), float32.

    The magnitude is ``sqrt(re^2 + im^2 + 1e-12)`` (the epsilon keeps the gradient finite at exact zeros).
    """
    pad = (n_fft - hop) // 2
    x = jnp.pad(wav.astype(jnp.float32), ((0, 0), (pad, pad)), mode="reflect")
    n_frames = 1 + (x.shape[1] - n_fft) // hop
    idx = np.arange(n_frames)[:, None] * hop + np.arange(n_fft)[None, :]
    window = np.zeros(n_fft, np.float32)
    start = (n_fft - win) // 2
    window[start : start + win] = 1.0
    spec = jnp.fft.rfft(x[:, idx] * window, axis=-1)
    return jnp.sqrt(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2 + 1e-12)


class ResolutionDiscriminator(nn.Module):
    """BigVGAN v1 ``DiscriminatorR``: 2-D convs over the (frequency, frame) magnitude spectrogram.

    wav (B, T) -> logits (B, N) and 6 feature maps (B, F, frames', C). Frames are strided by 2 three times.
    """

    n_fft: int
    hop: int
    win: int
    channel_mult: float = 1.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, wav: Array) -> tuple[Array, list[Array]]:
        mag = stft_magnitude(wav, self.n_fft, self.hop, self.win)  # (B, frames, F)
        x = jnp.swapaxes(mag, 1, 2)[..., None]  # (B, F, frames, 1): torch's (H=F, W=frames)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = int(32 * self.channel_mult)
        specs = [((3, 9), (1, 1), (1, 4)), ((3, 9), (1, 2), (1, 4)), ((3, 9), (1, 2), (1, 4)),
                 ((3, 9), (1, 2), (1, 4)), ((3, 3), (1, 1), (1, 1))]
        fmaps = []
        for i, (k, s, p) in enumerate(specs):
            x = nn.leaky_relu(WNConv2d(width, k, s, p, name=f"convs_{i}", **kw)(x), LRELU_SLOPE)
            fmaps.append(x)
        x = WNConv2d(1, (3, 3), (1, 1), (1, 1), name="conv_post", **kw)(x)
        fmaps.append(x)
        return x.reshape(x.shape[0], -1), fmaps


class VocoderDiscriminator(nn.Module):
    """All discriminators: wav (B, T) -> (logits [(B, N_i)], feature_maps [[...]]), MPD first, then MRD.

    For a GAN step run it once on ``concat([real, fake])`` and split each output in half along the batch.
    """

    config: DiscriminatorConfig = DiscriminatorConfig()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, wav: Array) -> tuple[list[Array], list[list[Array]]]:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        wav = nn.with_logical_constraint(wav, ("batch", "length"))
        logits, fmaps = [], []
        for period in cfg.mpd_reshapes:
            lg, fm = PeriodDiscriminator(period, cfg.discriminator_channel_mult, name=f"mpd_{period}", **kw)(wav)
            logits.append(lg)
            fmaps.append(fm)
        mrd_mult = cfg.mrd_channel_mult if cfg.mrd_channel_mult is not None else cfg.discriminator_channel_mult
        for i, (n_fft, hop, win) in enumerate(cfg.resolutions):
            lg, fm = ResolutionDiscriminator(n_fft, hop, win, mrd_mult, name=f"mrd_{i}", **kw)(wav)
            logits.append(lg)
            fmaps.append(fm)
        return logits, fmaps


def split_real_fake(outputs: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """Split every array of a (nested) output list along the batch into (real half, fake half)."""
    real = jax.tree_util.tree_map(lambda a: a[: a.shape[0] // 2], list(outputs))
    fake = jax.tree_util.tree_map(lambda a: a[a.shape[0] // 2 :], list(outputs))
    return real, fake


def init_params(config: DiscriminatorConfig, rng: jax.Array, num_samples: int = 8192) -> dict:
    """Randomly initialised plain params."""
    wav = jnp.zeros((1, num_samples), jnp.float32)
    return jax.jit(lambda r: nn.unbox(VocoderDiscriminator(config).init(r, wav))["params"])(rng)


__all__ = [
    "DiscriminatorConfig",
    "PeriodDiscriminator",
    "ResolutionDiscriminator",
    "VocoderDiscriminator",
    "WNConv2d",
    "init_params",
    "split_real_fake",
    "stft_magnitude",
]
