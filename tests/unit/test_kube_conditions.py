"""The layerwatch.io/ProxyHealthy condition on an OCIRepository and its transition events."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerwatch.kube.conditions import CONDITION_TYPE, desired_condition, merge_conditions, transition
from layerwatch.observation import BlobStatus, FaultKind
from layerwatch.reference import short_digest
from layerwatch.verdict import HopVerdict, Judgement, Verdict, judge

from .builders import CONTENT, TAG_UNKNOWN, failure, healthy_chain, observe, replace_at

EDGE, CORE, ORIGIN = 0, 1, 2
T0, T1, T2, T3 = (
    "2024-05-01T10:00:00Z",
    "2024-05-01T10:05:00Z",
    "2024-05-01T10:10:00Z",
    "2024-05-01T10:15:00Z",
)

MISSING = {0: (BlobStatus.MISSING, "missing (404)")}
HEALTHY = judge(healthy_chain())
CORE_LOST_A_LAYER = judge([observe(EDGE, blobs=MISSING), observe(CORE, blobs=MISSING), observe(ORIGIN)])
EDGE_UNREACHABLE = judge(replace_at(healthy_chain(), EDGE, observe(EDGE, failure=failure(FaultKind.REFUSED))))

FLUX_CONDITIONS: list[dict[str, Any]] = [
    {
        "type": "Ready",
        "status": "True",
        "reason": "Succeeded",
        "message": "stored artifact for digest 'v1@sha256:…'",
        "observedGeneration": 3,
        "lastTransitionTime": T0,
    },
    {"type": "ArtifactInStorage", "status": "True", "reason": "Succeeded", "lastTransitionTime": T0},
    {"type": "Reconciling", "status": "False", "reason": "Succeeded", "lastTransitionTime": T0, "x": [1]},
]


def judged(verdict: Verdict, message: str, notes: tuple[str, ...] = ()) -> Judgement:
    hops = (HopVerdict("core", verdict, message),)
    blame = None if verdict is Verdict.HEALTHY else "core"
    return Judgement(hops, verdict, blame, None, notes)


def ours(status: str, reason: str, when: str = T0, message: str = "m", generation: int = 3) -> dict[str, Any]:
    return {
        "type": CONDITION_TYPE,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": when,
    }


def entry(conditions: list[dict[str, Any]] | None) -> dict[str, Any]:
    assert conditions is not None
    (found,) = [c for c in conditions if c["type"] == CONDITION_TYPE]
    return found


# -- the condition for a result --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("judgement", "status", "reason"),
    [
        pytest.param(HEALTHY, "True", "Healthy", id="healthy"),
        pytest.param(CORE_LOST_A_LAYER, "False", "LayerMissing", id="unhealthy"),
        pytest.param(EDGE_UNREACHABLE, "Unknown", "Unreachable", id="unknown"),
        pytest.param(None, "Unknown", "Pending", id="not-checked-yet"),
    ],
)
def test_the_condition_status_and_reason_follow_the_verdict_of_the_blamed_hop(
    judgement: Judgement | None, status: str, reason: str
) -> None:
    condition = desired_condition(judgement, 7)
    assert condition["type"] == "layerwatch.io/ProxyHealthy"
    assert (condition["status"], condition["reason"], condition["observedGeneration"]) == (status, reason, 7)
    assert "lastTransitionTime" not in condition  # merge_conditions decides it


def test_an_unhealthy_message_names_hop_repository_layer_and_short_digest() -> None:
    message = desired_condition(CORE_LOST_A_LAYER, 1)["message"]
    assert (
        message
        == f"hop core (b.example/p-ghcr/org/app): layer 0 {short_digest(CONTENT.digest)} missing (404)"
    )


def test_an_edge_that_only_passes_on_a_down_core_is_false_with_a_message_naming_core_as_the_cause() -> None:
    """What Flux meets at the edge is the reason; the message says core causes it and that it heals."""
    observations = replace_at(
        healthy_chain(), 1, observe(1, failure=failure(FaultKind.HOP_DOWN, "connection refused"))
    )
    observations = replace_at(observations, 0, observe(0, manifest_problem=TAG_UNKNOWN))
    condition = desired_condition(judge(observations), 1)
    assert (condition["status"], condition["reason"]) == ("False", "ManifestMissing")
    assert condition["message"] == (
        "hop edge (a.example/p-core/p-ghcr/org/app): tag v1 unknown (404); passed on from hop core "
        "(Unreachable there); upstream-down: answers in place of hop core, which could not be checked "
        "(Unreachable), for what it has not cached itself; heals by itself; bring hop core back; nothing "
        "to fix at this hop; hop core (b.example/p-ghcr/org/app): hop down (connection refused); probed "
        "again once per interval"
    )


def test_a_target_of_a_chain_that_is_not_ready_is_unknown_with_that_reason() -> None:
    condition = desired_condition(
        None, 3, pending="ProxyChain corp is not ready: x", pending_reason="ChainNotReady"
    )
    assert (condition["status"], condition["reason"]) == ("Unknown", "ChainNotReady")
    assert condition["message"] == "ProxyChain corp is not ready: x"


def test_a_target_not_checked_yet_says_so_or_says_why_it_is_pending() -> None:
    assert desired_condition(None, 1)["message"] == "not checked yet"
    pending = desired_condition(None, 1, pending="semver ref not resolved by Flux yet")
    assert (pending["status"], pending["reason"]) == ("Unknown", "Pending")
    assert pending["message"] == "semver ref not resolved by Flux yet"


def test_notes_such_as_flux_being_behind_are_appended_to_the_message() -> None:
    condition = desired_condition(judged(Verdict.HEALTHY, "hop core: ok", ("Flux is behind: …", "other")), 1)
    assert condition["message"] == "hop core: ok; Flux is behind: …; other"
    assert condition["status"] == "True"


@pytest.mark.parametrize(
    "message",
    [
        "first line\nsecond line",
        "tabs\tand\r\ncarriage returns",
        "  padded  ",
        "x" * 5000,
        "line\n" * 400,
    ],
    ids=["newline", "crlf-tab", "padded", "very-long", "many-lines"],
)
def test_the_message_is_one_bounded_line(message: str) -> None:
    written = desired_condition(judged(Verdict.LAYER_CORRUPT, message, ("note\nwith newline",)), 1)["message"]
    assert "\n" not in written and "\r" not in written and "\t" not in written
    assert written == written.strip()
    assert 0 < len(written) <= 1024


# -- merging into Flux's list ----------------------------------------------------------------------


def test_foreign_conditions_are_kept_untouched_and_in_order() -> None:
    before = copy.deepcopy(FLUX_CONDITIONS)
    merged = merge_conditions(FLUX_CONDITIONS, desired_condition(CORE_LOST_A_LAYER, 3), T1)
    assert merged is not None
    assert [c for c in merged if c["type"] != CONDITION_TYPE] == before
    assert before == FLUX_CONDITIONS  # the input list is not modified
    assert entry(merged)["lastTransitionTime"] == T1


def test_replacing_our_condition_keeps_the_foreign_ones_around_it_in_order() -> None:
    conditions = [FLUX_CONDITIONS[0], ours("True", "Healthy"), FLUX_CONDITIONS[1], FLUX_CONDITIONS[2]]
    merged = merge_conditions(conditions, desired_condition(CORE_LOST_A_LAYER, 3), T1)
    assert merged is not None
    assert [c for c in merged if c["type"] != CONDITION_TYPE] == FLUX_CONDITIONS
    assert sum(1 for c in merged if c["type"] == CONDITION_TYPE) == 1


def test_nothing_to_write_when_the_condition_is_unchanged() -> None:
    desired = desired_condition(CORE_LOST_A_LAYER, 3)
    first = merge_conditions(FLUX_CONDITIONS, desired, T1)
    assert first is not None
    assert merge_conditions(first, desired, T2) is None


@pytest.mark.parametrize(
    ("current", "desired", "moves"),
    [
        pytest.param(("True", "Healthy"), ("False", "LayerMissing"), True, id="turns-unhealthy"),
        pytest.param(("False", "LayerMissing"), ("True", "Healthy"), True, id="recovers"),
        pytest.param(("True", "Healthy"), ("Unknown", "Unreachable"), True, id="turns-unknown"),
        pytest.param(("Unknown", "Pending"), ("True", "Healthy"), True, id="first-check"),
        pytest.param(("False", "LayerMissing"), ("False", "LayerCorrupt"), False, id="reason-changes-only"),
        pytest.param(("Unknown", "Unreachable"), ("Unknown", "AuthFailed"), False, id="unknown-reason-only"),
        pytest.param(("True", "Healthy"), ("True", "Healthy"), False, id="message-changes-only"),
    ],
)
def test_last_transition_time_moves_only_when_the_status_moves(
    current: tuple[str, str], desired: tuple[str, str], moves: bool
) -> None:
    conditions = [*FLUX_CONDITIONS, ours(*current, when=T0, message="before")]
    wanted = {**ours(*desired, message="after")}
    del wanted["lastTransitionTime"]
    merged = merge_conditions(conditions, wanted, T1)
    assert merged is not None  # something changed: status, reason or message
    assert entry(merged)["lastTransitionTime"] == (T1 if moves else T0)
    assert (entry(merged)["status"], entry(merged)["reason"], entry(merged)["message"]) == (*desired, "after")


def test_a_new_generation_alone_is_written_and_keeps_the_transition_time() -> None:
    conditions = [*FLUX_CONDITIONS, ours("True", "Healthy", generation=3)]
    wanted = {k: v for k, v in ours("True", "Healthy", generation=4).items() if k != "lastTransitionTime"}
    merged = merge_conditions(conditions, wanted, T1)
    assert entry(merged)["observedGeneration"] == 4
    assert entry(merged)["lastTransitionTime"] == T0


def test_our_condition_without_a_transition_time_gets_one() -> None:
    current = ours("True", "Healthy")
    del current["lastTransitionTime"]
    wanted = dict(current)
    merged = merge_conditions([current], wanted, T1)
    assert entry(merged)["lastTransitionTime"] == T1


CONDITION_TYPES = st.sampled_from(["Ready", "Reconciling", "Stalled", "FetchFailed", "ArtifactInStorage"])
FOREIGN = st.fixed_dictionaries(
    {"type": CONDITION_TYPES, "status": st.sampled_from(["True", "False", "Unknown"])},
    optional={"reason": st.text(max_size=8), "lastTransitionTime": st.just(T0), "extra": st.integers()},
)
DESIRED = st.builds(
    lambda status, reason, message, generation: {
        "type": CONDITION_TYPE,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    },
    st.sampled_from(["True", "False", "Unknown"]),
    st.sampled_from([v.value for v in Verdict] + ["Pending"]),
    st.text(max_size=20),
    st.integers(min_value=0, max_value=5),
)


@settings(max_examples=200, deadline=None)
@given(
    foreign=st.lists(FOREIGN, max_size=5),
    position=st.integers(min_value=0, max_value=5),
    existing=st.one_of(st.none(), DESIRED),
    desired=DESIRED,
)
def test_merging_never_touches_foreign_conditions_and_a_second_merge_writes_nothing(
    foreign: list[dict[str, Any]],
    position: int,
    existing: dict[str, Any] | None,
    desired: dict[str, Any],
) -> None:
    conditions = list(foreign)
    if existing is not None:
        conditions.insert(min(position, len(conditions)), {**existing, "lastTransitionTime": T0})
    before = copy.deepcopy(conditions)
    merged = merge_conditions(conditions, desired, T1)
    assert conditions == before
    if merged is None:
        assert existing is not None and {**existing, "lastTransitionTime": T0} == {
            **desired,
            "lastTransitionTime": T0,
        }
        return
    assert [c for c in merged if c["type"] != CONDITION_TYPE] == foreign
    mine = entry(merged)
    assert {k: v for k, v in mine.items() if k != "lastTransitionTime"} == desired
    expected_time = T0 if existing is not None and existing["status"] == desired["status"] else T1
    assert mine["lastTransitionTime"] == expected_time
    assert merge_conditions(merged, desired, T2) is None


# -- transition events -----------------------------------------------------------------------------

Cond = tuple[str, str] | None


def event_for(
    before: Cond, after: tuple[str, str], when: str = T0, uid: str = "uid-1", *, warned: bool = False
) -> Any:
    conditions = [*FLUX_CONDITIONS] + ([ours(*before, when=when)] if before else [])
    desired = {**ours(*after, message="hop core (b.example/p-ghcr/org/app): layer 0 missing (404)")}
    return transition("team-a", "app", uid, conditions, desired, warned=warned)


@pytest.mark.parametrize(
    "spell", [("Unknown", "Unreachable"), ("Unknown", "ChainNotReady"), ("Unknown", "Pending")]
)
def test_healthy_after_an_unknown_spell_that_followed_a_warning_is_a_recovery(spell: tuple[str, str]) -> None:
    event = event_for(spell, ("True", "Healthy"), warned=True)
    assert event is not None and (event.type, event.reason) == ("Normal", "ProxyRecovered")
    assert event_for(spell, ("True", "Healthy"), warned=False) is None


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param(
            None, ("False", "LayerMissing"), ("Warning", "LayerMissing"), id="first-check-unhealthy"
        ),
        pytest.param(
            ("Unknown", "Pending"), ("False", "LayerCorrupt"), ("Warning", "LayerCorrupt"), id="pending"
        ),
        pytest.param(
            ("True", "Healthy"), ("False", "LayerMissing"), ("Warning", "LayerMissing"), id="breaks"
        ),
        pytest.param(
            ("Unknown", "Unreachable"),
            ("False", "DigestMismatch"),
            ("Warning", "DigestMismatch"),
            id="from-unknown",
        ),
        pytest.param(
            ("False", "LayerMissing"),
            ("False", "LayerCorrupt"),
            ("Warning", "LayerCorrupt"),
            id="other-fault",
        ),
        pytest.param(
            ("False", "LayerMissing"), ("True", "Healthy"), ("Normal", "ProxyRecovered"), id="recovers"
        ),
        pytest.param(("False", "LayerMissing"), ("False", "LayerMissing"), None, id="still-broken"),
        pytest.param(("True", "Healthy"), ("True", "Healthy"), None, id="still-healthy"),
        pytest.param(None, ("True", "Healthy"), None, id="first-check-healthy"),
        pytest.param(("Unknown", "Pending"), ("True", "Healthy"), None, id="pending-then-healthy"),
        pytest.param(("Unknown", "Unreachable"), ("True", "Healthy"), None, id="reachable-again"),
        pytest.param(("True", "Healthy"), ("Unknown", "Unreachable"), None, id="turns-unknown"),
        pytest.param(("False", "LayerMissing"), ("Unknown", "Unreachable"), None, id="unhealthy-to-unknown"),
        pytest.param(("Unknown", "Unreachable"), ("Unknown", "AuthFailed"), None, id="unknown-reason"),
    ],
)
def test_events_are_posted_on_transitions_only(
    before: Cond, after: tuple[str, str], expected: tuple[str, str] | None
) -> None:
    event = event_for(before, after)
    if expected is None:
        assert event is None
        return
    assert event is not None
    assert (event.type, event.reason) == expected
    assert event.message == "hop core (b.example/p-ghcr/org/app): layer 0 missing (404)"


def test_the_same_transition_redone_after_a_restart_has_the_same_event_name() -> None:
    first = event_for(("True", "Healthy"), ("False", "LayerMissing"))
    again = event_for(("True", "Healthy"), ("False", "LayerMissing"))
    assert first is not None and again is not None
    assert first.name == again.name


def test_a_later_transition_of_the_same_kind_has_a_new_event_name() -> None:
    # healthy since T0 -> broken; recovered at T2 -> broken again: two Warnings, both posted.
    first = event_for(("True", "Healthy"), ("False", "LayerMissing"), when=T0)
    second = event_for(("True", "Healthy"), ("False", "LayerMissing"), when=T2)
    recovered = event_for(("False", "LayerMissing"), ("True", "Healthy"), when=T1)
    recovered_again = event_for(("False", "LayerMissing"), ("True", "Healthy"), when=T3)
    names = [e.name for e in (first, second, recovered, recovered_again)]
    assert len(set(names)) == 4


def test_event_names_differ_per_object_and_per_outcome() -> None:
    base = event_for(("True", "Healthy"), ("False", "LayerMissing"))
    other_uid = event_for(("True", "Healthy"), ("False", "LayerMissing"), uid="uid-2")
    other_reason = event_for(("True", "Healthy"), ("False", "LayerCorrupt"))
    assert len({base.name, other_uid.name, other_reason.name}) == 3


@pytest.mark.parametrize("name", ["app", "a" * 253, "my.app-1"])
def test_event_names_are_valid_kubernetes_names(name: str) -> None:
    event = transition("team-a", name, "uid", [], {**ours("False", "LayerMissing")})
    assert event is not None
    assert len(event.name) <= 253
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", event.name), event.name
    assert event.name.startswith(name[:200])


def test_a_transition_does_not_modify_the_conditions_it_reads() -> None:
    conditions: list[Mapping[str, Any]] = [*FLUX_CONDITIONS, ours("True", "Healthy")]
    before = copy.deepcopy(conditions)
    transition("team-a", "app", "uid", conditions, ours("False", "LayerMissing"))
    assert conditions == before
