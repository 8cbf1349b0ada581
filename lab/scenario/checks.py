"""The check grammar of scenario `expect:` lines: parsed once (with the scenario), evaluated on measurements.

One check is one line, read as words (quote a word with spaces):

    QUANTITY OPERATOR VALUE [and VALUE] [as NAME]

QUANTITY (see `lab.scenario.measure` for how each is measured)
    [edge] SRC->DST METRIC   traffic on an edge during the step: requests, errors, error_rate, codes.503
                             (codes.5xx for a class), p50_ms, p99_ms, connections, security
    load.PATH                the last load run's report: load.count, load.qps, load.codes.200,
                             load.latency_ms.p99, load.body_matches.TEXT, load.errors.REASON
    body_matches TEXT        short for load.body_matches.TEXT
    usage ROLE METRIC        processes of a role (ztunnel, sidecar, waypoint, workload, or proxies for the
                             three proxy roles): rss_mb, cpu_s, count; `usage sidecar_rss_mb` also reads
    certs IDENTITY count     certificates in use for an identity (a SPIFFE ID, ns/NS/sa/SA or an SA name)
    result.PATH              the step's own answer, e.g. result.restarted (a list: its length)

OPERATOR: above, below, at_least, at_most, equals, between (VALUE and VALUE, inclusive) for numbers;
is, is_not for words (`security is mutual_tls`).

VALUE: a number (`1000`, `0.5`), a percentage (`95%`: of the requests for counts, of 1 for
error_rate), a word, or `$NAME`, a value an earlier check remembered with `as NAME`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

NUMERIC_OPS = {"above": ">", "below": "<", "at_least": ">=", "at_most": "<=", "equals": "==", "between": "in"}
WORD_OPS = {"is": "is", "is_not": "is not"}
OPERATORS = {**NUMERIC_OPS, **WORD_OPS}

# What each metric measures: count (has a whole, so % is a share of it), fraction, number, word, any.
EDGE_METRICS = {"requests": "number", "errors": "count", "error_rate": "fraction", "p50_ms": "number",
                "p99_ms": "number", "connections": "number", "security": "word"}
LOAD_FIELDS = {"count": "number", "qps": "number", "duration_s": "number", "bytes_received": "number"}
LOAD_GROUPS = {"codes": "count", "body_matches": "count", "errors": "count", "latency_ms": "number"}
USAGE_METRICS = {"rss_mb": "number", "cpu_s": "number", "count": "number"}
USAGE_ROLES = ("ztunnel", "sidecar", "waypoint", "workload", "proxies")
CERT_METRICS = {"count": "number"}
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)\Z")


class CheckSyntaxError(ValueError):
    """A check line that does not follow the grammar; the message says what was expected."""


@dataclass(frozen=True)
class Quantity:
    """What a check measures: `subject` (edge, load, usage, certs, result), its arguments, the metric."""

    subject: str
    args: tuple[str, ...]  # edge: (src, dst); usage: (role,); certs: (identity,); load/result: ()
    metric: str  # edge/usage/certs: a metric name; load/result: a dotted path
    kind: str  # count, fraction, number, word, any

    def __str__(self) -> str:
        if self.subject == "edge":
            return f"{self.args[0]}->{self.args[1]} {self.metric}"
        if self.subject in ("load", "result"):
            return f"{self.subject}.{self.metric}"
        return f"{self.subject} {self.args[0]} {self.metric}"


@dataclass(frozen=True)
class Value:
    """An expected value: a number (maybe a percentage), a word, or a remembered value `$name`."""

    number: float | None = None
    percent: bool = False
    word: str | None = None
    ref: str | None = None

    def __str__(self) -> str:
        if self.ref:
            return f"${self.ref}"
        if self.word is not None:
            return self.word
        return f"{self.number:g}%" if self.percent else f"{self.number:g}"


@dataclass(frozen=True)
class Check:
    text: str  # as written
    quantity: Quantity
    op: str
    values: tuple[Value, ...]
    remember: str | None = None  # `as NAME`

    @property
    def needs_traffic(self) -> bool:
        return self.quantity.subject == "edge"


def parse_check(text: str) -> Check:
    """One check line; raises CheckSyntaxError naming what is wrong."""
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise CheckSyntaxError(f"cannot split into words: {e}") from None
    remember = None
    if len(words) >= 2 and words[-2] == "as":
        remember = words[-1]
        if not NAME.match(remember):
            raise CheckSyntaxError(f"'as {remember}': a name is letters, digits and '_'")
        words = words[:-2]
    op_at = next((i for i, w in enumerate(words) if w in OPERATORS), None)
    if op_at is None:
        raise CheckSyntaxError(f"no operator; expected one of: {', '.join(OPERATORS)} "
                               f"(for example 'load.codes.200 at_least 95%')")
    quantity = parse_quantity(words[:op_at])
    op = words[op_at]
    values = parse_values(op, words[op_at + 1:])
    _check_types(quantity, op, values)
    return Check(text, quantity, op, values, remember)


def parse_quantity(words: list[str]) -> Quantity:
    if not words:
        raise CheckSyntaxError("nothing to measure before the operator (e.g. 'reviews->ratings error_rate')")
    head = words[0]
    if head == "edge":
        words = words[1:]
        head = words[0] if words else ""
    if "->" in head or (len(words) > 1 and words[1] == "->"):
        return _edge(words)
    if head.startswith(("load.", "result.")) or head in ("load", "result"):
        return _dotted(words)
    if head == "body_matches":
        if len(words) != 2:
            raise CheckSyntaxError("body_matches takes one text: body_matches reviews-v3 equals 100%")
        return Quantity("load", (), f"body_matches.{words[1]}", "count")
    if head == "usage":
        return _usage(words[1:])
    if head == "certs":
        if len(words) != 3 or words[2] not in CERT_METRICS:
            raise CheckSyntaxError("certs takes an identity and 'count': certs bookinfo-reviews count equals 2")
        return Quantity("certs", (words[1],), words[2], "number")
    raise CheckSyntaxError(f"unknown quantity '{' '.join(words)}'; expected SRC->DST METRIC, load.PATH, "
                           f"body_matches TEXT, usage ROLE METRIC, certs IDENTITY count or result.PATH")


def _edge(words: list[str]) -> Quantity:
    if len(words) >= 3 and words[1] == "->":  # `a -> b metric` written with spaces
        words = [words[0] + "->" + words[2], *words[3:]]
    src, _, dst = words[0].partition("->")
    if not src or not dst:
        raise CheckSyntaxError(f"edge '{words[0]}': want SRC->DST (workload or service names, or *)")
    if len(words) != 2:
        raise CheckSyntaxError(f"edge {words[0]}: want one metric after it ({', '.join(EDGE_METRICS)}, codes.NNN)")
    metric = words[1]
    if re.fullmatch(r"codes\.(\d{3}|[1-5]xx)", metric):
        return Quantity("edge", (src, dst), metric, "count")
    if metric not in EDGE_METRICS:
        raise CheckSyntaxError(f"unknown edge metric '{metric}'; expected one of: "
                               f"{', '.join(EDGE_METRICS)}, codes.NNN, codes.5xx")
    return Quantity("edge", (src, dst), metric, EDGE_METRICS[metric])


def _dotted(words: list[str]) -> Quantity:
    subject, _, path = " ".join(words).partition(".")
    if not path:
        raise CheckSyntaxError(f"{subject}: name a field, e.g. {subject}.codes.200" if subject == "load"
                               else "result: name a field, e.g. result.restarted")
    if subject == "result":
        return Quantity("result", (), path, "any")
    group, _, key = path.partition(".")
    if group in LOAD_FIELDS and not key:
        return Quantity("load", (), path, LOAD_FIELDS[group])
    if group in LOAD_GROUPS and key:
        return Quantity("load", (), path, LOAD_GROUPS[group])
    raise CheckSyntaxError(f"unknown load field '{path}'; expected {', '.join(LOAD_FIELDS)}, or "
                           f"{', '.join(g + '.KEY' for g in LOAD_GROUPS)}")


def _usage(words: list[str]) -> Quantity:
    if len(words) == 1:  # `sidecar_rss_mb`
        metric = next((m for m in USAGE_METRICS if words[0].endswith("_" + m)), None)
        words = [words[0][: -len(metric) - 1], metric] if metric else words
    if len(words) != 2:
        raise CheckSyntaxError("usage takes a role and a metric: usage sidecar rss_mb above 10")
    role, metric = words
    if role not in USAGE_ROLES:
        raise CheckSyntaxError(f"unknown role '{role}'; expected one of: {', '.join(USAGE_ROLES)}")
    if metric not in USAGE_METRICS:
        raise CheckSyntaxError(f"unknown usage metric '{metric}'; expected one of: {', '.join(USAGE_METRICS)}")
    return Quantity("usage", (role,), metric, USAGE_METRICS[metric])


def parse_values(op: str, words: list[str]) -> tuple[Value, ...]:
    if op == "between":
        if len(words) != 3 or words[1] != "and":
            raise CheckSyntaxError("between takes two values: between 0.45 and 0.55")
        low, high = parse_value(words[0]), parse_value(words[2])
        if low.percent != high.percent and low.ref is None and high.ref is None:
            raise CheckSyntaxError("between: give both values as percentages, or neither")
        if low.number is not None and high.number is not None and low.number > high.number:
            raise CheckSyntaxError(f"between {words[0]} and {words[2]}: the first value is the larger")
        return (low, high)
    if len(words) != 1:
        raise CheckSyntaxError(f"{op} takes one value" + (f", got '{' '.join(words)}'" if words else ""))
    return (parse_value(words[0]),)


def parse_value(word: str) -> Value:
    if word.startswith("$"):
        if not NAME.match(word[1:]):
            raise CheckSyntaxError(f"'{word}': a remembered name is letters, digits and '_'")
        return Value(ref=word[1:])
    text = word[:-1] if word.endswith("%") else word
    if NUMBER.match(text):
        return Value(number=float(text), percent=word.endswith("%"))
    return Value(word=word)


def _check_types(quantity: Quantity, op: str, values: tuple[Value, ...]) -> None:
    if op in WORD_OPS:
        if quantity.kind not in ("word", "any"):
            raise CheckSyntaxError(f"{quantity} is a number: compare it with {', '.join(NUMERIC_OPS)}")
        return
    if quantity.kind == "word":
        raise CheckSyntaxError(f"{quantity} is a word: compare it with is or is_not")
    for v in values:
        if v.word is not None:
            raise CheckSyntaxError(f"{op} needs a number, got '{v.word}'")
        if v.percent and quantity.kind not in ("count", "fraction"):
            raise CheckSyntaxError(f"{quantity} is not a count or a rate: a percentage means nothing for it")


# -- evaluation ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """A measured value: a number or a word, with the whole a count is a part of (for percentages)."""

    value: float | str | None  # None: nothing to measure (no requests, no load run yet)
    whole: float | None = None
    unit: str = ""
    missing: str = "no data"  # what to show when value is None


@dataclass(frozen=True)
class Outcome:
    check: Check
    passed: bool
    measured: str  # as shown to the learner
    value: float | str | None

    def to_json(self) -> dict[str, object]:
        return {"check": self.check.text, "passed": self.passed, "measured": self.measured, "value": self.value}


def evaluate(check: Check, measured: Measured, remembered: dict[str, float | str]) -> Outcome:
    """Compare a measured value with the check's expectation (pure)."""
    if measured.value is None:
        return Outcome(check, False, measured.missing, None)
    unknown = [v.ref for v in check.values if v.ref is not None and v.ref not in remembered]
    if unknown:
        return Outcome(check, False, f"${unknown[0]} has no value (the check that remembers it measured nothing)",
                       measured.value)
    if check.op in WORD_OPS:
        expected = _resolve_word(check.values[0], remembered)
        same = str(measured.value) == expected
        return Outcome(check, same == (check.op == "is"), str(measured.value), measured.value)
    if isinstance(measured.value, str):
        return Outcome(check, False, f"{measured.value} (not a number)", measured.value)
    value = float(measured.value)
    percent = any(v.percent for v in check.values)
    shown = _show(value, measured.unit)
    if percent:
        if check.quantity.kind == "fraction":
            value, shown = value * 100, f"{value * 100:.1f}%"
        elif not measured.whole:
            return Outcome(check, False, f"{_show(value, '')} of no requests", measured.value)
        else:
            shown = f"{value / measured.whole * 100:.1f}% ({value:g} of {measured.whole:g})"
            value = value / measured.whole * 100
    bounds = [_resolve_number(v, remembered) for v in check.values]
    return Outcome(check, _compare(value, check.op, bounds), shown, measured.value)


def _compare(value: float, op: str, bounds: list[float]) -> bool:
    eps = 1e-9
    if op == "above":
        return value > bounds[0]
    if op == "below":
        return value < bounds[0]
    if op == "at_least":
        return value >= bounds[0] - eps
    if op == "at_most":
        return value <= bounds[0] + eps
    if op == "equals":
        return abs(value - bounds[0]) <= eps
    return bounds[0] - eps <= value <= bounds[1] + eps


def _resolve_number(v: Value, remembered: dict[str, float | str]) -> float:
    if v.ref is None:
        return v.number if v.number is not None else float("nan")
    found = remembered[v.ref]
    return float(found) if not isinstance(found, str) else float("nan")  # a word never compares true


def _resolve_word(v: Value, remembered: dict[str, float | str]) -> str:
    if v.ref is None:
        return v.word if v.word is not None else f"{v.number:g}"
    return str(remembered[v.ref])


def _show(value: float, unit: str) -> str:
    """A number as a learner reads it: 3 decimals below 10 (an error rate), 1 above (milliseconds)."""
    text = f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    text = text.rstrip("0").rstrip(".") if "." in text else text
    return f"{text} {unit}".strip()
