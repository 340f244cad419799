"""JSON Lines input: one object per line, blank lines skipped, a bad line named by file and line number."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from indextts2_jax.errors import ConfigError


def iter_jsonl(path: str | os.PathLike, error_cls: type[Exception] = ConfigError) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of ``path`` (UTF-8).

    A line that is not JSON, or is JSON but not an object, raises ``error_cls("<path>:<line>: ...")``.
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise error_cls(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise error_cls(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def read_jsonl(path: str | os.PathLike, error_cls: type[Exception] = ConfigError) -> list[dict]:
    """All objects of a JSON Lines file, in order (see :func:`iter_jsonl`)."""
    return [record for _, record in iter_jsonl(path, error_cls)]
