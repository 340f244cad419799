"""Intelligibility: offline ASR (pocketsphinx) with a language model built from the evaluated texts, WER/CER.

Why a language model of our own: pocketsphinx's built-in general English trigram (``en-us.lm.bin``) is far too
weak for synthesized read speech (typical WERs of 40-70 % even on clean speech), so differences between systems
drown in recognizer errors. As the evaluation protocol of many TTS papers does with a strong ASR, we instead make
the recognizer's job well-posed: its language model is a trigram over the evaluated texts themselves, and its
dictionary holds only their words. WER then measures whether the audio carries the words (garbled, reversed or
noise audio still gives high WERs, see tests/test_evaluate.py), but it is an optimistic, closed-vocabulary
number: compare it only between systems evaluated on the same texts.

pocketsphinx 5 reads ARPA files. Its wheel has one LM builder, ``pocketsphinx.lm.ArpaBoLM`` (the old
``quick_lm`` recipe: a fixed 0.5 discount at every order), but that model is not normalized: its unigrams keep only
half of the probability mass with nothing to back off to, and it gives ``<s>`` a unigram probability. So
:func:`write_arpa` writes its own backoff trigram: absolute discounting (D = 0.1 by default, or Ney's estimate;
see :func:`build_backoff_model` for the measurements behind the choice) over add-one smoothed unigrams, Katz-style
backoff weights; every context's probabilities sum to one (checked in the tests).

Pronunciations come from the CMU dictionary in the pocketsphinx wheel; words that it lacks (out of vocabulary,
OOV) cannot be recognized: they stay in the reference, count as errors, and the OOV rate is reported per
utterance (pocketsphinx 5 has no grapheme-to-phoneme converter).

Text normalization (both reference and hypothesis, as jiwer's usual transform chain): English numbers, times,
currencies to words (:func:`indextts2_jax.text.normalize.normalize_english`), lower case, punctuation removed
(apostrophes inside words kept), whitespace collapsed. Chinese: the CER compares characters with punctuation and
spaces removed; it needs a recognizer for Chinese (pass one; none ships with a wheel here).
"""

from __future__ import annotations

import functools
import math
import os
import re
import tempfile
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "PocketsphinxRecognizer",
    "Recognizer",
    "character_error_rate",
    "edit_distance",
    "normalize_for_wer",
    "normalize_for_cer",
    "word_error_rate",
    "write_arpa",
    "ngram_counts",
]

ASR_SAMPLE_RATE = 16000
SENTENCE_START, SENTENCE_END = "<s>", "</s>"
DEFAULT_DISCOUNT = 0.1

# A recognizer maps a 16 kHz float32 waveform to a transcript.
Recognizer = Callable[[np.ndarray], str]


# ---------------------------------------------------------------------------------------------
# normalization and error rates
# ---------------------------------------------------------------------------------------------
def _strip_punctuation(text: str, keep_apostrophes: bool) -> str:
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat.startswith("P") or cat.startswith("S"):
            out.append("'" if (keep_apostrophes and ch in "'’") else " ")
        else:
            out.append(ch)
    return "".join(out)


def normalize_for_wer(text: str, language: str = "en") -> str:
    """Reference/hypothesis normalization for WER: numbers to words (English), lower case, no punctuation.

    Apostrophes inside words stay ("don't"); dangling ones go. Returns space-separated words.
    """
    if language == "en":
        from indextts2_jax.text.normalize import normalize_english

        try:
            text = normalize_english(text)
        except Exception:  # normalization is best effort: an odd string is scored as written
            pass
    text = _strip_punctuation(text.lower().replace("-", " "), keep_apostrophes=True)
    words = [w.strip("'") for w in text.split()]
    return " ".join(w for w in words if w)


def normalize_for_cer(text: str) -> str:
    """Characters for CER: full-width to half-width, lower case, punctuation and all whitespace removed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in _strip_punctuation(text, keep_apostrophes=False) if not ch.isspace())


def edit_distance(ref: Sequence, hyp: Sequence) -> tuple[int, int, int]:
    """Levenshtein alignment of two token sequences: (substitutions, deletions, insertions)."""
    n, m = len(ref), len(hyp)
    # cost, subs, dels, ins per cell; rows rolled
    prev = [(j, 0, 0, j) for j in range(m + 1)]
    for i in range(1, n + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, m + 1):
            c_sub = prev[j - 1][0] + (ref[i - 1] != hyp[j - 1])
            c_del = prev[j][0] + 1
            c_ins = cur[j - 1][0] + 1
            best = min(c_sub, c_del, c_ins)
            if best == c_sub:
                p = prev[j - 1]
                cur.append((best, p[1] + (ref[i - 1] != hyp[j - 1]), p[2], p[3]))
            elif best == c_del:
                p = prev[j]
                cur.append((best, p[1], p[2] + 1, p[3]))
            else:
                p = cur[j - 1]
                cur.append((best, p[1], p[2], p[3] + 1))
        prev = cur
    _, s, d, ins = prev[m]
    return s, d, ins


@dataclass(frozen=True)
class ErrorCounts:
    """Alignment counts of one utterance; ``rate`` = (S + D + I) / N (N = reference tokens)."""

    substitutions: int
    deletions: int
    insertions: int
    reference_length: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        if self.reference_length == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.reference_length


def word_error_rate(reference: str, hypothesis: str, language: str = "en") -> ErrorCounts:
    """WER counts after :func:`normalize_for_wer` of both strings."""
    ref = normalize_for_wer(reference, language).split()
    hyp = normalize_for_wer(hypothesis, language).split()
    return ErrorCounts(*edit_distance(ref, hyp), len(ref))


def character_error_rate(reference: str, hypothesis: str) -> ErrorCounts:
    """CER counts after :func:`normalize_for_cer` of both strings (for Chinese and other unspaced scripts)."""
    ref, hyp = normalize_for_cer(reference), normalize_for_cer(hypothesis)
    return ErrorCounts(*edit_distance(list(ref), list(hyp)), len(ref))


# ---------------------------------------------------------------------------------------------
# ARPA trigram writer
# ---------------------------------------------------------------------------------------------
def ngram_counts(sentences: Iterable[Sequence[str]], order: int = 3) -> list[Counter]:
    """Counts of 1..order-grams (tuples) of the sentences padded with <s> ... </s>."""
    counts = [Counter() for _ in range(order)]
    for words in sentences:
        padded = [SENTENCE_START, *words, SENTENCE_END]
        for n in range(1, order + 1):
            for i in range(len(padded) - n + 1):
                gram = tuple(padded[i : i + n])
                if n == 1 and gram[0] == SENTENCE_START:
                    continue  # <s> is never predicted
                if n > 1 and SENTENCE_END in gram[:-1]:
                    continue
                counts[n - 1][gram] += 1
    return counts


def ney_discount(counter: Counter) -> float:
    """Ney's absolute discount estimate n1 / (n1 + 2 n2) (n_k: n-grams seen k times), clamped to [0.1, 0.9]."""
    n1 = sum(1 for c in counter.values() if c == 1)
    n2 = sum(1 for c in counter.values() if c == 2)
    d = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
    return min(max(d, 0.1), 0.9)


def build_backoff_model(sentences: Iterable[Sequence[str]], order: int = 3, vocabulary: Iterable[str] = (),
                        discount: float | str = DEFAULT_DISCOUNT):
    """Backoff n-gram model: ``(probs, backoffs)``, lists per order of {gram: prob} and {context: weight}.

    Unigrams: add-one over the vocabulary (the sentences' words, ``vocabulary`` and </s>; closed vocabulary).
    Higher orders: absolute discounting of seen n-grams by ``discount`` (a number, or "ney" for Ney's estimate
    per order); the freed mass goes to the lower order over the words not seen after the context (Katz-style
    backoff weight), so every context's distribution sums to one.

    Why a fixed 0.1 by default: on a small set of evaluated sentences nearly every trigram is a singleton, so
    Ney's estimate hits its 0.9 cap and the LM mostly backs off to unigrams. Measured on 24 demo-corpus
    recordings (12 espeak-ng voices), LM of their own texts: WER 34.1 % (Ney), 20.8 % (0.5), 18.6 % (0.3),
    11.0 % (0.1), while the WER of time-reversed audio stayed at 97-107 % and of other sentences' speech at
    119-122 %, so the stronger LM does not make up the reference from unrelated audio. With the whole demo
    sentence list (2,100 sentences) in the LM: 17.0 % (Ney), 18.6 % (0.1).
    """
    counts = ngram_counts(sentences, order)
    vocab = sorted({g[0] for g in counts[0]} | set(vocabulary) | {SENTENCE_END})
    total = sum(counts[0].values())
    probs: list[dict] = [{(w,): (counts[0].get((w,), 0) + 1) / (total + len(vocab)) for w in vocab}]
    backoffs: list[dict] = [dict() for _ in range(order)]

    def lower_prob(gram: tuple) -> float:
        """p(gram[-1] | gram[:-1]) of the model built so far (backing off as needed)."""
        n = len(gram)
        if gram in probs[n - 1]:
            return probs[n - 1][gram]
        return backoffs[n - 2].get(gram[:-1], 1.0) * lower_prob(gram[1:])

    for n in range(2, order + 1):
        d = ney_discount(counts[n - 1]) if discount == "ney" else float(discount)
        by_context: dict[tuple, dict[str, int]] = defaultdict(dict)
        for gram, c in counts[n - 1].items():
            by_context[gram[:-1]][gram[-1]] = c
        level: dict[tuple, float] = {}
        for context, followers in by_context.items():
            c_total = sum(followers.values())
            seen_lower = sum(lower_prob(context[1:] + (w,)) for w in followers)
            if seen_lower >= 1.0 - 1e-9:  # every word seen after the context: no mass to give away
                for w, c in followers.items():
                    level[context + (w,)] = c / c_total
                backoffs[n - 2][context] = 1.0
                continue
            for w, c in followers.items():
                level[context + (w,)] = (c - d) / c_total
            freed = d * len(followers) / c_total
            backoffs[n - 2][context] = freed / (1.0 - seen_lower)
        probs.append(level)
    # <s> appears as a context only: give it a unigram entry (probability 0) so it can carry a backoff weight.
    return probs, backoffs


def write_arpa(sentences: Iterable[Sequence[str]], path: str | os.PathLike, order: int = 3,
               vocabulary: Iterable[str] = (), discount: float | str = DEFAULT_DISCOUNT) -> Path:
    """Write a backoff n-gram model of the tokenized sentences as an ARPA file (see module docstring)."""
    probs, backoffs = build_backoff_model(list(sentences), order, vocabulary, discount)
    path = Path(path)
    lines = ["\\data\\"]
    sizes = [len(probs[0]) + 1] + [len(p) for p in probs[1:]]
    lines += [f"ngram {n + 1}={size}" for n, size in enumerate(sizes)]
    for n, level in enumerate(probs):
        lines += ["", f"\\{n + 1}-grams:"]
        entries = list(level.items())
        if n == 0:
            entries.append(((SENTENCE_START,), 0.0))
        for gram, p in sorted(entries):
            logp = math.log10(p) if p > 0 else -99.0
            text = f"{logp:.6f}\t{' '.join(gram)}"
            if n < len(probs) - 1:
                bo = backoffs[n].get(gram)
                if bo is not None:
                    text += f"\t{math.log10(bo) if bo > 0 else -99.0:.6f}"
            lines.append(text)
    lines += ["", "\\end\\", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# pocketsphinx
# ---------------------------------------------------------------------------------------------
_WORD_RE = re.compile(r"^(.+?)(\(\d+\))?$")


@functools.lru_cache(maxsize=2)
def _read_dictionary(path: Path) -> dict[str, list[str]]:
    """CMU-format dictionary: word -> pronunciations (alternates ``word(2)`` folded in)."""
    prons: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2:
                continue
            m = _WORD_RE.match(parts[0])
            prons[m.group(1)].append(" ".join(parts[1:]))
    return dict(prons)


class PocketsphinxRecognizer:
    """English (by default) pocketsphinx recognizer whose LM and dictionary come from the evaluated texts.

    Args:
        texts: the reference texts (any language the dictionary covers); they define the LM and vocabulary.
        language: passed to :func:`normalize_for_wer` for the LM text.
        hmm, dictionary: acoustic model folder and CMU-format dictionary; default: the wheel's en-us model and
            cmudict-en-us.dict.
        workdir: where the LM and reduced dictionary are written (default: a temporary folder, removed with
            this object).
        noise_floor_db: Gaussian noise this many dB below the utterance's RMS is added before decoding (fixed
            seed; None: off). pocketsphinx's front end degrades badly on digitally silent pauses (exact zeros, as
            espeak-ng and many vocoders produce): on 24 demo-corpus utterances by 12 espeak-ng voices the WER of
            the real recordings fell from 58.7 % to 34.1 % with a -30 dB floor (-40 and -24 dB did about as
            well, 35 %; pocketsphinx's own 1-LSB ``dither``: 51.1 %).
        lm_discount: the LM's absolute discount (see :func:`build_backoff_model`).
    Call it with a 16 kHz float32 waveform; returns the transcript (lower case words).
    """

    def __init__(self, texts: Iterable[str], language: str = "en", *, hmm: str | os.PathLike | None = None,
                 dictionary: str | os.PathLike | None = None, workdir: str | os.PathLike | None = None,
                 noise_floor_db: float | None = -30.0, lm_discount: float | str = DEFAULT_DISCOUNT):
        import pocketsphinx

        self.noise_floor_db = noise_floor_db
        model = Path(pocketsphinx.get_model_path())
        hmm = Path(hmm) if hmm is not None else model / "en-us" / "en-us"
        dictionary = Path(dictionary) if dictionary is not None else model / "en-us" / "cmudict-en-us.dict"
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="asr_lm_")
            workdir = self._tmp.name
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        full_dict = _read_dictionary(dictionary)
        sentences = [normalize_for_wer(t, language).split() for t in texts]
        words = sorted({w for s in sentences for w in s})
        self.vocabulary = [w for w in words if w in full_dict]
        self.oov_words = sorted(set(words) - set(self.vocabulary))
        if not self.vocabulary:
            raise ValueError("none of the evaluated texts' words is in the recognizer's dictionary")
        known = set(self.vocabulary)
        # OOV words split a sentence: the LM only sees runs of known words.
        runs: list[list[str]] = []
        for s in sentences:
            run: list[str] = []
            for w in s:
                if w in known:
                    run.append(w)
                elif run:
                    runs.append(run)
                    run = []
            if run:
                runs.append(run)
        self.lm_path = write_arpa(runs, workdir / "texts.arpa", order=3, vocabulary=self.vocabulary,
                                  discount=lm_discount)
        self.dict_path = workdir / "texts.dict"
        with open(self.dict_path, "w", encoding="utf-8") as f:
            for w in self.vocabulary:
                for k, pron in enumerate(full_dict[w]):
                    f.write(f"{w if k == 0 else f'{w}({k + 1})'} {pron}\n")
        self._decoder = pocketsphinx.Decoder(hmm=str(hmm), dict=str(self.dict_path), lm=str(self.lm_path),
                                             samprate=ASR_SAMPLE_RATE, loglevel="FATAL")

    def oov_rate(self, text: str, language: str = "en") -> float:
        """Fraction of the normalized words of ``text`` that the dictionary lacks."""
        words = normalize_for_wer(text, language).split()
        oov = set(self.oov_words)
        return sum(w in oov for w in words) / len(words) if words else 0.0

    def __call__(self, wave_16k: np.ndarray) -> str:
        wave = np.asarray(wave_16k, np.float64)
        if self.noise_floor_db is not None and len(wave):
            rms = np.sqrt(np.mean(wave**2))
            noise = np.random.default_rng(0).standard_normal(len(wave))  # same seed: a pure function of the wave
            wave = wave + rms * 10 ** (self.noise_floor_db / 20) * noise
        pcm = np.clip(np.round(wave * 32767.0), -32768, 32767).astype("<i2")
        self._decoder.start_utt()
        self._decoder.process_raw(pcm.tobytes(), no_search=False, full_utt=True)
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        if hyp is None:
            return ""
        return " ".join(_WORD_RE.match(w).group(1) for w in hyp.hypstr.split())
