"""Splitting text into segments at sentence boundaries (then clauses, spaces, anywhere)."""

from __future__ import annotations

import re

from tts_server.text.clean import CJK_CHAR, CLOSER, CLOSERS, clean_text

__all__ = ["sentence_spans", "split_text"]

_TERMINATOR_RUN = re.compile(f"[.!?…。！？；]+{CLOSER}*")
_CJK_TERMINATORS = frozenset("。！？；")
_CLAUSE_END = re.compile(f"(?:[,;:](?=\\s|$)|[，、；：]){CLOSER}*")
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
    if CJK_CHAR.match(after):
        return True
    if not after.isspace():
        return False  # "3.14", "e.g.x", "U.S.A"
    following = text[end + 1 : end + 2]
    if following.islower():
        return False  # "e.g. apples", "Wait… what?" is one sentence for a reader too
    if run.rstrip(CLOSERS) != ".":
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


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """The sentences of ``text`` in order, as ``(start, end)`` slices without outer whitespace.

    The boundaries are :func:`split_text`'s (abbreviations, numbers and initials do not end a
    sentence); the text is not cleaned first. The final span runs to the end of the text, whether or
    not it ends in a terminator.
    """
    bounds = [0, *_cuts(text, 0, len(text), 0), len(text)]
    return [_strip_span(text, s, e) for s, e in zip(bounds, bounds[1:], strict=False)]
