"""Fixtures for end-to-end tests: the real Flux source-controller and layerwatch on the same objects.

Session-wide, started once and always stopped:

- ``control_plane``: etcd + kube-apiserver (RBAC on) with every ``source.toolkit.fluxcd.io`` CRD of
  the pinned source-controller version and the ProxyChain CRD.
- ``chain``: the lab registry chain edge (p-core, Bearer auth) -> core (p-ghcr) -> origin.
- ``source_controller``: ``source-controller`` as its own ServiceAccount bound to the module's RBAC.
- ``layerwatch``: ``layerwatch operator`` as its ServiceAccount (manifests/clusterrole.yaml), with a
  ProxyChain for the lab chain checked every 3 s.

Per test: ``namespace`` (fresh) holding ``edge-pull``, a dockerconfigjson Secret with the edge robot
credentials that OCIRepositories name in ``spec.secretRef``.

Missing tools (kube-apiserver, etcd, oras, source-controller) are built at collection end, before any
test runs, so a cold build is not charged to a test's timeout.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.e2e import source_controller as sc
from tests.e2e.source_controller import SourceController, ensure_built
from tests.k8s.operator_harness import LW, Operator

from lab.chain import EDGE_USER, LocalChain
from lab.kube import (
    BUILD_TOOLS,
    REPO,
    ControlPlane,
    ControlPlaneError,
    basic_auth_secret,
    find_tools,
    load_docs,
)
from lab.registry import DOCKER_REGISTRY

MANIFESTS = REPO / "manifests"
PROXYCHAIN_CRD = REPO / "crds" / "proxychain.yaml"
CHAIN_INTERVAL = "3s"

_setup_error: str | None = None
_sc_dir: Path | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build whatever the e2e tests need once, outside any test's timeout, and say how long it took."""
    global _setup_error, _sc_dir
    here = Path(__file__).parent
    if not any(here in Path(str(item.path)).parents for item in session.items):
        return
    started = time.monotonic()
    try:
        find_tools(build=True)
        if not os.access(sc.build_tools_paths()["ORAS"], os.X_OK):
            subprocess.run(["bash", str(BUILD_TOOLS), "oras"], check=True, timeout=1800, stdout=sys.stderr)
        _sc_dir, built = ensure_built()
        if built:
            print(f"\n[e2e] source-controller built in {built:.0f} s", file=sys.stderr)
        if any(Path(str(item.path)).name == "test_notifications.py" for item in session.items):
            _, built = ensure_built("notification-controller")
            if built:
                print(f"\n[e2e] notification-controller built in {built:.0f} s", file=sys.stderr)
    except Exception as exc:  # reported by the fixtures as a test error, not a collection crash
        _setup_error = f"{type(exc).__name__}: {exc}"
    if time.monotonic() - started > 5:
        print(f"\n[e2e] tools ready after {time.monotonic() - started:.0f} s", file=sys.stderr)


def _source_controller_dir() -> Path:
    if _setup_error is not None:
        pytest.fail(f"cannot build the e2e tools (hack/build-tools.sh): {_setup_error}", pytrace=False)
    return _sc_dir or ensure_built()[0]


@pytest.fixture(scope="session")
def work_dir() -> Iterator[Path]:
    """Logs and source-controller storage; kept (and named) when LAYERWATCH_E2E_KEEP is set."""
    path = Path(tempfile.mkdtemp(prefix="lw-e2e-"))
    yield path
    if os.environ.get("LAYERWATCH_E2E_KEEP"):
        print(f"\n[e2e] logs kept in {path}", file=sys.stderr)
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """A control plane with all of source.toolkit.fluxcd.io and the ProxyChain CRD Established."""
    sc_dir = _source_controller_dir()
    cp = ControlPlane(find_tools(build=True))
    try:
        cp.start()
    except ControlPlaneError as exc:
        pytest.fail(f"control plane did not start: {exc}", pytrace=False)
    try:
        crds = sorted(sc.flux_crds_dir().glob("source.toolkit.fluxcd.io_*.yaml")) or sorted(
            (sc_dir / "crd").glob("source.toolkit.fluxcd.io_*.yaml")
        )
        assert len(crds) >= 5, f"expected the Flux source CRDs, found {crds}"
        for crd in crds:
            cp.apply(crd)
        cp.apply(PROXYCHAIN_CRD)
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def admin_api(control_plane: ControlPlane) -> Any:
    return control_plane.api_client()


@pytest.fixture(scope="session")
def custom(admin_api: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(admin_api)


@pytest.fixture(scope="session")
def core(admin_api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(admin_api)


@pytest.fixture(scope="session")
def chain() -> Iterator[LocalChain]:
    if not shutil.which(DOCKER_REGISTRY):
        pytest.fail(f"{DOCKER_REGISTRY} missing (make deps installs it)", pytrace=False)
    with LocalChain() as lab:
        yield lab


@pytest.fixture(scope="session")
def source_controller(control_plane: ControlPlane, work_dir: Path) -> Iterator[SourceController]:
    """source-controller as ``flux-system/source-controller`` with the module's ClusterRole."""
    sc_dir = _source_controller_dir()
    kubeconfig = control_plane.service_account_kubeconfig(
        sc.NAMESPACE, sc.SERVICE_ACCOUNT, sc.rbac_docs(sc_dir)
    )
    with sc.running(SourceController(sc_dir, kubeconfig, work_dir)) as controller:
        yield controller


@pytest.fixture(scope="session")
def proxychain(control_plane: ControlPlane, chain: LocalChain) -> Iterator[str]:
    """The lab chain as a ProxyChain; the edge's robot account is a basic-auth Secret in ``layerwatch``."""
    control_plane.apply(MANIFESTS / "namespace.yaml")
    control_plane.apply(basic_auth_secret("layerwatch", "lab-edge", EDGE_USER))
    hops = []
    for hop in chain.hops:
        entry: dict[str, Any] = {"name": hop.name, "url": hop.url}
        if hop.credentials:
            entry["secretRef"] = {"name": "lab-edge", "namespace": "layerwatch"}
        hops.append(entry)
    name = "e2e-lab"
    control_plane.apply(
        {
            "apiVersion": "layerwatch.io/v1alpha1",
            "kind": "ProxyChain",
            "metadata": {"name": name},
            "spec": {"hops": hops, "interval": CHAIN_INTERVAL},
        }
    )
    yield name
    control_plane.delete({"apiVersion": f"{LW[0]}/{LW[1]}", "kind": "ProxyChain", "metadata": {"name": name}})


@pytest.fixture(scope="session")
def layerwatch(control_plane: ControlPlane, proxychain: str, work_dir: Path) -> Iterator[Operator]:
    """``layerwatch operator`` as ServiceAccount layerwatch/layerwatch with the manifests' RBAC only."""
    rbac = load_docs(MANIFESTS / "clusterrole.yaml") + load_docs(MANIFESTS / "clusterrolebinding.yaml")
    control_plane.apply(MANIFESTS / "serviceaccount.yaml")
    kubeconfig = control_plane.service_account_kubeconfig("layerwatch", "layerwatch", rbac)
    operator = Operator(kubeconfig, work_dir)
    try:
        operator.start()
        yield operator
    finally:
        operator.stop()
        if operator.process is not None and operator.process.returncode not in (0, -15):
            print(f"--- layerwatch log (exit {operator.process.returncode})\n{operator.logs()}")


@pytest.fixture
def namespace(control_plane: ControlPlane, chain: LocalChain) -> str:
    """A fresh namespace with ``edge-pull``: the edge robot as a kubernetes.io/dockerconfigjson Secret."""
    name = control_plane.create_namespace("lw-e2e")
    user, password = EDGE_USER
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config = {"auths": {chain.hop("edge").address: {"username": user, "password": password, "auth": auth}}}
    control_plane.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": sc.EDGE_PULL_SECRET, "namespace": name},
            "stringData": {".dockerconfigjson": json.dumps(config)},
        }
    )
    return name


@pytest.fixture(autouse=True)
def _clean_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    """No fault outlives the test that set it."""
    yield
    if "chain" in request.fixturenames:
        lab: LocalChain = request.getfixturevalue("chain")
        for hop in lab.hops:
            hop.gateway.faults.clear()
