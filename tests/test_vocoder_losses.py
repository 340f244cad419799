"""Vocoder training pieces: LSGAN / feature-matching / multi-scale mel losses and the discriminators.

Checks the loss formulas at known inputs, the STFT against librosa, discriminator output structure, and that
a few optax GAN steps on a tiny BigVGAN + discriminator lower the mel loss.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from indextts2_jax.models.bigvgan import BigVGAN, BigVGANConfig
from indextts2_jax.models.discriminators import (
    DiscriminatorConfig,
    VocoderDiscriminator,
    WNConv2d,
    cqt,
    resample_up,
    split_real_fake,
)
from indextts2_jax.models.discriminators import stft_magnitude as mrd_stft_magnitude
from indextts2_jax.train import vocoder_losses as vl

TINY_MEL = vl.MelLossConfig(window_lengths=(32, 64, 128), n_mels=(5, 10, 20))
TINY_MRD = DiscriminatorConfig(mpd_reshapes=(2, 3), discriminator_channel_mult=0.125, use_cqtd_instead_of_mrd=False,
                               resolutions=((128, 32, 64),))
# CQTD with 3 octaves of 12 bins from 2093 Hz (top bin ~15.8 kHz at the 44.1 kHz up-sampled rate): short kernels.
TINY_CQTD = DiscriminatorConfig(mpd_reshapes=(3,), discriminator_channel_mult=0.125, cqtd_filters=8,
                                cqtd_max_filters=8, cqtd_dilations=(1, 2), cqtd_hop_lengths=(64,),
                                cqtd_n_octaves=(3,), cqtd_bins_per_octaves=(12,), cqtd_fmin=32.70 * 2**6)
TINY_GEN = BigVGANConfig(num_mels=16, upsample_rates=(8,), upsample_kernel_sizes=(16,), upsample_initial_channel=32,
                         resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),))


def numpy_params(module, *args, seed=0, kernel_std=None):
    """Random params without compiling ``init`` (XLA compiles the RNG of a whole init slowly on CPU).

    Kernels ~ N(0, kernel_std or 1/sqrt(fan_in)); weight-norm gains 1 (unit-norm weights); biases and snake
    parameters 0.
    """
    abstract = jax.eval_shape(lambda *a: nn.unbox(module.init(jax.random.key(0), *a))["params"], *args)
    rng = np.random.default_rng(seed)

    def fill(tree):
        out = {}
        for name, leaf in tree.items():
            if isinstance(leaf, dict):
                out[name] = fill(leaf)
            elif name == "kernel":
                std = kernel_std or 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
                out[name] = (rng.standard_normal(leaf.shape) * std).astype(np.float32)
            elif name == "gain":
                out[name] = np.ones(leaf.shape, np.float32)
            else:
                out[name] = np.zeros(leaf.shape, np.float32)
        return out

    return jax.tree_util.tree_map(jnp.asarray, fill(abstract))


def test_lsgan_losses_equal_formula():
    real = [jnp.full((2, 3), 0.5), jnp.array([[1.0, 0.0]])]
    fake = [jnp.full((2, 3), 0.25), jnp.array([[-1.0, 1.0]])]
    d_total, parts = vl.discriminator_loss(real, fake)
    # (1-0.5)^2 + mean([0, 1]) = 0.25 + 0.5 ; fake: 0.25^2 + mean([1, 1]) = 0.0625 + 1
    np.testing.assert_allclose(float(parts["d_real"]), 0.75, rtol=1e-6)
    np.testing.assert_allclose(float(parts["d_fake"]), 1.0625, rtol=1e-6)
    np.testing.assert_allclose(float(d_total), 1.8125, rtol=1e-6)
    # generator: (1-0.25)^2 + mean([4, 0]) = 0.5625 + 2
    np.testing.assert_allclose(float(vl.generator_adversarial_loss(fake)), 2.5625, rtol=1e-6)
    fm = vl.feature_matching_loss([[jnp.ones((2, 4)), jnp.zeros((3,))]], [[jnp.zeros((2, 4)), jnp.full((3,), -2.0)]])
    np.testing.assert_allclose(float(fm), 2.0 * (1.0 + 2.0), rtol=1e-6)


def test_stft_and_mel_loss():
    import librosa

    rng = np.random.default_rng(0)
    wav = rng.normal(size=(2, 1000)).astype(np.float32) * 0.1
    for window in (32, 128):
        hop = window // 4
        got = np.asarray(jax.jit(vl.stft_magnitude, static_argnums=(1, 2))(jnp.asarray(wav), window, hop))
        x = np.pad(wav, ((0, 0), (window // 2, window // 2)), mode="reflect")  # centred frames
        frames = np.stack([x[:, i * hop : i * hop + window] for i in range(1 + len(wav[0]) // hop)], axis=1)
        ref = np.abs(np.fft.rfft(frames * np.hanning(window + 1)[:-1], axis=-1))  # periodic Hann
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    loss = jax.jit(vl.multiscale_mel_loss, static_argnums=(2,))
    assert float(loss(jnp.asarray(wav), jnp.asarray(wav), TINY_MEL)) < 1e-6
    # the formula, in NumPy with librosa's Slaney filters: sum over scales of mean|log10 mel_a - log10 mel_b|
    fake = wav[:, ::-1].copy()
    expected = 0.0
    for window, n_mels in zip(TINY_MEL.window_lengths, TINY_MEL.n_mels):
        hop = window // 4
        log_mels = []
        for w in (fake, wav):
            x = np.pad(w, ((0, 0), (window // 2, window // 2)), mode="reflect")
            frames = np.stack([x[:, i * hop : i * hop + window] for i in range(1 + w.shape[1] // hop)], axis=1)
            mag = np.abs(np.fft.rfft(frames * np.hanning(window + 1)[:-1], axis=-1))
            basis = librosa.filters.mel(sr=22050, n_fft=window, n_mels=n_mels, fmin=0.0, fmax=None)
            log_mels.append(np.log10(np.maximum(mag @ basis.T, 1e-5)))
        expected += np.mean(np.abs(log_mels[0] - log_mels[1]))
    got = float(loss(jnp.asarray(fake), jnp.asarray(wav), TINY_MEL))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    # the default (BigVGAN v2) configuration: 7 scales up to a 2048 window
    assert vl.MelLossConfig().window_lengths[-1] == 2048 and vl.MelLossConfig().n_mels[-1] == 320


def test_mrd_stft_rectangular_window():
    rng = np.random.default_rng(1)
    wav = rng.normal(size=(1, 700)).astype(np.float32)
    n_fft, hop, win = 64, 16, 40
    got = np.asarray(mrd_stft_magnitude(jnp.asarray(wav), n_fft, hop, win))
    x = np.pad(wav[0], (24, 24), mode="reflect")
    window = np.zeros(n_fft)
    window[12:52] = 1.0
    frames = np.stack([x[i * hop : i * hop + n_fft] for i in range(1 + (len(x) - n_fft) // hop)])
    np.testing.assert_allclose(got[0], np.abs(np.fft.rfft(frames * window, axis=-1)), atol=1e-4)


def test_discriminator_outputs():
    disc = VocoderDiscriminator(TINY_MRD)
    wav = jax.random.normal(jax.random.key(0), (2, 1001)) * 0.1  # 1001: not a multiple of the periods
    params = numpy_params(disc, wav)
    logits, fmaps = jax.jit(disc.apply)({"params": params}, wav)
    assert len(logits) == len(fmaps) == 3  # 2 periods + 1 resolution
    assert all(len(f) == 6 for f in fmaps)
    assert all(lg.shape[0] == 2 and np.all(np.isfinite(np.asarray(lg))) for lg in logits)
    assert fmaps[0][0].shape[2:] == (2, 4) and fmaps[1][0].shape[2:] == (3, 4)  # (B, H, period, channels)
    real, fake = split_real_fake(logits)
    assert real[0].shape[0] == fake[0].shape[0] == 1
    # CQTD: (B, frames, bins, C) feature maps; frames = 2T / hop + 1, bins 36 -> 18 -> 9 by the strided convs
    disc = VocoderDiscriminator(TINY_CQTD)
    wav = jax.random.normal(jax.random.key(0), (2, 1024)) * 0.1
    logits, fmaps = jax.jit(disc.apply)({"params": numpy_params(disc, wav)}, wav)
    assert len(logits) == 2 and len(fmaps[1]) == 4
    assert [f.shape for f in fmaps[1]] == [(2, 33, 36, 8), (2, 33, 18, 8), (2, 33, 9, 8), (2, 33, 9, 8)]
    assert logits[1].shape == (2, 33 * 9) and np.all(np.isfinite(np.asarray(logits[1])))


def test_resample_and_cqt():
    sr = 22050
    t = np.arange(2000) / sr
    up = np.asarray(resample_up(jnp.asarray(np.sin(2 * np.pi * 1000 * t)[None], jnp.float32)))
    t2 = np.arange(4000) / (2 * sr)
    np.testing.assert_allclose(up[0, 200:-200], np.sin(2 * np.pi * 1000 * t2[200:-200]), atol=5e-4)
    fmin, bpo = TINY_CQTD.cqtd_fmin, 12
    for b in (2, 17, 30):  # one bin in each octave: the sine's energy peaks in its own bin
        f = fmin * 2 ** (b / bpo)
        sine = np.sin(2 * np.pi * f * np.arange(8192) / 44100)[None].astype(np.float32)
        z = np.asarray(cqt(jnp.asarray(sine), 44100, 64, 3, bpo, fmin))
        mag = np.sqrt((z**2).sum(-1))[0]
        assert z.shape == (1, 8192 // 64 + 1, 36, 2)
        assert mag[len(mag) // 2].argmax() == b
        # librosa scaling: a unit sine gives ~0.5 * sqrt(kernel length) in its bin
        expected = 0.5 * np.sqrt(np.ceil(44100 / (2 ** (1 / bpo) - 1) / f))
        np.testing.assert_allclose(mag[len(mag) // 2, b], expected, rtol=0.1)
    # weight norm: gain initialised to the kernel norm, so the effective kernel is the drawn one
    conv = WNConv2d(4, (3, 1))
    x = jax.random.normal(jax.random.key(2), (1, 5, 1, 3))
    variables = conv.init(jax.random.key(3), x)
    plain_vars = nn.unbox(variables)
    kernel, gain = np.asarray(plain_vars["params"]["kernel"]), np.asarray(plain_vars["params"]["gain"])
    np.testing.assert_allclose(gain, np.sqrt((kernel**2).sum(axis=(0, 1, 2))), rtol=1e-5)
    plain = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(np.asarray(conv.apply(variables, x)), np.asarray(plain), rtol=1e-5, atol=1e-6)


def test_gan_steps_lower_mel_loss(steps=5):
    gen, disc = BigVGAN(TINY_GEN, weight_norm=True), VocoderDiscriminator(TINY_CQTD)  # as the official training
    mel = jax.random.normal(jax.random.key(0), (2, 64, TINY_GEN.num_mels))  # 512 samples: 2 CQT hops of 64 at 2x
    t = np.arange(64 * TINY_GEN.hop_length) / 22050
    real = jnp.asarray(np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1000 * t)]), jnp.float32)
    g_params = numpy_params(gen, mel, seed=1)
    d_params = numpy_params(disc, real, seed=2)
    g_opt, d_opt = optax.adam(5e-3, b1=0.8, b2=0.99), optax.adam(2e-3, b1=0.8, b2=0.99)
    g_state, d_state = g_opt.init(g_params), d_opt.init(d_params)

    @jax.jit
    def step(g_params, d_params, g_state, d_state):
        fake = gen.apply({"params": g_params}, mel)

        def d_loss_fn(dp):
            logits, _ = disc.apply({"params": dp}, jnp.concatenate([real, jax.lax.stop_gradient(fake)]))
            r, f = split_real_fake(logits)
            return vl.discriminator_loss(r, f)[0]

        d_loss, d_grads = jax.value_and_grad(d_loss_fn)(d_params)
        d_updates, d_state = d_opt.update(d_grads, d_state, d_params)
        d_params = optax.apply_updates(d_params, d_updates)

        def g_loss_fn(gp):
            wav = gen.apply({"params": gp}, mel)
            logits, fmaps = disc.apply({"params": d_params}, jnp.concatenate([real, wav]))
            _, f_logits = split_real_fake(logits)
            r_fmaps, f_fmaps = split_real_fake(fmaps)
            return vl.generator_loss(f_logits, r_fmaps, f_fmaps, wav, real, TINY_MEL)

        (g_loss, parts), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(g_params)
        g_updates, g_state = g_opt.update(g_grads, g_state, g_params)
        g_params = optax.apply_updates(g_params, g_updates)
        return g_params, d_params, g_state, d_state, d_loss, parts

    mel_losses = []
    for _ in range(steps):
        g_params, d_params, g_state, d_state, d_loss, parts = step(g_params, d_params, g_state, d_state)
        assert np.isfinite(float(d_loss)) and all(np.isfinite(float(v)) for v in parts.values())
        mel_losses.append(float(parts["mel"]))
    # parts["mel"] is measured before each step's update: the last one reflects 4 updates
    assert mel_losses[-1] < 0.9 * mel_losses[0], mel_losses


def test_discriminator_config_from_v2_json():
    from tests.parity.test_bigvgan import V2_CONFIG_JSON

    config = DiscriminatorConfig.from_official(V2_CONFIG_JSON)
    assert config == DiscriminatorConfig()  # v2: MPD + CQTD, 128 filters, 3 scales
    v1 = DiscriminatorConfig.from_official({"resolutions": [[1024, 120, 600]], "mpd_reshapes": [2, 3]})
    assert not v1.use_cqtd_instead_of_mrd and v1.resolutions == ((1024, 120, 600),)
