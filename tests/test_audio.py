"""Audio loading, validation and front-end shape tests (no fixtures needed).

Every bad-input case writes its file with soundfile into tmp_path and checks the specific error
class (all are ``InputError``) and that the message names the file.
"""

import math

import numpy as np
import pytest
import soundfile as sf

from indextts2_jax import audio
from indextts2_jax.errors import (
    AudioDecodeError,
    AudioFileNotFoundError,
    AudioTooLongError,
    AudioTooShortError,
    ChannelError,
    InputError,
    NonFiniteAudioError,
    SampleRateError,
    SilentAudioError,
)


def _tone(seconds, sr, freq=220.0, channels=1, seed=0):
    """A quiet tone plus noise, float32 (N,) or (N, channels) as soundfile writes it."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    base = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.shape)
    if channels == 1:
        return base.astype(np.float32)
    return np.stack([base * (0.5 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)


def _write(tmp_path, name, data, sr, subtype="FLOAT"):
    path = tmp_path / name
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def _raises(error_class, path, **kwargs):
    """load_audio(path, 16000, **kwargs) raises error_class naming the file; returns the error."""
    sample_rate = kwargs.pop("sample_rate", 16000)
    with pytest.raises(error_class) as info:
        audio.load_audio(path, sample_rate, **kwargs)
    assert isinstance(info.value, InputError)
    assert str(path) in str(info.value), f"message does not name the file: {info.value}"
    assert info.value.path == str(path)
    return info.value


# --- bad input ----------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    err = _raises(AudioFileNotFoundError, tmp_path / "nope.wav")
    assert isinstance(err, FileNotFoundError) and "not found" in str(err)


def test_corrupt_file(tmp_path):
    good = _write(tmp_path, "good.wav", _tone(0.5, 16000), 16000).read_bytes()
    path = tmp_path / "corrupt.wav"
    path.write_bytes(good[:12] + b"\x00" * 40 + good[52:])  # RIFF header kept, fmt/data chunks destroyed
    _raises(AudioDecodeError, path)


def test_truncated_header(tmp_path):
    good = _write(tmp_path, "good.wav", _tone(0.5, 16000), 16000).read_bytes()
    path = tmp_path / "truncated.wav"
    path.write_bytes(good[:20])
    _raises(AudioDecodeError, path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "zero.wav"
    path.write_bytes(b"")
    err = _raises(AudioDecodeError, path)
    assert "0 bytes" in str(err)


def test_non_audio_file(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is a text file, not audio\n" * 20)
    _raises(AudioDecodeError, path)


def test_directory_is_not_audio(tmp_path):
    _raises(AudioDecodeError, tmp_path)


def test_empty_audio(tmp_path):
    path = _write(tmp_path, "empty.wav", np.zeros(0, np.float32), 16000)
    err = _raises(SilentAudioError, path)
    assert "empty" in str(err)


def test_all_silent(tmp_path):
    path = _write(tmp_path, "silent.wav", np.zeros(16000, np.float32), 16000)
    err = _raises(SilentAudioError, path)
    assert "silent" in str(err)


def test_below_silence_threshold(tmp_path):
    path = _write(tmp_path, "hiss.wav", np.full(16000, 5e-5, np.float32), 16000)
    _raises(SilentAudioError, path)
    assert audio.load_audio(path, 16000, silence_threshold=None).shape == (16000,)


def test_too_short(tmp_path):
    path = _write(tmp_path, "short.wav", _tone(0.05, 16000), 16000)
    err = _raises(AudioTooShortError, path)
    assert "0.050 s" in str(err)


def test_too_long(tmp_path):
    path = _write(tmp_path, "long.wav", _tone(2.0, 16000), 16000)
    err = _raises(AudioTooLongError, path, max_seconds=1.0)
    assert "2.00 s" in str(err)


def test_truncation_instead_of_too_long(tmp_path):
    path = _write(tmp_path, "long22.wav", _tone(2.0, 22050), 22050)
    wave = audio.load_audio(path, 22050, max_seconds=1.5, truncate_seconds=1.5)
    assert wave.shape == (int(1.5 * 22050),)
    full = audio.load_audio(path, 22050)
    np.testing.assert_array_equal(wave, full[: int(1.5 * 22050)])  # truncation happens after resampling


def test_nan_samples(tmp_path):
    data = _tone(0.5, 16000)
    data[100] = np.nan
    path = _write(tmp_path, "nan.wav", data, 16000)
    err = _raises(NonFiniteAudioError, path)
    assert "NaN" in str(err)


def test_inf_samples(tmp_path):
    data = _tone(0.5, 16000)
    data[7] = np.inf
    path = _write(tmp_path, "inf.wav", data, 16000)
    _raises(NonFiniteAudioError, path)


def test_wrong_sample_rate(tmp_path):
    path = _write(tmp_path, "sr44.wav", _tone(0.5, 44100), 44100)
    err = _raises(SampleRateError, path, expected_sample_rate=16000)
    assert "44100" in str(err) and "16000" in str(err)
    assert audio.load_audio(path, 16000, expected_sample_rate=44100).shape == (8000,)


def test_stereo_with_mono_error(tmp_path):
    path = _write(tmp_path, "stereo.wav", _tone(0.5, 16000, channels=2), 16000)
    err = _raises(ChannelError, path, mono="error")
    assert "2 channels" in str(err)


def test_stereo_downmix(tmp_path):
    data = _tone(0.5, 16000, channels=2)
    path = _write(tmp_path, "stereo.wav", data, 16000)
    wave = audio.load_audio(path, 16000)
    assert wave.shape == (8000,) and wave.dtype == np.float32
    np.testing.assert_allclose(wave, data.mean(axis=1), rtol=0, atol=1e-7)


def test_bad_mono_option(tmp_path):
    path = _write(tmp_path, "a.wav", _tone(0.5, 16000), 16000)
    with pytest.raises(ValueError):
        audio.load_audio(path, 16000, mono="left")


# --- in-memory validation -----------------------------------------------------------------------
def test_validate_waveform_errors():
    good = _tone(0.5, 16000)
    np.testing.assert_array_equal(audio.validate_waveform(good, 16000, name="utt1"), good)
    bad = good.copy()
    bad[3] = np.nan
    cases = [
        (bad, 16000, {}, NonFiniteAudioError),
        (np.zeros(0, np.float32), 16000, {}, SilentAudioError),
        (np.zeros(16000, np.float32), 16000, {}, SilentAudioError),
        (good[:800], 16000, {}, AudioTooShortError),
        (good, 16000, {"max_seconds": 0.25}, AudioTooLongError),
        (good, 16000, {"expected_sample_rate": 22050}, SampleRateError),
        (np.stack([good, good]), 16000, {}, ChannelError),
    ]
    for wave, sr, kwargs, error_class in cases:
        with pytest.raises(error_class, match="utt1"):
            audio.validate_waveform(wave, sr, name="utt1", **kwargs)


# --- round trips and shapes ---------------------------------------------------------------------
def test_load_matches_librosa_load(tmp_path):
    librosa = pytest.importorskip("librosa")
    path = _write(tmp_path, "stereo44.wav", _tone(0.7, 44100, channels=2), 44100, subtype="PCM_16")
    for sr in (22050, 16000):
        ours = audio.load_audio(path, sr)
        ref, _ = librosa.load(str(path), sr=sr)
        np.testing.assert_array_equal(ours, ref)
    path22 = _write(tmp_path, "mono22.wav", _tone(0.7, 22050), 22050)
    np.testing.assert_array_equal(audio.load_audio(path22, 22050), librosa.load(str(path22))[0])


def test_22k_file_loaded_at_16k_has_right_length(tmp_path):
    n = 33075  # 1.5 s
    path = _write(tmp_path, "a22.wav", _tone(n / 22050, 22050), 22050)
    wave = audio.load_audio(path, 16000)
    assert wave.shape == (math.ceil(n * 16000 / 22050),) == (24000,)
    assert wave.dtype == np.float32
    # the native-rate load keeps every sample
    assert audio.load_audio(path, None).shape == (n,)


def test_audio_info(tmp_path):
    path = _write(tmp_path, "info.wav", _tone(0.5, 22050, channels=2), 22050, subtype="PCM_16")
    info = audio.audio_info(path)
    assert (info.sample_rate, info.channels, info.frames) == (22050, 2, 11025)
    assert info.duration == pytest.approx(0.5)
    with pytest.raises(AudioFileNotFoundError):
        audio.audio_info(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    with pytest.raises(AudioDecodeError, match="bad.wav"):
        audio.audio_info(bad)


def test_resample_lengths_batch_and_identity():
    rng = np.random.default_rng(1)
    waves = rng.standard_normal((3, 5000)).astype(np.float32) * 0.1
    batched = audio.resample_22k_to_16k(waves)
    assert batched.shape == (3, math.ceil(5000 * 16000 / 22050))
    for i in range(3):
        np.testing.assert_array_equal(audio.resample_22k_to_16k(waves[i]), batched[i])
    np.testing.assert_array_equal(audio.resample_sinc(waves, 16000, 16000), waves)
    assert audio.resample_sinc(waves[0], 16000, 24000).shape == (7500,)


def test_resample_preserves_a_low_tone():
    sr_in, sr_out = 22050, 16000
    t_in = np.arange(22050) / sr_in
    y = audio.resample_sinc(np.sin(2 * np.pi * 440 * t_in).astype(np.float32), sr_in, sr_out)
    t_out = np.arange(y.shape[0]) / sr_out
    inner = slice(200, -200)  # away from the zero-padded edges
    np.testing.assert_allclose(y[inner], np.sin(2 * np.pi * 440 * t_out)[inner], atol=2e-3)


def test_resample_jax_matches_numpy():
    rng = np.random.default_rng(5)
    waves = (rng.standard_normal((2, 7001)) * 0.1).astype(np.float32)
    for orig, new in ((22050, 16000), (16000, 22050), (24000, 16000)):
        ref = audio.resample_sinc(waves, orig, new)
        got = np.asarray(audio.resample_sinc_jax(waves, orig, new))
        assert got.shape == ref.shape == (2, math.ceil(7001 * new / orig))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_prompt_loaders(tmp_path):
    path = _write(tmp_path, "prompt44.wav", _tone(1.0, 44100), 44100)
    wav_22k, wav_16k = audio.load_speaker_prompt(path, truncate_seconds=0.5)
    assert wav_22k.shape == (11025,) and wav_16k.shape == (8000,)
    np.testing.assert_array_equal(wav_16k, audio.resample_22k_to_16k(wav_22k))
    emo = audio.load_emotion_prompt(path)
    assert emo.shape == (16000,)
    # the two 16 kHz paths agree in content but not bit for bit (spec 4.1)
    assert not np.array_equal(emo[:8000], wav_16k)
    np.testing.assert_allclose(emo[1000:7000], wav_16k[1000:7000], atol=5e-3)


def test_validate_int16_pcm():
    pcm = (np.sin(np.arange(4000) / 5.0) * 16384).astype(np.int16)
    wave = audio.validate_waveform(pcm, 16000)
    assert wave.dtype == np.float32 and np.abs(wave).max() == pytest.approx(0.5, abs=1e-3)


def test_batched_mel_equals_per_item_mel():
    rng = np.random.default_rng(2)
    waves = (rng.standard_normal((2, 22050)) * 0.1).astype(np.float32)
    mel = np.asarray(audio.mel_spectrogram(waves))
    assert mel.shape == (2, 22050 // 256, 80)
    for i in range(2):
        np.testing.assert_allclose(np.asarray(audio.mel_spectrogram(waves[i])), mel[i], rtol=0, atol=1e-5)


def test_mel_config_from_s2mel_preprocess_params():
    pre = {"sr": 22050, "spect_params": {"n_fft": 1024, "win_length": 1024, "hop_length": 256, "n_mels": 80,
                                         "fmin": 0, "fmax": "None"}}
    assert audio.MelConfig.from_official(pre) == audio.MelConfig()
    pre["spect_params"]["fmax"] = 7600  # infer_v2 maps anything but "None" to 8000
    assert audio.MelConfig.from_official(pre).fmax == 8000
    with pytest.raises(ValueError, match="unknown keys"):
        audio.MelConfig.from_official({"n_fft": 1024, "hop": 256})


def test_fbank_batch_shapes_and_campplus_mean():
    rng = np.random.default_rng(3)
    waves = (rng.standard_normal((2, 16000)) * 0.1).astype(np.float32)
    fbank = np.asarray(audio.kaldi_fbank(waves))
    assert fbank.shape == (2, 1 + (16000 - 400) // 160, 80)
    np.testing.assert_allclose(np.asarray(audio.kaldi_fbank(waves[1])), fbank[1], rtol=0, atol=1e-5)
    feat = np.asarray(audio.campplus_features(waves))
    np.testing.assert_allclose(feat.mean(axis=1), 0.0, atol=1e-4)
    with pytest.raises(AudioTooShortError):
        audio.kaldi_fbank(np.zeros(399, np.float32))
    with pytest.raises(AudioTooShortError):
        audio.mel_spectrogram(np.zeros(300, np.float32))


def test_campplus_features_with_lengths_equals_unpadded():
    rng = np.random.default_rng(6)
    lengths = [16000, 11111]
    padded = np.zeros((2, 16000), np.float32)
    for i, n in enumerate(lengths):
        padded[i, :n] = rng.standard_normal(n) * 0.1
    feat = np.asarray(audio.campplus_features(padded, lengths))
    for i, n in enumerate(lengths):
        frames = audio.fbank_num_frames(n)
        alone = np.asarray(audio.campplus_features(padded[i, :n]))
        assert alone.shape == (frames, 80)
        np.testing.assert_allclose(feat[i, :frames], alone, rtol=0, atol=1e-4)
        assert np.all(feat[i, frames:] == 0.0)


def test_kaldi_banks_shape_and_range():
    banks = audio.kaldi_mel_banks(80, 512, 16000.0, 20.0, 0.0)
    assert banks.shape == (80, 257) and banks.dtype == np.float32
    assert banks.min() >= 0.0 and banks.max() <= 1.0
    assert np.all(banks[:, -1] == 0) and np.all(banks.max(axis=1) > 0.4)  # every band sees some bin
    # the float32 torchaudio-order bank and HF's float64 bank are the same triangles
    np.testing.assert_allclose(banks, audio._kaldi_mel_banks_f64(80, 512, 16000.0, 20.0, 0.0), rtol=0, atol=5e-5)


def test_w2v_bert_features_numpy_vs_jax_and_padding():
    rng = np.random.default_rng(4)
    lengths = [16000, 9000, 4321]
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    features, mask = audio.w2v_bert_features(waves)
    frames = [1 + (n - 400) // 160 for n in lengths]  # 99, 54, 25
    t2 = math.ceil(max(frames) / 2)
    assert features.shape == (3, t2, 160) and features.dtype == np.float32
    np.testing.assert_array_equal(mask.sum(axis=1), [f // 2 for f in frames])
    # padding frames hold padding_value 1.0; 25 frames: the pair (24, 25) has a padded second half
    assert np.all(features[2, 13:] == 1.0) and np.all(features[2, 12, 80:] == 1.0)
    assert not np.all(features[2, 12, :80] == 1.0)
    padded = np.zeros((3, max(lengths)), np.float32)
    for i, w in enumerate(waves):
        padded[i, : w.shape[0]] = w
    features_jax, mask_jax = audio.w2v_bert_features_jax(padded, lengths)
    np.testing.assert_array_equal(np.asarray(mask_jax), mask)
    np.testing.assert_allclose(np.asarray(features_jax), features, rtol=0, atol=2e-3)
    with pytest.raises(AudioTooShortError):
        audio.w2v_bert_features([np.ones(500, np.float32)])
    with pytest.raises(SampleRateError):
        audio.w2v_bert_features(waves, sampling_rate=22050)
