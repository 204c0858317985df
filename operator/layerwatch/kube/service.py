"""The operator's service: keeps the watched objects, plans the scheduler, writes results back.

kopf feeds it events (OCIRepositories, ProxyChains, Namespaces) and tells it which chains are
active (a ProxyChain daemon runs only while this replica holds the peering lead). It turns that
into the scheduler's plan, and each check result into a condition, maybe an event, and the
ProxyChain's status. It decides nothing about registries: the engine does.
"""

from __future__ import annotations

import asyncio
import calendar
import collections
import copy
import dataclasses
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

from layerwatch.canary import CONDITION_TYPE as CANARY_CONDITION
from layerwatch.canary import CanaryResult
from layerwatch.chain import Chain, ChainError, Credentials, Hop, chain_from_spec
from layerwatch.kube.api import INVALID_SECRET, SECRET_REFRESH, KubeApi, SecretError
from layerwatch.kube.conditions import desired_condition, transition
from layerwatch.kube.notify import FluxNotifier
from layerwatch.kube.targets import (
    FluxSource,
    Selection,
    TenantAccess,
    in_shard,
    resolve_entry_hop,
    select,
    skeleton_chain,
)
from layerwatch.metrics import Metrics
from layerwatch.registry.proxies import parse_proxy
from layerwatch.scheduler import Scheduler, Watch
from layerwatch.settings import EngineSettings
from layerwatch.store import ResultStore
from layerwatch.verdict import CheckResult, Health

__all__ = ["OUTSIDE_SCOPE", "OperatorOptions", "OperatorService", "UnusableSetting"]

logger = logging.getLogger("layerwatch.operator")
T = TypeVar("T")

DEBOUNCE = 0.5
"""Seconds to gather a burst of watch events into one re-plan."""
STATUS_REFRESH = 900.0
"""Seconds after which a ProxyChain's per-hop lastCheckTime is rewritten even if nothing changed."""
OUTSIDE_SCOPE = "outside ProxyChain {chain}'s namespaceSelector: checked at its own URL with its own settings"
"""The note on the condition of an OCIRepository the chain does not serve."""


class UnusableSetting(Exception):
    """An OCIRepository's own setting cannot be read or used: its target stays Unknown with this reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclasses.dataclass(frozen=True)
class OperatorOptions:
    metrics_port: int = 9090
    metrics_address: str = "0.0.0.0"  # noqa: S104 - a server in a pod
    shard_index: int = 0
    shard_count: int = 1
    engine: EngineSettings = dataclasses.field(default_factory=EngineSettings)
    namespace: str = "layerwatch"
    """Namespace of ProxyChain Secrets when a secretRef names none."""
    watch_label_selector: str | None = None
    """Only OCIRepositories with these labels (Flux's sharding: ``sharding.fluxcd.io/key=shard1``)."""
    peering_lifetime: int = 60
    """Seconds a peer's keep-alive counts (kopf's default): a standby takes over at most this long
    after the active replica dies; shorter costs more keep-alive patches."""
    notification_address: str | None = None
    """Flux notification-controller's event receiver; each posted event is forwarded there too."""


class OperatorService:
    def __init__(self, api: KubeApi, options: OperatorOptions) -> None:
        self.api, self.options = api, options
        self.store = ResultStore()
        self.metrics = Metrics(self.store)
        self.scheduler = Scheduler(
            store=self.store,
            metrics=self.metrics,
            settings=options.engine,
            on_result=self._on_result,
            on_canary=self._on_canary,
        )
        self.sources: dict[tuple[str, str], FluxSource] = {}
        self.chain_bodies: dict[str, Mapping[str, Any]] = {}
        self.chains: dict[str, Chain] = {}
        """Planned chains, and the shape of those that could not be planned (for the status page)."""
        self.not_ready: dict[str, tuple[str, str]] = {}
        """Chains that could not be planned: (reason, message) for their Ready=False condition."""
        self.namespace_labels: dict[str, dict[str, str]] = {}
        self.active: set[str] = set()
        self._warned: set[tuple[str, str]] = set()
        """Targets whose last event was a Warning: their next True is announced as recovered."""
        self._pending_writes: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()
        self._chain_status_dirty = asyncio.Event()
        self._written_chain_status: dict[str, dict[str, Any]] = {}
        self._skipped: dict[tuple[str, str], str] = {}
        self._unusable: dict[tuple[str, str], str] = {}
        """OCIRepositories not checked because a setting of their own cannot be used: why."""
        self._outside: dict[tuple[str, str], str] = {}
        """OCIRepositories outside their chain's namespaceSelector: the chain's name."""
        self._unexpected_types: set[str] = set()
        self.notifier = FluxNotifier(options.notification_address) if options.notification_address else None

    # -- what kopf tells us ------------------------------------------------------------------------

    def source_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        source = FluxSource.from_body(body)
        if not in_shard(source.namespace, source.name, self.options.shard_index, self.options.shard_count):
            return  # another shard's object (Flux updates its status all the time): not our plan.
        if event_type == "DELETED":
            if self.sources.pop(source.key, None) is None:
                return
        else:
            previous = self.sources.get(source.key)
            self.sources[source.key] = source
            if previous is not None and self._same_plan(previous, source):
                return  # only conditions or unrelated status moved: nothing to re-plan.
        self._dirty.set()

    @staticmethod
    def _same_plan(a: FluxSource, b: FluxSource) -> bool:
        ignore = {"conditions"}
        return all(
            getattr(a, f.name) == getattr(b, f.name) for f in dataclasses.fields(a) if f.name not in ignore
        )

    def chain_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        # A copy: kopf hands objects that have a daemon (ProxyChains do) as a live view, replaced in
        # place by the next event; kept as is, an edited spec would always equal the "previous" one.
        body = copy.deepcopy(dict(body))
        name = str((body.get("metadata") or {}).get("name", ""))
        if event_type == "DELETED":
            self.chain_bodies.pop(name, None)
        else:
            previous = self.chain_bodies.get(name)
            self.chain_bodies[name] = body
            if previous is not None and previous.get("spec") == body.get("spec"):
                self._written_chain_status.setdefault(name, dict(body.get("status") or {}))
                return
        self._dirty.set()

    def namespace_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        metadata = body.get("metadata") or {}
        name = str(metadata.get("name", ""))
        labels = dict(metadata.get("labels") or {})
        if event_type == "DELETED":
            self.namespace_labels.pop(name, None)
        elif self.namespace_labels.get(name) == labels:
            return
        else:
            self.namespace_labels[name] = labels
        self._dirty.set()

    def set_active(self, chain: str, active: bool) -> None:
        """A ProxyChain daemon started (this replica leads) or stopped (paused, or chain deleted)."""
        (self.active.add if active else self.active.discard)(chain)
        self._dirty.set()

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Re-plan after each burst of events until ``stop``; every wait here ends at ``stop`` at once."""
        tasks = [
            asyncio.create_task(self.scheduler.run(stop)),
            asyncio.create_task(self._chain_status_loop(stop)),
            asyncio.create_task(self._secret_loop(stop)),
        ]
        try:
            while not stop.is_set():
                await _wait(self._dirty, stop, None)
                await _wait(stop, stop, DEBOUNCE)
                if stop.is_set():
                    break
                self._dirty.clear()
                try:
                    await self.replan()
                except Exception:  # the next event re-plans; never kill the loop
                    logger.exception("re-planning failed")
        finally:
            stop.set()
            if self._pending_writes is not None:
                self._pending_writes.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.notifier is not None:
                await self.notifier.aclose()

    async def _secret_loop(self, stop: asyncio.Event) -> None:
        """Re-read the referenced Secrets by name; a changed one re-plans (no list or watch of Secrets)."""
        while not stop.is_set():
            await _wait(stop, stop, SECRET_REFRESH)
            if stop.is_set():
                return
            try:
                if await self.api.refresh_secrets():
                    logger.info("a referenced Secret changed: re-planning")
                    self._dirty.set()
            except Exception:
                logger.exception("could not re-read the referenced Secrets")

    async def replan(self) -> None:
        # Snapshot before the first await: events keep changing these dicts while Secrets are read.
        sources = list(self.sources.values())
        bodies = sorted((n, b) for n, b in self.chain_bodies.items() if n in self.active)
        namespace_labels = dict(self.namespace_labels)
        self.api.begin_plan()
        chains: dict[str, Chain] = {}
        shapes: dict[str, Chain] = {}
        not_ready: dict[str, tuple[str, str]] = {}
        for name, body in bodies:
            try:
                chains[name] = await self.plan_chain(name, body)
                continue
            except SecretError as exc:
                not_ready[name] = (exc.reason, str(exc))
            except ChainError as exc:
                not_ready[name] = ("InvalidSpec", str(exc))
            except Exception as exc:  # one chain's odd Secret or field never stops the plan
                self._unexpected(exc, f"ProxyChain {name}")
                not_ready[name] = ("InvalidSpec", f"a setting cannot be used ({type(exc).__name__})")
            if self.not_ready.get(name) != not_ready[name]:
                logger.warning("ProxyChain %s is not ready: %s", name, not_ready[name][1])
            shape = skeleton_chain(name, body.get("spec") or {})
            if shape is not None:
                shapes[name] = shape
        ordered = sorted([*chains.values(), *shapes.values()], key=lambda c: c.name)
        why = {name: message for name, (_, message) in not_ready.items()}
        watches: list[Watch] = []
        pending: list[tuple[FluxSource, dict[str, Any], float]] = []
        skipped: dict[tuple[str, str], str] = {}
        outside: dict[tuple[str, str], str] = {}
        unusable: dict[tuple[str, str], str] = {}
        for source in sources:
            selection = select(source, ordered, namespace_labels.get(source.namespace), why)
            watch = None
            if selection.target is not None and selection.chain is not None:
                try:
                    watch = await self.plan_watch(source, selection, ready=selection.chain.name in chains)
                except Exception as exc:  # one object never stops the plan of the others
                    self._unexpected(exc, f"OCIRepository {source.namespace}/{source.name}")
                    why_not = f"its settings cannot be planned ({type(exc).__name__})"
                    watch = Watch(
                        selection.target, selection.chain, pending=why_not, pending_reason="InvalidSpec"
                    )
            if watch is None:
                skipped[source.key] = selection.skipped or "not selected"
                if self._skipped.get(source.key) != skipped[source.key]:  # say it once, not every re-plan
                    logger.debug("not watching %s/%s: %s", *source.key, skipped[source.key])
                continue
            watches.append(watch)
            if not selection.in_scope:
                outside[source.key] = watch.chain.name
            if watch.pending and watch.pending != selection.pending:  # a setting of its own is unusable
                unusable[source.key] = watch.pending
                if self._unusable.get(source.key) != watch.pending:
                    logger.warning("%s/%s is not checked: %s", *source.key, watch.pending)
            if watch.pending:
                condition = desired_condition(
                    None,
                    source.generation,
                    pending=watch.pending,
                    pending_reason=watch.pending_reason,
                )
                pending.append((source, condition, watch.chain.interval))
        self._unusable, self._outside = unusable, outside
        self._skipped = skipped
        self.scheduler.update(chains, watches)
        self._show_unplanned(shapes, chains)
        self.chains = {**shapes, **chains}
        self.not_ready = not_ready
        self.metrics.set_chains_not_ready(why)
        self._start_pending_writes(pending)
        self._chain_status_dirty.set()
        logger.info(
            "planned %d targets on %d chains (%d not ready); %d OCIRepositories not watched"
            " (reasons at debug level)",
            len(watches),
            len(chains),
            len(not_ready),
            len(skipped),
            extra={
                "targets": len(watches),
                "chains": len(chains),
                "not_ready": len(not_ready),
                "skipped": len(skipped),
            },
        )

    def _show_unplanned(self, shapes: Mapping[str, Chain], ready: Mapping[str, Chain]) -> None:
        """Chains that could not be planned keep their hops in the metrics (their targets' series)."""
        for name in set(self.chains) & set(self.not_ready):
            if name not in shapes and name not in ready:
                self.metrics.forget_chain(name)
        for name, shape in shapes.items():
            self.metrics.set_chain(name, shape.interval, [hop.name for hop in shape.hops])

    def _start_pending_writes(self, pending: Sequence[tuple[FluxSource, dict[str, Any], float]]) -> None:
        """Write the pending conditions in the background, so a re-plan never waits on thousands."""
        if self._pending_writes is not None:
            self._pending_writes.cancel()
        if not pending:
            self._pending_writes = None
            return

        async def write_all() -> None:
            for source, condition, interval in pending:
                await self._write(source, condition, interval)

        self._pending_writes = asyncio.create_task(write_all())

    async def plan_chain(self, name: str, body: Mapping[str, Any]) -> Chain:
        """A ProxyChain as a chain, its hops' Secrets, CAs and proxies read (or ChainError, SecretError)."""
        spec = body.get("spec") or {}
        options: dict[str, dict[str, Any]] = {}
        for raw in spec.get("hops") or ():
            hop_options: dict[str, Any] = {}
            if raw.get("secretRef"):
                ref = raw["secretRef"]
                host = Hop.from_url(raw["name"], raw["url"]).host
                hop_options["credentials"] = await self.api.credentials(
                    ref.get("namespace") or self.options.namespace, ref["name"], host
                )
            if raw.get("caSecretRef"):
                ref = raw["caSecretRef"]
                hop_options["ca_pem"] = await self.api.ca_pem(
                    ref.get("namespace") or self.options.namespace, ref["name"]
                )
            hop_options |= await self._hop_network(raw)
            options[raw.get("name", "")] = hop_options
        if self.options.shard_index:  # one canary per chain: shard 0 runs it, the others never push
            return dataclasses.replace(chain_from_spec(name, spec, hop_options=options), canary=None)
        return chain_from_spec(
            name, spec, hop_options=options, canary_credentials=await self._canary_credentials(spec)
        )

    async def _canary_credentials(self, spec: Mapping[str, Any]) -> Credentials | None:
        """The canary's push credentials: its own Secret, read for the origin hop's host only."""
        canary, hops = spec.get("canary"), spec.get("hops") or ()
        ref = canary.get("secretRef") if isinstance(canary, Mapping) else None
        if not isinstance(ref, Mapping) or not hops:
            return None
        host = Hop.from_url(hops[-1]["name"], hops[-1]["url"]).host
        return await self.api.credentials(ref.get("namespace") or self.options.namespace, ref["name"], host)

    async def _hop_network(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """A ProxyChain hop's ``proxy`` (address, Secret with username/password) and ``certSecretRef``."""
        options: dict[str, Any] = {}
        proxy = raw.get("proxy")
        if isinstance(proxy, Mapping):
            ref = proxy.get("secretRef")
            if isinstance(ref, Mapping):
                options["proxy"] = await self.api.proxy(
                    ref.get("namespace") or self.options.namespace, ref["name"], proxy.get("address")
                )
            else:
                options["proxy"] = parse_proxy(proxy.get("address"), f"hop {raw.get('name')}")
        ref = raw.get("certSecretRef")
        if isinstance(ref, Mapping):
            options |= await self.api.client_certificate(
                ref.get("namespace") or self.options.namespace, ref["name"]
            )
        return options

    async def plan_watch(self, source: FluxSource, selection: Selection, *, ready: bool) -> Watch:
        """How one selected OCIRepository is watched (``ready``: its chain could be planned).

        Outside the chain's scope it is checked at its own URL only, as a chain of that one hop.
        A setting of its own that cannot be honoured leaves it pending with the reason: it is never
        checked with other settings than source-controller would use.
        """
        target, chain = selection.target, selection.chain
        if target is None or chain is None:
            raise ValueError("plan_watch needs a selected target")
        watch = Watch(
            target, chain, selection.pinned_digest, None, selection.pending, selection.pending_reason
        )
        if selection.in_scope and not ready:
            return watch
        reference = target.reference
        try:
            hop = await self.entry_hop(
                source, chain, reference.registry, reference.repository, in_scope=selection.in_scope
            )
        except UnusableSetting as exc:
            return dataclasses.replace(watch, pending=exc.message, pending_reason=exc.reason)
        if selection.in_scope or hop is None:
            return dataclasses.replace(watch, entry_hop=hop)
        own = dataclasses.replace(chain, hops=(hop,), namespace_selector=None, suspend=False)
        return dataclasses.replace(watch, chain=own)

    async def entry_hop(
        self, source: FluxSource, chain: Chain, host: str, repository: str, *, in_scope: bool = True
    ) -> Hop | None:
        """The hop the OCIRepository points at, as ``resolve_entry_hop`` decides (None: the chain's own).

        UnusableSetting when one of its own settings cannot be read or used.
        """
        index = chain.entry(host, repository)
        if index is None:
            if in_scope:
                return None
            raise UnusableSetting("InvalidSpec", f"no hop of ProxyChain {chain.name} serves {host}")
        if in_scope and not (
            source.secret_ref
            or source.cert_secret_ref
            or source.insecure
            or source.provider
            or source.service_account
            or source.proxy_secret_ref
        ):
            return None
        hop = chain.hops[index]
        access = await self._tenant_access(source, hop.host)
        try:
            return resolve_entry_hop(hop, access, in_scope=in_scope)
        except ChainError as exc:
            raise UnusableSetting("InvalidSpec", str(exc)) from None

    async def _tenant_access(self, source: FluxSource, host: str) -> TenantAccess:
        """The OCIRepository's own Secrets read for ``host``; UnusableSetting names the field that failed."""
        namespace = source.namespace

        async def read(field: str, name: str, pending: Awaitable[T]) -> T:
            try:
                return await pending
            except SecretError as exc:
                raise UnusableSetting(exc.reason, f"spec.{field}: {exc}") from None
            except Exception as exc:  # whatever a parser raises, it stays this object's problem
                self._unexpected(exc, f"spec.{field} of {namespace}/{source.name}")
                message = f"spec.{field}: {namespace}/{name} cannot be used ({type(exc).__name__})"
                raise UnusableSetting(INVALID_SECRET, message) from None

        credentials: Credentials | None = None
        if source.secret_ref:
            credentials = await read(
                "secretRef", source.secret_ref, self.api.credentials(namespace, source.secret_ref, host)
            )
        if source.service_account and credentials is None:
            credentials = await read(
                "serviceAccountName",
                source.service_account,
                self.api.service_account_credentials(namespace, source.service_account, host),
            )
        tls = proxy = None
        if source.cert_secret_ref:
            tls = await read(
                "certSecretRef",
                source.cert_secret_ref,
                self.api.client_certificate(namespace, source.cert_secret_ref),
            )
        if source.proxy_secret_ref:
            proxy = await read(
                "proxySecretRef", source.proxy_secret_ref, self.api.proxy(namespace, source.proxy_secret_ref)
            )
        return TenantAccess(
            names_credentials=bool(source.secret_ref or source.service_account or source.provider),
            credentials=credentials,
            provider=source.provider if credentials is None else None,  # as Flux: Secrets first
            insecure=source.insecure,
            tls=tls,
            proxy=proxy,
        )

    def _unexpected(self, exc: Exception, where: str) -> None:
        """Log an error type nobody planned for once (type only: its text may quote a Secret)."""
        kind = type(exc).__name__
        if kind not in self._unexpected_types:
            self._unexpected_types.add(kind)
            logger.error("unexpected %s while reading %s; reported on that object only", kind, where)

    # -- results -----------------------------------------------------------------------------------

    async def _on_result(self, watch: Watch, result: CheckResult) -> None:
        source = self.sources.get(watch.target.key)
        if source is not None:
            judgement = result.judgement
            chain = self._outside.get(source.key)
            if chain is not None:
                note = OUTSIDE_SCOPE.format(chain=chain)
                judgement = dataclasses.replace(judgement, notes=(*judgement.notes, note))
            await self._write(source, desired_condition(judgement, source.generation), watch.chain.interval)
        self._chain_status_dirty.set()

    async def _on_canary(self, _: CanaryResult) -> None:
        self._chain_status_dirty.set()

    async def _write(self, source: FluxSource, desired: Mapping[str, Any], interval: float) -> None:
        """Write the condition; post the transition's event first.

        A restart redoes a transition within about one interval (first checks are spread over it);
        the same transition happening again (a reason flapping) comes two intervals later at the
        earliest. 1.5 intervals tells the two apart.
        """

        async def announce(before: Sequence[Mapping[str, Any]]) -> None:
            warned = source.key in self._warned
            event = transition(source.namespace, source.name, source.uid, before, desired, warned=warned)
            if event is not None:
                (self._warned.add if event.type == "Warning" else self._warned.discard)(source.key)
                posted = await self.api.post_event(
                    source.api_version,
                    source.namespace,
                    source.name,
                    source.uid,
                    event,
                    repeat_after=1.5 * interval,
                )
                if posted and self.notifier is not None:  # a restart's redo is not news to Flux either
                    self.notifier.notify(source, event, self.store.get(source.key))

        try:
            await self.api.write_condition(
                source.api_version,
                source.namespace,
                source.name,
                desired,
                known_conditions=source.conditions,
                before_write=announce,
            )
        except Exception:  # next check retries; the verdict is still in metrics and the status page
            logger.exception("could not write the condition on %s/%s", source.namespace, source.name)

    # -- ProxyChain status -------------------------------------------------------------------------

    def chain_status(self, name: str) -> dict[str, Any]:
        chain = self.chains.get(name)
        statuses = [s for s in self.store.snapshot() if s.chain == name]
        hop_up = self.metrics.hop_up()
        hops = []
        for hop in chain.hops if chain else ():
            counts: collections.Counter[str] = collections.Counter()
            last: float | None = None
            for status in statuses:
                if status.result is None:
                    continue
                for verdict in status.result.judgement.hops:
                    if verdict.hop == hop.name:
                        counts[verdict.verdict.health.name.lower()] += 1
                        last = max(last or 0.0, status.result.finished)
            hops.append(
                {
                    "name": hop.name,
                    "up": hop_up.get((name, hop.name), False),
                    "artifacts": sum(counts.values()),
                    "healthy": counts["healthy"],
                    "unhealthy": counts["unhealthy"],
                    "unknown": counts["unknown"],
                    "lastCheckTime": _rfc3339(last) if last else None,
                }
            )
        health = [s.result.judgement.health if s.result else Health.UNKNOWN for s in statuses]
        generation = int(((self.chain_bodies.get(name) or {}).get("metadata") or {}).get("generation") or 0)
        unhealthy = sum(1 for h in health if h is Health.UNHEALTHY)
        if name in self.not_ready:
            ready, (reason, message) = "False", self.not_ready[name]
        elif chain is not None:
            ready, reason, message = "True", "Watching", f"{len(statuses)} artifacts, {unhealthy} unhealthy"
        else:
            ready, reason, message = "False", "NotActive", "not planned"
        conditions: list[dict[str, Any]] = [
            {
                "type": "Ready",
                "status": ready,
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": _rfc3339(time.time()),
            }
        ]
        if chain is not None and chain.canary is not None and name not in self.not_ready:
            conditions.append(self._cold_path_condition(name, generation))
        return {
            "observedGeneration": generation,
            "artifacts": len(statuses),
            "unhealthy": unhealthy,
            "unknown": sum(1 for h in health if h is Health.UNKNOWN),
            "hops": hops,
            "hopCount": len(chain.hops) if chain else 0,
            "conditions": conditions,
        }

    def _cold_path_condition(self, name: str, generation: int) -> dict[str, Any]:
        """``ColdPathHealthy`` from the chain's last canary run (Unknown until the first one)."""
        run = self.store.canaries().get(name)
        if run is None:
            condition: dict[str, Any] = {
                "type": CANARY_CONDITION,
                "status": "Unknown",
                "reason": "Pending",
                "message": "the canary has not run yet (it runs once per interval)",
                "observedGeneration": generation,
            }
        else:
            condition = run.condition(generation)
        return condition | {"lastTransitionTime": _rfc3339(time.time())}

    async def _chain_status_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _wait(self._chain_status_dirty, stop, 30.0)
            await _wait(stop, stop, 2.0)  # batch a burst of results into one write per chain
            self._chain_status_dirty.clear()
            if self.options.shard_count > 1 or stop.is_set():
                continue  # a shard sees only its share: its counts would overwrite the others'
            for name in sorted(set(self.chains) | set(self.not_ready)):
                status = self.chain_status(name)
                known = self._written_chain_status.get(name)
                if known is not None:
                    status = _settle(known, status, time.time())
                try:
                    if await self.api.write_chain_status(name, status, known):
                        self._written_chain_status[name] = status
                except Exception:
                    logger.exception("could not write the status of ProxyChain %s", name)


async def _wait(event: asyncio.Event, stop: asyncio.Event, seconds: float | None) -> None:
    """Until ``event`` or ``stop`` is set, or ``seconds`` pass: no wait outlasts a shutdown."""
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())}
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _rfc3339(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _settle(known: Mapping[str, Any], status: dict[str, Any], now: float) -> dict[str, Any]:
    """Keep the timestamps already written unless something real changed or they grew old.

    ``lastCheckTime`` moves every cycle; writing it each time would cost one apiserver write per
    chain per interval for nothing. It is refreshed when counts change, or after STATUS_REFRESH.
    """
    old_conditions = {c.get("type"): c for c in known.get("conditions") or () if isinstance(c, Mapping)}
    for condition in status["conditions"]:
        old_condition = old_conditions.get(condition["type"]) or {}
        if old_condition.get("status") == condition["status"] and old_condition.get("lastTransitionTime"):
            condition["lastTransitionTime"] = old_condition["lastTransitionTime"]
        if condition["type"] == CANARY_CONDITION and _same_finding(old_condition, condition):
            # each canary is a new digest: the same verdict at the same hop keeps its first message
            condition["message"] = old_condition["message"]
    old_hops = {hop.get("name"): hop for hop in known.get("hops") or ()}
    for hop in status["hops"]:
        old = old_hops.get(hop["name"]) or {}
        written = old.get("lastCheckTime")
        same = all(old.get(k) == v for k, v in hop.items() if k != "lastCheckTime")
        if same and written and now - _parse_rfc3339(written) < STATUS_REFRESH:
            hop["lastCheckTime"] = written
    return status


def _same_finding(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Same status and reason, and the message names the same hop and place (``hop X (where)``)."""
    old_message, new_message = str(old.get("message", "")), str(new.get("message", ""))
    return (
        old.get("status") == new.get("status")
        and old.get("reason") == new.get("reason")
        and old_message.partition(": ")[0] == new_message.partition(": ")[0]
    )


def _parse_rfc3339(text: str) -> float:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))
