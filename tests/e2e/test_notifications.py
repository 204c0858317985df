"""End to end: layerwatch's findings reach Flux's own alerting through the real notification-controller.

notification-controller (built from its Go module) runs beside source-controller and a
``layerwatch operator`` started with ``--notification-address`` pointing at its event receiver. A
Flux ``Alert`` on every OCIRepository of the test namespace hands events to a ``Provider`` of type
``generic``, a webhook in this process. A layer lost at core gives exactly one notification naming
the hop and the layer; the recovery gives exactly one more.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.e2e import source_controller as sc
from tests.e2e.flux_harness import WAIT, healthy_app, holds, wait_conditions
from tests.e2e.notification_controller import (
    CLUSTER_ROLE,
    SERVICE_ACCOUNT,
    NotificationController,
    Webhook,
    provider_and_alert,
)
from tests.e2e.source_controller import SourceController, ensure_built, poll
from tests.k8s.operator_harness import CONDITION, Operator

from lab.chain import LocalChain
from lab.kube import ControlPlane

pytestmark = pytest.mark.e2e

SETTLE = 12.0
"""Seconds to keep watching after a notification for any that should not come (4 check intervals)."""


@pytest.fixture(scope="module")
def notification_controller(control_plane: ControlPlane, work_dir: Path) -> Iterator[NotificationController]:
    directory, _ = ensure_built("notification-controller")
    for crd in sorted((directory / "crd").glob("*.yaml")):
        control_plane.apply(crd)
    rbac = sc.rbac_docs(directory, SERVICE_ACCOUNT, CLUSTER_ROLE)
    kubeconfig = control_plane.service_account_kubeconfig(sc.NAMESPACE, SERVICE_ACCOUNT, rbac)
    with sc.running(NotificationController(directory, kubeconfig, work_dir)) as controller:
        yield controller


@pytest.fixture(scope="module")
def notifying_layerwatch(
    layerwatch: Operator, notification_controller: NotificationController, work_dir: Path
) -> Iterator[Operator]:
    """The session's operator paused, and one that also posts to notification-controller in its place.

    Two operators on the same objects would race for each transition's event, and only the one
    that posts it forwards it.
    """
    layerwatch.stop()
    log_dir = work_dir / "notifying"
    log_dir.mkdir(exist_ok=True)
    operator = Operator(
        layerwatch.kubeconfig, log_dir, "--notification-address", notification_controller.address
    )
    try:
        operator.start()
        yield operator
    finally:
        operator.stop()
        layerwatch.start()


@pytest.fixture
def webhook(control_plane: ControlPlane, namespace: str) -> Iterator[Webhook]:
    with Webhook() as hook:
        control_plane.apply(list(provider_and_alert(namespace, hook.url)))
        yield hook


def _exactly(
    webhook: Webhook, name: str, count: int, what: str, controllers: tuple[Any, ...]
) -> list[dict[str, Any]]:
    """Wait for the ``count``-th notification about ``name``, then make sure no other one follows."""

    def arrived() -> list[dict[str, Any]] | None:
        for controller in controllers:
            logs = controller.logs()
            assert controller.process is not None and controller.process.poll() is None, logs
        received = webhook.about(name)
        return received if len(received) >= count else None

    try:
        poll(what, arrived, WAIT)
    except AssertionError as exc:
        logs = "\n".join(f"--- {type(c).__name__}\n{c.logs()}" for c in controllers)
        raise AssertionError(f"{exc}\nreceived: {webhook.received}\n{logs}") from None
    time.sleep(SETTLE)
    received = webhook.about(name)
    assert len(received) == count, [(e["reason"], e["message"]) for e in received]
    return received


def test_a_layer_lost_at_core_is_one_flux_notification_and_its_recovery_one_more(
    chain: LocalChain,
    source_controller: SourceController,
    notification_controller: NotificationController,
    notifying_layerwatch: Operator,
    custom: client.CustomObjectsApi,
    namespace: str,
    webhook: Webhook,
) -> None:
    controllers = (source_controller, notifying_layerwatch)
    repository, layer, revision = healthy_app(chain, custom, namespace, controllers)
    assert webhook.about("app") == [], "a healthy artifact is not news"

    chain.faults("core").set(
        [{"kind": "drop", "repository": chain.repository_at("core", repository), "digest": layer}]
    )
    everyone = (notification_controller, notifying_layerwatch)
    (lost,) = _exactly(webhook, "app", 1, "the LayerMissing notification", everyone)
    assert lost["involvedObject"]["kind"] == "OCIRepository"
    assert lost["involvedObject"]["namespace"] == namespace
    assert (lost["severity"], lost["reason"]) == ("error", "LayerMissing")
    assert lost["message"].startswith(f"hop core ({chain.hop('core').address}/p-ghcr/{repository}): ")
    assert f"layer 0 {layer[:19]}" in lost["message"] and "missing (404 BLOB_UNKNOWN)" in lost["message"]
    assert lost["reportingController"] == "layerwatch"
    # notification-controller strips the object's API group from layerwatch's metadata keys.
    assert lost["metadata"]["hop"] == "core"
    assert lost["metadata"]["verdict"] == "LayerMissing"
    assert lost["metadata"]["revision"] == revision
    assert webhook.headers[0].get("Gotk-Component") == "layerwatch"

    chain.faults("core").clear()
    wait_conditions(
        custom,
        namespace,
        "app",
        "ProxyHealthy=True again",
        lambda c: holds(c, CONDITION, "True"),
        controllers,
    )
    first, recovered = _exactly(webhook, "app", 2, "the ProxyRecovered notification", everyone)
    assert first == lost
    assert (recovered["severity"], recovered["reason"]) == ("info", "ProxyRecovered")
    assert "hop" not in recovered["metadata"]
