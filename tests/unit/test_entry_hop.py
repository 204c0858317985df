"""The hop an OCIRepository points at is checked with the OCIRepository's own credentials and TLS.

The decision is ``resolve_entry_hop`` (pure, table-tested here); the service reads the Secrets.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, cast

import pytest

from layerwatch.chain import Chain, ChainError, Credentials, Hop, Proxy
from layerwatch.kube.api import KubeApi, SecretError
from layerwatch.kube.service import OperatorOptions, OperatorService, UnusableSetting
from layerwatch.kube.targets import FluxSource, TenantAccess, resolve_entry_hop

from .builders import oci_repository

CHAIN = Chain(
    name="corp",
    hops=(
        Hop.from_url(
            "edge", "https://europe-docker.pkg.dev/p-core", credentials=Credentials("chain-robot", "chain-pw")
        ),
        Hop.from_url("origin", "https://ghcr.io"),
    ),
)


class SecretsOnly:
    """The two KubeApi calls ``entry_hop`` makes, answered from a dict of Secrets."""

    def __init__(self, secrets: dict[tuple[str, str], Any]) -> None:
        self.secrets = secrets
        self.asked: list[tuple[str, str, str]] = []

    async def credentials(self, namespace: str, name: str, host: str) -> Credentials | None:
        self.asked.append((namespace, name, host))
        if (namespace, name) not in self.secrets:
            raise SecretError(f"Secret {namespace}/{name}: HTTP 404")
        return cast(Credentials, self.secrets[(namespace, name)])

    async def ca_pem(self, namespace: str, name: str) -> str:
        return cast(str, self.secrets[(namespace, name)])

    async def client_certificate(self, namespace: str, name: str) -> dict[str, str]:
        value = self.secrets[(namespace, name)]
        return {"ca_pem": value} if isinstance(value, str) else cast(dict[str, str], value)

    async def service_account_credentials(self, namespace: str, name: str, host: str) -> Credentials | None:
        self.asked.append((namespace, f"serviceaccount/{name}", host))
        return cast(Credentials | None, self.secrets.get((namespace, f"serviceaccount/{name}")))

    async def proxy(self, namespace: str, name: str, address: str | None = None) -> Proxy:
        return cast(Proxy, self.secrets[(namespace, name)])


def _entry(
    source_spec: dict[str, Any], secrets: dict[tuple[str, str], Any]
) -> tuple[Hop | None, SecretsOnly]:
    api = SecretsOnly(secrets)
    service = OperatorService(cast(KubeApi, api), OperatorOptions())
    source = FluxSource.from_body(oci_repository(spec=source_spec))
    hop = asyncio.run(service.entry_hop(source, CHAIN, "europe-docker.pkg.dev", "p-core/org/app"))
    return hop, api


def test_without_its_own_settings_the_chain_hop_is_used_as_is() -> None:
    hop, api = _entry({}, {})
    assert hop is None and api.asked == []


def test_the_ocirepository_secret_ref_replaces_the_chain_credentials_for_its_hop() -> None:
    mine = Credentials("flux-robot", "flux-pw")
    hop, api = _entry({"secretRef": {"name": "pull"}}, {("team-a", "pull"): mine})
    assert hop is not None and hop.name == "edge" and hop.credentials == mine
    assert api.asked == [("team-a", "pull", "europe-docker.pkg.dev")]


def test_cert_secret_ref_and_insecure_apply_to_its_hop_without_the_chain_credentials() -> None:
    hop, _ = _entry({"certSecretRef": {"name": "ca"}, "insecure": True}, {("team-a", "ca"): "PEM"})
    assert hop is not None and hop.ca_pem == "PEM" and hop.scheme == "http"
    assert hop.credentials is None


def test_a_missing_secret_is_reported_never_replaced_by_the_chain_settings() -> None:
    with pytest.raises(UnusableSetting) as info:
        _entry({"secretRef": {"name": "gone"}}, {})
    assert info.value.reason == "SecretMissing"
    assert info.value.message == "spec.secretRef: Secret team-a/gone: HTTP 404"


def test_service_account_image_pull_secrets_give_the_entry_hop_its_credentials() -> None:
    mine = Credentials("sa-robot", "sa-pw")
    hop, api = _entry({"serviceAccountName": "puller"}, {("team-a", "serviceaccount/puller"): mine})
    assert hop is not None and hop.credentials == mine and hop.provider is None
    assert api.asked == [("team-a", "serviceaccount/puller", "europe-docker.pkg.dev")]


def test_secret_ref_wins_over_the_service_account() -> None:
    mine = Credentials("flux-robot", "flux-pw")
    hop, api = _entry(
        {"secretRef": {"name": "pull"}, "serviceAccountName": "puller"},
        {("team-a", "pull"): mine, ("team-a", "serviceaccount/puller"): Credentials("sa", "x")},
    )
    assert hop is not None and hop.credentials == mine
    assert [name for _, name, _ in api.asked] == ["pull"]


def test_a_cloud_provider_applies_when_no_secret_gives_credentials() -> None:
    hop, _ = _entry({"provider": "gcp"}, {})
    assert hop is not None and hop.provider == "gcp"
    hop, _ = _entry({"provider": "generic"}, {})
    assert hop is None
    hop, _ = _entry(
        {"provider": "azure", "secretRef": {"name": "pull"}}, {("team-a", "pull"): Credentials("u", "p")}
    )
    assert hop is not None and hop.provider is None and hop.credentials == Credentials("u", "p")


def test_proxy_secret_ref_and_a_client_certificate_apply_to_the_entry_hop() -> None:
    proxy = Proxy("http://proxy.corp:3128", "me", "pw")
    tls = {"client_cert_pem": "CERT", "client_key_pem": "KEY", "ca_pem": "CA"}
    hop, _ = _entry(
        {"proxySecretRef": {"name": "proxy"}, "certSecretRef": {"name": "mtls"}},
        {("team-a", "proxy"): proxy, ("team-a", "mtls"): tls},
    )
    assert hop is not None and hop.proxy == proxy
    assert (hop.client_cert_pem, hop.client_key_pem, hop.ca_pem) == ("CERT", "KEY", "CA")
    assert "pw" not in repr(hop) and "KEY" not in repr(hop)


def test_proxychain_hops_take_a_proxy_a_proxy_secret_and_a_client_certificate() -> None:
    api = SecretsOnly(
        {
            ("layerwatch", "proxy-login"): Proxy("http://proxy.corp:3128", "me", "pw"),
            ("layerwatch", "mtls"): {"client_cert_pem": "CERT", "client_key_pem": "KEY"},
        }
    )
    service = OperatorService(cast(KubeApi, api), OperatorOptions())
    body = {
        "spec": {
            "hops": [
                {
                    "name": "edge",
                    "url": "https://europe-docker.pkg.dev/p-core",
                    "proxy": {"address": "http://proxy.corp:3128", "secretRef": {"name": "proxy-login"}},
                    "certSecretRef": {"name": "mtls"},
                },
                {"name": "origin", "url": "https://ghcr.io", "proxy": {"address": "http://other:8080"}},
            ]
        }
    }
    chain = asyncio.run(service.plan_chain("corp", body))
    edge, origin = chain.hops
    assert edge.proxy == Proxy("http://proxy.corp:3128", "me", "pw")
    assert (edge.client_cert_pem, edge.client_key_pem) == ("CERT", "KEY")
    assert origin.proxy == Proxy("http://other:8080") and origin.client_cert_pem is None


# -- the decision, as a table ----------------------------------------------------------------------

ROBOT = Credentials("robot$admin", "chain-pw")
TENANT = Credentials("tenant", "tenant-pw")
CHAIN_PROXY = Proxy("http://chain-proxy:3128", "chain-proxy-user", "chain-proxy-pw")
TENANT_PROXY = Proxy("http://tenant-proxy:3128")
CHAIN_HOP = Hop.from_url(
    "edge",
    "https://europe-docker.pkg.dev/p-core",
    credentials=ROBOT,
    ca_pem="CHAIN-CA",
    insecure=True,
    proxy=CHAIN_PROXY,
    client_cert_pem="CHAIN-CERT",
    client_key_pem="CHAIN-KEY",
)
PLAIN_CHAIN_HOP = Hop.from_url("edge", "http://europe-docker.pkg.dev/p-core", credentials=ROBOT)
CLOUD_CHAIN_HOP = Hop.from_url("edge", "https://europe-docker.pkg.dev/p-core", provider="gcp")
TENANT_TLS = {"ca_pem": "TENANT-CA"}
TENANT_MTLS = {"ca_pem": "TENANT-CA", "client_cert_pem": "TENANT-CERT", "client_key_pem": "TENANT-KEY"}
OWN = {"names_credentials": True, "credentials": TENANT}
"""The tenant's own secretRef (or serviceAccountName) gave credentials."""


def _own_hop(**fields: Any) -> Hop:
    """The entry hop built from the tenant's settings alone."""
    return Hop(
        **{"name": "edge", "scheme": "https", "host": "europe-docker.pkg.dev", "prefix": "p-core", **fields}
    )


@pytest.mark.parametrize(
    ("chain_hop", "tenant", "in_scope", "expected"),
    [
        pytest.param(CHAIN_HOP, {}, True, CHAIN_HOP, id="nothing-of-its-own"),
        pytest.param(
            CHAIN_HOP, OWN, True, dataclasses.replace(CHAIN_HOP, credentials=TENANT), id="secret-ref-only"
        ),
        pytest.param(
            CHAIN_HOP,
            {"names_credentials": True},
            True,
            dataclasses.replace(CHAIN_HOP, credentials=None),
            id="secret-ref-without-an-entry-for-the-host",
        ),
        pytest.param(
            CLOUD_CHAIN_HOP,
            OWN,
            True,
            dataclasses.replace(CLOUD_CHAIN_HOP, credentials=TENANT, provider=None),
            id="secret-ref-replaces-the-chain-provider",
        ),
        pytest.param(
            CHAIN_HOP,
            {"names_credentials": True, "provider": "gcp"},
            True,
            dataclasses.replace(CHAIN_HOP, credentials=None, provider="gcp"),
            id="provider-only",
        ),
        pytest.param(CHAIN_HOP, {"insecure": True}, True, _own_hop(scheme="http"), id="insecure"),
        pytest.param(
            CHAIN_HOP,
            {"insecure": True, **OWN},
            True,
            _own_hop(scheme="http", credentials=TENANT),
            id="insecure+own",
        ),
        pytest.param(
            PLAIN_CHAIN_HOP, {"insecure": True}, True, PLAIN_CHAIN_HOP, id="insecure-on-an-http-hop"
        ),
        pytest.param(CHAIN_HOP, {"tls": TENANT_TLS}, True, _own_hop(ca_pem="TENANT-CA"), id="cert-secret-ca"),
        pytest.param(
            CHAIN_HOP,
            {"tls": TENANT_MTLS, **OWN},
            True,
            _own_hop(
                credentials=TENANT,
                ca_pem="TENANT-CA",
                client_cert_pem="TENANT-CERT",
                client_key_pem="TENANT-KEY",
            ),
            id="cert-secret-mtls+own",
        ),
        pytest.param(
            CHAIN_HOP, {"proxy": TENANT_PROXY}, True, _own_hop(proxy=TENANT_PROXY), id="proxy-secret"
        ),
        pytest.param(
            PLAIN_CHAIN_HOP,
            {"proxy": TENANT_PROXY},
            True,
            _own_hop(proxy=TENANT_PROXY),
            id="proxy-on-an-http-hop",
        ),
        pytest.param(
            CHAIN_HOP,
            {"proxy": TENANT_PROXY, "names_credentials": True, "provider": "gcp"},
            True,
            _own_hop(proxy=TENANT_PROXY, provider="gcp"),
            id="proxy+provider",
        ),
        pytest.param(CHAIN_HOP, {}, False, _own_hop(), id="outside-the-scope"),
        pytest.param(
            PLAIN_CHAIN_HOP, {"insecure": True}, False, _own_hop(scheme="http"), id="outside+insecure"
        ),
        pytest.param(CHAIN_HOP, OWN, False, _own_hop(credentials=TENANT), id="outside+own"),
    ],
)
def test_resolve_entry_hop(chain_hop: Hop, tenant: dict[str, Any], in_scope: bool, expected: Hop) -> None:
    resolved = resolve_entry_hop(chain_hop, TenantAccess(**tenant), in_scope=in_scope)
    assert resolved == expected
    if resolved != chain_hop:  # the chain's robot goes nowhere but to the chain's own hop
        assert resolved.credentials != ROBOT

    def transport(hop: Hop) -> tuple[Any, ...]:
        return (hop.scheme, hop.proxy, hop.ca_pem, hop.insecure)

    if transport(resolved) != transport(chain_hop):  # another transport: none of the chain's secrets
        assert resolved.proxy != CHAIN_PROXY and resolved.client_cert_pem != "CHAIN-CERT"


@pytest.mark.parametrize(
    ("chain_hop", "tenant"),
    [
        pytest.param(CHAIN_HOP, {"insecure": True}, id="insecure"),
        pytest.param(PLAIN_CHAIN_HOP, {}, id="http-hop"),
        pytest.param(CHAIN_HOP, {"insecure": True, "proxy": TENANT_PROXY}, id="insecure+proxy"),
    ],
)
def test_a_cloud_token_never_goes_over_plain_http(chain_hop: Hop, tenant: dict[str, Any]) -> None:
    with pytest.raises(ChainError, match="never sent over plain HTTP"):
        resolve_entry_hop(chain_hop, TenantAccess(names_credentials=True, provider="gcp", **tenant))


@pytest.mark.parametrize("provider", ["aws", "azure"])
def test_a_cloud_provider_for_another_clouds_host_is_refused_before_any_token(provider: str) -> None:
    """As Flux 2.6+: the pod's cloud identity logs in only to that cloud's registries."""
    with pytest.raises(
        ChainError, match=rf"^spec\.provider {provider} logs in only to its cloud's registries"
    ):
        resolve_entry_hop(CHAIN_HOP, TenantAccess(names_credentials=True, provider=provider))
