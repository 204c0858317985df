"""The cold-path canary through the operator: a real kube-apiserver, the lab chain, the operator's
ServiceAccount. Its verdict lands on the ProxyChain (condition ``ColdPathHealthy``), never on an
OCIRepository, and its push Secret is read for the origin only and never written anywhere."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.k8s.operator_harness import LW, Operator, metric_value, proxychain_document, wait_for

from lab.chain import LocalChain
from lab.kube import ControlPlane, basic_auth_secret

PUSH_SECRET = ("canary-pusher", "canary-" + secrets.token_hex(8))


@pytest.fixture
def operator(operator_kubeconfig: Path, tmp_path: Path) -> Iterator[Operator]:
    """The operator alone (no lab ProxyChain of its own): each test applies the chains it needs."""
    process = Operator(operator_kubeconfig, tmp_path).start()
    yield process  # pytest runs the rest after a failing test too
    process.stop()


def _canary_chain(
    control_plane: ControlPlane, chain: LocalChain, origin_url: str | None = None
) -> tuple[str, str]:
    """A ProxyChain of the lab chain with a canary; returns its name and canary repository."""
    name = f"canary-{secrets.token_hex(3)}"
    repository = f"canary/{secrets.token_hex(4)}"
    document = proxychain_document(chain, name, "3s", origin_url=origin_url)
    document["spec"]["canary"] = {"repository": repository, "secretRef": {"name": "lab-canary"}}
    control_plane.apply(document)
    return name, repository


def _cold_path(custom: client.CustomObjectsApi, name: str) -> dict[str, Any] | None:
    status = custom.get_cluster_custom_object_status(*LW, "proxychains", name).get("status") or {}
    return next((c for c in status.get("conditions") or () if c["type"] == "ColdPathHealthy"), None)


def test_the_proxychain_carries_the_cold_path_verdict_of_the_canary(
    control_plane: ControlPlane,
    chain: LocalChain,
    operator: Operator,
    custom: client.CustomObjectsApi,
) -> None:
    control_plane.apply(basic_auth_secret("layerwatch", "lab-edge", chain.hop("edge").credentials))
    control_plane.apply(basic_auth_secret("layerwatch", "lab-canary", PUSH_SECRET))
    origin = chain.hop("origin").registry.url  # its gateway refuses pushes, as a Harbor proxy does
    name, repository = _canary_chain(control_plane, chain, origin)
    refused, _ = _canary_chain(control_plane, chain)
    try:
        healthy = wait_for(
            "ColdPathHealthy=True", lambda: (c := _cold_path(custom, name)) and c["status"] == "True" and c
        )
        assert healthy["reason"] == "Healthy"
        assert metric_value(operator.metrics(), "layerwatch_cold_path_healthy", chain=name) == 1.0
        chain.faults("core").set([{"kind": "drop", "repository": chain.repository_at("core", repository)}])
        broken = wait_for(
            "ColdPathHealthy=False", lambda: (c := _cold_path(custom, name)) and c["status"] == "False" and c
        )
        assert broken["message"].startswith("hop core ("), broken
        assert broken["lastTransitionTime"] >= healthy["lastTransitionTime"]
        unknown = wait_for(
            "ColdPathHealthy=Unknown on the chain whose origin refuses pushes",
            # Unknown/Pending comes first, until the chain's first canary run
            lambda: (c := _cold_path(custom, refused)) and c["reason"] == "CanaryPushFailed" and c,
        )
        assert unknown["status"] == "Unknown"
        assert "HTTP 403" in unknown["message"]
        chain.faults("core").clear()
        wait_for(
            "ColdPathHealthy=True again", lambda: (c := _cold_path(custom, name)) and c["status"] == "True"
        )
        written = [
            operator.text(),
            operator.metrics(),
            str(custom.get_cluster_custom_object_status(*LW, "proxychains", name)),
            str(custom.get_cluster_custom_object_status(*LW, "proxychains", refused)),
        ]
        assert not any(PUSH_SECRET[1] in text for text in written), "the push password leaked"
    finally:
        for chain_name in (name, refused):
            with contextlib.suppress(ApiException):
                custom.delete_cluster_custom_object(*LW, "proxychains", chain_name)


def test_the_crd_refuses_a_canary_without_a_usable_repository(
    control_plane: ControlPlane, chain: LocalChain, custom: client.CustomObjectsApi
) -> None:
    document = proxychain_document(chain, f"bad-{secrets.token_hex(3)}", "3s")
    document["spec"]["canary"] = {"repository": "Not A/Repo"}
    with pytest.raises(ApiException) as refused:
        custom.create_cluster_custom_object(*LW, "proxychains", document)
    assert refused.value.status == 422
    assert "canary.repository must be a repository path" in str(refused.value.body)
