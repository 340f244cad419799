"""Text normalization before BPE: numbers to words, punctuation mapping, CJK splitting.

The official front-end (``indextts/utils/front.py``) runs WeTextProcessing (``tn.chinese`` /
``tn.english``), then maps punctuation, then space-separates CJK characters and upper-cases
everything. WeTextProcessing is not available here, so this module implements the common cases
itself with regular expressions:

* language choice as in the official code: the Chinese path when the text has a CJK ideograph,
  or has no Latin letter, or is an e-mail address, or holds a pinyin syllable with a tone digit;
  the English path otherwise;
* English: cardinals, decimals, negative numbers, ordinals (1st, 22nd), years (1999, 2010, 1990s),
  percentages, currency ($3.50, EUR/GBP/JPY signs), clock times (10:30, 8:00 AM), common
  abbreviations (Mr., Dr., etc.), ``&``;
* Chinese: Arabic numbers to Chinese numerals (cardinals, decimals, percentages, fractions,
  negative numbers), years read digit by digit, dates, clock times, currency signs, a few units;
  full-width ASCII to half-width; pinyin+tone syllables and ``<word|pron>`` annotations are kept;
* the official ``'s`` -> `` is`` rewrite after what/where/who/which/how/here/there/it/he/she/that/this;
* the official punctuation map (full-width -> ASCII, quotes/brackets -> ``'``, ellipsis variants
  -> ``…``, colon/semicolon -> ``,``, ``~``/``—`` -> ``-``; Chinese path also ``$`` -> ``.``).

Known differences from the official front-end (WeTextProcessing grammars cover far more):
units, scores, ranges, math expressions and many abbreviations are left as written; the
punctuation map prefers the longest match (so ``，，，`` becomes ``…``, where the official regex
alternation yields ``,,,``); the ``'s`` rule needs a word boundary before the pronoun.
"""

from __future__ import annotations

import re

__all__ = [
    "CHAR_MAP",
    "ZH_CHAR_MAP",
    "detect_language",
    "normalize_text",
    "normalize_english",
    "normalize_chinese",
    "map_punctuation",
    "english_cardinal",
    "english_ordinal",
    "chinese_cardinal",
    "tokenize_by_cjk_char",
    "detokenize_cjk_char",
    "is_cjk_char",
]

# ---------------------------------------------------------------------------------------------
# Punctuation map (official TextNormalizer.char_rep_map values)
# ---------------------------------------------------------------------------------------------
CHAR_MAP: dict[str, str] = {
    # colon / semicolon / comma family
    "：": ",", "；": ",", ";": ",", ":": ",", "，": ",", "、": ",",
    # sentence enders
    "。": ".", "！": "!", "？": "?",
    "\n": " ",
    "·": "-",
    # ellipsis variants
    "...": "…", ",,,": "…", "，，，": "…", "……": "…",
    # quotes and brackets become a single quote
    "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'",
    "（": "'", "）": "'", "(": "'", ")": "'",
    "《": "'", "》": "'", "【": "'", "】": "'", "[": "'", "]": "'", "「": "'", "」": "'",
    # dashes and tildes
    "—": "-", "～": "-", "~": "-",
}  # fmt: skip
ZH_CHAR_MAP: dict[str, str] = {"$": ".", **CHAR_MAP}


def _alternation(keys) -> re.Pattern:
    # Longest first so that multi-character keys ("...", "……") win over their prefixes.
    return re.compile("|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True)))


_CHAR_MAP_RE = _alternation(CHAR_MAP)
_ZH_CHAR_MAP_RE = _alternation(ZH_CHAR_MAP)


def map_punctuation(text: str, lang: str = "en") -> str:
    """Apply the official punctuation map (the Chinese map also turns ``$`` into ``.``)."""
    if lang == "zh":
        return _ZH_CHAR_MAP_RE.sub(lambda m: ZH_CHAR_MAP[m.group()], text)
    return _CHAR_MAP_RE.sub(lambda m: CHAR_MAP[m.group()], text)


# ---------------------------------------------------------------------------------------------
# Language detection
# ---------------------------------------------------------------------------------------------
_HAN_RE = re.compile(r"[\u4e00-\u9fff]")
_LATIN_RE = re.compile(r"[a-zA-Z]")
_EMAIL_RE = re.compile(r"^[a-zA-Z0-9]+@[a-zA-Z0-9]+\.[a-zA-Z]+$")
# A pinyin syllable followed by its tone digit 1-5 (not preceded by another letter).
PINYIN_TONE_RE = re.compile(
    r"(?<![a-z])((?:[bpmfdtnlgkhjqxzcsryw]|[zcs]h)?"
    r"(?:[aeiouüv]|[ae]i|u[aio]|ao|ou|i[aue]|[uüv]e|[uvü]ang?|uai|[aeiuv]n|[aeio]ng|ia[no]|i[ao]ng)|ng|er)"
    r"([1-5])(?!\d)",
    re.IGNORECASE,
)


def detect_language(text: str) -> str:
    """Return ``"zh"`` or ``"en"`` following the official ``use_chinese`` rule."""
    if _HAN_RE.search(text) or not _LATIN_RE.search(text) or _EMAIL_RE.match(text):
        return "zh"
    if PINYIN_TONE_RE.search(text):
        return "zh"
    return "en"


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------
def _to_halfwidth(text: str) -> str:
    """Full-width ASCII (U+FF01..U+FF5E) and the ideographic space to their ASCII forms."""
    out = []
    for ch in text:
        code = ord(ch)
        if 0xFF01 <= code <= 0xFF5E:
            out.append(chr(code - 0xFEE0))
        elif code == 0x3000:
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


_CONTRACTION_RE = re.compile(r"\b(what|where|who|which|how|t?here|it|s?he|that|this)['’]s\b", re.IGNORECASE)


def _expand_contractions(text: str) -> str:
    return _CONTRACTION_RE.sub(r"\1 is", text)


_ANNOTATION_RE = re.compile(r"<([^|>\n]+)\|([^>\n]+)>")
_PLACEHOLDER_BASE = 0xE000  # Unicode private use area: never produced by the rules below


class _Protector:
    """Swap spans for private-use placeholder characters and put them back afterwards."""

    def __init__(self):
        self.spans: list[str] = []

    def protect(self, text: str, pattern: re.Pattern, transform=None) -> str:
        def repl(m):
            self.spans.append(transform(m.group(0)) if transform else m.group(0))
            return chr(_PLACEHOLDER_BASE + len(self.spans) - 1)

        return pattern.sub(repl, text)

    def restore(self, text: str) -> str:
        for i, span in enumerate(self.spans):
            text = text.replace(chr(_PLACEHOLDER_BASE + i), span)
        return text


def _collapse_spaces(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------------------------------------
# English numbers
# ---------------------------------------------------------------------------------------------
_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (10**3, "thousand"))
_DIGIT_WORDS = dict(zip("0123456789", _ONES[:10]))


def _en_below_100(n: int) -> str:
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])


def _en_below_1000(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    if hundreds == 0:
        return _en_below_100(rest)
    words = _ONES[hundreds] + " hundred"
    return words if rest == 0 else words + " and " + _en_below_100(rest)


def english_cardinal(n: int) -> str:
    """``123`` -> ``one hundred and twenty three``; numbers of 10**15 and more read digit by digit."""
    if n < 0:
        return "minus " + english_cardinal(-n)
    if n >= 10**15:
        return " ".join(_DIGIT_WORDS[d] for d in str(n))
    if n < 1000:
        return _en_below_1000(n)
    parts = []
    for value, name in _SCALES:
        if n >= value:
            count, n = divmod(n, value)
            parts.append(_en_below_1000(count) + " " + name)
    if n:
        parts.append(_en_below_1000(n))
    return " ".join(parts)


_ORDINAL_IRREGULAR = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip


def _ordinalize_word(word: str) -> str:
    if word in _ORDINAL_IRREGULAR:
        return _ORDINAL_IRREGULAR[word]
    if word.endswith("y"):
        return word[:-1] + "ieth"
    return word + "th"


def english_ordinal(n: int) -> str:
    """``21`` -> ``twenty first``."""
    words = english_cardinal(n).split(" ")
    words[-1] = _ordinalize_word(words[-1])
    return " ".join(words)


def _en_digits(s: str) -> str:
    return " ".join(_DIGIT_WORDS[d] for d in s)


def _en_integer(s: str) -> str:
    s = s.replace(",", "")
    if len(s) > 1 and s.startswith("0"):
        return _en_digits(s)
    return english_cardinal(int(s))


def _en_decimal(int_part: str, frac_part: str | None) -> str:
    words = _en_integer(int_part) if int_part else "zero"
    if frac_part:
        words += " point " + _en_digits(frac_part)
    return words


def _en_year(n: int) -> str:
    """Read a year: 1999 -> nineteen ninety nine, 2005 -> two thousand five, 1905 -> nineteen oh five."""
    high, low = divmod(n, 100)
    if low == 0:
        if high % 10 == 0:  # 2000, 1000
            return english_cardinal(n)
        return _en_below_100(high) + " hundred"
    if 2000 <= n <= 2009:
        return english_cardinal(n)
    return _en_below_100(high) + " " + ("oh " + _ONES[low] if low < 10 else _en_below_100(low))


def _pluralize_number_word(words: str) -> str:
    head, _, last = words.rpartition(" ")
    last = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return (head + " " + last) if head else last


_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "¥": ("yen", "yen", None, None),
    "￥": ("yen", "yen", None, None),
}
_NUM = r"\d{1,3}(?:,\d{3})+|\d+"
_DIGIT_RE = re.compile(r"\d")
_VERSION_RE = re.compile(r"(?<![\d.])\d+(?:\.\d+){2,}(?![\d.]|\.\d)")  # 1.2.3 (read "one point two point three")
_EN_CURRENCY_RE = re.compile(
    r"([$€£¥￥])\s?(" + _NUM + r")(?:\.(\d+))?(?:\s?(thousand|million|billion|trillion)\b)?", re.IGNORECASE
)
_MINUS = r"(?:(?<![A-Za-z0-9_-])(-))?"  # a minus sign only where it cannot be a hyphen
_NOT_IN_NUMBER = r"(?<!\d)(?<!\d[.,])"  # not the tail of a longer number such as 1,000 or 3.14
_EN_PERCENT_RE = re.compile(_MINUS + _NOT_IN_NUMBER + r"(?:(" + _NUM + r")(?:\.(\d+))?|\.(\d+))?\s?%")
_EN_TIME_RE = re.compile(
    r"(?<![\d:])(\d{1,2}):(\d{2})(?::(\d{2}))?(?![\d:])(?:\s?([ap])(\.?)m(\.?)(?![a-z]))?", re.IGNORECASE
)
_EN_ORDINAL_RE = re.compile(_NOT_IN_NUMBER + r"(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_EN_DECADE_RE = re.compile(_NOT_IN_NUMBER + r"(?<![$€£¥])(1[1-9]|20)(\d0)'?s\b")
_EN_YEAR_RE = re.compile(_NOT_IN_NUMBER + r"(?<![$€£¥])(1[1-9]\d\d|20\d\d)(?![\d%]|[.,]\d)")
_EN_NUMBER_RE = re.compile(_MINUS + _NOT_IN_NUMBER + r"(?:(" + _NUM + r")(?:\.(\d+))?|(?<![^\s])\.(\d+))(?!\d)")

_EN_ABBREVIATIONS = (
    (r"\bMr\.", "mister"), (r"\bMrs\.", "misses"), (r"\bMs\.", "miss"), (r"\bDr\.", "doctor"),
    (r"\bProf\.", "professor"), (r"\bJr\.", "junior"), (r"\bSr\.", "senior"), (r"\bSt\.(?= [A-Z])", "saint"),
    (r"\bMt\.", "mount"), (r"\bvs\.", "versus"), (r"\be\.g\.", "for example"), (r"\bi\.e\.", "that is"),
    (r"\bapprox\.", "approximately"), (r"\bNo\.(?=\s?\d)", "number"), (r"\bno\.(?=\s?\d)", "number"),
    (r"\betc\.(?=\s*[a-z,;:])", "et cetera"), (r"\betc\.", "et cetera."),
)  # fmt: skip
_EN_ABBREVIATIONS = tuple((re.compile(p), r) for p, r in _EN_ABBREVIATIONS)


def _en_currency(m: re.Match) -> str:
    sign, whole, frac, scale = m.group(1), m.group(2).replace(",", ""), m.group(3), m.group(4)
    one, many, sub_one, sub_many = _CURRENCIES[sign]
    if scale:  # $2.5 million -> two point five million dollars
        return f"{_en_decimal(whole, frac)} {scale.lower()} {many}"
    if frac and (len(frac) > 2 or sub_one is None):
        return f"{_en_decimal(whole, frac)} {many}"
    amount = int(whole)
    cents = int(frac.ljust(2, "0")) if frac else 0
    parts = []
    if amount or not cents:
        parts.append(f"{english_cardinal(amount)} {one if amount == 1 else many}")
    if cents:
        parts.append(f"{english_cardinal(cents)} {sub_one if cents == 1 else sub_many}")
    return " and ".join(parts)


def _en_percent(m: re.Match) -> str:
    neg, whole, frac = m.group(1), m.group(2), m.group(3) or m.group(4)
    if whole is None and frac is None:
        return "percent"
    return ("minus " if neg else "") + _en_decimal(whole or "", frac) + " percent"


def _en_time(m: re.Match) -> str:
    hour, minute, second, meridiem = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
    inner_dot, final_dot = m.group(5), m.group(6)
    if hour > 24 or minute > 59 or (second is not None and int(second) > 59):
        return m.group(0)
    if minute == 0:
        words = english_cardinal(hour) + ("" if meridiem else " o'clock")
    elif minute < 10:
        words = f"{english_cardinal(hour)} oh {_ONES[minute]}"
    else:
        words = f"{english_cardinal(hour)} {english_cardinal(minute)}"
    if second is not None and int(second):
        words += f" and {english_cardinal(int(second))} seconds"
    if meridiem:
        words += f" {meridiem.lower()} m"
        if final_dot:
            # "7 pm." ends a sentence; "7 p.m." does only when a capital or the end of text follows
            rest = m.string[m.end() :]
            if not inner_dot or not rest.strip() or re.match(r"\s+[A-Z]", rest):
                words += "."
    return words


def _en_number(m: re.Match) -> str:
    neg, whole, frac = m.group(1), m.group(2), m.group(3) or m.group(4)
    words = _en_decimal(whole or "", frac)
    return ("minus " + words) if neg else words


def _sub_padded(pattern: re.Pattern, fn, text: str) -> str:
    """``pattern.sub(fn)`` that puts a space between the spoken words and an adjacent letter/digit."""

    def repl(m):
        words = fn(m)
        if words == m.group(0):
            return words
        start, end = m.span()
        if start > 0 and text[start - 1].isalnum():
            words = " " + words
        if end < len(text) and text[end].isalnum():
            words = words + " "
        return words

    return pattern.sub(repl, text)


def normalize_english(text: str) -> str:
    """English path (contractions and punctuation are handled by :func:`normalize_text`)."""
    for pattern, repl in _EN_ABBREVIATIONS:
        text = pattern.sub(repl, text)
    text = text.replace("&", " and ")
    text = _sub_padded(_EN_CURRENCY_RE, _en_currency, text)
    text = _sub_padded(_EN_PERCENT_RE, _en_percent, text)
    text = _sub_padded(_EN_TIME_RE, _en_time, text)
    text = _sub_padded(_EN_ORDINAL_RE, lambda m: english_ordinal(int(m.group(1))), text)
    text = _sub_padded(_EN_DECADE_RE, lambda m: _pluralize_number_word(_en_year(int(m.group(1) + m.group(2)))), text)
    text = _sub_padded(_EN_YEAR_RE, lambda m: _en_year(int(m.group(1))), text)
    text = _sub_padded(_VERSION_RE, lambda m: " point ".join(_en_integer(p) for p in m.group(0).split(".")), text)
    text = _sub_padded(_EN_NUMBER_RE, _en_number, text)
    # digits left over by odd formats (1.2.3) are read one by one
    text = _sub_padded(_DIGIT_RE, lambda m: _DIGIT_WORDS[m.group(0)], text)
    return text


# ---------------------------------------------------------------------------------------------
# Chinese numbers
# ---------------------------------------------------------------------------------------------
_ZH_DIGITS = "零一二三四五六七八九"
_ZH_GROUP_UNITS = ("", "万", "亿", "万亿")


def _zh_below_10000(n: int) -> str:
    out, pending_zero = [], False
    for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        digit, n = divmod(n, value)
        if digit:
            if pending_zero and out:
                out.append("零")
            out.append(_ZH_DIGITS[digit] + unit)
            pending_zero = False
        else:
            pending_zero = True
    return "".join(out)


def _zh_digits(s: str) -> str:
    return "".join(_ZH_DIGITS[int(d)] for d in s)


def chinese_cardinal(n: int) -> str:
    """``1024`` -> ``一千零二十四``, ``100000`` -> ``十万``, ``-5`` -> ``负五``; 10**16 and more digit by digit."""
    if n < 0:
        return "负" + chinese_cardinal(-n)
    if n == 0:
        return "零"
    if n >= 10**16:
        return _zh_digits(str(n))
    groups = []
    while n:
        n, g = divmod(n, 10000)
        groups.append(g)
    out = []
    for idx in range(len(groups) - 1, -1, -1):
        g = groups[idx]
        if g == 0:
            continue
        if out and (g < 1000 or groups[idx + 1] == 0):
            if not out[-1].endswith("零"):
                out.append("零")
        out.append(_zh_below_10000(g) + _ZH_GROUP_UNITS[idx])
    words = "".join(out)
    if words.startswith("一十"):  # 10..19 (and 十万...) drop the leading 一
        words = words[1:]
    return words


def _zh_integer(s: str) -> str:
    s = s.replace(",", "")
    if len(s) > 1 and s.startswith("0") or len(s) >= 11:
        return _zh_digits(s)
    return chinese_cardinal(int(s))


def _zh_decimal(whole: str | None, frac: str | None) -> str:
    words = _zh_integer(whole) if whole else "零"
    if frac:
        words += "点" + _zh_digits(frac)
    return words


_ZH_CURRENCY = {"$": "美元", "€": "欧元", "£": "英镑", "¥": "元", "￥": "元"}
_ZH_UNITS = {
    "km/h": "千米每小时", "km": "千米", "kg": "千克", "mm": "毫米", "cm": "厘米", "ml": "毫升",
    "mg": "毫克", "g": "克", "m": "米", "°C": "摄氏度", "℃": "摄氏度", "kb": "千字节", "mb": "兆字节",
}  # fmt: skip
_ZH_DATE_RE = re.compile(r"(?<!\d)(\d{4})\s?[年/.-]\s?(\d{1,2})\s?[月/.-]\s?(\d{1,2})(?!\d)(?:\s?[日号])?")
_ZH_YEAR_RE = re.compile(r"(?<!\d)(\d{4})(?=\s?年)")
_ZH_TIME_RE = re.compile(r"(?<![\d:])(\d{1,2}):(\d{2})(?::(\d{2}))?(?![\d:])")
_ZH_CURRENCY_RE = re.compile(r"([$€£¥￥])\s?(" + _NUM + r")(?:\.(\d+))?")
_ZH_PERCENT_RE = re.compile(_MINUS + _NOT_IN_NUMBER + r"(" + _NUM + r")(?:\.(\d+))?\s?%")
_ZH_FRACTION_RE = re.compile(r"(?<![\d/])(\d+)/(\d+)(?![\d/])")
_ZH_HYPHEN_DIGITS_RE = re.compile(r"(?<![\d-])\d+(?:-\d+){2,}(?![\d-])")
_ZH_UNIT_RE = re.compile(
    r"(\d)(" + "|".join(re.escape(u) for u in sorted(_ZH_UNITS, key=len, reverse=True)) + r")(?![a-zA-Z])"
)
_ZH_NUMBER_RE = re.compile(_MINUS + _NOT_IN_NUMBER + r"(" + _NUM + r")(?:\.(\d+))?(?!\d)")


def _zh_date(m: re.Match) -> str:
    year, month, day = m.group(1), int(m.group(2)), int(m.group(3))
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return m.group(0)
    return f"{_zh_digits(year)}年{chinese_cardinal(month)}月{chinese_cardinal(day)}日"


def _zh_time(m: re.Match) -> str:
    hour, minute, second = int(m.group(1)), int(m.group(2)), m.group(3)
    if hour > 24 or minute > 59 or (second is not None and int(second) > 59):
        return m.group(0)
    words = chinese_cardinal(hour) + "点"
    if minute:
        words += ("零" if minute < 10 else "") + chinese_cardinal(minute) + "分"
    if second is not None and int(second):
        words += chinese_cardinal(int(second)) + "秒"
    return words


def _zh_number(m: re.Match) -> str:
    neg, whole, frac = m.group(1), m.group(2), m.group(3)
    return ("负" if neg else "") + _zh_decimal(whole, frac)


def normalize_chinese(text: str) -> str:
    """Chinese path (assumes full-width ASCII is already half-width)."""
    text = _ZH_DATE_RE.sub(_zh_date, text)
    text = _ZH_YEAR_RE.sub(lambda m: _zh_digits(m.group(1)), text)
    text = _ZH_TIME_RE.sub(_zh_time, text)
    text = _ZH_CURRENCY_RE.sub(lambda m: _zh_decimal(m.group(2), m.group(3)) + _ZH_CURRENCY[m.group(1)], text)
    text = _ZH_PERCENT_RE.sub(
        lambda m: ("负" if m.group(1) else "") + "百分之" + _zh_decimal(m.group(2), m.group(3)), text
    )
    text = _ZH_FRACTION_RE.sub(
        lambda m: chinese_cardinal(int(m.group(2))) + "分之" + chinese_cardinal(int(m.group(1))), text
    )
    # phone-like numbers (135-4567-8900) are read digit by digit, hyphens kept
    text = _ZH_HYPHEN_DIGITS_RE.sub(lambda m: "-".join(_zh_digits(p) for p in m.group(0).split("-")), text)
    text = _ZH_UNIT_RE.sub(lambda m: m.group(1) + _ZH_UNITS[m.group(2)], text)
    text = _VERSION_RE.sub(lambda m: "点".join(_zh_integer(p) for p in m.group(0).split(".")), text)
    text = _ZH_NUMBER_RE.sub(_zh_number, text)
    # digits left over by odd formats (1.2.3) are read one by one
    return _DIGIT_RE.sub(lambda m: _ZH_DIGITS[int(m.group(0))], text)


# ---------------------------------------------------------------------------------------------
# Top level
# ---------------------------------------------------------------------------------------------
def _restore_pinyin(syllable: str) -> str:
    """Upper-case a protected pinyin syllable and write j/q/x + u/ü as v (official convention)."""
    syllable = re.sub(r"^([jqx])[uü]", r"\1v", syllable, flags=re.IGNORECASE)
    return syllable.upper()


def normalize_text(text: str, lang: str | None = None) -> str:
    """Normalize ``text`` for the BPE tokenizer (before CJK splitting and upper-casing).

    Args:
      text: raw input text.
      lang: ``None`` to detect (official rule), ``"zh"`` or ``"en"`` to force a path, or any other
        language code to apply only the language-neutral steps (punctuation map, whitespace,
        full-width to half-width), e.g. for a new language whose numbers we cannot read.
    Returns:
      The normalized text, with whitespace collapsed.
    """
    if not text:
        return ""
    protector = _Protector()
    text = protector.protect(text, _ANNOTATION_RE)
    text = _to_halfwidth(text)
    if lang is None:
        lang = detect_language(text)
    text = _expand_contractions(text)
    if lang == "zh":
        text = protector.protect(text, PINYIN_TONE_RE, _restore_pinyin)
        text = normalize_chinese(text)
        text = map_punctuation(text, "zh")
    elif lang == "en":
        text = normalize_english(text)
        text = map_punctuation(text, "en")
    else:
        text = map_punctuation(text, "en")
    text = _collapse_spaces(text)
    # no space before closing punctuation that a rule may have separated
    text = re.sub(r" ([,.!?…])", r"\1", text)
    return protector.restore(text)


# ---------------------------------------------------------------------------------------------
# CJK splitting (``tokenize_by_CJK_char`` in the official utils)
# ---------------------------------------------------------------------------------------------
# Same code point ranges as the official helper (taken from NLTK's CJK ranges).
_CJK_RANGES = (
    "\u1100-\u11ff\u2e80-\ua4cf\ua840-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff65-\uffdc\U00020000-\U0002ffff"
)
_CJK_SPLIT_RE = re.compile(f"([{_CJK_RANGES}])")
_CJK_CHAR_RE = re.compile(f"[{_CJK_RANGES}]")


def is_cjk_char(ch: str) -> bool:
    return bool(_CJK_CHAR_RE.fullmatch(ch))


def tokenize_by_cjk_char(text: str, upper: bool = True) -> str:
    """Put a space around every CJK character and (by default) upper-case everything.

    ``"你好世界是 hello world 的中文"`` -> ``"你 好 世 界 是 HELLO WORLD 的 中 文"``.
    """
    parts = (p.strip() for p in _CJK_SPLIT_RE.split(text.strip()))
    return " ".join(p.upper() if upper else p for p in parts if p)


def detokenize_cjk_char(text: str, lower: bool = False) -> str:
    """Undo :func:`tokenize_by_cjk_char`: drop spaces next to CJK characters, optionally lower-case."""
    text = re.sub(f"\\s+(?=[{_CJK_RANGES}])|(?<=[{_CJK_RANGES}])\\s+", "", text.strip())
    return text.lower() if lower else text
