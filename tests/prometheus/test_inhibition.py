"""The Alertmanager inhibit rules layerwatch ships, in a real Alertmanager (Debian's).

A hop that is down pages once (LayerwatchHopDown); the other layerwatch pages of the same chain
are held back while it is, those of other chains are not. The alerts are posted to
Alertmanager's API as Prometheus would send them, and its API says which are suppressed and why.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from monitoring_support import MONITORING
from test_live import _eventually

from lab.process import LOOPBACK, free_port, stop_process, wait_http

pytestmark = pytest.mark.prometheus


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail("alertmanager is not installed (Debian package prometheus-alertmanager)", pytrace=False)
    workdir = tmp_path_factory.mktemp("alertmanager")
    inhibit = yaml.safe_load((MONITORING / "alertmanager.inhibit.yaml").read_text())
    config = {
        "route": {"receiver": "nobody", "group_by": ["alertname", "chain", "hop"]},
        "receivers": [{"name": "nobody"}],
    }
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump({**config, **inhibit}, sort_keys=False))
    port = free_port()
    log = workdir / "alertmanager.log"
    command = [
        binary,
        f"--config.file={workdir / 'alertmanager.yml'}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address={LOOPBACK}:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    with contextlib.ExitStack() as stack:
        stack.callback(stop_process, process)
        url = f"http://{LOOPBACK}:{port}"
        wait_http(f"{url}/-/ready", process, log, timeout=30.0)
        yield url


def _alert(alertname: str, severity: str, **labels: str) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {
        "labels": {"alertname": alertname, "severity": severity, **labels},
        "annotations": {"summary": alertname},
        "startsAt": now.isoformat(),
        "endsAt": (now + dt.timedelta(minutes=10)).isoformat(),
    }


def test_a_down_hop_holds_back_the_other_pages_of_its_chain_only(alertmanager: str) -> None:
    alerts = [
        _alert("LayerwatchHopDown", "warning", chain="corp", hop="core"),
        _alert("LayerwatchLayerMissing", "critical", chain="corp", hop="edge", verdict="LayerMissing"),
        _alert("LayerwatchArtifactUnhealthy", "info", chain="corp", hop="edge", namespace="apps", name="a"),
        _alert("LayerwatchLayerMissing", "critical", chain="other", hop="edge", verdict="LayerMissing"),
    ]
    httpx.post(f"{alertmanager}/api/v2/alerts", json=alerts, timeout=10).raise_for_status()

    def states() -> dict[tuple[str, str], str] | None:
        found = httpx.get(f"{alertmanager}/api/v2/alerts", timeout=10).json()
        result = {(a["labels"]["alertname"], a["labels"]["chain"]): a["status"]["state"] for a in found}
        return result if len(result) == 4 and "unprocessed" not in result.values() else None

    assert _eventually("alertmanager processed the alerts", states, timeout=30) == {
        ("LayerwatchHopDown", "corp"): "active",
        ("LayerwatchLayerMissing", "corp"): "suppressed",
        ("LayerwatchArtifactUnhealthy", "corp"): "suppressed",
        ("LayerwatchLayerMissing", "other"): "active",
    }


def test_the_inhibit_rules_file_is_a_valid_alertmanager_config(tmp_path: Path) -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail("amtool is not installed (Debian package prometheus-alertmanager)", pytrace=False)
    inhibit = yaml.safe_load((MONITORING / "alertmanager.inhibit.yaml").read_text())
    config = {"route": {"receiver": "nobody"}, "receivers": [{"name": "nobody"}], **inhibit}
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [amtool, "check-config", str(tmp_path / "alertmanager.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
