"""Every alert and dashboard query parses, and uses only metrics that layerwatch exports.

promtool proves that each expression is valid PromQL (all of them go into a temporary rules file
as recording rules). A small lexer then lists the metric names each one selects; they must be in
the set of names layerwatch exports. That set comes from a live ``/metrics`` text when the
LIVE-SCRAPE HOOK below is wired, and from tests/spec_metrics.py until then.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from monitoring_support import DASHBOARD_FILE, run_promtool
from tests.spec_metrics import SPEC_METRIC_FAMILIES

# Series Prometheus itself makes for every scrape target (used by LayerwatchDown).
PROMETHEUS_SERIES = frozenset({"up"})

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def family_series_names(family: str, metric_type: str) -> set[str]:
    """The series names a metric family of this type exposes (``x_total``, ``x_bucket``, ...)."""
    if metric_type == "counter":
        family = family.removesuffix("_total")
    elif metric_type == "info":
        family = family.removesuffix("_info")
    return {family + suffix for suffix in _SUFFIXES.get(metric_type, ("",))}


def metric_names_from_exposition(text: str) -> frozenset[str]:
    """Series names in a Prometheus or OpenMetrics text exposition.

    Families declared by ``# TYPE`` count even without samples (a labelled metric nobody has
    observed yet), expanded to the series names their type produces; sample lines add their own
    names.
    """
    names: set[str] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line == "# EOF":
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                names |= family_series_names(parts[2], parts[3].lower())
            continue
        match = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
        if match:
            names.add(match.group(0))
    return frozenset(names)


SPEC_METRIC_NAMES = frozenset(
    name for family, metric_type in SPEC_METRIC_FAMILIES for name in family_series_names(family, metric_type)
)


def live_exposition() -> str:
    """The text of a running layerwatch's /metrics.

    Starts ``layerwatch serve`` on a free port against the local registry chain with one healthy
    and one broken artifact (tests/serve_harness.py), waits until every target has a completed
    check, GETs ``/metrics`` and stops everything again. ``make test`` installs the lab's tools;
    without them this fails rather than falling back to a list that could drift from the code.
    """
    from tests.serve_harness import missing_tools, running_serve

    missing = missing_tools()
    if missing is not None:
        pytest.fail(f"the live scrape needs {missing} (make deps)", pytrace=False)
    with running_serve(interval="2s") as lab:
        return lab.metrics()


@pytest.fixture(scope="session")
def exported_metric_names() -> frozenset[str]:
    """Series names the expressions may use: what a running layerwatch really exports."""
    return metric_names_from_exposition(live_exposition()) | PROMETHEUS_SERIES


# --- collecting expressions --------------------------------------------------------------------

GRAFANA_SUBSTITUTIONS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's built-in and template variables so that the query is plain PromQL.

    Template variables only appear inside regex matchers in the dashboard, so ``.*`` keeps the
    query valid.
    """
    for variable, value in GRAFANA_SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?[A-Za-z_]\w*(?::\w+)?\}?", ".*", expr)


def _walk_panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels", []))


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable of the dashboard."""
    found = []
    for panel in _walk_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append((f"panel {panel['title']!r} {target.get('refId')}", target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text, flags=re.DOTALL)
        if match is None:
            found.append((f"variable {variable['name']}", text))
        else:
            found.append((f"variable {variable['name']}", match.group(1)))
    return [(where, grafana_to_promql(expr)) for where, expr in found]


def alert_expressions(rules: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every rule of the rules file."""
    return [
        (f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


# --- finding metric names in PromQL --------------------------------------------------------------

_LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = _LABEL_LIST_KEYWORDS | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
_AGGREGATORS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)
_TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      |(?P<comment>\#[^\n]*)
      |(?P<number>\d[\w.]*|\.\d\w*)
      |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
      |(?P<punct>[(){}\[\],])
      |(?P<other>\S)""",
    re.VERBOSE,
)


def metric_names_in(expr: str) -> set[str]:
    """Metric names selected by a (valid) PromQL expression.

    Skips label names inside ``{...}`` and in ``by``/``without``/``on``/``ignoring``/``group_*``
    lists, function and aggregation names, keywords, numbers and durations; adds
    ``{__name__="..."}`` values.
    """
    names = set(re.findall(r"__name__\s*=\s*\"([^\"]+)\"", expr))
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    tokens = [(kind, text) for kind, text in tokens if kind != "comment"]
    braces = 0
    label_list_depth: int | None = None
    parens = 0
    for index, (kind, text) in enumerate(tokens):
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if kind == "punct":
            if text == "{":
                braces += 1
            elif text == "}":
                braces -= 1
            elif text == "(":
                parens += 1
            elif text == ")":
                parens -= 1
                if label_list_depth is not None and parens < label_list_depth:
                    label_list_depth = None
            continue
        if kind != "ident" or braces or label_list_depth is not None:
            continue
        lowered = text.lower()
        if lowered in _LABEL_LIST_KEYWORDS:
            if following == "(":
                label_list_depth = parens + 1
            continue
        if lowered in _KEYWORDS or text in _AGGREGATORS or following == "(":
            continue
        names.add(text)
    return names


# --- tests -----------------------------------------------------------------------------------------


def _all_expressions(rules: dict[str, Any]) -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    return alert_expressions(rules) + dashboard_expressions(dashboard)


@pytest.mark.prometheus
def test_promtool_parses_every_alert_and_dashboard_expression(
    promtool: str, rules: dict[str, Any], tmp_path: Path
) -> None:
    expressions = _all_expressions(rules)
    recording = {
        "groups": [
            {
                "name": "layerwatch-expression-check",
                "rules": [
                    {"record": f"layerwatch_expression_check:{index}", "expr": expr}
                    for index, (_, expr) in enumerate(expressions)
                ],
            }
        ]
    }
    path = tmp_path / "expressions.rules.yaml"
    path.write_text(yaml.safe_dump(recording, sort_keys=False))
    listing = "\n".join(f"{index}: {where}: {expr}" for index, (where, expr) in enumerate(expressions))
    result = run_promtool(promtool, "check", "rules", str(path))
    assert f"SUCCESS: {len(expressions)} rules found" in result.stdout, listing


def test_every_expression_uses_only_exported_metrics(
    rules: dict[str, Any], exported_metric_names: frozenset[str]
) -> None:
    unknown = {
        where: sorted(metric_names_in(expr) - exported_metric_names)
        for where, expr in _all_expressions(rules)
        if metric_names_in(expr) - exported_metric_names
    }
    assert not unknown, f"expressions use metrics layerwatch does not export: {unknown}"


def test_every_expression_selects_some_layerwatch_metric(rules: dict[str, Any]) -> None:
    """Guards the lexer: an expression in which it finds no metric would pass vacuously."""
    for where, expr in _all_expressions(rules):
        assert any(name.startswith("layerwatch_") or name == "up" for name in metric_names_in(expr)), where


def test_dashboard_and_alerts_together_use_every_spec_metric(rules: dict[str, Any]) -> None:
    used = set().union(*(metric_names_in(expr) for _, expr in _all_expressions(rules)))
    families = {family for family, _ in SPEC_METRIC_FAMILIES}
    unused = {
        family
        for family, metric_type in SPEC_METRIC_FAMILIES
        if not family_series_names(family, metric_type) & used
    }
    assert not unused, f"exported metrics shown nowhere: {sorted(unused)} of {sorted(families)}"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('max by (chain, hop) (layerwatch_hop_up{chain=~"a|b", hop!="x"}) == 0', {"layerwatch_hop_up"}),
        (
            "histogram_quantile(0.95, sum by (le) (rate(layerwatch_check_duration_seconds_bucket[5m])))",
            {"layerwatch_check_duration_seconds_bucket"},
        ),
        (
            "a > on (chain) group_left (hop) 3 * max without (instance) (b offset 5m) unless ignoring (x) c",
            {"a", "b", "c"},
        ),
        ('absent(up{job="layerwatch"} == 1)', {"up"}),
        ('count({__name__="layerwatch_build_info"}) or vector(0)', {"layerwatch_build_info"}),
        ("sum(rate(x_total[1h30m] @ start()))  # comment naming not_a_metric", {"x_total"}),
        ("time() - ts > 3 * 300 and bool inf", {"ts"}),
    ],
)
def test_metric_names_in_finds_selected_metrics_only(expr: str, expected: set[str]) -> None:
    assert metric_names_in(expr) == expected


def test_grafana_variables_become_plain_promql() -> None:
    query = 'rate(x{chain=~"$chain", hop=~"${hop}", ns=~"${namespace:regex}"}[$__rate_interval])'
    assert grafana_to_promql(query) == 'rate(x{chain=~".*", hop=~".*", ns=~".*"}[5m])'


def test_metric_names_from_exposition_reads_client_python_output() -> None:
    """A real client_python exposition of every promised family yields exactly its series names."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    class SpecCollector:
        def collect(self) -> Iterator[Metric]:
            for family, metric_type in SPEC_METRIC_FAMILIES:
                if metric_type == "counter":
                    counter = CounterMetricFamily(family, "help", labels=["chain"])
                    counter.add_metric(["corp"], 1.0, created=1.0)
                    yield counter
                elif metric_type == "histogram":
                    histogram = HistogramMetricFamily(family, "help", labels=["chain"])
                    histogram.add_metric(["corp"], [("1.0", 1.0), ("+Inf", 2.0)], 3.0)
                    yield histogram
                else:
                    yield GaugeMetricFamily(family, "help", labels=["chain"])  # declared, no samples

    registry = prometheus_client.CollectorRegistry()
    registry.register(SpecCollector())
    for text in (
        prometheus_client.generate_latest(registry).decode(),
        generate_openmetrics(registry).decode(),
    ):
        assert metric_names_from_exposition(text) == SPEC_METRIC_NAMES


def test_live_exposition_exports_every_spec_metric(exported_metric_names: frozenset[str]) -> None:
    assert not SPEC_METRIC_NAMES - exported_metric_names
