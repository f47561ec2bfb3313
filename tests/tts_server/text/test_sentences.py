"""split_text and sentence_spans, with property tests for split_text."""

from __future__ import annotations

import random

import pytest

from tts_server.text.clean import clean_text
from tts_server.text.sentences import sentence_spans, split_text


def test_split_text_sentences_and_abbreviations() -> None:
    text = "Mr. Smith went to Washington. He paid $3.14 for e.g. apples! Really? J. K. Rowling wrote it."
    assert split_text(text, 40) == [
        "Mr. Smith went to Washington.",
        "He paid $3.14 for e.g. apples! Really?",
        "J. K. Rowling wrote it.",
    ]
    assert split_text('He said "Stop." Then he left. (This is odd.) Next one.', 20) == [
        'He said "Stop."',
        "Then he left.",
        "(This is odd.)",
        "Next one.",
    ]
    # A lowercase word after the dot continues the sentence ("etc. and"); "No." before a digit is not an end.
    assert split_text("Prices rose etc. and then fell. Done now.", 25) == [
        "Prices rose etc. and then",
        "fell. Done now.",
    ]
    assert split_text("See No. 5 for it. Then go.", 12) == ["See No. 5", "for it.", "Then go."]
    assert split_text("Short text.", 100) == ["Short text."]
    assert split_text("  \n ", 10) == []


def test_split_text_chinese() -> None:
    text = "今天天气很好。我们去公园玩吧！你觉得怎么样？好的；走吧。"
    assert split_text(text, 12) == ["今天天气很好。", "我们去公园玩吧！", "你觉得怎么样？好的；", "走吧。"]
    long_sentence = "这是一个非常非常长的句子，它没有句号，但是有很多逗号，还有顿号、分号；以及冒号：最后结束"
    assert split_text(long_sentence, 10) == [
        "这是一个非常非常长的",  # the first clause alone is too long: cut hard
        "句子，它没有句号，",
        "但是有很多逗号，",
        "还有顿号、分号；",
        "以及冒号：最后结束",
    ]


def test_split_text_long_sentence_falls_back_to_clauses_spaces_then_hard() -> None:
    assert split_text("Hello world, this is long; very long: indeed. Short.", 20) == [
        "Hello world,",
        "this is long;",
        "very long: indeed.",
        "Short.",
    ]
    assert split_text("one two three four five six", 9) == ["one two", "three", "four five", "six"]
    assert split_text("a" * 25, 10) == ["a" * 10, "a" * 10, "a" * 5]
    assert split_text("1,000,000 people came", 12) == ["1,000,000", "people came"]  # no cut inside a number


def test_split_text_rejects_bad_max() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        split_text("text", 0)


def assert_valid_split(text: str, segments: list[str], max_chars: int) -> None:
    """Segments are non-empty, short enough, stripped, and rebuild the cleaned text with "" or " " between."""
    cleaned = clean_text(text)
    position = 0
    for i, segment in enumerate(segments):
        assert segment and len(segment) <= max_chars and segment == segment.strip()
        if i:
            if cleaned.startswith(" ", position):
                position += 1
        assert cleaned.startswith(segment, position), (cleaned[position : position + 40], segment)
        position += len(segment)
    assert position == len(cleaned)


WORDS = ["the", "a", "quick", "Mr.", "e.g.", "3.14", "U.S.", "apples", "Dr.", "(note)", '"quoted."', "x" * 30]
PUNCT = [".", "!", "?", "…", ",", ";", ":", "", "", "", "", "", "?!"]
CJK = ["今天", "我们", "天气", "很好", "公园", "玩", "。", "！", "？", "；", "，", "、", "：", "“", "”"]


def random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 120)):
        if rng.random() < 0.3:
            parts.append("".join(rng.choice(CJK) for _ in range(rng.randint(1, 12))))
        else:
            parts.append(rng.choice(WORDS) + rng.choice(PUNCT))
        parts.append(rng.choice([" ", " ", "  ", "\n", "", "\t"]))
    return "".join(parts)


def test_split_text_property_random_texts() -> None:
    rng = random.Random(1234)
    for _ in range(400):
        text = random_text(rng)
        max_chars = rng.choice([1, 2, 5, 17, 40, 120, 500])
        assert_valid_split(text, split_text(text, max_chars), max_chars)


def test_split_text_packs_whole_sentences_greedily() -> None:
    sentences = [f"Sentence number {i} is here." for i in range(40)]
    segments = split_text(" ".join(sentences), 100)
    for segment, following in zip(segments, segments[1:], strict=False):
        assert segment.endswith(".")  # every cut is at a sentence end
        assert len(segment) + 1 + len(following.split(". ")[0]) + 1 > 100  # the next sentence did not fit


def test_split_text_long_inputs() -> None:
    english = " ".join(
        f"Paragraph {i}: the committee met on Jan. {i % 28 + 1}, e.g. in room {i}.{i % 10}, and Dr. Lee agreed! Why?"
        for i in range(60)
    )[:4096]
    assert len(english) == 4096
    segments = split_text(english, 300)
    assert_valid_split(english, segments, 300)
    assert all(s.endswith(("!", "?", ".")) for s in segments[:-1])
    chinese = "2024年3月3日，两家公司以1234.56元的价格购买了15%的股份。分析师认为这是一笔好交易！真的吗？" * 40
    segments = split_text(chinese, 80)
    assert_valid_split(chinese, segments, 80)
    assert all(s.endswith(("。", "！", "？")) for s in segments)


def test_sentence_spans() -> None:
    text = "Mr. Smith paid 3.14 dollars. Then he left!  Was it odd?"
    spans = sentence_spans(text)
    assert [text[s:e] for s, e in spans] == ["Mr. Smith paid 3.14 dollars.", "Then he left!", "Was it odd?"]
    text = "今天天气很好。我们去公园 and then"
    assert [text[s:e] for s, e in sentence_spans(text)] == ["今天天气很好。", "我们去公园 and then"]
    assert sentence_spans("") == [(0, 0)]
