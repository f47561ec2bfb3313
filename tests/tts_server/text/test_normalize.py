"""Text cleaning, normalization (real wetext and inflect) and splitting, with property tests for split_text."""

from __future__ import annotations

import logging
import random
import re
import threading

import pytest

from tts_server.text.normalize import (
    clean_text,
    detect_language,
    has_speakable,
    load_normalizers,
    normalize_text,
    split_text,
)


@pytest.fixture(scope="module", autouse=True)
def _normalizers() -> None:
    load_normalizers()  # ~3.5 s once (wetext's FSTs, inflect's import); the tests then take milliseconds


# --- clean_text ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("  Hello \n\n\t world  ", "Hello world"),
        ("line one\r\nline two\u2028three", "line one line two three"),
        ("zero\u200bwidth\ufeff and\x00 nul\x07", "zerowidth and nul"),
        ("soft\u00adhyphen \u202edirection", "softhyphen direction"),
        ("你好，世界。我们 是\u3000朋友", "你好，世界。我们 是 朋友"),  # no spaces invented between CJK characters
        ("", ""),
        (" \n\t ", ""),
    ],
)
def test_clean_text(raw: str, cleaned: str) -> None:
    assert clean_text(raw) == cleaned


def test_clean_text_keeps_cjk_and_joiners_intact() -> None:
    text = "中文文本保持不变，没有多余的空格。"
    assert clean_text(text) == text
    assert clean_text("क्\u200dष") == "क्\u200dष"  # ZWJ shapes Indic script: kept


@pytest.mark.parametrize(
    ("text", "speakable"),
    [
        ("Hello", True),
        ("42", True),
        ("中文", True),
        ("क्\u200dष", True),
        ("a 😀", True),
        ("\u200d\u200c\u200d", False),  # joiners survive clean_text, yet say nothing
        ("😀🎉👍", False),
        ("?!... --- ***", False),
        ("\u0301\u0302", False),  # combining marks alone
        ("", False),
    ],
)
def test_has_speakable(text: str, speakable: bool) -> None:
    assert has_speakable(clean_text(text)) is speakable


# --- normalize_text ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("I have 23 apples", "I have twenty three apples"),
        ("It is 50% off.", "It is fifty percent off."),
        ("Meet me at 3:30 pm.", "Meet me at three thirty PM."),
        ("It costs $5.", "It costs five dollars."),
        ("Dr. Smith was born on March 3, 2024.", "doctor Smith was born on the third of march, twenty twenty four."),
        ("The 21st century", "The twenty first century"),
        ("Music of the 1990s and the 1900s", "Music of the nineteen nineties and the nineteen hundreds"),
        ("Issue #12 and No. 5", "Issue number twelve and number five"),
        ("A & B", "A and B"),
        ("今天是2024年1月1日。", "今天是二零二四年一月一日。"),
        ("价格是12.5元，打8折", "价格是十二点五元，打八折"),
        ("50%的人", "百分之五十的人"),
        ("现在是3:30", "现在是三点三十分"),
        ("温度是25°C", "温度是二十五摄氏度"),
        ("3²≈9（约）", "三平方约等于九 约"),  # the reference's symbol words and bracket spacing
        ("哪儿好玩儿", "哪好玩"),  # erhua removed, as the reference configures wetext
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_normalize_text_strips_markdown() -> None:
    markdown = (
        "# Shopping list\n\n"
        "**Buy** the _fresh_ ~~old~~ items from [our shop](https://example.com/shop) ![logo](logo.png).\n"
        "- 3 apples\n"
        "* pears\n"
        "> quoted `inline` text\n"
        "---\n"
        "```python\nprint('code is not read aloud')\n```\n"
        "Done <b>now</b> &amp; a < b and c > d"
    )
    assert normalize_text(markdown, "en") == (
        "Shopping list. Buy the fresh old items from our shop. three apples. pears. quoted inline text "
        "Done now and a < b and c > d"  # only real tags are removed
    )


def test_normalize_text_leaves_arithmetic_and_identifiers_alone() -> None:
    # Asterisks and underscores inside words are not emphasis.
    assert normalize_text("2*3*4 and snake_case") == "two times three times four and snake underscore case"


def test_normalize_text_mixed_scripts() -> None:
    # A run of three or more English words is read in English, inside a Chinese sentence too.
    assert normalize_text("他说 I have 23 apples 然后走了") == "他说 I have twenty three apples 然后走了"
    # The number touching Chinese is Chinese; the one in the English run is English.
    assert normalize_text("我有5个 red apples and 3 pears") == "我有五个 red apples and three pears"
    # A short Latin run (brand, unit) stays with the Chinese around it: Chinese numbers.
    assert normalize_text("我用iPhone拍了3张照片") == "我用iPhone拍了三张照片"
    # A sentence without letters takes the language of the whole text.
    assert normalize_text("第一项。100。") == "第一项。一百。"
    assert normalize_text("Item one. 100.") == "Item one. one hundred."
    # The reference would read every number here in Chinese because the text has one CJK character.
    assert normalize_text("I bought 2 books. 我很高兴。") == "I bought two books. 我很高兴。"


def test_normalize_text_language_override() -> None:
    # Forced zh is the reference's path, which drops every space not between two ASCII characters.
    assert normalize_text("Top 10 list", "zh") == "Top十list"
    assert normalize_text("Top 10 list", "en-US") == "Top ten list"
    assert normalize_text("第3名", language="zh-CN") == "第三名"
    assert normalize_text("Top 10 list", "auto") == "Top ten list"
    with pytest.raises(ValueError, match="en and zh.*'fr'"):
        normalize_text("Bonjour", "fr")


def test_normalize_text_removes_emoji_and_straightens_quotes() -> None:
    assert normalize_text("He said “hi” 😀👍🏽 ✅!") == 'He said "hi" !'
    assert normalize_text('She said "1"') == 'She said "one"'  # no backslashes from wetext's escaping


def test_normalize_text_survives_inputs_wetext_rejects(caplog: pytest.LogCaptureFixture) -> None:
    # wetext's en grammar raises AssertionError on "+1", "é1", "^1": the sentence falls back word by word,
    # the failure is logged, and every digit is still spelled out.
    with caplog.at_level(logging.WARNING, logger="tts_server.text.normalize"):
        out = normalize_text("refs [1] and [23], x +1 é1 ^1 cost $5")
    assert "wetext en failed" in caplog.text
    assert not re.search(r"\d", out)
    assert "one" in out and "twenty three" in out and "five" in out


def test_normalize_text_blank_and_fullwidth() -> None:
    assert normalize_text("   \n ") == ""
    assert normalize_text("#\n- \n> \n***") == ""
    assert normalize_text("Ｉ have １２３ apples") == "I have one hundred and twenty three apples"


def test_normalize_text_is_thread_safe() -> None:
    texts = ["I have 23 apples", "今天是2024年1月1日。", "It costs $5.", "50%的人"]
    expected = [normalize_text(t) for t in texts]
    results: list[list[str]] = []

    def work() -> None:
        results.append([normalize_text(t) for t in texts * 3])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected * 3] * 4


def test_detect_language() -> None:
    assert detect_language("Hello world") == "en"
    assert detect_language("你好世界") == "zh"
    assert detect_language("我今天用 Python 写代码") == "zh"
    assert detect_language("The word 你 means you") == "en"
    assert detect_language("123 !?") == "en"


# --- split_text ----------------------------------------------------------------------------------------------


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
    # Normalizing a long text works one sentence at a time: every number is spelled.
    assert not re.search(r"\d", normalize_text(english))
