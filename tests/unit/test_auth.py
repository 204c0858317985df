"""Registry auth: challenges from the network, cached tokens, and docker config credentials."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerwatch.chain import ChainError, Credentials
from layerwatch.registry.auth import (
    MAX_CHALLENGE_LENGTH,
    Challenge,
    ChallengeError,
    TokenCache,
    basic_header,
    credentials_from_docker_config,
    default_docker_config_path,
    parse_challenge,
    token_from_response,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Basic", Challenge("basic")),
        ('Basic realm="Harbor"', Challenge("basic")),
        ('basic realm="registry"', Challenge("basic")),
        (
            'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:org/app:pull"',
            Challenge("bearer", "https://ghcr.io/token", "ghcr.io", "repository:org/app:pull"),
        ),
        (
            'BEARER Realm="https://auth.docker.io/token", Service="registry.docker.io"',
            Challenge("bearer", "https://auth.docker.io/token", "registry.docker.io"),
        ),
        (
            'Bearer realm="http://harbor.local/service/token",service="harbor-registry",'
            'scope="repository:p-core/org/app:pull,push"',
            Challenge(
                "bearer",
                "http://harbor.local/service/token",
                "harbor-registry",
                "repository:p-core/org/app:pull,push",
            ),
        ),
        (
            r'Bearer realm="https://a.example/t\"x\"",service="s\\v"',
            Challenge("bearer", 'https://a.example/t"x"', "s\\v"),
        ),
        (
            "Bearer realm=https://a.example/token,service=a",
            Challenge("bearer", "https://a.example/token", "a"),
        ),
        (
            '  Bearer   realm = "https://a.example/token" , scope="" ',
            Challenge("bearer", "https://a.example/token"),
        ),
    ],
)
def test_basic_and_bearer_challenges_are_read_like_a_registry_client_reads_them(
    header: str, expected: Challenge
) -> None:
    assert parse_challenge(header) == expected


@pytest.mark.parametrize(
    ("header", "complaint"),
    [
        ("", "unsupported auth scheme"),
        ("Negotiate abc", "unsupported auth scheme"),
        ('Digest realm="x"', "unsupported auth scheme"),
        ("Bearer", "without an http"),
        ('Bearer service="ghcr.io"', "without an http"),
        ('Bearer realm="ftp://a.example/token"', "without an http"),
        ('Bearer realm="/token"', "without an http"),
        ('Bearer realm="https://a.example/token', "malformed"),
        ("Bearer realm", "malformed"),
        ('Bearer =x,realm="https://a"', "malformed"),
        ('Bearer realm="https://a"x', "malformed"),
        ('Bearer realm="https://a\x00"\x07', "malformed"),
        ("Bearer " + "a=" * 5000, "refused"),
        ("Bearer " + 'realm="' + "\\" * (MAX_CHALLENGE_LENGTH - 20), "malformed"),
        ("x" * (MAX_CHALLENGE_LENGTH + 1), "refused"),
    ],
)
def test_a_challenge_that_cannot_be_answered_is_a_challenge_error(header: str, complaint: str) -> None:
    with pytest.raises(ChallengeError, match=complaint) as caught:
        parse_challenge(header)
    assert len(str(caught.value)) < 200


_challenge_alphabet = st.sampled_from(
    [*'ab=," \\\t\r\n\x00\x7f:/é', "realm", "https://", "Bearer ", "service"]
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.lists(_challenge_alphabet, max_size=60).map(lambda parts: "Bearer " + "".join(parts)),
    )
)
def test_any_www_authenticate_header_yields_a_challenge_or_a_challenge_error(header: str) -> None:
    try:
        challenge = parse_challenge(header)
    except ChallengeError:
        return
    assert challenge.scheme in {"basic", "bearer"}
    if challenge.scheme == "bearer":
        assert challenge.realm.startswith(("https://", "http://"))


def test_a_cached_token_is_handed_out_until_shortly_before_it_expires() -> None:
    clock = FakeClock()
    cache = TokenCache(clock)
    key = ("https://ghcr.io/token", "ghcr.io", "repository:org/app:pull")
    assert cache.get(key) is None
    cache.put(key, "tok", 60)
    assert cache.get(key) == "tok"
    assert cache.get((key[0], key[1], "repository:other:pull")) is None
    clock.now += 60 - TokenCache.MARGIN - 0.5
    assert cache.get(key) == "tok"
    clock.now += 0.5
    assert cache.get(key) is None
    assert cache.get(key) is None  # stays gone


def test_a_token_with_a_tiny_lifetime_is_still_usable_for_a_moment() -> None:
    clock = FakeClock()
    cache = TokenCache(clock)
    cache.put(("r", "s", "x"), "tok", 0)
    assert cache.get(("r", "s", "x")) == "tok"
    clock.now += 1
    assert cache.get(("r", "s", "x")) is None


def test_a_token_can_be_forgotten_after_a_401() -> None:
    cache = TokenCache(FakeClock())
    cache.put(("r", "s", "x"), "tok", 300)
    cache.forget(("r", "s", "x"))
    cache.forget(("r", "s", "x"))
    assert cache.get(("r", "s", "x")) is None


def test_tokens_do_not_show_in_the_cache_repr() -> None:
    cache = TokenCache(FakeClock())
    cache.put(("r", "s", "x"), "very-secret-token", 300)
    assert "very-secret-token" not in repr(cache.__dict__)


@pytest.mark.parametrize(
    ("body", "token", "lifetime"),
    [
        (b'{"token": "abc", "expires_in": 300}', "abc", 300.0),
        (b'{"access_token": "abc"}', "abc", 60.0),
        (b'{"token": "abc", "access_token": "def", "expires_in": 1.5}', "abc", 1.5),
        (b'{"token": "abc", "expires_in": "300"}', "abc", 60.0),
        (b'{"token": "abc", "expires_in": true}', "abc", 60.0),
        (b'{"token": "abc", "expires_in": NaN}', "abc", 60.0),
        (b'{"token": "abc", "expires_in": -5}', "abc", 60.0),
        (b'{"token": "abc", "expires_in": 1e999}', "abc", 60.0),
        (b'{"token": "abc", "expires_in": 1' + b"0" * 400 + b"}", "abc", 60.0),
    ],
)
def test_a_token_and_its_lifetime_are_read_from_the_token_endpoints_answer(
    body: bytes, token: str, lifetime: float
) -> None:
    assert token_from_response(body) == (token, lifetime)


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"<html>", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"1" * 5000, "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b'["token"]', "not a JSON object"),
        (b"{}", "without a token"),
        (b'{"token": ""}', "without a token"),
        (b'{"token": 5}', "without a token"),
    ],
)
def test_a_token_endpoint_answering_nonsense_is_a_challenge_error(body: bytes, complaint: str) -> None:
    with pytest.raises(ChallengeError, match=complaint):
        token_from_response(body)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_token_endpoint_body_yields_a_token_or_a_challenge_error(body: bytes) -> None:
    try:
        token, lifetime = token_from_response(body)
    except ChallengeError:
        return
    assert token and 0 < lifetime < float("inf")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("auths", "host", "expected"),
    [
        ({"ghcr.io": {"auth": b64("bot:pa:ss")}}, "ghcr.io", Credentials("bot", "pa:ss")),
        ({"ghcr.io": {"username": "bot", "password": "pw"}}, "ghcr.io", Credentials("bot", "pw")),
        ({"https://ghcr.io": {"auth": b64("bot:pw")}}, "ghcr.io", Credentials("bot", "pw")),
        ({"https://ghcr.io/": {"auth": b64("bot:pw")}}, "ghcr.io", Credentials("bot", "pw")),
        ({"http://localhost:5000": {"auth": b64("u:p")}}, "localhost:5000", Credentials("u", "p")),
        (
            {"https://index.docker.io/v1/": {"auth": b64("hub:pw")}},
            "index.docker.io",
            Credentials("hub", "pw"),
        ),
        ({"docker.io": {"auth": b64("hub:pw")}}, "index.docker.io", Credentials("hub", "pw")),
        ({"ghcr.io": {"auth": "", "username": "bot", "password": "pw"}}, "ghcr.io", Credentials("bot", "pw")),
        ({"ghcr.io": {"auth": b64("bot:pw")}}, "quay.io", None),
        ({"ghcr.io": {"identitytoken": "x"}}, "ghcr.io", Credentials("", "", identity_token="x")),
        ({"ghcr.io": "bot:pw", "quay.io": {"auth": "!!!"}}, "quay.io.example", None),
        (
            {"a.example": {"auth": b64("a:1")}, "b.example": {"auth": b64("b:2")}},
            "b.example",
            Credentials("b", "2"),
        ),
    ],
)
def test_credentials_are_found_in_a_docker_config_by_registry_host(
    auths: dict[str, Any], host: str, expected: Credentials | None
) -> None:
    assert credentials_from_docker_config({"auths": auths}, host) == expected


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"auth": "!!!not base64!!!"}, "auth is not the base64 of UTF-8 user:password"),
        ({"auth": b64("no-colon")}, "auth is not the base64 of UTF-8 user:password"),
        ({"auth": base64.b64encode(b"bot:\xff").decode()}, "auth is not the base64 of UTF-8"),
        ({"auth": 42}, "auth must be a string"),
        ({"username": "bot", "password": ["pw"]}, "password must be a string"),
        ("bot:pw", "must be an object with auth or username and password"),
    ],
)
def test_an_unusable_entry_for_the_host_is_an_error_not_an_anonymous_check(entry: Any, fragment: str) -> None:
    """Docker refuses such a config, so Flux cannot pull with it: checking anonymously would be a lie."""
    with pytest.raises(ChainError) as info:
        credentials_from_docker_config({"auths": {"https://ghcr.io": entry}}, "ghcr.io", "Secret a/b")
    assert str(info.value).startswith("Secret a/b auths['https://ghcr.io']: ") and fragment in str(info.value)


@pytest.mark.parametrize("config", [{}, {"auths": None}, {"auths": ["ghcr.io"]}, {"credsStore": "desktop"}])
def test_a_docker_config_without_usable_auths_gives_no_credentials(config: dict[str, Any]) -> None:
    assert credentials_from_docker_config(config, "ghcr.io") is None


def test_the_docker_config_path_follows_docker_config_then_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert default_docker_config_path() == tmp_path / "config.json"
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_docker_config_path() == tmp_path / ".docker" / "config.json"


def test_basic_auth_header_encodes_user_and_password() -> None:
    assert basic_header(Credentials("bot", "pw")) == "Basic " + b64("bot:pw")


@pytest.mark.parametrize(
    "header",
    [
        'Bearer realm="https://a.example/token",service="reg", Basic realm="reg"',
        'Basic realm="reg", Bearer realm="https://a.example/token",service="reg"',
        'Bearer realm="https://a.example/token",,service="reg"',
    ],
)
def test_a_header_offering_several_challenges_is_answered_with_bearer(header: str) -> None:
    challenge = parse_challenge(header)
    assert (challenge.scheme, challenge.realm, challenge.service) == (
        "bearer",
        "https://a.example/token",
        "reg",
    )
