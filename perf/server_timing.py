"""Parse a ``Server-Timing`` header (W3C Server Timing): the server's milliseconds per stage."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: a metric or parameter name
# A plain decimal: float() alone would also take "nan", "inf" and "1_0", none of which is a duration.
_DURATION = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _split(value: str, sep: str) -> Iterator[str]:
    """``value`` split at ``sep`` outside double-quoted strings (a ``desc`` may hold commas and semicolons)."""
    start, quoted, escaped = 0, False, False
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            yield value[start:i]
            start = i + 1
    yield value[start:]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_server_timing(value: str | None) -> dict[str, float]:
    """The stage durations of a ``Server-Timing`` header (W3C Server Timing), in milliseconds.

    The header is a comma-separated list of metrics ``name;dur=<ms>;desc=...``; several header
    lines are the same list joined with commas. Names are case-folded. A metric is skipped when it
    is malformed (its name is not a token) or carries no usable duration (no ``dur``, or one that is
    not a non-negative decimal): a stage without a duration says nothing about where time went.
    Of a repeated metric or ``dur`` the first counts, as the spec says for parameters.

    Args:
        value: The header's value (``None`` or empty: no header).

    Returns:
        ``{name: milliseconds}`` in the header's order; empty without a usable metric.
    """
    out: dict[str, float] = {}
    if not value:
        return out
    for metric in _split(value, ","):
        name, *params = (part.strip() for part in _split(metric, ";"))
        if not _TOKEN.fullmatch(name) or name.lower() in out:
            continue
        dur = None
        for param in params:
            key, eq, raw = param.partition("=")
            if eq and key.strip().lower() == "dur":
                dur = _unquote(raw.strip())
                break
        if dur is None or not _DURATION.fullmatch(dur) or not math.isfinite(ms := float(dur)):
            continue
        out[name.lower()] = ms
    return out
