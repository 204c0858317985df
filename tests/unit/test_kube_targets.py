"""Which OCIRepositories layerwatch watches, on which chain, at which ref, on which replica."""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerwatch.chain import Chain, Hop, Mode
from layerwatch.kube.targets import (
    ANNOTATION_CHAIN,
    ANNOTATION_IGNORE,
    ANNOTATION_INCLUDE_SUSPENDED,
    FluxSource,
    Selection,
    in_shard,
    pod_ordinal,
    select,
    selector_matches,
    skeleton_chain,
)

from .builders import CHAIN, TAG, digest_of, oci_repository

SHA = digest_of("the manifest Flux resolved")
HEX = SHA.removeprefix("sha256:")
OTHER_SHA = digest_of("a digest pinned in spec.ref")

MIRROR = Chain(name="a-mirror", hops=(Hop.from_url("mirror", "https://a.example"),))
"""A plain mirror on the edge's host: matches every path there, so it competes with ``corp``."""
ELSEWHERE = Chain(name="elsewhere", hops=(Hop.from_url("quay", "https://quay.io"),))


def source(**kwargs: Any) -> FluxSource:
    return FluxSource.from_body(oci_repository(**kwargs))


def choose(
    chains: tuple[Chain, ...] = (CHAIN,), labels: Mapping[str, str] | None = None, **kwargs: Any
) -> Selection:
    return select(source(**kwargs), list(chains), labels)


# -- reading the body ------------------------------------------------------------------------------


def test_a_flux_v1_body_is_read_into_every_field_layerwatch_uses() -> None:
    body = oci_repository(
        revision=f"{TAG}@{SHA}",
        annotations={ANNOTATION_CHAIN: "corp", "reconcile.fluxcd.io/requestedAt": "2024-01-01T00:00:00Z"},
        conditions=[{"type": "Ready", "status": "True", "reason": "Succeeded"}],
        spec={
            "layerSelector": {"mediaType": "application/x-yaml", "operation": "copy"},
            "secretRef": {"name": "pull-secret"},
            "certSecretRef": {"name": "edge-ca"},
            "insecure": True,
        },
    )
    flux = FluxSource.from_body(body)
    assert flux.key == ("team-a", "app")
    assert (flux.api_version, flux.uid, flux.generation) == (
        "source.toolkit.fluxcd.io/v1",
        "uid-team-a-app",
        3,
    )
    assert flux.url == "oci://a.example/p-core/p-ghcr/org/app"
    assert (flux.tag, flux.digest, flux.semver, flux.revision) == (TAG, None, None, f"{TAG}@{SHA}")
    assert flux.layer_media_type == "application/x-yaml"
    assert (flux.secret_ref, flux.cert_secret_ref, flux.insecure, flux.suspend) == (
        "pull-secret",
        "edge-ca",
        True,
        False,
    )
    assert flux.conditions == ({"type": "Ready", "status": "True", "reason": "Succeeded"},)


def test_the_v1beta2_api_version_is_kept_so_writes_go_to_the_version_flux_serves() -> None:
    assert source(api_version="source.toolkit.fluxcd.io/v1beta2").api_version == (
        "source.toolkit.fluxcd.io/v1beta2"
    )


def test_a_body_without_api_version_is_taken_as_flux_v1() -> None:
    body = oci_repository()
    del body["apiVersion"]
    assert FluxSource.from_body(body).api_version == "source.toolkit.fluxcd.io/v1"


def test_only_layerwatch_annotations_are_kept_so_flux_reconcile_requests_do_not_replan() -> None:
    flux = source(
        annotations={
            ANNOTATION_IGNORE: "false",
            "reconcile.fluxcd.io/requestedAt": "now",
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
        }
    )
    assert flux.annotations == {ANNOTATION_IGNORE: "false"}


def test_an_object_flux_has_not_reconciled_yet_has_no_revision_and_no_conditions() -> None:
    flux = source()
    assert flux.revision is None
    assert flux.conditions == ()
    assert flux.resolved() == (TAG, None)


@pytest.mark.parametrize(
    "patch",
    [
        pytest.param({"status": None}, id="status-null"),
        pytest.param({"status": {}}, id="status-empty"),
        pytest.param({"status": {"artifact": None, "conditions": None}}, id="artifact-and-conditions-null"),
        pytest.param({"status": {"conditions": ["junk", 7, None]}}, id="conditions-not-mappings"),
        pytest.param({"metadata": {"name": "app", "namespace": "team-a"}}, id="no-annotations-no-generation"),
        pytest.param(
            {"metadata": {"name": "app", "namespace": "team-a", "annotations": None}}, id="null-annot"
        ),
        pytest.param({"metadata": {"name": "app", "namespace": "team-a", "generation": None}}, id="null-gen"),
    ],
)
def test_missing_or_null_sections_read_as_absent(patch: dict[str, Any]) -> None:
    body = {**oci_repository(), **patch}
    flux = FluxSource.from_body(body)
    assert flux.key == ("team-a", "app")
    assert flux.conditions == ()
    assert flux.revision is None
    assert flux.resolved() == (TAG, None)


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"ref": None}, id="ref-null"),
        pytest.param({"ref": {}}, id="ref-empty"),
        pytest.param({"layerSelector": None, "secretRef": None, "certSecretRef": None}, id="optionals-null"),
        pytest.param({"secretRef": "pull-secret", "certSecretRef": ["x"]}, id="refs-not-mappings"),
        pytest.param({"secretRef": {}}, id="secret-ref-without-name"),
    ],
)
def test_odd_optional_spec_fields_fall_back_to_the_defaults(spec: dict[str, Any]) -> None:
    flux = source(spec=spec)
    assert flux.secret_ref is None
    assert flux.cert_secret_ref is None
    assert flux.layer_media_type is None
    assert flux.resolved() in {("latest", None), (TAG, None)}


@pytest.mark.parametrize(
    "patch",
    [
        pytest.param(
            {"spec": {"url": "oci://a.example/p-core/p-ghcr/org/app", "ref": "v1"}}, id="ref-a-string"
        ),
        pytest.param(
            {"spec": {"url": "oci://a.example/p-core/p-ghcr/org/app", "layerSelector": "x"}}, id="sel"
        ),
        pytest.param({"spec": ["not", "a", "mapping"]}, id="spec-a-list"),
        pytest.param({"status": {"artifact": ["x"]}}, id="artifact-a-list"),
        pytest.param({"status": {"artifact": {"revision": 5}}}, id="revision-a-number"),
        pytest.param({"status": "Ready"}, id="status-a-string"),
        pytest.param(
            {"metadata": {"name": "app", "namespace": "team-a", "annotations": ["x"]}}, id="annot-list"
        ),
    ],
)
def test_sections_of_the_wrong_type_read_as_absent_instead_of_failing_the_event(
    patch: dict[str, Any],
) -> None:
    # The apiserver's schema normally prevents these; an old or hand-edited CRD does not, and one
    # odd object must not make every event about it raise in the handler.
    flux = FluxSource.from_body({**oci_repository(), **patch})
    assert flux.revision is None
    assert flux.layer_media_type is None
    assert isinstance(flux.resolved(), tuple)


def test_an_empty_body_is_read_without_crashing_and_then_skipped() -> None:
    flux = FluxSource.from_body({})
    assert (flux.namespace, flux.name, flux.url) == ("", "", "")
    selection = select(flux, [CHAIN], None)
    assert selection.target is None
    assert selection.skipped is not None and selection.skipped.startswith("spec.url")


# -- the ref Flux resolved -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "revision", "expected"),
    [
        pytest.param({"tag": TAG}, f"{TAG}@{SHA}", (TAG, SHA), id="tag@digest"),
        pytest.param(
            {"tag": "v2"}, f"{TAG}@{SHA}", (TAG, SHA), id="flux-revision-wins-over-a-newer-spec-tag"
        ),
        pytest.param({"semver": ">=1.0.0"}, f"1.4.2@{SHA}", ("1.4.2", SHA), id="semver-resolved"),
        pytest.param({"digest": SHA}, SHA, (None, SHA), id="digest-revision"),
        pytest.param({"tag": TAG}, f"{TAG}/{HEX}", (TAG, SHA), id="legacy-tag-slash-hex"),
        pytest.param({"tag": "latest"}, f"latest/{HEX}", ("latest", SHA), id="legacy-latest"),
        pytest.param({"digest": OTHER_SHA}, None, (None, OTHER_SHA), id="no-status-spec-digest"),
        pytest.param({"tag": "v2"}, None, ("v2", None), id="no-status-spec-tag"),
        pytest.param({}, None, ("latest", None), id="nothing-means-latest"),
        pytest.param({"tag": TAG, "digest": OTHER_SHA}, None, (None, OTHER_SHA), id="spec-digest-beats-tag"),
        pytest.param({"tag": "v2"}, f"{TAG}@sha256:short", ("v2", None), id="broken-digest-falls-back"),
        pytest.param({"tag": "v2"}, f"{TAG}/abc123", ("v2", None), id="short-legacy-hex-falls-back"),
        pytest.param({"tag": "v2"}, "", ("v2", None), id="empty-revision"),
    ],
)
def test_the_ref_checked_is_the_one_flux_resolved(
    ref: dict[str, str], revision: str | None, expected: tuple[str | None, str | None]
) -> None:
    assert source(ref=ref, revision=revision).resolved() == expected


def test_a_semver_ref_flux_has_not_resolved_is_pending_with_a_reason() -> None:
    reason = source(ref={"semver": ">=1.0.0"}).resolved()
    assert isinstance(reason, str)
    assert "semver" in reason


def test_status_artifact_digest_is_never_taken_for_a_registry_digest() -> None:
    flux = source(ref={"tag": TAG}, revision=f"{TAG}@{SHA}")
    assert digest_of("flux's own tarball") not in str(flux.resolved())


# -- selection rules, in order ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        pytest.param({"annotations": {ANNOTATION_IGNORE: "true"}}, "ignore", id="ignored"),
        pytest.param(
            {
                "annotations": {ANNOTATION_IGNORE: "true", ANNOTATION_INCLUDE_SUSPENDED: "true"},
                "suspend": True,
            },
            "ignore",
            id="ignore-beats-include-suspended",
        ),
        pytest.param({"suspend": True}, "suspended", id="suspended"),
        pytest.param(
            {"suspend": True, "annotations": {ANNOTATION_INCLUDE_SUSPENDED: "yes"}},
            "suspended",
            id="include-suspended-needs-exactly-true",
        ),
        pytest.param({"url": "oci://registry.example/org/app"}, "no chain", id="url-under-no-chain"),
        pytest.param({"url": "oci://a.example/other/org/app"}, "no chain", id="same-host-other-project"),
        pytest.param({"url": "https://a.example/p-core/app"}, "spec.url", id="not-oci-scheme"),
        pytest.param({"url": "oci://a.example/p-core/UPPER"}, "spec.url", id="bad-repository"),
        pytest.param({"url": ""}, "spec.url", id="empty-url"),
        pytest.param(
            {"annotations": {ANNOTATION_CHAIN: "nope"}},
            "no active ProxyChain named nope",
            id="chain-annotation-unknown",
        ),
        pytest.param(
            {"annotations": {ANNOTATION_CHAIN: "elsewhere"}}, "no chain", id="chain-annotation-url-off-chain"
        ),
        pytest.param(
            {"url": "oci://a.example/p-core/org/app"}, "lacks its prefix", id="path-misses-next-prefix"
        ),
    ],
)
def test_objects_layerwatch_must_not_check_are_skipped_with_the_reason(
    kwargs: dict[str, Any], reason: str
) -> None:
    selection = choose((CHAIN, ELSEWHERE), **kwargs)
    assert selection.target is None
    assert selection.skipped is not None
    assert reason in selection.skipped


@pytest.mark.parametrize("value", ["false", "", "True"])
def test_only_the_exact_value_true_ignores_an_object(value: str) -> None:
    assert choose(annotations={ANNOTATION_IGNORE: value}).target is not None


def test_a_suspended_object_annotated_include_suspended_is_watched() -> None:
    selection = choose(suspend=True, annotations={ANNOTATION_INCLUDE_SUSPENDED: "true"})
    assert selection.target is not None
    assert selection.skipped is None


def test_a_watched_object_becomes_a_target_with_its_own_name_chain_and_layer_selector() -> None:
    selection = choose(spec={"layerSelector": {"mediaType": "application/x-yaml"}})
    assert selection.chain is CHAIN
    assert selection.target is not None
    target = selection.target
    assert (target.namespace, target.name, target.chain) == ("team-a", "app", "corp")
    assert target.layer_media_type == "application/x-yaml"
    assert (target.reference.registry, target.reference.repository) == ("a.example", "p-core/p-ghcr/org/app")
    assert selection.skipped is None and selection.pending is None


def test_an_object_pointing_at_a_middle_hop_is_checked_from_that_hop_to_the_origin() -> None:
    selection = choose(url="oci://b.example/p-ghcr/org/app")
    assert selection.target is not None
    path = CHAIN.pull_path(selection.target.reference)
    assert [(t.hop.name, t.repository) for t in path] == [("core", "p-ghcr/org/app"), ("origin", "org/app")]


def test_the_chain_annotation_picks_among_chains_that_all_match_the_url() -> None:
    twin = Chain(name="b-twin", hops=CHAIN.hops)
    for wanted in ("corp", "b-twin"):
        selection = choose((CHAIN, twin), annotations={ANNOTATION_CHAIN: wanted})
        assert selection.chain is not None and selection.chain.name == wanted
        assert selection.target is not None and selection.target.chain == wanted


def test_when_several_chains_match_the_hop_with_the_longest_prefix_wins() -> None:
    # "a-mirror" sorts first, but its hop (no prefix) matches every path on a.example; corp's edge
    # names the proxy project the URL is in, which is what the user meant.
    selection = choose((MIRROR, CHAIN))
    assert selection.chain is CHAIN
    elsewhere_on_the_host = choose((MIRROR, CHAIN), url="oci://a.example/team/app")
    assert elsewhere_on_the_host.chain is MIRROR


def test_between_equally_specific_chains_the_first_by_name_wins_whatever_the_order() -> None:
    twin = Chain(name="b-twin", hops=CHAIN.hops)
    assert choose((twin, CHAIN)).chain is twin
    assert choose((CHAIN, twin)).chain is twin


def test_a_suspended_chain_keeps_its_objects_but_checks_none() -> None:
    suspended = Chain(name="corp", hops=CHAIN.hops, suspend=True)
    selection = choose((suspended,))
    assert selection.target is None
    assert selection.chain is suspended
    assert selection.skipped == "chain corp is suspended"


TEAM_A = Chain(name="corp", hops=CHAIN.hops, namespace_selector={"matchLabels": {"team": "a"}})


@pytest.mark.parametrize(
    ("labels", "served"),
    [
        pytest.param({"team": "a", "kubernetes.io/metadata.name": "team-a"}, True, id="labels-match"),
        pytest.param({"team": "b"}, False, id="other-team"),
        pytest.param({}, False, id="no-labels"),
        pytest.param(None, False, id="namespace-not-seen-yet"),
    ],
)
def test_a_namespace_selector_limits_whom_a_chain_serves(labels: dict[str, str] | None, served: bool) -> None:
    """Outside the selector the object is still watched, but only at its own URL (in_scope False)."""
    selection = choose((TEAM_A,), labels=labels)
    assert selection.target is not None and selection.chain is TEAM_A
    assert selection.in_scope is served


def test_outside_the_selector_a_chain_that_is_not_ready_says_nothing_about_itself() -> None:
    selection = select(source(), [TEAM_A], {"team": "b"}, {"corp": "Secret layerwatch/robot: HTTP 404"})
    assert selection.target is not None and not selection.in_scope
    assert selection.pending is None and selection.pending_reason == "Pending"


def test_a_chain_that_serves_the_namespace_wins_over_a_more_specific_one_that_does_not() -> None:
    specific = Chain(
        name="a-specific",
        hops=(Hop.from_url("edge", "https://a.example/p-core/p-ghcr"), *CHAIN.hops[1:]),
        namespace_selector={"matchLabels": {"team": "b"}},
    )
    selection = choose((specific, TEAM_A), labels={"team": "a"})
    assert selection.chain is TEAM_A and selection.in_scope


def test_a_namespace_selector_sends_each_namespace_to_its_own_chain() -> None:
    team_b = Chain(name="b-team", hops=CHAIN.hops, namespace_selector={"matchLabels": {"team": "b"}})
    for team, chain in (("a", "corp"), ("b", "b-team")):
        selection = choose((TEAM_A, team_b), labels={"team": team})
        assert selection.chain is not None and selection.chain.name == chain


# -- the label selector ----------------------------------------------------------------------------

LABELS = {"team": "a", "tier": "prod", "flux": ""}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        (None, True),
        ({}, True),
        ({"matchLabels": {}}, True),
        ({"matchLabels": {"team": "a"}}, True),
        ({"matchLabels": {"team": "a", "tier": "prod"}}, True),
        ({"matchLabels": {"team": "b"}}, False),
        ({"matchLabels": {"team": "a", "missing": "x"}}, False),
        ({"matchLabels": {"flux": ""}}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["prod", "staging"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["dev"]}]}, False),
        ({"matchExpressions": [{"key": "missing", "operator": "In", "values": ["x"]}]}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": []}]}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["dev"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["prod"]}]}, False),
        ({"matchExpressions": [{"key": "missing", "operator": "NotIn", "values": ["x"]}]}, True),
        ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "flux", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "missing", "operator": "Exists"}]}, False),
        ({"matchExpressions": [{"key": "missing", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, False),
        (
            {
                "matchLabels": {"team": "a"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["prod"]},
                    {"key": "legacy", "operator": "DoesNotExist"},
                ],
            },
            True,
        ),
        (
            {
                "matchLabels": {"team": "a"},
                "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["prod"]}],
            },
            False,
        ),
    ],
    ids=repr,
)
def test_label_selectors_match_like_kubernetes(selector: dict[str, Any] | None, matches: bool) -> None:
    assert selector_matches(selector, LABELS) is matches


# -- the ref put on the target ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "revision", "tag", "digest", "pinned"),
    [
        pytest.param({"tag": TAG}, f"{TAG}@{SHA}", TAG, None, SHA, id="tag-pinned-by-flux"),
        pytest.param({"tag": TAG}, f"{TAG}/{HEX}", TAG, None, SHA, id="legacy-revision-pinned"),
        pytest.param({"digest": SHA}, SHA, None, SHA, None, id="digest-ref-checks-the-digest"),
        pytest.param({"digest": OTHER_SHA}, None, None, OTHER_SHA, None, id="spec-digest"),
        pytest.param({"tag": "v2"}, None, "v2", None, None, id="spec-tag"),
        pytest.param({}, None, "latest", None, None, id="latest"),
    ],
)
def test_a_digest_is_pinned_only_when_a_tag_is_known(
    ref: dict[str, str], revision: str | None, tag: str | None, digest: str | None, pinned: str | None
) -> None:
    selection = choose(ref=ref, revision=revision)
    assert selection.target is not None
    assert (selection.target.reference.tag, selection.target.reference.digest) == (tag, digest)
    assert selection.pinned_digest == pinned


def test_an_unresolved_semver_target_is_watched_as_pending_and_not_pinned() -> None:
    selection = choose(ref={"semver": ">=1.0.0"})
    assert selection.target is not None
    assert selection.pending is not None and "semver" in selection.pending
    assert selection.pinned_digest is None
    assert selection.skipped is None


# -- shards ----------------------------------------------------------------------------------------

NAMES = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=63)


@settings(max_examples=200, deadline=None)
@given(namespace=NAMES, name=NAMES, count=st.integers(min_value=1, max_value=16))
def test_every_object_belongs_to_exactly_one_shard(namespace: str, name: str, count: int) -> None:
    owners = [index for index in range(count) if in_shard(namespace, name, index, count)]
    assert len(owners) == 1


def test_without_sharding_every_replica_owns_everything() -> None:
    assert in_shard("team-a", "app", 0, 1)
    assert in_shard("team-a", "app", 0, 0)


def test_shard_assignment_is_the_same_on_every_replica_and_every_release() -> None:
    # A stable hash of namespace/name: replicas (and versions) agree without talking to each other.
    # These values are pinned; changing the hash would move objects between replicas on upgrade.
    assert [index for index in range(4) if in_shard("team-a", "app", index, 4)] == [PINNED_SHARD]
    assert all(in_shard("team-a", "app", PINNED_SHARD, 4) for _ in range(5))


PINNED_SHARD = 0


def test_shards_get_roughly_the_same_number_of_objects() -> None:
    count = 4
    objects = [(f"team-{n % 37}", f"app-{n}") for n in range(4000)]
    sizes = collections.Counter(
        next(i for i in range(count) if in_shard(namespace, name, i, count)) for namespace, name in objects
    )
    assert sorted(sizes) == list(range(count))
    assert all(850 <= size <= 1150 for size in sizes.values()), sizes


def test_namespace_and_name_are_not_confused_across_the_separator() -> None:
    # "a/b" + "c" and "a" + "b/c" hash the same string; names cannot hold "/", so this is harmless,
    # but the pair order must matter.
    placements = {
        (ns, nm): next(i for i in range(64) if in_shard(ns, nm, i, 64))
        for ns, nm in (("team-a", "app"), ("app", "team-a"))
    }
    assert placements[("team-a", "app")] != placements[("app", "team-a")]


@pytest.mark.parametrize(
    ("pod", "ordinal"),
    [("layerwatch-0", 0), ("layerwatch-2", 2), ("lw-shards-11", 11), ("layerwatch", None), ("", None)],
)
def test_a_statefulset_pods_ordinal_comes_from_its_name(pod: str, ordinal: int | None) -> None:
    assert pod_ordinal(pod) == ordinal


def test_a_chain_whose_url_cannot_be_used_keeps_its_shape_for_matching_and_display() -> None:
    spec = {
        "interval": "1m",
        "mode": "head",
        "hops": [
            {"name": "edge", "url": "https://A.example/p-core"},
            {"name": "origin", "url": "https://ghcr.io:99999/"},
        ],
    }
    shape = skeleton_chain("corp", spec)
    assert shape is not None
    assert [(h.name, h.host, h.prefix) for h in shape.hops] == [
        ("edge", "a.example", "p-core"),
        ("origin", "ghcr.io:99999", ""),
    ]
    assert (shape.interval, shape.mode) == (60.0, Mode.HEAD)
    assert all(h.credentials is None for h in shape.hops)
    assert skeleton_chain("corp", {"hops": []}) is None


def test_an_ocirepository_of_a_chain_that_is_not_ready_is_pending_with_reason_chain_not_ready() -> None:
    source = FluxSource.from_body(oci_repository())
    why = {"corp": "Secret layerwatch/robot: HTTP 404"}
    selection = select(source, [CHAIN], {}, why)
    assert selection.target is not None and selection.chain == CHAIN
    assert selection.pending == "ProxyChain corp is not ready: Secret layerwatch/robot: HTTP 404"
    assert selection.pending_reason == "ChainNotReady"
    ready = select(source, [CHAIN], {})
    assert ready.target == selection.target, "the same target once ready: it keeps its phase"


def test_an_annotated_ocirepository_belongs_to_a_broken_chain_even_when_its_hop_is_unusable() -> None:
    broken = skeleton_chain("corp", {"hops": [{"name": "edge", "url": "https://a.example:99999/p-core"}]})
    assert broken is not None
    source = FluxSource.from_body(oci_repository(annotations={"layerwatch.io/chain": "corp"}))
    selection = select(source, [broken], {}, {"corp": "hop edge: invalid port"})
    assert selection.pending_reason == "ChainNotReady"
    unannotated = FluxSource.from_body(oci_repository())
    assert select(unannotated, [broken], {}, {"corp": "x"}).target is None
