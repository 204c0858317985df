"""Nobody's deputy: a tenant's OCIRepository can never send the chain's credentials where it points.

The chain's edge hop and every tenant-controlled destination are one recording endpoint (plain
HTTP, TLS with a CA only the tenant's certSecretRef trusts, and an HTTP/CONNECT proxy), answering
``401 Basic`` so any client holding credentials sends them. The operator service plans the
tenant's object and the scheduler checks it; the recorder proves which credentials arrived.
Also: one object's unusable Secret (any content) never stops the plan of the others.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client as k8s

from lab.certs import TestCA
from lab.recorder import RecordingEndpoint
from layerwatch.chain import ChainError
from layerwatch.kube import lookup
from layerwatch.kube.service import OperatorService
from layerwatch.settings import EngineSettings

from .builders import oci_repository
from .test_kube_service import FakeCore, Recording, operator, settle, with_chain

CHAIN_USER, CHAIN_PW = "robot$chain", "chain-robot-pw-7f3"
TENANT_USER, TENANT_PW = "tenant", "tenant-pw-19c"
KEY = ("team-a", "app")
ROBOT, CHAIN_SECRET = ("layerwatch", "robot"), {"username": CHAIN_USER, "password": CHAIN_PW}
FIELDS = ("insecure", "certSecretRef", "proxySecretRef", "secretRef")


@pytest.fixture
async def recorder(tmp_path: Path) -> AsyncIterator[tuple[RecordingEndpoint, str]]:
    """The recorder, and the PEM of the CA its TLS certificate comes from."""
    ca = TestCA(tmp_path)
    async with RecordingEndpoint(tls=ca.issue("recorder")) as endpoint:
        yield endpoint, ca.path.read_text()


def _chain(address: str, **spec: Any) -> dict[str, Any]:
    """A one-hop ProxyChain on the recorder's port, the chain's robot on it (system CAs only)."""
    return {
        "metadata": {"name": "corp", "generation": 1},
        "spec": {
            "interval": "5m",
            "hops": [
                {
                    "name": "edge",
                    "url": f"https://{address}/p-core",
                    "secretRef": {"name": "robot", "namespace": "layerwatch"},
                }
            ],
            **spec,
        },
    }


def _service(address: str, ca_pem: str, **spec: Any) -> OperatorService:
    service, _ = operator(
        {
            ROBOT: CHAIN_SECRET,
            ("team-a", "pull"): {"username": TENANT_USER, "password": TENANT_PW},
            ("team-a", "ca"): {"ca.crt": ca_pem},
            ("team-a", "proxy"): {"address": f"http://{address}"},
        },
        engine=EngineSettings(timeout=5.0, retries=0),
    )
    with_chain(service, _chain(address, **spec))
    return service


def _spec(fields: tuple[str, ...]) -> dict[str, Any]:
    refs = {"certSecretRef": "ca", "proxySecretRef": "proxy", "secretRef": "pull"}
    return {field: True if field == "insecure" else {"name": refs[field]} for field in fields}


COMBINATIONS = [c for n in range(len(FIELDS) + 1) for c in itertools.combinations(FIELDS, n)]


@pytest.mark.parametrize("fields", COMBINATIONS, ids=lambda c: "+".join(c) or "nothing")
async def test_no_combination_of_tenant_fields_sends_the_chain_credentials_to_the_tenant(
    recorder: tuple[RecordingEndpoint, str], fields: tuple[str, ...]
) -> None:
    endpoint, ca_pem = recorder
    service = _service(endpoint.address, ca_pem)
    url = f"oci://{endpoint.address}/p-core/org/app"
    service.source_event("ADDED", oci_repository(url=url, spec=_spec(fields)))
    try:
        await settle(service)
        result = await service.scheduler.check_now(KEY)
    finally:
        await service.scheduler.aclose()
    assert result is not None, "the tenant's object is checked"
    assert not endpoint.heard(CHAIN_PW), endpoint.requests
    # The control: where the tenant's transport reaches the recorder, its own credentials do arrive,
    # so the recorder would have caught the chain's.
    if "secretRef" in fields and ("insecure" in fields or "certSecretRef" in fields):
        assert f"{TENANT_USER}:{TENANT_PW}" in endpoint.credentials()


async def test_outside_the_namespace_selector_it_is_checked_at_its_own_url_without_the_chain(
    recorder: tuple[RecordingEndpoint, str],
) -> None:
    endpoint, ca_pem = recorder
    service = _service(endpoint.address, ca_pem, namespaceSelector={"matchLabels": {"team": "a"}})
    service.chain_bodies["corp"]["spec"]["hops"].append({"name": "origin", "url": "https://ghcr.io"})
    service.namespace_event("ADDED", {"metadata": {"name": "team-b", "labels": {"team": "b"}}})
    url = f"oci://{endpoint.address}/p-core/org/app"
    service.source_event(
        "ADDED", oci_repository(namespace="team-b", url=url, spec={"certSecretRef": {"name": "ca"}})
    )
    cast(Any, service.api).core.secrets[("team-b", "ca")] = {"ca.crt": ca_pem}
    try:
        await settle(service)
        result = await service.scheduler.check_now(("team-b", "app"))
        assert result is not None
        await service._on_result(service.scheduler._watches[("team-b", "app")], result)
    finally:
        await service.scheduler.aclose()
    assert endpoint.requests and all(r.tls for r in endpoint.requests), "checked at its own URL, trusted"
    assert endpoint.credentials() == [], "no credentials of anyone's"
    written = cast(Recording, service.api).conditions[("team-b", "app")]
    assert (written["status"], written["reason"]) == ("Unknown", "AuthFailed")
    assert "outside ProxyChain corp's namespaceSelector: checked at its own URL" in written["message"]
    assert [verdict.hop for verdict in result.judgement.hops] == ["edge"], "no other hop of the chain"


# -- one object's unusable setting stays its own ------------------------------------------------------

BAD_ADDRESSES = [
    "http://127.0.0.1:3l28",
    "http://127.0.0.1:99999",
    "http://me:pw@127.0.0.1:3l28",  # the masking of the password itself raises a bare ValueError
    "http://[::1",
    "ftp://x",
    "",
]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
async def test_an_unusable_tenant_proxy_leaves_that_target_unknown_and_plans_the_rest(address: str) -> None:
    service, _ = operator({ROBOT: CHAIN_SECRET, ("team-a", "proxy"): {"address": address}})
    with_chain(service, _chain("a.example"))
    url = "oci://a.example/p-core/org/app"
    service.source_event("ADDED", oci_repository(url=url, spec={"proxySecretRef": {"name": "proxy"}}))
    service.source_event("ADDED", oci_repository(namespace="team-b", url=url))
    await settle(service)
    service.source_event("ADDED", oci_repository(namespace="team-c", url=url))
    await settle(service)
    written = cast(Recording, service.api).conditions[KEY]
    assert written["status"] == "Unknown" and written["reason"] in ("InvalidSecret", "SecretMissing")
    assert written["message"].startswith("spec.proxySecretRef: ") and "\n" not in written["message"]
    assert "pw" not in written["message"]
    watches = service.scheduler._watches
    assert not watches[KEY].entry_hop and watches[KEY].pending
    assert ("team-b", "app") in watches and ("team-c", "app") in watches, "the rest is planned"
    assert not watches[("team-c", "app")].pending
    await service.scheduler.aclose()


async def test_any_error_while_planning_one_object_leaves_only_that_one_unknown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, _ = operator({ROBOT: CHAIN_SECRET})
    with_chain(service, _chain("a.example"))
    url = "oci://a.example/p-core/org/app"
    plan = service.entry_hop

    async def odd(source: Any, *args: Any, **kwargs: Any) -> Any:
        if source.namespace == "team-a":
            raise TypeError("secret-text")
        return await plan(source, *args, **kwargs)

    service.entry_hop = odd  # type: ignore[method-assign]
    for namespace in ("team-a", "team-b"):
        service.source_event("ADDED", oci_repository(namespace=namespace, url=url, spec={"insecure": True}))
    await settle(service)
    await settle(service)
    written = cast(Recording, service.api).conditions[KEY]
    assert (written["status"], written["reason"]) == ("Unknown", "InvalidSpec")
    assert written["message"] == "its settings cannot be planned (TypeError)"
    assert not service.scheduler._watches[("team-b", "app")].pending
    said = [r.getMessage() for r in caplog.records]
    assert (
        said.count(
            "unexpected TypeError while reading OCIRepository team-a/app; reported on that object only"
        )
        == 1
    )
    assert not any("secret-text" in line for line in said), "the type is logged, never the text"
    await service.scheduler.aclose()


async def test_an_unusable_chain_proxy_leaves_that_chain_not_ready_and_plans_the_rest() -> None:
    service, _ = operator()
    broken = {"name": "edge", "url": "https://a.example/p-core", "proxy": {"address": "http://me:pw@p:3l28"}}
    with_chain(service, {"metadata": {"name": "broken", "generation": 1}, "spec": {"hops": [broken]}})
    fine = {"name": "quay", "url": "https://quay.io"}
    with_chain(service, {"metadata": {"name": "fine", "generation": 1}, "spec": {"hops": [fine]}})
    service.source_event("ADDED", oci_repository(url="oci://quay.io/org/app"))
    await settle(service)
    (ready,) = service.chain_status("broken")["conditions"]
    assert ready["status"] == "False" and "\n" not in ready["message"]
    assert KEY in service.scheduler._watches and not service.scheduler._watches[KEY].pending
    await service.scheduler.aclose()


SECRET_KEYS = ("address", "username", "password", "ca.crt", "tls.crt", "tls.key", ".dockerconfigjson")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.dictionaries(st.sampled_from(SECRET_KEYS), st.text(max_size=40), max_size=5),
    field=st.sampled_from(("secretRef", "certSecretRef", "proxySecretRef")),
)
def test_any_secret_content_leaves_the_plan_of_the_others_intact(data: Mapping[str, str], field: str) -> None:
    async def plan() -> None:
        service, _ = operator({ROBOT: CHAIN_SECRET, ("team-a", "mine"): data})
        with_chain(service, _chain("a.example"))
        url = "oci://a.example/p-core/org/app"
        service.source_event("ADDED", oci_repository(url=url, spec={field: {"name": "mine"}}))
        service.source_event("ADDED", oci_repository(namespace="team-b", url=url))
        await settle(service)
        watches = service.scheduler._watches
        assert set(watches) == {KEY, ("team-b", "app")}
        mine = watches[KEY]
        if mine.pending:
            written = cast(Recording, service.api).conditions[KEY]
            assert written["status"] == "Unknown" and "\n" not in written["message"]
        await service.scheduler.aclose()

    asyncio.run(plan())


# -- check --kube plans with the same rules ------------------------------------------------------------


class FakeCluster:
    """What ``check --kube`` reads besides Secrets: one OCIRepository, the ProxyChains, the namespace."""

    def __init__(self, repository: dict[str, Any], chains: list[dict[str, Any]]) -> None:
        self.repository, self.chains = repository, chains

    def get_namespaced_custom_object(self, *_: Any) -> dict[str, Any]:
        return self.repository

    def list_cluster_custom_object(self, *_: Any) -> dict[str, Any]:
        return {"items": self.chains}

    def read_namespace(self, name: str) -> Any:
        return k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name, labels={"team": "a"}))


def _kube_check(spec: Mapping[str, Any], secrets: dict[tuple[str, str], Mapping[str, str]]) -> list[Any]:
    core = FakeCore({ROBOT: CHAIN_SECRET, **secrets})
    cluster = FakeCluster(
        oci_repository(url="oci://a.example/p-core/org/app", spec=spec), [_chain("a.example")]
    )
    api = Recording(core)
    api.custom, api.core.read_namespace = cluster, cluster.read_namespace
    return asyncio.run(lookup._watches(cast(Any, api), ["app"], "team-a", lambda _: None))


@pytest.mark.parametrize(
    "spec",
    [{"insecure": True}, {"certSecretRef": {"name": "ca"}}, {"proxySecretRef": {"name": "proxy"}}],
    ids=["insecure", "certSecretRef", "proxySecretRef"],
)
def test_check_kube_never_puts_the_chain_robot_on_a_tenant_transport(
    spec: Mapping[str, Any], tmp_path: Path
) -> None:
    ca_pem = TestCA(tmp_path).path.read_text()
    secrets = {("team-a", "ca"): {"ca.crt": ca_pem}, ("team-a", "proxy"): {"address": "http://p:3128"}}
    (watch,) = _kube_check(spec, secrets)
    (hop,) = [target.hop for target in watch.pull_path()]
    assert hop.credentials is None


def test_check_kube_stops_on_a_tenant_setting_it_cannot_use() -> None:
    bad_proxy = {("team-a", "proxy"): {"address": "http://p:3l28"}}
    with pytest.raises(ChainError) as info:
        _kube_check({"proxySecretRef": {"name": "proxy"}}, bad_proxy)
    assert "cannot be checked as source-controller pulls it: spec.proxySecretRef: " in str(info.value)
