"""Verdicts and blame, judged from hand-built observations of the edge -> core -> origin chain."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerwatch.manifest import FLUX_CONTENT
from layerwatch.observation import (
    BlobCheck,
    BlobStatus,
    Fault,
    FaultKind,
    HopObservation,
    ManifestCheck,
    ManifestFault,
    ManifestProblem,
)
from layerwatch.reference import short_digest
from layerwatch.verdict import Health, Verdict, describe_manifest_problem, judge, verdict_of

from .builders import (
    ARTIFACT,
    CONTENT,
    EXTRA,
    HOP_NAMES,
    PATH,
    TAG_UNKNOWN,
    descriptor,
    failure,
    healthy_chain,
    manifest,
    manifest_digest,
    observe,
    replace_at,
)

EDGE, CORE, ORIGIN = 0, 1, 2
YAML = "application/x-yaml"

STALE = manifest(descriptor("old-content"), EXTRA)
SUBSET = manifest(CONTENT)
SUPERSET = manifest(CONTENT, EXTRA, descriptor("injected", YAML))
REORDERED = manifest(EXTRA, CONTENT)
REANNOTATED = manifest(CONTENT, EXTRA, annotations={"org.opencontainers.image.revision": "other"})
README_FIRST = manifest(descriptor("readme", "text/markdown"), CONTENT)

OTHER_BYTES = ManifestProblem(ManifestFault.OTHER_BYTES, "sha256:" + "1" * 64, actual="sha256:" + "0" * 64)

HopFault = Callable[[int], HopObservation]
FAULTS: dict[str, tuple[HopFault, Verdict]] = {
    "unreachable": (lambda p: observe(p, failure=failure(FaultKind.REFUSED)), Verdict.UNREACHABLE),
    "auth-failed": (lambda p: observe(p, failure=failure(FaultKind.AUTH_REJECTED)), Verdict.AUTH_FAILED),
    "rate-limited": (lambda p: observe(p, failure=failure(FaultKind.RATE_LIMITED)), Verdict.RATE_LIMITED),
    "manifest-missing": (
        lambda p: observe(p, manifest_problem=TAG_UNKNOWN),
        Verdict.MANIFEST_MISSING,
    ),
    "manifest-corrupt": (
        lambda p: observe(p, manifest_problem=OTHER_BYTES),
        Verdict.MANIFEST_CORRUPT,
    ),
    "stale-tag": (lambda p: observe(p, STALE), Verdict.DIGEST_MISMATCH),
    "blob-404": (
        lambda p: observe(p, blobs={0: (BlobStatus.MISSING, "missing (404)")}),
        Verdict.LAYER_MISSING,
    ),
    "config-404": (
        lambda p: observe(p, blobs={None: (BlobStatus.MISSING, "missing (404)")}),
        Verdict.LAYER_MISSING,
    ),
    "dropped-layer": (lambda p: observe(p, SUBSET), Verdict.LAYER_MISSING),
    "truncated-blob": (
        lambda p: observe(p, blobs={1: (BlobStatus.CORRUPT, "truncated: 10 of 77 bytes")}),
        Verdict.LAYER_CORRUPT,
    ),
    "reordered-layers": (lambda p: observe(p, REORDERED), Verdict.LAYER_ORDER_MISMATCH),
}
RELATIVE_TO_ORIGIN = {"stale-tag", "dropped-layer", "reordered-layers"}
"""Faults defined by comparison with the origin: they cannot happen at the origin itself."""

CASES = [
    pytest.param(
        fault, position, propagated, id=f"{fault}-at-{HOP_NAMES[position]}{'-passed-on' * propagated}"
    )
    for fault in FAULTS
    for position in (EDGE, CORE, ORIGIN)
    for propagated in (False, True)
    if not (fault in RELATIVE_TO_ORIGIN and position == ORIGIN)
    and not (propagated and (position == EDGE or FAULTS[fault][1].health is Health.UNKNOWN))
]


@pytest.mark.parametrize(("fault", "position", "propagated"), CASES)
def test_every_verdict_is_given_to_the_hop_at_fault_and_blamed_on_it(
    fault: str, position: int, propagated: bool
) -> None:
    make, expected = FAULTS[fault]
    observations = healthy_chain()
    # A proxy passes its upstream's damage on: "passed-on" puts the fault on every hop below it too.
    for hop in range(position + 1) if propagated else (position,):
        observations = replace_at(observations, hop, make(hop))
    judgement = judge(observations)
    verdicts = [v.verdict for v in judgement.hops]
    assert verdicts[position] is expected
    assert judgement.verdict is expected
    assert judgement.blame == HOP_NAMES[position]
    assert judgement.health is expected.health
    for hop, verdict in enumerate(verdicts):
        if hop > position or (hop < position and not propagated):
            assert verdict is Verdict.HEALTHY, (hop, judgement.hops[hop].message)
        elif hop < position:
            assert verdict.health is Health.UNHEALTHY, (hop, judgement.hops[hop].message)
    assert judgement.message == judgement.hops[position].message
    assert judgement.message.startswith(f"hop {HOP_NAMES[position]} ({PATH[position].location}): ")


def test_a_chain_serving_the_artifact_intact_everywhere_is_healthy_and_blames_nobody() -> None:
    judgement = judge(healthy_chain())
    assert [v.verdict for v in judgement.hops] == [Verdict.HEALTHY] * 3
    assert judgement.verdict is Verdict.HEALTHY and judgement.blame is None and judgement.notes == ()
    assert judgement.origin_digest == manifest_digest(ARTIFACT)
    assert judgement.message == (
        f"hop edge ({PATH[EDGE].location}): "
        f"manifest {short_digest(manifest_digest(ARTIFACT))} and 3 blobs verified"
    )


def test_a_blob_missing_at_the_origin_is_blamed_on_the_origin_though_every_hop_misses_it() -> None:
    observations = [observe(p, blobs={0: (BlobStatus.MISSING, "missing (404)")}) for p in range(3)]
    judgement = judge(observations)
    assert [v.verdict for v in judgement.hops] == [Verdict.LAYER_MISSING] * 3
    assert judgement.blame == "origin"


# -- unknown is never unhealthy ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FaultKind))
@pytest.mark.parametrize("position", [EDGE, CORE, ORIGIN])
def test_a_hop_that_could_not_be_checked_is_unknown_never_unhealthy(kind: FaultKind, position: int) -> None:
    judgement = judge(replace_at(healthy_chain(), position, observe(position, failure=failure(kind))))
    assert judgement.health is Health.UNKNOWN
    assert judgement.verdict is verdict_of(failure(kind))


@pytest.mark.parametrize(
    ("unknown_at", "unhealthy_at"), [(EDGE, ORIGIN), (ORIGIN, EDGE), (CORE, EDGE), (EDGE, CORE)]
)
def test_an_unhealthy_hop_outranks_any_hop_that_could_not_be_checked(
    unknown_at: int, unhealthy_at: int
) -> None:
    observations = replace_at(
        healthy_chain(), unknown_at, observe(unknown_at, failure=failure(FaultKind.REFUSED))
    )
    observations = replace_at(
        observations,
        unhealthy_at,
        observe(unhealthy_at, blobs={0: (BlobStatus.CORRUPT, "truncated: 1 of 151 bytes")}),
    )
    judgement = judge(observations)
    assert judgement.verdict is Verdict.LAYER_CORRUPT
    assert judgement.blame == HOP_NAMES[unhealthy_at]


def test_when_the_origin_cannot_be_checked_its_digest_is_unknown() -> None:
    judgement = judge(
        replace_at(healthy_chain(), ORIGIN, observe(ORIGIN, failure=failure(FaultKind.REFUSED)))
    )
    assert judgement.origin_digest is None
    assert [v.verdict for v in judgement.hops] == [Verdict.HEALTHY, Verdict.HEALTHY, Verdict.UNREACHABLE]


HOP_LOCAL = {
    "healthy": (lambda p: observe(p), Verdict.HEALTHY),
    **{
        name: FAULTS[name]
        for name in (
            "unreachable",
            "auth-failed",
            "rate-limited",
            "manifest-missing",
            "blob-404",
            "truncated-blob",
        )
    },
}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(sorted(HOP_LOCAL)), min_size=3, max_size=3))
def test_the_overall_verdict_is_the_worst_class_and_blame_the_first_hop_from_the_origin_with_it(
    faults: list[str],
) -> None:
    observations = [HOP_LOCAL[fault][0](position) for position, fault in enumerate(faults)]
    judgement = judge(observations)
    expected = [HOP_LOCAL[fault][1] for fault in faults]
    assert [v.verdict for v in judgement.hops] == expected
    # A hop passes on a 404 (or damaged bytes) for an object its upstream fails on too, or anything
    # its upstream cannot serve at all: the blame goes to the hop that failed first.
    root = list(range(len(faults)))
    for position in range(len(faults) - 2, -1, -1):
        here, upstream = faults[position], faults[position + 1]
        if here in {"manifest-missing", "blob-404", "truncated-blob"} and (
            upstream == here or (upstream == "unreachable" and here != "truncated-blob")
        ):
            root[position] = root[position + 1]
    assert [v.inherited_from for v in judgement.hops] == [
        HOP_NAMES[r] if r != p else None for p, r in enumerate(root)
    ]
    worst = max(v.health for v in expected)
    assert judgement.health is worst
    if worst is Health.HEALTHY:
        assert judgement.blame is None and judgement.verdict is Verdict.HEALTHY
    else:
        blamed = max(p for p, v in enumerate(expected) if v.health is worst)
        assert judgement.blame == HOP_NAMES[root[blamed]]
        assert judgement.verdict is expected[blamed]
    if any(v.health is Health.UNHEALTHY for v in expected):
        assert judgement.health is Health.UNHEALTHY
    else:
        assert judgement.health is not Health.UNHEALTHY


# -- which difference is which ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("served", "expected"),
    [
        pytest.param(STALE, Verdict.DIGEST_MISMATCH, id="other-layers-is-a-digest-mismatch"),
        pytest.param(SUPERSET, Verdict.DIGEST_MISMATCH, id="extra-layer-is-a-digest-mismatch"),
        pytest.param(
            REANNOTATED,
            Verdict.DIGEST_MISMATCH,
            id="same-layers-same-order-other-manifest-is-a-digest-mismatch",
        ),
        pytest.param(
            REORDERED, Verdict.LAYER_ORDER_MISMATCH, id="same-layers-reordered-is-an-order-mismatch"
        ),
        pytest.param(SUBSET, Verdict.LAYER_MISSING, id="strict-subset-is-a-layer-missing"),
        pytest.param(manifest(EXTRA), Verdict.LAYER_MISSING, id="other-strict-subset-is-a-layer-missing"),
    ],
)
def test_a_hop_serving_another_manifest_for_the_tag_gets_the_verdict_that_says_how_it_differs(
    served: object, expected: Verdict
) -> None:
    judgement = judge(replace_at(healthy_chain(), EDGE, observe(EDGE, served)))  # type: ignore[arg-type]
    assert judgement.hops[EDGE].verdict is expected
    assert judgement.blame == "edge"


def test_a_digest_mismatch_message_names_both_digests_and_the_hop_compared_with() -> None:
    judgement = judge(replace_at(healthy_chain(), EDGE, observe(EDGE, STALE)))
    assert judgement.message == (
        f"hop edge ({PATH[EDGE].location}): tag v1 is {short_digest(manifest_digest(STALE))} here but "
        f"{short_digest(manifest_digest(ARTIFACT))} at origin"
    )


def test_a_dropped_layer_message_names_the_layer_lost() -> None:
    judgement = judge(replace_at(healthy_chain(), CORE, observe(CORE, SUBSET)))
    assert judgement.message == (
        f"hop core ({PATH[CORE].location}): manifest lists 1 of the 2 layers at origin; "
        f"{short_digest(EXTRA.digest)} missing"
    )


def test_when_the_origin_cannot_be_checked_a_hop_is_compared_with_the_hop_above_it() -> None:
    observations = [
        observe(EDGE, STALE),
        observe(CORE),
        observe(ORIGIN, failure=failure(FaultKind.AUTH_REJECTED)),
    ]
    judgement = judge(observations)
    assert judgement.hops[EDGE].verdict is Verdict.DIGEST_MISMATCH
    assert judgement.hops[EDGE].message.endswith("at core")
    assert judgement.verdict is Verdict.DIGEST_MISMATCH and judgement.blame == "edge"


def test_digest_references_are_not_compared_across_hops() -> None:
    observations = [observe(p, tag=None) for p in range(3)]
    assert judge(observations).verdict is Verdict.HEALTHY


@pytest.mark.parametrize(
    ("blobs", "served", "expected"),
    [
        pytest.param(
            {0: (BlobStatus.CORRUPT, "truncated"), 1: (BlobStatus.MISSING, "missing (404)")},
            ARTIFACT,
            Verdict.LAYER_MISSING,
            id="missing-before-corrupt",
        ),
        pytest.param(
            {0: (BlobStatus.CORRUPT, "truncated")},
            REORDERED,
            Verdict.LAYER_CORRUPT,
            id="corrupt-before-reorder",
        ),
        pytest.param(
            {0: (BlobStatus.CORRUPT, "truncated")}, SUBSET, Verdict.LAYER_MISSING, id="dropped-before-corrupt"
        ),
        pytest.param(
            {0: (BlobStatus.MISSING, "missing (404)")},
            STALE,
            Verdict.DIGEST_MISMATCH,
            id="mismatch-before-missing",
        ),
        pytest.param(
            {0: (BlobStatus.UNCHECKED, "")}, ARTIFACT, Verdict.HEALTHY, id="unchecked-is-not-a-fault"
        ),
    ],
)
def test_when_several_rules_apply_the_first_in_spec_order_wins(
    blobs: dict[int | None, tuple[BlobStatus, str]], served: object, expected: Verdict
) -> None:
    judgement = judge(replace_at(healthy_chain(), EDGE, observe(EDGE, served, blobs=blobs)))  # type: ignore[arg-type]
    assert judgement.hops[EDGE].verdict is expected


# -- which layer Flux extracts ------------------------------------------------------------------------


def test_without_a_selector_a_flux_layer_not_first_is_an_order_mismatch_blamed_on_the_origin() -> None:
    judgement = judge(healthy_chain(README_FIRST))
    assert [v.verdict for v in judgement.hops] == [Verdict.LAYER_ORDER_MISMATCH] * 3
    assert judgement.blame == "origin"
    assert "layer 0 is text/markdown, not the Flux content layer (layer 1)" in judgement.message
    assert "without layerSelector Flux extracts layer 0" in judgement.message


def test_with_a_layer_selector_for_the_flux_layer_its_position_does_not_matter() -> None:
    assert judge(healthy_chain(README_FIRST), layer_media_type=FLUX_CONTENT).verdict is Verdict.HEALTHY


def test_an_artifact_with_no_flux_content_layer_is_fine_without_a_selector() -> None:
    assert judge(healthy_chain(manifest(descriptor("manifests", YAML)))).verdict is Verdict.HEALTHY


def test_a_layer_selector_matching_no_layer_is_layer_selector_unmatched() -> None:
    judgement = judge(healthy_chain(), layer_media_type=YAML)
    assert [v.verdict for v in judgement.hops] == [Verdict.LAYER_SELECTOR_UNMATCHED] * 3
    assert judgement.blame == "origin"
    assert judgement.message == f"hop origin ({PATH[ORIGIN].location}): no layer has media type {YAML}"
    assert judge(healthy_chain(), layer_media_type=YAML).health is Health.UNHEALTHY
    assert (
        judge(healthy_chain(manifest(CONTENT, descriptor("y", YAML))), layer_media_type=YAML).verdict
        is Verdict.HEALTHY
    )


# -- messages people read --------------------------------------------------------------------------


@pytest.mark.parametrize("detail", ["missing (404)", "404"])
def test_a_missing_layer_message_reads_hop_location_layer_index_short_digest_and_status(detail: str) -> None:
    observations = [
        observe(EDGE, blobs={0: (BlobStatus.MISSING, detail)}),
        observe(CORE, blobs={0: (BlobStatus.MISSING, detail)}),
        observe(ORIGIN),
    ]
    judgement = judge(observations)
    assert judgement.message == (
        f"hop core (b.example/p-ghcr/org/app): layer 0 {short_digest(CONTENT.digest)} missing (404)"
    )


def test_a_corrupt_layer_message_says_how_the_bytes_are_wrong() -> None:
    judgement = judge(
        replace_at(
            healthy_chain(), EDGE, observe(EDGE, blobs={1: (BlobStatus.CORRUPT, "truncated: 10 of 77 bytes")})
        )
    )
    assert judgement.message == (
        f"hop edge (a.example/p-core/p-ghcr/org/app): layer 1 {short_digest(EXTRA.digest)} "
        "corrupt (truncated: 10 of 77 bytes)"
    )


def test_a_missing_config_blob_is_called_config_not_a_layer() -> None:
    judgement = judge(
        replace_at(healthy_chain(), CORE, observe(CORE, blobs={None: (BlobStatus.MISSING, "missing (404)")}))
    )
    assert judgement.message == (
        f"hop core (b.example/p-ghcr/org/app): config {short_digest(ARTIFACT.config.digest)} missing (404)"
    )


def test_a_missing_layer_of_one_platform_of_an_index_names_the_platform() -> None:
    healthy = observe(EDGE)
    amd64 = ManifestCheck("sha256:" + "a" * 64, ARTIFACT, healthy.manifests[0].blobs, "linux/amd64")
    broken_blobs = (
        amd64.blobs[0],
        dataclasses.replace(amd64.blobs[1], status=BlobStatus.MISSING, detail="missing (404)"),
        amd64.blobs[2],
    )
    arm64 = ManifestCheck("sha256:" + "b" * 64, ARTIFACT, broken_blobs, "linux/arm64")
    edge = dataclasses.replace(healthy, manifests=(amd64, arm64))
    judgement = judge([edge])
    assert judgement.verdict is Verdict.LAYER_MISSING
    assert judgement.message == (
        f"hop edge ({PATH[EDGE].location}): "
        f"manifest for linux/arm64: layer 0 {short_digest(CONTENT.digest)} missing (404)"
    )


def test_an_index_with_no_image_manifests_is_manifest_corrupt() -> None:
    judgement = judge([dataclasses.replace(observe(EDGE), manifests=())])
    assert judgement.verdict is Verdict.MANIFEST_CORRUPT
    assert judgement.message.endswith("manifest has no image manifests")


def test_every_message_is_one_line() -> None:
    for make, _ in FAULTS.values():
        for position in range(3):
            for verdict in judge(replace_at(healthy_chain(), position, make(position))).hops:
                assert "\n" not in verdict.message


# -- Flux is behind -----------------------------------------------------------------------------------


def test_a_tag_moved_at_the_origin_since_flux_resolved_it_is_noted_but_is_not_a_fault() -> None:
    pinned = manifest_digest(STALE)
    judgement = judge(healthy_chain(), pinned_digest=pinned)
    assert judgement.verdict is Verdict.HEALTHY
    assert judgement.notes == (
        f"Flux is behind: tag v1 at the origin is now {short_digest(manifest_digest(ARTIFACT))}, "
        f"Flux has {short_digest(pinned)}",
    )


def test_no_flux_is_behind_note_when_flux_has_the_origins_digest_or_pulled_by_digest() -> None:
    assert judge(healthy_chain(), pinned_digest=manifest_digest(ARTIFACT)).notes == ()
    assert judge(healthy_chain(tag=None), pinned_digest=manifest_digest(STALE)).notes == ()
    assert judge(healthy_chain()).notes == ()


def test_judging_no_hops_is_healthy_with_nothing_to_blame() -> None:
    judgement = judge([])
    assert judgement.verdict is Verdict.HEALTHY and judgement.blame is None and judgement.message == ""


def test_verdict_classes_match_the_spec_table() -> None:
    unknown = {Verdict.UNREACHABLE, Verdict.AUTH_FAILED, Verdict.RATE_LIMITED}
    for verdict in Verdict:
        if verdict is Verdict.HEALTHY:
            assert verdict.health is Health.HEALTHY
        elif verdict in unknown:
            assert verdict.health is Health.UNKNOWN
        else:
            assert verdict.health is Health.UNHEALTHY
    assert Health.UNHEALTHY > Health.UNKNOWN > Health.HEALTHY
    assert {verdict_of(failure(kind)) for kind in FaultKind} == unknown


def test_a_missing_blob_without_detail_still_reads_cleanly() -> None:
    # A BlobCheck built by hand with default detail still yields a readable message.
    edge = observe(EDGE)
    blobs = (
        edge.manifests[0].blobs[0],
        BlobCheck(CONTENT, 0, BlobStatus.MISSING),
        edge.manifests[0].blobs[2],
    )
    edge = dataclasses.replace(edge, manifests=(dataclasses.replace(edge.manifests[0], blobs=blobs),))
    message = judge([edge]).message
    assert message.endswith(f"layer 0 {short_digest(CONTENT.digest)} missing")


D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
BLOB_UNKNOWN = Fault(FaultKind.HTTP_STATUS, status=404, code="MANIFEST_UNKNOWN")
CHILD = {"digest": D1, "child": True, "platform": "linux/arm64"}


@pytest.mark.parametrize(
    ("problem", "verdict", "message"),
    [
        (TAG_UNKNOWN, Verdict.MANIFEST_MISSING, "tag v1 unknown (404)"),
        (
            ManifestProblem(ManifestFault.NOT_FOUND, D1, fault=BLOB_UNKNOWN),
            Verdict.MANIFEST_MISSING,
            "manifest sha256:111111111111 unknown (404 MANIFEST_UNKNOWN)",
        ),
        (
            ManifestProblem(ManifestFault.NOT_FOUND, fault=BLOB_UNKNOWN, **CHILD),
            Verdict.MANIFEST_MISSING,
            "child manifest sha256:111111111111 (linux/arm64) missing (404 MANIFEST_UNKNOWN)",
        ),
        (
            ManifestProblem(ManifestFault.ENCODED, D1, detail="gzip"),
            Verdict.MANIFEST_CORRUPT,
            "served with Content-Encoding gzip: not the bytes sha256:111111111111 names",
        ),
        (
            ManifestProblem(ManifestFault.OVERSIZE, D1, limit=4194304),
            Verdict.MANIFEST_CORRUPT,
            "manifest larger than 4194304 bytes",
        ),
        (
            ManifestProblem(ManifestFault.OTHER_BYTES, D1, actual=D2),
            Verdict.MANIFEST_CORRUPT,
            "manifest bytes hash to sha256:222222222222, not sha256:111111111111",
        ),
        (
            ManifestProblem(ManifestFault.UNPARSABLE, detail="unsupported schemaVersion 1", **CHILD),
            Verdict.MANIFEST_CORRUPT,
            "child manifest sha256:111111111111 (linux/arm64): manifest sha256:111111111111: "
            "unsupported schemaVersion 1",
        ),
        (
            ManifestProblem(ManifestFault.TOO_MANY_LAYERS, D1, count=40000, limit=1024),
            Verdict.MANIFEST_CORRUPT,
            "lists 40000 layers, more than the 1024 checked",
        ),
        (
            ManifestProblem(ManifestFault.BLOB_TOO_LARGE, D1, count=2**40, limit=2**36),
            Verdict.MANIFEST_CORRUPT,
            f"declares a blob of {2**40} bytes, over the {2**36} byte limit",
        ),
        (
            ManifestProblem(ManifestFault.TOO_MANY_CHILDREN, count=65, limit=64),
            Verdict.MANIFEST_CORRUPT,
            "index lists 65 manifests, more than the 64 checked",
        ),
        (
            ManifestProblem(ManifestFault.NESTED_INDEX, digest=D1, child=True),
            Verdict.MANIFEST_CORRUPT,
            "child manifest sha256:111111111111 (no platform) is itself an index",
        ),
    ],
    ids=lambda value: value.kind.value if isinstance(value, ManifestProblem) else "",
)
def test_each_manifest_problem_has_its_verdict_and_one_line_saying_what_the_hop_served(
    problem: ManifestProblem, verdict: Verdict, message: str
) -> None:
    judged = judge(replace_at(healthy_chain(), 1, observe(1, manifest_problem=problem)))
    assert (judged.hops[1].verdict, judged.hops[1].message) == (
        verdict,
        f"hop core ({PATH[1].location}): {message}",
    )
    assert describe_manifest_problem(problem, "v1") == message
