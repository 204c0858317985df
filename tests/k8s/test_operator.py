"""The operator end to end: real kube-apiserver, real registry chain, operator as its ServiceAccount."""

from __future__ import annotations

import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.k8s.operator_harness import (
    CONDITION,
    FLUX,
    LAB_INTERVAL,
    LW,
    Operator,
    condition,
    events,
    metric_value,
    ocirepository,
    proxychain_document,
    push_artifact,
    wait_for,
)

from lab.chain import LocalChain
from lab.kube import ControlPlane


@pytest.fixture
def operator(operator_kubeconfig: Path, proxychain: str, tmp_path: Path) -> Iterator[Operator]:
    process = Operator(operator_kubeconfig, tmp_path).start()
    try:
        yield process
    finally:
        process.stop()
        if process.process is not None and process.process.returncode not in (0, -signal.SIGTERM):
            print(process.logs())


def _assert_untouched(
    custom: client.CustomObjectsApi, namespace: str, name: str, annotations: dict[str, str] | None = None
) -> None:
    """No finalizer, and no annotation beyond what the test itself set."""
    body = custom.get_namespaced_custom_object(*FLUX, namespace, "ocirepositories", name)
    assert not body["metadata"].get("finalizers"), body["metadata"]
    assert (body["metadata"].get("annotations") or {}) == (annotations or {}), body["metadata"]


def test_a_layer_lost_at_the_middle_hop_turns_the_condition_false_and_recovers(
    chain: LocalChain,
    operator: Operator,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    repository, url, layer = push_artifact(chain, drop_at="core")
    custom.create_namespaced_custom_object(
        *FLUX, namespace, "ocirepositories", ocirepository(namespace, "app", url)
    )

    unhealthy = wait_for(
        "ProxyHealthy=False",
        lambda: (c := condition(custom, namespace, "app")) and c["status"] == "False" and c,
    )
    assert unhealthy["reason"] == "LayerMissing"
    assert unhealthy["message"].startswith("hop core (")
    assert f"p-ghcr/{repository}" in unhealthy["message"]
    assert f"layer 0 {layer[:19]}" in unhealthy["message"]
    assert "missing (404 BLOB_UNKNOWN)" in unhealthy["message"]
    warning = wait_for(
        "Warning event", lambda: [e for e in events(core, namespace, "app") if e.type == "Warning"]
    )
    assert warning[0].reason == "LayerMissing"
    assert wait_for(
        "core series at 0",
        lambda: (
            metric_value(
                operator.metrics(),
                "layerwatch_artifact_hop_healthy",
                namespace=namespace,
                name="app",
                hop="core",
            )
            == 0.0
        ),
    )
    assert (
        metric_value(
            operator.metrics(),
            "layerwatch_artifact_hop_healthy",
            namespace=namespace,
            name="app",
            hop="origin",
        )
        == 1.0
    )

    chain.faults("core").clear()
    healthy = wait_for(
        "ProxyHealthy=True",
        lambda: (c := condition(custom, namespace, "app")) and c["status"] == "True" and c,
    )
    assert healthy["reason"] == "Healthy"
    recovered = wait_for(
        "ProxyRecovered", lambda: [e for e in events(core, namespace, "app") if e.reason == "ProxyRecovered"]
    )
    assert recovered[0].type == "Normal"
    assert len([e for e in events(core, namespace, "app") if e.type == "Warning"]) == 1
    _assert_untouched(custom, namespace, "app")
    password = (chain.hop("edge").credentials or ("", ""))[1]
    written = [
        operator.text(),
        operator.metrics(),
        str(custom.get_namespaced_custom_object_status(*FLUX, namespace, "ocirepositories", "app")),
        str([e.message for e in events(core, namespace, "app")]),
    ]
    assert password and not any(password in text for text in written), "the edge password leaked"


def _flux_writes_ready(
    custom: client.CustomObjectsApi, namespace: str, name: str, rounds: int, errors: list[str]
) -> None:
    """What source-controller does: read, change its own condition, merge-patch /status with the RV."""
    for round_ in range(rounds):
        for _attempt in range(50):
            body = custom.get_namespaced_custom_object_status(*FLUX, namespace, "ocirepositories", name)
            conditions = [
                c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] != "Ready"
            ]
            conditions.append(
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Succeeded",
                    "message": f"round {round_}",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "observedGeneration": 1,
                }
            )
            patch = {
                "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
                "status": {"conditions": conditions},
            }
            try:
                custom.patch_namespaced_custom_object_status(*FLUX, namespace, "ocirepositories", name, patch)
                break
            except ApiException as exc:
                if exc.status != 409:
                    errors.append(f"flux writer: HTTP {exc.status}")
                    return
        time.sleep(0.02)


def test_flux_and_layerwatch_writing_the_same_conditions_never_lose_each_other(
    chain: LocalChain,
    operator: Operator,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    repository, url, _ = push_artifact(chain)
    custom.create_namespaced_custom_object(
        *FLUX, namespace, "ocirepositories", ocirepository(namespace, "app", url)
    )
    wait_for("first verdict", lambda: condition(custom, namespace, "app"))
    errors: list[str] = []
    writer = threading.Thread(target=_flux_writes_ready, args=(custom, namespace, "app", 150, errors))
    writer.start()
    edge_tag = {"kind": "drop", "repository": chain.repository_at("edge", repository), "tag": "v1"}
    samples = flips = 0
    deadline = time.monotonic() + 240
    while (writer.is_alive() or flips < 4) and time.monotonic() < deadline:
        chain.faults("edge").set([edge_tag] if flips % 2 == 0 else [])  # make layerwatch write too
        flips += 1
        until = time.monotonic() + 4.0
        while time.monotonic() < until:
            body = custom.get_namespaced_custom_object_status(*FLUX, namespace, "ocirepositories", "app")
            types = {c["type"] for c in body["status"].get("conditions", [])}
            samples += 1
            assert CONDITION in types, f"layerwatch's condition lost after {samples} samples: {types}"
            if samples > 5:
                assert "Ready" in types, f"Flux's Ready lost after {samples} samples: {types}"
            time.sleep(0.05)
    writer.join(30)
    chain.faults("edge").clear()
    assert not errors, errors
    final = custom.get_namespaced_custom_object_status(*FLUX, namespace, "ocirepositories", "app")
    final_types = {c["type"]: c for c in final["status"]["conditions"]}
    assert final_types["Ready"]["message"] == "round 149"
    assert CONDITION in final_types
    transitions = [e for e in events(core, namespace, "app")]
    assert len(transitions) >= 2, "layerwatch should have written several transitions during the run"


def test_a_thousand_unchanged_ocirepositories_cause_no_writes_per_cycle(
    chain: LocalChain,
    control_plane: ControlPlane,
    operator: Operator,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    bulk = f"bulk-{secrets.token_hex(3)}"
    control_plane.apply(proxychain_document(chain, bulk, "20s"))
    try:
        _, url, _ = push_artifact(chain)
        count = 1000
        for index in range(count):
            body = ocirepository(namespace, f"app-{index:04d}", url)
            body["metadata"]["annotations"] = {"layerwatch.io/chain": bulk}
            custom.create_namespaced_custom_object(*FLUX, namespace, "ocirepositories", body)

        def all_healthy() -> dict[str, str] | None:
            items = custom.list_namespaced_custom_object(*FLUX, namespace, "ocirepositories")["items"]
            done = {
                item["metadata"]["name"]: item["metadata"]["resourceVersion"]
                for item in items
                if any(
                    c["type"] == CONDITION and c["status"] == "True"
                    for c in (item.get("status") or {}).get("conditions") or []
                )
            }
            return done if len(done) == count else None

        before = wait_for("1000 healthy conditions", all_healthy, timeout=240, interval=3)
        chain_before = custom.get_cluster_custom_object(*LW, "proxychains", bulk)["metadata"][
            "resourceVersion"
        ]
        time.sleep(5)  # let the last chain status write land
        chain_before = custom.get_cluster_custom_object(*LW, "proxychains", bulk)["metadata"][
            "resourceVersion"
        ]
        checks_before = sum_checks(operator.metrics(), bulk)
        time.sleep(45)  # more than two full 20 s cycles
        # At least one full cycle of re-checks (on a loaded 2-core box a cycle can run late).
        wait_for(
            "every object re-checked",
            lambda: sum_checks(operator.metrics(), bulk) - checks_before >= count or None,
            timeout=120,
            interval=3,
        )
        after = all_healthy()
        assert after == before, "an unchanged verdict must not write to the OCIRepository"
        chain_after = custom.get_cluster_custom_object(*LW, "proxychains", bulk)["metadata"][
            "resourceVersion"
        ]
        assert chain_after == chain_before, "an unchanged chain must not get a status write"
        for name in ("app-0000", "app-0999"):
            _assert_untouched(custom, namespace, name, {"layerwatch.io/chain": bulk})
    finally:
        custom.delete_cluster_custom_object(*LW, "proxychains", bulk)


def sum_checks(text: str, chain: str) -> float:
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("layerwatch_checks_total{") and f'chain="{chain}"' in line and 'hop="edge"' in line
    )


def test_killing_the_operator_mid_cycle_loses_nothing_and_duplicates_no_event(
    chain: LocalChain,
    operator_kubeconfig: Path,
    proxychain: str,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    tmp_path: Path,
) -> None:
    _, url, _ = push_artifact(chain, drop_at="core")
    custom.create_namespaced_custom_object(
        *FLUX, namespace, "ocirepositories", ocirepository(namespace, "app", url)
    )
    first = Operator(operator_kubeconfig, tmp_path).start()
    try:
        unhealthy = wait_for(
            "ProxyHealthy=False",
            lambda: (c := condition(custom, namespace, "app")) and c["status"] == "False" and c,
        )
        wait_for("Warning event", lambda: events(core, namespace, "app"))
        time.sleep(1.3)  # land somewhere inside a later check cycle
    finally:
        first.stop(signal.SIGKILL)
    second = Operator(operator_kubeconfig, tmp_path).start()
    try:
        wait_for(
            "checks after restart",
            lambda: (
                metric_value(
                    second.metrics(),
                    "layerwatch_artifact_hop_healthy",
                    namespace=namespace,
                    name="app",
                    hop="core",
                )
                == 0.0
            ),
        )
        time.sleep(7)  # two more cycles
        again = condition(custom, namespace, "app")
        assert again is not None
        assert again["lastTransitionTime"] == unhealthy["lastTransitionTime"]
        assert (again["status"], again["reason"]) == ("False", "LayerMissing")
        assert len(events(core, namespace, "app")) == 1
        chain.faults("core").clear()
        wait_for("recovery", lambda: (c := condition(custom, namespace, "app")) and c["status"] == "True")
        wait_for(
            "ProxyRecovered",
            lambda: [e for e in events(core, namespace, "app") if e.reason == "ProxyRecovered"],
        )
        assert len(events(core, namespace, "app")) == 2
    finally:
        second.stop()


def test_deleting_an_ocirepository_or_a_proxychain_removes_its_series(
    chain: LocalChain,
    control_plane: ControlPlane,
    operator: Operator,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    _, url, _ = push_artifact(chain)
    custom.create_namespaced_custom_object(
        *FLUX, namespace, "ocirepositories", ocirepository(namespace, "app", url)
    )
    series = {"namespace": namespace, "name": "app"}
    wait_for(
        "series", lambda: metric_value(operator.metrics(), "layerwatch_artifact_hop_healthy", **series) == 1.0
    )
    custom.delete_namespaced_custom_object(*FLUX, namespace, "ocirepositories", "app")
    wait_for(
        "series gone",
        lambda: metric_value(operator.metrics(), "layerwatch_artifact_hop_healthy", **series) is None,
        timeout=30,
    )

    doomed = f"doomed-{secrets.token_hex(3)}"
    control_plane.apply(proxychain_document(chain, doomed, LAB_INTERVAL))
    body = ocirepository(namespace, "other", url)
    body["metadata"]["annotations"] = {"layerwatch.io/chain": doomed}
    custom.create_namespaced_custom_object(*FLUX, namespace, "ocirepositories", body)
    wait_for(
        "chain series", lambda: metric_value(operator.metrics(), "layerwatch_checks_total", chain=doomed)
    )
    custom.delete_cluster_custom_object(*LW, "proxychains", doomed)
    wait_for("chain series gone", lambda: f'chain="{doomed}"' not in operator.metrics(), timeout=60)
