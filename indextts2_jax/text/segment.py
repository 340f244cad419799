"""Split a tokenized text into segments of at most ``max_tokens`` tokens for sentence-wise synthesis.

Follows the intent of the official ``TextTokenizer.split_segments`` (``utils/front.py``):

1. cut after a sentence ender (``.``, ``!``, ``?`` and their ``▁``-prefixed pieces, ``▁...``) once
   the segment has more than two tokens; a following quote piece stays with the sentence;
2. a sentence longer than ``max_tokens`` is re-split after commas, then after dashes, then chopped;
3. adjacent segments are merged greedily while the merged length stays ``<= max_tokens`` (with the
   official ``quick_streaming_tokens`` rule for a short first segment).

Differences (on purpose): commas and dashes only split sentences that are too long (the official
code splits at every comma and relies on the merge, so a sentence that fits can still be cut at a
comma); a cut is only made where the next piece starts a word (begins with ``▁``), so ``U.S.A`` or
``3,2`` are never cut and a chop never lands inside a word, unless one word alone is longer than
``max_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["split_segments", "segment_text", "SENTENCE_ENDERS", "COMMAS", "DASHES", "QUOTES"]

WORD_START = "\u2581"
SENTENCE_ENDERS = (".", "!", "?", "\u2581.", "\u2581!", "\u2581?", "\u2581...")
COMMAS = (",", "\u2581,")
DASHES = ("-", "\u2581-")
QUOTES = ("'", "\u2581'")

Span = tuple[int, int]


def _cut_after(pieces: Sequence[str], start: int, end: int, marks: frozenset) -> list[Span]:
    """Split ``[start, end)`` after every mark once the part has > 2 tokens and a word starts next."""
    spans, seg_start, i = [], start, start
    while i < end:
        if pieces[i] in marks and i - seg_start + 1 > 2:
            cut = i + 1
            if cut < end and pieces[cut] in QUOTES:
                cut += 1
            if cut == end or pieces[cut].startswith(WORD_START):
                spans.append((seg_start, cut))
                seg_start = cut
                i = cut
                continue
        i += 1
    if seg_start < end:
        spans.append((seg_start, end))
    return spans


def _chop(pieces: Sequence[str], start: int, end: int, max_tokens: int) -> list[Span]:
    """Cut ``[start, end)`` into parts of <= max_tokens, each cut right before a word-start piece."""
    spans, pos = [], start
    while end - pos > max_tokens:
        cut = next((c for c in range(pos + max_tokens, pos, -1) if pieces[c].startswith(WORD_START)), None)
        if cut is None:  # one word longer than max_tokens: nothing better than a hard cut
            cut = pos + max_tokens
        spans.append((pos, cut))
        pos = cut
    spans.append((pos, end))
    return spans


def _split(pieces: Sequence[str], start: int, end: int, max_tokens: int, level: int, enders: frozenset) -> list[Span]:
    if level == 0:
        parts = _cut_after(pieces, start, end, enders)
    elif end - start <= max_tokens:
        return [(start, end)]
    elif level == 1:
        parts = _cut_after(pieces, start, end, frozenset(COMMAS))
    elif level == 2:
        parts = _cut_after(pieces, start, end, frozenset(DASHES))
    else:
        return _chop(pieces, start, end, max_tokens)
    out = []
    for s, e in parts:
        if e - s <= max_tokens:
            out.append((s, e))
        else:
            out.extend(_split(pieces, s, e, max_tokens, level + 1, enders))
    return out


def _merge(spans: list[Span], max_tokens: int, quick_streaming_tokens: int) -> list[Span]:
    merged: list[Span] = []
    total = 0
    for s, e in spans:
        total += e - s
        if e == s:
            continue
        if merged:
            ms, me = merged[-1]
            combined = (me - ms) + (e - s)
            if (combined <= max_tokens and total > quick_streaming_tokens) or combined <= max_tokens / 2:
                merged[-1] = (ms, e)
                continue
        merged.append((s, e))
    return merged


def _as_pieces(tokens: Sequence, id_to_piece) -> list[str]:
    if all(isinstance(t, str) for t in tokens):
        return list(tokens)
    if id_to_piece is None:
        raise TypeError("split_segments got ids: pass id_to_piece (a callable, TextTokenizer or SentencePiece model)")
    fn: Callable = id_to_piece.id_to_piece if hasattr(id_to_piece, "id_to_piece") else id_to_piece
    return [fn(int(t)) for t in tokens]


def split_segments(
    tokens: Sequence,
    max_tokens: int = 120,
    *,
    id_to_piece=None,
    quick_streaming_tokens: int = 0,
    sentence_enders: Sequence[str] = SENTENCE_ENDERS,
) -> list[list]:
    """Split pieces (``list[str]``) or ids (``list[int]``, with ``id_to_piece``) into segments.

    Args:
      tokens: SentencePiece pieces or ids of one text.
      max_tokens: the most tokens per segment (official default 120).
      id_to_piece: for ids: a callable id -> piece, or an object with ``id_to_piece`` (a
        ``TextTokenizer`` or ``SentencePieceProcessor``).
      quick_streaming_tokens: the official streaming option: do not merge into a segment until this
        many tokens have been seen (only segments that together fit in ``max_tokens / 2`` merge), so
        the first segment is short.
      sentence_enders: pieces after which a sentence may end.
    Returns:
      Segments as lists of the input tokens (same type), in order; their concatenation is ``tokens``.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    tokens = list(tokens)
    if not tokens:
        return []
    pieces = _as_pieces(tokens, id_to_piece)
    spans = _split(pieces, 0, len(pieces), max_tokens, 0, frozenset(sentence_enders))
    spans = _merge(spans, max_tokens, quick_streaming_tokens)
    return [tokens[s:e] for s, e in spans]


def segment_text(tokenizer, text: str, max_tokens: int = 120, **kwargs) -> list[list[int]]:
    """Encode ``text`` with ``tokenizer`` (a :class:`TextTokenizer`) and split it: segments of ids.

    The tokenizer's ``max_tokens`` limit does not apply here (long texts are what segmentation is for);
    empty or unpronounceable text still raises.
    """
    pieces = tokenizer.tokenize(text, check_length=False)
    return [tokenizer.pieces_to_ids(s) for s in split_segments(pieces, max_tokens=max_tokens, **kwargs)]
