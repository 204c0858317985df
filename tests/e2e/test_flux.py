"""End to end with the real Flux source-controller and layerwatch on the same OCIRepositories.

Both controllers run as processes with their own ServiceAccounts against one apiserver; the
OCIRepositories point at the edge of the lab chain (edge -> core -> origin) with the edge robot's
dockerconfigjson Secret, exactly as a cluster behind two Harbor proxy projects would.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from tests.e2e.flux_harness import (
    WAIT,
    both_alive,
    both_healthy,
    create_ocirepository,
    fresh_repository,
    healthy_app,
    holds,
    repository_state,
    wait_conditions,
    wait_proxy_unhealthy,
)
from tests.e2e.source_controller import (
    SourceController,
    conditions_of,
    get_repository,
    poll,
    request_reconcile,
)
from tests.k8s.operator_harness import CONDITION, FLUX, Operator, events, metric_value

from lab.artifacts import FLUX_CONTENT_MEDIA_TYPE, OCTET_STREAM, push_flux_artifact, push_multilayer_artifact
from lab.chain import LocalChain

pytestmark = pytest.mark.e2e


def _handled(
    custom: client.CustomObjectsApi, namespace: str, name: str, requested: str, sc: SourceController
) -> dict[str, Any]:
    """Wait until source-controller has handled the reconcile request ``requested``."""

    def probe() -> dict[str, Any] | None:
        assert sc.alive(), f"source-controller died:\n{sc.logs()}"
        body = get_repository(custom, namespace, name)
        return body if (body.get("status") or {}).get("lastHandledReconcileAt") == requested else None

    return poll(f"source-controller to handle requestedAt={requested}", probe, 60, interval=0.2)


def _checks(operator: Operator, chain: str, hop: str) -> float:
    """layerwatch's check counter for one hop of the chain, all verdicts summed."""
    total = 0.0
    for line in operator.metrics().splitlines():
        if (
            line.startswith("layerwatch_checks_total{")
            and f'chain="{chain}"' in line
            and f'hop="{hop}"' in line
        ):
            total += float(line.rpartition(" ")[2])
    return total


@dataclasses.dataclass
class Sampling:
    """What `_reconcile_and_sample` saw."""

    handled: int = 0
    samples: int = 0
    proxy_flips: int = 0
    seconds: float = 0.0


def _reconcile_and_sample(
    custom: client.CustomObjectsApi,
    namespace: str,
    name: str,
    controllers: tuple[SourceController, Operator],
    invariant: Callable[[dict[str, dict[str, Any]]], bool],
    *,
    seconds: float,
    requests: int,
    tick: Callable[[], None] = lambda: None,
) -> Sampling:
    """Request reconciles one after the other (each handled before the next) for at least ``seconds``
    and ``requests`` requests, reading the object every ~0.15 s; ``invariant`` must hold at every read.

    Counts the handled requests and the transitions of layerwatch's condition status.
    """
    seen = Sampling()
    last_proxy: str | None = None
    started = time.monotonic()
    requested: str | None = None
    requested_at = started
    while seen.handled < requests or time.monotonic() - started < seconds:
        assert time.monotonic() - started < WAIT, f"only {seen} in {WAIT:.0f}s"
        tick()
        if requested is None:
            requested, requested_at = request_reconcile(custom, namespace, name), time.monotonic()
        both_alive(*controllers)
        body, conditions = repository_state(custom, namespace, name)
        seen.samples += 1
        assert invariant(conditions), f"after {seen}: {conditions}"
        proxy = conditions[CONDITION]["status"]
        seen.proxy_flips += last_proxy is not None and proxy != last_proxy
        last_proxy = proxy
        if (body.get("status") or {}).get("lastHandledReconcileAt") == requested:
            seen.handled += 1
            requested = None
        else:
            assert time.monotonic() - requested_at < 60, f"requestedAt={requested} not handled in 60s"
        time.sleep(0.15)
    seen.seconds = round(time.monotonic() - started, 1)
    return seen


def _flux_reconciles(source_controller: SourceController) -> float:
    """source-controller's OCIRepository reconciles so far (controller-runtime's counter)."""
    total = 0.0
    for line in source_controller.metrics().splitlines():
        if line.startswith("controller_runtime_reconcile_total{") and 'controller="ocirepository"' in line:
            total += float(line.rpartition(" ")[2])
    return total


def _untouched_by_layerwatch(body: dict[str, Any]) -> None:
    """layerwatch adds no finalizer and no annotation (Flux's own finalizer is expected)."""
    assert set(body["metadata"].get("finalizers") or []) <= {"finalizers.fluxcd.io"}, body["metadata"]
    annotations = body["metadata"].get("annotations") or {}
    assert set(annotations) <= {"reconcile.fluxcd.io/requestedAt"}, annotations


def test_ready_and_proxy_healthy_stay_present_through_many_reconciles_of_both_controllers(
    chain: LocalChain,
    source_controller: SourceController,
    layerwatch: Operator,
    proxychain: str,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    repository, url = fresh_repository(chain)
    pushed = push_flux_artifact(chain.push_address, repository, "v1")
    create_ocirepository(custom, namespace, "app", url, "v1")
    controllers = (source_controller, layerwatch)

    body, conditions = wait_conditions(
        custom, namespace, "app", "Ready=True and ProxyHealthy=True", both_healthy, controllers
    )
    revision = f"v1@{pushed.manifest_digest}"
    layer = pushed.content_layer.digest
    assert body["status"]["artifact"]["revision"] == revision
    assert revision in conditions["Ready"]["message"]
    assert conditions[CONDITION]["message"].startswith("hop ")
    ready_transition = conditions["Ready"]["lastTransitionTime"]
    proxy_transition = conditions[CONDITION]["lastTransitionTime"]

    # Phase 1, quiet: reconcile both many times (source-controller on request, as `flux reconcile`
    # does, and on its 10 s interval; layerwatch every 3 s) and sample the object throughout.
    checks_before = _checks(layerwatch, proxychain, "edge")
    reconciles_before = _flux_reconciles(source_controller)
    quiet = _reconcile_and_sample(custom, namespace, "app", controllers, both_healthy, seconds=30, requests=8)
    checks = _checks(layerwatch, proxychain, "edge") - checks_before
    assert checks >= 5, f"layerwatch checked the edge only {checks:.0f} times in {quiet}"
    body, conditions = repository_state(custom, namespace, "app")
    assert body["status"]["artifact"]["revision"] == revision
    # Nothing changed, so neither controller flipped its condition.
    assert conditions["Ready"]["lastTransitionTime"] == ready_transition
    assert conditions[CONDITION]["lastTransitionTime"] == proxy_transition
    reconciles = _flux_reconciles(source_controller) - reconciles_before
    assert reconciles >= quiet.handled, f"source-controller reconciled {reconciles} times in {quiet}"

    # Phase 2, both writing: core loses the layer and gets it back every 5 s, so layerwatch
    # rewrites its condition while source-controller keeps patching Reconciling and
    # lastHandledReconcileAt. Ready must stay True and ProxyHealthy must stay present.
    drop = [{"kind": "drop", "repository": chain.repository_at("core", repository), "digest": layer}]
    flaps = {"on": False, "at": time.monotonic()}

    def flap() -> None:
        if time.monotonic() - flaps["at"] >= 5:
            flaps["on"], flaps["at"] = not flaps["on"], time.monotonic()
            chain.faults("core").set(drop if flaps["on"] else [])

    def ready_and_present(c: dict[str, dict[str, Any]]) -> bool:
        return holds(c, "Ready", "True", "Succeeded") and CONDITION in c

    busy = _reconcile_and_sample(
        custom, namespace, "app", controllers, ready_and_present, seconds=45, requests=8, tick=flap
    )
    assert busy.proxy_flips >= 2, f"layerwatch wrote too few transitions to exercise both writers: {busy}"
    chain.faults("core").clear()
    body, conditions = wait_conditions(
        custom, namespace, "app", "both healthy again", both_healthy, controllers
    )
    assert body["status"]["artifact"]["revision"] == revision
    assert conditions["Ready"]["lastTransitionTime"] == ready_transition
    _untouched_by_layerwatch(body)
    print(f"\n[e2e] quiet: {quiet}, {checks:.0f} layerwatch edge checks; busy: {busy}")


def test_a_layer_lost_at_the_middle_hop_is_seen_by_layerwatch_while_flux_stays_ready(
    chain: LocalChain,
    source_controller: SourceController,
    layerwatch: Operator,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    controllers = (source_controller, layerwatch)
    repository, layer, revision = healthy_app(chain, custom, namespace, controllers)

    # Flux has pulled through the edge, so the edge registry caches every blob; now core (the
    # middle hop) loses the content layer: its gateway answers 404 for it, HEAD and GET.
    chain.faults("core").set(
        [{"kind": "drop", "repository": chain.repository_at("core", repository), "digest": layer}]
    )

    body, conditions = wait_proxy_unhealthy(custom, namespace, "app", controllers)
    proxy = conditions[CONDITION]
    assert proxy["reason"] == "LayerMissing", proxy
    assert proxy["message"].startswith(f"hop core ({chain.hop('core').address}/p-ghcr/{repository}): "), proxy
    assert f"layer 0 {layer[:19]}" in proxy["message"], proxy
    assert "missing (404 BLOB_UNKNOWN)" in proxy["message"], proxy
    # Flux has the digest: it skips pulling an unchanged revision and stays Ready.
    assert holds(conditions, "Ready", "True", "Succeeded"), conditions
    assert body["status"]["artifact"]["revision"] == revision

    warnings = poll(
        "layerwatch's Warning event",
        lambda: [e for e in events(core, namespace, "app") if e.type == "Warning"],
        60,
    )
    assert [e.reason for e in warnings] == ["LayerMissing"], [(e.reason, e.message) for e in warnings]
    assert warnings[0].message.startswith("hop core ("), warnings[0].message

    # The edge still serves the layer from its cache (it is not to blame); only core is broken.
    labels = {"namespace": namespace, "name": "app"}
    hops = poll(
        "per-hop series",
        lambda: (
            {
                h: metric_value(layerwatch.metrics(), "layerwatch_artifact_hop_healthy", hop=h, **labels)
                for h in ("edge", "core", "origin")
            }
            if metric_value(layerwatch.metrics(), "layerwatch_artifact_hop_healthy", hop="core", **labels)
            == 0.0
            else None
        ),
        60,
    )
    assert hops == {"edge": 1.0, "core": 0.0, "origin": 1.0}, hops

    # Make source-controller reconcile a few times while the hop is broken: still Ready, same revision.
    for _ in range(3):
        body = _handled(
            custom, namespace, "app", request_reconcile(custom, namespace, "app"), source_controller
        )
        conditions = conditions_of(body)
        assert holds(conditions, "Ready", "True", "Succeeded"), conditions
        assert holds(conditions, CONDITION, "False", "LayerMissing"), conditions
        assert body["status"]["artifact"]["revision"] == revision
    _untouched_by_layerwatch(body)


def test_layer_zero_not_flux_content_fails_both_until_layer_selector_is_set(
    chain: LocalChain,
    source_controller: SourceController,
    layerwatch: Operator,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    """fluxcd/flux2#4955: layers [application/octet-stream, flux content] and no layerSelector."""
    repository, url = fresh_repository(chain)
    pushed = push_multilayer_artifact(chain.push_address, repository, "v2")
    assert [layer.media_type for layer in pushed.layers] == [OCTET_STREAM, FLUX_CONTENT_MEDIA_TYPE]
    create_ocirepository(custom, namespace, "layers", url, "v2")
    controllers = (source_controller, layerwatch)

    body, conditions = wait_conditions(
        custom,
        namespace,
        "layers",
        "ProxyHealthy=False and Ready=False",
        lambda c: (
            holds(c, CONDITION, "False")
            and holds(c, "Ready", "False")
            and c["Ready"]["reason"] != "Progressing"
        ),
        controllers,
    )
    proxy, ready = conditions[CONDITION], conditions["Ready"]
    print(f"\n[e2e] source-controller Ready: reason={ready['reason']} message={ready['message']!r}")
    print(f"[e2e] layerwatch ProxyHealthy: reason={proxy['reason']} message={proxy['message']!r}")
    # layerwatch names the layer Flux would extract (layer 0, octet-stream) ...
    assert proxy["reason"] == "LayerOrderMismatch", proxy
    assert f"layer 0 is {OCTET_STREAM}, not the Flux content layer (layer 1)" in proxy["message"], proxy
    # ... the origin already serves it that way, so the blame is the origin, not a proxy.
    assert proxy["message"].startswith("hop origin ("), proxy
    # ... and source-controller fails on the same object, extracting that layer.
    assert ready["reason"] == "OCIArtifactLayerOperationFailed", ready
    assert re.search(r"(?i)extract|layer|gzip", ready["message"]), ready
    assert holds(conditions, "FetchFailed", "True", "OCIArtifactLayerOperationFailed"), conditions
    assert "artifact" not in (body.get("status") or {}), body["status"]
    warnings = poll(
        "layerwatch's Warning event",
        lambda: [e for e in events(core, namespace, "layers") if e.type == "Warning"],
        60,
    )
    assert [e.reason for e in warnings] == ["LayerOrderMismatch"], [(e.reason, e.message) for e in warnings]
    flux_warnings = poll(
        "source-controller's Warning event",
        lambda: [
            e
            for e in core.list_namespaced_event(namespace).items
            if e.involved_object.name == "layers"
            and e.source is not None
            and e.source.component == "source-controller"
            and e.type == "Warning"
        ],
        60,
    )
    assert {e.reason for e in flux_warnings} == {"OCIArtifactLayerOperationFailed"}, [
        (e.reason, e.message) for e in flux_warnings
    ]

    patch = {"spec": {"layerSelector": {"mediaType": FLUX_CONTENT_MEDIA_TYPE, "operation": "extract"}}}
    custom.patch_namespaced_custom_object(*FLUX, namespace, "ocirepositories", "layers", patch)

    body, conditions = wait_conditions(
        custom, namespace, "layers", "both healthy with layerSelector", both_healthy, controllers
    )
    assert body["status"]["artifact"]["revision"] == f"v2@{pushed.manifest_digest}"
    assert body["status"]["observedLayerSelector"]["mediaType"] == FLUX_CONTENT_MEDIA_TYPE
    recovered = poll(
        "ProxyRecovered event",
        lambda: [e for e in events(core, namespace, "layers") if e.reason == "ProxyRecovered"],
        60,
    )
    assert recovered[0].type == "Normal"
    _untouched_by_layerwatch(body)


def test_a_flux_reconcile_request_does_not_make_layerwatch_replan(
    chain: LocalChain,
    source_controller: SourceController,
    layerwatch: Operator,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    """`flux reconcile` (and notification-controller's Receivers) only set reconcile.fluxcd.io/requestedAt.

    No layerwatch input changed, so layerwatch must not re-plan: every re-plan re-reads every
    ProxyChain Secret and every OCIRepository's secretRef, O(sources) GETs per request.
    """
    repository, url = fresh_repository(chain)
    push_flux_artifact(chain.push_address, repository, "v1")
    create_ocirepository(custom, namespace, "app", url, "v1")
    wait_conditions(custom, namespace, "app", "both healthy", both_healthy, (source_controller, layerwatch))

    def plans() -> int:
        return layerwatch.log_path.read_text(errors="replace").count("planned ")

    time.sleep(2)  # let the plan for this object settle
    before = plans()
    for _ in range(5):
        _handled(custom, namespace, "app", request_reconcile(custom, namespace, "app"), source_controller)
        time.sleep(1.5)  # longer than the operator's debounce, so each request could re-plan
    replans = plans() - before
    assert replans <= 1, f"layerwatch re-planned {replans} times for 5 requestedAt changes"
