"""Chains of hops: how an artifact's path maps across Harbor proxy projects, edge to origin."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerwatch.chain import (
    Chain,
    ChainError,
    Credentials,
    Hop,
    Mode,
    chain_from_spec,
    mask_userinfo,
    parse_duration,
    split_documents,
    target_from_document,
)
from layerwatch.reference import DOCKER_HUB, Reference

SHA256 = "sha256:" + "ab" * 32


def make_chain(*hops: tuple[str, str], name: str = "corp") -> Chain:
    return Chain(name=name, hops=tuple(Hop.from_url(n, u) for n, u in hops))


HARBOR = make_chain(
    ("edge", "https://a.example/p-core"),
    ("core", "https://b.example/p-ghcr"),
    ("origin", "https://ghcr.io"),
)


def mapping(chain: Chain, text: str) -> list[tuple[str, str]]:
    return [(t.hop.name, t.repository) for t in chain.pull_path(Reference.parse(text))]


def test_the_spec_harbor_example_strips_one_project_per_hop() -> None:
    assert mapping(HARBOR, "a.example/p-core/p-ghcr/org/app:v1") == [
        ("edge", "p-core/p-ghcr/org/app"),
        ("core", "p-ghcr/org/app"),
        ("origin", "org/app"),
    ]
    locations = [t.location for t in HARBOR.pull_path(Reference.parse("a.example/p-core/p-ghcr/org/app"))]
    assert locations == ["a.example/p-core/p-ghcr/org/app", "b.example/p-ghcr/org/app", "ghcr.io/org/app"]


@pytest.mark.parametrize(
    ("hops", "url", "expected"),
    [
        pytest.param(
            [("edge", "https://a.example/proxy/ghcr"), ("origin", "https://ghcr.io")],
            "a.example/proxy/ghcr/org/app",
            [("edge", "proxy/ghcr/org/app"), ("origin", "org/app")],
            id="multi-segment-prefix",
        ),
        pytest.param(
            [("mirror", "http://mirror.example:5000"), ("origin", "https://ghcr.io")],
            "mirror.example:5000/org/app",
            [("mirror", "org/app"), ("origin", "org/app")],
            id="empty-prefix-mirror",
        ),
        pytest.param(
            [
                ("edge", "https://a.example/p-core"),
                ("mirror", "https://m.example"),
                ("origin", "https://ghcr.io"),
            ],
            "a.example/p-core/org/app",
            [("edge", "p-core/org/app"), ("mirror", "org/app"), ("origin", "org/app")],
            id="mirror-in-the-middle",
        ),
        pytest.param(
            [
                ("edge", "https://a.example/p-core"),
                ("core", "https://b.example/p-ghcr"),
                ("origin", "https://ghcr.io"),
            ],
            "b.example/p-ghcr/org/app",
            [("core", "p-ghcr/org/app"), ("origin", "org/app")],
            id="url-at-middle-hop-starts-there",
        ),
        pytest.param(
            [
                ("edge", "https://a.example/p-core"),
                ("core", "https://b.example/p-ghcr"),
                ("origin", "https://ghcr.io"),
            ],
            "ghcr.io/org/app",
            [("origin", "org/app")],
            id="url-at-origin-is-a-one-hop-path",
        ),
        pytest.param(
            [("hub", "https://harbor.example/p-hub"), ("origin", "https://docker.io")],
            "harbor.example/p-hub/alpine",
            [("hub", "p-hub/alpine"), ("origin", "library/alpine")],
            id="docker-hub-origin-gets-library",
        ),
        pytest.param(
            [
                ("wide", "https://h.example/p"),
                ("narrow", "https://h.example/p/deep"),
                ("origin", "https://ghcr.io"),
            ],
            "h.example/p/deep/org/app",
            [("narrow", "p/deep/org/app"), ("origin", "org/app")],
            id="longest-prefix-wins",
        ),
        pytest.param(
            [("edge", "https://A.Example/p-core"), ("origin", "https://ghcr.io")],
            "a.example/p-core/org/app",
            [("edge", "p-core/org/app"), ("origin", "org/app")],
            id="host-case-does-not-matter",
        ),
    ],
)
def test_a_repository_path_maps_across_every_hop_of_its_pull_path(
    hops: list[tuple[str, str]], url: str, expected: list[tuple[str, str]]
) -> None:
    assert mapping(make_chain(*hops), url) == expected


def test_a_path_lacking_the_next_hops_prefix_is_a_configuration_error_naming_the_hop() -> None:
    chain = make_chain(
        ("edge", "https://a.example/p-core"),
        ("core", "https://b.example/p-ghcr"),
        ("origin", "https://ghcr.io"),
    )
    with pytest.raises(ChainError, match=r"at hop core lacks its prefix 'p-ghcr'"):
        chain.pull_path(Reference.parse("a.example/p-core/org/app"))


def test_a_url_under_no_hop_is_refused_with_the_hops_listed() -> None:
    with pytest.raises(ChainError, match=r"not under any hop of chain corp .*https://a.example/p-core"):
        HARBOR.pull_path(Reference.parse("quay.io/org/app"))
    assert not HARBOR.matches(Reference.parse("a.example/other/org/app"))
    assert HARBOR.matches(Reference.parse("a.example/p-core/p-ghcr/org/app"))


def test_the_same_artifact_can_be_named_at_another_hop() -> None:
    ref = Reference.parse("a.example/p-core/p-ghcr/org/app:v1")
    assert str(HARBOR.reference_at(ref, "origin")) == "ghcr.io/org/app:v1"
    assert str(HARBOR.reference_at(ref, "core")) == "b.example/p-ghcr/org/app:v1"
    with pytest.raises(ChainError, match="not on the pull path"):
        HARBOR.reference_at(Reference.parse("ghcr.io/org/app"), "edge")


def test_the_direct_chain_is_the_references_own_registry() -> None:
    chain = Chain.single(Reference.parse("ghcr.io/org/app:v1"))
    assert [(t.hop.name, t.location) for t in chain.pull_path(Reference.parse("ghcr.io/org/app"))] == [
        ("registry", "ghcr.io/org/app")
    ]


def test_docker_hub_is_reached_on_its_api_host() -> None:
    hop = Hop.from_url("hub", "https://docker.io")
    assert hop.host == DOCKER_HUB
    assert hop.base_url == "https://registry-1.docker.io"
    assert Hop.from_url("h", "http://a.example:5000/p/").url == "http://a.example:5000/p"


@pytest.mark.parametrize(
    "written",
    [
        "https://harbor.example:443/p-core",
        "https://Harbor.Example/p-core/",
        "https://HARBOR.example:443/p-core//",
    ],
)
def test_hop_urls_are_normalised_so_equal_places_match_and_print_alike(written: str) -> None:
    chain = make_chain(("edge", written), ("origin", "https://ghcr.io"))
    assert chain.hops[0].url == "https://harbor.example/p-core"
    for url in ("oci://harbor.example/p-core/org/app", "oci://harbor.example:443/p-core/org/app"):
        assert chain.matches(Reference.parse(url, default_tag=None)), url
    assert mapping(chain, "harbor.example:443/p-core/org/app:v1")[0] == ("edge", "p-core/org/app")


def test_a_port_that_is_not_the_schemes_default_still_tells_registries_apart() -> None:
    plain = make_chain(("edge", "http://harbor.example/p"), ("origin", "https://ghcr.io"))
    assert plain.hops[0].url == "http://harbor.example/p"
    assert plain.matches(Reference.parse("harbor.example:80/p/app", default_tag=None))
    assert not plain.matches(Reference.parse("harbor.example:443/p/app", default_tag=None))
    assert not plain.matches(Reference.parse("harbor.example:8080/p/app", default_tag=None))


@pytest.mark.parametrize(
    ("name", "url", "complaint"),
    [
        ("Edge", "https://a.example", "must be a DNS label"),
        ("", "https://a.example", "must be a DNS label"),
        ("-edge", "https://a.example", "must be a DNS label"),
        ("edge", "ftp://a.example", "must start with https:// or http://"),
        ("edge", "a.example/p-core", "must start with https:// or http://"),
        ("edge", "oci://a.example", "must start with https:// or http://"),
        ("edge", "https://", "invalid registry host"),
        ("edge", "https://robot:secret@a.example", "must not carry credentials"),
        ("edge", "https://a.example/p?x=1", "query"),
        ("edge", "https://a.example/p#frag", "fragment"),
        ("edge", "https://a_b.example", "invalid registry host"),
        ("edge", "https://a.example:99999", "invalid port"),
        ("edge", "https://a.example/P-Core", "path prefix"),
        ("edge", "https://a.example/p core", "path prefix"),
    ],
)
def test_a_bad_hop_is_refused_with_a_readable_message(name: str, url: str, complaint: str) -> None:
    with pytest.raises(ChainError) as caught:
        Hop.from_url(name, url)
    message = str(caught.value)
    assert complaint in message
    assert "\n" not in message
    assert "secret" not in message or "credentials" in message


def test_a_chain_needs_at_least_one_hop() -> None:
    with pytest.raises(ChainError, match="at least one hop"):
        Chain(name="empty", hops=())


def test_duplicate_hop_names_are_refused_naming_the_duplicate() -> None:
    with pytest.raises(ChainError, match="duplicate hop names: edge"):
        make_chain(
            ("edge", "https://a.example/p"), ("edge", "https://b.example/q"), ("origin", "https://ghcr.io")
        )


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ({}, "spec.hops must be a non-empty list"),
        ({"hops": []}, "spec.hops must be a non-empty list"),
        ({"hops": "edge"}, "spec.hops must be a non-empty list"),
        ({"hops": [{"name": "edge"}]}, r"spec.hops\[0\] needs a name and a url"),
        ({"hops": ["https://a.example"]}, r"spec.hops\[0\] needs a name and a url"),
        (
            {"hops": [{"name": "a", "url": "https://a.example"}], "mode": "fast"},
            "spec.mode must be full or head",
        ),
        (
            {"hops": [{"name": "a", "url": "https://a.example"}], "mode": ["full"]},
            "spec.mode must be full or head",
        ),
        ({"hops": [{"name": "a", "url": "https://a.example"}], "interval": "5 minutes"}, "invalid duration"),
        ({"hops": [{"name": "a", "url": "https://a.example"}], "interval": "0s"}, "must be positive"),
        (
            {"hops": [{"name": "a", "url": "https://a.example"}, {"name": "a", "url": "https://b.example"}]},
            "duplicate hop names: a",
        ),
    ],
)
def test_a_bad_proxychain_spec_is_refused_naming_the_field(spec: dict[str, object], complaint: str) -> None:
    with pytest.raises(ChainError, match=complaint):
        chain_from_spec("corp", spec)


def test_a_proxychain_spec_keeps_its_schedule_settings() -> None:
    chain = chain_from_spec(
        "corp",
        {
            "hops": [{"name": "edge", "url": "https://a.example/p", "insecureSkipTLSVerify": True}],
            "interval": "1m30s",
            "mode": "head",
            "suspend": True,
            "namespaceSelector": {"matchLabels": {"team": "a"}},
        },
    )
    assert chain.interval == 90 and chain.mode is Mode.HEAD and chain.suspend
    assert chain.namespace_selector == {"matchLabels": {"team": "a"}}
    assert chain.hops[0].insecure
    default = chain_from_spec("corp", {"hops": [{"name": "edge", "url": "https://a.example"}]})
    assert default.interval == 300 and default.mode is Mode.FULL and default.namespace_selector is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300),
        ("30s", 30),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2m30s", 150),
        ("1.5h", 5400),
        ("500ms", 0.5),
        (" 10s ", 10),
        (90, 90),
        (2.5, 2.5),
    ],
)
def test_durations_read_like_kubernetes_durations(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["", "5", "5 m", "m", "-5m", "5d", "1h-30m", "5m!", "0s", "0", 0, -1, True, None, math.nan, math.inf],
)
def test_a_bad_duration_is_refused(value: object) -> None:
    with pytest.raises(ChainError, match="duration"):
        parse_duration(value)  # type: ignore[arg-type]


def test_credentials_never_show_their_password() -> None:
    creds = Credentials("robot$ci", "s3cr3t-token")
    hop = Hop.from_url("edge", "https://a.example/p", credentials=creds)
    chain = Chain(name="corp", hops=(hop,))
    for text in (repr(creds), str(creds), f"{creds}", repr(hop), str(hop), repr(chain), hop.url):
        assert "s3cr3t-token" not in text
    assert "robot$ci" in str(creds)


# -- targets (layerwatch serve) ----------------------------------------------------------------------


def test_a_target_document_reads_name_url_ref_selector_and_chain() -> None:
    target = target_from_document(
        {
            "kind": "Target",
            "metadata": {"name": "app"},
            "spec": {
                "url": "oci://a.example/p-core/org/app",
                "ref": {"tag": "v1"},
                "layerSelector": {"mediaType": "application/x-yaml"},
                "chain": "corp",
            },
        }
    )
    assert (target.name, str(target.reference), target.chain, target.layer_media_type) == (
        "app",
        "a.example/p-core/org/app:v1",
        "corp",
        "application/x-yaml",
    )


@pytest.mark.parametrize(
    ("ref", "tag", "digest"),
    [
        (None, "latest", None),
        ("v1", "v1", None),
        ("sha-1a2b3c4", "sha-1a2b3c4", None),
        ("sha256", "sha256", None),
        (SHA256, None, SHA256),
        ({"digest": SHA256}, None, SHA256),
        ({"tag": "v2"}, "v2", None),
    ],
)
def test_a_targets_ref_may_be_a_tag_or_a_digest(ref: object, tag: str | None, digest: str | None) -> None:
    body: dict[str, object] = {"name": "app", "url": "oci://ghcr.io/org/app"}
    if ref is not None:
        body["ref"] = ref
    target = target_from_document(body)
    assert (target.reference.tag, target.reference.digest) == (tag, digest)


def test_a_tag_in_the_target_url_is_kept_when_no_ref_is_given() -> None:
    assert target_from_document({"name": "app", "url": "oci://ghcr.io/org/app:v3"}).reference.tag == "v3"


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({"url": "oci://ghcr.io/org/app"}, "needs a name"),
        ({"name": "app"}, "target app: url is required"),
        ({"name": "app", "url": "oci://ghcr.io/Org/app"}, "target app: invalid repository"),
        (
            {"name": "app", "url": "oci://ghcr.io/org/app", "ref": {"digest": "sha256:bad"}},
            "target app: invalid digest",
        ),
        (
            {"name": "app", "url": "oci://ghcr.io/org/app", "ref": {"tag": "bad tag!"}},
            "target app: invalid tag",
        ),
        ({"name": "app", "url": "oci://ghcr.io/org/app", "ref": {"tag": 1.5}}, "target app: "),
        ({"name": "app", "url": "oci://ghcr.io/org/app", "ref": ["v1"]}, "target app: ref"),
        ({"name": "app", "url": "oci://ghcr.io/org/app", "layerSelector": "x"}, "target app: layerSelector"),
        ({"name": "app", "url": "oci://ghcr.io/org/app", "chain": ["corp"]}, "target app: chain"),
        (
            {"name": "app", "url": "oci://robot:pw@ghcr.io/org/app"},
            r"target app: url 'oci://robot:\*\*\*@ghcr.io/org/app' must not carry credentials",
        ),
        ({"kind": "Target", "metadata": "app", "spec": {"url": "oci://ghcr.io/org/app"}}, "metadata"),
        (
            {"kind": "Target", "metadata": {"name": "app"}, "spec": "oci://ghcr.io/org/app"},
            "target app: spec",
        ),
    ],
)
def test_a_bad_target_document_is_a_chain_error_not_a_crash(
    document: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ChainError, match=complaint):
        target_from_document(document)


def test_documents_are_sorted_into_chains_and_targets_and_other_kinds_are_named() -> None:
    chains, targets = split_documents([{"kind": "ProxyChain"}, None, {"kind": "Target"}])
    assert len(chains) == 1 and len(targets) == 1
    with pytest.raises(ChainError, match="document 2: kind must be ProxyChain or Target, not 'Secret'"):
        split_documents([{"kind": "Target"}, {"kind": "Secret"}])
    with pytest.raises(ChainError, match="document 1: not a mapping"):
        split_documents([["a"]])


# -- property: mapping the edge path yields the upstream path at the origin --------------------------

_component = st.from_regex(r"\A[a-z0-9]{1,5}(?:[-_.][a-z0-9]{1,3})?\Z")
_prefix = st.lists(_component, min_size=0, max_size=3).map("/".join)


@settings(max_examples=150, deadline=None)
@given(
    prefixes=st.lists(_prefix, min_size=0, max_size=4),
    upstream=st.lists(_component, min_size=1, max_size=4).map("/".join),
)
def test_mapping_any_edge_path_through_the_chain_yields_the_upstream_path_at_the_origin(
    prefixes: list[str], upstream: str
) -> None:
    hops = [(f"hop{i}", f"https://h{i}.example/{p}".rstrip("/")) for i, p in enumerate(prefixes)]
    chain = make_chain(*hops, ("origin", "https://origin.example"))
    edge_path = "/".join([p for p in prefixes if p] + [upstream])
    first_host = "h0.example" if prefixes else "origin.example"
    path = chain.pull_path(Reference(first_host, edge_path, tag="v1"))
    assert [t.hop.name for t in path] == [name for name, _ in hops] + ["origin"]
    assert path[-1].repository == upstream
    for position, target in enumerate(path[:-1]):
        assert target.repository == "/".join([p for p in prefixes[position:] if p] + [upstream])


# -- strict ProxyChain specs (the operator shows these messages as the chain's Ready=False) ----------


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        (
            {"hops": [{"name": "a", "url": "https://a.example", "insecureSkipTLSVerify": "false"}]},
            r"chain corp: spec.hops\[0\].insecureSkipTLSVerify must be true or false, not 'false'",
        ),
        ({"hops": [{"name": "a", "url": "https://a.example"}], "suspend": "false"}, "spec.suspend must be"),
        (
            {"hops": [{"name": "a", "url": "https://a.example"}], "interval": "999ms"},
            "interval must be at least 1s, not 0.999s",
        ),
        (
            {"hops": [{"name": "a", "url": "https://a.example"}], "interval": 0.5},
            "interval must be at least 1s",
        ),
        ({"hops": [{"name": "a", "url": "https://a.example"}], "namespaceSelector": "all"}, "label selector"),
    ],
)
def test_a_proxychain_spec_with_a_wrong_type_or_range_is_refused(
    spec: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ChainError, match=complaint):
        chain_from_spec("corp", spec)


_USERINFO = st.text(
    alphabet=st.characters(blacklist_characters="@/:#?\\", blacklist_categories=("Cs", "Cc")), min_size=1
)


@given(user=_USERINFO, password=_USERINFO)
def test_a_hop_url_with_a_password_never_echoes_the_password(user: str, password: str) -> None:
    url = f"https://{user}:{password}@harbor.example.com/p-core"
    assert mask_userinfo(url) == f"https://{user}:***@harbor.example.com/p-core"
    try:
        Hop.from_url("edge", url)
    except ChainError as exc:
        assert f":{password}@" not in str(exc)
    else:
        raise AssertionError("a URL with userinfo was accepted")
