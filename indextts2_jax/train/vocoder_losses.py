"""BigVGAN (v2) training losses in JAX: least-squares GAN, feature matching, multi-scale log-mel L1.

As BigVGAN v2 trains:
  discriminator:  sum_d mean((1 - D(y))^2) + mean(D(G(x))^2)
  generator:      sum_d mean((1 - D(G(x)))^2)  +  2 * sum_d sum_layers mean|f_d(y) - f_d(G(x))|
                  + lambda_mel (15) * multi-scale mel loss
Multi-scale mel loss (the descript-audio-codec loss BigVGAN v2 uses, ``use_multiscale_melloss``): for window
lengths 32..2048 (hop = window/4, periodic Hann, centred STFT with reflect padding) and 5..320 mel bands
(librosa Slaney filters, fmin 0, fmax sr/2): L1 between log10(clamp(mel, 1e-5)) of the two signals, summed
over the scales. Everything is computed in float32.

Waveforms are (B, T). Discriminator outputs are lists as :class:`indextts2_jax.models.discriminators.
VocoderDiscriminator` returns them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray


@dataclass(frozen=True)
class MelLossConfig:
    """Multi-scale mel loss settings; defaults = BigVGAN v2 (``MultiScaleMelSpectrogramLoss(sr)``)."""

    sampling_rate: int = 22050
    window_lengths: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
    n_mels: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)
    clamp_eps: float = 1e-5
    log_weight: float = 1.0
    mag_weight: float = 0.0
    power: float = 1.0
    fmin: float = 0.0
    fmax: float | None = None

    def __post_init__(self):
        if len(self.window_lengths) != len(self.n_mels):
            raise ValueError("window_lengths and n_mels must have the same length")


@functools.lru_cache(maxsize=32)
def _mel_filters(sampling_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sampling_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).astype(np.float32)


def _hann_periodic(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def stft_magnitude(wav: Array, window_length: int, hop_length: int) -> Array:
    """|STFT| with a periodic Hann window, centred frames (reflect pad window/2): (B, T) -> (B, 1 + T//hop, F).

    ``sqrt(re^2 + im^2 + 1e-12)`` keeps the gradient finite at exact zeros (torch's ``abs`` gives 0 there).
    """
    pad = window_length // 2
    x = jnp.pad(wav.astype(jnp.float32), ((0, 0), (pad, pad)), mode="reflect")
    n_frames = 1 + (x.shape[1] - window_length) // hop_length
    idx = np.arange(n_frames)[:, None] * hop_length + np.arange(window_length)[None, :]
    spec = jnp.fft.rfft(x[:, idx] * _hann_periodic(window_length), axis=-1)
    return jnp.sqrt(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2 + 1e-12)


def mel_magnitude(wav: Array, window_length: int, n_mels: int, config: MelLossConfig) -> Array:
    """Linear-amplitude mel spectrogram (B, frames, n_mels) at one scale (hop = window/4)."""
    mag = stft_magnitude(wav, window_length, window_length // 4)
    basis = _mel_filters(config.sampling_rate, window_length, n_mels, config.fmin, config.fmax)
    return jnp.einsum("btf,mf->btm", mag, basis, precision=jax.lax.Precision.HIGHEST)


def multiscale_mel_loss(wav_fake: Array, wav_real: Array, config: MelLossConfig = MelLossConfig()) -> Array:
    """Sum over scales of L1(log10 mel) (+ ``mag_weight`` * L1(mel)); (B, T) x 2 -> scalar (unweighted)."""
    loss = jnp.float32(0.0)
    for window, n_mels in zip(config.window_lengths, config.n_mels):
        mel_f = mel_magnitude(wav_fake, window, n_mels, config)
        mel_r = mel_magnitude(wav_real, window, n_mels, config)
        log_f = jnp.log10(jnp.maximum(mel_f, config.clamp_eps) ** config.power)
        log_r = jnp.log10(jnp.maximum(mel_r, config.clamp_eps) ** config.power)
        loss = loss + config.log_weight * jnp.mean(jnp.abs(log_f - log_r))
        if config.mag_weight:
            loss = loss + config.mag_weight * jnp.mean(jnp.abs(mel_f - mel_r))
    return loss


def discriminator_loss(real_logits: Sequence[Array], fake_logits: Sequence[Array]) -> tuple[Array, dict]:
    """LSGAN discriminator loss ``sum_d mean((1 - real)^2) + mean(fake^2)``; returns (total, parts)."""
    real_terms = [jnp.mean((1.0 - r.astype(jnp.float32)) ** 2) for r in real_logits]
    fake_terms = [jnp.mean(f.astype(jnp.float32) ** 2) for f in fake_logits]
    total = sum(real_terms) + sum(fake_terms)
    return total, {"d_real": sum(real_terms), "d_fake": sum(fake_terms)}


def generator_adversarial_loss(fake_logits: Sequence[Array]) -> Array:
    """LSGAN generator loss ``sum_d mean((1 - D(G(x)))^2)``."""
    return sum(jnp.mean((1.0 - f.astype(jnp.float32)) ** 2) for f in fake_logits)


def feature_matching_loss(real_fmaps: Sequence[Sequence[Array]], fake_fmaps: Sequence[Sequence[Array]]) -> Array:
    """``2 * sum_d sum_layers mean|real - fake|`` (BigVGAN's factor 2); real features get no gradient."""
    total = jnp.float32(0.0)
    for real_d, fake_d in zip(real_fmaps, fake_fmaps):
        for r, f in zip(real_d, fake_d):
            total = total + jnp.mean(jnp.abs(jax.lax.stop_gradient(r).astype(jnp.float32) - f.astype(jnp.float32)))
    return 2.0 * total


def generator_loss(
    fake_logits: Sequence[Array],
    real_fmaps: Sequence[Sequence[Array]],
    fake_fmaps: Sequence[Sequence[Array]],
    wav_fake: Array,
    wav_real: Array,
    mel_config: MelLossConfig = MelLossConfig(),
    lambda_mel: float = 15.0,
) -> tuple[Array, dict]:
    """BigVGAN generator objective: adversarial + feature matching + ``lambda_mel`` * mel; (total, parts)."""
    adv = generator_adversarial_loss(fake_logits)
    fm = feature_matching_loss(real_fmaps, fake_fmaps)
    mel = multiscale_mel_loss(wav_fake, wav_real, mel_config)
    total = adv + fm + lambda_mel * mel
    return total, {"g_adv": adv, "g_fm": fm, "mel": mel}


__all__ = [
    "MelLossConfig",
    "discriminator_loss",
    "feature_matching_loss",
    "generator_adversarial_loss",
    "generator_loss",
    "mel_magnitude",
    "multiscale_mel_loss",
    "stft_magnitude",
]
