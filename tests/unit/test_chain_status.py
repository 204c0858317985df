"""The ProxyChain status the operator writes, and which OCIRepository events make it re-plan.

The service is built with a stub in place of ``KubeApi``: nothing here calls an apiserver or
starts kopf.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest

from layerwatch.chain import Target
from layerwatch.kube.api import KubeApi
from layerwatch.kube.service import STATUS_REFRESH, OperatorOptions, OperatorService, _rfc3339, _settle
from layerwatch.kube.targets import FluxSource
from layerwatch.observation import BlobStatus, FaultKind
from layerwatch.store import TargetStatus

from .builders import (
    CHAIN,
    FINISHED,
    REFERENCE,
    TAG,
    check_result,
    failure,
    healthy_chain,
    observe,
    replace_at,
)

EDGE, CORE, ORIGIN = 0, 1, 2
MISSING = {0: (BlobStatus.MISSING, "missing (404)")}
WRITTEN = 1_700_000_000.0
WRITTEN_AT = _rfc3339(WRITTEN)


def service(**options: Any) -> OperatorService:
    return OperatorService(cast(KubeApi, object()), OperatorOptions(**options))


def hop(
    name: str, healthy: int = 1, unhealthy: int = 0, unknown: int = 0, when: str | None = WRITTEN_AT
) -> dict[str, Any]:
    return {
        "name": name,
        "up": True,
        "artifacts": healthy + unhealthy + unknown,
        "healthy": healthy,
        "unhealthy": unhealthy,
        "unknown": unknown,
        "lastCheckTime": when,
    }


def status(*hops: dict[str, Any], ready: str = "True", since: str = WRITTEN_AT) -> dict[str, Any]:
    return {
        "observedGeneration": 1,
        "artifacts": 1,
        "unhealthy": 0,
        "unknown": 0,
        "hops": list(hops),
        "hopCount": len(hops),
        "conditions": [
            {
                "type": "Ready",
                "status": ready,
                "reason": "Watching",
                "message": "1 artifacts, 0 unhealthy",
                "observedGeneration": 1,
                "lastTransitionTime": since,
            }
        ],
    }


# -- _settle: no write per check for a timestamp alone ---------------------------------------------


def test_a_later_check_with_the_same_counts_keeps_the_written_last_check_time() -> None:
    later = _rfc3339(WRITTEN + 60)
    settled = _settle(status(hop("edge")), status(hop("edge", when=later), since=later), WRITTEN + 60)
    assert settled == status(hop("edge"))  # identical to what is written: no write


def test_changed_counts_refresh_the_last_check_time_of_that_hop_only() -> None:
    later = _rfc3339(WRITTEN + 60)
    known = status(hop("edge"), hop("core"))
    settled = _settle(known, status(hop("edge", when=later), hop("core", 0, 1, when=later)), WRITTEN + 60)
    assert [h["lastCheckTime"] for h in settled["hops"]] == [WRITTEN_AT, later]


@pytest.mark.parametrize(
    ("age", "refreshed"),
    [(STATUS_REFRESH - 1, False), (STATUS_REFRESH, True), (STATUS_REFRESH * 4, True)],
    ids=["fresh", "just-old", "old"],
)
def test_the_last_check_time_is_refreshed_once_it_is_old(age: float, refreshed: bool) -> None:
    now = WRITTEN + age
    settled = _settle(status(hop("edge")), status(hop("edge", when=_rfc3339(now))), now)
    assert settled["hops"][0]["lastCheckTime"] == (_rfc3339(now) if refreshed else WRITTEN_AT)


def test_a_hop_up_change_counts_as_a_change() -> None:
    later = _rfc3339(WRITTEN + 60)
    new = status(hop("edge", when=later))
    new["hops"][0]["up"] = False
    assert _settle(status(hop("edge")), new, WRITTEN + 60)["hops"][0]["lastCheckTime"] == later


@pytest.mark.parametrize(("before", "after", "kept"), [("True", "True", True), ("False", "True", False)])
def test_the_ready_transition_time_is_kept_while_its_status_is_unchanged(
    before: str, after: str, kept: bool
) -> None:
    now = _rfc3339(WRITTEN + 60)
    settled = _settle(
        status(hop("edge"), ready=before), status(hop("edge"), ready=after, since=now), WRITTEN + 60
    )
    assert settled["conditions"][0]["lastTransitionTime"] == (WRITTEN_AT if kept else now)


def test_a_new_hop_or_a_first_status_is_written_as_is() -> None:
    later = _rfc3339(WRITTEN + 60)
    new = status(hop("edge", when=later), hop("extra", when=later), since=later)
    settled = _settle({}, copy.deepcopy(new), WRITTEN + 60)
    assert settled == new
    settled = _settle(status(hop("edge")), copy.deepcopy(new), WRITTEN + 60)
    assert [h["lastCheckTime"] for h in settled["hops"]] == [WRITTEN_AT, later]


def test_a_hop_never_checked_has_no_last_check_time() -> None:
    settled = _settle(status(hop("edge", 0, when=None)), status(hop("edge", 0, when=None)), WRITTEN)
    assert settled["hops"][0]["lastCheckTime"] is None


# -- chain_status: counts from the results ---------------------------------------------------------


def target(name: str) -> Target:
    return Target(name=name, reference=REFERENCE, chain="corp", namespace="team-a")


def test_the_chain_status_counts_artifacts_per_hop_and_overall() -> None:
    operator = service()
    operator.chains = {"corp": CHAIN}
    operator.chain_bodies = {"corp": {"metadata": {"name": "corp", "generation": 4}}}
    operator.metrics.set_hop_up("corp", "edge", True)
    unreachable = replace_at(healthy_chain(), EDGE, observe(EDGE, failure=failure(FaultKind.REFUSED)))
    store = operator.store
    store.put(TargetStatus(target("healthy"), "corp", check_result(healthy_chain(), finished=FINISHED - 10)))
    store.put(
        TargetStatus(
            target("broken"),
            "corp",
            check_result([observe(EDGE, blobs=MISSING), observe(CORE), observe(ORIGIN)]),
        )
    )
    store.put(TargetStatus(target("unreachable"), "corp", check_result(unreachable)))
    store.put(TargetStatus(target("pending"), "corp", pending="semver"))
    store.put(TargetStatus(Target("elsewhere", REFERENCE, "other"), "other", check_result(healthy_chain())))

    written = operator.chain_status("corp")
    assert (
        written["observedGeneration"],
        written["artifacts"],
        written["unhealthy"],
        written["unknown"],
    ) == (4, 4, 1, 2)
    assert written["hopCount"] == 3
    assert written["hops"] == [
        {"name": "edge", "up": True, "artifacts": 3, "healthy": 1, "unhealthy": 1, "unknown": 1,
         "lastCheckTime": _rfc3339(FINISHED)},
        {"name": "core", "up": False, "artifacts": 3, "healthy": 3, "unhealthy": 0, "unknown": 0,
         "lastCheckTime": _rfc3339(FINISHED)},
        {"name": "origin", "up": False, "artifacts": 3, "healthy": 3, "unhealthy": 0, "unknown": 0,
         "lastCheckTime": _rfc3339(FINISHED)},
    ]  # fmt: skip
    (ready,) = written["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Watching")
    assert ready["message"] == "4 artifacts, 1 unhealthy"


def test_a_chain_this_replica_does_not_plan_is_not_ready() -> None:
    operator = service()
    written = operator.chain_status("corp")
    assert (written["artifacts"], written["hops"], written["hopCount"]) == (0, [], 0)
    (ready,) = written["conditions"]
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "NotActive", "not planned")


# -- which OCIRepository events re-plan ------------------------------------------------------------


def body(**changes: Any) -> dict[str, Any]:
    metadata = {"name": "app", "namespace": "team-a", "uid": "u1", "generation": 3, "annotations": {}}
    metadata.update(changes.pop("metadata", {}))
    result: dict[str, Any] = {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "metadata": metadata,
        "spec": {"url": "oci://a.example/p-core/p-ghcr/org/app", "ref": {"tag": TAG}},
        "status": {"artifact": {"revision": f"{TAG}@sha256:{'a' * 64}"}, "conditions": []},
    }
    for key, value in changes.items():
        result[key] = value
    return result


def seen(operator: OperatorService, event: str | None, payload: dict[str, Any]) -> bool:
    """Feed one event; True when it asked for a re-plan."""
    operator._dirty.clear()
    operator.source_event(event, payload)
    return operator._dirty.is_set()


@pytest.mark.parametrize(
    ("changed", "replans"),
    [
        pytest.param(body(), False, id="same-object-again"),
        pytest.param(
            body(
                status={
                    "artifact": {"revision": f"{TAG}@sha256:{'a' * 64}"},
                    "conditions": [{"type": "Ready"}],
                }
            ),
            False,
            id="conditions-only",
        ),
        pytest.param(
            body(metadata={"annotations": {"reconcile.fluxcd.io/requestedAt": "now"}}),
            False,
            id="flux-reconcile",
        ),
        pytest.param(body(metadata={"resourceVersion": "99"}), False, id="resource-version"),
        pytest.param(
            body(status={"artifact": {"revision": f"{TAG}@sha256:{'b' * 64}"}}),
            True,
            id="flux-resolved-new-digest",
        ),
        pytest.param(body(metadata={"generation": 4}), True, id="spec-changed"),
        pytest.param(
            body(metadata={"annotations": {"layerwatch.io/ignore": "true"}}), True, id="our-annotation"
        ),
    ],
)
def test_only_events_that_change_the_plan_trigger_a_replan(changed: dict[str, Any], replans: bool) -> None:
    operator = service()
    assert seen(operator, "ADDED", body())
    assert seen(operator, "MODIFIED", changed) is replans
    assert operator.sources[("team-a", "app")] == FluxSource.from_body(changed)  # always the latest


def test_a_deleted_object_is_forgotten_and_replanned() -> None:
    operator = service()
    seen(operator, None, body())
    assert seen(operator, "DELETED", body())
    assert operator.sources == {}


def test_a_replica_keeps_only_the_objects_of_its_own_shard() -> None:
    replicas = [service(shard_index=i, shard_count=3) for i in range(3)]
    names = [f"app-{n}" for n in range(30)]
    for name in names:
        for replica in replicas:
            replica.source_event("ADDED", body(metadata={"name": name}))
    owned = [set(replica.sources) for replica in replicas]
    assert sorted(key for keys in owned for key in keys) == sorted(("team-a", n) for n in names)
    assert all(keys for keys in owned)
