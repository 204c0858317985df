"""A cloud provider logs in only to its own cloud's registries, matched as Flux 2.6+ matches them.

The table follows the registry patterns of Flux's aws, azure and gcp auth providers. A host
outside them is a configuration error wherever it is written (a ProxyChain is not ready, a chain
file exits 2), and even a hop that reaches a check with one never asks its cloud for a token:
the fake metadata server, Entra ID and AWS endpoint below count zero requests, and the registry
never sees the cloud's login.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import yaml
from aiohttp import web
from tests.registry.cloud_fakes import FakeCloud, serve

from layerwatch.chain import ChainError, chain_from_spec, check_provider_host, provider_host
from layerwatch.cli import main
from layerwatch.observation import FaultKind
from layerwatch.registry import providers
from layerwatch.registry.errors import RegistryError
from layerwatch.registry.providers import GCP_USERNAME

from .fake_registry import FakeRegistry, check, running
from .test_kube_service import Recording, chain_body, operator, settle, with_chain

ACCEPTED = [
    ("aws", "123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
    ("aws", "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com"),
    ("aws", "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"),
    ("aws", "123456789012.dkr.ecr.us-iso-east-1.c2s.ic.gov"),
    ("aws", "123456789012.dkr.ecr.us-isob-east-1.sc2s.sgov.gov"),
    ("aws", "123456789012.dkr.ecr.eu-isoe-west-1.cloud.adc-e.uk"),
    ("aws", "123456789012.dkr.ecr.us-isof-south-1.csp.hci.ic.gov"),
    ("aws", "123456789012.dkr.ecr.eu-west-1.amazonaws.com:5000"),
    ("aws", "public.ecr.aws"),
    ("azure", "myacr.azurecr.io"),
    ("azure", "myacr.azurecr.cn"),
    ("azure", "myacr.azurecr.de"),
    ("azure", "myacr.azurecr.us"),
    ("gcp", "gcr.io"),
    ("gcp", "eu.gcr.io"),
    ("gcp", "europe-west1-docker.pkg.dev"),
]
REFUSED = [
    ("aws", "ghcr.io"),
    ("aws", "127.0.0.1:5000"),
    ("aws", "123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.example"),
    ("aws", "evil.example.123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
    ("aws", "x.dkr.ecr.eu-west-1.amazonaws.com"),
    ("aws", "public.ecr.aws.evil.example"),
    ("aws", "myacr.azurecr.io"),
    ("azure", "azurecr.io"),
    ("azure", "myacr.azurecr.io.evil.example"),
    ("azure", "myacr.azurecr.io:8443"),
    ("azure", "myacr.azurecr.com"),
    ("azure", "gcr.io"),
    ("gcp", "evilgcr.io"),
    ("gcp", "gcr.io.evil.example"),
    ("gcp", "eu.gcr.io:8443"),
    ("gcp", "docker.pkg.dev"),
    ("gcp", "europe-docker.pkg.dev.evil.example"),
    ("gcp", "123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
]


@pytest.mark.parametrize(("provider", "host"), ACCEPTED)
def test_flux_registry_patterns_accept_each_clouds_own_hosts(provider: str, host: str) -> None:
    check_provider_host(provider, host)


@pytest.mark.parametrize(("provider", "host"), REFUSED)
def test_any_other_host_is_refused_saying_which_hosts_would_do(provider: str, host: str) -> None:
    with pytest.raises(ChainError, match=f"provider {provider} logs in only to .* not {host}$"):
        check_provider_host(provider, host)


def test_ecr_hosts_name_their_account_and_region_and_public_ecr_neither() -> None:
    host = "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com"
    assert provider_host("aws", host).group("account", "region") == ("123456789012", "us-gov-west-1")
    assert provider_host("aws", "public.ecr.aws").group("account", "region") == (None, None)


@pytest.mark.parametrize(
    ("host", "scope"),
    [
        ("myacr.azurecr.io", "https://management.azure.com/.default"),
        ("myacr.azurecr.de", "https://management.azure.com/.default"),
        ("myacr.azurecr.cn", "https://management.chinacloudapi.cn/.default"),
        ("myacr.azurecr.us", "https://management.usgovcloudapi.net/.default"),
    ],
)
def test_an_acr_host_asks_entra_for_its_own_clouds_scope(host: str, scope: str) -> None:
    assert providers.azure_scope(host) == scope


def test_a_hop_without_a_provider_may_be_any_host() -> None:
    check_provider_host(None, "127.0.0.1:5000")


# -- planning: where a provider is written ---------------------------------------------------------


def _spec(url: str, provider: str) -> dict[str, Any]:
    return {
        "hops": [
            {"name": "edge", "url": "https://harbor.example/p"},
            {"name": "origin", "url": url, "provider": provider},
        ]
    }


def test_a_chain_spec_with_a_provider_for_another_host_is_refused_naming_the_hop() -> None:
    with pytest.raises(ChainError) as caught:
        chain_from_spec("corp", _spec("https://registry.example.com", "gcp"))
    assert str(caught.value) == (
        "chain corp: hop origin: provider gcp logs in only to its cloud's registries "
        "(gcr.io, NAME.gcr.io or REGION-docker.pkg.dev), not registry.example.com"
    )
    chain = chain_from_spec("corp", _spec("https://europe-docker.pkg.dev", "gcp"))
    assert chain.hop("origin").provider == "gcp"


async def test_a_proxychain_with_a_mismatched_provider_is_not_ready_invalid_spec() -> None:
    service, _ = operator()
    with_chain(service, chain_body(provider="azure"))  # its edge is https://a.example/p-core
    await settle(service)
    (ready,) = service.chain_status("corp")["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "hop edge: provider azure logs in only to" in ready["message"]
    assert "not a.example" in ready["message"]
    assert cast(Recording, service.api).conditions == {}


def test_a_chain_file_with_a_mismatched_provider_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    document = {"apiVersion": "layerwatch.io/v1alpha1", "kind": "ProxyChain", "metadata": {"name": "c"}}
    document["spec"] = _spec("https://registry.example.com", "aws")
    chain = tmp_path / "chain.yaml"
    chain.write_text(yaml.safe_dump(document))
    status = main(["check", "--chain", str(chain), "registry.example.com/org/app:v1"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and "hop origin: provider aws logs in only to" in err


# -- the token fetch refuses too (defence in depth) ------------------------------------------------


@contextlib.asynccontextmanager
async def _recording_endpoint() -> AsyncIterator[tuple[str, list[str]]]:
    """Stands in for AWS (STS and ECR at one endpoint): records every request, answers 500."""
    asked: list[str] = []

    async def record(request: web.Request) -> web.Response:
        asked.append(f"{request.method} {request.path_qs}")
        return web.Response(status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", asked  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def _basic_challenge(registry: FakeRegistry) -> list[str]:
    """Make ``registry`` demand Basic credentials; returns the Authorization headers it receives."""
    seen: list[str] = []

    async def hook(request: web.Request) -> web.StreamResponse | None:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="registry"'})

    registry.hooks.append(hook)
    return seen


def _bearer_challenge(registry: FakeRegistry) -> None:
    """Make ``registry`` answer like ACR: a Bearer challenge whose realm is its own ``/oauth2/token``."""

    async def hook(request: web.Request) -> web.StreamResponse | None:
        realm = f"http://{request.host}/oauth2/token"
        header = f'Bearer realm="{realm}",service="{request.host}"'
        return web.Response(status=401, headers={"WWW-Authenticate": header})

    registry.hooks.append(hook)


def _cloud() -> FakeCloud:
    return FakeCloud(tenant="t", client_id="c", federated_token="federated", origin="http://unused")


async def test_a_non_google_host_never_receives_the_metadata_servers_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(providers, "_CACHE", providers.ProviderCache())
    cloud = _cloud()
    async with serve(cloud) as metadata, running(FakeRegistry()) as registry:
        monkeypatch.setenv("GCE_METADATA_HOST", metadata)
        seen = _basic_challenge(registry)
        result = await check(registry.url, provider="gcp")
    (hop,) = result.judgement.hops
    assert hop.verdict.value == "AuthFailed"
    assert "gcp provider: configuration: provider gcp logs in only to" in hop.message
    assert "no token requested" in hop.message
    assert cloud.calls["metadata"] == 0
    logins = [base64.b64decode(h.removeprefix("Basic ")).decode() for h in seen if h]
    assert not any(login.startswith(GCP_USERNAME) for login in logins)
    assert seen and set(seen) == {""}, "the registry never received any login"


async def test_azures_token_is_never_posted_to_a_non_acr_exchange(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(providers, "_CACHE", providers.ProviderCache())
    cloud = _cloud()
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(cloud.federated_token)  # Entra would answer: the host alone must stop it
    async with serve(cloud) as entra, running(FakeRegistry()) as registry:
        monkeypatch.setenv("AZURE_AUTHORITY_HOST", f"http://{entra}/")
        monkeypatch.setenv("AZURE_TENANT_ID", "t")
        monkeypatch.setenv("AZURE_CLIENT_ID", "c")
        monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
        _bearer_challenge(registry)
        result = await check(registry.url, provider="azure")
    (hop,) = result.judgement.hops
    assert hop.verdict.value == "AuthFailed" and "provider azure logs in only to" in hop.message
    assert cloud.calls["entra"] == 0 and cloud.calls["exchange"] == 0
    assert registry.count(contains="/oauth2/") == 0


async def test_a_non_ecr_host_never_falls_back_to_the_default_ecr_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(providers, "_CACHE", providers.ProviderCache())
    async with _recording_endpoint() as (aws, asked), running(FakeRegistry()) as registry:
        monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
        monkeypatch.setenv("AWS_REGION", "eu-west-1")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")
        seen = _basic_challenge(registry)
        result = await check(registry.url, provider="aws")
    (hop,) = result.judgement.hops
    assert hop.verdict.value == "AuthFailed" and "provider aws logs in only to" in hop.message
    assert asked == [], "neither STS nor ECR was asked"
    assert set(seen) == {""}


async def test_the_cache_refuses_before_any_cloud_or_the_registry_is_asked() -> None:
    async def unreachable() -> httpx.AsyncBaseTransport:
        raise AssertionError("the registry was contacted")

    cache = providers.ProviderCache()
    with pytest.raises(RegistryError) as caught:
        await cache.get("azure", "https://registry.example.com", unreachable)
    assert caught.value.fault.kind is FaultKind.AUTH_UNANSWERABLE
    assert cache.fetches == 0
