"""What Prometheus scrapes: fixed names, bounded labels, series that vanish with their object."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from tests.spec_metrics import SPEC_METRIC_FAMILIES

from layerwatch import __version__
from layerwatch.chain import Target
from layerwatch.metrics import DURATION_BUCKETS, Metrics
from layerwatch.observation import BlobStatus, FaultKind, HopObservation
from layerwatch.store import ResultStore, TargetStatus

from .builders import (
    ARTIFACT,
    FINISHED,
    REFERENCE,
    TAG_UNKNOWN,
    check_result,
    failure,
    healthy_chain,
    observe,
    replace_at,
    scraped,
)

EDGE, CORE, ORIGIN = 0, 1, 2
HOPS = ("edge", "core", "origin")
TARGET = Target(name="app", reference=REFERENCE, chain="corp", namespace="team-a")
MISSING = {0: (BlobStatus.MISSING, "missing (404)")}
ARTIFACT_BYTES = ARTIFACT.config.size + sum(layer.size for layer in ARTIFACT.layers)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(ResultStore())


def value(metrics: Metrics, metric: str, **labels: str) -> float | None:
    return scraped(metrics, metric, labels)


def artifact(hop: str, name: str = "app", namespace: str = "team-a", chain: str = "corp") -> dict[str, str]:
    return {"namespace": namespace, "name": name, "chain": chain, "hop": hop}


def checked(metrics: Metrics, observations: Sequence[HopObservation], target: Target = TARGET) -> None:
    """What the scheduler does with a completed check."""
    result = check_result(observations)
    metrics.store.put(TargetStatus(target, target.chain or "corp", result))
    metrics.record_check(target.chain or "corp", result)


def timed(observations: Sequence[HopObservation], *durations: float) -> list[HopObservation]:
    return [dataclasses.replace(o, duration=d) for o, d in zip(observations, durations, strict=True)]


# -- per-artifact series ---------------------------------------------------------------------------


def test_a_healthy_artifact_has_one_series_per_hop_saying_healthy(metrics: Metrics) -> None:
    checked(metrics, healthy_chain())
    for hop in HOPS:
        assert value(metrics, "layerwatch_artifact_hop_healthy", **artifact(hop)) == 1.0
        assert value(metrics, "layerwatch_artifact_hop_verdict", **artifact(hop), verdict="Healthy") == 1.0
        assert value(metrics, "layerwatch_artifact_hop_last_check_timestamp_seconds", **artifact(hop)) == (
            FINISHED
        )


def test_an_unhealthy_hop_is_0_and_its_verdict_series_carries_the_verdict(metrics: Metrics) -> None:
    checked(metrics, [observe(EDGE, blobs=MISSING), observe(CORE, blobs=MISSING), observe(ORIGIN)])
    assert value(metrics, "layerwatch_artifact_hop_healthy", **artifact("core")) == 0.0
    assert value(metrics, "layerwatch_artifact_hop_healthy", **artifact("origin")) == 1.0
    assert (
        value(metrics, "layerwatch_artifact_hop_verdict", **artifact("core"), verdict="LayerMissing") == 1.0
    )
    assert value(metrics, "layerwatch_artifact_hop_verdict", **artifact("core"), verdict="Healthy") is None


def test_an_unknown_hop_has_no_healthy_series_but_says_why_in_its_verdict(metrics: Metrics) -> None:
    unreachable = observe(EDGE, failure=failure(FaultKind.REFUSED))
    checked(metrics, replace_at(healthy_chain(), EDGE, unreachable))
    assert value(metrics, "layerwatch_artifact_hop_healthy", **artifact("edge")) is None
    assert value(metrics, "layerwatch_artifact_hop_verdict", **artifact("edge"), verdict="Unreachable") == 1.0
    assert value(metrics, "layerwatch_artifact_hop_healthy", **artifact("core")) == 1.0
    assert (
        value(metrics, "layerwatch_artifact_hop_last_check_timestamp_seconds", **artifact("edge")) == FINISHED
    )


def test_a_target_not_checked_yet_or_pending_has_no_per_artifact_series(metrics: Metrics) -> None:
    metrics.store.put(TargetStatus(TARGET, "corp"))
    metrics.store.put(TargetStatus(dataclasses.replace(TARGET, name="semver"), "corp", pending="semver"))
    exposition = metrics.exposition().decode()
    assert "layerwatch_artifact_hop_healthy{" not in exposition
    assert "layerwatch_artifact_hop_verdict{" not in exposition


def test_there_is_exactly_one_verdict_series_per_artifact_and_hop(metrics: Metrics) -> None:
    checked(metrics, healthy_chain())
    checked(metrics, [observe(EDGE, blobs=MISSING), observe(CORE, blobs=MISSING), observe(ORIGIN)])
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    samples = families["layerwatch_artifact_hop_verdict"].samples
    assert sorted((s.labels["hop"], s.labels["verdict"]) for s in samples) == [
        ("core", "LayerMissing"),
        ("edge", "LayerMissing"),
        ("origin", "Healthy"),
    ]
    assert all(set(s.labels) == {"namespace", "name", "chain", "hop", "verdict"} for s in samples)


def test_per_artifact_series_disappear_when_the_store_forgets_the_target(metrics: Metrics) -> None:
    other = dataclasses.replace(TARGET, name="other")
    checked(metrics, healthy_chain())
    checked(metrics, healthy_chain(), other)
    metrics.store.remove(TARGET.key)
    assert value(metrics, "layerwatch_artifact_hop_healthy", **artifact("edge")) is None
    assert value(metrics, "layerwatch_artifact_hop_verdict", **artifact("edge"), verdict="Healthy") is None
    assert value(metrics, "layerwatch_artifact_hop_last_check_timestamp_seconds", **artifact("edge")) is None
    assert value(metrics, "layerwatch_artifact_hop_healthy", **artifact("edge", name="other")) == 1.0


def test_standalone_targets_have_an_empty_namespace_label(metrics: Metrics) -> None:
    checked(metrics, healthy_chain(), Target(name="app", reference=REFERENCE, chain="corp"))
    assert value(metrics, "layerwatch_artifact_hop_healthy", **artifact("edge", namespace="")) == 1.0


# -- counters and histograms -----------------------------------------------------------------------


def test_checks_are_counted_per_chain_hop_and_verdict(metrics: Metrics) -> None:
    checked(metrics, healthy_chain())
    checked(metrics, healthy_chain())
    checked(metrics, [observe(EDGE, blobs=MISSING), observe(CORE, blobs=MISSING), observe(ORIGIN)])
    assert value(metrics, "layerwatch_checks_total", chain="corp", hop="edge", verdict="Healthy") == 2.0
    assert value(metrics, "layerwatch_checks_total", chain="corp", hop="edge", verdict="LayerMissing") == 1.0
    assert value(metrics, "layerwatch_checks_total", chain="corp", hop="origin", verdict="Healthy") == 3.0


def test_check_durations_land_in_cumulative_buckets(metrics: Metrics) -> None:
    checked(metrics, timed(healthy_chain(), 0.3, 0.05, 400.0))
    checked(metrics, timed(healthy_chain(), 0.07, 0.05, 1.0))

    def bucket(hop: str, le: str) -> float | None:
        return value(metrics, "layerwatch_check_duration_seconds_bucket", chain="corp", hop=hop, le=le)

    assert [bucket("edge", le) for le in ("0.05", "0.1", "0.25", "0.5", "+Inf")] == [0.0, 1.0, 1.0, 2.0, 2.0]
    assert bucket("core", "0.05") == 2.0  # a bound is inclusive (le)
    assert bucket("origin", "300.0") == 1.0
    assert bucket("origin", "+Inf") == 2.0
    assert value(metrics, "layerwatch_check_duration_seconds_count", chain="corp", hop="edge") == 2.0
    assert value(metrics, "layerwatch_check_duration_seconds_sum", chain="corp", hop="edge") == pytest.approx(
        0.37
    )


@settings(max_examples=50, deadline=None)
@given(durations=st.lists(st.floats(min_value=0.0, max_value=1000.0), min_size=1, max_size=20))
def test_each_bucket_counts_the_checks_at_or_under_its_bound(durations: list[float]) -> None:
    metrics = Metrics(ResultStore())
    for duration in durations:
        metrics.record_check("corp", check_result(timed(healthy_chain(), duration, 0.0, 0.0)))
    counts = [
        value(metrics, "layerwatch_check_duration_seconds_bucket", chain="corp", hop="edge", le=str(bound))
        for bound in DURATION_BUCKETS
    ]
    assert counts == [float(sum(1 for d in durations if d <= bound)) for bound in DURATION_BUCKETS]
    assert counts == sorted(counts)  # cumulative
    inf = value(metrics, "layerwatch_check_duration_seconds_bucket", chain="corp", hop="edge", le="+Inf")
    assert inf == len(durations)


def test_registry_requests_are_counted_through_the_clients_hook(metrics: Metrics) -> None:
    edge = metrics.request_hook("corp", "edge")
    for method, code in [("GET", "200"), ("GET", "200"), ("HEAD", "404"), ("GET", "401")]:
        edge(method, code)
    metrics.request_hook("corp", "core")("HEAD", "200")
    assert (
        value(
            metrics, "layerwatch_registry_requests_total", chain="corp", hop="edge", method="GET", code="200"
        )
        == 2
    )
    assert (
        value(
            metrics, "layerwatch_registry_requests_total", chain="corp", hop="edge", method="HEAD", code="404"
        )
        == 1
    )
    assert (
        value(
            metrics, "layerwatch_registry_requests_total", chain="corp", hop="core", method="HEAD", code="200"
        )
        == 1
    )


def test_verified_blob_bytes_are_counted_per_hop(metrics: Metrics) -> None:
    checked(metrics, healthy_chain())
    checked(metrics, [observe(EDGE, blobs=MISSING), observe(CORE), observe(ORIGIN)])
    assert (
        value(metrics, "layerwatch_blob_bytes_verified_total", chain="corp", hop="core") == 2 * ARTIFACT_BYTES
    )
    missing_layer = ARTIFACT.layers[0].size
    assert value(metrics, "layerwatch_blob_bytes_verified_total", chain="corp", hop="edge") == (
        2 * ARTIFACT_BYTES - missing_layer
    )


def test_hop_up_chain_interval_and_build_info(metrics: Metrics) -> None:
    metrics.set_chain("corp", 300.0, HOPS)
    metrics.set_hop_up("corp", "edge", True)
    metrics.set_hop_up("corp", "core", False)
    assert value(metrics, "layerwatch_hop_up", chain="corp", hop="edge") == 1.0
    assert value(metrics, "layerwatch_hop_up", chain="corp", hop="core") == 0.0
    assert value(metrics, "layerwatch_hop_up", chain="corp", hop="origin") is None  # not pinged yet
    assert metrics.hop_up() == {("corp", "edge"): True, ("corp", "core"): False}
    assert value(metrics, "layerwatch_chain_interval_seconds", chain="corp") == 300.0
    assert value(metrics, "layerwatch_build_info", version=__version__) == 1.0


def test_a_fresh_operator_exports_every_spec_family_with_its_type(metrics: Metrics) -> None:
    exposition = metrics.exposition().decode()
    for name, kind in SPEC_METRIC_FAMILIES:
        assert f"# TYPE {name} {kind}" in exposition, name


# -- forgetting ------------------------------------------------------------------------------------


def fill(metrics: Metrics, chain: str) -> None:
    target = dataclasses.replace(TARGET, name=f"app-{chain}", chain=chain)
    metrics.set_chain(chain, 300.0, HOPS)
    checked(metrics, timed(healthy_chain(), 0.1, 0.1, 0.1), target)
    for hop in HOPS:
        metrics.set_hop_up(chain, hop, True)
        metrics.request_hook(chain, hop)("GET", "200")


def counter_series(metrics: Metrics, chain: str, hop: str) -> list[float | None]:
    return [
        value(metrics, "layerwatch_checks_total", chain=chain, hop=hop, verdict="Healthy"),
        value(metrics, "layerwatch_check_duration_seconds_count", chain=chain, hop=hop),
        value(metrics, "layerwatch_registry_requests_total", chain=chain, hop=hop, method="GET", code="200"),
        value(metrics, "layerwatch_blob_bytes_verified_total", chain=chain, hop=hop),
        value(metrics, "layerwatch_hop_up", chain=chain, hop=hop),
    ]


def test_forgetting_a_chain_drops_exactly_its_series(metrics: Metrics) -> None:
    fill(metrics, "corp")
    fill(metrics, "corp-2")  # a name that starts the same must not be caught
    metrics.forget_chain("corp")
    for hop in HOPS:
        assert counter_series(metrics, "corp", hop) == [None] * 5
        assert None not in counter_series(metrics, "corp-2", hop)
    assert value(metrics, "layerwatch_chain_interval_seconds", chain="corp") is None
    assert value(metrics, "layerwatch_chain_interval_seconds", chain="corp-2") == 300.0


def test_a_hop_removed_from_a_chain_loses_its_series_and_the_others_keep_theirs(metrics: Metrics) -> None:
    fill(metrics, "corp")
    fill(metrics, "other")
    metrics.set_chain("corp", 600.0, ("edge", "origin"))
    assert counter_series(metrics, "corp", "core") == [None] * 5
    assert None not in counter_series(metrics, "corp", "edge")
    assert None not in counter_series(metrics, "corp", "origin")
    assert None not in counter_series(metrics, "other", "core")
    assert value(metrics, "layerwatch_chain_interval_seconds", chain="corp") == 600.0


def test_declaring_an_unchanged_chain_again_keeps_its_counters(metrics: Metrics) -> None:
    fill(metrics, "corp")
    metrics.set_chain("corp", 300.0, HOPS)
    assert counter_series(metrics, "corp", "edge") == [1.0, 1.0, 1.0, float(ARTIFACT_BYTES), 1.0]


# -- blame, since, chain readiness -----------------------------------------------------------------

LOST_AT_CORE = [observe(EDGE, blobs=MISSING), observe(CORE, blobs=MISSING), observe(ORIGIN)]


def test_blame_is_exported_only_on_the_blamed_hop(metrics: Metrics) -> None:
    checked(metrics, LOST_AT_CORE)
    assert value(metrics, "layerwatch_artifact_blame", **artifact("core"), verdict="LayerMissing") == 1.0
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert [s.labels["hop"] for s in families["layerwatch_artifact_blame"].samples] == ["core"]


def test_a_healthy_artifact_is_blamed_on_no_hop(metrics: Metrics) -> None:
    checked(metrics, healthy_chain())
    assert "layerwatch_artifact_blame{" not in metrics.exposition().decode()
    assert "layerwatch_hop_blamed_artifacts{" not in metrics.exposition().decode()


def test_blamed_artifacts_are_counted_per_chain_hop_and_verdict(metrics: Metrics) -> None:
    for index in range(50):
        checked(metrics, LOST_AT_CORE, dataclasses.replace(TARGET, name=f"app-{index}"))
    expired = observe(EDGE, failure=failure(FaultKind.AUTH_REJECTED))
    checked(metrics, replace_at(healthy_chain(), EDGE, expired), dataclasses.replace(TARGET, name="other"))
    count = "layerwatch_hop_blamed_artifacts"
    assert value(metrics, count, chain="corp", hop="core", verdict="LayerMissing") == 50.0
    assert value(metrics, count, chain="corp", hop="edge", verdict="LayerMissing") is None
    assert value(metrics, count, chain="corp", hop="edge", verdict="AuthFailed") == 1.0


def test_an_edge_passing_on_a_down_core_pages_core_for_being_down_not_the_edge(metrics: Metrics) -> None:
    """The edge answers 404 for what it never cached because core is down: core's own verdict is the cause."""
    down = observe(CORE, failure=failure(FaultKind.HOP_DOWN))
    checked(metrics, [observe(EDGE, manifest_problem=TAG_UNKNOWN), down, observe(ORIGIN)])
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    blamed = [(s.labels["hop"], s.labels["verdict"]) for s in families["layerwatch_artifact_blame"].samples]
    assert blamed == [("core", "Unreachable")]
    count = "layerwatch_hop_blamed_artifacts"
    assert value(metrics, count, chain="corp", hop="core", verdict="Unreachable") == 1.0
    assert (
        value(metrics, "layerwatch_artifact_hop_verdict", **artifact("edge"), verdict="ManifestMissing")
        == 1.0
    )
    assert value(metrics, "layerwatch_artifact_hop_healthy", **artifact("edge")) == 0.0


def test_the_since_timestamp_holds_while_a_verdict_is_unchanged(metrics: Metrics) -> None:
    since = "layerwatch_artifact_hop_verdict_since_timestamp_seconds"
    for finished in (FINISHED, FINISHED + 300):
        result = check_result(healthy_chain(), finished=finished)
        metrics.store.put(TargetStatus(TARGET, "corp", result))
    assert value(metrics, since, **artifact("core")) == FINISHED
    broken = check_result(LOST_AT_CORE, finished=FINISHED + 600)
    metrics.store.put(TargetStatus(TARGET, "corp", broken))
    assert value(metrics, since, **artifact("core")) == FINISHED + 600
    assert value(metrics, since, **artifact("origin")) == FINISHED, "origin stayed healthy"
    status = metrics.store.get(TARGET.key)
    assert status is not None and status.since == FINISHED + 600


def test_chains_being_checked_are_ready_and_those_that_cannot_be_are_not(metrics: Metrics) -> None:
    metrics.set_chain("corp", 300.0, HOPS)
    metrics.set_chains_not_ready({"broken": "Secret layerwatch/robot not found"})
    assert value(metrics, "layerwatch_chain_ready", chain="corp") == 1.0
    assert value(metrics, "layerwatch_chain_ready", chain="broken") == 0.0
    assert metrics.chains_not_ready() == {"broken": "Secret layerwatch/robot not found"}
    metrics.set_chains_not_ready({})
    assert value(metrics, "layerwatch_chain_ready", chain="broken") is None


def test_a_large_exposition_is_served_in_pieces_that_add_up_to_every_series(metrics: Metrics) -> None:
    for i in range(2_000):
        checked(metrics, healthy_chain(), dataclasses.replace(TARGET, name=f"app-{i}"))
    chunks = list(metrics.exposition_chunks())
    assert len(chunks) > 10
    assert max(len(chunk) for chunk in chunks) < 70_000
    families = {f.name: f for f in text_string_to_metric_families(b"".join(chunks).decode())}
    assert len(families["layerwatch_artifact_hop_verdict"].samples) == 2_000 * len(HOPS)
    assert len(families["layerwatch_artifact_hop_healthy"].samples) == 2_000 * len(HOPS)
