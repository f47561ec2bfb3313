"""Text normalization for synthesis (wetext + inflect): markdown stripped, numbers and symbols read out.

Follows the reference VoxCPM ``TextNormalizer`` (spec §5.3) with these differences, each because the
reference loses or mangles words: inline code keeps its text (the reference deletes it), ``**bold**`` /
``_italic_`` / ``~~strike~~`` / quotes ``>`` / rules are stripped too, only real HTML tags are removed (the
reference's ``<[^>]+>`` eats "a < b and c > d"), a heading or list item without final punctuation gets one (it
would otherwise run into the next line), language is chosen per sentence and per run of script instead of
"zh if any CJK character" (so "他说 I have 23 apples" reads the number in English), decades ("1990s") are
spelled before wetext (which reads "1990 seconds"), and text is normalized one sentence at a time (wetext
slows down more than linearly on long input, and a piece it rejects falls back word by word).
"""

from __future__ import annotations

import html
import logging
import re
import threading
from typing import Any

from tts_server.text.clean import CJK, CJK_CHAR, CLOSER, clean_text
from tts_server.text.sentences import sentence_spans

__all__ = ["detect_language", "load_normalizers", "normalize_text"]

logger = logging.getLogger(__name__)

# --- markdown ----------------------------------------------------------------------------------------------

_FENCED_CODE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", re.DOTALL | re.MULTILINE)
_INLINE = [
    (re.compile(r"\s*!\[[^\]]*\]\([^)]*\)"), ""),  # images, and the space before them
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # links → their text
    (re.compile(r"`+([^`]*)`+"), r"\1"),  # inline code → its text
    (re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>"), ""),  # HTML tags
    (re.compile(r"(?<!\w)(\*\*|__)(?=\S)(.+?)(?<=\S)\1(?!\w)"), r"\2"),  # bold
    (re.compile(r"(?<![\w*])([*_])(?=[^\s*_])(.+?)(?<=[^\s*_])\1(?![\w*])"), r"\2"),  # italic
    (re.compile(r"~~(?=\S)(.+?)(?<=\S)~~"), r"\1"),  # strikethrough
]
_RULE = re.compile(r"[ \t]*(?:[-*_][ \t]*){3,}")
_BLOCK_MARKER = re.compile(r"[ \t]*(?:>[ \t]?)*(#{1,6}(?:[ \t]+|$)|[-*+•](?:[ \t]+|$))?")  # quote, heading, bullet
_ENDS_SENTENCE = re.compile(f"[.!?…。！？；:：,，、;]{CLOSER}*$")
_LINE_SPLIT = re.compile(r"\r\n|\r|\n")


def _strip_markdown(text: str) -> str:
    """Markdown to plain prose, line by line (headings and bullets only mean something at a line start)."""
    lines = []
    for line in _LINE_SPLIT.split(_FENCED_CODE.sub("", text)):
        if _RULE.fullmatch(line):
            continue
        marker = _BLOCK_MARKER.match(line)
        body = line[marker.end() :] if marker else line
        for pattern, replacement in _INLINE:
            body = pattern.sub(replacement, body)
        body = html.unescape(body).strip()
        if body and marker and marker.group(1) and not _ENDS_SENTENCE.search(body):
            body += "。" if CJK_CHAR.match(body[-1]) else "."
        lines.append(body)
    return "\n".join(lines)


# --- normalization -----------------------------------------------------------------------------------------

_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u231a\u231b\u23e9-\u23f3\u23f8-\u23fa\u2600-\u27bf\u2b05-\u2b07\u2b1b\u2b1c"
    "\u2b50\u2b55\ufe0f\u200d\u20e3]"
)
# Full-width digits and letters to ASCII (wetext reads "１２３" as nothing), curly double quotes to straight.
_FULLWIDTH: dict[int, int | str] = {ord("％"): "%", ord("“"): '"', ord("”"): '"'}
_FULLWIDTH.update({cp: cp - 0xFEE0 for cp in [*range(0xFF10, 0xFF1A), *range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B)]})
_SCRIPT_TOKEN = re.compile(f"(?P<zh>[{CJK}]+)|(?P<en>[A-Za-z]+(?:['’][A-Za-z]+)*)")
_MIN_EN_WORDS = 3  # fewer Latin words inside Chinese ("iPhone", "25°C", "Q3") are read in Chinese
_LANGUAGES = {"en": "en", "english": "en", "zh": "zh", "cmn": "zh", "chinese": "zh", "mandarin": "zh"}

_build_lock = threading.Lock()
_call_lock = threading.Lock()  # wetext's FSTs are module globals of a C++ library: one call at a time
_normalizers: dict[str, Any] = {}
_inflect: Any = None


def _normalizer(lang: str) -> Any:
    normalizer = _normalizers.get(lang)
    if normalizer is None:
        with _build_lock:
            normalizer = _normalizers.get(lang)
            if normalizer is None:
                from wetext import Normalizer  # the import loads every FST (~0.4 s): only when first needed

                options = {"remove_erhua": True} if lang == "zh" else {}
                normalizer = _normalizers[lang] = Normalizer(lang=lang, operator="tn", **options)
    return normalizer


def _number_words(digits: str) -> str:
    global _inflect
    if _inflect is None:
        with _build_lock:
            if _inflect is None:
                import inflect  # ~3 s: typeguard instruments the module as it loads

                _inflect = inflect.engine()
    if len(digits) > 15:  # past inflect's range, and a reader says such runs digit by digit anyway
        return " ".join(_inflect.number_to_words(d) for d in digits)
    return _inflect.number_to_words(digits, comma="").replace("-", " ")


def load_normalizers(languages: tuple[str, ...] = ("en", "zh")) -> None:
    """Load wetext's FSTs and inflect now (e.g. at server start) instead of on the first request (~3.5 s)."""
    for lang in languages:
        _tn(lang, "1")
    _number_words("1")


def _tn(lang: str, text: str) -> str:
    normalizer = _normalizer(lang)
    with _call_lock:
        return normalizer.normalize(text)


def _tn_robust(lang: str, text: str) -> str:
    """wetext, falling back word by word where it fails (its en grammar asserts on e.g. "#12", "[1]", "@10")."""
    try:
        return _tn(lang, text)
    except AssertionError:
        logger.warning("wetext %s failed on a %d-char piece; normalizing it word by word", lang, len(text))
    words = []
    for word in text.split():
        try:
            words.append(_tn(lang, word))
        except AssertionError:
            words.append(word)  # its digits are spelled out by the caller
    return " ".join(words)


_DECADE = re.compile(r"\b(1[0-9]|20)([0-9]0)s\b")
# wetext's en grammar fails on a digit touching some symbols ("#12", "[1]", "@10"): a space fixes it.
_GLUED_SYMBOL = re.compile(r"(?<=[#@\[\]{}|_~])(?=\d)|(?<=\d)(?=[#@\[\]{}|_~])")
_NUMBER_SIGN = re.compile(r"\bNo\.\s*(?=\d)")  # wetext reads "No. 5" as "Number. five"
_DIGITS = re.compile(r"\d+")
_WETEXT_ESCAPE = re.compile(r'\\(["\\])')


def _decade(match: re.Match[str]) -> str:
    century, decade = _number_words(match.group(1)), int(match.group(2))
    if decade == 0:
        return "two thousands" if century == "twenty" else f"{century} hundreds"
    last = _number_words(str(decade))
    return f"{century} {last[:-1] + 'ies' if last.endswith('y') else last + 's'}"


def _normalize_en(text: str) -> str:
    text = _NUMBER_SIGN.sub("number ", _GLUED_SYMBOL.sub(" ", _DECADE.sub(_decade, text)))
    text = _tn_robust("en", text)
    text = _WETEXT_ESCAPE.sub(r"\1", text)  # wetext's en grammar backslash-escapes quotes and backslashes
    return _DIGITS.sub(lambda m: _number_words(m.group()), text)


def _normalize_zh(text: str) -> str:
    # The reference's fixes: "=" would be read as part of a number, and "x-2" as "x minus 2".
    text = text.replace("=", "等于")
    if re.search(r"[\d$%^*_+≥≤≠×÷?=]", text):
        text = re.sub(r"(?<=[a-zA-Z0-9])-(?=\d)", " - ", text)
    text = _tn_robust("zh", text)
    # Spaces only survive between two ASCII non-space characters (between English words).
    text = "".join(
        c
        for i, c in enumerate(text)
        if c != " " or (0 < i < len(text) - 1 and _is_ascii_word_char(text[i - 1]) and _is_ascii_word_char(text[i + 1]))
    )
    for symbol, words in (("²", "平方"), ("³", "立方"), ("√", "根号"), ("≈", "约等于"), ("<", "小于")):
        text = text.replace(symbol, words)
    for symbol in ("（", "）", "【", "】", "——"):
        text = text.replace(symbol, " ")
    return text.replace("`", "")


def _is_ascii_word_char(c: str) -> bool:
    return c.isascii() and not c.isspace()


def detect_language(text: str) -> str:
    """``"zh"`` if the text has at least as many CJK characters as Latin words (and some), else ``"en"``."""
    cjk = sum(len(m.group()) for m in _SCRIPT_TOKEN.finditer(text) if m.lastgroup == "zh")
    latin = sum(1 for m in _SCRIPT_TOKEN.finditer(text) if m.lastgroup == "en")
    return "zh" if cjk and cjk >= latin else "en"


def _script_runs(sentence: str, default: str) -> list[tuple[str, str]]:
    """Split a sentence into (language, text) runs: Chinese and English, neutral characters attached.

    A sentence with no letters of either script ("100。") takes ``default``, the language of the whole text.
    """
    runs: list[list[Any]] = []  # [language, start, end, words]
    for m in _SCRIPT_TOKEN.finditer(sentence):
        if runs and runs[-1][0] == m.lastgroup:
            runs[-1][2:] = [m.end(), runs[-1][3] + 1]
        else:
            runs.append([m.lastgroup, m.start(), m.end(), 1])
    if any(run[0] == "zh" for run in runs):
        for run in runs:
            run[0] = "zh" if run[3] < _MIN_EN_WORDS else run[0]
    merged: list[list[Any]] = []
    for run in runs:
        if merged and merged[-1][0] == run[0]:
            merged[-1][2] = run[2]
        else:
            merged.append(run)
    if len(merged) <= 1:
        return [(merged[0][0] if merged else default, sentence)]
    pieces, start = [], 0
    for left, right in zip(merged, merged[1:], strict=False):
        gap = sentence[left[2] : right[1]]
        spaces = [i for i, c in enumerate(gap) if c.isspace()]
        # Numbers and symbols between scripts go with the Chinese side when they touch it ("5个", "3.5%的"),
        # with the English side when a space separates them from the Chinese.
        if not spaces:
            cut = left[2] if right[0] == "zh" else right[1]
        else:
            cut = left[2] + (spaces[0] if left[0] == "zh" else spaces[-1] + 1)
        pieces.append((left[0], sentence[start:cut]))
        start = cut
    pieces.append((merged[-1][0], sentence[start:]))
    return pieces


def normalize_text(text: str, language: str | None = None) -> str:
    """Spell out numbers, dates, times, money, units and symbols, and strip markdown, for English and Chinese.

    Markdown (fenced code dropped; headings, bullets, quotes, emphasis, links → their text, images, HTML
    tags) and emoji are removed, the text is cleaned (:func:`clean_text`), then each sentence is normalized
    with wetext (plus inflect for digits wetext leaves): "I have 23 apples" → "I have twenty three apples",
    "2024年1月1日" → "二零二四年一月一日". With ``language=None`` each sentence is normalized as English or
    Chinese by its script; a sentence mixing both is cut into runs of each (a run of fewer than three Latin
    words stays with the Chinese around it).

    Cost (shared 2-core dev box): the first call imports wetext, which loads every FST (~0.5 s), and the
    first digit wetext leaves imports inflect (~3 s): call :func:`load_normalizers` at startup. After that
    ~1-3 ms per plain sentence and 5-15 ms per number-heavy one: ~0.4-0.7 s for 4,096 characters of
    number-dense English, ~0.3-0.6 s for 2,000 Chinese characters. That is too long for an event loop: run
    it in a thread (``asyncio.to_thread``). Thread-safe; wetext calls are serialized by a lock.

    Args:
        text: Raw input text (may contain markdown and newlines).
        language: ``"en"``, ``"zh"`` (also ``"en-US"``, ``"zh-CN"``, ``"english"``, ``"chinese"``...) to treat
            all text as that language, or None / ``"auto"`` to decide per sentence and script.

    Returns:
        The normalized, cleaned text.

    Raises:
        ValueError: An unsupported language.
    """
    forced = None
    if language is not None and language.lower() != "auto":
        forced = _LANGUAGES.get(re.split(r"[-_]", language.lower())[0])
        if forced is None:
            raise ValueError(f"text normalization supports en and zh, not {language!r}")
    text = clean_text(_EMOJI.sub("", _strip_markdown(text))).translate(_FULLWIDTH)
    out, default = [], forced or detect_language(text)
    for start, end in sentence_spans(text):
        runs = [(forced, text[start:end])] if forced else _script_runs(text[start:end], default)
        for lang, piece in runs:
            normalized = (_normalize_zh if lang == "zh" else _normalize_en)(piece.strip()) if piece.strip() else ""
            out.append(f"{' ' if piece[:1].isspace() else ''}{normalized}{' ' if piece[-1:].isspace() else ''}")
        out.append(" " if end < len(text) and text[end : end + 1].isspace() else "")
    return clean_text("".join(out))
