"""The operator service between checks: re-plans under churn, chains that cannot be planned,
referenced Secrets that change, shards, and recoveries after unknown spells.

``KubeApi`` runs against a fake ``CoreV1Api`` (Secrets by name) and records condition writes;
nothing here starts kopf or an apiserver.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping, Sequence
from typing import Any, cast

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from layerwatch.chain import Credentials
from layerwatch.kube.api import INVALID_CA, SECRET_MISSING, KubeApi, SecretError, is_pem_bundle
from layerwatch.kube.conditions import Transition
from layerwatch.kube.service import OperatorOptions, OperatorService
from layerwatch.kube.targets import FluxSource, in_shard

from .builders import oci_repository, scraped

EDGE_URL = "https://a.example/p-core"


class FakeCore:
    """``read_namespaced_secret`` from a dict, counting every read (``get`` by name only)."""

    def __init__(self, secrets: dict[tuple[str, str], Mapping[str, str]]) -> None:
        self.secrets = secrets
        self.reads: list[tuple[str, str]] = []

    def read_namespaced_secret(self, name: str, namespace: str, **_: Any) -> k8s.V1Secret:
        self.reads.append((namespace, name))
        if (namespace, name) not in self.secrets:
            raise ApiException(status=404, reason="Not Found")
        data = {k: base64.b64encode(v.encode()).decode() for k, v in self.secrets[(namespace, name)].items()}
        return k8s.V1Secret(data=data)


class Recording(KubeApi):
    """A KubeApi whose Secret reads hit ``FakeCore`` and whose writes are recorded."""

    def __init__(self, core: FakeCore) -> None:
        self.core = cast(Any, core)
        self._secrets = {}
        self._secrets_used = set()
        self.conditions: dict[tuple[str, str], Mapping[str, Any]] = {}
        self.events: list[Transition] = []

    async def write_condition(
        self,
        api_version: str,
        namespace: str,
        name: str,
        desired: Mapping[str, Any],
        known_conditions: Sequence[Mapping[str, Any]] | None = None,
        before_write: Any = None,
    ) -> bool:
        before = (
            [{"type": desired["type"], **self.conditions[(namespace, name)]}]
            if (namespace, name) in self.conditions
            else []
        )
        if before_write is not None:
            await before_write(before)
        self.conditions[(namespace, name)] = desired
        return True

    async def post_event(
        self, api_version: str, namespace: str, name: str, uid: str, event: Transition, *, repeat_after: float
    ) -> bool:
        self.events.append(event)
        return True


def robot(password: str = "pw") -> dict[str, str]:
    return {"username": "robot", "password": password}


def chain_body(name: str = "corp", **edge: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": 1},
        "spec": {
            "interval": "5m",
            "hops": [
                {"name": "edge", "url": EDGE_URL, **edge},
                {"name": "core", "url": "https://b.example/p-ghcr"},
                {"name": "origin", "url": "https://ghcr.io"},
            ],
        },
    }


def operator(
    secrets: dict[tuple[str, str], Mapping[str, str]] | None = None, **options: Any
) -> tuple[OperatorService, FakeCore]:
    core = FakeCore(dict(secrets or {}))
    service = OperatorService(Recording(core), OperatorOptions(**options))
    return service, core


def with_chain(service: OperatorService, body: dict[str, Any]) -> None:
    service.chain_event("ADDED", body)
    service.set_active(body["metadata"]["name"], True)


async def settle(service: OperatorService) -> None:
    await service.replan()
    if service._pending_writes is not None:
        await service._pending_writes


# -- Secrets ---------------------------------------------------------------------------------------


async def test_a_secret_is_read_once_however_often_the_plan_is_redone() -> None:
    service, core = operator({("layerwatch", "robot"): robot()})
    with_chain(service, chain_body(secretRef={"name": "robot", "namespace": "layerwatch"}))
    service.source_event("ADDED", oci_repository())
    for _ in range(5):
        await settle(service)
    assert core.reads == [("layerwatch", "robot")]
    assert service.chains["corp"].hops[0].credentials == Credentials("robot", "pw")


async def test_a_changed_secret_is_seen_by_the_next_refresh_and_only_then_re_plans() -> None:
    service, core = operator({("layerwatch", "robot"): robot("expired")})
    with_chain(service, chain_body(secretRef={"name": "robot", "namespace": "layerwatch"}))
    await settle(service)
    assert not await service.api.refresh_secrets(), "unchanged: no re-plan"
    core.secrets[("layerwatch", "robot")] = robot("fixed")
    assert await service.api.refresh_secrets()
    await settle(service)
    assert service.chains["corp"].hops[0].credentials == Credentials("robot", "fixed")
    assert core.reads.count(("layerwatch", "robot")) == 3, "one get per refresh, none per re-plan"


async def test_a_secret_no_plan_uses_any_more_is_no_longer_read() -> None:
    service, core = operator({("layerwatch", "robot"): robot()})
    with_chain(service, chain_body(secretRef={"name": "robot", "namespace": "layerwatch"}))
    await settle(service)
    service.chain_event("MODIFIED", chain_body())
    await settle(service)
    await service.api.refresh_secrets()
    assert core.reads == [("layerwatch", "robot")]


def test_only_pem_certificates_count_as_a_ca_bundle() -> None:
    assert not is_pem_bundle("not a certificate")
    assert not is_pem_bundle("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


async def test_secret_errors_say_which_secret_and_why_never_its_data() -> None:
    service, _ = operator({("layerwatch", "ca"): {"ca.crt": "s3cret-junk"}})
    with pytest.raises(SecretError) as missing:
        await service.api.credentials("layerwatch", "gone", "a.example")
    assert (missing.value.reason, str(missing.value)) == (SECRET_MISSING, "Secret layerwatch/gone: HTTP 404")
    with pytest.raises(SecretError) as invalid:
        await service.api.ca_pem("layerwatch", "ca")
    assert invalid.value.reason == INVALID_CA and "s3cret" not in str(invalid.value)


# -- chains that cannot be planned -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edge", "secrets", "reason"),
    [
        pytest.param(
            {"secretRef": {"name": "gone", "namespace": "layerwatch"}}, {}, "SecretMissing", id="missing"
        ),
        pytest.param(
            {"caSecretRef": {"name": "ca", "namespace": "layerwatch"}},
            {("layerwatch", "ca"): {"ca.crt": "junk"}},
            "InvalidCA",
            id="ca-not-pem",
        ),
        pytest.param({"url": "https://a.example:99999/p-core"}, {}, "InvalidSpec", id="port-out-of-range"),
    ],
)
async def test_a_chain_that_cannot_be_planned_is_not_ready_and_its_targets_are_unknown(
    edge: dict[str, Any], secrets: dict[tuple[str, str], Mapping[str, str]], reason: str
) -> None:
    service, _ = operator(secrets)
    with_chain(service, chain_body(**edge))
    service.source_event("ADDED", oci_repository(annotations={"layerwatch.io/chain": "corp"}))
    await settle(service)
    (ready,) = service.chain_status("corp")["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", reason)
    written = cast(Recording, service.api).conditions[("team-a", "app")]
    assert (written["status"], written["reason"]) == ("Unknown", "ChainNotReady")
    assert written["message"] == f"ProxyChain corp is not ready: {ready['message']}"
    status = service.store.get(("team-a", "app"))
    assert status is not None and status.pending_reason == "ChainNotReady"
    sample = scraped(
        service.metrics,
        "layerwatch_artifact_hop_verdict",
        {"namespace": "team-a", "name": "app", "chain": "corp", "hop": "core", "verdict": "ChainNotReady"},
    )
    assert sample == 1.0, "a target of a chain that is not ready stays in the metrics"
    assert "corp" in service.chains, "and on the status page"


async def test_a_chain_whose_secret_appears_becomes_ready_and_its_targets_are_checked() -> None:
    service, core = operator()
    with_chain(service, chain_body(secretRef={"name": "robot", "namespace": "layerwatch"}))
    service.source_event("ADDED", oci_repository())
    await settle(service)
    assert "corp" in service.not_ready
    core.secrets[("layerwatch", "robot")] = robot()
    assert await service.api.refresh_secrets()
    await settle(service)
    assert service.not_ready == {}
    assert service.chain_status("corp")["conditions"][0]["status"] == "True"
    status = service.store.get(("team-a", "app"))
    assert status is not None and status.pending is None


# -- churn -----------------------------------------------------------------------------------------


async def test_events_arriving_while_a_re_plan_awaits_secrets_do_not_break_it() -> None:
    secrets = {("team-a", f"pull-{n}"): robot() for n in range(50)}
    service, _ = operator(secrets)
    with_chain(service, chain_body())
    for n in range(50):
        service.source_event("ADDED", oci_repository(f"app-{n}", spec={"secretRef": {"name": f"pull-{n}"}}))

    async def churn() -> None:
        for n in range(50, 150):
            service.source_event("ADDED", oci_repository(f"app-{n}"))
            service.chain_event("ADDED", chain_body(f"other-{n}"))
            await asyncio.sleep(0)

    await asyncio.gather(service.replan(), churn())
    await service.replan()
    assert len(service.scheduler._watches) == 150


def test_another_shards_events_neither_stay_nor_re_plan() -> None:
    service, _ = operator(shard_index=0, shard_count=2)
    theirs = next(f"app-{n}" for n in range(100) if not in_shard("team-a", f"app-{n}", 0, 2))
    for event in ("ADDED", "MODIFIED", "DELETED"):
        service._dirty.clear()
        service.source_event(event, oci_repository(theirs))
        assert not service._dirty.is_set(), event
    assert service.sources == {}


# -- recoveries ------------------------------------------------------------------------------------


async def test_recovery_after_false_then_unknown_is_announced_once() -> None:
    service, _ = operator()
    api = cast(Recording, service.api)
    source = oci_repository()
    service.source_event("ADDED", source)
    flux = FluxSource.from_body(source)
    for status, reason in (("False", "LayerMissing"), ("Unknown", "Unreachable"), ("True", "Healthy")):
        desired = {"type": "layerwatch.io/ProxyHealthy", "status": status, "reason": reason, "message": "m"}
        await service._write(flux, desired, 300.0)
    assert [(e.type, e.reason) for e in api.events] == [
        ("Warning", "LayerMissing"),
        ("Normal", "ProxyRecovered"),
    ]
    desired = {
        "type": "layerwatch.io/ProxyHealthy",
        "status": "Unknown",
        "reason": "Unreachable",
        "message": "m",
    }
    await service._write(flux, desired, 300.0)
    await service._write(flux, {**desired, "status": "True", "reason": "Healthy"}, 300.0)
    assert len(api.events) == 2, "no Warning before this unknown spell: nothing to recover from"


def test_an_edited_chain_re_plans_even_when_kopf_hands_the_same_live_body_again() -> None:
    service, _ = operator()
    live = chain_body()
    service.chain_event("ADDED", live)
    service._dirty.clear()
    live["spec"]["mode"] = "head"  # kopf replaces a daemon-served object's body in place
    service.chain_event("MODIFIED", live)
    assert service._dirty.is_set()
