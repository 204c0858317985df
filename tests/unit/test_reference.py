"""References as users type them: Flux's oci:// URLs, pasted host/path:tag, Docker Hub short names."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerwatch.reference import (
    DOCKER_HUB,
    Reference,
    ReferenceError,
    is_digest,
    short_digest,
    without_default_port,
)

SHA256 = "sha256:" + "ab" * 32
SHA512 = "sha512:" + "cd" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("oci://ghcr.io/org/app:v1", "ghcr.io", "org/app", "v1", None),
        ("ghcr.io/org/app:v1", "ghcr.io", "org/app", "v1", None),
        ("ghcr.io/org/app", "ghcr.io", "org/app", "latest", None),
        ("OCI://ghcr.io/org/app", "ghcr.io", "org/app", "latest", None),
        (f"ghcr.io/org/app@{SHA256}", "ghcr.io", "org/app", None, SHA256),
        (f"ghcr.io/org/app@{SHA512}", "ghcr.io", "org/app", None, SHA512),
        (f"oci://ghcr.io/org/app:v1@{SHA256}", "ghcr.io", "org/app", "v1", SHA256),
        ("a.example/p-core/p-ghcr/org/app:6.5.1", "a.example", "p-core/p-ghcr/org/app", "6.5.1", None),
        ("localhost:5000/x", "localhost:5000", "x", "latest", None),
        ("localhost/x:dev", "localhost", "x", "dev", None),
        ("registry.example:8443/team/app:1.0", "registry.example:8443", "team/app", "1.0", None),
        ("[::1]:5000/app:v2", "[::1]:5000", "app", "v2", None),
        ("[fe80::1]/app", "[fe80::1]", "app", "latest", None),
        ("127.0.0.1:5000/app", "127.0.0.1:5000", "app", "latest", None),
        ("GHCR.IO/org/app", "ghcr.io", "org/app", "latest", None),
        ("alpine", DOCKER_HUB, "library/alpine", "latest", None),
        ("alpine:3.20", DOCKER_HUB, "library/alpine", "3.20", None),
        ("org/app", DOCKER_HUB, "org/app", "latest", None),
        ("docker.io/org/app", DOCKER_HUB, "org/app", "latest", None),
        ("docker.io/alpine", DOCKER_HUB, "library/alpine", "latest", None),
        ("registry-1.docker.io/org/app:v1", DOCKER_HUB, "org/app", "v1", None),
        ("index.docker.io/library/alpine", DOCKER_HUB, "library/alpine", "latest", None),
        ("  ghcr.io/org/app:v1  ", "ghcr.io", "org/app", "v1", None),
        ("ghcr.io/org/app:v1\n", "ghcr.io", "org/app", "v1", None),
        (
            "ghcr.io/my_org/my-app.v2/sub__dir:Tag_1.x-y",
            "ghcr.io",
            "my_org/my-app.v2/sub__dir",
            "Tag_1.x-y",
            None,
        ),
    ],
)
def test_a_valid_reference_parses_into_registry_repository_tag_and_digest(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("ghcr.io/Org/app", "invalid repository"),
        ("ghcr.io/org/APP:v1", "invalid repository"),
        ("ghcr.io/org/app@sha256:abc", "invalid digest"),
        ("ghcr.io/org/app@md5:" + "a" * 32, "invalid digest"),
        ("ghcr.io/org/app@sha256:" + "A" * 64, "invalid digest"),
        ("ghcr.io/org/app@sha512:" + "a" * 64, "invalid digest"),
        ("ghcr.io/org/app@", "invalid digest"),
        ("ghcr.io/org/app:", "invalid tag"),
        ("ghcr.io/org/app:-v1", "invalid tag"),
        ("ghcr.io/org/app:" + "t" * 129, "invalid tag"),
        ("ghcr.io/org /app", "white space"),
        ("ghcr.io/org/app\t:v1", "white space"),
        ("https://ghcr.io/org/app", "unsupported scheme"),
        ("docker://ghcr.io/org/app", "unsupported scheme"),
        ("oci://", "repository"),
        ("ghcr.io/", "repository"),
        ("ghcr.io//app", "invalid repository"),
        ("ghcr.io/org/app/", "invalid repository"),
        ("ghcr.io/-org/app", "invalid repository"),
        ("ghcr.io/org/" + "a" * 260, "longer than"),
        ("bad_host.example/app", "invalid registry host"),
        ("-a.example/app", "invalid registry host"),
        ("a.example:99999/app", "invalid port"),
        ("a.example:0/app", "invalid port"),
        ("[::1]:99999/app", "invalid port"),
        ("[zz::1]/app", "invalid registry host"),
    ],
)
def test_a_malformed_reference_is_refused_with_a_message_naming_the_bad_part(
    text: str, complaint: str
) -> None:
    with pytest.raises(ReferenceError) as caught:
        Reference.parse(text)
    assert complaint in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_reference_without_tag_keeps_no_tag_when_no_default_is_asked_for() -> None:
    ref = Reference.parse("oci://ghcr.io/org/app", default_tag=None)
    assert ref.tag is None and ref.digest is None
    with pytest.raises(ReferenceError, match="neither tag nor digest"):
        _ = ref.ref


def test_the_digest_is_what_gets_pulled_when_a_reference_has_both_tag_and_digest() -> None:
    ref = Reference.parse(f"ghcr.io/org/app:v1@{SHA256}")
    assert ref.ref == SHA256
    assert Reference.parse("ghcr.io/org/app:v1").ref == "v1"


def test_references_print_as_host_path_tag_and_digest() -> None:
    assert str(Reference.parse("alpine")) == "index.docker.io/library/alpine:latest"
    assert str(Reference.parse(f"oci://ghcr.io/org/app:v1@{SHA256}")) == f"ghcr.io/org/app:v1@{SHA256}"
    assert Reference.parse("ghcr.io/org/app").name == "ghcr.io/org/app"


@pytest.mark.parametrize(
    ("digest", "shown"),
    [(SHA256, "sha256:abababababab"), (SHA512, "sha512:cdcdcdcdcdcd"), (None, "-"), ("", "-")],
)
def test_digests_are_shown_to_people_as_twelve_hex_digits(digest: str | None, shown: str) -> None:
    assert short_digest(digest) == shown


def test_only_sha256_and_sha512_digests_of_the_right_length_count_as_digests() -> None:
    assert is_digest(SHA256) and is_digest(SHA512)
    assert not is_digest("sha256:" + "a" * 63)
    assert not is_digest("sha384:" + "a" * 96)
    assert not is_digest("sha256:" + "a" * 64 + "\n")


# -- properties -------------------------------------------------------------------------------------

_component = st.from_regex(r"\A[a-z0-9]{1,6}(?:(?:[._]|__|-{1,2})[a-z0-9]{1,4})?\Z")
_hosts = st.one_of(
    st.sampled_from(["ghcr.io", "a.example", "localhost", "localhost:5000", "[::1]:5000", "10.0.0.1:443"]),
    st.builds(
        lambda name, tld, port: f"{name}.{tld}" + (f":{port}" if port else ""),
        st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?\Z"),
        st.from_regex(r"\A[a-z]{2,6}\Z"),
        st.one_of(st.none(), st.integers(1, 65535)),
    ),
)
_tags = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")
_digests = st.one_of(
    st.from_regex(r"\Asha256:[a-f0-9]{64}\Z"),
    st.from_regex(r"\Asha512:[a-f0-9]{128}\Z"),
)


@st.composite
def references(draw: st.DrawFn) -> Reference:
    registry = draw(st.one_of(_hosts, st.just(DOCKER_HUB)))
    components = draw(st.lists(_component, min_size=2 if registry == DOCKER_HUB else 1, max_size=4))
    tag = draw(st.one_of(st.none(), _tags))
    digest = draw(_digests) if tag is None else draw(st.one_of(st.none(), _digests))
    return Reference(registry=registry, repository="/".join(components), tag=tag, digest=digest)


@settings(max_examples=200, deadline=None)
@given(references(), st.booleans())
def test_printing_a_reference_and_parsing_it_back_gives_the_same_reference(ref: Reference, oci: bool) -> None:
    text = f"oci://{ref}" if oci else str(ref)
    assert Reference.parse(text) == ref


_reference_alphabet = st.sampled_from([*"abcAB019:/@._-[] \t\nsha256oci", "sha256:", "oci://", "://"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(_reference_alphabet, max_size=40).map("".join)))
def test_parsing_arbitrary_text_either_succeeds_or_says_what_is_wrong(text: str) -> None:
    try:
        ref = Reference.parse(text)
    except ReferenceError as exc:
        assert str(exc)
    else:
        assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize(
    ("host", "scheme", "normal"),
    [
        ("harbor.example:443", "https", "harbor.example"),
        ("harbor.example:80", "http", "harbor.example"),
        ("harbor.example:80", "https", "harbor.example:80"),
        ("harbor.example:443", "http", "harbor.example:443"),
        ("harbor.example:5000", "https", "harbor.example:5000"),
        ("[::1]:443", "https", "[::1]"),
        ("[::1]", "https", "[::1]"),
        ("harbor.example", "https", "harbor.example"),
    ],
)
def test_only_the_schemes_own_default_port_is_dropped(host: str, scheme: str, normal: str) -> None:
    assert without_default_port(host, scheme) == normal
