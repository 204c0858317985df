"""Run ``layerwatch operator`` as a subprocess with the ServiceAccount kubeconfig, and observe it.

The operator is a real process (so a test can SIGKILL it mid-cycle) that authenticates only with
the TokenRequest token of ServiceAccount layerwatch/layerwatch, bound to manifests/clusterrole.yaml.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client

from lab.artifacts import push_flux_artifact
from lab.chain import LocalChain

T = TypeVar("T")
FLUX = ("source.toolkit.fluxcd.io", "v1")
LW = ("layerwatch.io", "v1alpha1")
CONDITION = "layerwatch.io/ProxyHealthy"
LAB_INTERVAL = "3s"
"""Check interval of the shared lab ProxyChain: short, so tests see verdicts within seconds."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 90.0, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except Exception as exc:  # keep polling; report the last error on timeout
            last = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class Operator:
    """``layerwatch operator --standalone -A`` on free ports, logs in a file.

    ``standalone=False`` leaves ``--standalone`` out, for peering (pass ``--peering NAME`` in ``extra``);
    ``env`` adds environment variables (e.g. ``POD_NAME`` as a StatefulSet sets it).
    """

    def __init__(
        self,
        kubeconfig: Path,
        log_dir: Path,
        *extra: str,
        standalone: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.kubeconfig, self.log_path, self.extra = kubeconfig, log_dir / "operator.log", extra
        self.standalone, self.env = standalone, dict(env or {})
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.env}
        command = [
            sys.executable,
            "-m",
            "layerwatch.cli",
            "operator",
            *(["--standalone"] if self.standalone else []),
            "--all-namespaces",
            "--metrics-port",
            str(self.metrics_port),
            "--metrics-address",
            "127.0.0.1",
            "--liveness",
            f"http://127.0.0.1:{self.liveness_port}/healthz",
            *self.extra,
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for("operator liveness", lambda: self._get(f"http://127.0.0.1:{self.liveness_port}/healthz"), 60)
        return self

    def _get(self, url: str) -> str | None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"operator exited with {self.process.returncode}:\n{self.logs()}")
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def metrics(self) -> str:
        return self._get(f"http://127.0.0.1:{self.metrics_port}/metrics") or ""

    def logs(self) -> str:
        """The end of the log, for failure messages."""
        return self.text()[-6000:]

    def text(self) -> str:
        """The whole log, for assertions about what the operator said (or never said)."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def ocirepository(
    namespace: str, name: str, url: str, tag: str = "v1", *, chain: str | None = None, **spec: Any
) -> dict[str, Any]:
    """An OCIRepository as Flux users write it; ``chain`` pins it to a ProxyChain by annotation."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if chain:
        metadata["annotations"] = {"layerwatch.io/chain": chain}
    return {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "OCIRepository",
        "metadata": metadata,
        "spec": {"url": url, "ref": {"tag": tag}, "interval": "10m", "insecure": True, **spec},
    }


def condition(
    api: client.CustomObjectsApi, namespace: str, name: str, kind: str = CONDITION
) -> dict[str, Any] | None:
    body = api.get_namespaced_custom_object_status(*FLUX, namespace, "ocirepositories", name)
    for entry in (body.get("status") or {}).get("conditions") or ():
        if entry.get("type") == kind:
            return dict(entry)
    return None


def events(core: client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    items = core.list_namespaced_event(namespace).items
    return [
        e for e in items if e.involved_object.name == name and e.source and e.source.component == "layerwatch"
    ]


def metric_value(text: str, metric: str, /, **labels: str) -> float | None:
    """The value of the first sample of ``metric`` whose labels include ``labels``."""
    for line in text.splitlines():
        if not line.startswith(metric + "{"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


def proxychain_document(
    lab: LocalChain,
    name: str,
    interval: str,
    *,
    secret: str = "lab-edge",
    edge: Mapping[str, Any] | None = None,
    origin_url: str | None = None,
) -> dict[str, Any]:
    """A ProxyChain for the lab chain; the edge's credentials come from Secret layerwatch/``secret``.

    ``edge`` adds fields to the edge hop (e.g. a ``caSecretRef``); ``origin_url`` replaces the
    origin's URL (e.g. by one the CRD accepts and layerwatch cannot use).
    """
    hops = []
    for hop in lab.hops:
        entry: dict[str, Any] = {"name": hop.name, "url": hop.url}
        if hop.credentials:
            entry["secretRef"] = {"name": secret, "namespace": "layerwatch"}
        if hop.name == "edge":
            entry.update(edge or {})
        if hop.name == "origin" and origin_url:
            entry["url"] = origin_url
        hops.append(entry)
    return {
        "apiVersion": "layerwatch.io/v1alpha1",
        "kind": "ProxyChain",
        "metadata": {"name": name},
        "spec": {"hops": hops, "interval": interval},
    }


def push_artifact(chain: LocalChain, drop_at: str | None = None) -> tuple[str, str, str]:
    """Push a fresh Flux artifact; optionally drop its content layer at a hop before any pull."""
    repository = f"org/app-{secrets.token_hex(4)}"
    pushed = push_flux_artifact(chain.push_address, repository, "v1")
    if drop_at:
        chain.faults(drop_at).set(
            [
                {
                    "kind": "drop",
                    "repository": chain.repository_at(drop_at, repository),
                    "digest": pushed.content_layer.digest,
                }
            ]
        )
    return (
        repository,
        f"oci://{chain.reference(repository, 'v1').rsplit(':', 1)[0]}",
        pushed.content_layer.digest,
    )
