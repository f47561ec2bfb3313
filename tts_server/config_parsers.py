"""Parsers of setting values from text (flags and environment variables) and the checks they share."""

from __future__ import annotations

__all__ = ["bool_value", "int_tuple", "none_or_at_least", "optional_int", "optional_str"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def optional_int(text: str) -> int | None:
    """An int, or ``None`` for an empty value, ``none`` or ``auto``."""
    return None if text.strip().lower() in ("", "none", "auto") else int(text)


def optional_str(text: str) -> str | None:
    """The text, or ``None`` when empty."""
    return text or None


def int_tuple(text: str) -> tuple[int, ...]:
    """A comma list of ints (``10,20``)."""
    return tuple(int(part) for part in text.split(",") if part.strip())


def none_or_at_least(value: int | None, low: int) -> bool:
    """Whether an optional limit is unset or at least ``low``."""
    return value is None or value >= low


def bool_value(text: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case)."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}")
