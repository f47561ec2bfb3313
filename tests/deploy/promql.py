"""A small PromQL reader: which series and labels an expression uses, and whether a scrape exports them.

Not a PromQL parser: it tokenizes (strings, ranges and numbers are skipped whole, so nothing in
them is taken for a name) and tells names apart by what follows them: ``name(`` is a function or
an aggregation, a keyword is a keyword, ``by (...)`` and friends list labels, ``{...}`` holds label
matchers, any other identifier is a series name. That is enough for the expressions of a dashboard
and of alerting rules, and every check it feeds fails loudly on what it cannot read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["TARGET_LABELS", "Exported", "Uses", "check", "exported", "uses"]

# Labels Prometheus attaches to every scraped series, and the series it makes itself per target.
TARGET_LABELS = frozenset({"instance", "job"})
_PROMETHEUS_SERIES = frozenset({"up"})
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"})
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"}
)
_RATES = frozenset({"rate", "irate", "increase"})  # functions meaningful for counters only
_RATEABLE = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])                          # [5m], [$__rate_interval], [1h:5m]
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z]*)   # 0.99, 1e-9, 5m
  | (?P<variable>\$\{[^}]*\}|\$\w+)                # a Grafana variable outside a string
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){},])
    """,
    re.VERBOSE,
)


@dataclass
class Uses:
    """What one expression refers to.

    Attributes:
        series: Each series name, with the label names its matchers use.
        grouping: Label names of ``by``/``without``/``on``/``ignoring``/``group_*`` lists.
        rated: Series read directly by ``rate``/``irate``/``increase``.
    """

    series: dict[str, set[str]] = field(default_factory=dict)
    grouping: set[str] = field(default_factory=set)
    rated: set[str] = field(default_factory=set)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read {expr[pos:]!r} in {expr!r}")
        pos = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, match.group()))
    return out


def _label_list(tokens: list[tuple[str, str]], i: int, expr: str) -> tuple[set[str], int]:
    """The labels of ``( a, b )`` starting at ``tokens[i]``; returns them and the index after ``)``."""
    if i >= len(tokens) or tokens[i] != ("op", "("):
        raise ValueError(f"a label list must follow by/without/on/ignoring in {expr!r}")
    labels, i = set(), i + 1
    while tokens[i] != ("op", ")"):
        kind, text = tokens[i]
        if kind == "ident":
            labels.add(text)
        elif text != ",":
            raise ValueError(f"unexpected {text!r} in a label list of {expr!r}")
        i += 1
    return labels, i + 1


def _matchers(tokens: list[tuple[str, str]], i: int, expr: str) -> tuple[set[str], int]:
    """The label names of ``{a="x", b=~"y"}`` starting at ``tokens[i]``; returns them and the index after ``}``."""
    labels, i = set(), i + 1
    while tokens[i] != ("op", "}"):
        (kind, name), (_, operator), (value_kind, _) = tokens[i : i + 3]
        if kind != "ident" or operator not in ("=", "!=", "=~", "!~") or value_kind != "string":
            raise ValueError(f"cannot read the label matchers of {expr!r}")
        labels.add(name)
        i += 3
        if tokens[i] == ("op", ","):
            i += 1
    return labels, i + 1


def uses(expr: str) -> Uses:
    """The series and labels ``expr`` refers to.

    Raises:
        ValueError: Something it cannot read (a selector without a name, an unbalanced paren).
    """
    tokens = _tokens(expr)
    found = Uses()
    calls: list[str] = []  # the function of each open paren ("" for plain grouping)
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "ident" and text.lower() in _LABEL_LISTS:
            labels, i = _label_list(tokens, i + 1, expr)
            found.grouping |= labels
            continue
        if kind == "ident" and text.lower() in _AGGREGATIONS and following[1].lower() in ("by", "without"):
            labels, i = _label_list(tokens, i + 2, expr)  # sum by (a) (...): the labels come first
            found.grouping |= labels
            if i >= len(tokens) or tokens[i] != ("op", "("):
                raise ValueError(f"{text} by (...) must be followed by its argument in {expr!r}")
            calls.append(text)
            i += 1
            continue
        if kind == "ident" and following == ("op", "("):
            calls.append(text)
            i += 2
            continue
        if kind == "ident" and text.lower() not in _KEYWORDS:
            labels = set()
            if following == ("op", "{"):
                labels, i = _matchers(tokens, i + 1, expr)
            else:
                i += 1
            found.series.setdefault(text, set()).update(labels)
            if calls and calls[-1] in _RATES:
                found.rated.add(text)
            continue
        if (kind, text) == ("op", "{"):
            raise ValueError(f"a selector without a metric name in {expr!r}")
        if (kind, text) == ("op", "("):
            calls.append("")
        elif (kind, text) == ("op", ")"):
            if not calls:
                raise ValueError(f"unbalanced ')' in {expr!r}")
            calls.pop()
        i += 1
    if calls:
        raise ValueError(f"unbalanced '(' in {expr!r}")
    return found


@dataclass(frozen=True)
class Exported:
    """One sample name of a scrape: its family's type and every label name seen on it."""

    type: str
    labels: frozenset[str]


def exported(exposition: str) -> dict[str, Exported]:
    """Every sample name of a Prometheus text exposition (``tts_x_total``, ``tts_y_bucket``, ...)."""
    out: dict[str, Exported] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            seen = out.get(sample.name, Exported(family.type, frozenset()))
            out[sample.name] = Exported(family.type, seen.labels | frozenset(sample.labels))
    return out


def check(expr: str, scrape: dict[str, Exported], extra_labels: Iterable[str] = ()) -> list[str]:
    """What ``expr`` uses that the scrape lacks, or uses wrongly; empty when all is well.

    Args:
        expr: The PromQL expression.
        scrape: :func:`exported` of a real ``/metrics``.
        extra_labels: Labels the expression's context adds (none in a plain expression).
    """
    found = uses(expr)
    problems = []
    known_labels = set(TARGET_LABELS) | set(extra_labels)
    for name, labels in found.series.items():
        if name in _PROMETHEUS_SERIES:
            have: frozenset[str] = TARGET_LABELS
        elif name not in scrape:
            problems.append(f"{name}: not exported by /metrics")
            continue
        else:
            have = scrape[name].labels | TARGET_LABELS
            known_labels |= scrape[name].labels
            if name in found.rated and not name.endswith(_RATEABLE.get(scrape[name].type, ())):
                problems.append(f"{name}: a {scrape[name].type} sample read by rate/increase")
        problems += [f"{name}: no label {label!r}" for label in sorted(labels - have)]
    problems += [
        f"grouping by {label!r}: no series of the expression has it" for label in found.grouping - known_labels
    ]
    return problems
