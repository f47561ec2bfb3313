"""Text that arrives in fragments (an LLM's tokens): when a piece of it is ready to be spoken.

:class:`TextBuffer` collects fragments and releases the text before a boundary once the boundary
is certain: a sentence end (:func:`~tts_server.text.sentences.sentence_spans`' rules: "Mr. Smith",
"e.g. this", "3.14" and "J. K." do not end one), or for the first piece of a session, sooner, a
clause end (``, ; :`` followed by a space, ``，、；：``) once enough text came before it. A boundary
counts only when a non-space character has arrived after it: "3." may still become "3.14", "1,"
may become "1,000", "Mr." may be followed by "Smith" and a closing quote may follow a "。". Text
with no boundary is released at the last space before ``max_chars`` (never inside a word), or, for
text without spaces, at ``max_chars``. What is left (the end of a reply) is released by
:meth:`TextBuffer.take_all`: on flush, on close, or when no fragment came for a while.

The buffer never holds more than ``max_chars`` of unreleased text plus the last fragment, so each
fragment costs at most one scan of that much text, however small the fragments are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tts_server.text.clean import CLOSER, clean_text
from tts_server.text.sentences import sentence_spans

__all__ = ["BufferPolicy", "TextBuffer"]

_CLAUSE_END = re.compile(f"(?:[,;:](?=\\s)|[，、；：]){CLOSER}*")


@dataclass(frozen=True)
class BufferPolicy:
    """When buffered text is released.

    Attributes:
        max_chars: Longest piece released (text without a boundary is cut at a space before this).
        first_clause_chars: The first piece may end at a clause boundary once it is at least this
            long (0: only at sentence ends, like the later pieces).
    """

    max_chars: int = 300
    first_clause_chars: int = 24

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {self.max_chars}")
        if self.first_clause_chars < 0:
            raise ValueError(f"first_clause_chars must be >= 0, got {self.first_clause_chars}")


class TextBuffer:
    """Fragments in, speakable pieces out (see the module docstring).

    Args:
        policy: When to release text.
    """

    def __init__(self, policy: BufferPolicy | None = None) -> None:
        self.policy = policy or BufferPolicy()
        self._text = ""
        self.released = 0  # pieces released so far

    @property
    def pending(self) -> int:
        """Characters buffered and not yet released."""
        return len(self._text)

    def append(self, fragment: str) -> None:
        """Add a fragment as it arrived (spaces, newlines and all)."""
        self._text += fragment

    def take_ready(self) -> list[str]:
        """The pieces whose end is certain, in order (cleaned, non-empty); they leave the buffer."""
        cuts = self._cuts()
        out: list[str] = []
        start = 0
        for cut in cuts:
            piece = clean_text(self._text[start:cut])
            start = cut
            if piece:
                out.append(piece)
                self.released += 1
        self._text = self._text[start:]
        return out

    def take_all(self) -> str | None:
        """Everything buffered as one piece (None when only whitespace is left); the buffer empties."""
        piece, self._text = clean_text(self._text), ""
        if not piece:
            return None
        self.released += 1
        return piece

    def clear(self) -> int:
        """Drop the buffered text; returns how many characters were dropped."""
        dropped, self._text = len(self._text), ""
        return dropped

    def _cuts(self) -> list[int]:
        """Where the certain pieces in the buffer end, in order (one scan of the buffer)."""
        text = self._text
        last = len(text.rstrip())  # a boundary must be followed by something that is not a space
        cuts = [end for start, end in sentence_spans(text)[:-1] if start < end < last]  # the last span: never certain
        if not cuts and self.released == 0 and self.policy.first_clause_chars:
            for match in _CLAUSE_END.finditer(text, 0, last):
                if match.end() < last and len(text[: match.end()].strip()) >= self.policy.first_clause_chars:
                    cuts.append(match.end())
                    break
        start = cuts[-1] if cuts else 0
        limit = self.policy.max_chars
        while len(text[start:].strip()) > limit:  # no boundary in sight: at a space, never inside a word
            head = start + len(text[start:]) - len(text[start:].lstrip())
            space = text.rfind(" ", head + 1, head + limit + 1)  # a space right after the limit ends a whole word
            start = space if space > head else head + limit
            cuts.append(start)
        return cuts
