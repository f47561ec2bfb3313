"""clean_text and has_speakable."""

from __future__ import annotations

import pytest

from tts_server.text.clean import clean_text, has_speakable


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
