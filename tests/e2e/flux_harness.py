"""The Flux side of the e2e tests: OCIRepositories as source-controller reconciles them, and waits
on both controllers' conditions that show both logs when they time out."""

from __future__ import annotations

import secrets
from typing import Any

from kubernetes import client
from tests.e2e.source_controller import (
    EDGE_PULL_SECRET,
    SourceController,
    conditions_of,
    get_repository,
    poll,
)
from tests.k8s.operator_harness import CONDITION, FLUX, Operator

from lab.artifacts import push_flux_artifact
from lab.chain import LocalChain

WAIT = 180.0
"""Upper bound of every wait for a controller to reach a state (both usually need seconds)."""
FLUX_INTERVAL = "10s"


def fresh_repository(chain: LocalChain) -> tuple[str, str]:
    """A fresh origin repository name and its ``oci://`` URL at the edge."""
    repository = f"org/e2e-{secrets.token_hex(4)}"
    return repository, f"oci://{chain.hop('edge').address}/{chain.repository_at('edge', repository)}"


def create_ocirepository(
    custom: client.CustomObjectsApi, namespace: str, name: str, url: str, tag: str, **spec: Any
) -> None:
    body = {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "OCIRepository",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "url": url,
            "ref": {"tag": tag},
            "interval": FLUX_INTERVAL,
            "insecure": True,
            "secretRef": {"name": EDGE_PULL_SECRET},
            **spec,
        },
    }
    custom.create_namespaced_custom_object(*FLUX, namespace, "ocirepositories", body)


def healthy_app(
    chain: LocalChain,
    custom: client.CustomObjectsApi,
    namespace: str,
    controllers: tuple[SourceController, Operator],
) -> tuple[str, str, str]:
    """A fresh artifact behind OCIRepository ``app``, Ready and ProxyHealthy.

    Returns its origin repository, its content layer's digest and Flux's revision.
    """
    repository, url = fresh_repository(chain)
    pushed = push_flux_artifact(chain.push_address, repository, "v1")
    create_ocirepository(custom, namespace, "app", url, "v1")
    body, _ = wait_conditions(custom, namespace, "app", "both healthy", both_healthy, controllers)
    return repository, pushed.content_layer.digest, body["status"]["artifact"]["revision"]


def repository_state(
    custom: client.CustomObjectsApi, namespace: str, name: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    body = get_repository(custom, namespace, name)
    return body, conditions_of(body)


def wait_conditions(
    custom: client.CustomObjectsApi,
    namespace: str,
    name: str,
    what: str,
    accept: Any,
    controllers: tuple[SourceController, Operator],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Poll the object until ``accept(conditions)``; on timeout show both conditions and both logs."""
    seen: dict[str, Any] = {}

    def probe() -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
        both_alive(*controllers)
        body, conditions = repository_state(custom, namespace, name)
        seen["conditions"] = conditions
        return (body, conditions) if accept(conditions) else None

    try:
        return poll(f"{namespace}/{name}: {what}", probe, WAIT)
    except AssertionError as exc:
        source_controller, operator = controllers
        raise AssertionError(
            f"{exc}\nconditions: {seen.get('conditions')}\n--- source-controller\n"
            f"{source_controller.logs(3000)}\n--- layerwatch\n{operator.logs()}"
        ) from None


def wait_proxy_unhealthy(
    custom: client.CustomObjectsApi,
    namespace: str,
    name: str,
    controllers: tuple[SourceController, Operator],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Wait until layerwatch's condition on the object is False; the object and its conditions."""
    return wait_conditions(
        custom, namespace, name, "ProxyHealthy=False", lambda c: holds(c, CONDITION, "False"), controllers
    )


def both_alive(source_controller: SourceController, operator: Operator) -> None:
    assert source_controller.alive(), f"source-controller died:\n{source_controller.logs()}"
    assert operator.process is not None and operator.process.poll() is None, (
        f"layerwatch died:\n{operator.logs()}"
    )


def holds(conditions: dict[str, dict[str, Any]], kind: str, status: str, reason: str | None = None) -> bool:
    entry = conditions.get(kind)
    return entry is not None and entry["status"] == status and (reason is None or entry["reason"] == reason)


def both_healthy(conditions: dict[str, dict[str, Any]]) -> bool:
    return holds(conditions, "Ready", "True", "Succeeded") and holds(conditions, CONDITION, "True", "Healthy")
