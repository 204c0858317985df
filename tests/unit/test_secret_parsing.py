"""Every parser of Secret data and of proxy/hop fields is total: a value, or one typed error line.

Tenants write these Secrets, so anything can be in them. Whatever is there, a parser answers with
a usable value or with ``SecretError``/``ChainError`` whose message is one bounded line naming the
Secret or field and holding none of the Secret's values; and re-planning goes on for everyone else.
Secret values in these tests carry MARK, so a message that echoes one is caught.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import tempfile
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from lab.certs import TestCA
from layerwatch.chain import ChainError, Credentials, Hop, Proxy
from layerwatch.kube.api import (
    INVALID_CA,
    INVALID_SECRET,
    MAX_SECRET_BYTES,
    SECRET_MISSING,
    SECRET_UNREADABLE,
    KubeApi,
    SecretError,
)
from layerwatch.kube.service import OperatorOptions, OperatorService
from layerwatch.registry.auth import credentials_from_docker_config
from layerwatch.registry.proxies import environment_proxy, parse_proxy, transport_proxy
from layerwatch.registry.tls import check_client_certificate, is_pem_bundle

from .builders import oci_repository
from .test_kube_service import Recording

MARK = "S3CR3T"
"""Every secret value the strategies make contains this; no message may."""
REASONS = {SECRET_MISSING, SECRET_UNREADABLE, INVALID_SECRET, INVALID_CA}
HOP = Hop.from_url("edge", "https://a.example/p-core")
TENANT, OTHER = ("team-a", "app"), ("team-b", "other")


# -- material ----------------------------------------------------------------------------------------


@functools.cache
def pki() -> dict[str, str]:
    """A CA, a client pair, a key of another pair and an encrypted key, as PEM text."""
    directory = Path(tempfile.mkdtemp(prefix="layerwatch-secret-tests-"))
    ca = TestCA(directory)
    cert, key = (p.read_text() for p in ca.issue("client", client=True))
    other_key = ca.issue("other", client=True)[1].read_text()
    encrypted = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
        .decode()
    )
    return {
        "ca": ca.path.read_text(),
        "cert": cert,
        "key": key,
        "other_key": other_key,
        "encrypted": encrypted,
    }


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


secrets = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).map(lambda t: f"{MARK}{t}")
"""A password or token: anything, marked."""

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | secrets,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def addresses(draw: st.DrawFn) -> str:
    """Proxy addresses: plausible ones, each part possibly broken, a password possibly inside."""
    scheme = draw(st.sampled_from(["http://", "https://", "HTTP://", "socks5://", "", "http:/", "http:///"]))
    userinfo = draw(
        st.one_of(
            st.just(""),
            secrets.map(lambda p: f"robot:{p}@"),
            secrets.map(lambda p: f"{p}@"),
            secrets.map(lambda p: f"robot:{p}/x@"),
        )
    )
    host = draw(
        st.one_of(
            st.sampled_from(
                ["127.0.0.1", "proxy.example", "[::1]", "[::1", "[zz]", "exa mple", "", "é.example"]
            ),
            st.text(max_size=12),
        )
    )
    port = draw(
        st.one_of(
            st.just(""),
            st.integers(-1, 100_000).map(lambda n: f":{n}"),
            st.sampled_from([":3l28", ":", ":+80", ":٣١٢٨", ":0x50", ": 80", ":99999999999999999999"]),
            st.text(max_size=6).map(lambda t: f":{t}"),
        )
    )
    tail = draw(st.sampled_from(["", "/", "/path", "?q", "#f", "\n", " ", "\x00"]))
    return f"{scheme}{userinfo}{host}{port}{tail}"


@st.composite
def docker_configs(draw: st.DrawFn) -> str:
    """``.dockerconfigjson`` text: right and wrong shapes, broken JSON, deep nesting, huge numbers."""
    auth = st.one_of(
        secrets.map(lambda p: b64(f"robot:{p}")),
        secrets.map(b64),
        st.binary(max_size=20).map(lambda b: b64(b + MARK.encode())),
        secrets,
        json_values,
    )
    entry = st.fixed_dictionaries(
        {},
        optional={
            "auth": auth,
            "username": json_values,
            "password": secrets | json_values,
            "identitytoken": secrets,
        },
    )
    keys = st.sampled_from(["a.example", "https://a.example", "http://a.example/", "c.example"]) | st.text(
        max_size=10
    )
    config = st.one_of(
        st.fixed_dictionaries({"auths": st.dictionaries(keys, entry | json_values, max_size=3)}),
        json_values,
    )
    return draw(
        st.one_of(
            config.map(json.dumps),
            st.sampled_from(["{", "[" * 100_000, '{"auths": ' * 5000, "1" * 5000, '{"auths": {}}}']),
            st.text(max_size=30),
        )
    )


@st.composite
def pems(draw: st.DrawFn) -> str:
    """PEM text: real certificates and keys, mismatched, encrypted, cut short, altered or junk."""
    material = pki()
    real = draw(st.sampled_from(sorted(material.values())))
    return draw(
        st.one_of(
            st.just(real),
            st.integers(0, len(real)).map(lambda n: real[:n]),
            st.just(real.replace("A", "B", 3)),
            st.just(real + "é"),
            st.just(real.replace("CERTIFICATE", "CERTIFICATE-----\x00")),
            secrets.map(lambda s: f"-----BEGIN CERTIFICATE-----\n{s}\n-----END CERTIFICATE-----\n"),
            st.text(max_size=40),
        )
    )


KNOWN_KEYS = [
    ".dockerconfigjson",
    "username",
    "password",
    "address",
    "ca.crt",
    "caFile",
    "tls.crt",
    "tls.key",
]


def values_for(key: str) -> st.SearchStrategy[Any]:
    """Encoded Secret values for ``key``: good-looking text of its kind, anything, or not base64."""
    text = {
        ".dockerconfigjson": docker_configs(),
        "address": addresses(),
        "ca.crt": pems(),
        "caFile": pems(),
        "tls.crt": pems(),
        "tls.key": pems(),
        "username": st.text(max_size=12),
    }.get(key, secrets)
    return st.one_of(
        text.map(b64),
        st.binary(max_size=30).map(lambda b: b64(b"\xff" + b + MARK.encode())),  # not UTF-8
        st.sampled_from(["!!!", "YQ", "a\nb", "é", ""]),  # not base64 (only a broken apiserver)
        st.sampled_from([None, 42, ["x"]]),
    )


@st.composite
def secret_data(draw: st.DrawFn) -> dict[str, Any]:
    """A Secret's ``data`` as the apiserver sends it (base64 values), every shape possible."""
    keys = draw(st.lists(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), max_size=5, unique=True))
    return {key: draw(values_for(key)) for key in keys}


def leaked(message: str, data: Mapping[str, Any]) -> list[str]:
    """The secret values of ``data`` (decoded, and each JSON string and PEM line in them) in ``message``."""

    def pieces(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
            yield from value.splitlines()
        elif isinstance(value, Mapping):
            for item in value.values():
                yield from pieces(item)
        elif isinstance(value, list):
            for item in value:
                yield from pieces(item)

    found = [MARK] if MARK in message else []
    for key, encoded in data.items():
        if key in ("address", "username") or not isinstance(encoded, str):
            continue  # an address is named (masked) in messages; a username is not secret
        try:
            text = base64.b64decode(encoded).decode(errors="replace")
        except ValueError:
            continue
        try:
            document = json.loads(text)
        except (ValueError, RecursionError):
            document = None
        found += [
            p for p in (*pieces(text), *pieces(document)) if len(p.strip()) >= 12 and p.strip() in message
        ]
    return found


def assert_one_clean_line(
    error: Exception, data: Mapping[str, Any] | None = None, *, secret: str = ""
) -> None:
    message = str(error)
    assert message and len(message) <= 600, message
    assert "\n" not in message and "\r" not in message and message.isprintable(), message
    assert not leaked(message, data or {}), message
    assert not secret or secret not in message, message


class RawCore:
    """Secrets and ServiceAccounts as the apiserver would answer, ``data`` given already encoded."""

    def __init__(self, secrets: dict[tuple[str, str], Mapping[str, Any]], pull_secrets: list[Any]) -> None:
        self.secrets, self.pull_secrets = secrets, pull_secrets

    def read_namespaced_secret(self, name: str, namespace: str, **_: Any) -> k8s.V1Secret:
        if (namespace, name) not in self.secrets:
            raise ApiException(status=404, reason="Not Found")
        return k8s.V1Secret(data=dict(self.secrets[(namespace, name)]))

    def read_namespaced_service_account(self, name: str, namespace: str, **_: Any) -> k8s.V1ServiceAccount:
        if name != "puller":
            raise ApiException(status=404, reason="Not Found")
        refs = [k8s.V1LocalObjectReference(name=n) for n in self.pull_secrets]
        return k8s.V1ServiceAccount(image_pull_secrets=refs)


def raw_api(
    secrets: dict[tuple[str, str], Mapping[str, Any]], pull_secrets: list[Any] | None = None
) -> KubeApi:
    return Recording(RawCore(secrets, pull_secrets or []))  # type: ignore[arg-type]


# -- parsers, one by one -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(addresses(), st.one_of(st.none(), st.text(max_size=8)), st.one_of(st.none(), secrets, st.integers()))
@example("http://robot:S3CR3T@127.0.0.1:3l28", None, None)
@example("http://[::1:3128", None, None)
@example("http://S3CR3T@[::1", None, None)
def test_a_proxy_address_is_a_usable_proxy_or_one_chain_error(
    address: str, username: Any, password: Any
) -> None:
    try:
        proxy = parse_proxy(address, "Secret team-a/proxy", username, password)
    except ChainError as exc:
        assert_one_clean_line(exc, secret=password if isinstance(password, str) else "")
        assert str(exc).startswith("Secret team-a/proxy: proxy ")
        return
    assert parse_proxy(proxy.address, "again") == Proxy(proxy.address), "what it returns parses again"
    assert transport_proxy(proxy) is not None and httpx.URL(proxy.address).host
    assert MARK not in proxy.address


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("http://robot:S3CR3T@127.0.0.1:3l28", "'http://***@127.0.0.1:3l28' must not carry credentials"),
        ("http://[::1:3128", "'http://[::1:3128' is not a valid URL"),
        ("http://127.0.0.1:0", "'http://127.0.0.1:0' has an invalid port (a number from 1 to 65535)"),
        ("http://S3CR3T@proxy:3128", "'http://***@proxy:3128' must not carry credentials"),
    ],
)
def test_proxy_addresses_that_broke_or_fooled_the_old_parser(address: str, fragment: str) -> None:
    """A password next to a bad port or bracket raised a bare ValueError; port 0 became port 80."""
    with pytest.raises(ChainError) as info:
        parse_proxy(address, "hop edge")
    assert fragment in str(info.value)
    assert_one_clean_line(info.value, secret=MARK)


@settings(max_examples=300, deadline=None)
@given(st.one_of(addresses(), st.text(max_size=30)))
@example("http://robot:S3CR3T@proxy.example:3l28")
@example("robot:S3CR3T@[::1")
def test_the_environment_proxy_is_a_proxy_or_one_chain_error(address: str) -> None:
    """What the CLI maps to exit 2: a typo in HTTPS_PROXY is a config error, never a traceback."""
    try:
        proxy = environment_proxy(HOP, {"HTTPS_PROXY": address})
    except ChainError as exc:
        assert_one_clean_line(exc, secret=MARK)
        assert str(exc).startswith("HTTPS_PROXY: proxy ")
        return
    assert proxy is None or transport_proxy(proxy) is not None


def test_an_environment_proxy_with_a_bad_port_is_a_config_error() -> None:
    with pytest.raises(ChainError, match="has an invalid port") as info:
        environment_proxy(HOP, {"https_proxy": "http://me:S3CR3T@proxy.corp:3l28"})
    assert str(info.value) == (
        "HTTPS_PROXY: proxy address 'http://proxy.corp:3l28' has an invalid port (a number from 1 to 65535)"
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docker_configs())
def test_a_docker_config_gives_credentials_or_one_chain_error(text: str) -> None:
    try:
        config = json.loads(text)
    except (ValueError, RecursionError):
        return  # the JSON layer is json_object's, tested with the Secrets below
    if not isinstance(config, Mapping):
        return
    try:
        found = credentials_from_docker_config(config, "a.example", "Secret team-a/pull: .dockerconfigjson")
    except ChainError as exc:
        assert_one_clean_line(exc, {".dockerconfigjson": b64(text)})
        assert str(exc).startswith("Secret team-a/pull: .dockerconfigjson auths[")
        return
    assert found is None or isinstance(found, Credentials)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.none(), pems()), st.one_of(st.none(), pems()))
def test_a_client_certificate_pair_loads_or_is_one_chain_error(cert: str | None, key: str | None) -> None:
    try:
        check_client_certificate(cert, key, "Secret team-a/tls")
    except ChainError as exc:
        assert_one_clean_line(exc, {"tls.crt": b64(cert or ""), "tls.key": b64(key or "")})
        assert "PRIVATE KEY" not in str(exc) and "CERTIFICATE-----" not in str(exc)


def test_an_encrypted_client_key_is_refused_by_name_never_prompted_for() -> None:
    with pytest.raises(ChainError) as info:
        check_client_certificate(pki()["cert"], pki()["encrypted"], "Secret team-a/tls")
    assert str(info.value) == (
        "Secret team-a/tls: the client key (tls.key) is encrypted; it must be an unencrypted PEM key"
    )


@settings(max_examples=150, deadline=None)
@given(pems())
@example("-----BEGIN CERTIFICATE-----é")
def test_a_ca_bundle_check_answers_true_or_false_for_any_text(text: str) -> None:
    assert is_pem_bundle(text) in (True, False)


# -- Secrets read through the KubeApi --------------------------------------------------------------


async def parse_every_way(api: KubeApi, namespace: str, name: str) -> list[Any]:
    """Every parser of a Secret, each ending as a value or a SecretError (returned, not raised)."""
    calls = [
        api.credentials(namespace, name, "a.example"),
        api.proxy(namespace, name),
        api.proxy(namespace, name, "http://chain-proxy.example:3128"),
        api.client_certificate(namespace, name),
        api.ca_pem(namespace, name),
        api.service_account_credentials(namespace, "puller", "a.example"),
    ]
    outcomes: list[Any] = []
    for call in calls:
        try:
            outcomes.append(await call)
        except SecretError as exc:
            outcomes.append(exc)
    return outcomes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(secret_data(), st.lists(st.sampled_from(["pull", "gone", "", None, "Bad/Name"]), max_size=3))
@example({"address": b64("http://robot:S3CR3T@127.0.0.1:3l28")}, [])
@example({"ca.crt": b64("-----BEGIN CERTIFICATE-----é")}, [])
@example({"password": b64(b"\xff" + MARK.encode()), "username": b64("robot")}, [])
@example({".dockerconfigjson": b64('{"auths": {"a.example": {"auth": "!!!"}}}')}, ["pull"])
def test_any_secret_is_a_value_or_one_secret_error_for_every_parser(
    data: dict[str, Any], pull_secrets: list[Any]
) -> None:
    api = raw_api({("team-a", "pull"): data}, pull_secrets)
    for outcome in asyncio.run(parse_every_way(api, "team-a", "pull")):
        if isinstance(outcome, SecretError):
            assert outcome.reason in REASONS
            assert_one_clean_line(outcome, data)
            assert str(outcome).startswith(("Secret team-a/", "ServiceAccount team-a/puller: ")), outcome
        elif isinstance(outcome, Proxy):
            assert transport_proxy(outcome) is not None
        elif isinstance(outcome, dict):  # client_certificate's hop options
            assert "ca_pem" not in outcome or is_pem_bundle(outcome["ca_pem"])
            check_client_certificate(outcome.get("client_cert_pem"), outcome.get("client_key_pem"), "again")
        elif isinstance(outcome, str):  # ca_pem
            assert is_pem_bundle(outcome)
        else:
            assert outcome is None or isinstance(outcome, Credentials)


@pytest.mark.parametrize(
    ("data", "call", "reason", "message"),
    [
        pytest.param(
            {"address": b64("http://robot:S3CR3T@127.0.0.1:3l28")},
            "proxy",
            INVALID_SECRET,
            "Secret team-a/s: proxy address 'http://***@127.0.0.1:3l28' must not carry credentials;"
            " use username and password",
            id="proxy-password-and-bad-port",
        ),
        pytest.param(
            {"address": b64("http://127.0.0.1:3l28")},
            "proxy",
            INVALID_SECRET,
            "Secret team-a/s: proxy address 'http://127.0.0.1:3l28' has an invalid port"
            " (a number from 1 to 65535)",
            id="proxy-bad-port",
        ),
        pytest.param(
            {"ca.crt": b64("-----BEGIN CERTIFICATE-----é")},
            "ca_pem",
            INVALID_CA,
            "Secret team-a/s: ca.crt is not a PEM CA bundle",
            id="ca-not-ascii",
        ),
        pytest.param(
            {"ca.crt": b64("S3CR3T junk")},
            "client_certificate",
            INVALID_CA,
            "Secret team-a/s: ca.crt is not a PEM CA bundle",
            id="cert-secret-ca-not-pem",
        ),
        pytest.param(
            {"username": b64("robot"), "password": b64(b"\xffS3CR3T")},
            "credentials",
            INVALID_SECRET,
            "Secret team-a/s: password is not base64 of UTF-8 text",
            id="password-not-utf8",
        ),
        pytest.param(
            {".dockerconfigjson": b64(json.dumps({"auths": {"a.example": {"auth": b64("S3CR3T")}}}))},
            "credentials",
            INVALID_SECRET,
            "Secret team-a/s: .dockerconfigjson auths['a.example']: auth is not the base64 of UTF-8"
            " user:password",
            id="auth-without-colon",
        ),
        pytest.param(
            {"password": "A" * (MAX_SECRET_BYTES * 2)},
            "credentials",
            INVALID_SECRET,
            "Secret team-a/s: larger than 1024 KiB",
            id="too-large",
        ),
    ],
)
async def test_secret_shapes_the_old_parsers_let_through_or_crashed_on(
    data: dict[str, Any], call: str, reason: str, message: str
) -> None:
    api = raw_api({("team-a", "s"): data})
    parse = getattr(api, call)
    with pytest.raises(SecretError) as info:
        await (parse("team-a", "s", "a.example") if call == "credentials" else parse("team-a", "s"))
    assert (info.value.reason, str(info.value)) == (reason, message)


async def test_a_pull_secret_of_the_service_account_that_cannot_be_parsed_is_not_skipped() -> None:
    """Skipped, the target would be checked anonymously: a green Flux has not earned."""
    broken = {".dockerconfigjson": b64('{"auths": {"a.example": {"auth": "!!!"}}}')}
    api = raw_api({("team-a", "broken"): broken}, ["gone", "broken"])
    with pytest.raises(SecretError) as info:
        await api.service_account_credentials("team-a", "puller", "a.example")
    assert info.value.reason == INVALID_SECRET and "Secret team-a/broken: .dockerconfigjson" in str(
        info.value
    )


@pytest.mark.parametrize("name", ["", "Bad/Name", "a\nb", "x" * 300, None, 42])
async def test_a_secret_name_no_object_can_have_is_refused_before_any_request(name: Any) -> None:
    api = raw_api({})
    with pytest.raises(SecretError) as info:
        await api.credentials("team-a", name, "a.example")
    assert info.value.reason == INVALID_SECRET and str(info.value).startswith("Secret team-a/")
    assert str(info.value).endswith(": not a valid object name")
    assert_one_clean_line(info.value)


# -- through planning --------------------------------------------------------------------------------


def clean_chain() -> dict[str, Any]:
    return {
        "metadata": {"name": "clean", "generation": 1},
        "spec": {"interval": "5m", "hops": [{"name": "origin", "url": "https://c.example"}]},
    }


def tenant_chain(refs: Collection[str], proxy_address: str | None) -> dict[str, Any]:
    """A chain whose edge hop reads the kinds of Secret in ``refs`` (a platform admin's references)."""
    edge: dict[str, Any] = {"name": "edge", "url": "https://a.example/p-core"}
    for field, name in (
        ("secretRef", "chain-pull"),
        ("caSecretRef", "chain-ca"),
        ("certSecretRef", "chain-tls"),
    ):
        if name in refs:
            edge[field] = {"namespace": "layerwatch", "name": name}
    if proxy_address is not None or "chain-proxy" in refs:
        edge["proxy"] = {"address": proxy_address or "http://chain-proxy.example:3128"}
        if "chain-proxy" in refs:
            edge["proxy"]["secretRef"] = {"namespace": "layerwatch", "name": "chain-proxy"}
    return {
        "metadata": {"name": "corp", "generation": 1},
        "spec": {"interval": "5m", "hops": [edge, {"name": "origin", "url": "https://ghcr.io"}]},
    }


def replanned(
    contents: Mapping[str, Mapping[str, Any]],
    spec: Mapping[str, Any],
    pull_secrets: list[Any],
    chain: dict[str, Any],
) -> OperatorService:
    """One re-plan of the tenant's target on ``chain`` and another namespace's on a clean chain,
    checked for what must hold whatever the Secrets (``contents``; chain-* ones in layerwatch) hold."""
    stored = {
        ("layerwatch" if name.startswith("chain-") else "team-a", name): data
        for name, data in contents.items()
    }
    service = OperatorService(raw_api(stored, pull_secrets), OperatorOptions())
    for body in (chain, clean_chain()):
        service.chain_event("ADDED", body)
        service.set_active(body["metadata"]["name"], True)
    service.source_event("ADDED", oci_repository(*reversed(TENANT), spec=spec))
    service.source_event(
        "ADDED",
        oci_repository(
            *reversed(OTHER), url="oci://c.example/org/other", annotations={"layerwatch.io/chain": "clean"}
        ),
    )

    async def replan() -> None:
        await service.replan()
        if service._pending_writes is not None:
            await service._pending_writes

    asyncio.run(replan())
    watches = service.scheduler._watches
    assert OTHER in watches and watches[OTHER].chain.name == "clean" and not watches[OTHER].pending
    assert TENANT in watches, "the tenant's own target is planned too (checked or shown unknown)"
    for watch in watches.values():
        for hop in (*watch.chain.hops, *([watch.entry_hop] if watch.entry_hop else [])):
            assert hop.ca_pem is None or is_pem_bundle(hop.ca_pem), (
                "no check may start with a CA it cannot load"
            )
    for name, (_, message) in service.not_ready.items():
        assert name == "corp" and "\n" not in message and MARK not in message
    return service


def robot_login() -> dict[str, str]:
    return {"username": b64("robot"), "password": b64(f"{MARK}-pw")}


SECRET_NAMES = ("pull", "proxy", "tls", "chain-pull", "chain-ca", "chain-tls", "chain-proxy")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries({name: secret_data() for name in SECRET_NAMES}),
    st.fixed_dictionaries(
        {},
        optional={
            "secretRef": st.fixed_dictionaries(
                {"name": st.sampled_from(["pull", "gone", "Bad Name"]) | st.none()}
            ),
            "proxySecretRef": st.fixed_dictionaries({"name": st.just("proxy")}),
            "certSecretRef": st.fixed_dictionaries({"name": st.just("tls")}),
            "serviceAccountName": st.sampled_from(["puller", "nobody", "a\nb"]),
            "insecure": st.booleans(),
        },
    ),
    st.lists(st.sampled_from(["pull", "proxy", "gone", "", None]), max_size=3),
    st.sets(st.sampled_from(["chain-pull", "chain-ca", "chain-tls", "chain-proxy"])),
    st.one_of(st.none(), addresses()),
)
def test_no_secret_stops_re_planning_for_another_namespace(
    contents: dict[str, dict[str, Any]],
    spec: dict[str, Any],
    pull_secrets: list[Any],
    chain_refs: set[str],
    proxy_address: str | None,
) -> None:
    """Whatever the tenant's and the chain's Secrets hold, re-planning completes and the target in
    another namespace on another chain is planned to be checked, not left pending."""
    service = replanned(contents, spec, pull_secrets, tenant_chain(chain_refs, proxy_address))
    event("the tenant's entry hop was read" if "corp" not in service.not_ready else "chain not ready")


@pytest.mark.parametrize(
    ("contents", "spec", "chain_refs", "proxy_address"),
    [
        pytest.param(
            {"proxy": {"address": b64("http://robot:S3CR3T@127.0.0.1:3l28")}},
            {"proxySecretRef": {"name": "proxy"}},
            (),
            None,
            id="tenant-proxy-password-and-bad-port",
        ),
        pytest.param(
            {"proxy": {"address": b64("http://[::1:3128")}},
            {"proxySecretRef": {"name": "proxy"}},
            (),
            None,
            id="tenant-proxy-bad-ipv6",
        ),
        pytest.param(
            {"tls": {"ca.crt": b64("-----BEGIN CERTIFICATE-----é")}},
            {"certSecretRef": {"name": "tls"}},
            (),
            None,
            id="tenant-ca-not-ascii",
        ),
        pytest.param(
            {"chain-ca": {"ca.crt": b64("-----BEGIN CERTIFICATE-----é")}},
            {},
            ("chain-ca",),
            None,
            id="chain-ca-not-ascii",
        ),
        pytest.param(
            {"chain-proxy": robot_login()},
            {},
            ("chain-proxy",),
            "http://[::1:3128",  # passes the CRD's pattern ^https?://[^/@?#]+/?$
            id="chain-proxy-address-bad-ipv6",
        ),
    ],
)
def test_secrets_that_stopped_re_planning_for_everyone(
    contents: dict[str, dict[str, Any]],
    spec: dict[str, Any],
    chain_refs: tuple[str, ...],
    proxy_address: str | None,
) -> None:
    """Each of these raised a bare ValueError or TypeError out of the re-plan, which kept the old
    plan everywhere (the other namespace's new target was never checked), or, for a certSecretRef's
    ca.crt, handed the check a CA that the TLS stack refuses with a TypeError."""
    replanned(contents, spec, [], tenant_chain(chain_refs, proxy_address))
