"""Feature shards: examples (dicts of arrays, numbers, strings) in ArrayRecord files.

Record format: one msgpack map per example (no pickle). Values may be ``None``, bool, int, float,
str, bytes, lists of those, or NumPy arrays of a numeric/bool dtype; arrays are stored as a
msgpack extension (code 1) holding ``[dtype str, shape, raw little-endian bytes]``, so decoding
never runs code. :func:`encode_example` / :func:`decode_example` are the codec.

Layout of a shard folder::

    <split>-00000-of-00008.array_record        the records
    <split>-00000-of-00008.array_record.done   JSON written after the shard is closed: marks it
                                               finished (restarts skip it) and holds the shard's
                                               per-example index (id, speaker, lengths) and its
                                               skipped files
    report.json                                merged counts over every finished shard

The per-example index lets pipelines bucket by length and find same-speaker prompts without
decoding records.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

__all__ = [
    "SHARD_SUFFIX",
    "DONE_SUFFIX",
    "shard_name",
    "parse_shard_name",
    "encode_example",
    "decode_example",
    "ShardWriter",
    "read_shard",
    "list_shards",
    "shard_done",
    "read_done",
    "write_done",
    "load_index",
]

SHARD_SUFFIX = ".array_record"
DONE_SUFFIX = ".done"
_ND_EXT = 1
_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.array_record$")


def shard_name(split: str, index: int, count: int) -> str:
    """``<split>-00003-of-00008.array_record``."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} out of range for {count} shards")
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def parse_shard_name(name: str) -> tuple[str, int, int]:
    """Inverse of :func:`shard_name`: ``(split, index, count)``; ValueError for other names."""
    m = _SHARD_RE.match(os.path.basename(name))
    if not m:
        raise ValueError(f"{name!r} is not a shard name like 'train-00000-of-00008.array_record'")
    return m["split"], int(m["index"]), int(m["count"])


# ----------------------------------------------------------------------------------------------
# Codec
# ----------------------------------------------------------------------------------------------
def _default(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"cannot store an array of dtype {obj.dtype} (numeric and bool only)")
        arr = np.ascontiguousarray(obj, dtype=obj.dtype.newbyteorder("<"))
        return msgpack.ExtType(_ND_EXT, msgpack.packb([arr.dtype.str, list(arr.shape), arr.tobytes()]))
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot store a value of type {type(obj).__name__}")


def _ext_hook(code: int, data: bytes):
    if code != _ND_EXT:
        raise ValueError(f"unknown msgpack extension code {code}")
    dtype, shape, raw = msgpack.unpackb(data)
    dt = np.dtype(dtype)
    if dt.kind not in "biuf":
        raise ValueError(f"refusing to decode an array of dtype {dt}")
    return np.frombuffer(raw, dtype=dt).reshape(shape).astype(dt.newbyteorder("="), copy=False)


def encode_example(example: Mapping[str, Any]) -> bytes:
    """Serialize a dict with string keys (see the module docstring for allowed values)."""
    for k in example:
        if not isinstance(k, str):
            raise TypeError(f"example keys must be strings, got {k!r}")
    return msgpack.packb(dict(example), default=_default, use_bin_type=True)


def decode_example(record: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_example`; arrays come back as read-only NumPy views of ``record``."""
    return msgpack.unpackb(record, ext_hook=_ext_hook, raw=False, strict_map_key=True)


# ----------------------------------------------------------------------------------------------
# Writing and reading
# ----------------------------------------------------------------------------------------------
class ShardWriter:
    """Writes one ArrayRecord shard atomically: records go to ``<path>.tmp``, renamed on close.

    ``group_size:1`` keeps every record individually addressable (fast random access for Grain).
    Use as a context manager; an exception inside the block removes the partial file.
    """

    def __init__(self, path: str | os.PathLike, options: str = "group_size:1"):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.path = str(path)
        self._tmp = self.path + ".tmp"
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = ArrayRecordWriter(self._tmp, options)
        self.num_records = 0

    def write(self, example: Mapping[str, Any]) -> None:
        self._writer.write(encode_example(example))
        self.num_records += 1

    def close(self) -> None:
        self._writer.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._writer.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_shard(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every example of one shard, in write order."""
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(str(path))
    try:
        n = reader.num_records()
        step = 256
        for start in range(0, n, step):
            for rec in reader.read(list(range(start, min(n, start + step)))):
                yield decode_example(rec)
    finally:
        reader.close()


def list_shards(folder: str | os.PathLike, split: str, *, require_done: bool = True) -> list[str]:
    """Sorted shard paths of ``split`` in ``folder`` (only finished ones with ``require_done``).

    Raises FileNotFoundError when there is none, ValueError when shards of one split disagree on
    their count or (with ``require_done``) some are unfinished.
    """
    paths = sorted(glob.glob(os.path.join(glob.escape(str(folder)), f"{glob.escape(split)}-*-of-*{SHARD_SUFFIX}")))
    paths = [p for p in paths if _SHARD_RE.match(os.path.basename(p)) and parse_shard_name(p)[0] == split]
    if not paths:
        raise FileNotFoundError(f"{folder}: no '{split}-*-of-*{SHARD_SUFFIX}' shards")
    counts = {parse_shard_name(p)[2] for p in paths}
    if len(counts) != 1:
        raise ValueError(f"{folder}: shards of split {split!r} disagree on the shard count: {sorted(counts)}")
    if require_done:
        count = counts.pop()
        missing = [shard_name(split, i, count) for i in range(count)
                   if not shard_done(os.path.join(folder, shard_name(split, i, count)))]
        if missing:
            raise ValueError(f"{folder}: {len(missing)} of {count} '{split}' shards are not finished "
                             f"(no .done file), e.g. {missing[:3]}; run preprocessing to completion")
    return paths


def shard_done(path: str | os.PathLike) -> bool:
    """True when the shard and its ``.done`` file both exist."""
    return os.path.exists(str(path)) and os.path.exists(str(path) + DONE_SUFFIX)


def write_done(path: str | os.PathLike, info: Mapping[str, Any]) -> None:
    """Mark a closed shard finished, storing ``info`` (JSON) next to it; atomic."""
    done = str(path) + DONE_SUFFIX
    tmp = done + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f, ensure_ascii=False)
    os.replace(tmp, done)


def read_done(path: str | os.PathLike) -> dict[str, Any]:
    """The ``.done`` JSON of a finished shard."""
    with open(str(path) + DONE_SUFFIX, encoding="utf-8") as f:
        return json.load(f)


def load_index(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """The concatenated per-example index of shards (record order: shard by shard, as Grain reads them).

    Raises ValueError when a shard's index length differs from its record count.
    """
    out: list[dict[str, Any]] = []
    for p in paths:
        info = read_done(p)
        examples = info.get("examples", [])
        if len(examples) != info.get("num_records", len(examples)):
            raise ValueError(f"{p}{DONE_SUFFIX}: index lists {len(examples)} examples, shard has "
                             f"{info.get('num_records')} records")
        out.extend(examples)
    return out
