"""The alert rules against a real Prometheus scraping a real ``layerwatch serve``.

The lab chain (tests/serve_harness.py) has healthy artifacts and one whose content layer is
dropped at core. A Debian ``prometheus`` scrapes the serve process every second as job
``layerwatch`` and evaluates a copy of manifests/monitoring/layerwatch.rules.yaml every second;
the test then asks Prometheus's HTTP API which alerts fire.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from monitoring_support import RULES_FILE
from test_expressions import SPEC_METRIC_FAMILIES
from tests.serve_harness import BROKEN, BROKEN_HOP, CHAIN, HEALTHY, ServeLab

from lab.process import LOOPBACK, LabError, free_port, log_tail, stop_process, wait_http

pytestmark = pytest.mark.prometheus

ALERT_WAIT = 90.0
"""Upper bound for an alert to fire: scrape (1s) + first evaluation (1s) + shortened `for:` (5s),
plus generous slack for a loaded machine."""
TEST_FOR = "5s"
T = TypeVar("T")


def _test_rules(destination: Path) -> Path:
    """A copy of the real rules file with every alert's ``for:`` rewritten to `TEST_FOR`.

    The real file keeps its production durations (15m and more); only this copy, loaded by the
    test's Prometheus, is shortened so that an alert fires within seconds. Expressions, labels
    and annotations are unchanged.
    """
    rules = yaml.safe_load(RULES_FILE.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = TEST_FOR
    destination.write_text(yaml.safe_dump(rules, sort_keys=False))
    return destination


class PrometheusServer:
    """A running Prometheus and a small client for its HTTP API."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.process, self.log = url, process, log

    def api(self, path: str, **params: str) -> Any:
        if self.process.poll() is not None:
            raise LabError(f"prometheus exited with {self.process.returncode}:\n{log_tail(self.log)}")
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10.0)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts


@contextlib.contextmanager
def running_prometheus(
    binary: str, workdir: Path, scrape_configs: list[dict[str, Any]]
) -> Iterator[PrometheusServer]:
    """Prometheus scraping every second with the shortened rules; always stopped."""
    rules = _test_rules(workdir / "layerwatch.rules.yaml")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": scrape_configs,
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = workdir / "prometheus.log"
    command = [
        binary,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={LOOPBACK}:{port}",
        "--log.level=warn",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://{LOOPBACK}:{port}"
        wait_http(f"{url}/-/ready", process, log, timeout=30.0)
        yield PrometheusServer(url, process, log)
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str, serve_lab: ServeLab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    """Prometheus scraping ``serve_lab`` as job ``layerwatch``."""
    scrape = {"job_name": "layerwatch", "static_configs": [{"targets": [f"{LOOPBACK}:{serve_lab.port}"]}]}
    with running_prometheus(prometheus_binary, tmp_path_factory.mktemp("prometheus"), [scrape]) as server:
        yield server


def _eventually(what: str, probe: Callable[[], T | None], timeout: float = ALERT_WAIT) -> T:
    """Call ``probe`` until it returns something other than None; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.5)


def _alert_labels(alert: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = alert["labels"]
    return labels


def test_live_metrics_have_samples_for_every_spec_family(serve_lab: ServeLab) -> None:
    """With a healthy and a broken artifact checked, every promised metric family has a sample."""
    text = serve_lab.metrics()
    sampled = {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, flags=re.M)}
    for family, metric_type in SPEC_METRIC_FAMILIES:
        names = {"counter": {family}, "histogram": {f"{family}_bucket", f"{family}_count"}}
        expected = names.get(metric_type, {family})
        assert expected <= sampled, f"{family} ({metric_type}) has no samples in /metrics:\n{text}"
    assert f'layerwatch_artifact_hop_healthy{{chain="{CHAIN}",hop="{BROKEN_HOP}",name="{BROKEN}"' in text


def test_layer_missing_pages_once_for_the_broken_hop_only(prometheus: PrometheusServer) -> None:
    # The scrape works and is the job the rules (LayerwatchDown) expect.
    up = _eventually(
        "up{job=layerwatch} == 1",
        lambda: prometheus.query('up{job="layerwatch"} == 1') or None,
    )
    assert len(up) == 1

    def firing(alertname: str) -> list[dict[str, Any]] | None:
        found = [
            a
            for a in prometheus.alerts()
            if a["state"] == "firing" and _alert_labels(a).get("alertname") == alertname
        ]
        return found or None

    (page,) = _eventually("LayerwatchLayerMissing firing", lambda: firing("LayerwatchLayerMissing"))
    labels = _alert_labels(page)
    assert (labels["chain"], labels["hop"], labels["verdict"]) == (CHAIN, BROKEN_HOP, "LayerMissing")
    assert labels["severity"] == "critical"
    assert "name" not in labels, "one page per hop, not per artifact"
    assert page["annotations"]["examples"] == BROKEN
    assert f"with the fault at hop {BROKEN_HOP}" in page["annotations"]["description"]
    assert page["annotations"]["runbook_url"].endswith("#layerwatchlayermissing")

    (detail,) = _eventually(
        "LayerwatchArtifactUnhealthy firing", lambda: firing("LayerwatchArtifactUnhealthy")
    )
    assert (_alert_labels(detail)["name"], _alert_labels(detail)["hop"]) == (BROKEN, BROKEN_HOP)
    assert _alert_labels(detail)["severity"] == "info"

    # The edge lacks the layer too (it pulls through core) but only passes the loss on: no alert
    # for it, pending or firing; nothing for the healthy artifacts; nothing else at all.
    alerts = prometheus.alerts()
    assert {_alert_labels(a).get("hop") for a in alerts} == {BROKEN_HOP}, alerts
    for name in HEALTHY:
        assert not [a for a in alerts if _alert_labels(a).get("name") == name], (name, alerts)
    assert {_alert_labels(a)["alertname"] for a in alerts} == {
        "LayerwatchLayerMissing",
        "LayerwatchArtifactUnhealthy",
    }, alerts
    assert prometheus.query('up{job="layerwatch"}')[0]["value"][1] == "1"
