"""SentencePiece BPE text tokenizer: official ``bpe.model`` loading, encoding, training and extension.

Encoding follows the official front-end: normalize (:func:`normalize_text`), space-separate CJK
characters and upper-case (:func:`tokenize_by_cjk_char`), SentencePiece pieces, ids via
``PieceToId`` (pieces the model does not know become ``unk_id``). Ids 0 and 1 double as the GPT's
start/stop text tokens in the official model; :func:`train_bpe` therefore puts ``<s>`` at 0,
``</s>`` at 1 and ``<unk>`` at 2 by default.

Differences from the official ``TextTokenizer``: bad input raises (``EmptyTextError``,
``UnpronounceableTextError``, ``TextTooLongError``) instead of returning ``[]`` or unk-only ids; an
input of a single character is normalized like any other (the official code skips normalization
and upper-casing for it).
"""

from __future__ import annotations

import os
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from indextts2_jax.errors import EmptyTextError, TextTooLongError, UnpronounceableTextError
from indextts2_jax.text.normalize import detokenize_cjk_char, normalize_text, tokenize_by_cjk_char
from indextts2_jax.text.segment import segment_text

__all__ = ["TextTokenizer", "train_bpe", "extend_bpe", "preprocess_text", "quote_text", "WORD_START"]

WORD_START = "\u2581"  # "▁": SentencePiece's marker for a piece that starts a word
_STANDARD_NORMALIZERS = ("nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity")


def quote_text(text: str, limit: int = 80) -> str:
    """``repr``-style quote of ``text`` for error messages, truncated to ``limit`` characters."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return repr(text)


def preprocess_text(text: str, normalize: bool = True, lang: str | None = None) -> str:
    """Normalize (optional), then space-separate CJK characters and upper-case: the string fed to BPE."""
    if normalize:
        text = normalize_text(text, lang=lang)
    return tokenize_by_cjk_char(text)


def _is_punctuation_piece(piece: str) -> bool:
    """True for pieces made only of punctuation, symbols or spaces (after dropping ``▁``)."""
    body = piece.replace(WORD_START, "")
    return all(unicodedata.category(ch)[0] in "PSZ" for ch in body)


def _load_processor(model) -> spm.SentencePieceProcessor:
    if isinstance(model, spm.SentencePieceProcessor):
        return model
    if isinstance(model, TextTokenizer):
        return model.sp
    if isinstance(model, (bytes, bytearray)):
        return spm.SentencePieceProcessor(model_proto=bytes(model))
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {str(path)!r}")
        return spm.SentencePieceProcessor(model_file=str(path))
    raise TypeError(f"expected a model path, model bytes or SentencePieceProcessor, got {type(model).__name__}")


class TextTokenizer:
    """Text -> BPE ids for the IndexTTS2 GPT.

    Args:
      model: path of a SentencePiece model (e.g. the official ``bpe.model``), its serialized bytes,
        or a ``SentencePieceProcessor``.
      normalize: run :func:`normalize_text` before BPE (the official front-end does).
      lang: forwarded to :func:`normalize_text` (``None``: detect per text).
      max_tokens: ``encode`` raises ``TextTooLongError`` above this many ids (``None``: no limit).
    """

    def __init__(self, model, *, normalize: bool = True, lang: str | None = None, max_tokens: int | None = None):
        self.sp = _load_processor(model)
        self.normalize = normalize
        self.lang = lang
        self.max_tokens = max_tokens

    # --- vocabulary ---------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def unk_id(self) -> int:
        return self.sp.unk_id()

    @property
    def start_text_id(self) -> int:
        """Official GPT start-of-text token (0; it is also a vocabulary id)."""
        return 0

    @property
    def stop_text_id(self) -> int:
        """Official GPT end-of-text token (1)."""
        return 1

    def pieces_to_ids(self, pieces: Sequence[str]) -> list[int]:
        return [self.sp.piece_to_id(p) for p in pieces]

    def id_to_piece(self, id_: int) -> str:
        return self.sp.id_to_piece(int(id_))

    def ids_to_pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]

    def model_proto(self) -> bytes:
        """The serialized SentencePiece model."""
        return self.sp.serialized_model_proto()

    # --- encoding -----------------------------------------------------------------------
    def preprocess(self, text: str, lang: str | None = None) -> str:
        """The string SentencePiece sees: normalized, CJK split, upper-cased (``lang`` overrides ``self.lang``)."""
        return preprocess_text(text, normalize=self.normalize, lang=lang or self.lang)

    def tokenize(
        self, text: str, *, check: bool = True, lang: str | None = None, check_length: bool = True
    ) -> list[str]:
        """Text -> SentencePiece pieces (unknown characters keep their surface form).

        With ``check`` (default) raises ``EmptyTextError`` / ``UnpronounceableTextError`` /
        ``TextTooLongError`` as described in :meth:`encode` (the last only with ``check_length``;
        segmentation turns it off, since splitting is how long texts are handled).
        """
        if check and (not text or not text.strip()):
            raise EmptyTextError(f"text is empty or only whitespace: {quote_text(text or '')}", text=text)
        prepared = self.preprocess(text, lang) if text else ""
        pieces = self.sp.encode(prepared, out_type=str) if prepared else []
        if check:
            self._check(text, pieces, self.pieces_to_ids(pieces), check_length)
        return pieces

    def encode(self, text: str, *, check: bool = True, lang: str | None = None) -> list[int]:
        """Text -> ids (``list[int]``), unknown pieces -> ``unk_id``.

        ``lang`` (e.g. a manifest's language code) overrides the tokenizer's ``lang`` for this text.

        Raises (when ``check``):
          EmptyTextError: ``text`` is empty or whitespace.
          UnpronounceableTextError: nothing but punctuation/symbols and pieces the model does not know.
          TextTooLongError: more than ``max_tokens`` ids.
        """
        return self.pieces_to_ids(self.tokenize(text, check=check, lang=lang))

    def unknown_pieces(self, text: str) -> list[str]:
        """The pieces of ``text`` that the model does not know (they encode to ``unk_id``)."""
        pieces = self.tokenize(text, check=False)
        return [p for p, i in zip(pieces, self.pieces_to_ids(pieces)) if i == self.unk_id]

    def encode_batch(self, texts: Iterable[str], *, check: bool = True) -> list[list[int]]:
        return [self.encode(t, check=check) for t in texts]

    def _check(self, text: str, pieces: list[str], ids: list[int], check_length: bool = True) -> None:
        unk = self.unk_id
        if not any(i != unk and not _is_punctuation_piece(p) for p, i in zip(pieces, ids)):
            raise UnpronounceableTextError(
                f"text has no pronounceable characters (only punctuation, symbols or characters unknown to the "
                f"tokenizer): {quote_text(text)}",
                text=text,
            )
        if check_length and self.max_tokens is not None and len(ids) > self.max_tokens:
            raise TextTooLongError(
                f"text is {len(ids)} tokens long, more than the maximum of {self.max_tokens}: {quote_text(text)}",
                text=text,
            )

    # --- decoding -----------------------------------------------------------------------
    def decode(self, ids: Sequence[int] | int, *, lower: bool = False) -> str:
        """Ids -> text with the CJK spaces removed (optionally lower-cased)."""
        if isinstance(ids, int):
            ids = [ids]
        return detokenize_cjk_char(self.sp.decode([int(i) for i in ids]), lower=lower)

    # --- segmentation -------------------------------------------------------------------
    def segment(self, text: str, max_tokens: int = 120, **kwargs) -> list[list[int]]:
        """Encode ``text`` and split it into segments of at most ``max_tokens`` ids (see ``segment.py``)."""
        return segment_text(self, text, max_tokens=max_tokens, **kwargs)


# ---------------------------------------------------------------------------------------------
# Training and extension
# ---------------------------------------------------------------------------------------------
def _is_file_like(item) -> bool:
    return isinstance(item, os.PathLike) or (isinstance(item, str) and "\n" not in item and os.path.isfile(item))


def _iter_corpus(corpus) -> Iterable[str]:
    """Lines of a corpus given as a file path, a list of file paths, or an iterable of lines."""
    if isinstance(corpus, (str, os.PathLike)):
        corpus = [Path(corpus)]
    for item in corpus:
        if _is_file_like(item):
            with open(item, encoding="utf-8") as f:
                yield from f
        else:
            yield item


def _prepared_lines(corpus, normalize: bool, lang: str | None) -> list[str]:
    lines = []
    for line in _iter_corpus(corpus):
        line = line.strip()
        if line:
            prepared = preprocess_text(line, normalize=normalize, lang=lang)
            if prepared:
                lines.append(prepared)
    if not lines:
        raise EmptyTextError("the training corpus has no non-empty line", text="")
    return lines


def _train_to_bytes(lines: list[str], vocab_size: int, **options) -> bytes:
    import io

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, **options)
    return model.getvalue()


def _bpe_trainer_options(character_coverage: float, num_threads: int, **extra) -> dict:
    """``SentencePieceTrainer`` options shared by :func:`train_bpe` and :func:`extend_bpe`: BPE with the
    official ids (``<s>``=0, ``</s>``=1, ``<unk>``=2, no padding piece), quiet; ``extra`` adds or overrides."""
    return dict(
        model_type="bpe",
        character_coverage=character_coverage,
        bos_id=0,
        eos_id=1,
        unk_id=2,
        pad_id=-1,
        num_threads=num_threads,
        minloglevel=2,
        **extra,
    )


def train_bpe(
    corpus,
    vocab_size: int,
    model_prefix: str | os.PathLike,
    *,
    normalize: bool = True,
    lang: str | None = None,
    character_coverage: float = 0.9995,
    user_defined_symbols: Sequence[str] = (),
    hard_vocab_limit: bool = False,
    num_threads: int = 1,
    **trainer_options,
) -> Path:
    """Train a SentencePiece BPE model on ``corpus`` with the same preprocessing as ``encode``.

    Args:
      corpus: a file path, a list of file paths (``Path`` objects or strings naming existing
        files), or an iterable of text lines.
      vocab_size: target number of pieces (a soft limit unless ``hard_vocab_limit``).
      model_prefix: the model is written to ``<model_prefix>.model``.
      trainer_options: more ``SentencePieceTrainer`` options (they override the defaults here:
        ``<s>``=0, ``</s>``=1, ``<unk>``=2, no padding piece).
    Returns:
      The path of the written ``.model`` file.
    """
    lines = _prepared_lines(corpus, normalize, lang)
    options = _bpe_trainer_options(character_coverage, num_threads, hard_vocab_limit=hard_vocab_limit)
    if user_defined_symbols:
        options["user_defined_symbols"] = list(user_defined_symbols)
    options.update(trainer_options)
    proto = _train_to_bytes(lines, vocab_size, **options)
    path = Path(f"{os.fspath(model_prefix)}.model")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto)
    return path


def _model_proto(model):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(_load_processor(model).serialized_model_proto())
    return proto


def extend_bpe(
    base_model,
    new_corpus,
    num_new_pieces: int,
    out_path: str | os.PathLike,
    *,
    normalize: bool = True,
    lang: str | None = None,
    only_new_characters: bool = False,
    character_coverage: float = 1.0,
    num_threads: int = 1,
    **trainer_options,
) -> Path:
    """Add up to ``num_new_pieces`` pieces learned from ``new_corpus`` to ``base_model``.

    Every existing piece keeps its id, type and score, so a GPT trained with the base model keeps
    working; the new pieces get ids ``base_size ..`` (grow the text embedding and head by the
    same count). A BPE model is trained on the new corpus (same preprocessing as ``encode``; pass
    ``lang`` to choose the normalization, e.g. ``"de"`` for the language-neutral steps only); its
    pieces that the base lacks are appended: first every new character (so the new script is no
    longer unknown), then merged pieces in merge order. Appended pieces score below every base
    piece, so base merges keep their priority. A new merged piece made only of characters the base
    knows can still change how base-language text is split (never its ids' meaning); with
    ``only_new_characters=True`` only pieces holding a character the base lacks are added, so every
    text that the base encodes without unknown pieces encodes exactly as before.

    Args:
      base_model: path, bytes, ``SentencePieceProcessor`` or :class:`TextTokenizer`.
      new_corpus: as ``corpus`` in :func:`train_bpe`.
      num_new_pieces: the most pieces to add.
      out_path: where to write the extended ``.model``.
    Returns:
      ``out_path`` as a ``Path``.
    """
    from sentencepiece import sentencepiece_model_pb2

    if num_new_pieces <= 0:
        raise ValueError(f"num_new_pieces must be positive, got {num_new_pieces}")
    base = _model_proto(base_model)
    existing = {p.piece for p in base.pieces}
    lines = _prepared_lines(new_corpus, normalize, lang)

    norm_name = base.normalizer_spec.name
    options = _bpe_trainer_options(
        character_coverage,
        num_threads,
        hard_vocab_limit=False,
        normalization_rule_name=norm_name if norm_name in _STANDARD_NORMALIZERS else "identity",
        add_dummy_prefix=base.normalizer_spec.add_dummy_prefix,
        remove_extra_whitespaces=base.normalizer_spec.remove_extra_whitespaces,
    )
    options.update(trainer_options)
    # Room for every character of the corpus plus twice the requested merges (many of the pieces
    # will already be in the base model; the limit is soft, a small corpus yields fewer).
    n_chars = len({ch for line in lines for ch in line if not ch.isspace()})
    new = sentencepiece_model_pb2.ModelProto()
    new.ParseFromString(_train_to_bytes(lines, n_chars + 8 + 2 * num_new_pieces, **options))

    normal = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
    candidates = [p for p in new.pieces if p.type == normal and p.piece not in existing]
    if only_new_characters:
        known_chars = {ch for piece in existing for ch in piece}
        candidates = [p for p in candidates if any(ch not in known_chars for ch in p.piece)]
    chars = [p for p in candidates if len(p.piece) == 1]
    merged = sorted((p for p in candidates if len(p.piece) > 1), key=lambda p: -p.score)
    chosen = (chars + merged)[:num_new_pieces]
    if len(chars) > num_new_pieces:
        warnings.warn(
            f"the new corpus has {len(chars)} characters unknown to the base model; only {num_new_pieces} "
            "were added (raise num_new_pieces)",
            RuntimeWarning,
            stacklevel=2,
        )

    base_scores = [p.score for p in base.pieces if p.type == normal]
    score = (min(base_scores) if base_scores else 0.0) - 1.0
    for piece in chosen:
        added = base.pieces.add()
        added.piece = piece.piece
        added.score = score
        added.type = normal
        score -= 1.0
    base.trainer_spec.vocab_size = len(base.pieces)

    data = base.SerializeToString()
    spm.SentencePieceProcessor(model_proto=data)  # fails loudly if the result is not loadable
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out
