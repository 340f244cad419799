"""Audio loading, validation and the three feature front-ends of IndexTTS2.

What the official inference does with a prompt (spec section 4) and where it lives here:

- ``librosa.load(path)`` (22.05 kHz, soxr_hq, channel mean), cut to 15 s: :func:`load_audio`
  (``sample_rate=22050, truncate_seconds=15``); both prompt paths at once: :func:`load_speaker_prompt`
  (22.05 kHz and 16 kHz) and :func:`load_emotion_prompt` (``librosa.load(path, sr=16000)``).
- torchaudio ``Resample(22050, 16000)``: :func:`resample_22k_to_16k` / :func:`resample_sinc` (NumPy),
  :func:`resample_sinc_jax`.
- ``s2mel/modules/audio.mel_spectrogram`` (S2M target and BigVGAN input): :func:`mel_spectrogram`
  (JAX) -> ``(B, T, 80)`` log-mel.
- ``torchaudio.compliance.kaldi.fbank`` minus its time mean (CAMPPlus input): :func:`kaldi_fbank`,
  :func:`campplus_features` (JAX) -> ``(B, T, 80)``.
- HF ``SeamlessM4TFeatureExtractor`` (w2v-BERT input): :func:`w2v_bert_features` (NumPy, exact),
  :func:`w2v_bert_features_jax` -> ``(B, T2, 160)`` + attention mask.

Layouts: every JAX front-end returns channels-last ``(B, T, C)``; the official mel is ``(B, 80, T)``
and the official fbank ``(T, 80)`` (transpose/squeeze when comparing).

Bad input raises the classes of :mod:`indextts2_jax.errors` (all subclasses of ``InputError``);
messages start with the file name (or the ``name`` given for an in-memory array) and say what is
wrong, so a data pipeline can log and skip them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax.errors import (
    AudioDecodeError,
    AudioFileNotFoundError,
    AudioTooLongError,
    AudioTooShortError,
    ChannelError,
    NonFiniteAudioError,
    SampleRateError,
    SilentAudioError,
)

__all__ = [
    "AudioInfo",
    "FbankConfig",
    "MelConfig",
    "audio_info",
    "campplus_features",
    "fbank_num_frames",
    "kaldi_fbank",
    "kaldi_mel_banks",
    "load_audio",
    "load_emotion_prompt",
    "load_speaker_prompt",
    "mel_basis",
    "mel_spectrogram",
    "resample_22k_to_16k",
    "resample_sinc",
    "resample_sinc_jax",
    "sinc_resample_kernel",
    "validate_waveform",
    "w2v_bert_features",
    "w2v_bert_features_jax",
]

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # 1.1920929e-07: kaldi's log floor and HF's mel_floor
_HIGHEST = jax.lax.Precision.HIGHEST  # float32 matmuls must not drop to bf16 passes on GPU/TPU


# =========================================================================================
# Loading and validation
# =========================================================================================
@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file (read without decoding the samples)."""

    path: str
    sample_rate: int
    channels: int
    frames: int
    format: str = ""
    subtype: str = ""

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _check_path(path) -> Path:
    """Existence/regular-file/size checks shared by :func:`audio_info` and :func:`load_audio`."""
    p = Path(os.fspath(path))
    if not p.exists():
        raise AudioFileNotFoundError(f"{p}: audio file not found", path=str(p))
    if p.is_dir():
        raise AudioDecodeError(f"{p}: is a directory, not an audio file", path=str(p))
    if p.stat().st_size == 0:
        raise AudioDecodeError(f"{p}: file is empty (0 bytes), not decodable audio", path=str(p))
    return p


def _audioread_open(p: Path):
    """``audioread`` fallback (ffmpeg/gstreamer/CoreAudio backends), or None if unavailable."""
    import warnings

    with warnings.catch_warnings():  # audioread's raw backend imports aifc/audioop/sunau (deprecated)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioread
        except ImportError:  # pragma: no cover - optional dependency
            return None
        return audioread.audio_open(str(p))


def audio_info(path) -> AudioInfo:
    """Sample rate, channels, frames (and duration) of an audio file without decoding it.

    Raises:
        AudioFileNotFoundError: the file does not exist.
        AudioDecodeError: the file is empty, a directory, or not a format any backend reads.
    """
    import soundfile as sf

    p = _check_path(path)
    try:
        info = sf.info(str(p))
        return AudioInfo(str(p), int(info.samplerate), int(info.channels), int(info.frames), info.format, info.subtype)
    except Exception as sf_error:  # soundfile raises LibsndfileError/RuntimeError/TypeError by version
        try:
            f = _audioread_open(p)
        except Exception:
            f = None
        if f is None:
            raise AudioDecodeError(f"{p}: not a readable audio file ({sf_error})", path=str(p)) from sf_error
        with f:
            frames = int(round(f.duration * f.samplerate))
            return AudioInfo(str(p), int(f.samplerate), int(f.channels), frames, "audioread", "")


def _decode(p: Path) -> tuple[np.ndarray, int]:
    """All samples as float32 ``(channels, frames)`` plus the file's sample rate.

    soundfile first (what ``librosa.load`` uses); audioread only when soundfile cannot read it.
    """
    import soundfile as sf

    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
        return np.ascontiguousarray(data.T), int(sr)
    except Exception as sf_error:
        try:
            f = _audioread_open(p)
            if f is None:
                raise sf_error
            with f:
                sr, channels = int(f.samplerate), int(f.channels)
                chunks = [np.frombuffer(buf, dtype="<i2") for buf in f]
            pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
            data = (pcm.astype(np.float32) / 32768.0).reshape(-1, channels).T  # librosa's buf_to_float
            return np.ascontiguousarray(data), sr
        except Exception as fallback_error:
            detail = str(sf_error)
            if fallback_error is not sf_error:
                detail += f"; audioread fallback: {type(fallback_error).__name__} {fallback_error}".rstrip()
            raise AudioDecodeError(f"{p}: cannot decode audio ({detail})", path=str(p)) from sf_error


def _check_finite(wave: np.ndarray, name: str, path) -> None:
    bad = ~np.isfinite(wave)
    if bad.any():
        kinds = "NaN" if np.isnan(wave).any() else "Inf"
        if np.isnan(wave).any() and np.isinf(wave).any():
            kinds = "NaN and Inf"
        raise NonFiniteAudioError(
            f"{name}: {int(bad.sum())} of {wave.size} samples are non-finite ({kinds})", path=path
        )


def _check_content(wave: np.ndarray, sample_rate: int, name: str, path, *, min_seconds, max_seconds,
                   silence_threshold) -> None:
    """Empty / silent / too short / too long checks on a finite mono waveform."""
    n = wave.shape[-1]
    if n == 0:
        raise SilentAudioError(f"{name}: audio is empty (0 samples)", path=path)
    duration = n / sample_rate
    if min_seconds is not None and duration < min_seconds:
        raise AudioTooShortError(
            f"{name}: audio is too short ({duration:.3f} s < minimum {min_seconds} s)", path=path
        )
    if max_seconds is not None and duration > max_seconds:
        raise AudioTooLongError(
            f"{name}: audio is too long ({duration:.2f} s > maximum {max_seconds} s)", path=path
        )
    peak = float(np.max(np.abs(wave)))
    if silence_threshold is not None and peak < silence_threshold:
        raise SilentAudioError(
            f"{name}: audio is silent (peak |x| = {peak:.3g} < threshold {silence_threshold:g})", path=path
        )


def validate_waveform(
    wave,
    sample_rate: int,
    *,
    name: str = "waveform",
    min_seconds: float | None = 0.1,
    max_seconds: float | None = None,
    silence_threshold: float | None = 1e-4,
    expected_sample_rate: int | None = None,
) -> np.ndarray:
    """Check an in-memory mono waveform like :func:`load_audio` checks files; return it as float32 (N,).

    Signed integer PCM is scaled to [-1, 1) (int16 / 32768), floats are kept as they are.

    Raises ChannelError (not 1-D), NonFiniteAudioError, SilentAudioError (empty or peak below
    ``silence_threshold``), AudioTooShortError, AudioTooLongError, SampleRateError (when
    ``expected_sample_rate`` differs from ``sample_rate``). Messages start with ``name``.
    """
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ChannelError(f"{name}: expected a 1-D mono waveform, got shape {wave.shape}")
    if expected_sample_rate is not None and int(sample_rate) != int(expected_sample_rate):
        raise SampleRateError(f"{name}: sample rate {sample_rate} Hz, expected {expected_sample_rate} Hz")
    if np.issubdtype(wave.dtype, np.signedinteger):  # PCM: scale to [-1, 1) like soundfile's float read
        wave = wave.astype(np.float32) / np.float32(np.iinfo(wave.dtype).max + 1)
    elif not np.issubdtype(wave.dtype, np.floating):
        raise AudioDecodeError(f"{name}: waveform has dtype {wave.dtype}, expected float or signed integer PCM")
    wave = wave.astype(np.float32, copy=False)
    _check_finite(wave, name, None)
    _check_content(wave, sample_rate, name, None, min_seconds=min_seconds, max_seconds=max_seconds,
                   silence_threshold=silence_threshold)
    return wave


def load_audio(
    path,
    sample_rate: int | None,
    *,
    max_seconds: float | None = None,
    min_seconds: float | None = 0.1,
    truncate_seconds: float | None = None,
    mono: str = "mix",
    expected_sample_rate: int | None = None,
    silence_threshold: float | None = 1e-4,
) -> np.ndarray:
    """Decode, check, downmix and resample an audio file: float32 ``(N,)`` at ``sample_rate``.

    With the defaults, ``load_audio(p, 22050)`` equals ``librosa.load(p)[0]`` sample for sample
    (soundfile decode to float32, channel mean, ``librosa.resample(res_type="soxr_hq")``), and
    ``load_audio(p, 16000, truncate_seconds=15)`` is infer_v2's emotion-prompt load.

    Args:
        path: any file soundfile reads (WAV, FLAC, OGG, MP3 with libsndfile >= 1.1); other formats
            go through audioread if it has a backend.
        sample_rate: output rate; None keeps the file's rate.
        max_seconds: longest allowed file duration (AudioTooLongError); ignored when truncating.
        min_seconds: shortest allowed duration (AudioTooShortError); None disables.
        truncate_seconds: keep the first ``int(truncate_seconds * sample_rate)`` output samples
            (after resampling, as infer_v2 does with 15 s).
        mono: "mix" averages channels; "error" raises ChannelError for multi-channel files.
        expected_sample_rate: if given, a file at another rate raises SampleRateError.
        silence_threshold: peak |x| below this is SilentAudioError; None disables.

    Raises:
        AudioFileNotFoundError, AudioDecodeError, ChannelError, SampleRateError,
        NonFiniteAudioError, SilentAudioError, AudioTooShortError, AudioTooLongError.
    """
    if mono not in ("mix", "error"):
        raise ValueError(f"mono must be 'mix' or 'error', got {mono!r}")
    p = _check_path(path)
    name, spath = str(p), str(p)
    data, file_sr = _decode(p)
    channels = data.shape[0]
    if channels > 1 and mono == "error":
        raise ChannelError(f"{name}: has {channels} channels, expected mono", path=spath)
    if expected_sample_rate is not None and file_sr != int(expected_sample_rate):
        raise SampleRateError(f"{name}: sample rate {file_sr} Hz, expected {expected_sample_rate} Hz", path=spath)
    _check_finite(data, name, spath)
    if channels > 1:
        import librosa

        wave = librosa.to_mono(data)
    else:
        wave = data[0]
    limit = None if truncate_seconds is not None else max_seconds
    _check_content(wave, file_sr, name, spath, min_seconds=min_seconds, max_seconds=limit,
                   silence_threshold=silence_threshold)
    out_sr = file_sr if sample_rate is None else int(sample_rate)
    if out_sr != file_sr:
        import librosa

        wave = librosa.resample(wave, orig_sr=file_sr, target_sr=out_sr, res_type="soxr_hq")
    if truncate_seconds is not None:
        wave = wave[: int(truncate_seconds * out_sr)]
        if max_seconds is not None and wave.shape[-1] / out_sr > max_seconds:
            raise AudioTooLongError(
                f"{name}: audio is too long after truncation ({wave.shape[-1] / out_sr:.2f} s > maximum "
                f"{max_seconds} s)", path=spath)
        if silence_threshold is not None and float(np.max(np.abs(wave))) < silence_threshold:
            raise SilentAudioError(f"{name}: the first {truncate_seconds} s are silent", path=spath)
    return np.ascontiguousarray(wave, dtype=np.float32)


# =========================================================================================
# torchaudio-compatible sinc resampling (NumPy)
# =========================================================================================
@functools.lru_cache(maxsize=32)
def sinc_resample_kernel(
    orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> tuple[np.ndarray, int]:
    """Polyphase windowed-sinc kernel of torchaudio's ``Resample`` (``sinc_interp_hann``).

    Rates are reduced by their gcd to ``o = orig/g`` and ``n = new/g``. Output phase ``j`` (of ``n``)
    reads the input at times ``i/o - j/n`` for ``i`` in ``[-width, width + o)``; the tap there is
    ``sinc(pi*c*t) * cos^2(pi*t*c/(2w)) * c/o`` with cutoff ``c = min(o, n) * rolloff`` and the
    argument clipped to ``[-w, w]`` (w = ``lowpass_filter_width``).

    Returns:
        kernel ``(n, 2*width + o)`` float32 (cast from float64 like torchaudio's default) and ``width``.
    """
    g = math.gcd(int(orig_sr), int(new_sr))
    o, n = int(orig_sr) // g, int(new_sr) // g
    cutoff = min(o, n) * rolloff
    width = math.ceil(lowpass_filter_width * o / cutoff)
    input_times = np.arange(-width, width + o, dtype=np.float64) / o
    # torchaudio builds the output-phase offsets in float32 before adding them to float64 times
    phase = (np.arange(0, -n, -1, dtype=np.float64) / n).astype(np.float32).astype(np.float64)
    t = (phase[:, None] + input_times[None, :]) * cutoff
    t = np.clip(t, -lowpass_filter_width, lowpass_filter_width)
    window = np.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    safe_t = np.where(t == 0, 1.0, t)
    sinc = np.where(t == 0, 1.0, np.sin(safe_t) / safe_t)
    kernel = sinc * window * (cutoff / o)
    return kernel.astype(np.float32), width


def resample_sinc(
    wave, orig_sr: int, new_sr: int, *, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> np.ndarray:
    """torchaudio ``Resample(orig_sr, new_sr)`` (default sinc_interp_hann) in NumPy.

    Args:
        wave: ``(..., N)`` float waveform(s); leading axes are batch.
    Returns:
        ``(..., ceil(N * new/orig))`` float32. Equal rates return the input unchanged (as torchaudio).
    """
    wave = np.asarray(wave, dtype=np.float32)
    if int(orig_sr) == int(new_sr):
        return wave
    g = math.gcd(int(orig_sr), int(new_sr))
    o, n = int(orig_sr) // g, int(new_sr) // g
    kernel, width = sinc_resample_kernel(int(orig_sr), int(new_sr), lowpass_filter_width, float(rolloff))
    length = wave.shape[-1]
    lead = wave.shape[:-1]
    flat = wave.reshape(-1, length).astype(np.float64)
    padded = np.pad(flat, ((0, 0), (width, width + o)))
    taps = kernel.shape[1]
    blocks = np.lib.stride_tricks.sliding_window_view(padded, taps, axis=-1)[:, ::o, :]  # (B, frames, taps) view
    kernel64 = kernel.astype(np.float64).T  # (taps, n)
    out = np.empty((flat.shape[0], blocks.shape[1], n), dtype=np.float64)
    step = 4096  # frames per chunk: bounds the float64 copy of the strided view (~15 MB per item)
    for start in range(0, blocks.shape[1], step):
        out[:, start : start + step] = blocks[:, start : start + step] @ kernel64
    out = out.reshape(out.shape[0], -1)[:, : math.ceil(n * length / o)]
    return out.astype(np.float32).reshape(*lead, -1)


@functools.partial(jax.jit, static_argnames=("orig_sr", "new_sr", "lowpass_filter_width", "rolloff"))
def resample_sinc_jax(
    wave: jax.Array, orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> jax.Array:
    """:func:`resample_sinc` in JAX (float32, jit-able, e.g. for on-device 22.05k -> 16k in training).

    ``(..., N) -> (..., ceil(N * new/orig))``; same kernel, float32 accumulation (~1e-6 relative).
    """
    wave = jnp.asarray(wave, jnp.float32)
    if int(orig_sr) == int(new_sr):
        return wave
    g = math.gcd(int(orig_sr), int(new_sr))
    o, n = int(orig_sr) // g, int(new_sr) // g
    kernel, width = sinc_resample_kernel(int(orig_sr), int(new_sr), lowpass_filter_width, float(rolloff))
    length = wave.shape[-1]
    padded = jnp.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(width, width + o)])
    blocks = _frame(padded, kernel.shape[1], o)  # (..., frames, taps)
    out = jnp.matmul(blocks, kernel.T, precision=_HIGHEST)  # (..., frames, n)
    out = out.reshape(*out.shape[:-2], -1)
    return out[..., : math.ceil(n * length / o)]


def resample_22k_to_16k(wave) -> np.ndarray:
    """The speaker-prompt path's ``torchaudio.transforms.Resample(22050, 16000)``; ``(..., N) -> (..., N16)``."""
    return resample_sinc(wave, 22050, 16000)


def load_speaker_prompt(path, *, truncate_seconds: float | None = 15.0, **checks) -> tuple[np.ndarray, np.ndarray]:
    """infer_v2's speaker-prompt audio: ``(wav_22k (N,), wav_16k (ceil(N*320/441),))`` float32.

    ``librosa.load(path)`` (22.05 kHz) cut to ``truncate_seconds``, then torchaudio's sinc resampler
    to 16 kHz (the 22.05k -> 22.05k ``Resample`` of infer_v2 is the identity). ``checks`` go to
    :func:`load_audio` (``min_seconds``, ``mono``, ``silence_threshold``, ...). wav_22k feeds the S2M
    mel, wav_16k the w2v-BERT features and the CAMPPlus fbank.
    """
    wav_22k = load_audio(path, 22050, truncate_seconds=truncate_seconds, **checks)
    return wav_22k, resample_22k_to_16k(wav_22k)


def load_emotion_prompt(path, *, truncate_seconds: float | None = 15.0, **checks) -> np.ndarray:
    """infer_v2's emotion-prompt audio: ``librosa.load(path, sr=16000)`` cut to 15 s, float32 ``(N,)``.

    Differs numerically from the speaker path's 16 kHz audio of the same file (one soxr step
    instead of soxr to 22.05 kHz then sinc to 16 kHz).
    """
    return load_audio(path, 16000, truncate_seconds=truncate_seconds, **checks)


# =========================================================================================
# S2M / BigVGAN log-mel (JAX)
# =========================================================================================
@dataclasses.dataclass(frozen=True)
class MelConfig:
    """Arguments of the official ``s2mel/modules/audio.mel_spectrogram`` (infer_v2's ``mel_fn``)."""

    n_fft: int = 1024
    win_size: int = 1024
    hop_size: int = 256
    num_mels: int = 80
    sampling_rate: int = 22050
    fmin: float = 0.0
    fmax: float | None = None
    center: bool = False

    @classmethod
    def from_official(cls, d: Mapping[str, Any]) -> MelConfig:
        """From ``mel_spectrogram`` kwargs (fixture config) or the s2mel ``preprocess_params`` dict.

        For ``preprocess_params`` (``{"sr": ..., "spect_params": {...}}``) this applies infer_v2's
        mapping: ``fmax`` "None" (or absent) -> None, any other value -> 8000.
        """
        if "spect_params" in d:
            sp = d["spect_params"]
            fmax = None if sp.get("fmax", "None") in ("None", None) else 8000
            return cls(n_fft=int(sp["n_fft"]), win_size=int(sp["win_length"]), hop_size=int(sp["hop_length"]),
                       num_mels=int(sp["n_mels"]), sampling_rate=int(d["sr"]), fmin=float(sp.get("fmin", 0)),
                       fmax=fmax, center=False)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"MelConfig.from_official: unknown keys {sorted(unknown)}")
        kw = dict(d)
        if kw.get("fmax") == "None":
            kw["fmax"] = None
        return cls(**kw)


@functools.lru_cache(maxsize=16)
def mel_basis(sampling_rate: int, n_fft: int, num_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """``librosa.filters.mel`` (Slaney scale and area norm), float32 ``(num_mels, n_fft//2 + 1)``."""
    import librosa

    return librosa.filters.mel(sr=sampling_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin, fmax=fmax).astype(
        np.float32
    )


def _hann_periodic(win_size: int, n_fft: int) -> np.ndarray:
    """``torch.hann_window(win_size)`` zero-padded to ``n_fft`` centred (as ``torch.stft`` does)."""
    k = np.arange(win_size, dtype=np.float64)
    w = (0.5 - 0.5 * np.cos(2.0 * math.pi * k / win_size)).astype(np.float32)
    left = (n_fft - win_size) // 2
    return np.pad(w, (left, n_fft - win_size - left))


def _frame(x: jax.Array, frame_length: int, hop: int) -> jax.Array:
    """``(..., N) -> (..., T, frame_length)`` with T = 1 + (N - frame_length) // hop (no padding)."""
    num_frames = 1 + (x.shape[-1] - frame_length) // hop
    idx = np.arange(num_frames)[:, None] * hop + np.arange(frame_length)[None, :]
    return x[..., idx]


@functools.partial(jax.jit, static_argnames=("config",))
def _mel_spectrogram(wave: jax.Array, config: MelConfig) -> jax.Array:
    c = config
    pad = (c.n_fft - c.hop_size) // 2
    x = jnp.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(pad, pad)], mode="reflect")
    if c.center:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(c.n_fft // 2, c.n_fft // 2)], mode="reflect")
    frames = _frame(x, c.n_fft, c.hop_size) * _hann_periodic(c.win_size, c.n_fft)
    spec = jnp.fft.rfft(frames, n=c.n_fft, axis=-1)
    magnitude = jnp.sqrt(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2 + 1e-9)
    basis = mel_basis(c.sampling_rate, c.n_fft, c.num_mels, c.fmin, c.fmax)
    mel = jnp.matmul(magnitude, basis.T, precision=_HIGHEST)
    return jnp.log(jnp.maximum(mel, 1e-5))


def mel_spectrogram(wave, config: MelConfig | Mapping[str, Any] | None = None) -> jax.Array:
    """Log-mel of the S2M model and BigVGAN (official ``s2mel/modules/audio.mel_spectrogram``).

    Reflect-pad ``(n_fft - hop)/2`` each side, STFT with a periodic Hann window (no centring),
    ``|X| = sqrt(re^2 + im^2 + 1e-9)``, librosa Slaney mel basis, ``log(max(., 1e-5))``.
    Jitted per config; float32.

    Args:
        wave: ``(B, N)`` (or ``(N,)``) float waveform at ``config.sampling_rate``.
        config: :class:`MelConfig` or a dict for :meth:`MelConfig.from_official`; default the
            IndexTTS2 s2mel config (22.05 kHz, 1024/1024/256, 80 mels, fmax None).
    Returns:
        ``(B, T, num_mels)`` (or ``(T, num_mels)``), T = (N + 2*pad - n_fft)//hop + 1 (= N//256 for
        the official config). Channels-last: the official output is ``(B, num_mels, T)``.
    """
    if config is None:
        config = MelConfig()
    elif not isinstance(config, MelConfig):
        config = MelConfig.from_official(config)
    wave = jnp.asarray(wave, jnp.float32)
    reflect = (config.n_fft - config.hop_size) // 2
    total_pad = reflect + (config.n_fft // 2 if config.center else 0)
    min_samples = max(reflect + 1, config.n_fft - 2 * total_pad)  # reflect pad < N, and one whole frame
    if wave.shape[-1] < min_samples:
        raise AudioTooShortError(
            f"mel_spectrogram: waveform has {wave.shape[-1]} samples, needs at least {min_samples}")
    return _mel_spectrogram(wave, config)


# =========================================================================================
# Kaldi fbank (torchaudio.compliance.kaldi.fbank) and CAMPPlus features (JAX)
# =========================================================================================
@functools.lru_cache(maxsize=16)
def kaldi_mel_banks(num_bins: int, padded_window_size: int, sample_frequency: float, low_freq: float,
                    high_freq: float) -> np.ndarray:
    """Kaldi triangular mel filters of ``torchaudio.compliance.kaldi.fbank``: float32 ``(num_bins, padded//2 + 1)``.

    Mel scale ``1127 ln(1 + f/700)``; band b spans mel edges ``low + b*delta .. low + (b+2)*delta`` with
    ``delta = (mel(high) - mel(low)) / (num_bins + 1)`` (``high_freq <= 0`` means Nyquist + high_freq);
    triangles are linear in mel and unnormalised; FFT bin k sits at ``k * sample_frequency / padded``;
    the Nyquist bin gets weight 0 (the zero column ``fbank`` appends).

    Evaluated in float32 in torchaudio's operation order: the weights then agree with torchaudio's
    to float32 rounding, which matters because a float64 bank differs by up to ~1e-5 near the
    triangle edges, enough to move low-energy log bins by ~2e-4.
    """
    f32 = np.float32
    nyquist = 0.5 * sample_frequency
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < high_freq <= nyquist):
        raise ValueError(f"bad mel range low_freq={low_freq}, high_freq={high_freq}, nyquist={nyquist}")
    mel_low = 1127.0 * math.log(1.0 + low_freq / 700.0)  # python floats, like torchaudio's scalar helper
    mel_high = 1127.0 * math.log(1.0 + high_freq / 700.0)
    delta = f32((mel_high - mel_low) / (num_bins + 1))
    b = np.arange(num_bins, dtype=f32)[:, None]
    left = f32(mel_low) + b * delta
    center = f32(mel_low) + (b + f32(1.0)) * delta
    right = f32(mel_low) + (b + f32(2.0)) * delta
    freqs = f32(sample_frequency / padded_window_size) * np.arange(padded_window_size // 2, dtype=f32)
    mel = (f32(1127.0) * np.log(f32(1.0) + freqs / f32(700.0)))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(f32(0.0), np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1))).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class FbankConfig:
    """``torchaudio.compliance.kaldi.fbank`` options supported here (defaults = torchaudio's, 80 bins).

    Fixed behaviour: dither 0, snip_edges True, use_power True, use_log_fbank True, use_energy False.
    ``waveform_scale`` multiplies the input first (1.0 for CAMPPlus; 32768 gives int16-range Kaldi).
    """

    num_mel_bins: int = 80
    sample_frequency: float = 16000.0
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemphasis_coefficient: float = 0.97
    remove_dc_offset: bool = True
    round_to_power_of_two: bool = True
    low_freq: float = 20.0
    high_freq: float = 0.0
    window_type: str = "povey"
    log_floor: float = FLOAT32_EPS
    waveform_scale: float = 1.0

    @property
    def window_size(self) -> int:
        return int(self.sample_frequency * self.frame_length_ms * 0.001)

    @property
    def window_shift(self) -> int:
        return int(self.sample_frequency * self.frame_shift_ms * 0.001)

    @property
    def padded_window_size(self) -> int:
        w = self.window_size
        return 1 << (w - 1).bit_length() if self.round_to_power_of_two else w


def _kaldi_window(window_type: str, size: int) -> np.ndarray:
    """Symmetric (non-periodic) windows of ``torchaudio.compliance.kaldi``; float32 ``(size,)``."""
    k = np.arange(size, dtype=np.float64)
    hann = 0.5 - 0.5 * np.cos(2.0 * math.pi * k / (size - 1))
    if window_type == "povey":
        w = hann**0.85
    elif window_type == "hanning":
        w = hann
    elif window_type == "hamming":
        w = 0.54 - 0.46 * np.cos(2.0 * math.pi * k / (size - 1))
    elif window_type == "rectangular":
        w = np.ones(size)
    else:
        raise ValueError(f"unsupported kaldi window_type {window_type!r}")
    return w.astype(np.float32)


def _kaldi_power_frames(wave: jax.Array, c: FbankConfig) -> jax.Array:
    """``(..., N) -> (..., T, padded//2 + 1)`` power spectra of kaldi-processed frames (snip_edges)."""
    frames = _frame(wave * c.waveform_scale, c.window_size, c.window_shift)
    if c.remove_dc_offset:
        frames = frames - jnp.mean(frames, axis=-1, keepdims=True)
    if c.preemphasis_coefficient != 0.0:
        previous = jnp.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)  # first sample uses itself
        frames = frames - c.preemphasis_coefficient * previous
    frames = frames * _kaldi_window(c.window_type, c.window_size)
    spec = jnp.fft.rfft(frames, n=c.padded_window_size, axis=-1)
    return jnp.real(spec) ** 2 + jnp.imag(spec) ** 2


@functools.partial(jax.jit, static_argnames=("config",))
def _kaldi_fbank(wave: jax.Array, config: FbankConfig) -> jax.Array:
    c = config
    power = _kaldi_power_frames(wave, c)
    banks = kaldi_mel_banks(c.num_mel_bins, c.padded_window_size, float(c.sample_frequency), float(c.low_freq),
                            float(c.high_freq))
    energies = jnp.matmul(power, banks.T, precision=_HIGHEST)
    return jnp.log(jnp.maximum(energies, c.log_floor))


def _check_fbank_length(n: int, c: FbankConfig) -> None:
    if n < c.window_size:
        raise AudioTooShortError(f"waveform has {n} samples, fewer than one {c.window_size}-sample fbank frame")


def kaldi_fbank(wave, num_mel_bins: int = 80, *, config: FbankConfig | None = None) -> jax.Array:
    """``torchaudio.compliance.kaldi.fbank(wave, num_mel_bins, dither=0, sample_frequency=16000)`` in JAX.

    Per 400-sample frame (hop 160, snip_edges): remove the mean, pre-emphasis 0.97 (the first
    sample uses itself), Povey window, zero-pad to 512, |rfft|^2, Kaldi mel banks (20 Hz-Nyquist),
    ``log(max(., float32 eps))``. The input is used as given (floats in [-1, 1] for CAMPPlus).

    Args:
        wave: ``(B, N)`` or ``(N,)`` float waveform at ``config.sample_frequency``.
        num_mel_bins: used when ``config`` is None.
    Returns:
        ``(B, T, num_mel_bins)`` (or ``(T, num_mel_bins)``), T = 1 + (N - 400) // 160. float32.
    """
    config = config or FbankConfig(num_mel_bins=num_mel_bins)
    wave = jnp.asarray(wave, jnp.float32)
    _check_fbank_length(wave.shape[-1], config)
    return _kaldi_fbank(wave, config)


def fbank_num_frames(num_samples, config: FbankConfig | None = None):
    """Frames of :func:`kaldi_fbank` for ``num_samples`` (int or array): ``1 + (N - 400) // 160``, >= 0."""
    c = config or FbankConfig()
    n = np.asarray(num_samples)
    frames = np.where(n >= c.window_size, 1 + (n - c.window_size) // c.window_shift, 0)
    return int(frames) if frames.ndim == 0 else frames


def campplus_features(wave_16k, lengths=None, *, config: FbankConfig | None = None) -> jax.Array:
    """CAMPPlus input: 80-bin Kaldi fbank of the 16 kHz float waveform minus its per-bin time mean.

    Args:
        wave_16k: ``(B, N)`` or ``(N,)`` float waveform in [-1, 1].
        lengths: optional ``(B,)`` true sample counts of a zero-padded batch: the mean then runs
            over each item's own :func:`fbank_num_frames` frames (equal to the unpadded result
            there) and later frames are set to 0. Without it every frame enters the mean, as in
            infer_v2 (one unpadded prompt).
    Returns:
        ``(B, T, 80)`` (or ``(T, 80)``) float32.
    """
    fbank = kaldi_fbank(wave_16k, config=config)
    if lengths is None:
        return fbank - jnp.mean(fbank, axis=-2, keepdims=True)
    if fbank.ndim != 3:
        raise ValueError("campplus_features: lengths needs a (B, N) batch")
    frames = jnp.asarray(fbank_num_frames(np.asarray(lengths), config))
    valid = (jnp.arange(fbank.shape[1])[None, :] < frames[:, None])[..., None]
    mean = jnp.sum(jnp.where(valid, fbank, 0.0), axis=1, keepdims=True) / jnp.maximum(frames, 1)[:, None, None]
    return jnp.where(valid, fbank - mean, 0.0)


# =========================================================================================
# w2v-BERT 2.0 input features (SeamlessM4TFeatureExtractor)
# =========================================================================================
W2V_BERT_FBANK = FbankConfig(num_mel_bins=80, high_freq=8000.0, waveform_scale=32768.0)
"""Kaldi-style fbank settings of ``SeamlessM4TFeatureExtractor`` (x2^15, 400/160/512, Povey, 20-8000 Hz)."""


def _w2v_frames_np(wave: np.ndarray) -> np.ndarray:
    """One utterance's log-mel frames exactly as the HF extractor computes them: float32 ``(F, 80)``.

    HF works in float64 per frame, stores the rfft as complex64, then squares the float64 magnitude.
    """
    c = W2V_BERT_FBANK
    x = np.asarray(wave, dtype=np.float32) * np.float32(c.waveform_scale)
    n = x.shape[-1]
    num_frames = 1 + (n - c.window_size) // c.window_shift
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), c.window_size)[:: c.window_shift]
    frames = frames[:num_frames]
    frames = frames - frames.mean(axis=-1, keepdims=True)
    emphasized = np.empty_like(frames)
    emphasized[:, 1:] = frames[:, 1:] - c.preemphasis_coefficient * frames[:, :-1]
    emphasized[:, 0] = frames[:, 0] * (1.0 - c.preemphasis_coefficient)
    k = np.arange(c.window_size, dtype=np.float64)
    window = (0.5 - 0.5 * np.cos(2.0 * math.pi * k / (c.window_size - 1))) ** 0.85
    spec = np.fft.rfft(emphasized * window, n=c.padded_window_size, axis=-1).astype(np.complex64)
    power = np.abs(spec, dtype=np.float64) ** 2
    banks = _kaldi_mel_banks_f64(c.num_mel_bins, c.padded_window_size, c.sample_frequency, c.low_freq, c.high_freq)
    mel = np.maximum(c.log_floor, power @ banks.T)
    return np.log(mel).astype(np.float32)


def _kaldi_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=4)
def _kaldi_mel_banks_f64(num_bins, padded, sample_frequency, low_freq, high_freq) -> np.ndarray:
    """The same Kaldi triangles as HF ``mel_filter_bank(..., mel_scale="kaldi", triangularize_in_mel_space=True)``.

    HF evaluates them in float64 with ``linspace`` mel edges over ``padded//2`` bins of width
    ``sample_frequency / padded``, then appends a zero row for the Nyquist bin. ``(num_bins, padded//2 + 1)``.
    """
    nyquist = 0.5 * sample_frequency
    high = high_freq if high_freq > 0 else high_freq + nyquist
    mel_edges = np.linspace(_kaldi_mel(low_freq), _kaldi_mel(high), num_bins + 2)
    fft_mel = _kaldi_mel(sample_frequency / padded * np.arange(padded // 2))
    diff = np.diff(mel_edges)
    slopes = mel_edges[None, :] - fft_mel[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    banks = np.maximum(0.0, np.minimum(down, up)).T  # (num_bins, padded//2)
    return np.pad(banks, ((0, 0), (0, 1)))


def _w2v_normalize_np(frames: np.ndarray) -> np.ndarray:
    """Per-bin (x - mean) / sqrt(var(ddof=1) + 1e-7) over the utterance's frames, in float32 like HF."""
    mean = frames.mean(axis=0, keepdims=True)
    var = frames.var(axis=0, ddof=1, keepdims=True)
    return (frames - mean) / np.sqrt(var + 1e-7)


def _as_wave_list(waves) -> list[np.ndarray]:
    if isinstance(waves, np.ndarray) or hasattr(waves, "shape"):
        arr = np.asarray(waves)
        if arr.ndim == 1:
            return [arr]
        if arr.ndim == 2:
            return list(arr)
        raise ChannelError(f"w2v_bert_features: expected (N,), (B, N) or a list of (N,), got shape {arr.shape}")
    out = [np.asarray(w) for w in waves]
    for i, w in enumerate(out):
        w = np.squeeze(w)
        if w.ndim != 1:
            raise ChannelError(f"w2v_bert_features: utterance {i} has shape {out[i].shape}, expected mono (N,)")
        out[i] = w
    return out


def w2v_bert_features(
    waves: Sequence[np.ndarray] | np.ndarray, *, padding_value: float = 1.0, stride: int = 2,
    sampling_rate: int = 16000,
) -> tuple[np.ndarray, np.ndarray]:
    """``SeamlessM4TFeatureExtractor(...)(waves, sampling_rate=16000, padding=True)`` in NumPy.

    Per utterance: x * 2^15, Kaldi-style power spectrogram (400/160/512, Povey, pre-emphasis 0.97,
    DC removal), 80 Kaldi mel bins 20-8000 Hz, ``log(max(., 1.1920929e-7))``, per-bin normalisation
    with ``var(ddof=1) + 1e-7`` over its own frames. The batch is padded with ``padding_value``
    (1.0 in the w2v-bert-2.0 config) to the longest utterance rounded up to a multiple of
    ``stride``, then ``stride`` consecutive frames are concatenated.

    Args:
        waves: list of 1-D 16 kHz float waveforms (different lengths allowed), or one ``(N,)`` /
            ``(B, N)`` array (rows are taken whole; pass a list to drop padding).
    Returns:
        ``input_features`` float32 ``(B, T2, 80*stride)`` and ``attention_mask`` int32 ``(B, T2)``
        (1 where the second frame of a pair is real), T2 = ceil(max F / stride),
        F = 1 + (N - 400) // 160.

    Raises:
        SampleRateError: ``sampling_rate`` is not 16000 (the extractor refuses other rates).
        AudioTooShortError: an utterance has fewer than two frames (560 samples).
    """
    c = W2V_BERT_FBANK
    if int(sampling_rate) != int(c.sample_frequency):
        raise SampleRateError(f"w2v_bert_features: audio at {sampling_rate} Hz, the extractor needs 16000 Hz")
    feats = []
    for i, w in enumerate(_as_wave_list(waves)):
        n_frames = 1 + (w.shape[-1] - c.window_size) // c.window_shift if w.shape[-1] >= c.window_size else 0
        if n_frames < 2:
            raise AudioTooShortError(
                f"w2v_bert_features: utterance {i} has {w.shape[-1]} samples; at least "
                f"{c.window_size + c.window_shift} (two 25 ms frames) are needed")
        feats.append(_w2v_normalize_np(_w2v_frames_np(w)))
    if not feats:
        raise ValueError("w2v_bert_features: no waveforms given")
    longest = max(f.shape[0] for f in feats)
    total = -(-longest // stride) * stride
    bins = feats[0].shape[1]
    batch = np.full((len(feats), total, bins), padding_value, dtype=np.float32)
    mask = np.zeros((len(feats), total), dtype=np.int32)
    for i, f in enumerate(feats):
        batch[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = 1
    features = batch.reshape(len(feats), total // stride, bins * stride)
    return features, np.ascontiguousarray(mask[:, stride - 1 :: stride])


@functools.partial(jax.jit, static_argnames=("padding_value", "stride"))
def _w2v_bert_features_jax(waves, lengths, padding_value, stride):
    c = W2V_BERT_FBANK
    power = _kaldi_power_frames(waves, c)  # (B, F, 257)
    banks = _kaldi_mel_banks_f64(c.num_mel_bins, c.padded_window_size, c.sample_frequency, c.low_freq,
                                 c.high_freq).astype(np.float32)
    logmel = jnp.log(jnp.maximum(jnp.matmul(power, banks.T, precision=_HIGHEST), c.log_floor))
    num_frames = logmel.shape[1]
    frames_per_item = jnp.maximum(1 + (lengths - c.window_size) // c.window_shift, 0)  # (B,)
    valid = jnp.arange(num_frames)[None, :] < frames_per_item[:, None]  # (B, F)
    count = frames_per_item[:, None, None].astype(jnp.float32)
    vmask = valid[..., None]
    mean = jnp.sum(jnp.where(vmask, logmel, 0.0), axis=1, keepdims=True) / count
    var = jnp.sum(jnp.where(vmask, (logmel - mean) ** 2, 0.0), axis=1, keepdims=True) / (count - 1.0)
    normed = jnp.where(vmask, (logmel - mean) / jnp.sqrt(var + 1e-7), padding_value)
    total = -(-num_frames // stride) * stride
    normed = jnp.pad(normed, ((0, 0), (0, total - num_frames), (0, 0)), constant_values=padding_value)
    valid = jnp.pad(valid, ((0, 0), (0, total - num_frames)))
    b = normed.shape[0]
    features = normed.reshape(b, total // stride, normed.shape[-1] * stride)
    return features, valid[:, stride - 1 :: stride].astype(jnp.int32)


def w2v_bert_features_jax(
    waves_padded, lengths, *, padding_value: float = 1.0, stride: int = 2
) -> tuple[jax.Array, jax.Array]:
    """JAX version of :func:`w2v_bert_features` for a zero-padded batch (float32 FFT, jit-able).

    Args:
        waves_padded: ``(B, Nmax)`` 16 kHz waveforms; samples past ``lengths[b]`` are ignored
            only through the frame count, so pad with zeros (frames straddling the end are dropped).
        lengths: ``(B,)`` true sample counts (each >= 560).
    Returns:
        features ``(B, T2, 160)`` float32 and attention_mask ``(B, T2)`` int32, T2 from ``Nmax``:
        ceil((1 + (Nmax - 400)//160) / 2). Equals the NumPy path up to float32 FFT rounding
        (features are normalised log-mels, so ~1e-4 absolute).
    """
    waves_padded = jnp.asarray(waves_padded, jnp.float32)
    if waves_padded.ndim != 2:
        raise ChannelError(f"w2v_bert_features_jax: expected (B, N) waveforms, got shape {waves_padded.shape}")
    _check_fbank_length(waves_padded.shape[-1], W2V_BERT_FBANK)
    return _w2v_bert_features_jax(waves_padded, jnp.asarray(lengths, jnp.int32), float(padding_value), int(stride))
