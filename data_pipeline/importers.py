"""Corpus importers: turn common corpus layouts into :class:`~data_pipeline.manifest.Utterance` lists.

Supported layouts (each function takes the corpus root):

* :func:`import_ljspeech`: ``metadata.csv`` (``id|raw text|normalized text``, pipe-separated, no
  quoting) plus ``wavs/<id>.wav``; the normalized column is used (the raw one when it is empty).
* :func:`import_libritts`: LibriTTS / LibriTTS-R, ``[<split>/]<speaker>/<chapter>/<id>.wav`` with
  ``<id>.normalized.txt`` (``<id>.original.txt`` as fallback). The root may be the corpus folder
  holding several splits or one split folder.
* :func:`import_vctk`: VCTK 0.92 ``wav48_silence_trimmed/<spk>/<spk>_<n>_mic1.flac`` (``mic`` selects
  mic1/mic2) or the older ``wav48/<spk>/<spk>_<n>.wav``, transcripts in ``txt/<spk>/<spk>_<n>.txt``.
* :func:`import_folder`: any folder of audio files with a same-name ``.txt`` or ``.lab`` next to each.
* :func:`import_table`: a csv/tsv with columns ``path,text[,speaker]`` (header optional; paths
  relative to the table's folder).

Durations and sample rates come from the file header (``soundfile.info``). A file that cannot be
read is still listed (duration 0, sample rate 0) so that preprocessing reports it with its reason;
an utterance without a transcript is left out (it cannot be trained on) and logged.

CLI: ``python -m data_pipeline.importers {ljspeech,libritts,vctk,folder,table} ROOT --out manifest.jsonl``
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from data_pipeline.manifest import Utterance, write_manifest

__all__ = [
    "AUDIO_EXTENSIONS",
    "audio_header",
    "import_ljspeech",
    "import_libritts",
    "import_vctk",
    "import_folder",
    "import_table",
    "IMPORTERS",
]

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")


def audio_header(path: str | os.PathLike) -> tuple[float, int]:
    """``(duration_seconds, sample_rate)`` from the file header; ``(0.0, 0)`` if it cannot be read."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:  # missing, corrupt, unsupported: preprocessing reports the reason
        log.warning("cannot read audio header of %s: %s", path, e)
        return 0.0, 0
    if not info.samplerate:
        return 0.0, 0
    return float(info.frames) / float(info.samplerate), int(info.samplerate)


def _make(uid: str, audio: Path, text: str, speaker: str, language: str) -> Utterance:
    duration, sample_rate = audio_header(audio)
    return Utterance(id=uid, audio_path=str(audio.resolve()), text=text.strip(), speaker=speaker,
                     language=language, duration=round(duration, 4), sample_rate=sample_rate)


def _read_text(path: Path) -> str:
    return " ".join(path.read_text(encoding="utf-8").split())


# ----------------------------------------------------------------------------------------------
def import_ljspeech(root: str | os.PathLike, *, speaker: str = "ljspeech", language: str = "en") -> list[Utterance]:
    """LJSpeech-1.1: ``metadata.csv`` rows ``id|raw|normalized`` and ``wavs/<id>.wav``."""
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.exists():
        raise FileNotFoundError(f"{meta}: LJSpeech metadata.csv not found")
    out = []
    with open(meta, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            cols = line.split("|")
            if len(cols) < 2:
                raise ValueError(f"{meta}:{lineno}: expected 'id|text|normalized text', got {line!r}")
            uid = cols[0].strip()
            text = cols[2] if len(cols) > 2 and cols[2].strip() else cols[1]
            if not text.strip():
                log.warning("%s:%d: %s has no transcript; left out", meta, lineno, uid)
                continue
            out.append(_make(uid, root / "wavs" / f"{uid}.wav", text, speaker, language))
    return out


def import_libritts(root: str | os.PathLike, *, language: str = "en", speaker_prefix: str = "libritts_") -> list[
        Utterance]:
    """LibriTTS / LibriTTS-R: ``[<split>/]<speaker>/<chapter>/<id>.wav`` + ``<id>.normalized.txt``."""
    root = Path(root)
    out = []
    for wav in sorted(root.rglob("*.wav")):
        uid = wav.stem
        text_file = wav.with_name(f"{uid}.normalized.txt")
        if not text_file.exists():
            text_file = wav.with_name(f"{uid}.original.txt")
        if not text_file.exists():
            log.warning("%s: no .normalized.txt/.original.txt transcript; left out", wav)
            continue
        text = _read_text(text_file)
        if not text:
            log.warning("%s: empty transcript; left out", text_file)
            continue
        speaker = wav.parent.parent.name
        out.append(_make(uid, wav, text, f"{speaker_prefix}{speaker}", language))
    return out


def import_vctk(root: str | os.PathLike, *, mic: str = "mic1", language: str = "en",
                speaker_prefix: str = "vctk_") -> list[Utterance]:
    """VCTK: ``wav48_silence_trimmed/<spk>/<spk>_<n>_<mic>.flac`` (0.92) or ``wav48/<spk>/<spk>_<n>.wav``."""
    root = Path(root)
    txt_root = root / "txt"
    if (root / "wav48_silence_trimmed").is_dir():
        audio_files = sorted((root / "wav48_silence_trimmed").glob(f"*/*_{mic}.flac"))
        suffix = f"_{mic}"
    elif (root / "wav48").is_dir():
        audio_files = sorted((root / "wav48").glob("*/*.wav"))
        suffix = ""
    else:
        raise FileNotFoundError(f"{root}: neither wav48_silence_trimmed/ nor wav48/ found (not a VCTK root)")
    out = []
    for audio in audio_files:
        speaker = audio.parent.name
        uid = audio.stem[: -len(suffix)] if suffix else audio.stem
        text_file = txt_root / speaker / f"{uid}.txt"
        if not text_file.exists():
            log.warning("%s: no transcript %s; left out", audio, text_file)
            continue
        text = _read_text(text_file)
        if not text:
            log.warning("%s: empty transcript; left out", text_file)
            continue
        out.append(_make(uid, audio, text, f"{speaker_prefix}{speaker}", language))
    return out


def import_folder(root: str | os.PathLike, *, speaker: str | None = None, language: str = "en",
                  extensions: Iterable[str] = AUDIO_EXTENSIONS) -> list[Utterance]:
    """Audio files (recursively) with a same-name ``.txt`` or ``.lab`` transcript next to each.

    Speaker: ``speaker`` if given, else the audio file's parent folder name (the root's own name
    for files directly in it). Ids are the path below the root without extension, ``/`` -> ``_``.
    """
    root = Path(root)
    exts = {e.lower() for e in extensions}
    out = []
    for audio in sorted(p for p in root.rglob("*") if p.suffix.lower() in exts and p.is_file()):
        text_file = next((audio.with_suffix(s) for s in (".txt", ".lab") if audio.with_suffix(s).exists()), None)
        if text_file is None:
            log.warning("%s: no .txt/.lab transcript; left out", audio)
            continue
        text = _read_text(text_file)
        if not text:
            log.warning("%s: empty transcript; left out", text_file)
            continue
        rel = audio.relative_to(root).with_suffix("")
        uid = "_".join(rel.parts)
        spk = speaker or (audio.parent.name if audio.parent != root else root.resolve().name)
        out.append(_make(uid, audio, text, spk, language))
    return out


def import_table(path: str | os.PathLike, *, speaker: str = "speaker0", language: str = "en",
                 delimiter: str | None = None) -> list[Utterance]:
    """A csv/tsv of ``path,text[,speaker]`` rows (tab for ``.tsv`` unless ``delimiter`` is given).

    A first row whose first two cells are ``path``/``audio``/``audio_path`` and ``text``/``transcript``
    is taken as a header. Relative paths are relative to the table's folder. Ids are the audio
    file stems (made unique with ``_<row>`` on collisions).
    """
    path = Path(path)
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    base = path.resolve().parent
    out: list[Utterance] = []
    ids: set[str] = set()
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    for rowno, row in enumerate(rows, 1):
        if not row or not any(c.strip() for c in row):
            continue
        if rowno == 1 and row[0].strip().lower() in ("path", "audio", "audio_path", "file") and len(row) > 1 \
                and row[1].strip().lower() in ("text", "transcript", "sentence"):
            continue
        if len(row) < 2:
            raise ValueError(f"{path}:{rowno}: expected 'path{delimiter}text[{delimiter}speaker]', got {row!r}")
        audio = Path(row[0].strip())
        if not audio.is_absolute():
            audio = base / audio
        text = row[1]
        if not text.strip():
            log.warning("%s:%d: empty transcript; left out", path, rowno)
            continue
        spk = row[2].strip() if len(row) > 2 and row[2].strip() else speaker
        uid = audio.stem
        if uid in ids:
            uid = f"{uid}_{rowno}"
        ids.add(uid)
        out.append(_make(uid, audio, text, spk, language))
    return out


IMPORTERS = {
    "ljspeech": import_ljspeech,
    "libritts": import_libritts,
    "vctk": import_vctk,
    "folder": import_folder,
    "table": import_table,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Import a corpus into a JSONL manifest.")
    parser.add_argument("layout", choices=sorted(IMPORTERS))
    parser.add_argument("root", help="corpus root (or the csv/tsv file for 'table')")
    parser.add_argument("--out", required=True, help="manifest to write (JSONL)")
    parser.add_argument("--language", default="en")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    utts = IMPORTERS[args.layout](args.root, language=args.language)
    n = write_manifest(args.out, utts)
    hours = sum(u.duration for u in utts) / 3600
    print(f"wrote {n} utterances ({hours:.2f} h, {len({u.speaker for u in utts})} speakers) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
