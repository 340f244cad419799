"""Manifest -> validated, featurized ArrayRecord shards (per split) plus ``report.json``.

    python -m data_pipeline.preprocess --config configs/demo.py:stage=gpt --manifest M --out DIR \
        [--features mel,mel_stacked,text_ids] [--bpe_model bpe.model] [--num_workers N] \
        [--process_index i --process_count n] [--num_shards K] [--valid_fraction 0.02] \
        [--model MODEL_DIR --semantic_dtype float16 --model_batch_size 8]

What happens:

1. The manifest is read and split (train/valid/test, hash-stable, see
   :func:`data_pipeline.manifest.split_of`); each split's utterances (sorted by id) are dealt
   round-robin into ``K`` shards named ``<split>-00000-of-0000K.array_record``.
2. Host ``i`` of ``n`` takes the shards whose index is ``i`` mod ``n``. Shards that already have a
   ``.done`` file are kept and skipped, so an interrupted run is restarted by running it again.
3. Each utterance is validated: missing / undecodable / empty / silent / too short / too long /
   non-finite / clipped audio, channel layout, and text (empty, too many tokens). Bad ones are
   skipped and listed with their reason (the error class); they are never fatal. Any other
   exception on one file is logged with its traceback and listed as ``"unexpected <Type>"``.
4. The audio is resampled to 22.05 kHz and the selected features (:data:`FEATURES`) computed in
   ``num_workers`` processes (spawned, ``OMP_NUM_THREADS=1``, JAX on CPU, one XLA thread each), a
   batch of utterances per task. The model features (``w2v_bert``, ``semantic_codes``,
   ``campplus``) need ``--model`` (an official model dir, a converted checkpoint or a bundle), loaded
   once per process (:mod:`data_pipeline.model_features`); w2v-BERT runs on the batch's good
   utterances together. Workers run JAX on CPU: on an accelerator use ``--num_workers 0`` so that
   the main process runs the models on the device.
5. Each finished shard gets a ``.done`` file with its per-example index and skipped files; the
   merged ``report.json`` (counts, hours, each skipped file with its reason) is rewritten after
   every shard, so it is complete once every host has finished (should two hosts finish at the
   same moment, ``--report_only --out DIR`` rebuilds it from the ``.done`` files).

Every record holds ``id, speaker, speaker_index, text, language, duration, emotion, sample_rate,
num_samples`` plus the outputs of the selected features. For the GPT stage, ``--features
text_ids,w2v_bert,semantic_codes --model M`` gives what :func:`data_pipeline.pipeline.make_pipeline`
reads as the real ``semantic_features`` (conditioning) and ``semantic_codes`` (targets); both
lengths go into the ``.done`` index, so batches bucket on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline import shards as shard_io
from data_pipeline.manifest import SPLITS, Utterance, read_manifest, speakers_of, split_of
from indextts2_jax.errors import AudioError, ConfigError

__all__ = [
    "Feature",
    "FEATURES",
    "DEFAULT_FEATURES",
    "ClippedAudioError",
    "ModelRequiredError",
    "PreprocessOptions",
    "FeatureExtractor",
    "plan_shards",
    "preprocess",
    "write_report",
    "load_config",
    "main",
]

SAMPLE_RATE = 22050  # the canonical rate of the stored waveform and the S2M/BigVGAN mel


class ClippedAudioError(AudioError):
    """More than the allowed fraction of samples sit flat at full scale (hard clipping)."""


class ModelRequiredError(ValueError, NotImplementedError):
    """A model feature (w2v_bert, semantic_codes, campplus) was selected without ``--model``.

    Also a NotImplementedError: these features were registry TODO entries before they were wired to
    the models, and callers catching that keep working.
    """


# ----------------------------------------------------------------------------------------------
# Feature registry
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Feature:
    """One feature extractor of the registry.

    Attributes:
        name: the ``--features`` name.
        outputs: the record keys it writes, each with its layout (for documentation and checks).
        compute: ``fn(ctx) -> {key: array}``; None for not-yet-implemented entries.
        todo: why the feature is not available yet (raised as NotImplementedError when selected).
        lengths: record keys whose first-axis length goes into the shard index (for bucketing).
        compute_batch: ``fn(ctxs) -> [{key: array}, ...]`` for several utterances at once (model
            features); ``compute`` is then its one-utterance case.
        needs_model: the feature runs a frozen model (``PreprocessOptions.model``).
    """

    name: str
    outputs: Mapping[str, str]
    compute: Callable[[_Context], dict[str, Any]] | None = None
    todo: str = ""
    lengths: tuple[str, ...] = ()
    compute_batch: Callable[[Sequence[_Context]], list[dict[str, Any]]] | None = None
    needs_model: bool = False


class _Context:
    """Per-utterance inputs shared by the feature functions (derived waveforms cached)."""

    def __init__(self, utt: Utterance, wave_22k: np.ndarray, options: PreprocessOptions, tokenizer, models=None):
        self.utt = utt
        self.wave_22k = wave_22k
        self.options = options
        self.tokenizer = tokenizer
        self.models = models  # data_pipeline.model_features.ModelFeatures or None
        self._cache: dict[str, Any] = {}

    def cached(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    @property
    def wave_16k(self) -> np.ndarray:
        from indextts2_jax.audio import resample_22k_to_16k

        return self.cached("wave_16k", lambda: resample_22k_to_16k(self.wave_22k))

    @property
    def mel(self) -> np.ndarray:
        return self.cached("mel", lambda: _log_mel(self.wave_22k, self.options.mel_config))


def _padded_length(n: int, quantum: int) -> int:
    return max(quantum, -(-n // quantum) * quantum)


def _log_mel(wave: np.ndarray, mel_config: Mapping[str, Any] | None) -> np.ndarray:
    """S2M log-mel ``(N // hop, 80)`` float32, exactly :func:`indextts2_jax.audio.mel_spectrogram`.

    To bound recompilation the jitted function sees the waveform padded to a multiple of 32768
    samples: the true signal is reflect-extended by ``(n_fft - hop) / 2`` samples (what the mel
    front-end's own padding would add), then zero-padded; the frames that read only the true
    signal and its reflection are kept, so the result equals the unpadded computation.
    """
    from indextts2_jax.audio import MelConfig, mel_spectrogram

    cfg = MelConfig.from_official(mel_config) if mel_config else MelConfig()
    if cfg.center:
        return np.asarray(mel_spectrogram(wave[None], cfg)[0])
    n = wave.shape[-1]
    pad = (cfg.n_fft - cfg.hop_size) // 2
    frames = (n + 2 * pad - cfg.n_fft) // cfg.hop_size + 1
    ext = np.pad(wave, (0, pad), mode="reflect") if n > pad else np.pad(wave, (0, pad))
    padded = np.zeros(_padded_length(ext.shape[0], 32768), np.float32)
    padded[: ext.shape[0]] = ext
    mel = np.asarray(mel_spectrogram(padded[None], cfg)[0])
    return np.ascontiguousarray(mel[:frames])


def _resample(wave: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """``librosa.resample(wave, orig_sr, new_sr, res_type="soxr_hq")`` without importing librosa (slow to import)."""
    if orig_sr == new_sr:
        return np.ascontiguousarray(wave, np.float32)
    import soxr

    n = int(np.ceil(wave.shape[0] * float(new_sr) / orig_sr))
    out = soxr.resample(wave, orig_sr, new_sr, quality="soxr_hq")
    out = out[:n] if out.shape[0] >= n else np.pad(out, (0, n - out.shape[0]))
    return np.ascontiguousarray(out, np.float32)


def _feature_text_ids(ctx: _Context) -> dict[str, Any]:
    if ctx.tokenizer is None:
        raise RuntimeError("text_ids needs a BPE model (--bpe_model)")
    return {"text_ids": np.asarray(ctx.tokenizer.encode(ctx.utt.text, lang=tokenizer_lang(ctx.utt.language)),
                                   np.int32)}


def tokenizer_lang(language: str | None) -> str | None:
    """The ``lang`` to pass to ``TextTokenizer.encode`` for a manifest language code.

    "en"/"zh" (and unknown) -> None: the official per-text detection, so code-switched text still
    takes the Chinese path when it holds CJK characters. Other codes (e.g. "ja", "de") are passed
    on, so only the language-neutral normalization steps run for them.
    """
    if not language or language.split("-")[0].lower() in ("en", "zh"):
        return None
    return language


def _feature_mel(ctx: _Context) -> dict[str, Any]:
    return {"mel": ctx.mel}


def _feature_mel_stacked(ctx: _Context) -> dict[str, Any]:
    mel = ctx.mel
    t = mel.shape[0] // 2
    return {"mel_stacked": np.ascontiguousarray(mel[: 2 * t].reshape(t, 2 * mel.shape[1]))}


def _feature_wave(ctx: _Context) -> dict[str, Any]:
    return {"wave": np.round(np.clip(ctx.wave_22k, -1.0, 32767 / 32768) * 32768).astype(np.int16)}


def _feature_w2v_bert_fbank(ctx: _Context) -> dict[str, Any]:
    from indextts2_jax.audio import w2v_bert_features

    feats, mask = w2v_bert_features([ctx.wave_16k])
    return {"w2v_bert_fbank": np.ascontiguousarray(feats[0, : int(mask[0].sum())])}


def _feature_campplus_fbank(ctx: _Context) -> dict[str, Any]:
    from indextts2_jax.audio import campplus_features

    return {"campplus_fbank": np.asarray(campplus_features(ctx.wave_16k[None])[0])}


def _models_of(ctxs: Sequence[_Context]):
    models = ctxs[0].models if ctxs else None
    if models is None:
        raise ModelRequiredError("model features need the frozen models: pass --model PATH")
    return models


def _ensure_semantic(ctxs: Sequence[_Context]) -> None:
    """w2v-BERT (and codec, when semantic_codes is selected) on the contexts that lack it, batched."""
    todo = [c for c in ctxs if "semantic" not in c._cache]
    if not todo:
        return
    wanted = todo[0].options.features
    outs = _models_of(todo).semantic([c.wave_16k for c in todo], codes="semantic_codes" in wanted,
                                     features="w2v_bert" in wanted)
    for c, o in zip(todo, outs):
        c._cache["semantic"] = o


def _batch_w2v_bert(ctxs: Sequence[_Context]) -> list[dict[str, Any]]:
    _ensure_semantic(ctxs)
    return [{"semantic_features": c._cache["semantic"][0].astype(c.options.semantic_dtype)} for c in ctxs]


def _batch_semantic_codes(ctxs: Sequence[_Context]) -> list[dict[str, Any]]:
    models = _models_of(ctxs)
    if models.front_end == "mel":  # the demo's stacked log-mel front end: codes of the 22.05 kHz audio
        return [{"semantic_codes": c} for c in models.codes([ctx.wave_22k for ctx in ctxs])]
    _ensure_semantic(ctxs)
    return [{"semantic_codes": c._cache["semantic"][1]} for c in ctxs]


def _batch_campplus(ctxs: Sequence[_Context]) -> list[dict[str, Any]]:
    styles = _models_of(ctxs).style([c.wave_16k for c in ctxs])
    return [{"speaker_embedding": s} for s in styles]


def _one(batch_fn: Callable[[Sequence[_Context]], list[dict[str, Any]]]) -> Callable[[_Context], dict[str, Any]]:
    return lambda ctx: batch_fn([ctx])[0]


FEATURES: dict[str, Feature] = {f.name: f for f in [
    Feature("text_ids", {"text_ids": "(L,) int32 BPE ids of the normalized text (no start/stop ids)"},
            _feature_text_ids, lengths=("text_ids",)),
    Feature("mel", {"mel": "(T, 80) float32 S2M/BigVGAN log-mel at 22.05 kHz, hop 256 (T = N // 256)"},
            _feature_mel, lengths=("mel",)),
    Feature("mel_stacked", {"mel_stacked": "(T // 2, 160) float32 consecutive mel frame pairs (~43 Hz), "
                                           "the demo's stand-in for 160-d w2v-BERT inputs/semantic features"},
            _feature_mel_stacked, lengths=("mel_stacked",)),
    Feature("wave", {"wave": "(N,) int16 waveform at 22.05 kHz (vocoder stage)"}, _feature_wave, lengths=("wave",)),
    Feature("w2v_bert_fbank", {"w2v_bert_fbank": "(T2, 160) float32 SeamlessM4T input features at 16 kHz "
                                                 "(input of w2v-BERT, ~50 Hz / 2)"},
            _feature_w2v_bert_fbank, lengths=("w2v_bert_fbank",)),
    Feature("campplus_fbank", {"campplus_fbank": "(T, 80) float32 mean-removed Kaldi fbank at 16 kHz"},
            _feature_campplus_fbank, lengths=("campplus_fbank",)),
    # frozen models (--model): infer_v2's speaker-prompt path on the 16 kHz audio (spec §4.1, §11 step 2)
    Feature("w2v_bert", {"semantic_features": "(T2, 1024) float16/float32 (--semantic_dtype) w2v-BERT semantic "
                                              "features: hidden_states[17] of 24, (h - mean) / sqrt(var), 16 kHz, "
                                              "~50 Hz; T2 = valid stacked frames = floor(F / 2)"},
            _one(_batch_w2v_bert), lengths=("semantic_features",), compute_batch=_batch_w2v_bert, needs_model=True),
    Feature("semantic_codes", {"semantic_codes": "(T2,) int32 MaskGCT semantic codec codes of the w2v-BERT "
                                                 "semantic features (the GPT targets; of the stacked mel for a "
                                                 "model with the demo's front end)"},
            _one(_batch_semantic_codes), lengths=("semantic_codes",), compute_batch=_batch_semantic_codes,
            needs_model=True),
    Feature("campplus", {"speaker_embedding": "(192,) float32 CAMPPlus speaker embeddings (S2M style) of the "
                                              "mean-removed Kaldi fbank at 16 kHz"},
            _one(_batch_campplus), compute_batch=_batch_campplus, needs_model=True),
]}

MODEL_FEATURE_NAMES = {"w2v_bert": "w2v-BERT semantic features", "semantic_codes": "semantic codec codes",
                       "campplus": "CAMPPlus speaker embeddings"}

DEFAULT_FEATURES = {
    "gpt": ("mel_stacked",),
    "codec": ("mel_stacked",),
    "s2mel": ("mel", "mel_stacked", "campplus_fbank"),  # campplus_fbank: the demo CAMPPlus style input
    "vocoder": ("mel", "wave"),
}
MODEL_DEFAULT_FEATURES = {  # with --model: the real features instead of the demo stand-ins
    "gpt": ("w2v_bert", "semantic_codes"),
    "codec": ("w2v_bert",),
    "s2mel": ("w2v_bert", "semantic_codes", "mel", "campplus"),
    "vocoder": ("mel", "wave"),
}


def check_features(names: Sequence[str], model: str | os.PathLike = "") -> tuple[str, ...]:
    """Validate feature names against the registry.

    Raises ValueError for unknown names, NotImplementedError for TODO entries and
    :class:`ModelRequiredError` for model features selected without ``model``.
    """
    out = []
    for name in names:
        if name not in FEATURES:
            raise ValueError(f"unknown feature {name!r}; known features: {sorted(FEATURES)}")
        f = FEATURES[name]
        if f.compute is None:
            raise NotImplementedError(f"feature {name!r} is not implemented yet: {f.todo}")
        if f.needs_model and not model:
            raise ModelRequiredError(
                f"feature {name!r} ({MODEL_FEATURE_NAMES.get(name, name)}) runs the frozen IndexTTS-2 models: "
                "pass --model PATH (an official model directory, a converted checkpoint or a bundle)")
        if name not in out:
            out.append(name)
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# Per-utterance processing (runs in worker processes)
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
    """Everything a worker needs; plain values so that it pickles to spawned processes."""

    features: tuple[str, ...] = ("mel_stacked",)
    min_audio_seconds: float = 0.5
    max_audio_seconds: float = 20.0
    max_text_tokens: int = 600
    silence_threshold: float = 1e-3
    clip_fraction: float = 1e-3
    mono: str = "mix"
    bpe_model: str = ""
    mel_config: Mapping[str, Any] | None = None
    speakers: tuple[str, ...] = ()
    model: str = ""  # for the model features: official model dir / converted checkpoint / bundle
    semantic_dtype: str = "float16"  # storage dtype of w2v_bert's semantic_features
    model_batch_size: int = 8  # utterances per worker task and per w2v-BERT call
    model_frame_bucket: int = 64  # w2v-BERT frames padded to a multiple of this (bounds recompiles)
    model_devices: int = 1  # local devices each model batch is split over (0: all; with worker processes keep 1)


class FeatureExtractor:
    """Validates one utterance and computes its record (used in each worker process)."""

    def __init__(self, options: PreprocessOptions):
        self.options = options
        self.features = check_features(options.features, options.model)
        if np.dtype(options.semantic_dtype) not in (np.float16, np.float32):
            raise ValueError(f"semantic_dtype must be float16 or float32, got {options.semantic_dtype!r}")
        self.speaker_index = {s: i for i, s in enumerate(options.speakers)}
        self.models = None
        model_feats = [n for n in self.features if FEATURES[n].needs_model]
        if model_feats:
            from data_pipeline.model_features import ModelFeatures

            self.models = ModelFeatures(
                options.model, semantic="w2v_bert" in model_feats or "semantic_codes" in model_feats,
                codec="semantic_codes" in model_feats, style="campplus" in model_feats,
                batch_size=options.model_batch_size, frame_bucket=options.model_frame_bucket,
                devices=options.model_devices or None)
            if self.models.front_end == "mel" and "w2v_bert" in model_feats:
                raise ConfigError(f"feature 'w2v_bert': the model {options.model} reads the demo's stacked log-mel "
                                  "(semantic_features 'mel'), not w2v-BERT features: use 'mel_stacked'")
        self.tokenizer = None
        if options.bpe_model:
            from indextts2_jax.text.tokenizer import TextTokenizer

            self.tokenizer = TextTokenizer(options.bpe_model, max_tokens=options.max_text_tokens)
        elif "text_ids" in self.features:
            raise ValueError("feature 'text_ids' needs --bpe_model (a SentencePiece model)")

    def load(self, utt: Utterance) -> np.ndarray:
        """Decode, validate and resample to 22.05 kHz: float32 ``(N,)``. Raises AudioError subclasses."""
        from indextts2_jax.audio import audio_info, load_audio

        o = self.options
        wave = load_audio(utt.audio_path, None, min_seconds=o.min_audio_seconds, max_seconds=o.max_audio_seconds,
                          mono=o.mono, silence_threshold=o.silence_threshold)
        flat = (np.abs(wave[1:]) >= 0.999) & (wave[1:] == wave[:-1])
        if wave.size > 1 and flat.mean() > o.clip_fraction:
            raise ClippedAudioError(
                f"{utt.audio_path}: audio is clipped ({100 * flat.mean():.2f}% of samples flat at full scale > "
                f"{100 * o.clip_fraction:.2f}%)", path=utt.audio_path)
        sr = audio_info(utt.audio_path).sample_rate
        return _resample(wave, sr, SAMPLE_RATE)

    def __call__(self, utt: Utterance) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """``(record, None)`` for a good utterance, ``(None, skip_entry)`` for a bad one."""
        return self.process([utt])[0]

    @staticmethod
    def _skip(utt: Utterance, e: Exception) -> dict[str, Any]:
        from indextts2_jax.errors import InputError

        if isinstance(e, InputError):
            return {"id": utt.id, "audio_path": utt.audio_path, "reason": type(e).__name__, "message": str(e)}
        # a decoder/resampler/model failure on one odd file must not end a long run
        logging.getLogger(__name__).warning("%s (%s): unexpected error", utt.id, utt.audio_path,
                                            exc_info=(type(e), e, e.__traceback__))
        return {"id": utt.id, "audio_path": utt.audio_path, "reason": f"unexpected {type(e).__name__}",
                "message": f"{utt.audio_path}: {e!r}"}

    def process(self, utts: Sequence[Utterance]) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        """:meth:`__call__` for several utterances; the model features run on the good ones together.

        Should a batched model call fail, each utterance is retried alone, so only the utterance
        that fails is skipped.
        """
        from indextts2_jax.errors import EmptyTextError

        results: list[Any] = [None] * len(utts)
        pending: list[tuple[int, _Context, dict[str, Any]]] = []
        model_feats = [n for n in self.features if FEATURES[n].needs_model]
        for i, utt in enumerate(utts):
            try:
                if not utt.text.strip():
                    raise EmptyTextError(f"{utt.id}: transcript is empty", text=utt.text)
                wave = self.load(utt)
                ctx = _Context(utt, wave, self.options, self.tokenizer, self.models)
                record: dict[str, Any] = {
                    "id": utt.id, "speaker": utt.speaker, "speaker_index": self.speaker_index.get(utt.speaker, -1),
                    "text": utt.text, "language": utt.language, "emotion": utt.emotion,
                    "duration": wave.shape[0] / SAMPLE_RATE, "sample_rate": SAMPLE_RATE,
                    "num_samples": int(wave.shape[0]),
                }
                for name in self.features:
                    if name not in model_feats:
                        record.update(FEATURES[name].compute(ctx))
                pending.append((i, ctx, record))
            except Exception as e:
                results[i] = (None, self._skip(utt, e))
        if model_feats and pending:
            try:
                self._add_model_features(pending, model_feats)
            except Exception:
                logging.getLogger(__name__).info("batched model features failed; retrying one by one",
                                                 exc_info=True)
                for item in list(pending):
                    item[1]._cache.pop("semantic", None)
                    try:
                        self._add_model_features([item], model_feats)
                    except Exception as e:
                        results[item[0]] = (None, self._skip(item[1].utt, e))
                        pending.remove(item)
        for i, _, record in pending:
            results[i] = (record, None)
        return results

    @staticmethod
    def _add_model_features(group: Sequence[tuple[int, _Context, dict[str, Any]]], names: Sequence[str]) -> None:
        ctxs = [c for _, c, _ in group]
        outs = [FEATURES[n].compute_batch(ctxs) for n in names]
        for k, (_, _, record) in enumerate(group):
            for out in outs:
                record.update(out[k])

    @staticmethod
    def index_entry(record: Mapping[str, Any]) -> dict[str, Any]:
        """What the shard's ``.done`` index keeps of a record (no arrays)."""
        lengths = {}
        for f in FEATURES.values():
            for key in f.lengths:
                if key in record:
                    lengths[key] = int(np.shape(record[key])[0])
        return {"id": record["id"], "speaker": record["speaker"], "speaker_index": record["speaker_index"],
                "duration": round(float(record["duration"]), 4), "text_chars": len(record["text"]),
                "lengths": lengths}


_WORKER: FeatureExtractor | None = None


def _worker_init(options: PreprocessOptions) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    global _WORKER
    _WORKER = FeatureExtractor(options)


def _worker_process(task: tuple[int, list[Utterance]]):
    shard_pos, utts = task
    return shard_pos, _WORKER.process(utts)


# ----------------------------------------------------------------------------------------------
# Planning, writing, reporting
# ----------------------------------------------------------------------------------------------
def plan_shards(utterances: Sequence[Utterance], *, num_shards: int | None = None, process_count: int = 1,
                examples_per_shard: int = 1000, valid_fraction: float = 0.02, test_fraction: float = 0.0,
                split_by: str = "utterance") -> dict[str, list[list[Utterance]]]:
    """``{split: [shard_0_utterances, ...]}``: a pure function of the manifest and the arguments.

    Each non-empty split is sorted by id and dealt round-robin into ``num_shards`` shards (default
    ``max(process_count, ceil(n / examples_per_shard))``, at most ``n``).
    """
    by_split: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    for u in utterances:
        by_split[split_of(u, valid_fraction=valid_fraction, test_fraction=test_fraction, by=split_by)].append(u)
    plan = {}
    for split, utts in by_split.items():
        if not utts:
            continue
        utts = sorted(utts, key=lambda u: u.id)
        k = num_shards or max(process_count, math.ceil(len(utts) / examples_per_shard))
        k = max(1, min(k, len(utts)))
        plan[split] = [utts[i::k] for i in range(k)]
    return plan


def write_report(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Merge ``dataset.json`` and every finished shard's ``.done`` into ``report.json``; return it."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "dataset.json").read_text())
    report: dict[str, Any] = {"complete": True, "features": meta["features"], "splits": {}, "skipped": [],
                              "skipped_by_reason": {}, "num_speakers": len(meta["speakers"])}
    total = {"examples": 0, "seconds": 0.0, "skipped": 0, "input_utterances": 0}
    for split, count in meta["shards"].items():
        s = {"num_shards": count, "finished_shards": 0, "examples": 0, "seconds": 0.0, "skipped": 0,
             "input_utterances": meta["utterances"][split]}
        for i in range(count):
            path = out_dir / shard_io.shard_name(split, i, count)
            if not shard_io.shard_done(path):
                continue
            info = shard_io.read_done(path)
            s["finished_shards"] += 1
            s["examples"] += info["num_records"]
            s["seconds"] += sum(e["duration"] for e in info["examples"])
            s["skipped"] += len(info["skipped"])
            for sk in info["skipped"]:
                report["skipped"].append({**sk, "split": split, "shard": path.name})
                report["skipped_by_reason"][sk["reason"]] = report["skipped_by_reason"].get(sk["reason"], 0) + 1
        s["hours"] = round(s["seconds"] / 3600, 4)
        s["complete"] = s["finished_shards"] == count
        report["complete"] &= s["complete"]
        report["splits"][split] = s
        for k in total:
            total[k] += s[k]
    total["hours"] = round(total["seconds"] / 3600, 4)
    report["total"] = total
    tmp = out_dir / f"report.json.{uuid.uuid4().hex}.tmp"  # hosts may write at the same time
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    os.replace(tmp, out_dir / "report.json")
    return report


def preprocess(utterances: Sequence[Utterance], out_dir: str | os.PathLike, options: PreprocessOptions, *,
               num_workers: int = 0, process_index: int = 0, process_count: int = 1, num_shards: int | None = None,
               examples_per_shard: int = 1000, valid_fraction: float = 0.02, test_fraction: float = 0.0,
               split_by: str = "utterance", progress: bool = True) -> dict[str, Any]:
    """Write this host's shards (skipping finished ones) and the merged report; return the report."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} out of range for process_count {process_count}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_features(options.features, options.model)
    speakers = tuple(speakers_of(utterances))
    options = dataclasses.replace(options, speakers=speakers)
    plan = plan_shards(utterances, num_shards=num_shards, process_count=process_count,
                       examples_per_shard=examples_per_shard, valid_fraction=valid_fraction,
                       test_fraction=test_fraction, split_by=split_by)
    meta = {"features": list(options.features), "speakers": list(speakers),
            "shards": {s: len(v) for s, v in plan.items()},
            "utterances": {s: sum(len(x) for x in v) for s, v in plan.items()},
            "outputs": {k: v for f in options.features for k, v in FEATURES[f].outputs.items()},
            "options": {k: v for k, v in dataclasses.asdict(options).items() if k != "speakers"},
            "split": {"valid_fraction": valid_fraction, "test_fraction": test_fraction, "by": split_by}}
    meta_path = out_dir / "dataset.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        for key in ("features", "shards", "speakers"):
            if old.get(key) != meta[key]:
                raise ValueError(f"{meta_path}: existing output was made with other {key} ({old.get(key)} vs "
                                 f"{meta[key]}); use a fresh --out folder")
    else:
        tmp = out_dir / f"dataset.json.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(meta, indent=1, ensure_ascii=False))
        os.replace(tmp, meta_path)

    todo: list[tuple[str, list[Utterance]]] = []
    for split, shard_lists in plan.items():
        for i, utts in enumerate(shard_lists):
            if i % process_count != process_index:
                continue
            path = out_dir / shard_io.shard_name(split, i, len(shard_lists))
            if shard_io.shard_done(path):
                continue
            todo.append((str(path), utts))

    uses_model = any(FEATURES[f].needs_model for f in options.features)
    chunk = max(1, options.model_batch_size) if uses_model else 4
    tasks = [(pos, utts[i:i + chunk]) for pos, (_, utts) in enumerate(todo) for i in range(0, len(utts), chunk)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc=f"preprocess host {process_index}/{process_count}", unit="utt",
                   file=sys.stderr)
    if num_workers > 0 and tasks:
        import multiprocessing as mp

        if uses_model:
            from data_pipeline.model_features import prepare_model

            prepare_model(options.model)  # an official dir is converted once here, not by every worker
        pool = mp.get_context("spawn").Pool(num_workers, initializer=_worker_init, initargs=(options,))
        results = pool.imap(_worker_process, tasks, chunksize=1)
    else:
        pool = None
        extractor = FeatureExtractor(options) if tasks else None
        results = ((pos, extractor.process(u)) for pos, u in tasks)
    try:
        it = iter(results)
        for pos, (path, utts) in enumerate(todo):
            index, skipped = [], []
            with shard_io.ShardWriter(path) as writer:
                done = 0
                while done < len(utts):
                    got_pos, chunk_results = next(it)
                    assert got_pos == pos
                    for record, skip in chunk_results:
                        if record is None:
                            skipped.append(skip)
                        else:
                            writer.write(record)
                            index.append(FeatureExtractor.index_entry(record))
                    done += len(chunk_results)
                    if bar is not None:
                        bar.update(len(chunk_results))
            shard_io.write_done(path, {"num_records": len(index), "examples": index, "skipped": skipped,
                                       "finished_at": time.time()})
            write_report(out_dir)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if bar is not None:
            bar.close()
    return write_report(out_dir)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def load_config(spec: str):
    """``"configs/demo.py:stage=gpt"`` -> ``get_config("stage=gpt")`` of that file."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(f"_config_{Path(path).stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise FileNotFoundError(f"cannot load config file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def options_from_config(config, features: Sequence[str] | None = None, bpe_model: str = "",
                        model: str = "") -> PreprocessOptions:
    """Preprocessing options from a training config (``config.data`` limits, the S2M mel settings).

    Without ``features``: the stage's defaults (:data:`MODEL_DEFAULT_FEATURES` when a ``model`` is given,
    the stage has them and the config does not ask for the mel stand-ins, ``demo.semantic_features ==
    "mel"``, which the pipeline would then read; else :data:`DEFAULT_FEATURES`), plus ``text_ids`` with
    a ``bpe_model``.
    """
    stage = getattr(config, "stage", "gpt")
    if features is None:
        demo = getattr(config, "demo", None)
        mel_stand_in = demo is not None and demo.get("semantic_features") == "mel"
        features = MODEL_DEFAULT_FEATURES.get(stage) if (model and not mel_stand_in) else None
        features = features or DEFAULT_FEATURES.get(stage, ("mel_stacked",))
        if bpe_model:
            features = ("text_ids",) + tuple(features)
    mel = None
    try:
        mel = dict(config.model.s2mel.preprocess_params)
        mel["spect_params"] = dict(mel["spect_params"])
    except (AttributeError, KeyError):
        mel = None
    d = config.data
    return PreprocessOptions(features=tuple(features), min_audio_seconds=float(d.min_audio_seconds),
                             max_audio_seconds=float(d.max_audio_seconds), max_text_tokens=int(d.max_text_tokens),
                             bpe_model=bpe_model, mel_config=mel, model=str(model or ""))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="config file with args, e.g. configs/demo.py:stage=gpt")
    p.add_argument("--manifest", default="", help="JSONL manifest (default: config.data.manifest)")
    p.add_argument("--out", default="", help="output folder (default: config.data.shards)")
    p.add_argument("--features", default="", help=f"comma-separated, from {sorted(FEATURES)} "
                                                   "(default: per stage, plus text_ids with --bpe_model)")
    p.add_argument("--bpe_model", default="", help="SentencePiece model for text_ids")
    p.add_argument("--model", default="", help="IndexTTS-2 model (official dir, converted checkpoint or bundle) for "
                                               "the model features w2v_bert, semantic_codes, campplus")
    p.add_argument("--semantic_dtype", choices=("float16", "float32"), default="float16",
                   help="storage dtype of the w2v_bert semantic_features")
    p.add_argument("--model_batch_size", type=int, default=8, help="utterances per w2v-BERT call / worker task")
    p.add_argument("--model_devices", type=int, default=1,
                   help="local devices each model batch is split over (0: all; for --num_workers 0 on a multi-GPU "
                        "host)")
    p.add_argument("--num_workers", type=int, default=-1, help="processes (default: config.data.num_workers)")
    p.add_argument("--process_index", type=int, default=0)
    p.add_argument("--process_count", type=int, default=1)
    p.add_argument("--num_shards", type=int, default=0, help="shards per split (default: from examples_per_shard)")
    p.add_argument("--examples_per_shard", type=int, default=1000)
    p.add_argument("--valid_fraction", type=float, default=0.02)
    p.add_argument("--test_fraction", type=float, default=0.0)
    p.add_argument("--split_by", choices=("utterance", "speaker"), default="utterance")
    p.add_argument("--silence_threshold", type=float, default=1e-3)
    p.add_argument("--clip_fraction", type=float, default=1e-3)
    p.add_argument("--mono", choices=("mix", "error"), default="mix", help="'error' rejects multi-channel audio")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--report_only", action="store_true",
                   help="only merge the finished shards' .done files into report.json (e.g. after all hosts end)")
    a = p.parse_args(argv)
    if a.report_only:
        if not a.out:
            p.error("--report_only needs --out")
        report = write_report(a.out)
        print(json.dumps({k: v for k, v in report.items() if k != "skipped"}, indent=1))
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = load_config(a.config)
    manifest = a.manifest or config.data.manifest
    out = a.out or config.data.shards
    if not manifest or not out:
        p.error("--manifest and --out are required (or set config.data.manifest / config.data.shards)")
    features = [f.strip() for f in a.features.split(",") if f.strip()] or None
    options = options_from_config(config, features, a.bpe_model, a.model)
    options = dataclasses.replace(options, silence_threshold=a.silence_threshold, clip_fraction=a.clip_fraction,
                                  mono=a.mono, semantic_dtype=a.semantic_dtype, model_batch_size=a.model_batch_size,
                                  model_devices=a.model_devices)
    try:
        check_features(options.features, options.model)
    except ModelRequiredError as e:
        p.error(str(e))
    num_workers = a.num_workers if a.num_workers >= 0 else int(config.data.num_workers)
    report = preprocess(read_manifest(manifest), out, options, num_workers=num_workers,
                        process_index=a.process_index, process_count=a.process_count, num_shards=a.num_shards or None,
                        examples_per_shard=a.examples_per_shard, valid_fraction=a.valid_fraction,
                        test_fraction=a.test_fraction, split_by=a.split_by, progress=not a.no_progress)
    t = report["total"]
    print(f"{out}: {t['examples']} examples ({t['hours']:.3f} h) written, {t['skipped']} skipped "
          f"{report['skipped_by_reason']}; complete={report['complete']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
