"""Text preparation for synthesis: cleaning, normalization (wetext + inflect) and splitting long input.

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
import unicodedata
from typing import Any

__all__ = ["clean_text", "detect_language", "has_speakable", "load_normalizers", "normalize_text", "split_text"]

logger = logging.getLogger(__name__)

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
_CJK_CHAR = re.compile(f"[{_CJK}]")
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


# --- splitting ---------------------------------------------------------------------------------------------

_CLOSERS = "\"'”’)）]】」』》"
_CLOSER = f"[{re.escape(_CLOSERS)}]"
_TERMINATOR_RUN = re.compile(f"[.!?…。！？；]+{_CLOSER}*")
_CJK_TERMINATORS = frozenset("。！？；")
_CLAUSE_END = re.compile(f"(?:[,;:](?=\\s|$)|[，、；：]){_CLOSER}*")
# Words that end in "." without ending the sentence when a capitalised word follows ("Mr. Smith").
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs e.g i.e cf approx dept gen gov rev sgt capt col lt messrs".split()
)
_NUMBERED_ABBREVIATIONS = frozenset("no nos vol fig figs p pp ch sec art".split())  # "No. 5", "Fig. 3"
_INITIALISM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]|[A-Z]")  # "U.S", "J" (of "J. K. Rowling")


def _is_sentence_end(text: str, start: int, end: int) -> bool:
    """Whether the terminator run ``text[start:end]`` ends a sentence."""
    run = text[start:end]
    if end >= len(text) or any(c in _CJK_TERMINATORS for c in run):
        return True
    after = text[end]
    if _CJK_CHAR.match(after):
        return True
    if not after.isspace():
        return False  # "3.14", "e.g.x", "U.S.A"
    following = text[end + 1 : end + 2]
    if following.islower():
        return False  # "e.g. apples", "Wait… what?" is one sentence for a reader too
    if run.rstrip(_CLOSERS) != ".":
        return True
    word = (text[max(0, start - 24) : start].split() or [""])[-1].lstrip("\"'“‘([{")
    if word.lower() in _ABBREVIATIONS or _INITIALISM.fullmatch(word):
        return False
    return not (word.lower() in _NUMBERED_ABBREVIATIONS and following.isdigit())


def _cuts(text: str, start: int, end: int, level: int) -> list[int]:
    """Positions in ``(start, end)`` where a piece may end: after sentences, clauses, or at spaces."""
    if level == 0:
        found = _TERMINATOR_RUN.finditer(text, start, end)
        return [m.end() for m in found if m.end() < end and _is_sentence_end(text, m.start(), m.end())]
    if level == 1:
        return [m.end() for m in _CLAUSE_END.finditer(text, start, end) if m.end() < end]
    return [i for i in range(start + 1, end) if text[i] == " "]


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _split_span(text: str, start: int, end: int, max_chars: int, level: int) -> list[tuple[int, int]]:
    """Greedy packing of ``text[start:end]`` at this level's cuts; pieces still too long go a level down."""
    start, end = _strip_span(text, start, end)
    if end - start <= max_chars:
        return [(start, end)] if end > start else []
    if level == 3:  # one word (or an unpunctuated CJK run) longer than max_chars: cut anywhere
        return [(i, min(i + max_chars, end)) for i in range(start, end, max_chars)]
    bounds = [start, *_cuts(text, start, end, level), end]
    spans: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    for piece_start, piece_end in zip(bounds, bounds[1:], strict=False):
        piece_start, piece_end = _strip_span(text, piece_start, piece_end)
        if piece_end <= piece_start:
            continue
        if piece_end - piece_start > max_chars:
            if current:
                spans.append(current)
            *done, current = _split_span(text, piece_start, piece_end, max_chars, level + 1)
            spans.extend(done)  # the tail stays open: the next pieces may still fit beside it
        elif current and piece_end - current[0] <= max_chars:
            current = (current[0], piece_end)
        else:
            if current:
                spans.append(current)
            current = (piece_start, piece_end)
    if current:
        spans.append(current)
    return spans


def split_text(text: str, max_chars: int) -> list[str]:
    """Split text into consecutive segments of at most ``max_chars`` characters, at sentence boundaries.

    The text is cleaned first (:func:`clean_text`). Whole sentences (ending in ``. ! ? …`` or ``。！？；``,
    closing quotes and brackets included; "Mr. Smith", "e.g. this", "3.14", "J. K." do not end one) are
    packed greedily. A sentence longer than ``max_chars`` is split at clause punctuation (``, ; : ，、：``),
    then at spaces, then anywhere. Every segment is a slice of the cleaned text with no outer whitespace; the
    cleaned text is the segments joined by the single space or nothing that separated them there.

    Args:
        text: Input text.
        max_chars: Largest segment length, at least 1.

    Returns:
        Non-empty segments in order (an empty list for blank text).

    Raises:
        ValueError: ``max_chars`` < 1.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    cleaned = clean_text(text)
    return [cleaned[s:e] for s, e in _split_span(cleaned, 0, len(cleaned), max_chars, 0)]


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
_ENDS_SENTENCE = re.compile(f"[.!?…。！？；:：,，、;]{_CLOSER}*$")
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
            body += "。" if _CJK_CHAR.match(body[-1]) else "."
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
_SCRIPT_TOKEN = re.compile(f"(?P<zh>[{_CJK}]+)|(?P<en>[A-Za-z]+(?:['’][A-Za-z]+)*)")
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
    bounds = [0, *_cuts(text, 0, len(text), 0), len(text)]
    for start, end in (_strip_span(text, s, e) for s, e in zip(bounds, bounds[1:], strict=False)):
        runs = [(forced, text[start:end])] if forced else _script_runs(text[start:end], default)
        for lang, piece in runs:
            normalized = (_normalize_zh if lang == "zh" else _normalize_en)(piece.strip()) if piece.strip() else ""
            out.append(f"{' ' if piece[:1].isspace() else ''}{normalized}{' ' if piece[-1:].isspace() else ''}")
        out.append(" " if end < len(text) and text[end : end + 1].isspace() else "")
    return clean_text("".join(out))
