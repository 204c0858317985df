"""Run the real Flux source-controller as a subprocess against the lab apiserver, and observe it.

The binary, its CRDs and its RBAC come from the Go module (``hack/build-tools.sh source-controller``
builds them into ``~/.cache/layerwatch/source-controller/v<version>/``). The controller runs with
its own ServiceAccount (``flux-system/source-controller``) bound to the module's ``manager-role``
ClusterRole, every listener on 127.0.0.1, no leader election, no notification-controller, no proxy
environment: it only ever talks to the apiserver and the lab registries on loopback.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import fcntl
import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from tests.k8s.operator_harness import FLUX, free_port

from lab.kube import BUILD_TOOLS, load_docs

T = TypeVar("T")
C = TypeVar("C", bound="SourceController")

NAMESPACE = "flux-system"
SERVICE_ACCOUNT = "source-controller"
CLUSTER_ROLE = "layerwatch-e2e-source-controller"
EDGE_PULL_SECRET = "edge-pull"
"""dockerconfigjson Secret with the edge robot, in each test namespace, named by spec.secretRef."""
REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
BUILD_TIMEOUT = float(os.environ.get("LAYERWATCH_BUILD_TIMEOUT", "3600"))

_requests = itertools.count()


def build_tools_paths() -> dict[str, str]:
    """``hack/build-tools.sh paths``: where the tools and CRDs of the pinned versions live."""
    out = subprocess.run(
        ["bash", str(BUILD_TOOLS), "paths"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def flux_crds_dir() -> Path:
    return Path(build_tools_paths()["FLUX_CRDS"])


def ensure_built(tool: str = "source-controller") -> tuple[Path, float]:
    """The directory of a Flux controller, building it (under a file lock) when the binary is missing.

    Returns the directory and the seconds spent building (0 when it was cached). The build's
    output goes to stderr, so a cold build (several minutes on 2 cores) is visible in CI logs.
    """
    out = Path(build_tools_paths()[tool.upper().replace("-", "_") + "_DIR"])
    if (out / tool).is_file() and (out / "crd").is_dir():
        return out, 0.0
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.parent / ".e2e-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / tool).is_file():
            return out, 0.0
        print(f"[e2e] building {tool} with {BUILD_TOOLS}", file=sys.stderr)
        started = time.monotonic()
        subprocess.run(
            ["bash", str(BUILD_TOOLS), tool],
            check=True,
            timeout=BUILD_TIMEOUT,
            stdout=sys.stderr,
            stderr=subprocess.STDOUT,
        )
        return out, time.monotonic() - started


def rbac_docs(
    directory: Path, service_account: str = SERVICE_ACCOUNT, name: str = CLUSTER_ROLE
) -> list[dict[str, Any]]:
    """The module's ``config/rbac/role.yaml`` ClusterRole, bound to our ServiceAccount.

    The module binds ``manager-role`` to ``system/default`` through kustomize (namePrefix); here the
    role keeps its rules, gets a name of our own, and one ClusterRoleBinding names our SA.
    """
    roles = [d for d in load_docs(directory / "rbac" / "role.yaml") if d.get("kind") == "ClusterRole"]
    if len(roles) != 1:
        raise RuntimeError(f"expected one ClusterRole in {directory}/rbac/role.yaml, found {len(roles)}")
    role = {**roles[0], "metadata": {"name": name}}
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}],
    }
    return [role, binding]


def _die_with_parent() -> None:
    """Linux: SIGKILL the controller when the test process dies, so it never outlives CI."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class SourceController:
    """``source-controller`` on free loopback ports, artifacts in ``work_dir``, logs in a file."""

    def __init__(self, directory: Path, kubeconfig: Path, work_dir: Path) -> None:
        self.binary = directory / "source-controller"
        self.kubeconfig = kubeconfig
        self.storage = work_dir / "storage"
        self.log_path = work_dir / "source-controller.log"
        self.storage_port = free_port()
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return [
            str(self.binary),
            f"--storage-path={self.storage}",
            f"--storage-addr=127.0.0.1:{self.storage_port}",
            f"--storage-adv-addr=127.0.0.1:{self.storage_port}",
            f"--metrics-addr=127.0.0.1:{self.metrics_port}",
            f"--health-addr=127.0.0.1:{self.health_port}",
            "--events-addr=",
            "--enable-leader-election=false",
            "--watch-all-namespaces=true",
            "--concurrent=4",
            "--log-level=debug",
            "--log-encoding=json",
        ]

    def start(self, timeout: float = 90) -> SourceController:
        self.storage.mkdir(parents=True, exist_ok=True)
        proxy_vars = {"http_proxy", "https_proxy", "no_proxy", "all_proxy"}
        env = {k: v for k, v in os.environ.items() if k.lower() not in proxy_vars and k != "KUBECONFIG"}
        env |= {"KUBECONFIG": str(self.kubeconfig), "RUNTIME_NAMESPACE": NAMESPACE}
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,
            )
        poll(
            "source-controller /readyz",
            lambda: self._get(f"http://127.0.0.1:{self.health_port}/readyz"),
            timeout,
        )
        poll("source-controller artifact server", self._storage_answers, timeout)
        return self

    def _get(self, url: str) -> str | None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"source-controller exited with {self.process.returncode}:\n{self.logs()}")
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def _storage_answers(self) -> bool:
        """The artifact server listens (it starts once the manager is 'elected', i.e. at once here)."""
        with contextlib.suppress(urllib.error.HTTPError):  # any answer will do; refused is retried
            self._get(f"http://127.0.0.1:{self.storage_port}/")
        return True

    def metrics(self) -> str:
        return self._get(f"http://127.0.0.1:{self.metrics_port}/metrics") or ""

    def logs(self, chars: int = 8000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@contextlib.contextmanager
def running(controller: C) -> Iterator[C]:
    """Start a controller, yield it, always stop it; print its log when it died on its own."""
    try:
        controller.start()
        yield controller
    finally:
        controller.stop()
        if controller.process is not None and controller.process.returncode not in (0, -15):
            name = controller.binary.name
            print(f"--- {name} log (exit {controller.process.returncode})\n{controller.logs()}")


def poll(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Call ``probe`` until it returns something truthy, at most ``timeout`` seconds.

    ``AssertionError`` from the probe (a dead process) ends the wait at once; other errors are
    retried and the last one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = probe()
        except AssertionError:
            raise
        except Exception as exc:
            last, value = exc, None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


# -- OCIRepository helpers ---------------------------------------------------------------------------


def get_repository(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(*FLUX, namespace, "ocirepositories", name))


def conditions_of(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``status.conditions`` by type."""
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}


def request_reconcile(custom: client.CustomObjectsApi, namespace: str, name: str) -> str:
    """What ``flux reconcile source oci`` does: set ``reconcile.fluxcd.io/requestedAt`` to a new value."""
    value = f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}-{next(_requests)}"
    patch = {"metadata": {"annotations": {REQUESTED_AT: value}}}
    custom.patch_namespaced_custom_object(*FLUX, namespace, "ocirepositories", name, patch)
    return value
