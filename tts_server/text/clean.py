"""Always-applied text cleanup, and the character classes the splitter and the normalizer share."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["CJK", "CJK_CHAR", "CLOSER", "CLOSERS", "clean_text", "has_speakable"]

# The CJK ideograph blocks (a character class body).
CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
CJK_CHAR = re.compile(f"[{CJK}]")
# Control and format characters (Cc, Cf) that are not whitespace; ZWJ/ZWNJ stay (they shape Indic/Persian
# text), lone surrogates go (they cannot be encoded for the tokenizer).
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u00ad\u061c\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064"
    "\u2066-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff\U000e0001\U000e0020-\U000e007f]"
)


def clean_text(text: str) -> str:
    """Always-applied cleanup: drop control/format characters, collapse whitespace runs to one space, strip.

    CJK text is left as it is (no spaces are added between characters); every Unicode whitespace character
    (newline, tab, ideographic space...) counts as whitespace.
    """
    return " ".join(_INVISIBLE.sub("", text).split())


def has_speakable(text: str) -> bool:
    """Whether the text has anything to speak: a letter or a digit (Unicode categories L and N).

    Text of only punctuation, symbols, emoji, combining marks, or invisible joiners (ZWJ/ZWNJ stay
    through :func:`clean_text`) gives the model nothing to read; both speech endpoints refuse it
    rather than return whatever noise the model makes of it.
    """
    return any(unicodedata.category(c)[0] in "LN" for c in text)


# Closing quotes and brackets: they belong to the sentence they close.
CLOSERS = "\"'”’)）]】」』》"
CLOSER = f"[{re.escape(CLOSERS)}]"
