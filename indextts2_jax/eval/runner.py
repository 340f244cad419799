"""The evaluation run: load jobs, score every utterance (never failing the whole run), summarize, write the report."""

from __future__ import annotations

import math
import os
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indextts2_jax.errors import ConfigError, InputError
from indextts2_jax.jsonl import read_jsonl

__all__ = ["ALL_METRICS", "EvalItem", "evaluate", "evaluate_run", "item_language", "items_from_dir", "load_jobs"]

SAMPLE_RATE = 16000
# Metric groups that evaluate() can compute.
ALL_METRICS = ("asr", "speaker", "dnsmos", "reference", "duration")
_KEYS = {
    "wav": ("wav", "output", "audio_path", "out"),
    "prompt": ("speaker_prompt", "prompt", "prompt_wav"),
    "reference": ("reference", "reference_wav", "ref"),
    "duration_seconds": ("duration_seconds", "requested_duration"),
    "language": ("language", "lang"),
}


@dataclass
class EvalItem:
    """One synthesized utterance to score.

    wav: the synthesized audio; text: what it should say; prompt: the speaker prompt (for similarity);
    reference: a recording of the same text by the prompt's speaker (for MCD/F0/PESQ/STOI); language: "en" or
    "zh" (None: detected from the text); duration_seconds: the requested duration (duration control).
    """

    id: str
    wav: str
    text: str
    prompt: str | None = None
    reference: str | None = None
    language: str | None = None
    duration_seconds: float | None = None


def _pick(job: Mapping[str, Any], field: str):
    for k in _KEYS.get(field, (field,)):
        if job.get(k) is not None:
            return job[k]
    return None


def _resolve(path, base: Path | None) -> str | None:
    if path is None:
        return None
    p = Path(os.fspath(path))
    if not p.is_absolute() and base is not None:
        p = base / p
    return str(p)


def load_jobs(jobs: str | os.PathLike | Iterable[Mapping[str, Any] | EvalItem]) -> list[EvalItem]:
    """Jobs (a JSONL path or dicts) -> items. Keys: ``wav`` (or ``output``/``audio_path``/``out``), ``text``,
    ``speaker_prompt`` (or ``prompt``), optional ``reference``, ``language``, ``duration_seconds``, ``id``.
    Relative paths in a JSONL file are read from the file's folder. A job without a wav or text raises ConfigError.
    """
    base = None
    if isinstance(jobs, (str, os.PathLike)):
        path = Path(jobs)
        base = path.parent
        records = read_jsonl(path)
    else:
        records = list(jobs)
    items = []
    for i, job in enumerate(records):
        if isinstance(job, EvalItem):
            items.append(job)
            continue
        wav, text = _pick(job, "wav"), job.get("text")
        if wav is None or text is None:
            raise ConfigError(f"job {i}: needs 'wav' and 'text', got keys {sorted(job)}")
        duration = _pick(job, "duration_seconds")
        items.append(EvalItem(
            id=str(job.get("id", Path(str(wav)).stem if wav else f"{i:05d}")),
            wav=_resolve(wav, base), text=str(text), prompt=_resolve(_pick(job, "prompt"), base),
            reference=_resolve(_pick(job, "reference"), base), language=_pick(job, "language"),
            duration_seconds=float(duration) if duration is not None else None,
        ))
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):  # ids name plot files and rows: make them unique
        seen: dict[str, int] = {}
        for it in items:
            k = seen.get(it.id, 0)
            seen[it.id] = k + 1
            if k:
                it.id = f"{it.id}#{k}"
    return items


def items_from_dir(folder: str | os.PathLike, prompt: str | None = None) -> list[EvalItem]:
    """Every ``*.wav`` in ``folder`` with a sibling ``*.txt`` (or ``*.lab``) holding its text; one shared prompt."""
    items = []
    for wav in sorted(Path(folder).glob("*.wav")):
        for ext in (".txt", ".lab"):
            text_file = wav.with_suffix(ext)
            if text_file.exists():
                items.append(EvalItem(wav.stem, str(wav), text_file.read_text(encoding="utf-8").strip(), prompt))
                break
    if not items:
        raise ConfigError(f"{folder}: no *.wav with a matching .txt/.lab text file")
    return items


def item_language(item: EvalItem) -> str:
    """The item's language, or the one :func:`~indextts2_jax.text.normalize.detect_language` finds in its text."""
    if item.language:
        return item.language
    from indextts2_jax.text.normalize import detect_language

    return detect_language(item.text)


def _error_text(e: BaseException) -> str:
    if isinstance(e, InputError):
        return str(e)
    return f"{type(e).__name__}: {e}"


class _Scorer:
    """Holds the loaded tools and caches (prompt embeddings, loaded prompts/references)."""

    def __init__(self, items: Sequence[EvalItem], metrics: set[str], campplus, recognizers, timing: dict,
                 lm_texts: Sequence[str] = ()):
        self.metrics = metrics
        self.timing = timing
        self.recognizers: dict[str, Callable[[np.ndarray], str]] = dict(recognizers or {})
        self.asr_info: dict[str, Any] = {}
        self.embedders = []
        # (embedder, path) -> embedding or the error it gave; outputs are cached too (a prompt may be an output)
        self.prompt_cache: dict[tuple[str, str], np.ndarray | Exception] = {}
        t0 = time.perf_counter()
        if "asr" in metrics:
            en_texts = [it.text for it in items if item_language(it) == "en"]
            if en_texts and "en" not in self.recognizers:
                from indextts2_jax.eval.asr import PocketsphinxRecognizer

                rec = PocketsphinxRecognizer([*en_texts, *lm_texts], "en")
                self.recognizers["en"] = rec
                self.asr_info["en"] = {
                    "recognizer": "pocketsphinx en-us (wheel acoustic model), trigram LM of the evaluated texts",
                    "vocabulary": len(rec.vocabulary), "oov_words": rec.oov_words,
                    "lm_sentences": len(en_texts) + len(lm_texts),
                }
        if "speaker" in metrics and any(it.prompt for it in items):
            from indextts2_jax.eval.speaker import CampplusEmbedder, ResemblyzerEmbedder

            self.embedders.append(ResemblyzerEmbedder())
            if campplus is not None:
                self.embedders.append(campplus if callable(campplus) else CampplusEmbedder(campplus))
        timing["setup"] = time.perf_counter() - t0

    def _timed(self, name: str, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.timing[name] = self.timing.get(name, 0.0) + time.perf_counter() - t0

    def _embedding(self, embedder, path: str, wave: np.ndarray | None = None) -> np.ndarray:
        key = (embedder.name, path)
        if key not in self.prompt_cache:
            try:
                w = wave if wave is not None else _load16(path)
                self.prompt_cache[key] = embedder(w)
            except Exception as e:  # noqa: BLE001 - recorded in the row
                self.prompt_cache[key] = e
        value = self.prompt_cache[key]
        if isinstance(value, Exception):
            raise value
        return value

    def score(self, item: EvalItem) -> dict[str, Any]:
        from indextts2_jax.audio import audio_info

        lang = item_language(item)
        row: dict[str, Any] = {"id": item.id, "status": "ok", "wav": item.wav, "text": item.text, "language": lang,
                               "prompt": item.prompt, "reference": item.reference}
        errors: list[str] = []
        try:
            wave = self._timed("load", _load16, item.wav)
            row["duration"] = audio_info(item.wav).duration
        except Exception as e:  # noqa: BLE001 - a bad output file is an error row, not a crash
            row.update(status="error", error=f"output: {_error_text(e)}")
            return row

        if "duration" in self.metrics and item.duration_seconds is not None:
            row["duration_requested"] = item.duration_seconds
            row["duration_abs_error"] = abs(row["duration"] - item.duration_seconds)
            row["duration_rel_error"] = (row["duration_abs_error"] / item.duration_seconds
                                         if item.duration_seconds > 0 else None)

        if "asr" in self.metrics:
            try:
                self._score_asr(item, lang, wave, row)
            except Exception as e:  # noqa: BLE001
                errors.append(f"asr: {_error_text(e)}")

        if "dnsmos" in self.metrics:
            try:
                from indextts2_jax.eval.quality import dnsmos

                row.update(self._timed("dnsmos", dnsmos, wave))
            except Exception as e:  # noqa: BLE001
                errors.append(f"dnsmos: {_error_text(e)}")

        if "speaker" in self.metrics and item.prompt is not None:
            from indextts2_jax.eval.speaker import cosine_similarity

            for emb in self.embedders:
                try:
                    e_prompt = self._timed(f"speaker_{emb.name}", self._embedding, emb, item.prompt)
                    e_out = self._timed(f"speaker_{emb.name}", self._embedding, emb, item.wav, wave)
                    row[f"sim_{emb.name}"] = cosine_similarity(e_prompt, e_out)
                except Exception as e:  # noqa: BLE001
                    errors.append(f"speaker prompt ({emb.name}): {_error_text(e)}")

        if "reference" in self.metrics and item.reference is not None:
            try:
                self._score_reference(item, wave, row, errors)
            except Exception as e:  # noqa: BLE001
                errors.append(f"reference: {_error_text(e)}")

        if errors:
            row["status"] = "partial"
            row["error"] = "; ".join(errors)
        return row

    def _score_asr(self, item: EvalItem, lang: str, wave: np.ndarray, row: dict) -> None:
        from indextts2_jax.eval.asr import character_error_rate, word_error_rate

        rec = self.recognizers.get(lang)
        if rec is None:
            row["asr_note"] = f"no recognizer configured for language {lang!r}"
            return
        hyp = self._timed("asr", rec, wave)
        row["hypothesis"] = hyp
        if lang == "zh":
            counts = character_error_rate(item.text, hyp)
            row["cer"] = counts.rate
        else:
            counts = word_error_rate(item.text, hyp, lang)
            row["wer"] = counts.rate
            if hasattr(rec, "oov_rate"):
                row["oov_rate"] = rec.oov_rate(item.text, lang)
        row["asr_errors"] = counts.errors
        row["asr_reference_length"] = counts.reference_length

    def _score_reference(self, item: EvalItem, wave: np.ndarray, row: dict, errors: list[str]) -> None:
        from indextts2_jax.eval import quality

        ref = self._timed("load", _load16, item.reference)
        aligned = self._timed("mcd", quality.aligned_features, ref, wave)
        row["mcd"] = self._timed("mcd", quality.mel_cepstral_distortion, ref, wave, SAMPLE_RATE, aligned)
        try:
            rmse, vde = self._timed("f0", quality.f0_rmse, ref, wave, SAMPLE_RATE, aligned)
            row["f0_rmse"] = rmse if math.isfinite(rmse) else None
            row["vde"] = vde
        except Exception as e:  # noqa: BLE001
            errors.append(f"f0: {_error_text(e)}")
        for name, fn in (("pesq", quality.pesq_wb), ("stoi", quality.stoi)):
            try:
                row[name] = self._timed(name, fn, ref, wave)
            except Exception as e:  # noqa: BLE001
                errors.append(f"{name}: {_error_text(e)}")


def _load16(path: str) -> np.ndarray:
    from indextts2_jax.audio import load_audio

    return load_audio(path, SAMPLE_RATE)


def _corpus_rates(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("wer", "cer"):
        scored = [r for r in rows if r.get(key) is not None]
        if scored:
            errors = sum(r["asr_errors"] for r in scored)
            length = sum(r["asr_reference_length"] for r in scored)
            out[f"corpus_{key}"] = errors / length if length else None
            out[f"corpus_{key}_utterances"] = len(scored)
            out[f"corpus_{key}_errors"] = errors
            out[f"corpus_{key}_reference_length"] = length
    return out


def evaluate(items: Iterable[EvalItem | Mapping[str, Any]], *, out_dir: str | os.PathLike | None = None,
             metrics: Iterable[str] = ALL_METRICS, campplus=None, recognizers: Mapping[str, Callable] | None = None,
             lm_texts: Sequence[str] = (),
             plots: bool = True, worst_count: int = 3, progress: bool = False) -> dict[str, Any]:
    """Score synthesized utterances; returns the report dict (and writes it when ``out_dir`` is given).

    Args:
        items: :class:`EvalItem` objects or job dicts (see :func:`load_jobs`).
        metrics: groups to compute, from ``ALL_METRICS``: "asr" (WER, or CER for zh), "speaker" (cosine
            similarity to the prompt), "dnsmos", "reference" (MCD, F0 RMSE, PESQ, STOI against ``reference``),
            "duration" (requested vs produced).
        campplus: path of the official ``campplus_cn_common.bin`` (or a callable embedder) to add CAM++
            similarity next to Resemblyzer's.
        recognizers: {language: callable(16 kHz wave) -> transcript}; English defaults to pocketsphinx with an
            LM of the evaluated texts; other languages are skipped (with a note in the row) unless given.
        lm_texts: more English sentences for pocketsphinx's LM (e.g. the whole demo sentence list), so that a
            small run's LM is not just its own few sentences (which makes the WER optimistic).
        plots: write histograms and worst-case mel images (needs ``out_dir``).

    Report: {"summary": {metric: {n, mean, std, ci95, ci95_low, ci95_high, min, max, median}}, "corpus":
    corpus-level WER/CER, "rows": one dict per item (``status`` "ok" | "partial" | "error" with ``error``),
    "asr": recognizer facts (vocabulary, OOV words), "timing": seconds per stage, "files", "plots"}.
    A missing or unreadable file never stops the run: its row carries the error.
    """
    from indextts2_jax.eval import report as rep

    metrics = set(metrics)
    unknown = metrics - set(ALL_METRICS)
    if unknown:
        raise ConfigError(f"unknown metric groups {sorted(unknown)}; choose from {ALL_METRICS}")
    items = load_jobs(items)
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    scorer = _Scorer(items, metrics, campplus, recognizers, timing, list(lm_texts))
    rows = []
    for i, item in enumerate(items):
        try:
            rows.append(scorer.score(item))
        except Exception as e:  # noqa: BLE001 - last resort: keep the run going
            rows.append({"id": item.id, "status": "error", "wav": item.wav, "text": item.text,
                         "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=3)})
        if progress:
            print(f"[{i + 1}/{len(items)}] {rows[-1]['id']}: {rows[-1]['status']}", flush=True)
    summary = rep.summarize(rows)
    total = time.perf_counter() - t_start
    report: dict[str, Any] = {
        "summary": summary,
        "corpus": _corpus_rates(rows),
        "rows": rows,
        "asr": scorer.asr_info,
        "metrics": sorted(metrics),
        "counts": {s: sum(r["status"] == s for r in rows) for s in ("ok", "partial", "error")},
        "timing": {**timing, "total": total, "per_utterance": total / max(len(rows), 1)},
        "confidence_interval": "95 %: mean +- 1.96 * sample std / sqrt(n) (normal approximation)",
    }
    if out_dir is not None:
        out = Path(out_dir)
        if plots:
            plot_dir = out / "plots"
            report["plots"] = {"histograms": rep.plot_histograms(rows, plot_dir), "worst": {}}
            for key in ("wer", "cer", "sim_resemblyzer", "dnsmos_ovrl", "mcd"):
                if key in summary:
                    report["plots"]["worst"][key] = rep.plot_worst_mels(
                        rows, lambda r: _load16(r["wav"]), plot_dir, key, worst_count)
        report["files"] = rep.write_report(report, out)
        report["timing"]["with_report"] = time.perf_counter() - t_start
    return report


def evaluate_run(jobs: str | os.PathLike | Iterable[Mapping[str, Any] | EvalItem], out_dir: str | os.PathLike,
                 **kwargs) -> dict[str, Any]:
    """Evaluate a jobs file (or list) and write report.md, report.json and plots/ under ``out_dir``."""
    return evaluate(load_jobs(jobs), out_dir=out_dir, **kwargs)


def item_dict(item: EvalItem) -> dict[str, Any]:
    return asdict(item)
