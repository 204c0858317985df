"""Blame that follows causes: every inner outcome x outer outcome for one object, edge in front of core.

A hop that answers 404 or 5xx for an object its upstream fails on too (or cannot serve at all) only
passes that failure on: it stays unhealthy with the verdict a client meets there, and the blame (and
so the page) goes to the upstream. A failure of its own stays its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from layerwatch.observation import (
    BlobCheck,
    BlobFacts,
    BlobStatus,
    Fault,
    FaultKind,
    HopObservation,
    ManifestCheck,
    ManifestFault,
    ManifestProblem,
)
from layerwatch.verdict import MESSAGE_LIMIT, DiagnosisName, Health, Verdict, judge

from .builders import (
    EXTRA,
    HOP_NAMES,
    TAG_UNKNOWN,
    descriptor,
    failure,
    healthy_chain,
    manifest,
    observe,
    replace_at,
)

EDGE, CORE, ORIGIN = 0, 1, 2
STALE = manifest(descriptor("old-content"), EXTRA)
OTHER_BYTES = ManifestProblem(ManifestFault.OTHER_BYTES, "sha256:" + "1" * 64, actual="sha256:" + "0" * 64)
SERVER_ERROR = Fault(FaultKind.HTTP_STATUS, status=503, attempts=3, subject="tag v1")

Outcome = Callable[[int], HopObservation]


def with_blob(
    obs: HopObservation, index: int | None, status: BlobStatus, detail: str, facts: BlobFacts
) -> HopObservation:
    """``obs`` with layer ``index`` (None: the config) of its manifest answered as ``facts`` say."""
    check = obs.manifests[0]
    blobs = list(check.blobs)
    at = 0 if index is None else index + 1
    blobs[at] = BlobCheck(blobs[at].descriptor, index, status, detail, facts)
    return dataclasses.replace(obs, manifests=(ManifestCheck(check.digest, check.manifest, tuple(blobs)),))


def blob_5xx(position: int, index: int = 0) -> HopObservation:
    fault = Fault(FaultKind.HTTP_STATUS, status=500, attempts=3)
    return with_blob(
        observe(position),
        index,
        BlobStatus.UNCHECKED,
        "HTTP 500 after 3 attempts",
        BlobFacts(500, fault=fault),
    )


def blob_404(position: int, index: int = 0) -> HopObservation:
    fault = Fault(FaultKind.HTTP_STATUS, status=404, code="BLOB_UNKNOWN")
    return with_blob(
        observe(position),
        index,
        BlobStatus.MISSING,
        "missing (404 BLOB_UNKNOWN)",
        BlobFacts(404, fault=fault),
    )


def blob_truncated(position: int) -> HopObservation:
    return with_blob(
        observe(position), 0, BlobStatus.CORRUPT, "truncated: 10 of 151 bytes", BlobFacts(200, 10)
    )


WHOLE_HOP: dict[str, Outcome] = {
    "unreachable": lambda p: observe(p, failure=failure(FaultKind.REFUSED)),
    "auth-failed": lambda p: observe(p, failure=failure(FaultKind.AUTH_REJECTED)),
    "rate-limited": lambda p: observe(p, failure=failure(FaultKind.RATE_LIMITED)),
}
BLOB: dict[str, Outcome] = {
    "healthy": observe,
    **WHOLE_HOP,
    "5xx": blob_5xx,
    "404": blob_404,
    "corrupt": blob_truncated,
    "other-blob-404": lambda p: blob_404(p, 1),
    "own-stale-tag": lambda p: observe(p, STALE),
}
MANIFEST: dict[str, Outcome] = {
    "healthy": observe,
    **WHOLE_HOP,
    "5xx": lambda p: observe(p, failure=SERVER_ERROR),
    "404": lambda p: observe(p, manifest_problem=TAG_UNKNOWN),
    "corrupt": lambda p: observe(p, manifest_problem=OTHER_BYTES),
    "own-stale-tag": lambda p: observe(p, STALE),
}

H, U, A, R = Verdict.HEALTHY, Verdict.UNREACHABLE, Verdict.AUTH_FAILED, Verdict.RATE_LIMITED
LM, LC, MM, MC, DM = (
    Verdict.LAYER_MISSING,
    Verdict.LAYER_CORRUPT,
    Verdict.MANIFEST_MISSING,
    Verdict.MANIFEST_CORRUPT,
    Verdict.DIGEST_MISMATCH,
)
DOWN = DiagnosisName.UPSTREAM_DOWN

# (object, inner at core, outer at edge) -> edge verdict, inherited, blame, overall verdict, edge diagnosis
Row = tuple[Verdict, bool, str | None, Verdict, DiagnosisName | None]


def unchecked_core(what: str, missing: Verdict, corrupt: Verdict) -> dict[tuple[str, str, str], Row]:
    """Core refuses layerwatch's credentials or rate-limits it: that says nothing about what it
    serves the edge, so the edge's failures stay its own (and blame stays deepest-unknown)."""
    return {
        (what, unknown, outer): row
        for unknown, verdict in (("auth-failed", A), ("rate-limited", R))
        for outer, row in {
            "healthy": (H, False, "core", verdict, None),
            "404": (missing, False, "edge", missing, None),
            "5xx": (U, False, "core", verdict, None),
            "corrupt": (corrupt, False, "edge", corrupt, None),
            "own-stale-tag": (DM, False, "edge", DM, None),
        }.items()
    }


TABLE: dict[tuple[str, str, str], Row] = {
    # -- a blob (layer 0) --------------------------------------------------------------------------
    ("blob", "healthy", "healthy"): (H, False, None, H, None),
    ("blob", "healthy", "404"): (LM, False, "edge", LM, None),
    ("blob", "healthy", "5xx"): (U, False, "edge", U, None),
    ("blob", "healthy", "corrupt"): (LC, False, "edge", LC, None),
    ("blob", "healthy", "own-stale-tag"): (DM, False, "edge", DM, None),
    ("blob", "unreachable", "healthy"): (H, False, "core", U, None),
    ("blob", "unreachable", "404"): (LM, True, "core", LM, DOWN),
    ("blob", "unreachable", "other-blob-404"): (LM, True, "core", LM, DOWN),
    ("blob", "unreachable", "5xx"): (U, True, "core", U, DOWN),
    ("blob", "unreachable", "corrupt"): (LC, False, "edge", LC, None),
    ("blob", "unreachable", "own-stale-tag"): (DM, False, "edge", DM, None),
    ("blob", "5xx", "healthy"): (H, False, "core", U, None),
    ("blob", "5xx", "404"): (LM, True, "core", LM, DOWN),
    ("blob", "5xx", "5xx"): (U, True, "core", U, DOWN),
    ("blob", "5xx", "corrupt"): (LC, False, "edge", LC, None),
    ("blob", "5xx", "other-blob-404"): (LM, False, "edge", LM, None),
    ("blob", "5xx", "own-stale-tag"): (DM, False, "edge", DM, None),
    ("blob", "404", "healthy"): (H, False, "core", LM, None),
    ("blob", "404", "404"): (LM, True, "core", LM, None),
    ("blob", "404", "5xx"): (LM, True, "core", LM, None),
    ("blob", "404", "corrupt"): (LC, False, "core", LM, None),
    ("blob", "404", "other-blob-404"): (LM, False, "core", LM, None),
    ("blob", "404", "own-stale-tag"): (DM, False, "core", LM, None),
    ("blob", "corrupt", "healthy"): (H, False, "core", LC, None),
    ("blob", "corrupt", "404"): (LM, True, "core", LC, None),
    ("blob", "corrupt", "5xx"): (LC, True, "core", LC, None),
    ("blob", "corrupt", "corrupt"): (LC, True, "core", LC, None),
    ("blob", "corrupt", "own-stale-tag"): (DM, False, "core", LC, None),
    **unchecked_core("blob", LM, LC),
    # -- the manifest (tag v1) ---------------------------------------------------------------------
    ("manifest", "healthy", "healthy"): (H, False, None, H, None),
    ("manifest", "healthy", "404"): (MM, False, "edge", MM, None),
    ("manifest", "healthy", "5xx"): (U, False, "edge", U, None),
    ("manifest", "healthy", "corrupt"): (MC, False, "edge", MC, None),
    ("manifest", "healthy", "own-stale-tag"): (DM, False, "edge", DM, None),
    **{
        ("manifest", down, outer): row
        for down in ("unreachable", "5xx")
        for outer, row in {
            "healthy": (H, False, "core", U, None),
            "404": (MM, True, "core", MM, DOWN),
            "5xx": (U, True, "core", U, DOWN),
            "corrupt": (MC, False, "edge", MC, None),
            "own-stale-tag": (DM, False, "edge", DM, None),
        }.items()
    },
    ("manifest", "404", "healthy"): (H, False, "core", MM, None),
    ("manifest", "404", "404"): (MM, True, "core", MM, None),
    ("manifest", "404", "5xx"): (MM, True, "core", MM, None),
    ("manifest", "404", "corrupt"): (MC, False, "core", MM, None),
    ("manifest", "404", "own-stale-tag"): (DM, False, "core", MM, None),
    ("manifest", "corrupt", "healthy"): (H, False, "core", MC, None),
    ("manifest", "corrupt", "404"): (MM, True, "core", MC, None),
    ("manifest", "corrupt", "5xx"): (MC, True, "core", MC, None),
    ("manifest", "corrupt", "corrupt"): (MC, True, "core", MC, None),
    ("manifest", "corrupt", "own-stale-tag"): (DM, False, "core", MC, None),
    **unchecked_core("manifest", MM, MC),
}
OUTCOMES = {"blob": BLOB, "manifest": MANIFEST}


@pytest.mark.parametrize(("what", "inner", "outer"), list(TABLE), ids=["-".join(key) for key in TABLE])
def test_an_outer_hop_is_blamed_only_for_failures_its_upstream_does_not_explain(
    what: str, inner: str, outer: str
) -> None:
    edge_verdict, inherited, blame, overall, diagnosis = TABLE[(what, inner, outer)]
    observations = healthy_chain()
    observations[CORE] = OUTCOMES[what][inner](CORE)
    observations[EDGE] = OUTCOMES[what][outer](EDGE)
    judgement = judge(observations)
    edge, core, origin = judgement.hops
    core_alone = judge([*healthy_chain()[:CORE], observations[CORE], observations[ORIGIN]]).hops[CORE]
    assert (edge.verdict, edge.inherited_from is not None) == (edge_verdict, inherited), edge.message
    assert core == core_alone, "an inner hop's verdict never depends on the hops in front of it"
    assert origin.verdict is Verdict.HEALTHY
    assert (judgement.blame, judgement.verdict) == (blame, overall), judgement.message
    assert (edge.diagnosis.name if edge.diagnosis else None) == diagnosis
    if inherited:
        assert edge.inherited_from == "core"
        assert edge.message.startswith(f"hop edge ({observations[EDGE].location}): ")
        assert f"passed on from hop core ({core.verdict.value} there)" in edge.message
        assert judgement.blamed_verdict is core.verdict
    note = "core could not be checked; edge may only pass on its failure"
    own_unhealthy = edge.inherited_from is None and edge_verdict.health is Health.UNHEALTHY
    assert (note in judgement.notes) == (own_unhealthy and core.verdict.health is Health.UNKNOWN)


def test_a_failure_passed_on_through_two_hops_is_inherited_from_the_hop_that_failed_first() -> None:
    observations = [blob_5xx(EDGE), blob_404(CORE), blob_404(ORIGIN)]
    judgement = judge(observations)
    assert [h.verdict for h in judgement.hops] == [LM, LM, LM]
    assert [h.inherited_from for h in judgement.hops] == ["origin", "origin", None]
    assert judgement.blame == "origin"


def test_the_edge_passing_on_a_down_core_is_what_the_condition_says_naming_core() -> None:
    """The down-middle-hop case: the edge's 404 is ManifestMissing for Flux, blamed and paged on core."""
    observations = healthy_chain()
    observations[CORE] = observe(CORE, failure=Fault(FaultKind.HOP_DOWN, "connection refused"))
    observations[EDGE] = observe(
        EDGE,
        manifest_problem=ManifestProblem(
            ManifestFault.NOT_FOUND,
            fault=Fault(
                FaultKind.HTTP_STATUS,
                status=404,
                code="NOT_FOUND",
                registry_message="repository org/app not found",
            ),
        ),
    )
    judgement = judge(observations)
    assert (judgement.verdict, judgement.blame, judgement.blamed_verdict) == (MM, "core", U)
    assert judgement.message.startswith(
        f"hop edge ({observations[EDGE].location}): tag v1 unknown (404 NOT_FOUND); "
        "passed on from hop core (Unreachable there); upstream-down: answers in place of hop core"
    )
    assert f"; hop core ({observations[CORE].location}): hop down (connection refused)" in judgement.message
    assert "bring hop core back" in judgement.message


# -- named Harbor diagnoses ----------------------------------------------------------------------------

EMPTY_200 = BlobFacts(200, 0, actual="sha256:" + "e" * 64)
"""A Harbor in front of a cold Harbor: 200, Content-Length 0, the body ends at once."""
CUT_AT_0 = BlobFacts(200, 0, fault=Fault(FaultKind.BODY_CUT, "connection closed", attempts=2))
"""A Harbor whose storage lost the data: 200 with the full length, then the connection closes."""


def corrupt_at(position: int, facts: BlobFacts, detail: str) -> list[HopObservation]:
    observations = healthy_chain()
    observations[position] = with_blob(observe(position), 0, BlobStatus.CORRUPT, detail, facts)
    return observations


@pytest.mark.parametrize(
    ("facts", "detail", "name", "heals", "words"),
    [
        (
            EMPTY_200,
            "truncated: 0 of 151 bytes",
            DiagnosisName.COLD_UPSTREAM_EMPTY_BODY,
            True,
            "goharbor/harbor#23373 (fixed on Harbor's main, in no release up to v2.15.2); heals by itself",
        ),
        (
            CUT_AT_0,
            "truncated: 0 of 151 bytes (connection closed)",
            DiagnosisName.CACHED_DATA_LOST,
            False,
            "Harbor's Redis layerinfo) still lists it; never heals by itself; delete the artifact in the "
            "proxy project and clear the blob's layerinfo entry",
        ),
    ],
)
@pytest.mark.parametrize("position", [EDGE, CORE])
def test_an_empty_blob_from_a_proxy_is_named_apart_from_data_lost_behind_the_descriptor_cache(
    facts: BlobFacts, detail: str, name: DiagnosisName, heals: bool, words: str, position: int
) -> None:
    judgement = judge(corrupt_at(position, facts, detail))
    hop = judgement.hops[position]
    assert (hop.verdict, judgement.blame) == (LC, HOP_NAMES[position])
    assert hop.diagnosis is not None and (hop.diagnosis.name, hop.diagnosis.heals) == (name, heals)
    assert (
        f"corrupt (truncated: 0 of 151 bytes{' (connection closed)' if facts.fault else ''}); {name}: "
        in hop.message
    )
    assert words in hop.message
    assert judgement.message == hop.message


@pytest.mark.parametrize(
    ("position", "facts", "detail"),
    [
        pytest.param(ORIGIN, EMPTY_200, "truncated: 0 of 151 bytes", id="empty-200-at-the-origin"),
        pytest.param(
            ORIGIN, CUT_AT_0, "truncated: 0 of 151 bytes (connection closed)", id="cut-at-0-at-the-origin"
        ),
        pytest.param(CORE, BlobFacts(200, 10), "truncated: 10 of 151 bytes", id="short-body"),
        pytest.param(
            CORE,
            BlobFacts(200, 10, fault=Fault(FaultKind.BODY_CUT, "closed")),
            "truncated: 10 of 151 bytes (connection closed)",
            id="cut-after-some-bytes",
        ),
    ],
)
def test_damage_that_is_not_a_harbor_signature_gets_no_diagnosis(
    position: int, facts: BlobFacts, detail: str
) -> None:
    judgement = judge(corrupt_at(position, facts, detail))
    assert judgement.hops[position].verdict is LC
    assert judgement.hops[position].diagnosis is None


MANIFESTS_REPOSITORY = "p-ghcr/flux/manifests/podinfo"


def all_blobs_404(position: int, repository: str) -> HopObservation:
    obs = dataclasses.replace(observe(position), repository=repository)
    for index in (None, *range(len(obs.manifests[0].manifest.layers))):
        obs = with_blob(obs, index, BlobStatus.MISSING, "missing (404 BLOB_UNKNOWN)", BlobFacts(404))
    return obs


def test_every_blob_404_under_a_manifests_path_segment_names_the_repository_name_as_the_cause() -> None:
    observations = healthy_chain()
    observations[CORE] = all_blobs_404(CORE, MANIFESTS_REPOSITORY)
    observations[EDGE] = all_blobs_404(EDGE, "p-core/" + MANIFESTS_REPOSITORY)
    judgement = judge(observations)
    edge, core, _ = judgement.hops
    assert (judgement.verdict, judgement.blame) == (LM, "core")
    assert core.diagnosis is not None and core.diagnosis.name is DiagnosisName.MANIFESTS_PATH_SEGMENT
    assert not core.diagnosis.heals
    assert (
        "manifests-path-segment: serves the manifest but answers 404 for blobs, and the repository path "
        "has a 'manifests' segment: Harbor's proxy-cache routes a blob URL under a 'manifests' path segment "
        "as a manifest URL, so blob requests fail (not on every request); never heals by itself; rename "
        "the repository so that no path segment is 'manifests', or pull it from a non-proxy project"
    ) in judgement.message
    assert "every blob" not in judgement.message
    # The edge's own path has the segment too: it passes core's 404s on and would fail alone.
    assert edge.inherited_from == "core"
    assert edge.diagnosis is not None and edge.diagnosis.name is DiagnosisName.MANIFESTS_PATH_SEGMENT


def test_one_blob_404_of_three_under_a_manifests_path_segment_is_named_too() -> None:
    """The real Harbor decides the 404 per request: in one check some blobs get 200, others 404."""
    judgement = judge(
        replace_at(
            healthy_chain(), CORE, dataclasses.replace(blob_404(CORE), repository=MANIFESTS_REPOSITORY)
        )
    )
    core = judgement.hops[CORE]
    assert (core.verdict, judgement.blame) == (LM, "core")
    assert core.diagnosis is not None and core.diagnosis.name is DiagnosisName.MANIFESTS_PATH_SEGMENT
    assert "so blob requests fail (not on every request)" in core.message


@pytest.mark.parametrize(
    "observation",
    [
        pytest.param(lambda: all_blobs_404(CORE, "p-ghcr/flux/manifest/podinfo"), id="no-such-segment"),
        pytest.param(
            lambda: all_blobs_404(CORE, "p-ghcr/flux/manifests-podinfo"), id="segment-part-of-a-name"
        ),
        pytest.param(lambda: all_blobs_404(ORIGIN, MANIFESTS_REPOSITORY), id="at-the-origin"),
    ],
)
def test_blobs_404_without_a_manifests_path_segment_at_a_proxy_hop_get_no_diagnosis(
    observation: Callable[[], HopObservation],
) -> None:
    obs = observation()
    judgement = judge(replace_at(healthy_chain(), HOP_NAMES.index(obs.hop), obs))
    assert judgement.verdict is LM
    assert all(hop.diagnosis is None for hop in judgement.hops)


def test_a_long_registry_message_never_pushes_the_diagnosis_out_of_the_one_line_message() -> None:
    observations = healthy_chain()
    observations[CORE] = observe(CORE, failure=Fault(FaultKind.REFUSED, "connection refused"))
    noise = Fault(FaultKind.HTTP_STATUS, status=404, code="NOT_FOUND", registry_message="x" * 5000)
    observations[EDGE] = observe(EDGE, manifest_problem=ManifestProblem(ManifestFault.NOT_FOUND, fault=noise))
    judgement = judge(observations)
    edge = judgement.hops[EDGE]
    assert len(edge.message) <= MESSAGE_LIMIT and "\n" not in edge.message
    assert edge.message.endswith("bring hop core back; nothing to fix at this hop")


@pytest.mark.parametrize(
    "edge",
    [
        pytest.param(lambda: blob_5xx(EDGE), id="edge-answers-500"),
        pytest.param(
            lambda: corrupt_at(EDGE, CUT_AT_0, "truncated: 0 of 151 bytes (connection closed)")[EDGE],
            id="edge-streams-the-same-cut",
        ),
    ],
)
def test_data_lost_at_core_is_named_at_core_and_only_passed_on_by_the_edge(
    edge: Callable[[], HopObservation],
) -> None:
    observations = corrupt_at(CORE, CUT_AT_0, "truncated: 0 of 151 bytes (connection closed)")
    observations[EDGE] = edge()
    judgement = judge(observations)
    edge_verdict, core_verdict, _ = judgement.hops
    assert (judgement.verdict, judgement.blame) == (LC, "core")
    assert (edge_verdict.verdict, edge_verdict.inherited_from, edge_verdict.diagnosis) == (LC, "core", None)
    assert core_verdict.diagnosis is not None
    assert core_verdict.diagnosis.name is DiagnosisName.CACHED_DATA_LOST
    assert "cached-data-lost" in judgement.message and judgement.message.startswith("hop core ")
