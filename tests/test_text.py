"""Tests for the text front-end: normalization, BPE tokenizer (train/extend), segmentation, errors.

No official bpe.model is available offline, so a tiny BPE model is trained once per session on a
generated English+Chinese corpus (well under a second).
"""

import random

import pytest

from indextts2_jax.errors import EmptyTextError, InputError, TextError, TextTooLongError, UnpronounceableTextError
from indextts2_jax.text import (
    TextTokenizer,
    chinese_cardinal,
    detect_language,
    detokenize_cjk_char,
    english_cardinal,
    english_ordinal,
    extend_bpe,
    map_punctuation,
    normalize_text,
    preprocess_text,
    segment_text,
    split_segments,
    tokenize_by_cjk_char,
    train_bpe,
)

W = "\u2581"  # SentencePiece word-start marker

# ---------------------------------------------------------------------------------------------
# Normalization
# ---------------------------------------------------------------------------------------------
ENGLISH_CASES = [
    ("We shipped 101 boxes", "We shipped one hundred and one boxes"),
    ("There are 1,234,567 stars.", "There are one million two hundred and thirty four thousand five hundred and sixty seven stars."),  # noqa: E501
    ("I have 0 apples and 1000000 grapes", "I have zero apples and one million grapes"),
    ("Pi is 3.14, right?", "Pi is three point one four, right?"),
    ("Temperatures hit -5 degrees.", "Temperatures hit minus five degrees."),
    ("I was born on May 3rd, 1999.", "I was born on May third, nineteen ninety nine."),
    ("The 21st century began in 2001.", "The twenty first century began in two thousand one."),
    ("In 1905 and 2010 and 1800", "In nineteen oh five and twenty ten and eighteen hundred"),
    ("The 1980s were loud & fun.", "The nineteen eighties were loud and fun."),
    ("That is 12.5% more.", "That is twelve point five percent more."),
    ("It costs $3.50 today.", "It costs three dollars and fifty cents today."),
    ("only $12.5.", "only twelve dollars and fifty cents."),
    ("$1 or $0.99 or $0.01", "one dollar or ninety nine cents or one cent"),
    ("He owes £2 and €2.05.", "He owes two pounds and two euros and five cents."),
    ("a $2.5 million budget", "a two point five million dollars budget"),
    ("Meet me at 10:30 tomorrow.", "Meet me at ten thirty tomorrow."),
    ("See you at 8:00 AM", "See you at eight a m"),
    ("It is 7:05 pm. Then", "It is seven oh five p m. Then"),
    ("Wake at 6:00.", "Wake at six o'clock."),
    ("Mr. Smith met Dr. Jones.", "mister Smith met doctor Jones."),
    ("apples, pears, etc. and more", "apples, pears, et cetera and more"),
    ("apples, pears, etc.", "apples, pears, et cetera."),
    ("version 1.2.3 is out.", "version one point two point three is out."),
    ("CosyVoice2 and GPT-5", "CosyVoice two and GPT-five"),
    ("agent 007", "agent zero zero seven"),
    ("  lots   of \n space  ", "lots of space"),
]


@pytest.mark.parametrize("text,expected", ENGLISH_CASES)
def test_english_normalization(text, expected):
    assert normalize_text(text) == expected


CHINESE_CASES = [
    ("他有3个苹果和1024本书", "他有三个苹果和一千零二十四本书"),
    ("共465篇，约315万字", "共四百六十五篇,约三百一十五万字"),
    ("第1名得到100000元", "第一名得到十万元"),
    ("2.5平方电线", "二点五平方电线"),
    ("温度是-3度", "温度是负三度"),
    ("2002年的第一场雪，下在了2003年", "二零零二年的第一场雪,下在了二零零三年"),
    ("今天是2025年1月15日。", "今天是二零二五年一月十五日."),
    ("苹果于2030/1/2发布", "苹果于二零三零年一月二日发布"),
    ("时间是8:05，也可以是13:30:15", "时间是八点零五分,也可以是十三点三十分十五秒"),
    ("现在20:00", "现在二十点"),
    ("增长了50%，还有3.5%", "增长了百分之五十,还有百分之三点五"),
    ("价格是¥99.5，打8折", "价格是九十九点五元,打八折"),
    ("只要$20", "只要二十美元"),
    ("是1/2", "是二分之一"),
    ("电话13812345678", "电话一三八一二三四五六七八"),
    ("编号007", "编号零零七"),
    ("版本1.2.3", "版本一点二点三"),
    ("重3.2g，长0.01mm", "重三点二克,长零点零一毫米"),
    ("１２３和ＡＢＣ", "一百二十三和ABC"),  # full-width to half-width, then numbers
    ("晕XUAN4是一种GAN3觉", "晕XVAN4是一种GAN3觉"),  # pinyin+tone kept (upper-cased, xu -> xv)
    ("IndexTTS 正式发布1.0版本了，效果666", "IndexTTS 正式发布一点零版本了,效果六百六十六"),
    ("GPT-5-Nano 是 GPT-5 模型", "GPT-五-Nano 是 GPT-五 模型"),
    ("12345", "一万二千三百四十五"),  # no Latin letters: Chinese path
]


@pytest.mark.parametrize("text,expected", CHINESE_CASES)
def test_chinese_normalization(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    "n,zh,en",
    [
        (0, "零", "zero"),
        (10, "十", "ten"),
        (15, "十五", "fifteen"),
        (101, "一百零一", "one hundred and one"),
        (110, "一百一十", "one hundred and ten"),
        (1010, "一千零一十", "one thousand ten"),
        (10010, "一万零一十", "ten thousand ten"),
        (100100, "十万零一百", "one hundred thousand one hundred"),
        (100000001, "一亿零一", "one hundred million one"),
        (-42, "负四十二", "minus forty two"),
    ],
)
def test_cardinals(n, zh, en):
    assert chinese_cardinal(n) == zh
    assert english_cardinal(n) == en


@pytest.mark.parametrize("n,word", [(1, "first"), (2, "second"), (3, "third"), (12, "twelfth"), (20, "twentieth"),
                                    (22, "twenty second"), (100, "one hundredth")])  # fmt: skip
def test_english_ordinal(n, word):
    assert english_ordinal(n) == word


@pytest.mark.parametrize(
    "text,lang",
    [("hello world", "en"), ("你好 world", "zh"), ("12345", "zh"), ("...", "zh"), ("abc@example.com", "zh"),
     ("ni3 hao3", "zh"), ("beta1 test", "en"), ("Über Straße", "en")],
)  # fmt: skip
def test_detect_language(text, lang):
    assert detect_language(text) == lang


@pytest.mark.parametrize(
    "text,expected",
    [
        ('He said "hi" (twice) [really]...', "He said 'hi' 'twice' 'really'…"),
        ("你好（世界）“测试”《书名》【注】「引」", "你好'世界''测试''书名''注''引'"),
        ("这个...那个……嗯～", "这个…那个…嗯-"),
        ("只有,,,才是", "只有…才是"),
        ("一，二、三；四：五。", "一,二,三,四,五."),
        ("好！好？", "好!好?"),
        ("a；b：c; d: e", "a,b,c, d, e"),
        ("Wait—what? ~ok~", "Wait-what? -ok-"),
        ("克里斯托弗·诺兰", "克里斯托弗-诺兰"),
    ],
)
def test_punctuation_mapping(text, expected):
    assert normalize_text(text) == expected


def test_map_punctuation_chinese_dollar():
    assert map_punctuation("a$b", "zh") == "a.b"
    assert map_punctuation("a$b", "en") == "a$b"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("where's the money?", "where is the money?"),
        ("What's up, it's fine, that's it, there's more", "What is up, it is fine, that is it, there is more"),
        ("今天是个好日子 it's a good day", "今天是个好日子 it is a good day"),
        ("John's car is red", "John's car is red"),  # only after the listed words
    ],
)
def test_contractions(text, expected):
    assert normalize_text(text) == expected


def test_other_language_only_neutral_steps():
    # lang other than zh/en: punctuation and spaces only, numbers are left alone
    assert normalize_text("Wir haben 3  Äpfel: gut!", lang="de") == "Wir haben 3 Äpfel, gut!"
    assert normalize_text("I have 3", lang="zh") == "I have 三"


def test_pronunciation_annotation_is_kept():
    assert normalize_text("<行|xing2>走了123步") == "<行|xing2>走了一百二十三步"


def test_cjk_split_and_upper():
    assert tokenize_by_cjk_char("你好世界是 hello world 的中文") == "你 好 世 界 是 HELLO WORLD 的 中 文"
    assert tokenize_by_cjk_char("  mixed你好ok  ") == "MIXED 你 好 OK"
    assert tokenize_by_cjk_char("こんにちは") == "こ ん に ち は"
    assert tokenize_by_cjk_char("abc", upper=False) == "abc"
    assert detokenize_cjk_char("你 好 世 界 是 HELLO WORLD 的 中 文", lower=True) == "你好世界是hello world的中文"


def test_preprocess_text():
    assert preprocess_text("I have 2 cats，你有3只猫") == "I HAVE 二 CATS, 你 有 三 只 猫"
    assert preprocess_text("It's 5 o'clock!") == "IT IS FIVE O'CLOCK!"


# ---------------------------------------------------------------------------------------------
# BPE tokenizer
# ---------------------------------------------------------------------------------------------
_EN_WORDS = (
    "the quick brown fox jumps over lazy dog she sells sea shells by shore we will meet at station tomorrow "
    "morning and talk about weather music science history people love reading books in quiet library train "
    "arrives late every day because of heavy rain while children play outside near river bank it is what that"
).split()
_ZH_CHARS = (
    "我们今天去公园散步天气很好大家都在唱歌跳舞学习中文非常有意思他说明天会下雨所以带上雨伞北京上海广州是大城市"
    "零一二三四五六七八九十百千万点个年月日"
)
_NEW_LANGUAGE_LINES = [
    "Über die Brücke gehen wir heute.",
    "Die Straße ist groß und schön.",
    "Wir möchten Käse und Äpfel kaufen.",
    "Le garçon mange déjà une crème brûlée.",
    "Où est la gare? Ça va très bien.",
    "Él está en la montaña con su niño.",
]


def _generated_corpus(n=400, seed=0):
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        if i % 3 == 2:
            lines.append("".join(rng.choice(_ZH_CHARS) for _ in range(rng.randint(6, 16))) + rng.choice("。！？，"))
        else:
            words = [rng.choice(_EN_WORDS) for _ in range(rng.randint(5, 14))]
            if rng.random() < 0.3:
                words.insert(rng.randrange(len(words)), str(rng.randint(0, 3000)))
            lines.append(" ".join(words).capitalize() + rng.choice(".!?,"))
    return lines


@pytest.fixture(scope="session")
def bpe_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe")
    corpus_file = out / "corpus.txt"
    corpus_file.write_text("\n".join(_generated_corpus()) + "\n", encoding="utf-8")
    # coverage 1.0: in a corpus this small the default 0.9995 drops characters seen only a few times
    return train_bpe([corpus_file], vocab_size=400, model_prefix=out / "tiny", character_coverage=1.0)


@pytest.fixture(scope="session")
def tok(bpe_path):
    return TextTokenizer(bpe_path)


def test_trained_model_layout(tok, bpe_path):
    assert bpe_path.suffix == ".model" and bpe_path.is_file()
    assert tok.ids_to_pieces([0, 1, 2]) == ["<s>", "</s>", "<unk>"]
    assert tok.unk_id == 2 and tok.start_text_id == 0 and tok.stop_text_id == 1
    assert 300 <= tok.vocab_size <= 400
    pieces = tok.ids_to_pieces(range(3, tok.vocab_size))
    # trained on upper-cased text: no lower-case Latin piece
    assert not any(any("a" <= c <= "z" for c in p) for p in pieces)


def test_train_from_lines_matches_train_from_file(tok, tmp_path):
    path = train_bpe(iter(_generated_corpus()), vocab_size=400, model_prefix=tmp_path / "lines", character_coverage=1.0)
    assert TextTokenizer(path).ids_to_pieces(range(tok.vocab_size)) == tok.ids_to_pieces(range(tok.vocab_size))


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The quick brown fox jumps over the lazy dog.", "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG."),
        ("We will meet at 10:30 tomorrow morning!", "WE WILL MEET AT TEN THIRTY TOMORROW MORNING!"),
        ("People love 25 books, it's quiet.", "PEOPLE LOVE TWENTY FIVE BOOKS, IT IS QUIET."),
        ("我们今天去公园散步。", "我们今天去公园散步."),
        ("他说明天会下雨，所以带上雨伞！", "他说明天会下雨,所以带上雨伞!"),
        ("北京是大城市 and we love music", "北京是大城市AND WE LOVE MUSIC"),
        ("他有3个学习日，2025年1月", "他有三个学习日,二零二五年一月"),
    ],
)
def test_encode_decode_round_trip(tok, text, expected):
    ids = tok.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == expected
    assert tok.decode(ids, lower=True) == expected.lower()
    assert tok.pieces_to_ids(tok.tokenize(text)) == ids


def test_unknown_characters_map_to_unk(tok):
    ids = tok.encode("Über die Brücke")
    pieces = tok.tokenize("Über die Brücke")
    assert ids.count(tok.unk_id) == 2
    assert [p for p, i in zip(pieces, ids) if i == tok.unk_id] == ["Ü", "Ü"]


def test_load_from_bytes_and_processor(tok, bpe_path):
    text = "She sells sea shells by the shore."
    assert TextTokenizer(bpe_path.read_bytes()).encode(text) == tok.encode(text)
    assert TextTokenizer(tok.sp).encode(text) == tok.encode(text)
    assert TextTokenizer(tok.model_proto()).encode(text) == tok.encode(text)
    with pytest.raises(FileNotFoundError, match="missing.model"):
        TextTokenizer(bpe_path.parent / "missing.model")


def test_encode_without_normalization(bpe_path):
    raw = TextTokenizer(bpe_path, normalize=False)
    assert raw.decode(raw.encode("river 12")) != "RIVER TWELVE"
    assert TextTokenizer(bpe_path).decode(TextTokenizer(bpe_path).encode("river 12")) == "RIVER TWELVE"


@pytest.fixture(scope="session")
def extended(bpe_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe_ext") / "extended.model"
    return extend_bpe(bpe_path, _NEW_LANGUAGE_LINES * 10, num_new_pieces=60, out_path=out, lang="de")


def test_extend_bpe_keeps_old_ids(tok, extended):
    from sentencepiece import sentencepiece_model_pb2

    old, new = sentencepiece_model_pb2.ModelProto(), sentencepiece_model_pb2.ModelProto()
    old.ParseFromString(tok.model_proto())
    new.ParseFromString(extended.read_bytes())
    assert tok.vocab_size < len(new.pieces) <= tok.vocab_size + 60
    for i, piece in enumerate(old.pieces):
        assert (new.pieces[i].piece, new.pieces[i].score, new.pieces[i].type) == (piece.piece, piece.score, piece.type)
    assert len({p.piece for p in new.pieces}) == len(new.pieces)  # no duplicate piece
    assert new.normalizer_spec == old.normalizer_spec
    ext = TextTokenizer(extended)
    assert ext.unk_id == tok.unk_id
    assert ext.ids_to_pieces(range(tok.vocab_size)) == tok.ids_to_pieces(range(tok.vocab_size))


def test_extend_bpe_covers_new_language(tok, extended):
    ext = TextTokenizer(extended, lang="de")
    base = TextTokenizer(tok.sp, lang="de")
    for line in _NEW_LANGUAGE_LINES:
        old_ids, new_ids = base.encode(line), ext.encode(line)
        assert old_ids.count(base.unk_id) > 0
        assert new_ids.count(ext.unk_id) == 0
        assert len(new_ids) <= len(old_ids)
        assert any(i >= tok.vocab_size for i in new_ids)
        assert ext.decode(new_ids) == preprocess_text(line, lang="de")
    # the base language still encodes without unknown pieces
    text = "The quick brown fox jumps over the lazy dog. 我们今天去公园散步。"
    assert ext.unk_id not in ext.encode(text)
    assert ext.decode(ext.encode(text)) == tok.decode(tok.encode(text))


def test_extend_bpe_only_new_characters(tok, bpe_path, tmp_path):
    path = extend_bpe(
        bpe_path, _NEW_LANGUAGE_LINES * 10, 60, tmp_path / "chars.model", lang="de", only_new_characters=True
    )
    ext = TextTokenizer(path)
    known = {ch for piece in tok.ids_to_pieces(range(tok.vocab_size)) for ch in piece}
    added = ext.ids_to_pieces(range(tok.vocab_size, ext.vocab_size))
    assert added and all(any(ch not in known for ch in piece) for piece in added)
    assert "Ü" in added and "É" in added
    # base-language text encodes exactly as before
    for line in _generated_corpus(30, seed=5):
        assert ext.encode(line) == tok.encode(line)
    assert TextTokenizer(path, lang="de").unknown_pieces("Über die Brücke") == []


def test_extend_bpe_fewer_pieces_than_new_characters(bpe_path, tmp_path):
    with pytest.warns(RuntimeWarning, match="raise num_new_pieces"):
        path = extend_bpe(bpe_path, _NEW_LANGUAGE_LINES, 2, tmp_path / "two.model", lang="de")
    ext = TextTokenizer(path)
    base_size = TextTokenizer(bpe_path).vocab_size
    assert ext.vocab_size == base_size + 2
    assert all(len(p) == 1 for p in ext.ids_to_pieces(range(base_size, ext.vocab_size)))  # characters first


def test_encode_lang_override(tok):
    assert tok.decode(tok.encode("river 12")) == "RIVER TWELVE"
    assert tok.decode(tok.encode("river 12", lang="zh")) == "RIVER十二"
    assert tok.preprocess("river 12", lang="de") == "RIVER 12"


def test_unknown_pieces(tok):
    assert tok.unknown_pieces("Über die Brücke, ça va") == ["Ü", "Ü", "Ç"]
    assert tok.unknown_pieces("The quick brown fox") == []


def test_extend_bpe_rejects_bad_count(bpe_path, tmp_path):
    with pytest.raises(ValueError, match="num_new_pieces"):
        extend_bpe(bpe_path, ["Über"], 0, tmp_path / "x.model")


# ---------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------
def _sentence(n_words, end="."):
    """Pieces of a synthetic sentence: n_words words of two pieces each, then an ender."""
    pieces = []
    for k in range(n_words):
        pieces += [f"{W}W{k}", "X"]
    return pieces + [end]


def _assert_word_boundaries(segments):
    for seg in segments[1:]:
        assert seg[0].startswith(W), f"segment starts inside a word: {seg[:3]}"


def test_split_prefers_sentence_boundaries():
    s1, s2, s3 = _sentence(20), _sentence(25, "!"), _sentence(20, "?")  # 41, 51, 41 tokens
    segments = split_segments(s1 + s2 + s3, max_tokens=100)
    assert segments == [s1 + s2, s3]
    # s2 alone is too long: chopped before its last word, whose tail then merges with s3
    segments = split_segments(s1 + s2 + s3, max_tokens=50)
    assert segments == [s1, s2[:48], s2[48:] + s3]
    _assert_word_boundaries(segments)


def test_split_merges_short_sentences():
    sentences = [_sentence(2) for _ in range(10)]  # 5 tokens each
    flat = sum(sentences, [])
    segments = split_segments(flat, max_tokens=12)
    assert [len(s) for s in segments] == [10, 10, 10, 10, 10]
    assert split_segments(flat, max_tokens=120) == [flat]


def test_split_long_sentence_on_commas_then_chop():
    part = [f"{W}A", "B", f"{W}C", "D", f"{W}E", ","]  # 6 tokens ending with a comma
    sentence = part * 10 + ["."]  # 61 tokens
    segments = split_segments(sentence, max_tokens=20)
    assert all(len(s) <= 20 for s in segments)
    assert all(s[-1] in (",", ".") for s in segments)  # cut only after commas
    assert sum(segments, []) == sentence
    # no punctuation at all: chopped, only before word starts
    words = [f"{W}LONG", "ER", "WORD"] * 30  # 90 tokens, words of 3 pieces
    segments = split_segments(words, max_tokens=10)
    assert all(len(s) <= 10 for s in segments)
    assert [len(s) for s in segments] == [9] * 10
    _assert_word_boundaries(segments)


def test_split_on_dashes_when_no_commas():
    part = [f"{W}A", "B", f"{W}C", "-"]
    sentence = part * 8  # 32 tokens
    segments = split_segments(sentence, max_tokens=12)
    assert all(len(s) <= 12 and s[-1] == "-" for s in segments)


def test_split_single_word_longer_than_max():
    word = [f"{W}A"] + ["B"] * 29
    segments = split_segments(word + [f"{W}C", "."], max_tokens=8)
    assert all(len(s) <= 8 for s in segments)
    assert sum(segments, []) == word + [f"{W}C", "."]


def test_split_keeps_quote_and_abbreviation():
    s1 = [f"{W}'", f"{W}HI", f"{W}THERE", ".", "'"]
    s2 = [f"{W}U", ".", "S", ".", "A", f"{W}IS", f"{W}BIG", "."]
    segments = split_segments(s1 + s2, max_tokens=6)
    # the closing quote stays with its sentence; U.S.A is not cut; the 8-token s2 is chopped before a word
    assert segments == [s1, s2[:6], s2[6:]]


def test_split_ids_and_streaming(tok):
    text = "The quick brown fox jumps. She sells sea shells! We will meet at the station tomorrow morning."
    pieces = tok.tokenize(text)
    ids = tok.encode(text)
    by_pieces = split_segments(pieces, max_tokens=12)
    by_ids = split_segments(ids, max_tokens=12, id_to_piece=tok)
    assert [tok.pieces_to_ids(s) for s in by_pieces] == by_ids
    assert split_segments(ids, max_tokens=12, id_to_piece=tok.sp) == by_ids
    assert split_segments(ids, max_tokens=12, id_to_piece=tok.sp.id_to_piece) == by_ids
    with pytest.raises(TypeError, match="id_to_piece"):
        split_segments(ids, max_tokens=12)
    assert split_segments([], 10) == []


def test_split_quick_streaming():
    s1, s2, s3 = _sentence(2), _sentence(2), _sentence(2)  # 5 tokens each
    assert split_segments(s1 + s2 + s3, max_tokens=12) == [s1 + s2, s3]
    # no merging until more than 10 tokens were seen (unless both fit in max/2): a short first segment
    assert split_segments(s1 + s2 + s3, max_tokens=12, quick_streaming_tokens=10) == [s1, s2 + s3]


@pytest.mark.parametrize("max_tokens", [6, 9, 15, 30, 120])
def test_segment_real_text_never_splits_words(tok, max_tokens):
    rng = random.Random(1)
    text = " ".join(
        " ".join(rng.choice(_EN_WORDS) for _ in range(rng.randint(3, 25))).capitalize() + rng.choice([".", ",", "!"])
        for _ in range(12)
    )
    pieces = tok.tokenize(text)
    segments = split_segments(pieces, max_tokens=max_tokens)
    assert sum(segments, []) == pieces
    assert all(len(s) <= max_tokens for s in segments)
    _assert_word_boundaries(segments)
    # joining the decoded segments with spaces gives back the whole text
    id_segments = segment_text(tok, text, max_tokens=max_tokens)
    assert " ".join(tok.decode(s) for s in id_segments) == tok.decode(tok.encode(text))
    assert tok.segment(text, max_tokens=max_tokens) == id_segments


def test_segment_chinese_text(tok):
    text = "我们今天去公园散步。天气很好，大家都在唱歌跳舞！他说明天会下雨，所以带上雨伞。北京上海广州是大城市。"
    segments = segment_text(tok, text, max_tokens=12)
    assert all(len(s) <= 12 for s in segments)
    assert "".join(tok.decode(s) for s in segments) == tok.decode(tok.encode(text))
    assert tok.decode(segments[0]) == "我们今天去公园散步."


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_text_error(tok, text):
    with pytest.raises(EmptyTextError, match="empty or only whitespace") as info:
        tok.encode(text)
    assert info.value.text == text
    assert isinstance(info.value, TextError) and isinstance(info.value, ValueError)
    assert isinstance(info.value, InputError)


@pytest.mark.parametrize("text", ["...!!!", "？！。", "$", "Ü Ö", "--- ~~~"])
def test_unpronounceable_text_error(tok, text):
    with pytest.raises(UnpronounceableTextError, match="no pronounceable characters") as info:
        tok.encode(text)
    assert repr(text) in str(info.value)
    assert info.value.text == text


def test_text_too_long_error(bpe_path):
    limited = TextTokenizer(bpe_path, max_tokens=8)
    assert len(limited.encode("The quick brown fox.")) <= 8
    long_text = "The quick brown fox jumps over the lazy dog " * 10
    with pytest.raises(TextTooLongError, match="more than the maximum of 8") as info:
        limited.encode(long_text)
    message = str(info.value)
    assert "The quick brown fox" in message and "…" in message and len(message) < 200  # quoted, truncated
    assert info.value.text == long_text
    # segmentation is how long texts are handled: no length error there
    segments = limited.segment(long_text, max_tokens=8)
    assert len(segments) > 1 and all(len(s) <= 8 for s in segments)
    with pytest.raises(EmptyTextError):
        limited.segment("  ")


def test_check_can_be_disabled(tok):
    assert tok.encode("", check=False) == []
    assert tok.encode("Ü", check=False) == [tok.sp.piece_to_id(W), tok.unk_id]
