"""When targets are checked: spread over the interval, kept across re-plans, forgotten when removed.

A fake clock drives planning; runs replace ``check_target`` and the hop ping with fakes, so no test
here touches a network.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerwatch import scheduler as scheduler_module
from layerwatch.chain import Chain, Credentials, HopTarget, Mode, Target
from layerwatch.metrics import Metrics
from layerwatch.reference import Reference
from layerwatch.registry import RegistryClient
from layerwatch.scheduler import Scheduler, Watch, first_due_offset
from layerwatch.store import ResultStore
from layerwatch.verdict import CheckResult, Health

from .builders import CHAIN, REFERENCE, check_result, digest_of, healthy_chain, scraped

INTERVAL = CHAIN.interval
START = 10_000.0


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.now


def watch(name: str, chain: Chain = CHAIN, **kwargs: Any) -> Watch:
    return Watch(
        Target(name=name, reference=REFERENCE, chain=chain.name, namespace="team-a"), chain, **kwargs
    )


def planned(
    watches: Sequence[Watch], chains: Sequence[Chain] = (CHAIN,), clock: FakeClock | None = None
) -> tuple[Scheduler, FakeClock]:
    clock = clock or FakeClock()
    store = ResultStore()
    scheduler = Scheduler(store=store, metrics=Metrics(store), clock=clock)
    scheduler.update({c.name: c for c in chains}, watches)
    return scheduler, clock


def give_result(scheduler: Scheduler, name: str, result: CheckResult) -> None:
    """What a completed check leaves in the store."""
    status = scheduler.store.get(("team-a", name))
    assert status is not None
    scheduler.store.put(dataclasses.replace(status, result=result))


def due(scheduler: Scheduler) -> dict[tuple[str, str], float]:
    return dict(scheduler._due)


def series(scheduler: Scheduler, metric: str, **labels: str) -> float | None:
    return scraped(scheduler.metrics, metric, labels)


# -- spreading -------------------------------------------------------------------------------------


def test_first_checks_are_spread_evenly_over_the_interval() -> None:
    offsets = [first_due_offset((f"team-{n % 17}", f"app-{n}"), 300.0) for n in range(1000)]
    assert all(0.0 <= offset < 300.0 for offset in offsets)
    tenths = collections.Counter(int(offset // 30.0) for offset in offsets)
    assert sorted(tenths) == list(range(10))
    assert all(60 <= count <= 140 for count in tenths.values()), tenths


@settings(max_examples=100, deadline=None)
@given(
    namespace=st.text(max_size=20),
    name=st.text(min_size=1, max_size=40),
    interval=st.floats(min_value=1.0, max_value=86_400.0),
)
def test_a_targets_first_check_has_a_stable_place_in_the_interval(
    namespace: str, name: str, interval: float
) -> None:
    offset = first_due_offset((namespace, name), interval)
    assert 0.0 <= offset < interval
    assert offset == first_due_offset((namespace, name), interval)
    assert first_due_offset((namespace, name), 2 * interval) == pytest.approx(2 * offset)


# -- planning --------------------------------------------------------------------------------------


def test_new_targets_are_first_due_at_their_spread_offset() -> None:
    scheduler, _ = planned([watch("a"), watch("b")])
    assert due(scheduler) == {
        ("team-a", key): START + first_due_offset(("team-a", key), INTERVAL) for key in ("a", "b")
    }


def test_replanning_the_same_watches_keeps_their_due_times() -> None:
    scheduler, clock = planned([watch("a"), watch("b")])
    before = due(scheduler)
    clock.now += 123.0
    scheduler.update({"corp": CHAIN}, [watch("a"), watch("b")])
    assert due(scheduler) == before


def test_adding_a_target_does_not_move_the_others() -> None:
    scheduler, clock = planned([watch("a")])
    before = due(scheduler)[("team-a", "a")]
    clock.now += 50.0
    scheduler.update({"corp": CHAIN}, [watch("a"), watch("b")])
    assert due(scheduler)[("team-a", "a")] == before
    assert due(scheduler)[("team-a", "b")] == START + 50.0 + first_due_offset(("team-a", "b"), INTERVAL)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"pinned_digest": digest_of("flux moved on")}, id="flux-pinned-another-digest"),
        pytest.param(
            {
                "target": Target(
                    "a", Reference.parse("a.example/p-core/p-ghcr/org/app:v2"), "corp", None, "team-a"
                )
            },
            id="another-tag",
        ),
        pytest.param(
            {"target": Target("a", REFERENCE, "corp", "application/x-yaml", "team-a")}, id="layer-selector"
        ),
    ],
)
def test_a_target_whose_check_changed_is_checked_right_away(change: dict[str, Any]) -> None:
    scheduler, clock = planned([watch("a")])
    clock.now += 10.0
    changed = dataclasses.replace(watch("a"), **change)
    scheduler.update({"corp": changed.chain}, [changed])
    assert due(scheduler)[("team-a", "a")] == clock.now


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param({"mode": Mode.HEAD}, id="chain-mode"),
        pytest.param(
            {
                "hops": (
                    dataclasses.replace(CHAIN.hops[0], credentials=Credentials("robot", "new")),
                    *CHAIN.hops[1:],
                )
            },
            id="rotated-credentials",
        ),
    ],
)
def test_a_chain_edit_keeps_each_targets_phase_so_its_targets_do_not_all_fall_due_at_once(
    edit: dict[str, Any],
) -> None:
    names = [f"t{index}" for index in range(20)]
    scheduler, clock = planned([watch(name) for name in names])
    before = due(scheduler)
    clock.now += 10.0
    edited = dataclasses.replace(CHAIN, **edit)
    scheduler.update({"corp": edited}, [watch(name, edited) for name in names])
    assert due(scheduler) == before
    assert len({round(when) for when in before.values()}) > 15, "the targets were spread to begin with"


def test_a_new_interval_respreads_the_targets_over_it() -> None:
    scheduler, clock = planned([watch("a")])
    clock.now += 10.0
    hourly = dataclasses.replace(CHAIN, interval=3600.0)
    scheduler.update({"corp": hourly}, [watch("a", hourly)])
    assert due(scheduler)[("team-a", "a")] == clock.now + first_due_offset(("team-a", "a"), 3600.0)


def test_a_removed_target_is_forgotten_by_the_store_and_the_metrics() -> None:
    scheduler, _ = planned([watch("a"), watch("b")])
    give_result(scheduler, "a", check_result(healthy_chain()))
    assert series(
        scheduler, "layerwatch_artifact_hop_healthy", namespace="team-a", name="a", chain="corp", hop="edge"
    )
    scheduler.update({"corp": CHAIN}, [watch("b")])
    assert scheduler.store.get(("team-a", "a")) is None
    assert ("team-a", "a") not in due(scheduler)
    assert (
        series(
            scheduler,
            "layerwatch_artifact_hop_healthy",
            namespace="team-a",
            name="a",
            chain="corp",
            hop="edge",
        )
        is None
    )
    assert scheduler.store.get(("team-a", "b")) is not None


def test_an_unchanged_target_keeps_its_last_result_across_replans() -> None:
    scheduler, _ = planned([watch("a")])
    result = check_result(healthy_chain())
    give_result(scheduler, "a", result)
    scheduler.update({"corp": CHAIN}, [watch("a")])
    status = scheduler.store.get(("team-a", "a"))
    assert status is not None and status.result is result


def test_a_target_moved_to_another_chain_loses_the_old_chains_result() -> None:
    other = Chain(name="other", hops=CHAIN.hops)
    scheduler, _ = planned([watch("a")], chains=(CHAIN, other))
    give_result(scheduler, "a", check_result(healthy_chain()))
    scheduler.update({"corp": CHAIN, "other": other}, [watch("a", other)])
    status = scheduler.store.get(("team-a", "a"))
    assert status is not None
    assert (status.chain, status.result) == ("other", None)


def test_a_removed_chain_loses_all_its_series_and_other_chains_keep_theirs() -> None:
    other = Chain(name="other", hops=CHAIN.hops)
    scheduler, _ = planned([watch("a"), watch("b", other)], chains=(CHAIN, other))
    for chain in ("corp", "other"):
        scheduler.metrics.record_check(chain, check_result(healthy_chain()))
        scheduler.metrics.set_hop_up(chain, "edge", True)
    scheduler.update({"other": other}, [watch("b", other)])
    for metric, labels in [
        ("layerwatch_checks_total", {"hop": "edge", "verdict": "Healthy"}),
        ("layerwatch_hop_up", {"hop": "edge"}),
        ("layerwatch_check_duration_seconds_count", {"hop": "edge"}),
    ]:
        assert series(scheduler, metric, chain="corp", **labels) is None, metric
        assert series(scheduler, metric, chain="other", **labels) is not None, metric
    assert series(scheduler, "layerwatch_chain_interval_seconds", chain="corp") is None
    assert series(scheduler, "layerwatch_chain_interval_seconds", chain="other") == INTERVAL


def test_a_pending_target_is_shown_with_its_reason_and_never_due() -> None:
    scheduler, _ = planned([watch("a", pending="semver ref not resolved by Flux yet")])
    status = scheduler.store.get(("team-a", "a"))
    assert status is not None
    assert (status.pending, status.result) == ("semver ref not resolved by Flux yet", None)


def test_a_target_flux_resolved_is_no_longer_shown_as_pending() -> None:
    semver = Target("a", dataclasses.replace(REFERENCE, tag=">=1.0.0"), "corp", None, "team-a")
    scheduler, clock = planned([Watch(semver, CHAIN, pending="semver ref not resolved by Flux yet")])
    clock.now += 30.0
    resolved = watch("a", pinned_digest=digest_of("1.4.2"))
    scheduler.update({"corp": CHAIN}, [resolved])
    status = scheduler.store.get(("team-a", "a"))
    assert status is not None
    assert status.pending is None
    assert status.target == resolved.target
    assert due(scheduler)[("team-a", "a")] == clock.now


# -- running ---------------------------------------------------------------------------------------


class FakeChecks:
    """Stands in for ``check_target``: records which references were checked, when asked."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.checked: list[str] = []
        self.fail = fail or set()
        self.event = asyncio.Event()

    async def __call__(
        self, reference: Reference, path: Sequence[HopTarget], *_: Any, **__: Any
    ) -> CheckResult:
        self.checked.append(path[0].repository)
        self.event.set()
        if path[0].repository in self.fail:
            raise RuntimeError("a bug in one check")
        return check_result(healthy_chain(), reference=reference)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> FakeChecks:
    fake = FakeChecks()

    async def ping(self: RegistryClient) -> None:
        return None  # up

    monkeypatch.setattr(scheduler_module, "check_target", fake)
    monkeypatch.setattr(RegistryClient, "ping", ping)
    return fake


def per_repository(name: str) -> Watch:
    reference = Reference.parse(f"a.example/p-core/p-ghcr/org/{name}:v1")
    return Watch(Target(name=name, reference=reference, chain="corp", namespace="team-a"), CHAIN)


async def until(condition: Any) -> None:
    """Wait (at most two seconds) until ``condition()`` holds."""
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached within 2 s")


async def test_due_targets_are_checked_and_the_others_wait(checks: FakeChecks) -> None:
    names = sorted(("early", "late"), key=lambda n: first_due_offset(("team-a", n), INTERVAL))
    offsets = [first_due_offset(("team-a", n), INTERVAL) for n in names]
    results: list[str] = []

    async def on_result(w: Watch, result: CheckResult) -> None:
        results.append(w.target.name)

    clock = FakeClock()
    store = ResultStore()
    scheduler = Scheduler(store=store, metrics=Metrics(store), clock=clock, on_result=on_result)
    scheduler.update({"corp": CHAIN}, [per_repository(n) for n in names])
    clock.now = START + sum(offsets) / 2  # past the first's offset, before the second's
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await until(lambda: results)
    await asyncio.sleep(0.1)
    assert checks.checked == [f"p-core/p-ghcr/org/{names[0]}"]
    assert results == [names[0]]
    status = store.get(("team-a", names[0]))
    assert status is not None and status.result is not None
    assert (
        scraped(
            scheduler.metrics,
            "layerwatch_checks_total",
            {"chain": "corp", "hop": "edge", "verdict": "Healthy"},
        )
        == 1.0
    )
    assert scraped(scheduler.metrics, "layerwatch_hop_up", {"chain": "corp", "hop": "origin"}) == 1.0
    next_due = due(scheduler)[("team-a", names[0])]
    assert clock.now + 0.9 * INTERVAL <= next_due <= clock.now + 1.1 * INTERVAL
    stop.set()
    async with asyncio.timeout(1.0):
        await task


async def test_stop_ends_a_run_promptly_even_with_nothing_due(checks: FakeChecks) -> None:
    scheduler, _ = planned([per_repository("app")])
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await asyncio.sleep(0.05)
    stop.set()
    async with asyncio.timeout(0.5):
        await task
    assert checks.checked == []


async def test_a_check_that_raises_does_not_stop_the_others_and_is_not_silent(checks: FakeChecks) -> None:
    checks.fail = {"p-core/p-ghcr/org/broken"}
    scheduler, clock = planned([per_repository("broken"), per_repository("fine")])
    clock.now += INTERVAL  # both due
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await until(lambda: getattr(scheduler.store.get(("team-a", "fine")), "result", None) is not None)
    await until(lambda: getattr(scheduler.store.get(("team-a", "broken")), "result", None) is not None)
    assert sorted(checks.checked) == ["p-core/p-ghcr/org/broken", "p-core/p-ghcr/org/fine"]
    broken = scheduler.store.get(("team-a", "broken"))
    assert broken is not None and broken.result is not None
    # The bug ends as an unknown verdict on every hop (a condition and a metric someone sees).
    assert broken.result.judgement.health is Health.UNKNOWN
    assert (
        "internal error in layerwatch (RuntimeError: a bug in one check)" in broken.result.judgement.message
    )
    stop.set()
    async with asyncio.timeout(1.0):
        await task


async def test_a_pending_target_is_not_checked_and_does_not_keep_the_loop_busy(checks: FakeChecks) -> None:
    scheduler, clock = planned(
        [per_repository("app"), dataclasses.replace(per_repository("semver"), pending="x")]
    )
    clock.now += INTERVAL  # both past their first due time
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await until(lambda: checks.checked)
    await asyncio.sleep(0.1)
    calls = clock.calls
    await asyncio.sleep(0.5)
    stop.set()
    async with asyncio.timeout(1.0):
        await task
    assert checks.checked == ["p-core/p-ghcr/org/app"]
    # Nothing is due for another interval: the loop sleeps instead of waking every 50 ms.
    assert clock.calls - calls <= 4, f"{clock.calls - calls} wake-ups in half a second"


async def test_check_now_checks_a_target_at_once_and_skips_pending_or_unknown_ones(
    checks: FakeChecks,
) -> None:
    scheduler, _ = planned(
        [per_repository("app"), dataclasses.replace(per_repository("semver"), pending="x")]
    )
    try:
        result = await scheduler.check_now(("team-a", "app"))
        assert result is not None and result.judgement.verdict.value == "Healthy"
        assert await scheduler.check_now(("team-a", "semver")) is None
        assert await scheduler.check_now(("team-a", "nope")) is None
        assert checks.checked == ["p-core/p-ghcr/org/app"]
    finally:
        await scheduler.aclose()


async def test_a_pending_target_keeps_its_phase_unchecked_and_keeps_it_once_no_longer_pending(
    checks: FakeChecks,
) -> None:
    scheduler, clock = planned([watch("a", pending="ProxyChain corp is not ready: x")])
    phase = due(scheduler)[("team-a", "a")]
    clock.now = phase + 0.01
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await until(lambda: due(scheduler)[("team-a", "a")] != phase)
    stop.set()
    await task
    later = due(scheduler)[("team-a", "a")]
    assert INTERVAL * 0.89 < later - phase < INTERVAL * 1.11, "still one interval apart"
    assert checks.checked == []
    scheduler.update({"corp": CHAIN}, [watch("a")])
    assert due(scheduler)[("team-a", "a")] == later
