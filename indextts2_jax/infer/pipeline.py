"""IndexTTS-2 synthesis: prompt features, conditioning, T2S codes, GPT latent, S2M, BigVGAN (reference §7, §11).

``IndexTTS2(assets)`` builds every jitted stage once per model; ``synthesize`` follows infer_v2's flow:

1. emotion mode (§7): speaker as emotion (default), emotion reference audio with ``emotion_alpha``,
   8-dim ``emotion_vector`` (feat1 row by cosine to the CAMPPlus style, feat2 rows weighted, plus the
   ``(1 - sum w)`` residual of the speaker file's own emotion vector), or text-to-emotion
   (``use_emotion_text`` / ``emotion_text``: the QwenEmotion model reads the text and gives the 8 weights,
   ``infer/emotion_text.py``; then as the vector mode). Without its folder that raises
   :class:`EmotionTextUnavailableError`;
2. prompt features, cached per file (path, size, mtime): w2v-BERT ``hidden_states[k]`` normalised, codec
   ``S_ref``, reference mel, CAMPPlus style; the emotion prompt's w2v-BERT features;
3. text -> normalise -> BPE -> segments of <= ``max_text_tokens_per_segment`` ids;
4. per segment: codes (``generate``: greedy / sampling / beams, repetition penalty, optional exact
   count), cut at the first stop; the teacher-forced GPT latent; S2M (``vq2emb + gpt_layer``, length
   regulator to ``floor(1.72 m)`` frames, CFM with CFG) and BigVGAN;
5. segments joined with ``interval_silence_ms`` of zeros.

Shapes are bucketed (text ids, prompt frames, codes, mel frames, batch rows; see :func:`bucket_size`),
and each stage gets true lengths, so a new text or prompt of a similar length reuses the compiled
programs. Per new prompt *length* (each prompt is processed once and cached) the prompt front-ends that
are not padding-invariant compile at its exact length: reference mel, CAMPPlus (its pooling has no length
mask) and the GPT conditioning encoders (see ``bucket_conditioning``); w2v-BERT and the codec are bucketed.

Padding semantics: every stage with lengths reproduces its unpadded result up to float rounding (the GPT
latent packs each row as ``[conds][start, text, stop][start_mel, codes, stop]`` and reads the rows under
a causal mask, the S2M uses per-item lengths). BigVGAN has no length input: it runs on the mel followed
by at least ``vocoder_context_frames`` frames of the silence mel ``log(1e-5)``, so the audio of a segment
does not depend on the bucket or the batch; it differs from an exact-length call (the official zero padding
inside every conv at the sequence end) only in the last few frames (measured with the tiny random vocoder:
the last 6 of 60 frames, i.e. ~70 ms; ``vocoder_context_frames`` is the conservative bound used as the
margin). ``exact_vocoder=True`` runs each segment at its own length instead (one compile per length).

Semantic front-end (``indextts2_jax.infer.configs``, ``inference.semantic_features``): ``"w2v_bert"`` (above)
or ``"mel"``, the demo's stand-in: the codec and the GPT conditioning read the prompt's stacked log-mel pairs
(``data_pipeline.preprocess``'s ``mel_stacked``, 160-d, ~43 Hz) instead of w2v-BERT states; one code is two
mel frames (S2M target length ``2 m``, :attr:`IndexTTS2.code_rate` 43.07/s); no w2v-BERT params or stats.
Emotion matrices (feat1/feat2) may be absent; ``emotion_vector`` then raises a ConfigError.

Batching (``synthesize_batch``): the segments of many jobs run together (left-padded generation, per-item
S2M lengths, padded vocoder); with greedy decoding the results equal one-by-one synthesis.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax import audio as audio_lib
from indextts2_jax.convert.official import cast_params
from indextts2_jax.errors import ConfigError, IndexTTS2Error, ModelDirectoryError
from indextts2_jax.infer.assets import ModelAssets
from indextts2_jax.infer.configs import ComponentConfigs, component_configs
from indextts2_jax.infer.generate import DecodeConfig, generate
from indextts2_jax.jsonl import read_jsonl
from indextts2_jax.models import bigvgan, campplus, gpt, s2mel, semantic_codec, w2v_bert
from indextts2_jax.nn.gpt2 import causal_mask
from indextts2_jax.nn.layers import check_attention
from indextts2_jax.text.tokenizer import TextTokenizer

EMOTIONS = ("happy", "angry", "sad", "afraid", "disgusted", "melancholic", "surprised", "calm")
SILENCE_LOG_MEL = math.log(1e-5)  # the S2M/BigVGAN log-mel of silence


class EmotionTextUnavailableError(IndexTTS2Error, NotImplementedError):
    """Text-to-emotion was asked for, but no emotion model folder (the official QwenEmotion) is known."""


EMOTION_BIAS = (0.9375, 0.875, 1.0, 1.0, 0.9375, 0.9375, 0.6875, 0.5625)


def normalize_emotion_vector(weights: Sequence[float], apply_bias: bool = True) -> list[float]:
    """The official webui's ``normalize_emo_vec``: scale by the per-emotion bias (de-emphasising surprise and
    calm), then rescale so the weights sum to at most 0.8. ``IndexTTS2.synthesize`` does not apply it (nor
    does infer_v2's API); the CLI does with ``--normalize_emotion_vector``."""
    w = [float(x) * (b if apply_bias else 1.0) for x, b in zip(weights, EMOTION_BIAS)]
    total = sum(w)
    return [x * 0.8 / total for x in w] if total > 0.8 else w


# ---------------------------------------------------------------------------------------------
# configs and buckets
# ---------------------------------------------------------------------------------------------
def bucket_size(n: int, minimum: int = 16, buckets: Sequence[int] | None = None) -> int:
    """The smallest bucket >= n: from ``buckets`` if given (beyond its end: powers of two), else the
    sequence ``minimum, 1.5 minimum, 2 minimum, 3 minimum, 4 minimum, ...`` (powers of two and their
    midpoints; at most 33% padding)."""
    n = max(int(n), 1)
    if buckets:
        for b in sorted(buckets):
            if b >= n:
                return int(b)
        return 1 << (n - 1).bit_length()
    b = max(int(minimum), 1)
    while b < n:
        b = b * 3 // 2 if (b & (b - 1)) == 0 and b >= 2 else (b * 4 // 3 if b % 3 == 0 else b * 2)
    return b


def batch_bucket(n: int) -> int:
    return 1 << (max(n, 1) - 1).bit_length()


def vocoder_context_frames(config: bigvgan.BigVGANConfig) -> int:
    """A bound (in mel frames) on how far BigVGAN's receptive field reaches to either side."""
    frames, rate = 3.0, 1  # conv_pre k7
    for u, k in zip(config.upsample_rates, config.upsample_kernel_sizes):
        frames += math.ceil(k / u) / rate  # transposed conv, at the input rate
        rate *= u
        reach = 0
        for rk, dils in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
            # conv1 dilated + conv2, each behind an anti-aliased activation (12-tap filters at 2x)
            reach = max(reach, sum((rk - 1) * d // 2 + (rk - 1) // 2 + 12 for d in dils))
        frames += reach / rate
    frames += (12 + 3) / rate  # activation_post + conv_post
    return int(math.ceil(frames)) + 2


def split_tokens(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` codes over segments in proportion to ``weights`` (largest remainder, each >= 1)."""
    n = len(weights)
    if total < n:
        raise ConfigError(f"target of {total} codes is less than one per segment ({n} segments)")
    w = np.asarray(weights, np.float64)
    raw = (total - n) * w / w.sum()
    out = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - out), kind="stable")[: (total - n) - out.sum()]:
        out[i] += 1
    return [int(x) + 1 for x in out]


# ---------------------------------------------------------------------------------------------
# cached prompt features
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SpeakerFeatures:
    """One speaker prompt: semantic features (1, Tb, H) (w2v-BERT or stacked mel) with ``length`` valid frames,
    codec-quantised ``S_ref`` (1, Tb, H), reference mel (1, Pb, n_mels) with ``mel_length`` frames, CAMPPlus
    ``style`` (1, S)."""

    emb: jax.Array
    length: int
    S_ref: jax.Array
    ref_mel: jax.Array
    mel_length: int
    style: np.ndarray
    seconds: float


@dataclasses.dataclass
class EmotionFeatures:
    emb: jax.Array
    length: int


class _LRU(collections.OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key, value):
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def _file_key(kind: str, path) -> tuple:
    p = Path(path)
    if not p.exists():
        return (kind, str(p), None, None)
    st = p.stat()
    return (kind, str(p.resolve()), st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------------------------------------
# the synthesizer
# ---------------------------------------------------------------------------------------------
SAMPLING_DEFAULTS = dict(do_sample=True, num_beams=3, top_k=30, top_p=0.8, temperature=0.8,
                         repetition_penalty=10.0, length_penalty=0.0, max_mel_tokens=1500)
JOB_KEYS = ("text", "speaker_prompt", "emotion_prompt", "emotion_vector", "emotion_alpha", "use_emotion_text",
            "emotion_text", "use_random", "target_tokens", "duration_seconds", "seed", "max_text_tokens_per_segment",
            "interval_silence_ms", "quick_streaming_tokens", "codes", "out", "id")
STAGES = ("prompt", "text", "conditioning", "generation", "latent", "s2m", "vocoder")


@dataclasses.dataclass
class StreamChunk:
    """One segment of :meth:`IndexTTS2.synthesize_stream`: ``audio`` float32 (n,) at ``sample_rate`` (the
    inter-segment silence first, except for segment 0), ``segment`` of ``num_segments``, the segment's ``info``
    (as ``report["segments"][i]``), ``elapsed_s`` since the call; ``report`` (the whole report) on the last."""

    audio: np.ndarray
    sample_rate: int
    segment: int
    num_segments: int
    info: dict
    elapsed_s: float
    report: dict | None = None


@dataclasses.dataclass
class _Run:
    """The planned work of one synthesis call: jobs, their reports, prompt features and conds, one item per
    text segment, the decoding options, and the timings so far."""

    jobs: list
    decode: DecodeConfig
    t_start: float
    timings: dict
    compiles_before: int
    cache_before: dict
    batch_size: int = 1
    reports: list = dataclasses.field(default_factory=list)
    items: list = dataclasses.field(default_factory=list)
    spk_feats: list = dataclasses.field(default_factory=list)
    job_conds: list = dataclasses.field(default_factory=list)


# the components whose programs compute in the synthesizer's dtype (the rest always run in float32)
COMPUTE_DTYPE_COMPONENTS = ("gpt", "s2mel", "bigvgan")


class IndexTTS2:
    """Zero-shot TTS with emotion and duration control.

    Args:
      assets: a loaded model (:class:`ModelAssets`).
      dtype: compute dtype of the GPT, S2M and BigVGAN (``COMPUTE_DTYPE_COMPONENTS``), which then also hold their
        weights in it on the device (bfloat16: as a bfloat16 bundle stores them, via ``cast_params``); w2v-BERT,
        the codec and CAMPPlus always run in float32 on the weights as given, as infer_v2 does.
      diffusion_steps / cfg_rate: CFM settings (default from ``assets.config.inference``: 25 / 0.7).
      buckets: optional explicit bucket list for every padded length (default :func:`bucket_size`).
      prompt_cache_size: prompt files kept in the feature cache.
      exact_vocoder: vocode each segment at its own length (official numerics at the tail; one compile
        per length) instead of on silence-padded buckets.
      attention: how the S2M estimator (the DiT, 25 calls per segment) attends: "einsum" (default), or
        ``jax.nn.dot_product_attention``'s "xla" / "cudnn" (flash attention on NVIDIA GPUs, with
        ``dtype=bfloat16``: no T x T score buffers, which at the end-to-end sizes dominate the S2M's memory
        traffic; ``nn/dit.py``).
      bucket_conditioning: run the speaker/emotion conditioning encoders on bucket-padded prompt features
        (no compile per new prompt length). Off by default: their WeNet conformer convolution sees the
        GLU bias of padded frames at the edge, so padded prompts move the speaker latents by ~3e-4
        (relative) from infer_v2's unpadded B=1 values; w2v-BERT and the codec are padding-invariant
        (~2e-7) and always bucketed.
      emotion_text_model: text-to-emotion for ``use_emotion_text``/``emotion_text``: a Qwen3 emotion model folder
        (the official ``qwen0.6bemo4-merge/``) or a loaded :class:`~indextts2_jax.infer.emotion_text.QwenEmotion`;
        default: the folder an official model directory names (``qwen_emo_path``), if it is there. Loaded
        at its first use, in ``dtype`` (infer_v2 loads it in float16).
    """

    def __init__(self, assets: ModelAssets, dtype=jnp.float32, *, diffusion_steps: int | None = None,
                 cfg_rate: float | None = None, buckets: Sequence[int] | None = None,
                 prompt_cache_size: int = 16, exact_vocoder: bool = False, bucket_conditioning: bool = False,
                 attention: str = "einsum", emotion_text_model=None):
        missing = assets.missing_components()
        if missing:
            raise ConfigError(f"model assets ({assets.source}) lack components {missing}")
        self.dtype = jnp.dtype(dtype)
        try:
            check_attention(attention, self.dtype)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.cfg = component_configs(assets.config)
        if attention != self.cfg.s2mel.dit.attention:
            s2m = self.cfg.s2mel
            self.cfg = dataclasses.replace(
                self.cfg, s2mel=dataclasses.replace(s2m, dit=dataclasses.replace(s2m.dit, attention=attention)))
        inf = assets.config.get("inference", None) if hasattr(assets.config, "get") else None
        inf = inf if inf is not None else {}
        self.diffusion_steps = int(diffusion_steps if diffusion_steps is not None else inf.get("diffusion_steps", 25))
        self.cfg_rate = float(cfg_rate if cfg_rate is not None else inf.get("inference_cfg_rate", 0.7))
        self.prompt_max_seconds = float(inf.get("prompt_max_seconds", 15.0))
        self.buckets = tuple(buckets) if buckets else None
        self.exact_vocoder = exact_vocoder
        self.bucket_conditioning = bucket_conditioning
        self.sample_rate = int(self.cfg.s2mel.sample_rate)
        self.hop = int(self.cfg.bigvgan.hop_length)
        self.vocoder_margin = vocoder_context_frames(self.cfg.bigvgan)
        self.tokenizer = TextTokenizer(assets.bpe_model)
        self.semantic_features = self.cfg.semantic_features  # "w2v_bert" (official) or "mel" (demo stand-in)
        if self.semantic_features == "mel":
            self.cfg.check_front_end()
        self.spk_rows = self.emo_rows = None  # emotion matrices (feat1/feat2): optional
        if assets.spk_matrix is not None and assets.emo_matrix is not None:
            emo_num = [int(x) for x in assets.config.model.emo_num]
            if sum(emo_num) != assets.spk_matrix.shape[0] or sum(emo_num) != assets.emo_matrix.shape[0]:
                raise ConfigError(f"emo_num {emo_num} does not match feat1 {assets.spk_matrix.shape} / feat2 "
                                  f"{assets.emo_matrix.shape}")
            bounds = np.cumsum([0] + emo_num)
            self.spk_rows = [np.asarray(assets.spk_matrix[a:b], np.float32) for a, b in zip(bounds[:-1], bounds[1:])]
            self.emo_rows = [np.asarray(assets.emo_matrix[a:b], np.float32) for a, b in zip(bounds[:-1], bounds[1:])]
        # One device copy of the model. ``self.assets`` then names it instead of the caller's host arrays, so the
        # host copies a loader made are freed once the caller lets go of them (keeping both held the model twice:
        # 5.6 GB more at official size in float32). A caller that keeps its own ``assets`` keeps its host copy.
        # In bfloat16 the components that compute in it hold their weights in it (cast on the host, before the
        # device sees them), as a bfloat16 bundle does: half the memory, and a decode step reads half the bytes.
        host = dict(assets.params)
        if self.dtype != jnp.float32:
            for name in COMPUTE_DTYPE_COMPONENTS:
                if name in host:
                    host[name] = cast_params(host[name], self.dtype.name)
        p = jax.device_put(host)
        self.assets = dataclasses.replace(assets, params=p)
        codec_params = {k: v for k, v in p["semantic_codec"].items() if k != "decoder"}
        params = {"gpt": p["gpt"], "s2mel": p["s2mel"], "codec": codec_params, "campplus": p["campplus"],
                  "bigvgan": p["bigvgan"]}
        if self.semantic_features == "w2v_bert":
            if assets.w2v_stats is None:
                raise ConfigError(f"model assets ({assets.source}) lack the w2v-BERT statistics (wav2vec2bert_stats) "
                                  "that the w2v_bert semantic front-end needs")
            params.update(w2v=p["w2v_bert"], w2v_mean=np.asarray(assets.w2v_stats["mean"], np.float32),
                          w2v_var=np.asarray(assets.w2v_stats["var"], np.float32))
        self.params = jax.device_put(params)  # moves only the statistics: the rest is on the device already
        self._emotion_text = emotion_text_model if emotion_text_model is not None else assets.extra.get(
            "emotion_text_dir")
        self.prompt_cache = _LRU(prompt_cache_size)
        self.cache_stats = {"hits": 0, "misses": 0}
        # the jitted stages, shared by every synthesizer of the same configs and settings in this process (a
        # reloaded or fine-tuned model of the same config compiles nothing); trace_counts counts their traces
        self._stages = stages = _shared_stages(self.cfg, self.dtype, self.diffusion_steps, self.cfg_rate)
        self.gpt_model, self.trace_counts = stages["gpt_model"], stages["trace_counts"]
        self._w2v, self._codec, self._style = stages["w2v_bert"], stages["codec"], stages["campplus"]
        self._conditioning, self._cond_block = stages["conditioning"], stages["conditioning_block"]
        self._latent, self._s2m, self._vocode = stages["latent"], stages["s2m"], stages["vocoder"]

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, dtype=jnp.float32, **kwargs) -> IndexTTS2:
        """Build the synthesizer from a folder: an official model directory (``config.yaml`` + ``gpt.pth``
        ..., converted once and cached), a converted checkpoint (``converted.json``) or an exported bundle
        (``bundle.json``). Loaders are imported only when needed (the official one needs torch the first
        time)."""
        p = Path(path)
        if not p.exists():
            raise ModelDirectoryError(f"model path not found: {str(p)!r}")
        if p.is_dir() and (p / "converted.json").is_file():
            from indextts2_jax.convert.official import load_converted

            assets = load_converted(p)
        elif p.is_dir() and (p / "bundle.json").is_file():
            from indextts2_jax.export import load_bundle

            assets = load_bundle(p)
        elif p.is_dir() and (p / "config.yaml").is_file():
            from indextts2_jax.convert.official import load_official_model_dir

            assets = load_official_model_dir(p)
        else:
            raise ModelDirectoryError(f"{str(p)!r} is neither an official model directory (config.yaml), a "
                                      "converted checkpoint (converted.json) nor an exported bundle (bundle.json)")
        return cls(assets, dtype=dtype, **kwargs)

    def _bucket(self, n: int, minimum: int) -> int:
        return bucket_size(n, minimum, self.buckets)

    FRAME_STEP = 64

    def _frame_bucket(self, n: int, minimum: int) -> int:
        """Mel-frame lengths of S2M and the vocoder: :meth:`_bucket` up to 512 frames, then multiples of
        ``FRAME_STEP`` (64 frames, 0.74 s). Their cost grows with every padded frame (the DiT's attention
        quadratically): a 10 s prompt mel plus 10 s of output, 861 + 860 frames, ran as 1024 + 1024 with
        the power-of-two buckets (S2M 127 s on the 2-core CPU); here the prompt mel and the target take
        896 frames each and the CFM the bucket of their sum, 1728. Lengths above 512 compile once per
        64-frame step."""
        if self.buckets or n <= 512:
            return self._bucket(n, minimum)
        return -(-int(n) // self.FRAME_STEP) * self.FRAME_STEP

    # -- prompts -----------------------------------------------------------------------------
    def _semantic(self, wave_22k: np.ndarray | None, wave_16k: np.ndarray | None) -> tuple[jax.Array, int]:
        """The prompt's semantic features (1, Tb, H), bucket-padded, and their true length T.

        ``w2v_bert``: normalised w2v-BERT hidden states of ``wave_16k`` (50 Hz). ``mel``: the stacked log-mel
        pairs of ``wave_22k`` exactly as ``data_pipeline.preprocess`` computes the training features (~43 Hz).
        """
        if self.semantic_features == "mel":
            feats = stacked_mel_features(wave_22k, self.assets.config.model.s2mel.preprocess_params)[None]
            t = feats.shape[1]
            tb = self._bucket(t, 32)
            return jnp.asarray(np.pad(feats, ((0, 0), (0, tb - t), (0, 0)))), t
        feats, mask = audio_lib.w2v_bert_features([wave_16k])
        t = int(mask.sum())
        tb = self._bucket(feats.shape[1], 32)
        feats = np.pad(feats, ((0, 0), (0, tb - feats.shape[1]), (0, 0)), constant_values=1.0)
        mask = np.pad(mask, ((0, 0), (0, tb - mask.shape[1])))
        return self._w2v(self.params, jnp.asarray(feats), jnp.asarray(mask)), t

    def speaker_features(self, path) -> SpeakerFeatures:
        """The cached speaker-prompt features of an audio file (infer_v2's speaker path)."""
        key = _file_key("speaker", path)
        if key in self.prompt_cache:
            self.cache_stats["hits"] += 1
            self.prompt_cache.move_to_end(key)
            return self.prompt_cache[key]
        self.cache_stats["misses"] += 1
        wav_22k, wav_16k = audio_lib.load_speaker_prompt(path, truncate_seconds=self.prompt_max_seconds)
        emb, t, _, S_ref = self._quantized(wav_22k, wav_16k)
        mel = np.asarray(audio_lib.mel_spectrogram(wav_22k[None], self.cfg.mel))  # (1, P, n_mels)
        p = mel.shape[1]
        pb = self._frame_bucket(p, 64)
        mel = np.pad(mel, ((0, 0), (0, pb - p), (0, 0)))
        fbank = audio_lib.campplus_features(wav_16k[None])
        style_vec = np.asarray(self._style(self.params, fbank), np.float32)
        feats = SpeakerFeatures(emb=emb, length=t, S_ref=S_ref, ref_mel=jnp.asarray(mel), mel_length=p,
                                style=style_vec, seconds=wav_22k.shape[0] / 22050.0)
        self.prompt_cache.put(key, feats)
        return feats

    def semantic_codes(self, path) -> np.ndarray:
        """The semantic codes (T,) int32 of an audio file: the speaker-prompt front end (w2v-BERT or the demo's
        stacked mel) and the codec, as the GPT predicts them (~50 per second; 43 with the stacked-mel front end).
        With :meth:`synthesize`'s ``codes=`` they resynthesize the file's content in another voice, or score the
        S2M and vocoder on true codes."""
        wav_22k, wav_16k = audio_lib.load_speaker_prompt(path, truncate_seconds=None)
        _, t, codes, _ = self._quantized(wav_22k, wav_16k)
        return np.asarray(codes)[0, :t].astype(np.int32)

    def _quantized(self, wave_22k: np.ndarray, wave_16k: np.ndarray):
        """:meth:`_semantic` then the codec: (features (1, Tb, H), T, codes (1, Tb), quantized (1, Tb, D))."""
        emb, t = self._semantic(wave_22k, wave_16k)
        mask = jnp.asarray(np.arange(emb.shape[1])[None, :] < t)
        codes, quantized = self._codec(self.params, emb, mask)
        return emb, t, codes, quantized

    def vocode(self, mel) -> np.ndarray:
        """BigVGAN on one log-mel (T, n_mels) (``audio.mel_spectrogram``'s layout): the waveform (T * hop,) float32,
        clipped to [-1, 1]. Runs on the silence-padded frame bucket as synthesis does (no compile per length)."""
        mel = np.asarray(mel, np.float32)
        if mel.ndim != 2 or mel.shape[1] != self.cfg.bigvgan.num_mels or mel.shape[0] < 1:
            raise ConfigError(f"vocode: expected a (frames, {self.cfg.bigvgan.num_mels}) log-mel, got {mel.shape}")
        (wave,) = self._vocode_rows(mel[None], np.array([mel.shape[0]]))
        return np.clip(wave, -1.0, 1.0)

    def _vocode_rows(self, mel: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """Rows of ``mel`` (B, T, n_mels) with ``lengths`` valid frames -> B waves (lengths[i] * hop,)."""
        if self.exact_vocoder:
            return [np.asarray(self._vocode(self.params, jnp.asarray(mel[i: i + 1, : lengths[i]])))[0]
                    for i in range(mel.shape[0])]
        b = batch_bucket(mel.shape[0])
        fb = self._frame_bucket(int(lengths.max()) + self.vocoder_margin, 32)
        padded = np.full((b, fb, mel.shape[2]), SILENCE_LOG_MEL, np.float32)
        for i in range(mel.shape[0]):
            padded[i, : lengths[i]] = mel[i, : lengths[i]]
        w = np.asarray(self._vocode(self.params, jnp.asarray(padded)))
        return [w[i, : lengths[i] * self.hop] for i in range(mel.shape[0])]

    def emotion_features(self, path) -> EmotionFeatures:
        """The cached emotion-prompt features (``librosa.load(path, sr=16000)`` path; the stacked-mel front-end
        reads the speaker path's 22.05 kHz audio instead)."""
        key = _file_key("emotion", path)
        if key in self.prompt_cache:
            self.cache_stats["hits"] += 1
            self.prompt_cache.move_to_end(key)
            return self.prompt_cache[key]
        self.cache_stats["misses"] += 1
        if self.semantic_features == "mel":
            wav_22k, _ = audio_lib.load_speaker_prompt(path, truncate_seconds=self.prompt_max_seconds)
            emb, t = self._semantic(wav_22k, None)
        else:
            wav = audio_lib.load_emotion_prompt(path, truncate_seconds=self.prompt_max_seconds)
            emb, t = self._semantic(None, wav)
        feats = EmotionFeatures(emb=emb, length=t)
        self.prompt_cache.put(key, feats)
        return feats

    # -- emotion -----------------------------------------------------------------------------
    def emotion_matrix_vector(self, style: np.ndarray, weights: Sequence[float], use_random: bool = False,
                              rng: np.random.Generator | None = None) -> np.ndarray:
        """sum_i w_i feat2_i[idx_i], idx_i = argmax cosine(style, feat1_i rows) (or random): (D,)."""
        self._require_emotion_matrices()
        s = np.asarray(style, np.float32).reshape(-1)
        out = np.zeros(self.emo_rows[0].shape[1], np.float32)
        rng = rng or np.random.default_rng(0)
        for w, spk, emo in zip(weights, self.spk_rows, self.emo_rows):
            if use_random:
                idx = int(rng.integers(0, spk.shape[0]))
            else:
                cos = spk @ s / np.maximum(np.linalg.norm(spk, axis=1) * np.linalg.norm(s), 1e-8)
                idx = int(np.argmax(cos))
            out += np.float32(w) * emo[idx]
        return out

    def _require_emotion_matrices(self) -> None:
        if self.spk_rows is None:
            raise ConfigError(
                f"emotion_vector needs the emotion matrices (feat1/feat2: spk_matrix, emo_matrix), which this model "
                f"({self.assets.source}) does not have (a model trained by this port's recipe has none); use an "
                "emotion_prompt audio file or the speaker prompt's own emotion instead")

    def _given_codes(self, job: dict, segments: list) -> np.ndarray | None:
        """A job's ``codes`` (semantic codes to speak instead of generating them: :meth:`semantic_codes`), checked."""
        codes = job.get("codes")
        if codes is None:
            return None
        if job.get("target_tokens") is not None or job.get("duration_seconds") is not None:
            raise ConfigError("codes fix the length: give codes or target_tokens/duration_seconds, not both")
        if len(segments) != 1:
            raise ConfigError(f"codes go with a text of one segment; this text has {len(segments)} "
                              "(raise max_text_tokens_per_segment or shorten the text)")
        arr = np.asarray(codes)
        limit = self.cfg.gpt.mel_positions - 2
        if arr.ndim != 1 or arr.size == 0 or arr.size > limit or not np.issubdtype(arr.dtype, np.integer):
            raise ConfigError(f"codes: expected 1 to {limit} integers (a 1-D list), got shape {arr.shape} "
                              f"dtype {arr.dtype}")
        n_codes = int(self.cfg.inference_codec.codebook_size)
        if arr.min() < 0 or arr.max() >= n_codes:
            raise ConfigError(f"codes: values must lie in [0, {n_codes}), got [{arr.min()}, {arr.max()}]")
        return arr.astype(np.int32)

    def _resolve_job(self, job: dict, report: dict, timings: dict):
        """Emotion mode + prompt features + conds (1, 34, D) of one job."""
        unknown = set(job) - set(JOB_KEYS)
        if unknown:
            raise ConfigError(f"unknown job keys {sorted(unknown)}; known: {list(JOB_KEYS)}")
        if job.get("speaker_prompt") is None:
            raise ConfigError("a speaker_prompt audio file is required")
        spk_path = job["speaker_prompt"]
        emo_path = job.get("emotion_prompt")
        alpha = float(job.get("emotion_alpha", 1.0) if job.get("emotion_alpha") is not None else 1.0)
        vector = job.get("emotion_vector")
        if job.get("use_emotion_text") or job.get("emotion_text") is not None:
            # infer_v2: the text's emotion replaces emotion_vector and the emotion audio
            if vector is not None:
                report.setdefault("warnings", []).append("emotion_vector ignored: text-to-emotion asked for")
            vector = self._emotion_from_text(job, report)
        mode = "speaker"
        if vector is not None:
            vector = [float(x) for x in vector]
            if len(vector) != len(EMOTIONS):
                raise ConfigError(f"emotion_vector needs {len(EMOTIONS)} weights ({', '.join(EMOTIONS)}), "
                                  f"got {len(vector)}")
            self._require_emotion_matrices()
            if emo_path is not None:
                report.setdefault("warnings", []).append("emotion_prompt ignored: emotion_vector given")
            emo_path = None
            scale = max(0.0, min(1.0, alpha))
            if scale != 1.0:
                vector = [int(x * scale * 10000) / 10000 for x in vector]
            mode = "text" if "emotion_text" in report else "vector"
        elif emo_path is not None:
            mode = "audio"
        if emo_path is None:
            emo_path, alpha = spk_path, 1.0
        t0 = time.perf_counter()
        spk = self.speaker_features(spk_path)
        emo = self.emotion_features(emo_path)
        timings["prompt"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        ckey = ("cond", _file_key("speaker", spk_path), _file_key("emotion", emo_path))
        if ckey in self.prompt_cache:
            latents, base, emo_vec = self.prompt_cache[ckey]
        else:
            spk_emb, emo_emb = spk.emb, emo.emb
            if not self.bucket_conditioning:  # exact lengths: the WeNet conformer is not padding-invariant
                spk_emb, emo_emb = spk_emb[:, : spk.length], emo_emb[:, : emo.length]
            latents, base, emo_vec = self._conditioning(
                self.params, spk_emb, jnp.array([spk.length], jnp.int32), emo_emb, jnp.array([emo.length], jnp.int32))
            latents, base, emo_vec = latents, np.asarray(base), np.asarray(emo_vec)
            self.prompt_cache.put(ckey, (latents, base, emo_vec))
        emovec = base + np.float32(alpha) * (emo_vec - base)
        if vector is not None:
            rng = np.random.default_rng(int(job.get("seed", 0) or 0))
            mat = self.emotion_matrix_vector(spk.style, vector, bool(job.get("use_random", False)), rng)
            emovec = mat[None] + np.float32(1.0 - sum(vector)) * emovec
        conds = self._cond_block(self.params, latents, jnp.asarray(emovec, jnp.float32))
        jax.block_until_ready(conds)
        timings["conditioning"] += time.perf_counter() - t0
        report.update(emotion_mode=mode, emotion_alpha=alpha, emotion_vector=vector,
                      speaker_prompt=str(spk_path), emotion_prompt=str(emo_path))
        return spk, conds

    def emotion_text_model(self):
        """The text-to-emotion model (:class:`~indextts2_jax.infer.emotion_text.QwenEmotion`), loaded at the first
        call; EmotionTextUnavailableError if this synthesizer has none."""
        from indextts2_jax.infer.emotion_text import QwenEmotion

        if self._emotion_text is None:
            raise EmotionTextUnavailableError(
                "text-to-emotion needs the emotion model folder (the official qwen0.6bemo4-merge/, a Qwen3 causal LM): "
                f"this model ({self.assets.source}) names none that exists; pass emotion_text_model=<folder> (CLI: "
                "--emotion_text_model), or emotion_vector (8 weights: " + ", ".join(EMOTIONS) + ") or an "
                "emotion_prompt audio file")
        if not isinstance(self._emotion_text, QwenEmotion):
            self._emotion_text = QwenEmotion(self._emotion_text, dtype=self.dtype)
        return self._emotion_text

    def _emotion_from_text(self, job: dict, report: dict) -> list[float]:
        """The 8 emotion weights that the text-to-emotion model reads in ``emotion_text`` (default: the text)."""
        model = self.emotion_text_model()
        text = job.get("emotion_text")
        if text is None:  # the text to speak: a long one is read by its beginning (an explicit one must fit)
            text = job.get("text") if isinstance(job.get("text"), str) else ""
            if len(text) > model.max_text_chars:
                report.setdefault("warnings", []).append(
                    f"text-to-emotion read the first {model.max_text_chars} of {len(text)} characters of the text "
                    "(pass emotion_text for another passage)")
                text = text[: model.max_text_chars]
        result = model(text if isinstance(text, str) else "", seed=int(job.get("seed") or 0))
        report["emotion_text"] = {"text": text, "scores": result.scores, "reply": result.reply,
                                  "tokens": result.tokens, "finished": result.finished,
                                  "seconds": round(result.seconds, 3), "cached": result.cached}
        if not result.finished:
            report.setdefault("warnings", []).append(
                f"the emotion model's answer was cut at {result.tokens} tokens (max_new_tokens)")
        return result.vector

    # -- text + durations --------------------------------------------------------------------
    def _segments(self, job: dict, report: dict) -> list[list[int]]:
        text = job.get("text")
        max_tokens = int(job.get("max_text_tokens_per_segment") or 120)
        quick = int(job.get("quick_streaming_tokens") or 0)
        if quick < 0:
            raise ConfigError(f"quick_streaming_tokens must be >= 0, got {quick}")
        segments = self.tokenizer.segment(text if text is not None else "", max_tokens=max_tokens,
                                          quick_streaming_tokens=quick)
        unknown = self.tokenizer.unknown_pieces(text)
        if unknown:
            report.setdefault("warnings", []).append(f"{len(unknown)} unknown pieces: {unknown[:10]}")
        return segments

    @property
    def code_rate(self) -> float:
        """Codes per second of output speech: sample_rate / hop / frames_per_code (22050/256/1.72 = 50.08 with
        w2v-BERT; 22050/256/2 = 43.07 with the stacked-mel front-end, whose codes are mel-frame pairs)."""
        return self.sample_rate / self.hop / self.cfg.s2mel.frames_per_code

    def duration_to_tokens(self, seconds: float, num_segments: int = 1, interval_silence_ms: float = 200) -> int:
        speech = float(seconds) - (num_segments - 1) * interval_silence_ms / 1000.0
        if speech <= 0:
            raise ConfigError(f"duration {seconds} s leaves no time for speech after {num_segments - 1} silences")
        return max(num_segments, int(round(speech * self.code_rate)))

    # -- synthesis ---------------------------------------------------------------------------
    def synthesize(self, text: str, speaker_prompt, emotion_prompt=None, emotion_vector=None,
                   emotion_alpha: float = 1.0, target_tokens: int | None = None,
                   duration_seconds: float | None = None, *, seed: int = 0, max_text_tokens_per_segment: int = 120,
                   interval_silence_ms: float = 200, use_emotion_text: bool = False, emotion_text: str | None = None,
                   use_random: bool = False, codes=None, quick_streaming_tokens: int = 0, batch_size: int = 1,
                   progress: bool = False, **sampling):
        """Synthesize ``text`` in the voice of ``speaker_prompt``.

        Sampling options (infer_v2 defaults): do_sample=True, num_beams=3, top_k=30, top_p=0.8,
        temperature=0.8, repetition_penalty=10.0, length_penalty=0.0, max_mel_tokens=1500 (per segment; at most
        what the GPT's mel position table holds: 401 for the demo GPT).
        ``target_tokens`` (exact code count for the whole text) or ``duration_seconds`` (converted at
        :attr:`code_rate`, silences subtracted) split over the segments by their token counts.
        ``batch_size`` > 1 runs that many segments of the text together. ``codes``: semantic codes to speak
        instead of generating them (see :meth:`synthesize_batch`). ``quick_streaming_tokens`` (infer_v2's
        option): segments merge only once this many text tokens precede them, so the first one is short (for
        :meth:`synthesize_stream`, the time to the first audio).
        ``use_emotion_text`` (infer_v2's ``use_emo_text``): the emotion model reads ``emotion_text`` (default: the
        text) and its 8 weights act as ``emotion_vector`` (scaled by ``emotion_alpha``); an ``emotion_text``
        alone asks for it too. The report's ``emotion_text`` holds the scores and the model's answer.

        Returns ``(wave float32 (N,), sample_rate, report)``.
        """
        job = dict(text=text, speaker_prompt=speaker_prompt, emotion_prompt=emotion_prompt,
                   emotion_vector=emotion_vector, emotion_alpha=emotion_alpha, target_tokens=target_tokens,
                   duration_seconds=duration_seconds, seed=seed, interval_silence_ms=interval_silence_ms,
                   max_text_tokens_per_segment=max_text_tokens_per_segment, use_emotion_text=use_emotion_text,
                   emotion_text=emotion_text, use_random=use_random, codes=codes,
                   quick_streaming_tokens=quick_streaming_tokens)
        (result,) = self.synthesize_batch([job], batch_size=batch_size, progress=progress, **sampling)
        return result

    def synthesize_stream(self, text: str, speaker_prompt, emotion_prompt=None, emotion_vector=None,
                          emotion_alpha: float = 1.0, target_tokens: int | None = None,
                          duration_seconds: float | None = None, *, seed: int = 0,
                          max_text_tokens_per_segment: int = 120, interval_silence_ms: float = 200,
                          use_emotion_text: bool = False, emotion_text: str | None = None,
                          use_random: bool = False, codes=None,
                          quick_streaming_tokens: int = 0, **sampling) -> Iterator[StreamChunk]:
        """Synthesize ``text`` segment by segment, yielding each segment's audio as soon as it is ready.

        infer_v2's ``stream_return``: the text is segmented (``quick_streaming_tokens`` > 0 makes the first
        segment short, e.g. 20), and each segment runs generation, latent, S2M and BigVGAN alone, in text order.
        The options are :meth:`synthesize`'s; the concatenated chunks equal ``synthesize(...)`` with the same
        options (and ``batch_size=1``) sample for sample. The text, the prompts and the options are checked and
        the prompt features computed before this returns, so bad input raises here, not at the first ``next``.

        Returns an iterator of :class:`StreamChunk`: ``audio`` float32 (n,) is the segment preceded by
        ``interval_silence_ms`` of zeros (except the first); the last chunk carries the whole ``report``
        (:meth:`synthesize`'s, plus ``first_audio_s``, the seconds from this call to the first chunk).
        """
        t_start = time.perf_counter()
        job = dict(text=text, speaker_prompt=speaker_prompt, emotion_prompt=emotion_prompt,
                   emotion_vector=emotion_vector, emotion_alpha=emotion_alpha, target_tokens=target_tokens,
                   duration_seconds=duration_seconds, seed=seed, interval_silence_ms=interval_silence_ms,
                   max_text_tokens_per_segment=max_text_tokens_per_segment, use_emotion_text=use_emotion_text,
                   emotion_text=emotion_text, use_random=use_random, codes=codes,
                   quick_streaming_tokens=quick_streaming_tokens)
        run = self._plan([job], self._decode_config(sampling), t_start)
        return self._stream(run)

    def _stream(self, run: _Run) -> Iterator[StreamChunk]:
        report = run.reports[0]
        n_seg = len(run.items)
        silence = np.zeros(report["silence_samples"], np.float32)
        first_audio = None
        for it in run.items:  # one job's segments, in text order
            ((wave, info),) = self._run_chunk([it], run.spk_feats, run.job_conds, run.decode, run.timings)
            report["segments"][it["seg"]] = info
            if first_audio is None:
                first_audio = time.perf_counter() - run.t_start
            final = None
            if it["seg"] == n_seg - 1:
                ((_, _, final),) = self._finish(run, None)
                final["first_audio_s"] = round(first_audio, 4)
            audio = wave if it["seg"] == 0 or silence.size == 0 else np.concatenate([silence, wave])
            yield StreamChunk(audio=audio, sample_rate=self.sample_rate, segment=it["seg"], num_segments=n_seg,
                              info=info, elapsed_s=time.perf_counter() - run.t_start, report=final)

    def _decode_config(self, sampling: dict) -> DecodeConfig:
        unknown = set(sampling) - set(SAMPLING_DEFAULTS)
        if unknown:
            raise ConfigError(f"unknown sampling options {sorted(unknown)}; known: {sorted(SAMPLING_DEFAULTS)}")
        # default code budget: infer_v2's 1500, within the model's mel position table (a small trained GPT has fewer)
        defaults = dict(SAMPLING_DEFAULTS, max_mel_tokens=min(SAMPLING_DEFAULTS["max_mel_tokens"],
                                                              self.cfg.gpt.mel_positions - 2))
        o = {**defaults, **{k: v for k, v in sampling.items() if v is not None}}
        return DecodeConfig(max_new_tokens=int(o["max_mel_tokens"]), do_sample=bool(o["do_sample"]),
                            num_beams=int(o["num_beams"]), temperature=float(o["temperature"]), top_k=int(o["top_k"]),
                            top_p=float(o["top_p"]), repetition_penalty=float(o["repetition_penalty"]),
                            length_penalty=float(o["length_penalty"]))

    def synthesize_batch(self, jobs: Sequence[dict], *, batch_size: int = 8, progress: bool = False,
                         **sampling) -> list[tuple[np.ndarray, int, dict]]:
        """Synthesize many jobs, running up to ``batch_size`` segments (of any jobs) together.

        Each job is a dict with ``text``, ``speaker_prompt`` and optionally ``emotion_prompt``,
        ``emotion_vector``, ``emotion_alpha``, ``use_emotion_text`` / ``emotion_text``, ``target_tokens`` |
        ``duration_seconds``, ``seed``,
        ``max_text_tokens_per_segment``, ``interval_silence_ms``, ``quick_streaming_tokens`` (``out``/``id`` are
        carried along), and ``codes``: semantic codes to speak (a text of one segment; e.g. :meth:`semantic_codes`
        of a recording) instead of generating them; the GPT then only gives their latent (teacher-forced over the
        text and the codes). Sampling options apply to all jobs. Returns one ``(wave, sample_rate, report)`` per
        job.
        """
        run = self._plan(jobs, self._decode_config(sampling), time.perf_counter())
        run.batch_size = batch_size
        waves: dict[tuple[int, int], np.ndarray] = {}
        # similar text lengths share a chunk (less padding); results do not depend on the grouping
        order = sorted(run.items, key=lambda it: -len(it["ids"]))
        chunks = [order[i: i + batch_size] for i in range(0, len(order), max(batch_size, 1))]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(run.items), desc="segments", unit="seg")
        for chunk in chunks:
            outs = self._run_chunk(chunk, run.spk_feats, run.job_conds, run.decode, run.timings)
            for it, (wave, info) in zip(chunk, outs):
                waves[(it["job"], it["seg"])] = wave
                run.reports[it["job"]]["segments"][it["seg"]] = info
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return self._finish(run, waves)

    def _plan(self, jobs: Sequence[dict], decode: DecodeConfig, t_start: float) -> _Run:
        """Check every job, compute (or fetch) its prompt features and conditioning, split its text into
        segments with their code targets: the work items of :meth:`_run_chunk`, one per segment."""
        run = _Run(jobs=list(jobs), decode=decode, t_start=t_start, timings=dict.fromkeys(STAGES, 0.0),
                   compiles_before=sum(self.trace_counts.values()), cache_before=dict(self.cache_stats))
        for j, job in enumerate(jobs):
            report: dict[str, Any] = {"text": job.get("text")}
            if job.get("target_tokens") is not None and job.get("duration_seconds") is not None:
                raise ConfigError("give target_tokens or duration_seconds, not both")
            t0 = time.perf_counter()
            segments = self._segments(job, report)
            run.timings["text"] += time.perf_counter() - t0
            spk, conds = self._resolve_job(job, report, run.timings)
            run.spk_feats.append(spk)
            run.job_conds.append(conds)
            silence_ms = float(job.get("interval_silence_ms", 200) if job.get("interval_silence_ms") is not None
                               else 200)
            total = job.get("target_tokens")
            if job.get("duration_seconds") is not None:
                total = self.duration_to_tokens(job["duration_seconds"], len(segments), silence_ms)
            targets = [0] * len(segments)
            if total is not None:
                targets = split_tokens(int(total), [len(s) for s in segments])
                if max(targets) > decode.max_new_tokens:
                    raise ConfigError(f"a segment needs {max(targets)} codes, more than max_mel_tokens="
                                      f"{decode.max_new_tokens}; raise max_mel_tokens")
            report["target_tokens"] = None if total is None else int(total)
            given = self._given_codes(job, segments)
            seed = int(job.get("seed", 0) or 0)
            for s, (ids, tgt) in enumerate(zip(segments, targets)):
                run.items.append(dict(job=j, seg=s, ids=ids, target=tgt, seed=seed, codes=given))
            report["segments"] = [None] * len(segments)
            report["silence_samples"] = int(self.sample_rate * silence_ms / 1000.0)
            run.reports.append(report)
        return run

    def _finish(self, run: _Run, waves: dict[tuple[int, int], np.ndarray] | None
                ) -> list[tuple[np.ndarray | None, int, dict]]:
        """Join each job's segments with its silences (``waves`` None: no joining, the lengths only) and
        complete the reports with the run's timings; one ``(wave, sample_rate, report)`` per job."""
        wall = time.perf_counter() - run.t_start
        results = []
        total_audio = 0.0
        for j, report in enumerate(run.reports):
            n_seg = len(report["segments"])
            wave = None
            if waves is not None:
                parts = []
                for s in range(n_seg):
                    parts.append(waves[(j, s)])
                    if s < n_seg - 1 and report["silence_samples"] > 0:
                        parts.append(np.zeros(report["silence_samples"], np.float32))
                wave = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            samples = sum(seg["samples"] for seg in report["segments"]) + max(n_seg - 1, 0) * report["silence_samples"]
            report["audio_seconds"] = samples / self.sample_rate
            report["sample_rate"] = self.sample_rate
            total_audio += report["audio_seconds"]
            for k in ("out", "id"):
                if run.jobs[j].get(k) is not None:
                    report[k] = run.jobs[j][k]
            results.append((wave, self.sample_rate, report))
        batch_info = {
            "timings_s": {k: round(v, 4) for k, v in run.timings.items()},
            "wall_s": round(wall, 4),
            "audio_seconds": round(total_audio, 4),
            "rtf": round(wall / total_audio, 4) if total_audio > 0 else None,
            "jobs": len(run.jobs), "segments": len(run.items), "batch_size": run.batch_size,
            "new_compiles": sum(self.trace_counts.values()) - run.compiles_before,
            "prompt_cache": {k: self.cache_stats[k] - run.cache_before[k] for k in self.cache_stats},
            "decode": dataclasses.asdict(run.decode),
            "dtype": self.dtype.name,
        }
        for _, _, report in results:
            report["batch"] = batch_info
            if len(run.jobs) == 1:
                report["timings_s"], report["rtf"] = batch_info["timings_s"], batch_info["rtf"]
        return results

    def _run_chunk(self, chunk: list[dict], spk_feats, job_conds, decode: DecodeConfig, timings: dict):
        n = len(chunk)
        b = batch_bucket(n)
        rows = chunk + [chunk[0]] * (b - n)  # dummy rows repeat the first item
        gcfg = self.cfg.gpt
        # ---- generation
        t0 = time.perf_counter()
        lb = self._bucket(max(len(r["ids"]) for r in rows), 16)
        text = np.full((b, lb), gcfg.stop_text_token, np.int32)
        text_lens = np.zeros((b,), np.int32)
        for i, r in enumerate(rows):
            text[i, : len(r["ids"])] = r["ids"]
            text_lens[i] = len(r["ids"])
        conds = jnp.concatenate([job_conds[r["job"]] for r in rows], axis=0)
        targets = np.array([r["target"] for r in rows], np.int32)
        given = [r["codes"] for r in rows]
        if all(g is not None for g in given):  # nothing to generate
            codes_all, lengths = np.zeros((b, 1), np.int32), np.zeros((b,), np.int32)
        else:
            rng = jax.random.fold_in(jax.random.PRNGKey(rows[0]["seed"]), rows[0]["seg"])
            out = generate(self.gpt_model, self.params["gpt"], conds, jnp.asarray(text), jnp.asarray(text_lens),
                           decode=decode, rng=rng, target_tokens=jnp.asarray(targets))
            codes_all, lengths = np.asarray(out.codes), np.array(out.lengths)
        if any(g is not None for g in given):
            width = max([codes_all.shape[1]] + [len(g) for g in given if g is not None])
            codes_all = np.pad(codes_all, ((0, 0), (0, width - codes_all.shape[1])))
            for i, g in enumerate(given):
                if g is not None:
                    codes_all[i, : len(g)], lengths[i] = g, len(g)
        timings["generation"] += time.perf_counter() - t0
        # ---- latent
        t0 = time.perf_counter()
        code_lens = np.maximum(lengths, 1).astype(np.int32)  # an immediate stop still needs one code
        mb = self._bucket(int(code_lens.max()), 32)
        codes = np.zeros((b, mb), np.int32)
        for i in range(b):
            m = min(int(lengths[i]), mb)
            codes[i, :m] = codes_all[i, :m]
            if lengths[i] == 0:
                codes[i, 0] = 0
        lat = self._latent(self.params, conds, jnp.asarray(text), jnp.asarray(text_lens), jnp.asarray(codes),
                           jnp.asarray(code_lens))
        jax.block_until_ready(lat)
        timings["latent"] += time.perf_counter() - t0
        # ---- S2M
        t0 = time.perf_counter()
        spks = [spk_feats[r["job"]] for r in rows]
        sb = self._bucket(max(s.S_ref.shape[1] for s in spks), 32)
        pb = self._frame_bucket(max(s.ref_mel.shape[1] for s in spks), 64)
        S_ref = jnp.concatenate([jnp.pad(s.S_ref, ((0, 0), (0, sb - s.S_ref.shape[1]), (0, 0))) for s in spks], 0)
        ref_mel = jnp.concatenate([jnp.pad(s.ref_mel, ((0, 0), (0, pb - s.ref_mel.shape[1]), (0, 0))) for s in spks], 0)
        S_ref_lens = np.array([s.length for s in spks], np.int32)
        ref_lens = np.array([s.mel_length for s in spks], np.int32)
        style_vec = np.concatenate([s.style for s in spks], 0)
        target_lens = self.cfg.s2mel.target_frames(code_lens).astype(np.int32)
        g_max = self._frame_bucket(int(target_lens.max()), 32)
        # the CFM runs on [prompt | target] packed per row: its length is the bucket of the longest row's sum,
        # not pb + g_max (a 10 s prompt + 10 s output: 1728 frames for 1721, where 896 + 896 gave 1792)
        t_len = max(pb, min(self._frame_bucket(int((ref_lens + target_lens).max()), 64), pb + g_max))
        keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(r["seed"]), 1), r["seg"])
                          for r in rows])
        mel = self._s2m(self.params, S_ref, jnp.asarray(S_ref_lens), ref_mel, jnp.asarray(ref_lens),
                        jnp.asarray(style_vec), lat, jnp.asarray(codes), jnp.asarray(code_lens),
                        jnp.asarray(target_lens), keys, g_max=g_max, t_len=t_len)
        jax.block_until_ready(mel)
        timings["s2m"] += time.perf_counter() - t0
        # ---- vocoder
        t0 = time.perf_counter()
        waves = self._vocode_rows(np.asarray(mel)[:n], target_lens[:n])
        timings["vocoder"] += time.perf_counter() - t0
        results = []
        for i, r in enumerate(chunk):
            stopped = bool(lengths[i] < decode.max_new_tokens) or r["target"] > 0 or r["codes"] is not None
            info = {"text_tokens": len(r["ids"]), "codes": int(code_lens[i]), "codes_given": r["codes"] is not None,
                    "mel_frames": int(target_lens[i]),
                    "target_tokens": int(r["target"]) or None, "stopped": stopped,
                    "samples": int(target_lens[i]) * self.hop}
            if not stopped:
                warnings.warn(f"segment {r['seg']} of job {r['job']}: no stop token within max_mel_tokens="
                              f"{decode.max_new_tokens}", RuntimeWarning, stacklevel=3)
            results.append((np.clip(waves[i].astype(np.float32), -1.0, 1.0), info))
        return results

    # -- files -------------------------------------------------------------------------------
    def synthesize_jsonl(self, jobs_path, out_dir, *, batch_size: int = 8, progress: bool = False,
                         **sampling) -> dict:
        """Read jobs (one JSON object per line; keys as :meth:`synthesize_batch`), write ``<out or id or
        index>.wav`` (16-bit PCM) into ``out_dir`` and ``report.json``; returns the report."""
        jobs = read_jsonl(jobs_path)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        base = Path(jobs_path).parent
        for job in jobs:
            for k in ("speaker_prompt", "emotion_prompt"):
                if job.get(k) and not os.path.isabs(job[k]) and (base / job[k]).exists():
                    job[k] = str(base / job[k])
        results = self.synthesize_batch(jobs, batch_size=batch_size, progress=progress, **sampling)
        entries = []
        for i, (wave, sr, report) in enumerate(results):
            name = jobs[i].get("out") or f"{jobs[i].get('id', f'{i:05d}')}.wav"
            path = out_dir / name
            write_wav(path, wave, sr)
            entry = {k: v for k, v in report.items() if k != "batch"}
            entry["wav"] = str(path)
            entries.append(entry)
        summary = {"jobs": entries, "batch": results[0][2]["batch"] if results else {}}
        (out_dir / "report.json").write_text(json.dumps(summary, indent=2, default=_json_default))
        return summary


class _Stages(dict):
    """The jitted stages of one setting (a dict that can be weakly referenced)."""


_STAGES: collections.OrderedDict = collections.OrderedDict()  # (configs, dtype, steps, cfg rate) -> stages
_STAGES_KEPT = 4
_LIVE_STAGES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # the same, while a synthesizer holds them


def _shared_stages(c: ComponentConfigs, dt, diffusion_steps: int, cfg_rate: float) -> _Stages:
    """The jitted pipeline stages for these configs and settings, built once per process: kept while a
    synthesizer holds them, and for the last ``_STAGES_KEPT`` settings after that. Params are arguments, never
    captured, so models of the same config share them."""
    key = (repr(c), jnp.dtype(dt).name, int(diffusion_steps), float(cfg_rate))
    found = _STAGES.get(key)
    found = _LIVE_STAGES.get(key) if found is None else found
    if found is not None:
        return _remember(key, found)
    trace_counts: collections.Counter = collections.Counter()

    def counted_jit(name: str, fn: Callable, **jit_kw):
        def traced(*args, **kw):
            trace_counts[name] += 1  # runs once per new compile (trace)
            return fn(*args, **kw)

        return jax.jit(traced, **jit_kw)

    w2v_model = w2v_bert.W2VBert(c.w2v, num_layers=c.w2v.layers_for_embedding)
    codec_model = semantic_codec.SemanticCodec(c.inference_codec)
    camp_model = campplus.CAMPPlus(c.campplus)
    voc_model = bigvgan.BigVGAN(c.bigvgan, dtype=dt)
    gm = gpt.UnifiedVoice(c.gpt, dtype=dt)

    def w2v_embed(params, feats, mask):
        hidden = w2v_model.apply({"params": params["w2v"]}, feats, mask, return_all=False)
        return w2v_bert.normalize_hidden(hidden, params["w2v_mean"], params["w2v_var"])

    def codec_quantize(params, emb, mask):  # (codes (B, T), quantized embeddings (B, T, D))
        return codec_model.apply({"params": params["codec"]}, emb, mask, method=semantic_codec.SemanticCodec.quantize)

    def style(params, fbank):
        return camp_model.apply(params["campplus"], fbank)

    def conditioning(params, spk_emb, spk_len, emo_emb, emo_len):
        def f(m):
            latents = m.speaker_conditioning(spk_emb, spk_len)
            base = m.emovec(spk_emb, spk_len)
            emo = m.emovec(emo_emb, emo_len)
            return latents, base, emo
        return gm.apply({"params": params["gpt"]}, method=f)

    def cond_block(params, latents, emovec):
        return gm.apply({"params": params["gpt"]}, latents, emovec, method=gpt.UnifiedVoice.conditioning_block)

    def latent(params, conds, text_ids, text_lens, codes, code_lens):
        return gm.apply({"params": params["gpt"]}, conds, text_ids, text_lens, codes, code_lens,
                        method=_packed_latent).astype(jnp.float32)

    def s2m(params, S_ref, S_ref_lens, ref_mel, ref_lens, style_vec, lat, codes, code_lens, target_lens,
            noise_keys, g_max, t_len):
        return _s2m_stage(params, c.s2mel, c.inference_codec, S_ref, S_ref_lens, ref_mel, ref_lens, style_vec, lat,
                          codes, code_lens, target_lens, noise_keys, g_max, t_len, diffusion_steps, cfg_rate, dt)

    def vocode(params, mel):
        return voc_model.apply({"params": params["bigvgan"]}, mel)

    stages = {
        "gpt_model": gm, "trace_counts": trace_counts,
        "w2v_bert": counted_jit("w2v_bert", w2v_embed), "codec": counted_jit("codec", codec_quantize),
        "campplus": counted_jit("campplus", style), "conditioning": counted_jit("conditioning", conditioning),
        "conditioning_block": counted_jit("conditioning_block", cond_block), "latent": counted_jit("latent", latent),
        "s2m": counted_jit("s2m", s2m, static_argnames=("g_max", "t_len")), "vocoder": counted_jit("vocoder", vocode),
    }
    return _remember(key, _Stages(stages))


def _remember(key: tuple, stages: _Stages) -> _Stages:
    """Make ``stages`` the most recent entry of the LRU (dropping the oldest beyond ``_STAGES_KEPT``)."""
    _STAGES[key] = _LIVE_STAGES[key] = stages
    _STAGES.move_to_end(key)
    while len(_STAGES) > _STAGES_KEPT:
        _STAGES.popitem(last=False)
    return stages


def stacked_mel_features(wave_22k: np.ndarray, mel_config) -> np.ndarray:
    """The demo front-end's semantic features of a 22.05 kHz waveform: ``(N // hop // 2, 2 n_mels)`` float32.

    Computed by ``data_pipeline.preprocess`` itself (its ``mel_stacked`` feature: the S2M log-mel, consecutive
    frame pairs concatenated), so synthesis reads exactly what the codec and GPT stages were trained on.
    ``mel_config``: the ``model.s2mel.preprocess_params`` section (``sr``, ``spect_params``).
    """
    from data_pipeline.preprocess import PreprocessOptions, _Context, _feature_mel_stacked

    cfg = dict(mel_config.to_dict() if hasattr(mel_config, "to_dict") else mel_config)
    cfg["spect_params"] = dict(cfg["spect_params"])
    ctx = _Context(None, np.asarray(wave_22k, np.float32), PreprocessOptions(mel_config=cfg), tokenizer=None)
    return _feature_mel_stacked(ctx)["mel_stacked"]


def write_wav(path, wave: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM WAV (as infer_v2's ``save_pcm_wav``: clamp to [-1, 1])."""
    import soundfile as sf

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(np.asarray(wave, np.float32), -1.0, 1.0), int(sample_rate), subtype="PCM_16")


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


# ---------------------------------------------------------------------------------------------
# stage functions (traced inside the jits above)
# ---------------------------------------------------------------------------------------------
def _packed_latent(m: gpt.UnifiedVoice, conds, text_ids, text_lens, codes, code_lens):
    """Teacher-forced latent of right-padded rows, each packed as ``[conds][0, t_1..t_n, 1][start, c_1..c_m,
    stop]`` (positions 0.. in each part) so that padding never sits inside a row: (B, M, D), row i of item b
    is ``final_norm(h)`` at the mel input i (start, c_1 .. c_{M-1}); rows >= code_lens[b] are garbage."""
    cfg = m.config
    b, length = text_ids.shape
    mlen = codes.shape[1]
    c = conds.shape[1]
    j = jnp.arange(length + 2)[None, :]
    n = text_lens[:, None]
    body = jnp.take_along_axis(text_ids, jnp.clip(j - 1, 0, length - 1), axis=1)
    tid = jnp.where(j == 0, cfg.start_text_token, jnp.where(j <= n, body, cfg.stop_text_token))
    tpos = jnp.broadcast_to(jnp.minimum(j, cfg.text_positions - 1), tid.shape)
    k = jnp.arange(mlen + 2)[None, :]
    cb = jnp.take_along_axis(codes, jnp.clip(k - 1, 0, mlen - 1), axis=1)
    mid = jnp.where(k == 0, cfg.start_mel_token, jnp.where(k <= code_lens[:, None], cb, cfg.stop_mel_token))
    mpos = jnp.broadcast_to(jnp.minimum(k, cfg.mel_positions - 1), mid.shape)
    rows = jnp.concatenate([conds.astype(m.dtype), m.embed_text(tid, tpos), m.embed_mel(mid, mpos)], axis=1)
    total = rows.shape[1]
    p = jnp.arange(total)[None, :]
    text_end = c + n + 2  # (B, 1): first mel slot of each packed row
    src = jnp.where(p < text_end, p, p - text_end + c + length + 2)
    x = jnp.take_along_axis(rows, jnp.clip(src, 0, total - 1)[:, :, None], axis=1)
    hidden, _ = m.gpt(x, causal_mask(total))
    idx = jnp.clip(text_end + jnp.arange(mlen)[None, :], 0, total - 1)
    h = jnp.take_along_axis(hidden, idx[:, :, None], axis=1)
    return m.final_norm(h)


def _frame_noise(keys, ref_lens, t_len: int, n_mels: int):
    """CFM start noise (B, t_len, n_mels): frame t of item b is N(0, I) from fold_in(keys[b], t - ref_lens[b]),
    so each generated frame's noise is independent of padding, batching and bucket sizes."""

    def one(key, p):
        idx = jnp.maximum(jnp.arange(t_len) - p, 0)
        return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (n_mels,), jnp.float32))(idx)

    return jax.vmap(one)(keys, ref_lens)


def _s2m_stage(params, cfg: s2mel.S2MelConfig, codec_cfg, S_ref, S_ref_lens, ref_mel, ref_lens, style, latent,
               codes, code_lens, target_lens, noise_keys, g_max: int, t_len: int, n_steps: int, cfg_rate: float,
               dtype):
    """infer_v2's S2M steps on padded rows: vq2emb(codes) + gpt_layer(latent) -> LR to target_lens frames,
    prompt condition LR(S_ref, ref_lens), CFM (CFG) with the reference mel in context -> (B, g_max, n_mels).

    ref_mel (B, P, n_mels) with ``ref_lens`` valid frames; the CFM runs on each row's prompt and target frames
    packed together, ``t_len`` frames (>= max(ref_lens + target_lens), <= P + g_max)."""
    sp = params["s2mel"]
    p_max = ref_mel.shape[1]
    lr = s2mel.InterpolateRegulator(cfg.length_regulator, dtype=dtype)
    prompt_condition = lr.apply({"params": sp["length_regulator"]}, S_ref, ref_lens, p_max, S_ref_lens)
    code_emb = semantic_codec.SemanticCodec(codec_cfg).apply({"params": params["codec"]}, codes,
                                                               method=semantic_codec.SemanticCodec.vq2emb)
    gpt_out = s2mel.GptLayer(cfg.gpt_layer_dims, dtype=dtype).apply({"params": sp["gpt_layer"]}, latent)
    S_infer = code_emb.astype(jnp.float32) + gpt_out.astype(jnp.float32)
    cond = lr.apply({"params": sp["length_regulator"]}, S_infer, target_lens, g_max, code_lens)
    pos = jnp.arange(t_len)[None, :]
    both = jnp.concatenate([prompt_condition, cond], axis=1)
    src = jnp.where(pos < ref_lens[:, None], pos, p_max + pos - ref_lens[:, None])
    total = ref_lens + target_lens
    mu = jnp.take_along_axis(both, jnp.clip(src, 0, both.shape[1] - 1)[:, :, None], axis=1)
    mu = jnp.where((pos < total[:, None])[:, :, None], mu, 0)
    noise = _frame_noise(noise_keys, ref_lens, t_len, cfg.n_mels)
    full = s2mel.cfm_inference(sp["estimator"], cfg, mu, total, ref_mel, style, n_steps, cfg_rate, noise=noise,
                               prompt_lens=ref_lens, per_item_padding=True, dtype=dtype)
    j = jnp.arange(g_max)[None, :]
    idx = jnp.clip(ref_lens[:, None] + j, 0, t_len - 1)
    out = jnp.take_along_axis(full, idx[:, :, None], axis=1)
    return jnp.where((j < target_lens[:, None])[:, :, None], out, 0)


__all__ = [
    "EMOTIONS", "ComponentConfigs", "EmotionTextUnavailableError", "IndexTTS2", "batch_bucket", "bucket_size",
    "component_configs", "normalize_emotion_vector", "split_tokens", "vocoder_context_frames", "write_wav",
]
