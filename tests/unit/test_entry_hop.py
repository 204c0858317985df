"""The hop an OCIRepository points at is checked with the OCIRepository's own credentials and TLS."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from layerwatch.chain import Chain, Credentials, Hop, Proxy
from layerwatch.kube.api import KubeApi, SecretError
from layerwatch.kube.service import OperatorOptions, OperatorService
from layerwatch.kube.targets import FluxSource

from .builders import oci_repository

CHAIN = Chain(
    name="corp",
    hops=(
        Hop.from_url("edge", "https://a.example/p-core", credentials=Credentials("chain-robot", "chain-pw")),
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
    hop = asyncio.run(service.entry_hop(source, CHAIN, "a.example", "p-core/org/app"))
    return hop, api


def test_without_its_own_settings_the_chain_hop_is_used_as_is() -> None:
    hop, api = _entry({}, {})
    assert hop is None and api.asked == []


def test_the_ocirepository_secret_ref_replaces_the_chain_credentials_for_its_hop() -> None:
    mine = Credentials("flux-robot", "flux-pw")
    hop, api = _entry({"secretRef": {"name": "pull"}}, {("team-a", "pull"): mine})
    assert hop is not None and hop.name == "edge" and hop.credentials == mine
    assert api.asked == [("team-a", "pull", "a.example")]


def test_cert_secret_ref_and_insecure_apply_to_its_hop() -> None:
    hop, _ = _entry({"certSecretRef": {"name": "ca"}, "insecure": True}, {("team-a", "ca"): "PEM"})
    assert hop is not None and hop.ca_pem == "PEM" and hop.scheme == "http"
    assert hop.credentials == CHAIN.hops[0].credentials


def test_a_missing_secret_falls_back_to_the_chain_settings() -> None:
    hop, _ = _entry({"secretRef": {"name": "gone"}}, {})
    assert hop is not None and hop.credentials == CHAIN.hops[0].credentials


def test_service_account_image_pull_secrets_give_the_entry_hop_its_credentials() -> None:
    mine = Credentials("sa-robot", "sa-pw")
    hop, api = _entry({"serviceAccountName": "puller"}, {("team-a", "serviceaccount/puller"): mine})
    assert hop is not None and hop.credentials == mine and hop.provider is None
    assert api.asked == [("team-a", "serviceaccount/puller", "a.example")]


def test_secret_ref_wins_over_the_service_account() -> None:
    mine = Credentials("flux-robot", "flux-pw")
    hop, api = _entry(
        {"secretRef": {"name": "pull"}, "serviceAccountName": "puller"},
        {("team-a", "pull"): mine, ("team-a", "serviceaccount/puller"): Credentials("sa", "x")},
    )
    assert hop is not None and hop.credentials == mine
    assert [name for _, name, _ in api.asked] == ["pull"]


def test_a_cloud_provider_applies_when_no_secret_gives_credentials() -> None:
    hop, _ = _entry({"provider": "aws"}, {})
    assert hop is not None and hop.provider == "aws"
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
                    "url": "https://a.example/p-core",
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
