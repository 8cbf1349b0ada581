"""Scenario files and the check grammar, without a lab: parsing, errors with lines, every operator, measuring."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import LabError
from lab.scenario import ScenarioError, find_scenario, list_scenarios, load_scenario
from lab.scenario.checks import CheckSyntaxError, Measured, evaluate, parse_check
from lab.scenario.format import parse_scenario
from lab.scenario.measure import Facts, interval, measure
from lab.scenario.runner import describe, load_args
from tests.support import meshlab

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "topologies" / "scenarios"

GOOD = """\
name: demo
title: A demo
topology: bookinfo
explain: |
  Why this matters.
steps:
  - say: hello
  - mode: {namespace: bookinfo, mode: ambient}
  - waypoint: {namespace: bookinfo, enabled: true}
  - apply: {namespace: bookinfo, yaml: "kind: X"}
  - fault: {add: abort, target: ratings, params: {status: 500, percentage: 50}, ttl: 30s, name: boom}
  - load: {target: productpage:9080/productpage, from: sleep, n: 10, headers: ["end-user:jason"]}
    note: A load run.
    expect:
      - load.codes.200 at_least 95%
      - reviews->ratings error_rate between 0.45 and 0.55
      - usage proxies rss_mb above 0 as before
  - fault: {remove: boom}
  - wait: 2s
  - wait: {until: usage sidecar_rss_mb above $before, timeout: 10}
  - delete: {kind: PeerAuthentication, name: default, namespace: bookinfo}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as e:
        parse_scenario(text, "bad.yaml")
    return [str(p) for p in e.value.problems]


# ---------------------------------------------------------------- the file format


def test_a_good_scenario_parses_into_steps_and_checks() -> None:
    s = parse_scenario(GOOD, "demo.yaml")
    assert (s.name, s.title, s.explain, s.topology, s.providers) == ("demo", "A demo", "Why this matters.",
                                                                     "bookinfo", ("local",))
    assert [st.kind for st in s.steps] == ["say", "mode", "waypoint", "apply", "fault", "load", "fault", "wait",
                                           "wait", "delete"]
    load = s.steps[5]
    assert load.line == 12 and load.note == "A load run." and load.needs_traffic
    assert load.spec["n"] == 10 and load.spec["headers"] == ["end-user:jason"]
    assert [c.quantity.subject for c in load.expect] == ["load", "edge", "usage"]
    assert s.steps[4].spec["params"] == {"status": "500", "percentage": "50"} and s.steps[4].spec["ttl"] == 30
    assert s.steps[7].spec["seconds"] == 2 and s.steps[8].spec["until"].quantity.args == ("sidecar",)
    assert s.checks == 4


@pytest.mark.parametrize("text, expected", [
    ("name: x\n", ["missing required field 'title'", "missing required field 'explain'"]),
    (GOOD.replace("mode: ambient", "mode: sidecars"), ["steps[1].mode.mode: unknown mode 'sidecars'", "(bad.yaml:8)"]),
    (GOOD.replace("  - say: hello", "  - sya: hello"), ["steps[0].sya: unknown field 'sya'; did you mean 'say'?",
                                                       "a step has exactly one kind", ":7)"]),
    (GOOD.replace("at_least 95%", "atleast 95%"), ["steps[5].expect[0]: 'load.codes.200 atleast 95%': no operator",
                                                   "(bad.yaml:15)"]),
    (GOOD.replace("error_rate between", "eror_rate between"), ["unknown edge metric 'eror_rate'", ":16)"]),
    (GOOD.replace("$before", "$later"), ["$later is not remembered by an earlier check", ":20)"]),
    (GOOD.replace("remove: boom", "remove: bang"), ["no earlier fault step is named 'bang'", ":18)"]),
    (GOOD.replace("from: sleep, n: 10,", "from: sleep,"), ["a load step is bounded", ":12)"]),
    (GOOD.replace("n: 10", "n: ten"), ["steps[5].load.n: expected an integer, got a string 'ten'"]),
    (GOOD.replace("wait: 2s", "wait: soon"), ["steps[7].wait: expected a duration", ":19)"]),
    (GOOD.replace("wait: 2s", "wait: 2h"), ["longer than a workshop step may take"]),
    (GOOD.replace('["end-user:jason"]', '["end-user"]'), ["header 'end-user': want NAME:VALUE"]),
    (GOOD.replace("  - say: hello", "  - say: hello\n    mode: {namespace: b, mode: none}"),
     ["a step has exactly one kind (say, apply, ...", "found say, mode"]),
    (GOOD.replace("name: demo", "name: Demo!"), ["name: invalid scenario name 'Demo!'", ":1)"]),
    ("name: [unclosed\n", ["invalid YAML"]),
    ("", ["the file is empty"]),
])
def test_bad_scenarios_name_the_field_and_line(text: str, expected: list[str]) -> None:
    found = "\n".join(problems(text))
    for e in expected:
        if "..." in e:
            e = e.split("...")[0]
        assert e in found, found


def test_relative_files_are_checked_against_the_scenario_folder(tmp_path: Path) -> None:
    (tmp_path / "vs.yaml").write_text("kind: VirtualService\n")
    (tmp_path / "topo.yaml").write_text("name: t\n")
    text = GOOD.replace("topology: bookinfo", "topology: topo.yaml").replace(
        'apply: {namespace: bookinfo, yaml: "kind: X"}', "apply: {files: [vs.yaml, missing.yaml]}")
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert [str(p) for p in e.value.problems] == [
        f"steps[3].apply.files[1]: no such file {tmp_path}/missing.yaml (s.yaml:10)"]
    path.write_text(text.replace(", missing.yaml", ""))
    s = load_scenario(path)
    assert s.topology == str(tmp_path / "topo.yaml") and s.steps[3].spec["files"] == [str(tmp_path / "vs.yaml")]


def test_the_shipped_scenarios_are_valid_and_found_by_name_or_number() -> None:
    paths = list_scenarios()
    assert [p.stem for p in paths] == ["1-mtls", "2-sidecar-vs-ambient", "3-traffic-shifting",
                                       "4-faults-and-timeouts", "5-circuit-breaking", "6-authorization"]
    for p in paths:
        s = load_scenario(p)
        assert s.checks >= 8 and s.explain and Path(s.topology).is_file(), p
    assert find_scenario("mtls") == find_scenario("1") == find_scenario("1-mtls") == paths[0]
    with pytest.raises(LabError, match="no scenario 'nope'.*shipped: 1-mtls"):
        find_scenario("nope")


def test_cli_validate_and_list() -> None:
    out = meshlab("scenario", "list").stdout
    assert "1-mtls" in out and "local, docker" in out and "6-authorization" in out
    assert "valid (13 steps" in meshlab("scenario", "validate", "mtls").stdout


def test_cli_reports_a_bad_scenario_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("at_least 95%", "at_least lots"))
    proc = meshlab("scenario", "run", str(bad), check=False)
    assert proc.returncode == 2
    assert "invalid scenario: 1 error(s)" in proc.stderr
    assert "at_least needs a number, got 'lots' (bad.yaml:15)" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = meshlab("scenario", "validate", str(bad), check=False)
    assert proc.returncode == 2 and "bad.yaml:15" in proc.stderr


def test_steps_describe_themselves_and_loads_are_bounded() -> None:
    s = parse_scenario(GOOD, "demo.yaml")
    assert describe(s.steps[1]) == "mode bookinfo -> ambient"
    assert describe(s.steps[4]) == "fault add abort on ratings status=500 percentage=50"
    assert describe(s.steps[5]) == "load GET productpage:9080/productpage from sleep n=10 -H end-user:jason"
    assert describe(s.steps[8]) == "wait until usage sidecar_rss_mb above $before (at most 10s)"
    args = load_args(s.steps[5].spec)
    assert args[args.index("-n") + 1] == "10" and args[args.index("--duration") + 1] == "120s"


# ---------------------------------------------------------------- the check grammar


@pytest.mark.parametrize("text, subject, args, metric", [
    ("reviews->ratings error_rate between 0.45 and 0.55", "edge", ("reviews", "ratings"), "error_rate"),
    ("edge productpage->details security is mutual_tls", "edge", ("productpage", "details"), "security"),
    ("edge a -> b codes.5xx above 0", "edge", ("a", "b"), "codes.5xx"),
    ("load.codes.200 at_least 95%", "load", (), "codes.200"),
    ("load.latency_ms.p99 below 1000", "load", (), "latency_ms.p99"),
    ("body_matches 'Ratings service is currently unavailable' equals 100%", "load", (),
     "body_matches.Ratings service is currently unavailable"),
    ("usage sidecar_rss_mb above 10", "usage", ("sidecar",), "rss_mb"),
    ("usage proxies cpu_s at_most 100", "usage", ("proxies",), "cpu_s"),
    ("certs bookinfo-reviews count equals 2", "certs", ("bookinfo-reviews",), "count"),
    ("result.restarted equals 7", "result", (), "restarted"),
])
def test_check_quantities(text: str, subject: str, args: tuple, metric: str) -> None:
    q = parse_check(text).quantity
    assert (q.subject, q.args, q.metric) == (subject, args, metric)


@pytest.mark.parametrize("text, message", [
    ("load.codes.200 95%", "no operator"),
    ("above 3", "nothing to measure"),
    ("reviews->ratings error_rate between 0.55 and 0.45", "the first value is the larger"),
    ("reviews->ratings error_rate between 0.45", "between takes two values"),
    ("reviews->ratings error_rate between 45% and 0.55", "both values as percentages"),
    ("reviews->ratings security above 3", "is a word: compare it with is or is_not"),
    ("reviews->ratings p99_ms is fast", "is a number"),
    ("reviews->ratings p99_ms below 10%", "a percentage means nothing"),
    ("reviews-> p99_ms below 10", "want SRC->DST"),
    ("load.speed above 1", "unknown load field 'speed'"),
    ("usage envoy rss_mb above 1", "unknown role 'envoy'"),
    ("usage sidecar heap_mb above 1", "unknown usage metric"),
    ("certs x holders equals 1", "certs takes an identity and 'count'"),
    ("frobs above 1", "unknown quantity"),
    ("load.count above 1 as 9x", "a name is letters"),
    ("load.count above 1 2", "above takes one value"),
    ("body_matches 'unclosed equals 1", "cannot split into words"),
])
def test_check_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(CheckSyntaxError, match=message.replace("(", r"\(").replace("?", r"\?")):
        parse_check(text)


@pytest.mark.parametrize("text, value, whole, passed, shown", [
    ("load.count above 10", 11, None, True, "11"),
    ("load.count above 10", 10, None, False, "10"),
    ("load.count below 10", 9, None, True, "9"),
    ("load.count at_least 10", 10, None, True, "10"),
    ("load.count at_most 10", 10.5, None, False, "10.5"),
    ("load.count equals 10", 10, None, True, "10"),
    ("load.codes.200 at_least 95%", 96, 100, True, "96.0% (96 of 100)"),
    ("load.codes.200 at_least 95%", 94, 100, False, "94.0% (94 of 100)"),
    ("load.codes.200 equals 100%", 0, 0, False, "0 of no requests"),
    ("a->b error_rate between 0.45 and 0.55", 0.5, None, True, "0.5"),
    ("a->b error_rate between 0.45 and 0.55", 0.44, None, False, "0.44"),
    ("a->b error_rate between 45% and 55%", 0.55, None, True, "55.0%"),
    ("a->b p99_ms below 1000", 999.94, None, True, "999.9 ms"),
])
def test_numeric_operators(text: str, value: float, whole: float | None, passed: bool, shown: str) -> None:
    check = parse_check(text)
    unit = "ms" if "ms" in text else ""
    outcome = evaluate(check, Measured(value, whole, unit), {})
    assert (outcome.passed, outcome.measured) == (passed, shown)


def test_word_operators_missing_values_and_remembered_values() -> None:
    is_mtls, not_mtls = parse_check("a->b security is mutual_tls"), parse_check("a->b security is_not mutual_tls")
    assert evaluate(is_mtls, Measured("mutual_tls"), {}).passed
    assert not evaluate(is_mtls, Measured("none"), {}).passed
    assert evaluate(not_mtls, Measured("none"), {}).passed
    missing = evaluate(is_mtls, Measured(None, missing="no traffic on a->b"), {})
    assert (missing.passed, missing.measured) == (False, "no traffic on a->b")
    above = parse_check("usage proxies rss_mb above $ambient")
    assert evaluate(above, Measured(300.0, unit="MiB"), {"ambient": 150.0}).passed
    assert not evaluate(above, Measured(100.0, unit="MiB"), {"ambient": 150.0}).passed
    unknown = evaluate(above, Measured(100.0), {})
    assert not unknown.passed and "$ambient has no value" in unknown.measured


# ---------------------------------------------------------------- measuring


WORKLOADS = {"productpage-v1": {"service": "productpage", "app": "productpage"},
             "reviews-v1": {"service": "reviews", "app": "reviews"},
             "reviews-v2": {"service": "reviews", "app": "reviews"},
             "ratings-v1": {"service": "ratings", "app": "ratings"}}


def edge(src: str, dst: str, requests: float, codes: dict, errors: float = 0, p99: float | None = None,
         security: str = "mutual_tls", conns: float = 0) -> dict:
    return {"source": src, "destination": dst, "service": f"{dst.split('-')[0]}.bookinfo.svc.cluster.local",
            "security": security, "requests": requests, "errors": errors, "codes": codes, "connectionsOpened": conns,
            "p50": p99, "p99": p99}


def test_edge_figures_cover_only_the_step() -> None:
    before = {"edges": [edge("reviews-v2", "ratings-v1", 100, {"200": 100}), edge("productpage-v1", "reviews-v1", 5,
                                                                                   {"200": 5})]}
    after = {"edges": [edge("reviews-v2", "ratings-v1", 200, {"200": 150, "500": 50}, errors=50, p99=20.0),
                       edge("productpage-v1", "reviews-v1", 5, {"200": 5}, p99=3.0),
                       edge("productpage-v1", "reviews-v2", 10, {"200": 10}, p99=40.0)]}
    facts = Facts(edges=interval(before, after), workloads=WORKLOADS)

    def m(text: str) -> Measured:
        return measure(parse_check(text).quantity, facts)

    assert m("reviews->ratings requests equals 0") == Measured(100.0)
    assert m("reviews->ratings error_rate equals 0").value == 0.5
    assert m("reviews-v2->ratings codes.500 above 0") == Measured(50.0, 100.0)
    assert m("reviews->* codes.5xx above 0") == Measured(50.0, 100.0)
    assert m("productpage->reviews requests above 0") == Measured(10.0)  # reviews-v1 saw nothing new
    assert m("productpage->reviews p99_ms below 1").value == 40.0
    assert m("* -> ratings security is mutual_tls").value == "mutual_tls"
    assert m("productpage->ratings security is none").value is None
    assert m("productpage->ratings error_rate equals 0").value is None


def test_edge_security_of_mixed_edges_and_tcp_only_edges() -> None:
    after = {"edges": [edge("sleep", "productpage-v1", 0, {}, security="none", conns=3),
                       edge("unknown", "productpage-v1", 0, {}, security="mutual_tls", conns=2)]}
    facts = Facts(edges=interval(None, after), workloads=WORKLOADS)
    assert measure(parse_check("*->productpage security is none").quantity, facts).value == "mixed(mutual_tls,none)"
    assert measure(parse_check("*->productpage connections equals 5").quantity, facts).value == 5


def test_load_usage_certs_and_result_quantities() -> None:
    load = {"count": 50, "qps": 10.0, "codes": {"200": 45, "503": 4, "504": 1}, "body_matches": {"reviews-v1": 50},
            "latency_ms": {"p50": 10.0, "p99": 90.0}, "errors": {}}
    usage = [{"role": "ztunnel", "rssBytes": 50 * 2**20, "cpuSeconds": 1.0},
             {"role": "sidecar", "rssBytes": 40 * 2**20, "cpuSeconds": 0.5},
             {"role": "workload", "rssBytes": 20 * 2**20, "cpuSeconds": 0.1}]
    certs = [{"identity": "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"}] * 2
    facts = Facts(load=load, result={"restarted": ["a", "b"], "previous": "none", "changed": True},
                  usage=lambda: usage, certs=lambda: certs)

    def m(text: str) -> Measured:
        return measure(parse_check(text).quantity, facts)

    assert m("load.codes.5xx equals 5") == Measured(5.0, 50.0)
    assert m("load.codes.404 equals 0") == Measured(0.0, 50.0)
    assert m("body_matches reviews-v3 equals 0") == Measured(0.0, 50.0)
    assert (m("load.latency_ms.p99 below 100").value, m("load.latency_ms.p99 below 100").unit) == (90.0, "ms")
    assert m("load.latency_ms.p42 below 100").value is None
    assert m("load.qps above 1") == Measured(10.0)
    assert (m("usage proxies rss_mb above 1").value, m("usage proxies rss_mb above 1").unit) == (90.0, "MiB")
    assert m("usage sidecar count equals 1") == Measured(1.0)
    assert m("usage waypoint rss_mb above 1").value is None
    assert m("certs bookinfo-reviews count equals 2") == Measured(2.0)
    assert m("certs ns/bookinfo/sa/bookinfo-ratings count equals 0") == Measured(0.0)
    assert m("result.restarted equals 2") == Measured(2.0)
    assert m("result.previous is none").value == "none"
    assert m("result.changed equals 1") == Measured(1.0)
    assert m("result.nothing equals 1").value is None
    assert measure(parse_check("load.count above 0").quantity, Facts()).missing == "no load run yet"
