"""Quality metrics: DNSMOS (no reference); with a reference recording MCD, F0 RMSE, PESQ and STOI.

All functions take 16 kHz float32 mono waveforms ``(T,)``.

- :func:`dnsmos`: Microsoft's DNSMOS P.835 (SIG, BAK, OVRL) and P.808 MOS through ``speechmos``, whose wheel
  ships the ONNX models (run with onnxruntime on the CPU; no download). Scores are on a 1..5 scale.
- :func:`mel_cepstral_distortion`: MCD in dB between reference and output after DTW alignment (their timings
  differ). The mel-cepstrum is the DCT-II (orthonormal) of the natural-log mel amplitude spectrum (40 mel bands,
  1024-point FFT, 256 hop; coefficients 1..24, c0 (energy) excluded); MCD = 10/ln10 * sqrt(2 * sum_d (c_d -
  c'_d)^2), averaged over the aligned frame pairs. Leading/trailing silence (40 dB below the peak) is cut.
  Values are comparable between systems scored here, not with numbers from SPTK ``mcep`` based tools.
- :func:`f0_rmse`: RMSE in Hz of pYIN F0 (50..600 Hz) over the DTW-aligned frame pairs voiced in both, plus the
  voicing decision error (fraction of aligned pairs whose voicing differs).
- :func:`pesq_wb` / :func:`stoi`: ITU-T P.862.2 wide-band PESQ (``pesq`` package, -0.5..4.64) and STOI
  (``pystoi``, 0..1). Both compare sample-aligned signals: they are meaningful when the output follows the
  reference's timing (copy synthesis, vocoder resynthesis, or duration-controlled speech); otherwise they mostly
  measure misalignment. The longer signal is cut to the shorter.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

__all__ = ["dnsmos", "f0_rmse", "mel_cepstral_distortion", "pesq_wb", "stoi", "aligned_features",
           "mel_cepstrum"]

SAMPLE_RATE = 16000
N_FFT = 1024
HOP = 256
N_MELS = 40
N_CEPSTRUM = 24
MCD_CONSTANT = 10.0 / np.log(10.0) * np.sqrt(2.0)
PESQ_MAX = 4.643888  # P.862.2 mapping of a perfect score


def _trim(wave: np.ndarray, top_db: float = 40.0) -> np.ndarray:
    import librosa

    trimmed, _ = librosa.effects.trim(np.asarray(wave, np.float32), top_db=top_db, frame_length=N_FFT,
                                      hop_length=HOP)
    return trimmed if len(trimmed) >= N_FFT else np.asarray(wave, np.float32)


@functools.lru_cache(maxsize=2)
def _mel_matrix(sample_rate: int) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sample_rate, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=sample_rate / 2)


def mel_cepstrum(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(T,) -> (frames, 25) mel-cepstrum c0..c24 of the natural-log mel amplitude spectrum (see module doc)."""
    import librosa
    from scipy.fft import dct

    spec = np.abs(librosa.stft(np.asarray(wave, np.float32), n_fft=N_FFT, hop_length=HOP, center=True)) ** 2
    mel_amp = np.sqrt(np.maximum(_mel_matrix(sample_rate) @ spec, 1e-10))
    return dct(np.log(mel_amp), type=2, norm="ortho", axis=0)[: N_CEPSTRUM + 1].T


def aligned_features(reference: np.ndarray, output: np.ndarray, sample_rate: int = SAMPLE_RATE):
    """Trimmed waves, their mel-cepstra and the DTW path (pairs of frame indices, in time order)."""
    import librosa

    ref, out = _trim(reference), _trim(output)
    c_ref, c_out = mel_cepstrum(ref, sample_rate), mel_cepstrum(out, sample_rate)
    _, path = librosa.sequence.dtw(X=c_ref[:, 1:].T, Y=c_out[:, 1:].T, metric="euclidean")
    return ref, out, c_ref, c_out, path[::-1]


def mel_cepstral_distortion(reference: np.ndarray, output: np.ndarray, sample_rate: int = SAMPLE_RATE,
                            aligned=None) -> float:
    """MCD (dB) of ``output`` against ``reference`` over the DTW path; 0 for identical signals."""
    _, _, c_ref, c_out, path = aligned if aligned is not None else aligned_features(reference, output, sample_rate)
    diff = c_ref[path[:, 0], 1:] - c_out[path[:, 1], 1:]
    return float(np.mean(MCD_CONSTANT * np.sqrt(np.sum(diff.astype(np.float64) ** 2, axis=1))))


def _pyin(wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    import librosa

    f0, voiced, _ = librosa.pyin(np.asarray(wave, np.float32), fmin=50.0, fmax=600.0, sr=sample_rate,
                                 frame_length=N_FFT, hop_length=HOP, center=True)
    return np.nan_to_num(f0), voiced.astype(bool)


def f0_rmse(reference: np.ndarray, output: np.ndarray, sample_rate: int = SAMPLE_RATE,
            aligned=None) -> tuple[float, float]:
    """(F0 RMSE in Hz over DTW pairs voiced in both, voicing decision error in [0, 1]); (nan, vde) if none."""
    ref, out, _, _, path = aligned if aligned is not None else aligned_features(reference, output, sample_rate)
    f_ref, v_ref = _pyin(ref, sample_rate)
    f_out, v_out = _pyin(out, sample_rate)
    i = np.minimum(path[:, 0], len(f_ref) - 1)
    j = np.minimum(path[:, 1], len(f_out) - 1)
    both = v_ref[i] & v_out[j]
    vde = float(np.mean(v_ref[i] != v_out[j]))
    if not both.any():
        return float("nan"), vde
    return float(np.sqrt(np.mean((f_ref[i][both] - f_out[j][both]) ** 2))), vde


def _common_length(reference: np.ndarray, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(reference), len(output))
    return np.asarray(reference[:n], np.float64), np.asarray(output[:n], np.float64)


def pesq_wb(reference: np.ndarray, output: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Wide-band PESQ (MOS-LQO, -0.5..4.64) of the sample-aligned signals (16 kHz)."""
    from pesq import pesq

    ref, out = _common_length(reference, output)
    return float(pesq(sample_rate, ref, out, "wb"))


def stoi(reference: np.ndarray, output: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """STOI (0..1) of the sample-aligned signals."""
    from pystoi import stoi as _stoi

    ref, out = _common_length(reference, output)
    return float(_stoi(ref, out, sample_rate, extended=False))


@functools.lru_cache(maxsize=1)
def _dnsmos_module():
    """speechmos' dnsmos module with its model object made here: the wheel's ONNX files, but sessions whose
    idle threads sleep (onnxruntime's default spin-waiting starved torch and pocketsphinx on a 2-core machine)."""

    import onnxruntime as ort
    from speechmos import dnsmos as module

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as fast as 2 here (0.6 s per utterance), and leaves a core to the rest
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    models = Path(module.__file__).parent / "dnsmos_models"
    model = module.DNSMOS.__new__(module.DNSMOS)
    model.primary_model_path = str(models / "sig_bak_ovr.onnx")  # the path speechmos.dnsmos.run checks
    model.onnx_sess = ort.InferenceSession(model.primary_model_path, options, providers=["CPUExecutionProvider"])
    model.p808_onnx_sess = ort.InferenceSession(str(models / "model_v8.onnx"), options,
                                                providers=["CPUExecutionProvider"])
    module.dnsmos = model
    return module


def dnsmos(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
    """DNSMOS of a 16 kHz waveform: {"dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808"} (1..5)."""
    wave = np.asarray(wave, np.float32)
    peak = float(np.max(np.abs(wave))) if len(wave) else 0.0
    if peak > 1.0:  # speechmos refuses samples outside [-1, 1]
        wave = wave / peak
    scores = _dnsmos_module().run(wave, sr=sample_rate)
    return {f"dnsmos_{k.removesuffix('_mos')}": float(scores[k]) for k in ("ovrl_mos", "sig_mos", "bak_mos",
                                                                            "p808_mos")}
