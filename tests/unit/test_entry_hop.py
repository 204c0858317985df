"""The hop an OCIRepository points at is checked with the OCIRepository's own credentials and TLS."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from layerwatch.chain import Chain, Credentials, Hop
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
    """The two KubeApi calls ``_entry_hop`` makes, answered from a dict of Secrets."""

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


def _entry(
    source_spec: dict[str, Any], secrets: dict[tuple[str, str], Any]
) -> tuple[Hop | None, SecretsOnly]:
    api = SecretsOnly(secrets)
    service = OperatorService(cast(KubeApi, api), OperatorOptions())
    source = FluxSource.from_body(oci_repository(spec=source_spec))
    hop = asyncio.run(service._entry_hop(source, CHAIN, "a.example", "p-core/org/app"))
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
