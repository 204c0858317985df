"""The pure parts of proxies, client certificates, cloud providers and docker credential lookup."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab.certs import TestCA
from layerwatch.chain import ChainError, Credentials, Hop, Proxy, chain_from_spec
from layerwatch.registry import credhelpers, providers
from layerwatch.registry.auth import Challenge
from layerwatch.registry.client import endpoint_of
from layerwatch.registry.network import EndpointState
from layerwatch.registry.proxies import bypassed, environment_proxy, hop_proxy, parse_proxy, transport_proxy
from layerwatch.registry.tls import check_client_certificate, insecure_context
from layerwatch.settings import EngineSettings

HTTPS_HOP = Hop.from_url("edge", "https://harbor.corp.example:8443/p-core")
HTTP_HOP = Hop.from_url("lab", "http://127.0.0.1:5000")

# -- proxies -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "expected"),
    [
        ("harbor.corp.example", 443, "", False),
        ("harbor.corp.example", 443, "*", True),
        ("harbor.corp.example", 443, "corp.example", True),
        ("corp.example", 443, "corp.example", True),
        ("corp.example", 443, ".corp.example", False),  # leading dot: subdomains only
        ("harbor.corp.example", 443, ".corp.example", True),
        ("evilcorp.example", 443, "corp.example", False),
        ("harbor.corp.example", 8443, "harbor.corp.example:443", False),
        ("harbor.corp.example", 8443, "harbor.corp.example:8443", True),
        ("10.1.2.3", 5000, "10.0.0.0/8", True),
        ("10.1.2.3", 5000, "192.168.0.0/16, 10.1.2.3", True),
        ("::1", 5000, "::1", True),
        ("HARBOR.Corp.Example", 443, " CORP.example ,", True),
    ],
)
def test_no_proxy_matches_like_curl_and_go(host: str, port: int, no_proxy: str, expected: bool) -> None:
    assert bypassed(host, port, no_proxy) is expected


def test_the_environment_proxy_follows_the_hops_scheme_and_lower_case_wins() -> None:
    env = {"HTTPS_PROXY": "http://upper:3128", "https_proxy": "http://lower:3128", "HTTP_PROXY": "plain:80"}
    assert environment_proxy(HTTPS_HOP, env) == Proxy("http://lower:3128")
    assert environment_proxy(HTTP_HOP, env) == Proxy("http://plain:80")
    assert environment_proxy(HTTP_HOP, {"HTTPS_PROXY": "http://p:1"}) is None
    assert environment_proxy(HTTPS_HOP, {**env, "NO_PROXY": "corp.example"}) is None


def test_credentials_in_an_environment_proxy_become_fields() -> None:
    proxy = environment_proxy(HTTPS_HOP, {"HTTPS_PROXY": "http://me%40corp:p%3Ass@proxy:3128/"})
    assert proxy == Proxy("http://proxy:3128", "me@corp", "p:ss")
    assert proxy is not None and "p:ss" not in repr(proxy)


def test_the_hops_own_proxy_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://env-proxy:3128")
    hop = Hop.from_url("edge", "https://harbor.corp.example", proxy=Proxy("http://mine:8080", "u", "p"))
    proxy = transport_proxy(hop_proxy(hop))
    assert proxy is not None and str(proxy.url) == "http://mine:8080" and proxy.auth == ("u", "p")
    assert hop_proxy(HTTPS_HOP) == Proxy("http://env-proxy:3128")
    assert endpoint_of(HTTPS_HOP).proxy == Proxy("http://env-proxy:3128")  # part of the endpoint's identity
    monkeypatch.delenv("HTTPS_PROXY")
    assert hop_proxy(HTTPS_HOP) is None and transport_proxy(None) is None


@given(
    st.text(
        alphabet=st.characters(blacklist_characters="@/:?#[]%", blacklist_categories=("Cs", "Cc")), min_size=6
    )
)
def test_a_password_in_a_proxy_address_never_reaches_the_message(password: str) -> None:
    """Whatever the password, the message is the same: nothing of it gets through."""

    def message(secret: str) -> str:
        with pytest.raises(ChainError) as info:
            parse_proxy(f"http://user:{secret}@proxy.example:3128", "hop edge")
        return str(info.value)

    assert message(password) == message("hunter2") and "hunter2" not in message("hunter2")


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("proxy.example:3128", "must be http://host[:port]"),
        ("socks5://proxy.example:1080", "must be http://host[:port]"),
        ("http://proxy.example:3128/path", "must not have a path"),
        ("http://proxy.example:99999", "has an invalid port (a number from 1 to 65535)"),
        ("http://proxy.example:3l28", "has an invalid port"),
        ("http://proxy.example:0", "has an invalid port"),
        ("http://[::1:3128", "is not a valid URL"),
        ("http://[not-ipv6]:3128", "is not a valid URL"),
        ("http://proxy_.example:3128", "has an invalid host"),
        ("http://proxy example:3128", "must not contain spaces"),
        ("http://proxy.example:3128?x", "must not have a path, query or fragment"),
        ("", "must be a URL"),
    ],
)
def test_bad_proxy_addresses_are_one_line_errors(address: str, fragment: str) -> None:
    with pytest.raises(ChainError, match=re.escape(fragment)):
        parse_proxy(address, "hop edge")


def test_proxy_username_and_password_go_together() -> None:
    with pytest.raises(ChainError, match="go together"):
        parse_proxy("http://proxy:3128", "hop edge", username="me")


# -- client certificates -----------------------------------------------------------------------------


def test_client_certificate_halves_are_checked_together(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    cert, key = (p.read_text() for p in ca.issue("client", client=True))
    _, other_key = (p.read_text() for p in ca.issue("other", client=True))
    check_client_certificate(cert, key, "hop edge")
    check_client_certificate(None, None, "hop edge")
    with pytest.raises(ChainError, match=re.escape("tls.key (keyFile) is missing")):
        check_client_certificate(cert, None, "hop edge")
    with pytest.raises(ChainError, match="client certificate does not load") as info:
        check_client_certificate(cert, other_key, "hop edge")
    assert "PRIVATE KEY" not in str(info.value)


def test_insecure_skip_verify_still_presents_the_client_certificate(tmp_path: Path) -> None:
    cert, key = (p.read_text() for p in TestCA(tmp_path).issue("client", client=True))
    assert insecure_context(None, None) is False
    context = insecure_context(cert, key)
    assert context is not False and not isinstance(context, bool) and not context.check_hostname


# -- chain documents ---------------------------------------------------------------------------------


def test_a_hops_provider_is_read_and_generic_means_none() -> None:
    spec = {
        "hops": [
            {"name": "edge", "url": "https://harbor.example/p", "provider": "generic"},
            {
                "name": "origin",
                "url": "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                "provider": "aws",
            },
        ]
    }
    chain = chain_from_spec("c", spec)
    assert [hop.provider for hop in chain.hops] == [None, "aws"]
    with pytest.raises(ChainError, match="provider must be one of generic, aws, azure, gcp, not 'AWS'"):
        chain_from_spec("c", {"hops": [{"name": "o", "url": "https://x.example", "provider": "AWS"}]})


# -- cloud providers ---------------------------------------------------------------------------------


def test_cloud_credentials_are_refreshed_shortly_before_they_expire() -> None:
    now = 1_000_000.0
    assert providers._refresh_at(now, now + 12 * 3600) == now + 12 * 3600 - 300  # ECR: 12 h
    assert providers._refresh_at(now, now + 120) == now + 60  # short-lived: half way
    assert providers._refresh_at(now, now - 5) == now  # already expired (moto's 2015): not cached
    assert providers._refresh_at(now, None) == now


def test_jwt_expiry_is_read_without_verification() -> None:
    from tests.registry.cloud_fakes import fake_jwt

    expiry = providers._jwt_expiry(fake_jwt(3600))
    assert expiry is not None and abs(expiry - dt.datetime.now(dt.UTC).timestamp() - 3600) < 5
    assert providers._jwt_expiry("not-a-jwt") is None


async def test_a_hop_without_a_provider_uses_its_own_credentials() -> None:
    hop = Hop.from_url("edge", "https://harbor.example", credentials=Credentials("robot", "pw"))
    state = EndpointState(endpoint_of(hop), EngineSettings())
    source = providers.credential_source(hop.provider, hop.base_url, hop.credentials, state.transport)
    assert await source.get() == Credentials("robot", "pw")


# -- docker credential lookup ------------------------------------------------------------------------


def test_a_hosts_helper_wins_over_the_store() -> None:
    config = {"credHelpers": {"ghcr.io": "gh"}, "credsStore": "desktop"}
    assert credhelpers._helper_for(config, "ghcr.io") == "gh"
    assert credhelpers._helper_for(config, "quay.io") == "desktop"
    assert (
        credhelpers._helper_for({"credHelpers": {"https://index.docker.io/v1/": "hub"}}, "index.docker.io")
        == "hub"
    )
    assert credhelpers._helper_for({"auths": {}}, "quay.io") is None


def test_the_refresh_token_grant_carries_service_scope_and_client_id() -> None:
    form = credhelpers.refresh_token_form(
        Challenge("bearer", "https://auth.example/token", "registry.example", ""),
        "repository:org/app:pull",
        Credentials("", "", identity_token="idt"),
    )
    assert form == (
        b"grant_type=refresh_token&refresh_token=idt&service=registry.example"
        b"&scope=repository%3Aorg%2Fapp%3Apull&client_id=layerwatch"
    )
