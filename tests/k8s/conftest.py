"""Fixtures for tests against a real kube-apiserver + etcd (``lab.kube.ControlPlane``).

- ``control_plane`` (session): etcd + kube-apiserver with RBAC, the real Flux OCIRepository CRD
  (source-controller module) and the ProxyChain CRD installed.
- ``admin_api`` (session): a ``kubernetes.client.ApiClient`` with cluster-admin rights.
- ``namespace``: a fresh namespace per test (namespaces never finish deleting without a
  controller-manager, so tests never share or reuse one).
- ``operator_kubeconfig`` (session): a kubeconfig holding only a TokenRequest token (and the CA) for
  ServiceAccount layerwatch/layerwatch, bound to exactly ``manifests/clusterrole.yaml``.
- ``operator_api`` (session): an ApiClient built from ``operator_kubeconfig``.

Missing binaries are built (``hack/build-tools.sh``) once at collection end, before any test runs,
so a cold build (10-25 min) is not charged to the first test's timeout.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.k8s.operator_harness import LAB_INTERVAL, LW, proxychain_document

from lab.chain import LocalChain
from lab.kube import (
    REPO,
    ControlPlane,
    ControlPlaneError,
    Tools,
    basic_auth_secret,
    find_tools,
    load_docs,
    load_flux_crds,
)

MANIFESTS = REPO / "manifests"
PROXYCHAIN_CRD = REPO / "crds" / "proxychain.yaml"
OPERATOR_NAMESPACE = "layerwatch"
OPERATOR_SA = "layerwatch"

_tools: Tools | None = None
_tools_error: str | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/k8s needs the control plane: mark it so ``-m "not k8s"`` skips it."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.k8s)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Find (or build, on a clean machine) the binaries once, outside any test's timeout."""
    global _tools, _tools_error
    if not any(item.get_closest_marker("k8s") for item in session.items):
        return
    started = time.monotonic()
    try:
        _tools = find_tools(build=True)
    except Exception as exc:  # reported by the fixture, as a test error rather than a crash
        _tools_error = f"{type(exc).__name__}: {exc}"
    if time.monotonic() - started > 5:
        print(f"\n[k8s] tools ready after {time.monotonic() - started:.0f} s", file=sys.stderr)


def _get_tools() -> Tools:
    if _tools is not None:
        return _tools
    if _tools_error is not None:
        pytest.fail(
            f"cannot get the control-plane tools (hack/build-tools.sh): {_tools_error}", pytrace=False
        )
    return find_tools(build=True)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """A running control plane with the Flux OCIRepository and ProxyChain CRDs Established."""
    tools = _get_tools()
    cp = ControlPlane(tools)
    try:
        cp.start()
    except ControlPlaneError as exc:
        pytest.fail(f"control plane did not start: {exc}", pytrace=False)
    try:
        started = time.monotonic()
        cp.apply(load_flux_crds(tools))
        cp.apply(PROXYCHAIN_CRD)
        cp.timings["crds"] = time.monotonic() - started
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def admin_api(control_plane: ControlPlane) -> Any:
    """Cluster-admin ``kubernetes.client.ApiClient`` (closed when the control plane stops)."""
    return control_plane.api_client()


@pytest.fixture
def namespace(control_plane: ControlPlane) -> str:
    """A fresh namespace for this test."""
    return control_plane.create_namespace("lw-test")


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane: ControlPlane) -> Path:
    """The operator's identity as deployed: SA layerwatch/layerwatch with the manifests' RBAC only."""
    rbac = load_docs(MANIFESTS / "clusterrole.yaml") + load_docs(MANIFESTS / "clusterrolebinding.yaml")
    control_plane.apply(MANIFESTS / "namespace.yaml")
    control_plane.apply(MANIFESTS / "serviceaccount.yaml")
    return control_plane.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_SA, rbac)


@pytest.fixture(scope="session")
def operator_api(control_plane: ControlPlane, operator_kubeconfig: Path) -> Any:
    """``kubernetes.client.ApiClient`` authenticated as the operator's ServiceAccount."""
    return control_plane.api_client(operator_kubeconfig)


# --- the lab registry chain and a ProxyChain for it, shared by the operator tests ----------------


@pytest.fixture(scope="module")
def chain() -> Iterator[LocalChain]:
    with LocalChain() as lab:
        yield lab


@pytest.fixture(scope="module")
def proxychain(control_plane: ControlPlane, operator_kubeconfig: Path, chain: LocalChain) -> Iterator[str]:
    """A ProxyChain for the lab chain; the edge's robot account is a basic-auth Secret."""
    control_plane.apply(basic_auth_secret("layerwatch", "lab-edge", chain.hop("edge").credentials))
    name = f"lab-{secrets.token_hex(3)}"
    control_plane.apply(proxychain_document(chain, name, LAB_INTERVAL))
    yield name
    client.CustomObjectsApi(control_plane.api_client()).delete_cluster_custom_object(*LW, "proxychains", name)


@pytest.fixture
def custom(admin_api: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(admin_api)


@pytest.fixture
def core(admin_api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(admin_api)
