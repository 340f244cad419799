"""Text front-end: normalization, SentencePiece BPE tokenization and segmentation.

Typical use::

    from indextts2_jax.text import TextTokenizer
    tok = TextTokenizer("checkpoints/bpe.model")
    ids = tok.encode("Hello world, 2025!")      # list[int]
    segments = tok.segment(long_text, max_tokens=120)
"""

from indextts2_jax.text.normalize import (
    CHAR_MAP,
    ZH_CHAR_MAP,
    chinese_cardinal,
    detect_language,
    detokenize_cjk_char,
    english_cardinal,
    english_ordinal,
    map_punctuation,
    normalize_chinese,
    normalize_english,
    normalize_text,
    tokenize_by_cjk_char,
)
from indextts2_jax.text.segment import segment_text, split_segments
from indextts2_jax.text.tokenizer import TextTokenizer, extend_bpe, preprocess_text, quote_text, train_bpe

__all__ = [
    "CHAR_MAP",
    "ZH_CHAR_MAP",
    "TextTokenizer",
    "chinese_cardinal",
    "detect_language",
    "detokenize_cjk_char",
    "english_cardinal",
    "english_ordinal",
    "extend_bpe",
    "map_punctuation",
    "normalize_chinese",
    "normalize_english",
    "normalize_text",
    "preprocess_text",
    "quote_text",
    "segment_text",
    "split_segments",
    "tokenize_by_cjk_char",
    "train_bpe",
]
