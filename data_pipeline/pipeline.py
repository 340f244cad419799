"""Grain input pipelines per training stage, from preprocessed ArrayRecord shards.

How a batch comes about (everything is a pure function of the shards, the config and the seed):

1. **Index.** The shards' ``.done`` files give every record's id, speaker and lengths, so
   filtering and bucketing never decode a record. Records outside ``[min_audio_seconds,
   max_audio_seconds]``, with more than ``max_text_tokens`` text ids, or (stages that do not crop)
   longer than the largest length bucket are dropped and counted (:attr:`BatchPlan.dropped`).
2. **Global batch plan** (:class:`BatchPlan`), identical on every host: epoch ``e`` permutes the
   kept records with ``default_rng([seed, e])``, groups them by length bucket (the smallest
   bucket of ``config.data.length_buckets`` that holds the record), cuts each group into global
   batches of ``global_batch_size`` and shuffles the batch order. A bucket's last batch is filled
   with padding rows (``valid`` False) unless ``drop_remainder``. Bucket sizes do not depend on
   the permutation, so every epoch has the same number of batches.
3. **Per-host slice.** Host ``i`` of ``n`` takes rows ``[i*B/n, (i+1)*B/n)`` of every global
   batch: hosts read disjoint records, together all of them, and all hosts use the same bucket
   at the same step (so the global batch assembles from equal-shaped host pieces).
4. **Assembly** (:class:`AssembleBatch`, a Grain map, in ``num_workers`` processes via
   ``mp_prefetch``): read the rows from the ``ArrayRecordDataSource``, apply the stage transforms
   (GPT: a prompt segment cropped from another utterance of the same speaker or from the
   utterance itself; random crops to the largest bucket for codec/s2mel/vocoder; BPE
   tokenization when the shards hold no ``text_ids``) with a per-record RNG
   ``default_rng([seed, epoch, record_index])``, then pad into the bucket's fixed shape.

Batches are dicts of NumPy arrays with fixed shapes per bucket (see :meth:`Pipeline.batch_shapes`):

* all stages: ``valid`` (B,) bool, ``record_index`` (B,) int64 (-1 for padding rows),
  ``speaker_index`` (B,) int32, ``duration`` (B,) float32.
* ``gpt``: ``text_ids`` (B, max_text_tokens) int32 + ``text_lengths``; ``semantic_features``
  (B, L, D) + ``semantic_lengths``; ``semantic_codes`` (B, L) int32 when the shards hold codes;
  ``prompt_features`` (B, P, D) + ``prompt_lengths``. L is the bucket, P ``prompt_frames``.
* ``codec``: ``semantic_features`` + ``semantic_lengths``.
* ``s2mel``: ``semantic_features`` (B, L, D) + ``semantic_lengths`` and the aligned ``mel``
  (B, ceil(r L), 80) + ``mel_lengths``, cropped to the same time window; r = mel frames per semantic
  frame (:func:`mel_frames_per_semantic_frame`: 2 for the demo's stacked-mel stand-in, 22050/256/50 =
  1.7227 for real 50 Hz w2v-BERT features); ``semantic_codes`` (B, L) int32 when the shards hold
  codes; the style input: ``speaker_embedding`` (B, E) when the shards hold CAMPPlus embeddings,
  else a ``style_frames`` window of ``campplus_fbank`` as ``style_features`` (B, S, 80) +
  ``style_lengths`` when the shards hold the fbank.
* ``s2mel_gpt`` (the S2M stage with a frozen GPT for the latent): as ``s2mel`` plus ``text_ids`` and
  the GPT prompt (``prompt_features``), records not cropped (the GPT latent needs whole utterances;
  longer ones are dropped).
* ``vocoder``: ``mel`` (B, L, 80) + ``mel_lengths`` and the aligned ``wave`` (B, 256 L) float32 +
  ``wave_lengths``.

Checkpointing: the iterator is a Grain ``DatasetIterator``; ``it.get_state()`` / ``it.set_state(s)``
save and restore its position (JSON-able dict), mid-epoch and with worker processes. With Orbax,
save it as a second item next to the train state::

    import grain, orbax.checkpoint as ocp
    mngr = ocp.CheckpointManager(workdir, item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                        "data": grain.checkpoint.CheckpointHandler()})
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(train_state),
                                            data=grain.checkpoint.CheckpointSave(data_iter)))
    mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                               data=grain.checkpoint.CheckpointRestore(data_iter)))

(each host writes ``process_<i>-of-<n>.json`` inside the ``data`` item; see
:func:`save_iterator_state` / :func:`restore_iterator_state` for the same without a manager).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline import shards as shard_io

__all__ = [
    "StageSpec",
    "STAGE_SPECS",
    "BatchPlan",
    "AssembleBatch",
    "Pipeline",
    "make_pipeline",
    "mel_frames_per_semantic_frame",
    "save_iterator_state",
    "restore_iterator_state",
]


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """What a stage reads.

    Attributes:
        length_key: output whose length picks the bucket ("semantic" or "mel").
        sequences: output name -> (record key or "semantic", frames per length-key frame).
        crop: crop records longer than the largest bucket to it (randomly) instead of dropping.
        text: emit BPE ``text_ids``.
        prompt: emit a prompt segment of the semantic features.
        codes: emit ``semantic_codes`` (aligned with the semantic features) when the shards hold them.
        style: emit the S2M style input (``speaker_embedding``, or a ``campplus_fbank`` window).

    The ``mel`` factor of a spec whose length key is semantic is the demo's 2; :func:`make_pipeline`
    replaces it by :func:`mel_frames_per_semantic_frame` (a float for real features).
    """

    length_key: str
    sequences: Mapping[str, tuple[str, float]]
    crop: bool = False
    text: bool = False
    prompt: bool = False
    codes: bool = False
    style: bool = False


STAGE_SPECS: dict[str, StageSpec] = {
    "gpt": StageSpec("semantic_features", {"semantic_features": ("semantic", 1)}, text=True, prompt=True,
                     codes=True),
    "codec": StageSpec("semantic_features", {"semantic_features": ("semantic", 1)}, crop=True),
    "s2mel": StageSpec("semantic_features", {"semantic_features": ("semantic", 1), "mel": ("mel", 2)}, crop=True,
                       codes=True, style=True),
    "s2mel_gpt": StageSpec("semantic_features", {"semantic_features": ("semantic", 1), "mel": ("mel", 2)},
                           text=True, prompt=True, codes=True, style=True),
    "vocoder": StageSpec("mel", {"mel": ("mel", 1), "wave": ("wave", 256)}, crop=True),
}
_LENGTH_OUTPUT = {"semantic_features": "semantic_lengths", "mel": "mel_lengths", "wave": "wave_lengths"}


def _cfg(config, key: str, default):
    data = getattr(config, "data", None)
    if data is not None and key in data:
        return data[key]
    return default


def _s2mel_cfg(config, key: str, default):
    s2mel = getattr(config, "s2mel", None)
    if s2mel is not None and key in s2mel:
        return s2mel[key]
    return default


def semantic_key(config, available: Sequence[str]) -> str:
    """Record key of the semantic features: ``mel_stacked`` for ``demo.semantic_features == "mel"``."""
    demo = getattr(config, "demo", None)
    if demo is not None and demo.get("semantic_features") == "mel":
        return "mel_stacked"
    for key in ("semantic_features", "mel_stacked"):
        if key in available:
            return key
    raise ValueError(f"the shards hold no semantic features (looked for semantic_features, mel_stacked in "
                     f"{sorted(available)})")


MEL_FRAME_RATE = 22050 / 256  # S2M/BigVGAN mel (Hz)
W2V_BERT_FRAME_RATE = 16000 / 160 / 2  # w2v-BERT features/codes: 10 ms fbank frames stacked in pairs (Hz)


def _mel_frame_rate(config, meta: Mapping[str, Any]) -> float:
    mel = (meta.get("options") or {}).get("mel_config") or {}
    if not mel:
        try:
            mel = dict(config.model.s2mel.preprocess_params)
        except (AttributeError, KeyError, TypeError):
            mel = {}
    try:
        return float(mel["sr"]) / float(mel["spect_params"]["hop_length"])
    except (KeyError, TypeError, ValueError):
        return MEL_FRAME_RATE


def mel_frames_per_semantic_frame(config, semantic_record_key: str, meta: Mapping[str, Any] | None = None) -> float:
    """How many mel frames one semantic frame spans (the s2mel crop ratio).

    ``mel_stacked`` (the demo stand-in) is made of mel frame pairs: exactly 2 (an int). Real
    w2v-BERT features/codes: ``mel rate / semantic rate`` with the mel rate from the shards' mel
    settings (``dataset.json`` options, else ``config.model.s2mel.preprocess_params``; 22050/256) and
    the semantic rate from ``dataset.json`` ``frame_rates[<key>]`` when present, else
    ``config.s2mel.semantic_frame_rate`` when set (> 0), else 50 Hz (w2v-BERT): 1.72265625.
    """
    if semantic_record_key == "mel_stacked":
        return 2
    meta = meta or {}
    rates = meta.get("frame_rates") or {}
    sem_rate = float(rates.get(semantic_record_key, 0.0) or 0.0)
    if not sem_rate:
        s2mel = getattr(config, "s2mel", None)
        sem_rate = float(s2mel.get("semantic_frame_rate", 0.0) or 0.0) if s2mel is not None else 0.0
    sem_rate = sem_rate or W2V_BERT_FRAME_RATE
    mel_rate = float(rates.get("mel", 0.0) or 0.0) or _mel_frame_rate(config, meta)
    return mel_rate / sem_rate


def _frames(n: int, factor: float) -> int:
    """floor(n * factor) (exact for int factors)."""
    return int(n * factor) if isinstance(factor, int) else int(np.floor(n * factor + 1e-9))


def _start(start: int, factor: float) -> int:
    """round(start * factor): the first frame of a window starting at ``start`` length-key frames."""
    return int(start * factor) if isinstance(factor, int) else int(np.floor(start * factor + 0.5))


def _fit(n: int, factor: float) -> int:
    """floor(n / factor): length-key frames covered by ``n`` frames of a ``factor`` sequence."""
    return n // factor if isinstance(factor, int) else int(np.floor(n / factor + 1e-9))


def _width(length: int, factor: float) -> int:
    """Padded width of a ``factor`` sequence for a bucket of ``length`` length-key frames."""
    return length * factor if isinstance(factor, int) else int(np.ceil(length * factor - 1e-9))


# ----------------------------------------------------------------------------------------------
# Batch plan
# ----------------------------------------------------------------------------------------------
class BatchPlan:
    """The global batch plan (see module docstring, steps 1-3); a random-access Grain source.

    ``plan[k]`` is the k-th batch of this host (epoch ``k // batches_per_epoch``): a dict with
    ``step``, ``epoch``, ``bucket`` and ``rows`` (record indices of this host's rows, -1 = padding).
    """

    def __init__(self, index: Sequence[Mapping[str, Any]], *, length_record_key: str, length_factor: int,
                 buckets: Sequence[int], global_batch_size: int, process_index: int = 0, process_count: int = 1,
                 seed: int = 0, num_epochs: int | None = None, drop_remainder: bool = False, crop: bool = False,
                 shuffle: bool = True, min_seconds: float = 0.0, max_seconds: float = float("inf"),
                 max_text_tokens: int | None = None):
        if global_batch_size % process_count:
            raise ValueError(f"global batch size {global_batch_size} is not divisible by {process_count} hosts")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} out of range for {process_count} hosts")
        self.buckets = tuple(sorted(int(b) for b in buckets))
        if not self.buckets or self.buckets[0] <= 0:
            raise ValueError(f"length buckets must be positive, got {buckets}")
        self.global_batch_size = global_batch_size
        self.host_batch_size = global_batch_size // process_count
        self.process_index, self.process_count = process_index, process_count
        self.seed, self.num_epochs, self.drop_remainder = int(seed), num_epochs, drop_remainder
        self.shuffle = shuffle
        self.num_records = len(index)
        self.dropped: dict[str, int] = {}
        kept, bucket_of = [], []
        for i, e in enumerate(index):
            lengths = e.get("lengths", {})
            if length_record_key not in lengths:
                raise ValueError(f"record {e.get('id')!r} has no {length_record_key!r} length in the shard index; "
                                 f"were the shards made with that feature? (lengths: {sorted(lengths)})")
            n = lengths[length_record_key] // length_factor
            reason = None
            if e["duration"] < min_seconds:
                reason = "shorter_than_min_audio_seconds"
            elif e["duration"] > max_seconds:
                reason = "longer_than_max_audio_seconds"
            elif max_text_tokens is not None and lengths.get("text_ids", 0) > max_text_tokens:
                reason = "more_than_max_text_tokens"
            elif n <= 0:
                reason = "empty"
            elif n > self.buckets[-1] and not crop:
                reason = "longer_than_largest_bucket"
            if reason:
                self.dropped[reason] = self.dropped.get(reason, 0) + 1
                continue
            kept.append(i)
            bucket_of.append(next((b for b, size in enumerate(self.buckets) if n <= size), len(self.buckets) - 1))
        self.kept = np.asarray(kept, np.int64)
        self.bucket_of = np.full(self.num_records, -1, np.int32)
        self.bucket_of[self.kept] = bucket_of
        counts = np.bincount(np.asarray(bucket_of, np.int64), minlength=len(self.buckets))
        if drop_remainder:
            per_bucket = counts // global_batch_size
            self.dropped["batch_remainder"] = int((counts % global_batch_size).sum())
        else:
            per_bucket = -(-counts // global_batch_size)
        self.batches_per_bucket = tuple(int(x) for x in per_bucket)
        self.batches_per_epoch = int(per_bucket.sum())
        self._epoch_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if self.batches_per_epoch == 0:
            raise ValueError(f"no batches: {len(kept)} usable records of {self.num_records} (dropped: "
                             f"{self.dropped}) for global batch size {global_batch_size}")

    def __len__(self) -> int:
        epochs = self.num_epochs if self.num_epochs is not None else max(1, 2**62 // self.batches_per_epoch)
        return self.batches_per_epoch * epochs

    def epoch_batches(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(buckets (K,), rows (K, global_batch_size))`` of one epoch; rows -1 = padding."""
        if epoch not in self._epoch_cache:
            if len(self._epoch_cache) >= 2:
                self._epoch_cache.pop(next(iter(self._epoch_cache)))
            self._epoch_cache[epoch] = self._make_epoch(epoch)
        return self._epoch_cache[epoch]

    def _make_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.kept) if self.shuffle else self.kept
        g = self.global_batch_size
        buckets, rows = [], []
        for b in range(len(self.buckets)):
            members = order[self.bucket_of[order] == b]
            for k in range(self.batches_per_bucket[b]):
                chunk = members[k * g:(k + 1) * g]
                buckets.append(b)
                rows.append(np.pad(chunk, (0, g - len(chunk)), constant_values=-1))
        perm = rng.permutation(len(rows)) if self.shuffle else np.arange(len(rows))
        return np.asarray(buckets, np.int32)[perm], np.stack(rows)[perm]

    def __getitem__(self, step: int) -> dict[str, Any]:
        step = int(step)
        epoch, k = divmod(step, self.batches_per_epoch)
        buckets, rows = self.epoch_batches(epoch)
        b = self.host_batch_size
        lo = self.process_index * b
        return {"step": step, "epoch": epoch, "bucket": int(buckets[k]), "rows": rows[k, lo:lo + b].copy()}

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_epoch_cache"] = {}
        return d


# ----------------------------------------------------------------------------------------------
# Batch assembly (runs in Grain workers)
# ----------------------------------------------------------------------------------------------
class AssembleBatch:
    """Grain map: a plan entry -> a padded batch dict (see module docstring for the keys)."""

    def __init__(self, shard_paths: Sequence[str], index: Sequence[Mapping[str, Any]], spec: StageSpec, *,
                 semantic_record_key: str, buckets: Sequence[int], seed: int, max_text_tokens: int,
                 prompt_source: str = "other", prompt_frames: int = 128, prompt_min_frames: int = 32,
                 bpe_model: str = "", text_in_shards: bool = True, codes_in_shards: bool = False,
                 feature_dims: Mapping[str, int] | None = None, factors: Mapping[str, float] | None = None,
                 style_source: str = "", style_frames: int = 300):
        if prompt_source not in ("other", "same"):
            raise ValueError(f"prompt_source must be 'other' or 'same', got {prompt_source!r}")
        self.shard_paths = list(shard_paths)
        self.spec = spec
        self.semantic_record_key = semantic_record_key
        self.buckets = tuple(sorted(buckets))
        self.seed = int(seed)
        self.max_text_tokens = int(max_text_tokens)
        self.prompt_source = prompt_source
        self.prompt_frames, self.prompt_min_frames = int(prompt_frames), int(prompt_min_frames)
        self.bpe_model = bpe_model
        self.text_in_shards, self.codes_in_shards = text_in_shards, codes_in_shards
        self.feature_dims = dict(feature_dims or {})
        # output name -> (record key or "semantic", frames per length-key frame), with the factors given
        self.sequences = {name: (key, (factors or {}).get(name, factor))
                          for name, (key, factor) in spec.sequences.items()}
        if style_source not in ("", "speaker_embedding", "campplus_fbank"):
            raise ValueError(f"style_source must be '', 'speaker_embedding' or 'campplus_fbank', got {style_source!r}")
        self.style_source = style_source if spec.style else ""
        self.style_frames = int(style_frames)
        by_speaker: dict[str, list[int]] = {}
        for i, e in enumerate(index):
            by_speaker.setdefault(e["speaker"], []).append(i)
        self.speaker_of = np.asarray([e["speaker"] for e in index], dtype=object)
        self.same_speaker = {s: np.asarray(v, np.int64) for s, v in by_speaker.items()}
        self._source = None
        self._tokenizer = None

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_source"] = None
        d["_tokenizer"] = None
        return d

    # -- helpers ---------------------------------------------------------------------------
    @property
    def source(self):
        if self._source is None:
            import grain

            self._source = grain.sources.ArrayRecordDataSource(self.shard_paths)
        return self._source

    def _read(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        if not indices:
            return []
        raw = self.source.__getitems__(list(indices)) if hasattr(self.source, "__getitems__") \
            else [self.source[i] for i in indices]
        return [shard_io.decode_example(r) for r in raw]

    def _text_ids(self, record: Mapping[str, Any]) -> np.ndarray:
        if "text_ids" in record:
            return np.asarray(record["text_ids"], np.int32)
        if self._tokenizer is None:
            from indextts2_jax.text.tokenizer import TextTokenizer

            self._tokenizer = TextTokenizer(self.bpe_model)
        from data_pipeline.preprocess import tokenizer_lang

        lang = tokenizer_lang(record.get("language"))
        return np.asarray(self._tokenizer.encode(record["text"], check=False, lang=lang), np.int32)

    def _semantic(self, record: Mapping[str, Any]) -> np.ndarray:
        return record[self.semantic_record_key]

    def _prompt_index(self, i: int, rng: np.random.Generator) -> int:
        if self.prompt_source == "same":
            return i
        group = self.same_speaker[self.speaker_of[i]]
        if len(group) < 2:
            return i
        j = int(group[rng.integers(len(group) - 1)])
        return j if j != i else int(group[-1])

    # -- the map ---------------------------------------------------------------------------
    def __call__(self, entry: Mapping[str, Any]) -> dict[str, np.ndarray]:
        spec = self.spec
        rows = np.asarray(entry["rows"])
        epoch = int(entry["epoch"])
        length = self.buckets[int(entry["bucket"])]
        b = rows.shape[0]
        valid = rows >= 0
        real = [int(r) for r in rows[valid]]
        rngs = {r: np.random.default_rng([self.seed, epoch, r]) for r in real}
        prompt_of = {r: self._prompt_index(r, rngs[r]) for r in real} if spec.prompt else {}
        need = sorted(set(real) | set(prompt_of.values()))
        records = dict(zip(need, self._read(need)))

        out: dict[str, np.ndarray] = {
            "valid": valid.copy(),
            "record_index": rows.astype(np.int64),
            "speaker_index": np.zeros(b, np.int32),
            "duration": np.zeros(b, np.float32),
        }
        first = records[real[0]] if real else None
        arrays = {}
        for name, (key, factor) in self.sequences.items():
            rec_key = self.semantic_record_key if key == "semantic" else key
            dim = self.feature_dims.get(rec_key)
            if dim is None and first is not None:
                dim = int(np.prod(np.shape(first[rec_key])[1:], dtype=np.int64))
            width = _width(length, factor)
            shape = (b, width) if name == "wave" else (b, width, dim or 0)
            arrays[name] = np.zeros(shape, np.float32)
            out[_LENGTH_OUTPUT[name]] = np.zeros(b, np.int32)
        if self.codes_in_shards and spec.codes:
            arrays["semantic_codes"] = np.zeros((b, length), np.int32)
        if self.style_source == "speaker_embedding":
            dim = self.feature_dims.get("speaker_embedding")
            if dim is None and first is not None:
                dim = int(np.shape(first["speaker_embedding"])[-1])
            out["speaker_embedding"] = np.zeros((b, dim or 0), np.float32)
        elif self.style_source == "campplus_fbank":
            out["style_features"] = np.zeros((b, self.style_frames, self.feature_dims.get("campplus_fbank", 80)),
                                             np.float32)
            out["style_lengths"] = np.zeros(b, np.int32)
        if spec.text:
            out["text_ids"] = np.zeros((b, self.max_text_tokens), np.int32)
            out["text_lengths"] = np.zeros(b, np.int32)
        if spec.prompt:
            pdim = self.feature_dims.get(self.semantic_record_key)
            if pdim is None and first is not None:
                pdim = int(np.shape(first[self.semantic_record_key])[1])
            out["prompt_features"] = np.zeros((b, self.prompt_frames, pdim or 0), np.float32)
            out["prompt_lengths"] = np.zeros(b, np.int32)

        for row in np.nonzero(valid)[0]:
            r = int(rows[row])
            rec, rng = records[r], rngs[r]
            out["speaker_index"][row] = rec["speaker_index"]
            out["duration"][row] = rec["duration"]
            # time crop (in length-key frames), shared by the aligned sequences
            len_key, len_factor = self.sequences[spec.length_key]
            len_rec = self.semantic_record_key if len_key == "semantic" else len_key
            n = _fit(np.shape(rec[len_rec])[0], len_factor)
            for key, factor in self.sequences.values():
                rec_key = self.semantic_record_key if key == "semantic" else key
                n = min(n, _fit(np.shape(rec[rec_key])[0], factor))
            start = 0
            if n > length:
                start = int(rng.integers(n - length + 1))
                n = length
            # the same time window in every sequence: frames [round(start f), round((start + n) f))
            for name, (key, factor) in self.sequences.items():
                rec_key = self.semantic_record_key if key == "semantic" else key
                seg = np.asarray(rec[rec_key])[_start(start, factor):_start(start + n, factor)]
                seg = seg[: arrays[name].shape[1]]
                if name == "wave":
                    seg = seg.astype(np.float32) / 32768.0 if seg.dtype == np.int16 else seg
                arrays[name][row, : seg.shape[0]] = seg
                out[_LENGTH_OUTPUT[name]][row] = seg.shape[0]
            if "semantic_codes" in arrays:
                codes = np.asarray(rec["semantic_codes"])[start:start + n]
                arrays["semantic_codes"][row, : codes.shape[0]] = codes
            if self.style_source == "speaker_embedding":
                out["speaker_embedding"][row] = np.asarray(rec["speaker_embedding"], np.float32).reshape(-1)
            elif self.style_source == "campplus_fbank":
                fbank = np.asarray(rec["campplus_fbank"], np.float32)
                s_len = min(self.style_frames, fbank.shape[0])
                s_start = int(rng.integers(fbank.shape[0] - s_len + 1))
                out["style_features"][row, :s_len] = fbank[s_start:s_start + s_len]
                out["style_lengths"][row] = s_len
            if spec.text:
                ids = self._text_ids(rec)
                if ids.shape[0] > self.max_text_tokens:  # only when tokenizing here: cannot drop, so mask
                    out["valid"][row] = False
                    ids = ids[: self.max_text_tokens]
                out["text_ids"][row, : ids.shape[0]] = ids
                out["text_lengths"][row] = ids.shape[0]
            if spec.prompt:
                prompt = np.asarray(self._semantic(records[prompt_of[r]]))
                total = prompt.shape[0]
                hi = min(self.prompt_frames, total)
                lo = min(self.prompt_min_frames, hi)
                p_len = int(rng.integers(lo, hi + 1)) if hi > lo else hi
                p_start = int(rng.integers(total - p_len + 1))
                out["prompt_features"][row, :p_len] = prompt[p_start:p_start + p_len]
                out["prompt_lengths"][row] = p_len
        out.update(arrays)
        return out


# ----------------------------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Pipeline:
    """A stage's input pipeline for one host.

    Attributes:
        dataset: the Grain ``IterDataset`` of batches; ``iter(pipeline)`` gives a fresh iterator with
            ``get_state``/``set_state``.
        plan: the :class:`BatchPlan` (``dropped`` counts, ``batches_per_epoch``, buckets).
        assemble: the :class:`AssembleBatch` map (``batch_shapes`` uses it).
    """

    dataset: Any
    plan: BatchPlan
    assemble: AssembleBatch
    stage: str

    def __iter__(self):
        return iter(self.dataset)

    @property
    def dropped(self) -> dict[str, int]:
        return dict(self.plan.dropped)

    def batch_shapes(self) -> list[dict[str, tuple[int, ...]]]:
        """The (per-host) shapes of every key, one dict per bucket, e.g. to compile ahead of time."""
        out = []
        for b in range(len(self.plan.buckets)):
            entry = {"step": 0, "epoch": 0, "bucket": b, "rows": np.full(self.plan.host_batch_size, -1, np.int64)}
            out.append({k: v.shape for k, v in self.assemble(entry).items()})
        return out


def make_pipeline(config, split: str = "train", *, shards_dir: str | os.PathLike | None = None,
                  stage: str | None = None, process_index: int | None = None, process_count: int | None = None,
                  global_batch_size: int | None = None, seed: int | None = None, num_epochs: int | None = None,
                  num_workers: int | None = None, drop_remainder: bool = False, shuffle: bool = True,
                  length_buckets=None,
                  prompt_source: str | None = None, prompt_frames: int | None = None,
                  prompt_min_frames: int | None = None, bpe_model: str | None = None,
                  read_threads: int = 4, prefetch_buffer_size: int = 16, min_shm_size: int = 1 << 16) -> Pipeline:
    """Build a stage's Grain pipeline for this host from ``config`` (``config.data`` and ``config.stage``).

    Args default to the config: ``shards_dir`` = ``data.shards``, ``global_batch_size``,
    ``seed`` = ``data.shuffle_seed``, ``num_workers`` = ``data.num_workers``, ``length_buckets``,
    ``shuffle`` False keeps record order (evaluation; prompts and crops stay seeded).
    ``prompt_*`` = ``data.prompt_*`` if present (else "other", the smallest bucket, a quarter of
    it). ``process_index``/``process_count`` default to the JAX process (``grain.sharding.ShardByJaxProcess``);
    pass them to simulate hosts. ``num_epochs`` None repeats forever. ``bpe_model`` (default
    ``data.bpe_model``, else ``<shards>/bpe.model``) is only needed when the shards hold no ``text_ids``.
    With workers, arrays of at least ``min_shm_size`` bytes travel through shared memory, smaller
    ones are pickled (measured faster for the many small per-batch arrays).
    """
    import grain

    stage = stage or getattr(config, "stage", "gpt")
    if stage not in STAGE_SPECS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGE_SPECS)}")
    spec = STAGE_SPECS[stage]
    shards_dir = Path(shards_dir or _cfg(config, "shards", ""))
    if not str(shards_dir):
        raise ValueError("no shards folder: set config.data.shards or pass shards_dir")
    if process_index is None or process_count is None:
        shard = grain.sharding.ShardByJaxProcess()
        process_index, process_count = shard.shard_index, shard.shard_count
    paths = shard_io.list_shards(shards_dir, split)
    index = shard_io.load_index(paths)
    meta_path = shards_dir / "dataset.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"outputs": {}}
    available = set(meta.get("outputs", {}))
    if index:
        available |= set(index[0].get("lengths", {}))
    sem_key = semantic_key(config, sorted(available))
    buckets = tuple(length_buckets or _cfg(config, "length_buckets", (256, 512, 1024)))
    max_text_tokens = int(_cfg(config, "max_text_tokens", 600))
    seed = int(_cfg(config, "shuffle_seed", 0) if seed is None else seed)
    len_key, len_factor = spec.sequences[spec.length_key]
    len_record_key = sem_key if len_key == "semantic" else len_key
    factors = {}
    if len_key == "semantic" and "mel" in spec.sequences:
        factors["mel"] = mel_frames_per_semantic_frame(config, sem_key, meta)
    style_source = ""
    if spec.style:
        style_source = "speaker_embedding" if "speaker_embedding" in available else (
            "campplus_fbank" if "campplus_fbank" in available else "")
    text_in_shards = "text_ids" in available
    plan = BatchPlan(index, length_record_key=len_record_key, length_factor=len_factor, buckets=buckets,
                     global_batch_size=int(global_batch_size or getattr(config, "global_batch_size", 8)),
                     process_index=process_index, process_count=process_count, seed=seed, num_epochs=num_epochs,
                     drop_remainder=drop_remainder, crop=spec.crop, shuffle=shuffle,
                     min_seconds=float(_cfg(config, "min_audio_seconds", 0.0)),
                     max_seconds=float(_cfg(config, "max_audio_seconds", float("inf"))),
                     max_text_tokens=max_text_tokens if (spec.text and text_in_shards) else None)
    if spec.text and not text_in_shards:
        bpe_model = bpe_model or _cfg(config, "bpe_model", "") or str(shards_dir / "bpe.model")
        if not os.path.exists(bpe_model):
            raise FileNotFoundError(f"the shards in {shards_dir} hold no text_ids and there is no BPE model at "
                                    f"{bpe_model!r}; pass bpe_model= or preprocess with --bpe_model")
    dims = {}
    feats = meta.get("outputs", {})
    for key in feats:
        if key in ("mel", "campplus_fbank"):
            dims[key] = 80
        elif key in ("mel_stacked", "w2v_bert_fbank"):
            dims[key] = 160
    first = shard_io.decode_example(grain.sources.ArrayRecordDataSource(paths[:1])[0]) if index else {}
    for key, value in first.items():
        if isinstance(value, np.ndarray) and value.ndim == 2:
            dims[key] = int(value.shape[1])
        elif key == "speaker_embedding":
            dims[key] = int(np.size(value))
    smallest = min(buckets)
    assemble = AssembleBatch(
        paths, index, spec, semantic_record_key=sem_key, buckets=buckets, seed=seed,
        max_text_tokens=max_text_tokens,
        prompt_source=prompt_source or _cfg(config, "prompt_source", "other"),
        prompt_frames=int(prompt_frames or _cfg(config, "prompt_frames", smallest)),
        prompt_min_frames=int(prompt_min_frames or _cfg(config, "prompt_min_frames", max(1, smallest // 4))),
        bpe_model=str(bpe_model or ""), text_in_shards=text_in_shards,
        codes_in_shards="semantic_codes" in available, feature_dims=dims, factors=factors,
        style_source=style_source, style_frames=int(_s2mel_cfg(config, "style_frames", 300)))
    ds = grain.MapDataset.source(plan).map(assemble)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_buffer_size))
    workers = int(_cfg(config, "num_workers", 0) if num_workers is None else num_workers)
    if workers > 0:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the spawned workers
        if min_shm_size:
            ds = grain.experimental.WithOptionsIterDataset(ds, grain.experimental.DatasetOptions(
                min_shm_size=min_shm_size))
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
    return Pipeline(dataset=ds, plan=plan, assemble=assemble, stage=stage)


# ----------------------------------------------------------------------------------------------
# Iterator state files (what grain.checkpoint.CheckpointHandler writes, without Orbax)
# ----------------------------------------------------------------------------------------------
def save_iterator_state(iterator, directory: str | os.PathLike) -> Path:
    """Write this host's iterator state as ``<directory>/process_<i>-of-<n>.json`` (Grain's handler)."""
    import grain
    from etils import epath

    path = epath.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    grain.checkpoint.CheckpointHandler().save(path, item=iterator)
    return Path(directory)


def restore_iterator_state(iterator, directory: str | os.PathLike):
    """Restore an iterator (of the same pipeline) saved by :func:`save_iterator_state`; returns it."""
    import grain
    from etils import epath

    return grain.checkpoint.CheckpointHandler().restore(epath.Path(directory), item=iterator)
