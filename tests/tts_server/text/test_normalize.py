"""Text normalization with the real wetext and inflect."""

from __future__ import annotations

import logging
import re
import threading

import pytest

from tts_server.text.normalize import detect_language, load_normalizers, normalize_text


@pytest.fixture(scope="module", autouse=True)
def _normalizers() -> None:
    load_normalizers()  # ~3.5 s once (wetext's FSTs, inflect's import); the tests then take milliseconds


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


def test_normalize_text_long_input() -> None:
    # Normalizing a long text works one sentence at a time: every number is spelled.
    english = " ".join(
        f"Paragraph {i}: the committee met on Jan. {i % 28 + 1}, e.g. in room {i}.{i % 10}, and Dr. Lee agreed! Why?"
        for i in range(60)
    )[:4096]
    assert not re.search(r"\d", normalize_text(english))
