"""Text-to-emotion answers -> emotion weights (indextts2_jax.infer.emotion_text.parse_emotion_reply), the
official QwenEmotion rules: JSON or regex pairs, bare labels, the melancholy swap, clamping, calm default."""

import pytest

from indextts2_jax.infer.emotion_text import EmotionTextError, parse_emotion_reply
from indextts2_jax.infer.pipeline import EMOTIONS


def vec(scores):
    assert list(scores) == list(EMOTIONS)
    return list(scores.values())


def test_json_scores_in_vector_order_and_clamped():
    reply = '{"高兴": 0.9, "愤怒": 0.0, "悲伤": 1.5, "恐惧": -0.2, "反感": 0.1, "低落": 0.0, "惊讶": 0.3, "自然": 0.2}'
    assert vec(parse_emotion_reply(reply, "今天真好")) == [0.9, 0.0, 1.2, 0.0, 0.1, 0.0, 0.3, 0.2]


def test_broken_json_falls_back_to_label_number_pairs():
    reply = '{"高兴": 0.5, "惊讶": 0.25,, 自然: 0.1'
    assert vec(parse_emotion_reply(reply, "x")) == [0.5, 0, 0, 0, 0, 0, 0.25, 0.1]


@pytest.mark.parametrize("reply, index", [('"高兴"', 0), ('"angry"', 1), ('{"emotion": "afraid"}', 3),
                                          ('{"label": "惊讶"}', 6), ('{"情绪": "Disgusted"}', 4)])
def test_a_bare_label_is_a_one_hot(reply, index):
    want = [0.0] * 8
    want[index] = 1.0
    assert vec(parse_emotion_reply(reply, "x")) == want


def test_melancholy_words_swap_sad_and_melancholic():
    reply = '{"悲伤": 0.8, "低落": 0.1}'
    assert vec(parse_emotion_reply(reply, "I feel Gloomy today"))[2:6] == [0.1, 0.0, 0.0, 0.8]
    assert vec(parse_emotion_reply(reply, "I feel sad today"))[2:6] == [0.8, 0.0, 0.0, 0.1]
    # a bare label too (the official swaps before reading the label and ends with calm; see the module doc)
    assert vec(parse_emotion_reply('"sad"', "so depressed")) == [0, 0, 0, 0, 0, 1.0, 0, 0]


@pytest.mark.parametrize("reply", ["", "no idea", "[1, 2]", '{"高兴": 0, "自然": 0}', '{"other": 0.7}'])
def test_nothing_detected_is_calm(reply):
    assert vec(parse_emotion_reply(reply, "x")) == [0, 0, 0, 0, 0, 0, 0, 1.0]


def test_a_non_numeric_score_is_a_clear_error():
    with pytest.raises(EmotionTextError, match="non-numeric"):
        parse_emotion_reply('{"高兴": "very"}', "x")
