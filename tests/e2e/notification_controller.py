"""Run the real Flux notification-controller against the lab apiserver, and a webhook to receive from it.

The binary, its CRDs (Alert, Provider, Receiver) and its RBAC come from the Go module
(``hack/build-tools.sh notification-controller`` builds them into
``~/.cache/layerwatch/notification-controller/v<version>/``). It runs like source-controller here
(``SourceController`` starts and stops it): its own ServiceAccount bound to the module's ClusterRole,
every listener on 127.0.0.1, no leader election. A ``Provider`` of type ``generic`` posts each
event it forwards as JSON to a ``Webhook`` in the test process.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.e2e.source_controller import SourceController
from tests.k8s.operator_harness import free_port

SERVICE_ACCOUNT = "notification-controller"
CLUSTER_ROLE = "layerwatch-e2e-notification-controller"
API = "notification.toolkit.fluxcd.io/v1beta3"


class NotificationController(SourceController):
    """``notification-controller`` with its event receiver on a free loopback port."""

    def __init__(self, directory: Path, kubeconfig: Path, work_dir: Path) -> None:
        super().__init__(directory, kubeconfig, work_dir)
        self.binary = directory / "notification-controller"
        self.log_path = work_dir / "notification-controller.log"
        self.events_port = free_port()
        self.receiver_port = free_port()

    @property
    def address(self) -> str:
        """The event receiver, as the Flux controllers' ``--events-addr`` names it."""
        return f"http://127.0.0.1:{self.events_port}/"

    def argv(self) -> list[str]:
        return [
            str(self.binary),
            f"--events-addr=127.0.0.1:{self.events_port}",
            f"--receiverAddr=127.0.0.1:{self.receiver_port}",
            f"--metrics-addr=127.0.0.1:{self.metrics_port}",
            f"--health-addr=127.0.0.1:{self.health_port}",
            "--enable-leader-election=false",
            "--watch-all-namespaces=true",
            "--log-level=debug",
            "--log-encoding=json",
        ]

    def _storage_answers(self) -> bool:
        return True  # no artifact server: /readyz is enough


class Webhook:
    """A loopback HTTP server that keeps every JSON body POSTed to it (a Provider of type generic)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    outer.received.append(json.loads(body))
                    outer.headers.append(dict(self.headers))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Webhook:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def about(self, name: str) -> list[dict[str, Any]]:
        """The notifications received so far whose involved object is named ``name``."""
        return [e for e in list(self.received) if e.get("involvedObject", {}).get("name") == name]


def provider_and_alert(namespace: str, webhook_url: str) -> Iterator[dict[str, Any]]:
    """A ``generic`` Provider pointed at the webhook and an Alert on every OCIRepository, info and up."""
    yield {
        "apiVersion": API,
        "kind": "Provider",
        "metadata": {"name": "webhook", "namespace": namespace},
        "spec": {"type": "generic", "address": webhook_url},
    }
    yield {
        "apiVersion": API,
        "kind": "Alert",
        "metadata": {"name": "oci-sources", "namespace": namespace},
        "spec": {
            "providerRef": {"name": "webhook"},
            "eventSeverity": "info",
            "eventSources": [{"kind": "OCIRepository", "name": "*"}],
        },
    }
