"""The artifact's namespace survives a scrape the way prometheus-operator configures it.

prometheus-operator turns a ServiceMonitor into a scrape job whose relabelling attaches the
target labels ``namespace`` (the pod's), ``service``, ``pod``, ``container`` and ``endpoint``.
Without ``honorLabels`` those win over layerwatch's own ``namespace`` label (the OCIRepository's),
which then survives only as ``exported_namespace``, and every alert names layerwatch's namespace.

Here a real Prometheus scrapes a real layerwatch ``/metrics`` (the metrics and web modules, in
this process, over a store holding one artifact of namespace ``team-a`` whose layer is lost at
core) with exactly those target labels, built from manifests/monitoring/servicemonitor.yaml, and
the alerts that fire must carry ``team-a``. A control job scraping the same target without
``honorLabels`` (series renamed so the rules ignore them) shows what goes wrong otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from monitoring_support import MONITORING
from test_live import PrometheusServer, _eventually, running_prometheus
from tests.unit.builders import CHAIN, HOP_NAMES, REFERENCE, check_result, healthy_chain, observe

from lab.process import LOOPBACK
from layerwatch.chain import Target
from layerwatch.metrics import Metrics
from layerwatch.observation import BlobStatus
from layerwatch.store import ResultStore, TargetStatus
from layerwatch.web import WebServer

pytestmark = pytest.mark.prometheus

POD_NAMESPACE = "layerwatch"
TARGET_LABELS = {
    "__meta_kubernetes_namespace": POD_NAMESPACE,
    "__meta_kubernetes_service_name": "layerwatch-metrics",
    "__meta_kubernetes_pod_name": "layerwatch-7d4b9c-x2kq",
    "__meta_kubernetes_pod_container_name": "operator",
    "__meta_kubernetes_endpoint_port_name": "metrics",
}
"""What Kubernetes service discovery says about the operator pod's metrics endpoint."""
BROKEN = Target(name="app", reference=REFERENCE, chain=CHAIN.name, namespace="team-a")
HEALTHY = Target(name="other", reference=REFERENCE, chain=CHAIN.name, namespace="team-b")


def _relabeling(rule: dict[str, Any]) -> dict[str, Any]:
    """A ServiceMonitor relabeling (camelCase) as Prometheus configuration (snake_case)."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return {names.get(key, key): value for key, value in rule.items()}


def prometheus_operator_job(
    target: str, job_name: str, *, honor_labels: bool | None = None
) -> dict[str, Any]:
    """The scrape job prometheus-operator generates for servicemonitor.yaml's endpoint."""
    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    (endpoint,) = monitor["spec"]["endpoints"]
    standard = [
        {
            "source_labels": ["__meta_kubernetes_endpoint_port_name"],
            "regex": endpoint["port"],
            "action": "keep",
        },
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
        {"target_label": "endpoint", "replacement": endpoint["port"]},
    ]
    return {
        "job_name": job_name,
        "honor_labels": endpoint.get("honorLabels", False) if honor_labels is None else honor_labels,
        "metrics_path": endpoint["path"],
        "static_configs": [{"targets": [target], "labels": TARGET_LABELS}],
        "relabel_configs": standard + [_relabeling(r) for r in endpoint.get("relabelings", [])],
    }


@contextlib.contextmanager
def layerwatch_exporting(statuses: list[TargetStatus]) -> Iterator[int]:
    """layerwatch's WebServer on a free loopback port, serving metrics of ``statuses``."""
    store = ResultStore()
    for status in statuses:
        store.put(status)
    metrics = Metrics(store)
    metrics.set_chain(CHAIN.name, 300.0, HOP_NAMES)
    web = WebServer(metrics, lambda: {CHAIN.name: CHAIN})
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield asyncio.run_coroutine_threadsafe(web.start(LOOPBACK, 0), loop).result(30)
    finally:
        asyncio.run_coroutine_threadsafe(web.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    now = time.time()
    missing = {0: (BlobStatus.MISSING, "missing (404)")}
    lost = check_result([observe(0, blobs=missing), observe(1, blobs=missing), observe(2)], finished=now)
    statuses = [
        TargetStatus(BROKEN, CHAIN.name, lost),
        TargetStatus(HEALTHY, CHAIN.name, check_result(healthy_chain(), finished=now)),
    ]
    with layerwatch_exporting(statuses) as port:
        target = f"{LOOPBACK}:{port}"
        control = prometheus_operator_job(target, "control", honor_labels=False)
        control["relabel_configs"].append({"target_label": "job", "replacement": "control"})
        control["metric_relabel_configs"] = [
            {"source_labels": ["__name__"], "target_label": "__name__", "replacement": "control_$1"}
        ]
        jobs = [prometheus_operator_job(target, "serviceMonitor/layerwatch/layerwatch/0"), control]
        with running_prometheus(prometheus_binary, tmp_path_factory.mktemp("prometheus"), jobs) as server:
            yield server


def _firing(prometheus: PrometheusServer, alertname: str) -> list[dict[str, Any]] | None:
    alerts = [
        a for a in prometheus.alerts() if a["labels"]["alertname"] == alertname and a["state"] == "firing"
    ]
    return alerts or None


def test_the_scrape_carries_prometheus_operators_target_labels(prometheus: PrometheusServer) -> None:
    (series,) = _eventually(
        "layerwatch_artifact_blame scraped",
        lambda: prometheus.query('layerwatch_artifact_blame{job="layerwatch"}') or None,
    )
    labels = series["metric"]
    assert labels["pod"] == TARGET_LABELS["__meta_kubernetes_pod_name"]
    assert labels["service"] == "layerwatch-metrics"
    assert labels["namespace"] == "team-a", labels
    assert "exported_namespace" not in labels
    assert (labels["hop"], labels["verdict"]) == ("core", "LayerMissing")


def test_without_honor_labels_the_namespace_would_be_layerwatchs_own(prometheus: PrometheusServer) -> None:
    (series,) = _eventually(
        "the control job's series",
        lambda: prometheus.query('control_layerwatch_artifact_blame{job="control"}') or None,
    )
    assert series["metric"]["namespace"] == POD_NAMESPACE
    assert series["metric"]["exported_namespace"] == "team-a"


def test_the_fired_alerts_name_the_artifacts_namespace(prometheus: PrometheusServer) -> None:
    (unhealthy,) = _eventually(
        "LayerwatchArtifactUnhealthy firing", lambda: _firing(prometheus, "LayerwatchArtifactUnhealthy")
    )
    assert unhealthy["labels"]["namespace"] == "team-a"
    assert unhealthy["labels"]["name"] == "app"
    assert unhealthy["labels"]["hop"] == "core"
    assert "exported_namespace" not in unhealthy["labels"]
    assert "Artifact team-a/app on chain corp" in unhealthy["annotations"]["description"]
    (page,) = _eventually(
        "LayerwatchLayerMissing firing", lambda: _firing(prometheus, "LayerwatchLayerMissing")
    )
    assert (page["labels"]["hop"], page["labels"]["severity"]) == ("core", "critical")
    assert page["annotations"]["examples"] == "team-a/app"
    assert page["annotations"]["description"].startswith("1 artifact(s) on chain corp are LayerMissing")
