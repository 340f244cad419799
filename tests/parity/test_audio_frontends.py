"""Parity of the audio front-ends with the official PyTorch / HF reference fixtures.

Cases (ids): ``audio/mel_s2mel``, ``audio/fbank16k_campplus``, ``w2v_bert_feature_extractor/single``,
``w2v_bert_feature_extractor/batch_padded``. Each audio case is routed by its name.

Tolerances are ``max|a - e| / max|e|`` (tests/parity/cases.py). The references are float32 torch
FFTs (mel, fbank) or HF's float64 NumPy FFT stored as complex64 (w2v-BERT); ours are float32 JAX
FFTs or float64 NumPy, so ~1e-6 relative is the expected disagreement on linear quantities.
Log features amplify it where the energy is small: d(log E) = dE/E, so a band whose energy is
1e-4 of the frame's loudest bin carries the FFT rounding of the loud bins into its log value.
The mel floor (1e-5 on magnitudes) and the fbank floor (float32 eps on power) are never reached
by these signals, so the error is this amplified rounding, not a floor mismatch. Measured on CPU:
mel 7.7e-7, resample 2.2e-7, fbank 5.4e-6 (abs 7.6e-5 on log values near -8.5), CAMPPlus feat
1.1e-5 (its scale is smaller after the mean is removed), w2v-BERT NumPy 3.0e-6 and JAX 1.3e-5.
"""

import numpy as np
import pytest

from indextts2_jax import audio
from tests.parity.cases import assert_close, cases, get_case

# Linear quantities from float32 FFT/convolution: observed <= 2.2e-7.
TOL_LINEAR = 2e-6
# Log-mel / log-fbank: rounding amplified in low-energy bands (see module docstring).
TOL_MEL = 1e-5
TOL_FBANK = 5e-5
# w2v-BERT features are normalised log-mels (~unit scale, max ~8): NumPy path mirrors HF's float64
# arithmetic; the JAX path uses float32 FFTs (GPU FFT libraries round differently, hence 1e-4).
TOL_W2V_NUMPY = 2e-5
TOL_W2V_JAX = 1e-4


def _check_mel(case):
    config = audio.MelConfig.from_official(case.config)
    basis = audio.mel_basis(config.sampling_rate, config.n_fft, config.num_mels, config.fmin, config.fmax)
    assert_close(basis, case.outputs["mel_basis"], 1e-6, "librosa mel basis")
    window = audio._hann_periodic(config.win_size, config.n_fft)
    assert_close(window, case.outputs["hann_window"], 1e-6, "periodic Hann window")
    mel = np.asarray(audio.mel_spectrogram(case.inputs["wav"], config))  # (B, T, 80) channels-last
    expected = case.outputs["mel"].transpose(0, 2, 1)  # official (B, 80, T)
    assert mel.shape == expected.shape
    assert_close(mel, expected, TOL_MEL, "log-mel")


def _check_fbank(case):
    wav_16k = audio.resample_sinc(case.inputs["wav_22k"], case.config["orig_sr"], 16000)
    assert wav_16k.shape == case.outputs["wav_16k"].shape
    assert_close(wav_16k, case.outputs["wav_16k"], TOL_LINEAR, "torchaudio Resample 22050->16000")
    wav_16k_jax = audio.resample_sinc_jax(case.inputs["wav_22k"], case.config["orig_sr"], 16000)
    assert_close(wav_16k_jax, case.outputs["wav_16k"], TOL_LINEAR, "torchaudio Resample 22050->16000 (JAX)")
    # fbank alone, from the reference 16 kHz audio (official layout (T, 80) for one utterance)
    fbank = np.asarray(audio.kaldi_fbank(case.outputs["wav_16k"][0]))
    assert_close(fbank, case.outputs["fbank"], TOL_FBANK, "kaldi fbank")
    feat = np.asarray(audio.campplus_features(case.outputs["wav_16k"]))[0]
    assert_close(feat, case.outputs["feat"], TOL_FBANK, "CAMPPlus features (fbank - time mean)")
    # end to end from the 22.05 kHz input through our resampler
    feat_e2e = np.asarray(audio.campplus_features(wav_16k))[0]
    assert_close(feat_e2e, case.outputs["feat"], TOL_FBANK, "resample + CAMPPlus features")


def _check_w2v(case):
    if "waveform" in case.inputs:
        padded = case.inputs["waveform"]
        lengths = np.full((padded.shape[0],), padded.shape[1])
    else:
        padded, lengths = case.inputs["waveforms_padded"], case.inputs["waveform_lengths"]
    assert case.config["padding_value"] == 1.0 and case.config["stride"] == 2
    waves = [padded[i, : int(n)] for i, n in enumerate(lengths)]
    features, mask = audio.w2v_bert_features(
        waves, padding_value=case.config["padding_value"], stride=case.config["stride"]
    )
    assert features.shape == case.outputs["input_features"].shape
    np.testing.assert_array_equal(mask, case.outputs["attention_mask"])
    assert_close(features, case.outputs["input_features"], TOL_W2V_NUMPY, "w2v-BERT features (NumPy)")
    features_jax, mask_jax = audio.w2v_bert_features_jax(padded, lengths)
    np.testing.assert_array_equal(np.asarray(mask_jax), case.outputs["attention_mask"])
    assert_close(features_jax, case.outputs["input_features"], TOL_W2V_JAX, "w2v-BERT features (JAX)")


ROUTES = {
    "audio/mel_s2mel": _check_mel,
    "audio/fbank16k_campplus": _check_fbank,
}


@pytest.mark.parametrize("path", cases("audio") + cases("w2v_bert_feature_extractor"))
def test_audio_frontend_parity(path):
    case = get_case(path)
    if case.component == "w2v_bert_feature_extractor":
        _check_w2v(case)
    elif case.id in ROUTES:
        ROUTES[case.id](case)
    else:
        pytest.fail(f"no front-end routed for fixture case {case.id}; add it to ROUTES")
