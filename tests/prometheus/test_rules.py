"""The alert rules: valid for promtool, unit-tested, wrapped identically, and following conventions."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import pytest
import yaml
from monitoring_support import MONITORING, RULES_FILE, RULES_TEST_FILE, RUNBOOKS, run_promtool

RUNBOOK_BASE = "https://github.com/layerwatch/layerwatch/blob/main/docs/runbooks.md#"
SEVERITIES = {"critical", "warning", "info"}


def _duration_seconds(text: str) -> int:
    """Seconds in a Prometheus duration such as ``15m`` or ``1h30m``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)([smhd])", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"unsupported duration {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def _kind(fires: bool) -> str:
    return "firing" if fires else "not firing"


@pytest.mark.prometheus
def test_promtool_accepts_the_rules_file(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", str(RULES_FILE))


@pytest.mark.prometheus
def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", str(RULES_TEST_FILE))
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_non_firing_unit_test(alerts: list[dict[str, Any]]) -> None:
    cases: dict[str, set[bool]] = defaultdict(set)
    for test in yaml.safe_load(RULES_TEST_FILE.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases[case["alertname"]].add(bool(case.get("exp_alerts")))
    missing = {
        alert["alert"]: sorted({"firing", "not firing"} - {_kind(f) for f in cases[alert["alert"]]})
        for alert in alerts
        if cases[alert["alert"]] != {True, False}
    }
    assert not missing, f"alerts lacking unit test cases: {missing}"
    unknown = set(cases) - {alert["alert"] for alert in alerts}
    assert not unknown, f"unit tests name alerts that do not exist: {unknown}"


def test_prometheusrule_holds_exactly_the_rules_file(generate: Any, rules: dict[str, Any]) -> None:
    committed = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert committed["apiVersion"] == "monitoring.coreos.com/v1"
    assert committed["kind"] == "PrometheusRule"
    assert committed["spec"] == {"groups": rules["groups"]}


def test_prometheusrule_is_what_the_generator_writes(generate: Any) -> None:
    expected = generate.prometheus_rule_text(generate.load_rules())
    assert (MONITORING / "prometheusrule.yaml").read_text() == expected, (
        "prometheusrule.yaml is out of date: run python hack/dashboard/generate.py"
    )


def test_alert_names_are_unique_camel_case_with_the_layerwatch_prefix(alerts: list[dict[str, Any]]) -> None:
    names = [alert["alert"] for alert in alerts]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"Layerwatch(?:[A-Z][a-z0-9]*)+", name), name


def test_alerts_carry_severity_summary_description_and_runbook(alerts: list[dict[str, Any]]) -> None:
    for alert in alerts:
        name = alert["alert"]
        assert alert.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = alert.get("annotations", {})
        assert set(annotations) >= {"summary", "description", "runbook_url"}, name
        summary = annotations["summary"]
        assert summary.endswith(".") and "{{" not in summary, f"{name}: summary must be one static sentence"
        assert annotations["runbook_url"] == RUNBOOK_BASE + name.lower(), name


def test_alerts_wait_at_least_two_default_intervals(alerts: list[dict[str, Any]]) -> None:
    """A single failed check (one 5m interval) must never fire an alert on its own."""
    for alert in alerts:
        assert _duration_seconds(alert.get("for", "0s")) >= 2 * 300, alert["alert"]


def test_pages_are_per_hop_never_per_artifact(alerts: list[dict[str, Any]]) -> None:
    """Every alert that may page keeps neither namespace nor name: one page per broken hop."""
    for alert in alerts:
        if alert["labels"]["severity"] == "info":
            continue
        outermost = re.search(r"\b(?:by|without)\s*\(([^)]*)\)", alert["expr"])
        kept = {label.strip() for label in outermost.group(1).split(",")} if outermost else set()
        assert not kept & {"namespace", "name"}, f"{alert['alert']} pages per artifact: by ({kept})"


def test_per_hop_alerts_say_how_many_and_which_artifacts(alerts: list[dict[str, Any]]) -> None:
    for alert in alerts:
        if "layerwatch_hop_blamed_artifacts" not in alert["expr"]:
            continue
        annotations = alert["annotations"]
        assert "$value" in annotations["description"], alert["alert"]
        for label in ("hop", "chain", "verdict"):
            assert f"$labels.{label}" in annotations["description"], f"{alert['alert']}: no {label}"
        assert "layerwatch_artifact_blame" in annotations["examples"], alert["alert"]


def test_the_per_artifact_alert_is_info_and_names_the_artifact(alerts: list[dict[str, Any]]) -> None:
    (alert,) = [a for a in alerts if "layerwatch_artifact_blame" in a["expr"]]
    assert alert["labels"]["severity"] == "info"
    for label in ("namespace", "name", "hop", "chain", "verdict"):
        assert f"$labels.{label}" in alert["annotations"]["description"], label


def test_each_runbook_url_has_a_section_in_the_runbooks(alerts: list[dict[str, Any]]) -> None:
    text = RUNBOOKS.read_text()
    headings = set(re.findall(r"^#{2,3} (\S+)\s*$", text, flags=re.MULTILINE))
    for alert in alerts:
        assert alert["alert"] in headings, f"docs/runbooks.md lacks a '## {alert['alert']}' section"


def _github_anchor(heading: str) -> str:
    """The anchor GitHub generates for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_runbook_links_within_the_page_resolve() -> None:
    text = RUNBOOKS.read_text()
    anchors = {_github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and not links - anchors, f"broken in-page links: {sorted(links - anchors)}"
