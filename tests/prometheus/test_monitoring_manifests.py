"""The Grafana dashboard, its ConfigMap, the ServiceMonitor and the kustomization."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from monitoring_support import DASHBOARD_FILE, GENERATOR, MONITORING, ROOT


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    """The committed dashboard model."""
    loaded: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return loaded


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_dashboard_is_what_the_generator_builds(generate: Any) -> None:
    pytest.importorskip("grafana_foundation_sdk", reason="grafana-foundation-sdk builds the dashboard")
    assert DASHBOARD_FILE.read_text() == generate.dashboard_json_text(generate.build_dashboard()), (
        "dashboard.json is out of date: run python hack/dashboard/generate.py"
    )


def test_configmap_holds_exactly_the_dashboard_json(generate: Any) -> None:
    text = (MONITORING / "dashboard-configmap.yaml").read_text()
    configmap = yaml.safe_load(text)
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert list(configmap["data"].values()) == [DASHBOARD_FILE.read_text()]
    assert text == generate.dashboard_configmap_text(DASHBOARD_FILE.read_text())


def test_generator_check_mode_reports_no_drift() -> None:
    args = [sys.executable, str(GENERATOR), "--check"]
    try:
        import grafana_foundation_sdk  # noqa: F401
    except ImportError:
        args.append("--skip-dashboard")
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def test_every_panel_says_what_question_it_answers(dashboard: dict[str, Any]) -> None:
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert "?" in panel.get("description", ""), f"panel {panel['title']!r} lacks a question"


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids))


def test_every_query_goes_to_the_selected_datasource(dashboard: dict[str, Any]) -> None:
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_template_variables_filter_chain_hop_and_namespace(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("chain", "hop", "namespace"):
        assert variables[name]["type"] == "query"
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    for name in ("chain", "hop", "namespace"):
        assert any(f"${name}" in expr for expr in exprs), f"no query uses ${name}"


def test_dashboard_has_the_panels_operators_need(dashboard: dict[str, Any]) -> None:
    """Overview of hops, unhealthy table, durations, request codes, bytes, last-check age."""
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in _panels(dashboard)}
    wanted = {
        "layerwatch_hop_up": "stat",
        "layerwatch_artifact_blame": "table",
        "time() - layerwatch_artifact_hop_verdict_since_timestamp_seconds": "table",
        "histogram_quantile(0.95": "timeseries",
        "histogram_quantile(0.5": "timeseries",
        "layerwatch_registry_requests_total": "timeseries",
        "layerwatch_blob_bytes_verified_total": "timeseries",
        "time() - layerwatch_artifact_hop_last_check_timestamp_seconds": "timeseries",
    }
    types = {p["title"]: p["type"] for p in _panels(dashboard)}
    for fragment, panel_type in wanted.items():
        assert any(fragment in expr and types[title] == panel_type for title, expr in exprs.items()), fragment


def test_the_first_row_answers_which_hops_are_broken_for_how_many_artifacts(
    dashboard: dict[str, Any],
) -> None:
    first = next(p for p in dashboard["panels"] if p["type"] != "row")
    assert first["type"] == "table" and first["gridPos"]["y"] <= 1, first["title"]
    (target,) = first["targets"]
    assert target["expr"].startswith("count by (chain, hop, verdict) (")
    assert "layerwatch_artifact_blame" in target["expr"]


def test_the_dashboard_links_the_status_page_and_the_runbooks(dashboard: dict[str, Any]) -> None:
    links = {link["title"]: link["url"] for link in dashboard["links"]}
    assert links["Status page"] == "${status_page}"
    assert links["Runbooks"].endswith("docs/runbooks.md")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["status_page"]["type"] == "textbox"
    overrides = [o for p in _panels(dashboard) for o in p.get("fieldConfig", {}).get("overrides", [])]
    row_links = [v["value"][0]["url"] for o in overrides for v in o["properties"] if v["id"] == "links"]
    assert row_links and all(url.startswith("${status_page}#chain-") for url in row_links)


def test_servicemonitor_selects_the_metrics_service_and_names_the_job(rules: dict[str, Any]) -> None:
    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "layerwatch",
        "app.kubernetes.io/component": "metrics",
    }
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True, "the artifact's namespace label must win over the target's"
    job = [r["replacement"] for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
    down = next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "LayerwatchDown")
    assert job and re.search(rf'job="{re.escape(job[0])}"', down["expr"]), "job label and alert disagree"


def _kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH (make tools links the one it builds)", pytrace=False)
    result = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("install", ["", "sharded"])
def test_each_operator_pod_is_scraped_exactly_once(install: str) -> None:
    """What prometheus-operator does with the ServiceMonitor: every selected Service's endpoints
    on port ``metrics``, i.e. every pod behind it. Two Services over the same pods double every
    count on the dashboard (the sharded install's headless Service did)."""
    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    selector = monitor["spec"]["selector"]["matchLabels"]
    port = monitor["spec"]["endpoints"][0]["port"]
    documents = _kustomize(ROOT / "manifests" / install)
    services = [
        doc
        for doc in documents
        if doc["kind"] == "Service"
        and _matches(selector, doc["metadata"].get("labels") or {})
        and any(p.get("name") == port for p in doc["spec"].get("ports") or ())
    ]
    workloads = [doc for doc in documents if doc["kind"] in ("Deployment", "StatefulSet")]
    assert workloads and services
    for workload in workloads:
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        scrapes = [s["metadata"]["name"] for s in services if _matches(s["spec"]["selector"], pod_labels)]
        assert len(scrapes) == 1, f"{install or 'base'}: pods of {workload['metadata']['name']} via {scrapes}"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    manifests = {
        path.name
        for path in MONITORING.glob("*.yaml")
        if path.name not in {"kustomization.yaml", "layerwatch.rules.yaml", "alertmanager.inhibit.yaml"}
    }
    assert set(kustomization["resources"]) == manifests


def test_kustomize_builds_the_monitoring_bundle() -> None:
    kinds = sorted(doc["kind"] for doc in _kustomize(MONITORING))
    assert kinds == ["ConfigMap", "PrometheusRule", "ServiceMonitor"]


@pytest.mark.parametrize("install", ["", "sharded"])
def test_the_notifications_component_points_the_operator_at_notification_controller(
    install: str, tmp_path: Path
) -> None:
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(ROOT / "manifests" / install, tmp_path)],
        "components": [os.path.relpath(ROOT / "manifests" / "notifications", tmp_path)],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    (workload,) = [d for d in _kustomize(tmp_path) if d["kind"] in ("Deployment", "StatefulSet")]
    env = {e["name"]: e.get("value") for e in workload["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LAYERWATCH_NOTIFICATION_ADDRESS"] == (
        "http://notification-controller.flux-system.svc.cluster.local./"
    )
    assert "POD_NAME" in env or install == "sharded"  # the base's own variables are kept


def test_the_networkpolicy_example_admits_layerwatch_to_the_event_receiver() -> None:
    (policy,) = yaml.safe_load_all((ROOT / "manifests" / "notifications" / "networkpolicy.yaml").read_text())
    assert policy["metadata"]["namespace"] == "flux-system"
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app": "notification-controller"}}
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9090}]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "layerwatch"}
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "layerwatch"}
