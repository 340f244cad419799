"""Speaker similarity: cosine similarity of speaker embeddings of the prompt and the synthesized speech.

Two embedders:

- :class:`ResemblyzerEmbedder`: Resemblyzer's GE2E d-vector LSTM (256-d). Its weights (``pretrained.pt``, 17 MB)
  ship inside the ``resemblyzer`` wheel and load from the package folder; no download. It runs in torch (CPU),
  hence the ``eval`` extra. We do not call ``resemblyzer.preprocess_wav`` (it calls ``librosa.resample`` with
  positional rates, which librosa >= 0.10 rejects): waves are loaded at 16 kHz by our loader, silences longer
  than 0.3 s are cut by an energy gate (Resemblyzer's webrtcvad gate does the same job) and the volume is
  normalized to -30 dBFS as Resemblyzer does.
- :class:`CampplusEmbedder`: our CAM++ (:mod:`indextts2_jax.models.campplus`, IndexTTS2's style encoder) with the
  official ``campplus_cn_common.bin`` weights when a path is given (read with torch), on Kaldi fbank features.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

__all__ = ["CampplusEmbedder", "ResemblyzerEmbedder", "cosine_similarity", "trim_long_silences"]

SAMPLE_RATE = 16000


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """cos(a, b) of two 1-D vectors (0 when either is all zeros)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def trim_long_silences(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, max_silence: float = 0.3,
                       threshold_db: float = -40.0) -> np.ndarray:
    """Drop the parts of silences (10 ms frames below ``threshold_db`` of the loudest frame) beyond ``max_silence``.

    wave: (T,) float. Returns (T',) with every silent run shortened to at most ``max_silence`` seconds.
    """
    frame = sample_rate // 100
    n = len(wave) // frame
    if n == 0:
        return wave
    rms = np.sqrt(np.mean(np.asarray(wave[: n * frame], np.float64).reshape(n, frame) ** 2, axis=1))
    loud = rms > rms.max() * 10 ** (threshold_db / 20)
    keep = np.ones(n, bool)
    max_frames = int(max_silence * 100)
    run = 0
    for i in range(n):
        run = 0 if loud[i] else run + 1
        keep[i] = run <= max_frames
    kept = wave[: n * frame].reshape(n, frame)[keep].reshape(-1)
    return np.concatenate([kept, wave[n * frame :]])


def _import_voice_encoder():
    """``resemblyzer.VoiceEncoder``, importable even where its ``webrtcvad`` import fails.

    Resemblyzer's package imports ``webrtcvad`` at module level for its own silence trimming, which we do not
    use. webrtcvad 2.0.10 (the sdist Resemblyzer depends on) imports ``pkg_resources``, gone from setuptools
    >= 81; in that case a placeholder module stands in (any use of the VAD would raise AttributeError).
    Resemblyzer also imports the deprecated ``scipy.ndimage.morphology`` (a DeprecationWarning, silenced here).
    """
    import sys
    import types
    import warnings

    try:
        import webrtcvad  # noqa: F401
    except ImportError:
        sys.modules.setdefault("webrtcvad", types.ModuleType("webrtcvad"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from resemblyzer import VoiceEncoder
    return VoiceEncoder


class ResemblyzerEmbedder:
    """Resemblyzer d-vector of a 16 kHz waveform: (T,) float32 -> (256,) unit-norm float32."""

    name = "resemblyzer"

    def __init__(self):
        import torch

        VoiceEncoder = _import_voice_encoder()

        self._torch = torch
        self._encoder = VoiceEncoder(device="cpu", verbose=False)

    def __call__(self, wave_16k: np.ndarray) -> np.ndarray:
        wave = trim_long_silences(np.asarray(wave_16k, np.float32))
        rms = np.sqrt(np.mean(wave.astype(np.float64) ** 2))
        if rms > 0:  # -30 dBFS, Resemblyzer's target level
            wave = wave * (10 ** (-30 / 20) / rms)
        # One torch thread: the LSTM is tiny, and on a busy 2-core machine 2 threads took 1.9 s per utterance
        # against 0.04 s with one (OpenMP threads waiting on each other).
        threads = self._torch.get_num_threads()
        self._torch.set_num_threads(1)
        try:
            return np.asarray(self._encoder.embed_utterance(wave.astype(np.float32)), np.float32)
        finally:
            self._torch.set_num_threads(threads)


class CampplusEmbedder:
    """Our CAM++ on the official weights: 16 kHz (T,) float32 -> (192,) embedding.

    checkpoint: the official ``campplus_cn_common.bin`` (a torch state dict; needs torch), or an already
    converted ``{"params", "batch_stats"}`` dict (with ``config``). jit=False runs op by op (no compile: quicker
    for a handful of utterances).
    """

    name = "campplus"

    def __init__(self, checkpoint: str | os.PathLike | dict, config=None, bucket_seconds: float = 4.0,
                 jit: bool = True):
        import jax

        from data_pipeline.model_features import masked_campplus
        from indextts2_jax.models import campplus

        if isinstance(checkpoint, dict):
            variables = checkpoint
            config = config or campplus.CAMPPlusConfig()
        else:
            from indextts2_jax.convert.official import _campplus_from_shapes
            from indextts2_jax.convert.state_dict import load_torch_checkpoint

            sd = load_torch_checkpoint(Path(checkpoint))
            if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
                sd = sd["state_dict"]
            config = campplus.CAMPPlusConfig.from_official(_campplus_from_shapes(sd, {"feat_dim": 80}))
            variables = campplus.from_torch(sd, config)
        model = campplus.CAMPPlus(config)
        # Zero-padded to a multiple of bucket_seconds and masked (each embedding equals the unpadded call):
        # one compile per bucket instead of one per utterance length.
        apply = functools.partial(masked_campplus, model)
        self._apply = jax.jit(apply) if jit else apply
        self._variables = variables
        self.bucket = max(1, int(bucket_seconds * SAMPLE_RATE))

    def __call__(self, wave_16k: np.ndarray) -> np.ndarray:
        from indextts2_jax.audio import campplus_features, fbank_num_frames

        wave = np.asarray(wave_16k, np.float32)
        n = len(wave)
        padded = np.zeros((1, -(-n // self.bucket) * self.bucket), np.float32)
        padded[0, :n] = wave
        feats = campplus_features(padded, lengths=np.array([n]))
        frames = np.asarray(fbank_num_frames(np.array([n])), np.int32)
        return np.asarray(self._apply(self._variables, feats, frames)[0], np.float32)
