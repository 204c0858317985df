"""End to end through the real Harbor: Flux's source-controller pulls through the edge of two chained
Harbor v2.15.2 proxy caches (edge -> core -> origin registry) with the edge project's robot in a
``kubernetes.io/dockerconfigjson`` Secret, while layerwatch's operator checks every hop with each
Harbor's own robot (basic-auth Secrets named by a ProxyChain).

One Harbor chain for this module (a chain is ~11 processes on a shared 2-core box).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from tests.e2e.conftest import CHAIN_INTERVAL
from tests.e2e.flux_harness import (
    both_healthy,
    create_ocirepository,
    holds,
    wait_conditions,
    wait_proxy_unhealthy,
)
from tests.e2e.source_controller import EDGE_PULL_SECRET, SourceController, poll
from tests.k8s.operator_harness import CONDITION, LW, Operator, metric_value

from lab.artifacts import PushedArtifact, oras_path, push_flux_artifact
from lab.harbor import HarborChain, missing_harbor_parts
from lab.kube import ControlPlane, basic_auth_secret

pytestmark = [pytest.mark.e2e, pytest.mark.harbor]

CHAIN = "e2e-harbor"


@pytest.fixture(scope="module")
def harbor() -> Iterator[HarborChain]:
    """Origin registry <- core Harbor <- edge Harbor, private proxy projects, a robot each."""
    missing = missing_harbor_parts()
    if not os.access(oras_path(), os.X_OK):
        missing.append("oras (hack/build-tools.sh oras)")
    if missing:
        pytest.fail("the real Harbor chain needs: " + "; ".join(missing), pytrace=False)
    with HarborChain() as chain:
        yield chain


@pytest.fixture(scope="module")
def harbor_proxychain(control_plane: ControlPlane, harbor: HarborChain) -> Iterator[str]:
    """The Harbor chain as a ProxyChain; each Harbor hop's robot is a basic-auth Secret in ``layerwatch``."""
    hops: list[dict[str, Any]] = []
    for hop in harbor.hops:
        entry: dict[str, Any] = {"name": hop.name, "url": hop.url}
        if hop.credentials is not None:
            secret = f"harbor-{hop.name}"
            control_plane.apply(basic_auth_secret("layerwatch", secret, hop.credentials))
            entry["secretRef"] = {"name": secret, "namespace": "layerwatch"}
        hops.append(entry)
    document = {
        "apiVersion": f"{LW[0]}/{LW[1]}",
        "kind": "ProxyChain",
        "metadata": {"name": CHAIN},
        "spec": {"hops": hops, "interval": CHAIN_INTERVAL},
    }
    control_plane.apply(document)
    yield CHAIN
    control_plane.delete(document)


@pytest.fixture
def harbor_namespace(control_plane: ControlPlane, harbor: HarborChain, harbor_proxychain: str) -> str:
    """A fresh namespace with ``edge-pull``: the edge Harbor's robot as a dockerconfigjson Secret."""
    name = control_plane.create_namespace("lw-harbor")
    edge = harbor.harbor("edge")
    assert edge.credentials is not None
    user, password = edge.credentials
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config = {"auths": {edge.address: {"username": user, "password": password, "auth": auth}}}
    control_plane.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": EDGE_PULL_SECRET, "namespace": name},
            "stringData": {".dockerconfigjson": json.dumps(config)},
        }
    )
    return name


def _pushed(harbor: HarborChain) -> tuple[PushedArtifact, str]:
    """A fresh Flux artifact at the origin (no Harbor has it cached) and its ``oci://`` URL at the edge."""
    repository = f"org/e2e-{secrets.token_hex(4)}"
    pushed = push_flux_artifact(harbor.push_address, repository, "v1")
    return pushed, f"oci://{harbor.hop('edge').address}/{harbor.repository_at('edge', repository)}"


def _hop_health(operator: Operator, namespace: str, name: str) -> dict[str, float | None]:
    labels = {"namespace": namespace, "name": name}
    text = operator.metrics()
    return {
        hop: metric_value(text, "layerwatch_artifact_hop_healthy", hop=hop, **labels)
        for hop in ("edge", "core", "origin")
    }


@dataclasses.dataclass(frozen=True)
class HarborApp:
    """A fresh artifact behind OCIRepository ``app`` at the Harbor edge, Ready and ProxyHealthy."""

    pushed: PushedArtifact
    url: str
    namespace: str
    body: dict[str, Any]
    conditions: dict[str, dict[str, Any]]
    controllers: tuple[SourceController, Operator]


@pytest.fixture
def harbor_app(
    harbor: HarborChain,
    source_controller: SourceController,
    layerwatch: Operator,
    custom: client.CustomObjectsApi,
    harbor_namespace: str,
) -> HarborApp:
    controllers = (source_controller, layerwatch)
    pushed, url = _pushed(harbor)
    create_ocirepository(custom, harbor_namespace, "app", url, "v1")
    body, conditions = wait_conditions(
        custom, harbor_namespace, "app", "both healthy", both_healthy, controllers
    )
    return HarborApp(pushed, url, harbor_namespace, body, conditions, controllers)


def test_flux_pulls_through_two_real_harbors_and_layerwatch_reports_every_hop_healthy(
    harbor_app: HarborApp, layerwatch: Operator
) -> None:
    status = harbor_app.body["status"]
    assert status["artifact"]["revision"].endswith(harbor_app.pushed.manifest_digest), status
    assert harbor_app.conditions[CONDITION]["reason"] == "Healthy", harbor_app.conditions

    def all_healthy() -> dict[str, float | None] | None:
        hops = _hop_health(layerwatch, harbor_app.namespace, "app")
        return hops if set(hops.values()) == {1.0} else None

    assert poll("every hop's series healthy", all_healthy, 60) == {"edge": 1.0, "core": 1.0, "origin": 1.0}


def test_a_layer_whose_data_the_edge_harbor_lost_fails_flux_and_is_layer_corrupt_at_the_edge(
    harbor: HarborChain, harbor_app: HarborApp, layerwatch: Operator, custom: client.CustomObjectsApi
) -> None:
    """Data gone from the edge's storage while its Redis descriptor cache lists the blob: Harbor
    answers 200, the full length, no bytes, on every pull. A new OCIRepository for the artifact
    cannot be fetched; layerwatch blames the edge (core and origin stay healthy) and its condition
    names the diagnosis ``cached-data-lost``."""
    pushed, namespace, controllers = harbor_app.pushed, harbor_app.namespace, harbor_app.controllers
    layer = pushed.content_layer
    harbor.harbor("edge").processes.lose_blob(layer.digest, layer.size)  # once the edge has stored it

    _, conditions = wait_proxy_unhealthy(custom, namespace, "app", controllers)
    proxy = conditions[CONDITION]
    assert proxy["reason"] == "LayerCorrupt", proxy
    assert proxy["message"].startswith(f"hop edge ({harbor.hop('edge').address}/"), proxy
    assert "0 of" in proxy["message"], proxy
    assert "cached-data-lost: " in proxy["message"] and "never heals by itself" in proxy["message"], proxy
    hops = _hop_health(layerwatch, namespace, "app")
    assert hops["core"] == hops["origin"] == 1.0, hops

    create_ocirepository(custom, namespace, "again", harbor_app.url, "v1")
    _, again = wait_conditions(
        custom,
        namespace,
        "again",
        "Flux fails to pull",
        lambda c: holds(c, "Ready", "False") and holds(c, CONDITION, "False"),
        controllers,
    )
    assert again["Ready"]["reason"] == "OCIArtifactLayerOperationFailed", again["Ready"]
    assert "unexpected EOF" in again["Ready"]["message"], again["Ready"]
    assert again[CONDITION]["reason"] == "LayerCorrupt", again
