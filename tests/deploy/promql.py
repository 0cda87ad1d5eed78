"""Just enough PromQL lexing to find the metric names and label names an expression uses.

Not a parser: it strips what cannot be a metric name (strings, label matchers, grouping clauses,
durations, numbers, template variables) and keeps the identifiers that are not followed by "(".
Good enough for the dashboards and rules of this repository; tests/deploy/test_static.py checks
those names against what service/metrics.py exports.
"""

from __future__ import annotations

import re

KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")
_IDENT = re.compile(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)(?![A-Za-z0-9_:])(?!\s*\()")
_DURATION = re.compile(r"(?<![A-Za-z0-9_])(?:\d+(?:ms|s|m|h|d|w|y))+(?![A-Za-z0-9_])")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_])\d+(?:\.\d+)?(?:e[+-]?\d+)?")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


def _without_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def metric_selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names in its {...} matcher) for every metric named in ``expr``."""
    text = _VARIABLE.sub("1", _without_strings(expr))
    matchers: list[set[str]] = []

    def keep(m: re.Match[str]) -> str:
        matchers.append(set(_MATCHER_LABEL.findall(m.group(1))))
        return f"@{len(matchers) - 1}@"

    text = _RANGE.sub(" ", text)
    text = _DURATION.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    text = _MATCHERS.sub(keep, text)
    text = _GROUPING.sub(" ", text)
    out: list[tuple[str, set[str]]] = []
    for m in _IDENT.finditer(text):
        name = m.group(1)
        if name.lower() in KEYWORDS:
            continue
        rest = text[m.end() :]
        sel = re.match(r"\s*@(\d+)@", rest)
        out.append((name, matchers[int(sel.group(1))] if sel else set()))
    return out


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in metric_selectors(expr)}


def grouping_labels(expr: str) -> set[str]:
    """Label names used in by/without/on/ignoring/group_* clauses."""
    labels: set[str] = set()
    for m in _GROUPING.finditer(_without_strings(expr)):
        labels |= {p.strip() for p in m.group(2).split(",") if p.strip()}
    return labels
