"""The one place that decides when each target is checked.

Each target is due once per its chain's interval. First checks are spread over the interval by a
stable hash of the target's key, and every later one is jittered by ±10 %, so a thousand targets
never hit a registry in the same second (no thundering herd after a restart either). ``update``
re-plans when chains or targets change; removed targets and chains lose their series at once.
Registry clients live per hop for as long as the hop is unchanged, so tokens and connections are
reused across checks; each chain has a blob cache that lives one interval.

Fairness: each chain has its own check slots, and each registry endpoint its own request limit
and health, so a hop that hangs or is down holds up nobody else's checks. Pings run beside the
dispatch loop, never in it. The loop records every turn (``alive``); a failing turn is logged and
retried, it never ends the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import heapq
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from layerwatch.canary import CanaryResult, run_canary
from layerwatch.chain import Chain, Hop, HopTarget, Target
from layerwatch.check import BlobCache, check_target, failed_result
from layerwatch.metrics import Metrics
from layerwatch.observation import Fault, FaultKind
from layerwatch.registry import Endpoint, EndpointState, RegistryClient, endpoint_of
from layerwatch.settings import EngineSettings
from layerwatch.store import ResultStore, TargetStatus
from layerwatch.verdict import CheckResult

__all__ = ["CanaryHook", "ResultHook", "Scheduler", "Watch", "first_due_offset"]

logger = logging.getLogger("layerwatch.scheduler")

ResultHook = Callable[["Watch", CheckResult], Awaitable[None]]
CanaryHook = Callable[[CanaryResult], Awaitable[None]]
JITTER = 0.1
"""Fraction of the interval by which a check's next due time may move either way."""
MAX_WAKE = 30.0
"""The loop turns at least this often, so its liveness means something."""


@dataclasses.dataclass(frozen=True)
class Watch:
    """A target as the scheduler runs it: its chain, Flux's pinned digest, and hop overrides."""

    target: Target
    chain: Chain
    pinned_digest: str | None = None
    entry_hop: Hop | None = None
    """Replaces the hop the target's URL points at (its credentials come from the OCIRepository)."""
    pending: str | None = None
    """When set the target is not checked and shows as unknown with this reason."""
    pending_reason: str = "Pending"

    def pull_path(self) -> list[HopTarget]:
        path = self.chain.pull_path(self.target.reference)
        if self.entry_hop is not None and path:
            path[0] = HopTarget(self.entry_hop, path[0].repository)
        return path


def first_due_offset(key: tuple[str, str], interval: float) -> float:
    """Where in the interval a target's first check falls: stable per target, spread uniformly."""
    digest = hashlib.sha256("/".join(key).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * interval


class Scheduler:
    """Runs checks when due (at most ``parallel_checks`` per chain) and keeps results and metrics current."""

    def __init__(
        self,
        *,
        store: ResultStore,
        metrics: Metrics,
        settings: EngineSettings | None = None,
        on_result: ResultHook | None = None,
        on_canary: CanaryHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.metrics = store, metrics
        self.settings = settings or EngineSettings()
        self.on_result = on_result
        self.on_canary = on_canary
        self._clock = clock
        self.last_turn = clock()
        """When the dispatch loop last completed a turn (liveness)."""
        self._watches: dict[tuple[str, str], Watch] = {}
        self._due: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []
        """Due times in order; an entry no longer equal to ``_due[key]`` is stale and skipped."""
        self._chains: dict[str, Chain] = {}
        self._caches: dict[str, BlobCache] = {}
        self._clients: dict[tuple[str, Hop], RegistryClient] = {}
        self._states: dict[Endpoint, EndpointState] = {}
        self._ping_due: dict[str, float] = {}
        self._pings: set[asyncio.Task[None]] = set()
        self._running: dict[tuple[str, str], asyncio.Task[CheckResult | None]] = {}
        self._canary_due: dict[str, float] = {}
        self._canaries: dict[str, asyncio.Task[CanaryResult | None]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._changed = asyncio.Event()

    # -- planning ------------------------------------------------------------------------------

    def update(self, chains: Mapping[str, Chain], watches: Iterable[Watch]) -> None:
        """Replace the whole plan. Unchanged targets keep their due time; new ones are spread."""
        now = self._clock()
        for name in set(self._chains) - set(chains):
            self._stop_canary(name)
            self.metrics.forget_chain(name)
            self._caches.pop(name, None)
            self._ping_due.pop(name, None)
        for name, chain in chains.items():
            if self._chains.get(name) != chain:
                self._caches[name] = BlobCache(chain.interval)
                self._ping_due[name] = now
                self._plan_canary(name, chain, now)
            self.metrics.set_chain(name, chain.interval, [hop.name for hop in chain.hops])
        self._chains = dict(chains)
        fresh = {w.target.key: w for w in watches}
        for key in set(self._watches) - set(fresh):
            self._forget(key)
        for key, watch in fresh.items():
            previous = self._watches.get(key)
            if previous is None or previous.chain.interval != watch.chain.interval:
                self._schedule(key, now + first_due_offset(key, watch.chain.interval))
            if previous != watch:
                if previous is not None and previous.chain.name != watch.chain.name:
                    self.store.remove(key)
                if watch.pending:
                    self.store.put(
                        TargetStatus(
                            watch.target,
                            watch.chain.name,
                            pending=watch.pending,
                            pending_reason=watch.pending_reason,
                        )
                    )
                elif self.store.get(key) is None or (previous is not None and previous.pending):
                    # Flux resolved a pending target: stop showing the old ref and reason as pending.
                    self.store.put(TargetStatus(watch.target, watch.chain.name))
                if (
                    previous is not None
                    and not watch.pending
                    and self._identity(previous) != self._identity(watch)
                ):
                    self._schedule(key, now)  # what to check changed: check it now.
        self._watches = fresh
        self._retire_clients()
        self._changed.set()

    def _plan_canary(self, name: str, chain: Chain, now: float) -> None:
        """A chain with a canary runs it once per interval, its first run spread like a target's."""
        self._stop_canary(name)
        if chain.canary is not None and not chain.suspend:
            self._canary_due[name] = now + first_due_offset(("canary", name), chain.interval)

    def _stop_canary(self, name: str) -> None:
        self._canary_due.pop(name, None)
        task = self._canaries.pop(name, None)
        if task is not None:
            task.cancel()
        self.store.remove_canary(name)

    @staticmethod
    def _identity(watch: Watch) -> tuple[object, ...]:
        """What makes a target a different one to check at once; chain and credential edits keep
        each target's due time (its phase in the interval), so they cause no herd."""
        return (watch.target, watch.pinned_digest)

    def _schedule(self, key: tuple[str, str], when: float) -> None:
        self._due[key] = when
        heapq.heappush(self._heap, (when, key))

    def _forget(self, key: tuple[str, str]) -> None:
        self._due.pop(key, None)
        task = self._running.pop(key, None)
        if task is not None:
            task.cancel()
        self.store.remove(key)

    def _retire_clients(self) -> None:
        live = {(w.chain.name, t.hop) for w in self._watches.values() if not w.pending for t in w.pull_path()}
        live |= {(c.name, hop) for c in self._chains.values() for hop in c.hops}
        live |= {(c.name, c.canary_push_hop()) for c in self._chains.values() if c.canary is not None}
        for key in [k for k in self._clients if k not in live]:
            del self._clients[key]
        endpoints = {endpoint_of(hop) for _, hop in live}
        for endpoint in [e for e in self._states if e not in endpoints]:
            asyncio.get_running_loop().create_task(self._states.pop(endpoint).aclose())
        for endpoint, state in self._states.items():
            intervals = [
                c.interval for c in self._chains.values() if any(endpoint_of(h) == endpoint for h in c.hops)
            ]
            state.probe_interval = min(intervals, default=state.probe_interval)

    def client(self, chain: str, hop: Hop) -> RegistryClient:
        """The client for a hop of a chain; all clients of one endpoint share its state."""
        key = (chain, hop)
        if key not in self._clients:
            endpoint = endpoint_of(hop)
            state = self._states.get(endpoint)
            if state is None:
                state = self._states[endpoint] = EndpointState(endpoint, self.settings)
                interval = self._chains[chain].interval if chain in self._chains else None
                state.probe_interval = interval or state.probe_interval
            self._clients[key] = RegistryClient(
                state,
                hop.credentials,
                provider=hop.provider,
                on_request=self.metrics.request_hook(chain, hop.name),
            )
        return self._clients[key]

    def alive(self) -> bool:
        """False when the dispatch loop has not turned for three times its longest sleep."""
        return self._clock() - self.last_turn <= 3 * MAX_WAKE

    # -- running -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Check targets as they fall due until ``stop`` is set; then finish cleanly."""
        try:
            while not stop.is_set():
                try:
                    wake = self._turn()
                except Exception:  # a bug in one turn must not end the loop; the next turn retries
                    logger.exception("scheduler turn failed; retrying")
                    wake = self._clock() + 1.0
                self.last_turn = self._clock()
                await self._sleep_until(wake, stop)
        finally:
            await self.aclose()

    def _turn(self) -> float:
        """Start what is due (checks and pings); return when the next thing falls due."""
        now = self._clock()
        self._start_pings(now)
        self._start_canaries(now)
        while self._heap and self._heap[0][0] <= now:
            when, key = heapq.heappop(self._heap)
            watch = self._watches.get(key)
            if self._due.get(key) != when or watch is None:
                continue  # stale or removed
            self._schedule(key, now + watch.chain.interval * (1 + random.uniform(-JITTER, JITTER)))
            if watch.pending:
                continue  # not checked, but keeps its phase for when it is no longer pending
            if key not in self._running:  # a check still running from last time is not doubled
                self._running[key] = asyncio.create_task(self._check(watch))
        self._changed.clear()
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        next_check = [self._heap[0][0]] if self._heap else []
        return min([*next_check, *self._ping_due.values(), *self._canary_due.values(), now + MAX_WAKE])

    async def _sleep_until(self, wake: float, stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.05, wake - self._clock())):
                stop_wait = asyncio.ensure_future(stop.wait())
                change_wait = asyncio.ensure_future(self._changed.wait())
                try:
                    await asyncio.wait({stop_wait, change_wait}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop_wait.cancel()
                    change_wait.cancel()

    async def aclose(self) -> None:
        tasks = [*self._running.values(), *self._pings, *self._canaries.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()
        self._canaries.clear()
        self._clients.clear()
        await asyncio.gather(*(s.aclose() for s in self._states.values()), return_exceptions=True)
        self._states.clear()

    async def check_now(self, key: tuple[str, str]) -> CheckResult | None:
        """Check one target immediately (tests and the CLI-like paths use it)."""
        watch = self._watches.get(key)
        if watch is None or watch.pending:
            return None
        return await self._check(watch)

    def _start_canaries(self, now: float) -> None:
        """Start each chain's canary when due, in a task of its own; a run still going is not doubled."""
        for name, when in list(self._canary_due.items()):
            chain = self._chains.get(name)
            if when > now or chain is None:
                continue
            self._canary_due[name] = now + chain.interval * (1 + random.uniform(-JITTER, JITTER))
            if name not in self._canaries:
                self._canaries[name] = asyncio.create_task(self._canary(chain))

    async def canary_now(self, name: str) -> CanaryResult | None:
        """Run a chain's canary immediately (tests)."""
        chain = self._chains.get(name)
        return None if chain is None or chain.canary is None else await self._canary(chain)

    async def _canary(self, chain: Chain) -> CanaryResult | None:
        """One canary run, recorded for the chain; a bug ends as an unknown result, never silently."""
        started = time.time()
        try:
            try:
                push = self.client(chain.name, chain.canary_push_hop())
                clients = {hop.name: self.client(chain.name, hop) for hop in chain.hops}
                result = await run_canary(chain, push, clients)
            except Exception as exc:
                logger.exception("canary of chain %s failed unexpectedly", chain.name)
                message = f"canary failed: internal error in layerwatch ({type(exc).__name__}); please report"
                result = CanaryResult(chain.name, started, time.time(), unknown_message=message)
            if self._chains.get(chain.name) != chain:
                return None  # changed or removed while running: this result describes the past.
            self.store.put_canary(result)
            logger.info(
                "canary of chain %s: %s",
                chain.name,
                result.reason,
                extra={"chain": chain.name, "verdict": result.reason, "tag": result.tag},
            )
            if self.on_canary is not None:
                await self.on_canary(result)
            return result
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug after the run (store, hook) must not stop the scheduler
            logger.exception("recording the canary of chain %s failed unexpectedly", chain.name)
            return None
        finally:
            if self._canaries.get(chain.name) is asyncio.current_task():
                del self._canaries[chain.name]

    def _start_pings(self, now: float) -> None:
        """Ping every hop of the chains due, each in a task of its own (never in the loop)."""
        due = [name for name, when in self._ping_due.items() if when <= now and name in self._chains]
        for name in due:
            chain = self._chains[name]
            self._ping_due[name] = now + chain.interval
            if name in self._caches:
                self._caches[name].prune()  # once per interval: forget blobs no target asked for again
            for hop in chain.hops:
                task = asyncio.create_task(self._ping(name, hop))
                self._pings.add(task)
                task.add_done_callback(self._pings.discard)

    async def _ping(self, chain: str, hop: Hop) -> None:
        try:
            fault = await self.client(chain, hop).ping()
        except Exception:  # a ping that fails oddly says the hop is not up; nothing more
            logger.exception("ping of hop %s failed unexpectedly", hop.name)
            fault = Fault(FaultKind.INTERNAL)
        if chain in self._chains:
            self.metrics.set_hop_up(chain, hop.name, fault is None)

    async def _check(self, watch: Watch) -> CheckResult | None:
        key = watch.target.key
        slots = self._slots.setdefault(watch.chain.name, asyncio.Semaphore(self.settings.parallel_checks))
        try:
            async with slots:
                path = watch.pull_path()
                try:
                    clients = {t.hop.name: self.client(watch.chain.name, t.hop) for t in path}
                    cache = self._caches.setdefault(watch.chain.name, BlobCache(watch.chain.interval))
                    result = await check_target(
                        watch.target.reference,
                        path,
                        clients,
                        mode=watch.chain.mode,
                        layer_media_type=watch.target.layer_media_type,
                        pinned_digest=watch.pinned_digest,
                        cache=cache,
                        asker=key,
                        verify=watch.target.verify or watch.chain.verify,
                    )
                except Exception as exc:  # never silent: a bug still ends as a verdict for every hop
                    logger.exception("check of %s failed unexpectedly", "/".join(p for p in key if p))
                    fault = Fault(FaultKind.INTERNAL, f"{type(exc).__name__}: {exc}"[:160])
                    result = failed_result(watch.target.reference, path, fault, mode=watch.chain.mode)
            if self._watches.get(key) != watch:
                return None  # changed or removed while checking: this result describes the past.
            self.store.put(TargetStatus(watch.target, watch.chain.name, result))
            self.metrics.record_check(watch.chain.name, result)
            logger.info(
                "checked %s: %s%s",
                "/".join(p for p in key if p),
                result.judgement.verdict.value,
                f" (blame {result.judgement.blame})" if result.judgement.blame else "",
                extra={
                    "target": "/".join(p for p in key if p),
                    "verdict": result.judgement.verdict.value,
                    "blame": result.judgement.blame,
                    "chain": watch.chain.name,
                },
            )
            if self.on_result is not None:
                await self.on_result(watch, result)
            return result
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug after the check (store, hook) must not stop the scheduler
            logger.exception("recording the check of %s failed unexpectedly", "/".join(p for p in key if p))
            return None
        finally:
            if self._running.get(key) is asyncio.current_task():
                del self._running[key]
