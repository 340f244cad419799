"""Utterance manifests: the schema, JSONL read/write, validation and deterministic splits.

A manifest is a JSONL file, one utterance per line::

    {"id": "spk1_0001", "audio_path": "wavs/spk1_0001.wav", "text": "Hello there.", "speaker": "spk1",
     "language": "en", "duration": 2.31, "sample_rate": 22050, "emotion": "happy"}

``audio_path`` may be absolute or relative to the manifest's folder; :func:`read_manifest`
resolves relative paths, :func:`write_manifest` writes paths relative to the manifest's folder
when the audio lies below it. ``emotion`` is optional (absent or null).

Splits (:func:`split_of`) are a pure function of the utterance id (or speaker) and a salt: a
stable hash maps the key to [0, 1), so adding utterances never moves existing ones to another
split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from indextts2_jax.jsonl import iter_jsonl

__all__ = [
    "ManifestError",
    "Utterance",
    "SPLITS",
    "read_manifest",
    "write_manifest",
    "validate_utterance",
    "split_of",
    "split_utterances",
    "speakers_of",
]

SPLITS = ("train", "valid", "test")


class ManifestError(ValueError):
    """A manifest line is malformed; the message names the file and line number."""


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One utterance of a corpus.

    Attributes:
        id: unique id within the manifest.
        audio_path: path to the audio file (absolute after :func:`read_manifest`).
        text: the transcript (normalized if the corpus provides it).
        speaker: speaker id (corpus-prefixed by the importers, e.g. ``"vctk_p225"``).
        language: language code, e.g. ``"en"``, ``"zh"``.
        duration: seconds (from the file header; 0 if unknown).
        sample_rate: the file's sample rate in Hz (0 if unknown).
        emotion: optional emotion label.
    """

    id: str
    audio_path: str
    text: str
    speaker: str
    language: str = "en"
    duration: float = 0.0
    sample_rate: int = 0
    emotion: str | None = None

    def to_json(self, relative_to: str | os.PathLike | None = None) -> dict:
        """A JSON-ready dict; ``audio_path`` relative to ``relative_to`` when the file lies below it."""
        d = dataclasses.asdict(self)
        if relative_to is not None:
            d["audio_path"] = _relative_path(self.audio_path, relative_to)
        if d["emotion"] is None:
            del d["emotion"]
        return d


_REQUIRED = ("id", "audio_path", "text", "speaker")
_FIELDS = {f.name for f in dataclasses.fields(Utterance)}


def _relative_path(path: str, base: str | os.PathLike) -> str:
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    try:
        return str(p.resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(p)


def validate_utterance(d: dict, where: str = "manifest") -> Utterance:
    """Check one decoded manifest entry and build its :class:`Utterance`.

    Raises:
        ManifestError: a required field is missing or empty, a field has the wrong type, the
            duration/sample rate is negative or not finite, or an unknown field is present. The
            message starts with ``where`` (e.g. ``"train.jsonl:12"``).
    """
    if not isinstance(d, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - _FIELDS)
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(_FIELDS)}")
    for key in _REQUIRED:
        if key not in d:
            raise ManifestError(f"{where}: missing required field {key!r}")
        if not isinstance(d[key], str):
            raise ManifestError(f"{where}: field {key!r} must be a string, got {type(d[key]).__name__}")
        if key != "text" and not d[key].strip():
            raise ManifestError(f"{where}: field {key!r} is empty")
    language = d.get("language", "en")
    if not isinstance(language, str) or not language:
        raise ManifestError(f"{where}: field 'language' must be a non-empty string, got {language!r}")
    duration = d.get("duration", 0.0)
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration) \
            or duration < 0:
        raise ManifestError(f"{where}: field 'duration' must be a finite number >= 0, got {duration!r}")
    sample_rate = d.get("sample_rate", 0)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 0:
        raise ManifestError(f"{where}: field 'sample_rate' must be an integer >= 0, got {sample_rate!r}")
    emotion = d.get("emotion")
    if emotion is not None and not isinstance(emotion, str):
        raise ManifestError(f"{where}: field 'emotion' must be a string or null, got {emotion!r}")
    return Utterance(id=d["id"], audio_path=d["audio_path"], text=d["text"], speaker=d["speaker"],
                     language=language, duration=float(duration), sample_rate=sample_rate, emotion=emotion)


def read_manifest(path: str | os.PathLike, *, resolve_paths: bool = True) -> list[Utterance]:
    """Read a JSONL manifest; relative ``audio_path`` values become absolute (manifest folder based).

    Blank lines are skipped. Raises ManifestError naming ``file:line`` for malformed JSON, invalid
    entries (see :func:`validate_utterance`) and duplicate ids; FileNotFoundError if it is missing.
    """
    path = Path(path)
    base = path.resolve().parent
    out: list[Utterance] = []
    seen: dict[str, int] = {}
    for lineno, d in iter_jsonl(path, ManifestError):
        where = f"{path}:{lineno}"
        utt = validate_utterance(d, where)
        if utt.id in seen:
            raise ManifestError(f"{where}: duplicate id {utt.id!r} (first on line {seen[utt.id]})")
        seen[utt.id] = lineno
        if resolve_paths and not os.path.isabs(utt.audio_path):
            utt = dataclasses.replace(utt, audio_path=str(base / utt.audio_path))
        out.append(utt)
    return out


def write_manifest(path: str | os.PathLike, utterances: Iterable[Utterance], *, relative: bool = True) -> int:
    """Write utterances as JSONL (UTF-8, one object per line); returns the number written.

    With ``relative`` (default) audio paths below the manifest's folder are written relative to it.
    Raises ManifestError on duplicate ids. The file is written atomically (temp file + rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent if relative else None
    seen: set[str] = set()
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for utt in utterances:
            if utt.id in seen:
                raise ManifestError(f"{path}: duplicate id {utt.id!r}")
            seen.add(utt.id)
            f.write(json.dumps(utt.to_json(base), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def _unit_hash(key: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(utt: Utterance, *, valid_fraction: float = 0.02, test_fraction: float = 0.0, by: str = "utterance",
             salt: str = "indextts2") -> str:
    """The split ("train", "valid" or "test") of one utterance, from a stable hash of its key.

    Args:
        by: "utterance" hashes the id; "speaker" hashes the speaker, so every utterance of a
            speaker lands in the same split (unseen-speaker evaluation).
        valid_fraction, test_fraction: expected fractions (of utterances or of speakers).
    """
    if by not in ("utterance", "speaker"):
        raise ValueError(f"split by must be 'utterance' or 'speaker', got {by!r}")
    if valid_fraction < 0 or test_fraction < 0 or valid_fraction + test_fraction > 1:
        raise ValueError(f"bad split fractions valid={valid_fraction} test={test_fraction}")
    u = _unit_hash(utt.id if by == "utterance" else utt.speaker, salt)
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


def split_utterances(utterances: Sequence[Utterance], **kwargs) -> dict[str, list[Utterance]]:
    """Group utterances by :func:`split_of` (keys "train", "valid", "test"; input order kept)."""
    out: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    for utt in utterances:
        out[split_of(utt, **kwargs)].append(utt)
    return out


def speakers_of(utterances: Iterable[Utterance]) -> list[str]:
    """Sorted distinct speakers (the order that defines speaker indices)."""
    return sorted({u.speaker for u in utterances})
