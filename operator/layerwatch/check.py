"""Pulling one target through its pull path, the way Flux pulls it, into observations.

Per hop: resolve the tag (HEAD, GET when HEAD fails or gives no digest), GET the manifest by
digest and verify its bytes, then every blob of it (and of every child of an index). Hops run
concurrently and independently: one hop's failure never stops another, and nothing a hop sends
makes this raise: whatever goes wrong ends in the hop's observation.

Edge first (`EdgeFirst`): a hop asks for an object (the tagged manifest, a child manifest, a
blob, the signatures) only once every hop in front of it has had its answer for that object, so
layerwatch's own pull through an inner proxy never warms it before the edge is asked: the edge is
observed as a client meets it, cold upstream included. The hops still work as a pipeline (core
fetches blob 1 while the edge fetches blob 2), and the time a hop waits is not counted against
its check deadline; waiting ends at the latest one check deadline after the check began, so a
check lasts at most twice the check deadline.

A blob verified at a hop may be shared with *other* targets of the chain within one interval
(``BlobCache``), so each distinct blob is fetched about once per hop per interval. A target never
trusts what its own previous check verified, the manifest is always fetched by digest, and the
credentials used are part of what an entry is valid for.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from layerwatch import manifest as manifests
from layerwatch.chain import Credentials, HopTarget, Mode
from layerwatch.observation import (
    Answer,
    BlobCheck,
    BlobFacts,
    Fault,
    FaultKind,
    HopObservation,
    ManifestCheck,
    ManifestFault,
    ManifestProblem,
)
from layerwatch.reference import Reference
from layerwatch.registry import FetchedManifest, RegistryClient, RegistryError, RegistryNotFound, RetryBudget
from layerwatch.registry.network import Endpoint
from layerwatch.signature_lookup import observe_signatures
from layerwatch.signatures import Verify
from layerwatch.verdict import CheckResult, classify_blob, judge

__all__ = [
    "MAX_BLOB_BYTES",
    "MAX_INDEX_CHILDREN",
    "MAX_LAYERS",
    "BlobCache",
    "EdgeFirst",
    "check_target",
    "failed_result",
    "observe_hop",
]

logger = logging.getLogger("layerwatch.check")

MAX_INDEX_CHILDREN = 64
"""Children of an index checked at most (a 64-platform index is already extreme)."""
MAX_LAYERS = 1024
"""Layers of one manifest checked at most (overlay filesystems stack at most 128)."""
MAX_BLOB_BYTES = 64 * 1024**3
"""A blob declared larger than 64 GiB is refused rather than streamed."""

CacheKey = tuple[Endpoint, str, str, str]
"""(endpoint, repository, digest, credential identity). The whole endpoint, not its URL: bytes seen
through one proxy, CA or client certificate say nothing of what another way to the same URL serves."""
Asker = tuple[str, str]
"""The target a check is for (namespace, name)."""
T = TypeVar("T")


def credential_id(credentials: Credentials | None) -> str:
    """Which credentials verified an entry, without keeping them: a short one-way fingerprint."""
    if credentials is None:
        return "anonymous"
    raw = f"{credentials.username}\0{credentials.password}\0{credentials.identity_token or ''}".encode()
    return hashlib.sha256(raw).hexdigest()[:16]


class BlobCache:
    """Blobs verified recently at a hop, shared between the targets of one chain.

    An entry lives ``ttl`` seconds (the chain's interval) and records which target verified it:
    that target's own later checks do not accept it, so every check of every target fetches each
    blob itself unless *another* target fetched it within the interval.
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._verified: dict[CacheKey, tuple[float, Asker]] = {}

    def trusted(self, key: CacheKey, asker: Asker) -> bool:
        """True when another target verified ``key`` within the interval."""
        entry = self._verified.get(key)
        if entry is None:
            return False
        if self._clock() - entry[0] >= self.ttl:
            del self._verified[key]
            return False
        return entry[1] != asker

    def remember(self, key: CacheKey, asker: Asker) -> None:
        self._verified[key] = (self._clock(), asker)

    def prune(self) -> None:
        cutoff = self._clock() - self.ttl
        self._verified = {k: v for k, v in self._verified.items() if v[0] > cutoff}


class EdgeFirst:
    """Which hop of one check has had its answer for which object: the order hops ask in.

    Hop ``position`` (0 is the edge) may ask for an object once every hop in front of it has
    ``passed`` it (asked and had its answer, or given up on it) or is ``over`` (finished its whole
    observation, which may never ask for that object). The edge never waits and every hop ends
    within its own deadline, so no wait is endless; ``give_up`` seconds after the check began every
    wait ends anyway, which bounds the check at ``give_up`` plus one hop's deadline.
    """

    def __init__(self, hops: int, give_up: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._passed: list[dict[str, asyncio.Future[None]]] = [{} for _ in range(hops)]
        self._over = [False] * hops
        self._give_up = self._loop.call_later(give_up, self._end_all)

    def _gate(self, position: int, key: str) -> asyncio.Future[None]:
        gates = self._passed[position]
        gate = gates.get(key)
        if gate is None:
            gate = gates[key] = self._loop.create_future()
            if self._over[position]:
                gate.set_result(None)
        return gate

    def closed(self, position: int, key: str) -> list[asyncio.Future[None]]:
        """What hop ``position`` still waits for before asking for ``key`` (empty: ask now)."""
        gates = (self._gate(outer, key) for outer in range(position))
        return [gate for gate in gates if not gate.done()]

    def passed(self, position: int, key: str) -> None:
        gate = self._gate(position, key)
        if not gate.done():
            gate.set_result(None)

    def over(self, position: int) -> None:
        self._over[position] = True
        for gate in self._passed[position].values():
            if not gate.done():
                gate.set_result(None)

    def _end_all(self) -> None:
        for position in range(len(self._over)):
            self.over(position)

    def close(self) -> None:
        self._give_up.cancel()


class _HopCheck:
    """The work for one hop within one check (a small object so the steps can share state)."""

    def __init__(
        self,
        client: RegistryClient,
        target: HopTarget,
        reference: Reference,
        mode: Mode,
        cache: BlobCache | None,
        asker: Asker,
        order: tuple[EdgeFirst, int] | None,
    ) -> None:
        self.client, self.target, self.reference, self.mode = client, target, reference, mode
        self.cache, self.asker, self.order = cache, asker, order
        self.budget: RetryBudget = client.budget()
        self.credential = (
            f"provider:{client.provider}" if client.provider else credential_id(client.credentials)
        )
        self.blob_results: dict[str, asyncio.Task[BlobCheck]] = {}
        self.manifest_answers: list[Answer] = []
        self.timer: asyncio.Timeout | None = None
        self._waiting = 0
        self._paused: tuple[float, float | None] = (0.0, None)
        """When this hop's requests began waiting, and when its deadline was then."""

    async def in_turn(self, key: str, request: Callable[[], Awaitable[T]]) -> T:
        """``request()`` for the object ``key`` once the hops in front have had theirs (edge first).

        While any request of this hop waits, its deadline stands still: a slow edge is no fault of
        core's (the waits themselves end by `EdgeFirst`'s ``give_up``).
        """
        if self.order is None:
            return await request()
        order, position = self.order
        closed = order.closed(position, key)
        if closed:
            self._pause()
            try:
                await asyncio.wait(closed)  # never cancels the shared gates
            finally:
                self._resume()
        try:
            return await request()
        finally:
            order.passed(position, key)

    def _pause(self) -> None:
        self._waiting += 1
        if self._waiting == 1 and self.timer is not None:
            self._paused = (asyncio.get_running_loop().time(), self.timer.when())
            self.timer.reschedule(None)

    def _resume(self) -> None:
        self._waiting -= 1
        if not self._waiting and self.timer is not None:
            since, when = self._paused
            if when is not None:
                self.timer.reschedule(when + asyncio.get_running_loop().time() - since)

    def skip(self, key: str) -> None:
        """Nothing is asked for ``key`` here (a shared cache entry): the hops behind need not wait."""
        if self.order is not None:
            self.order[0].passed(self.order[1], key)

    async def manifest_bytes(self) -> tuple[str | None, str, FetchedManifest]:
        """(tag digest, manifest digest, bytes): resolve the tag, then fetch by digest (one object
        for the edge-first order: the tagged manifest)."""
        tag_digest, digest, fetched = await self.in_turn(
            f"manifest {self.reference.ref}", self._manifest_bytes
        )
        if fetched.answer is not None:
            self.manifest_answers.append(fetched.answer)
        return tag_digest, digest, fetched

    async def child_manifest(self, digest: str) -> FetchedManifest:
        fetched = await self.in_turn(
            f"manifest {digest}",
            lambda: self.client.fetch_manifest(self.target.repository, digest, self.budget),
        )
        if fetched.answer is not None:
            self.manifest_answers.append(fetched.answer)
        return fetched

    async def _manifest_bytes(self) -> tuple[str | None, str, FetchedManifest]:
        repository, reference = self.target.repository, self.reference
        if reference.digest is None and reference.tag is not None:
            tag_digest = await self.client.resolve(repository, reference.tag, self.budget)
            if tag_digest is None:
                fetched = await self.client.fetch_manifest(repository, reference.tag, self.budget)
                # a cut body without a digest header names no digest: its hash is of a fragment
                tag_digest = fetched.digest_header or ("" if fetched.cut else fetched.digest())
                return tag_digest or None, tag_digest, fetched
            return (
                tag_digest,
                tag_digest,
                await self.client.fetch_manifest(repository, tag_digest, self.budget),
            )
        digest = reference.ref
        return None, digest, await self.client.fetch_manifest(repository, digest, self.budget)

    def _key(self, digest: str) -> CacheKey:
        return (self.client.state.endpoint, self.target.repository, digest, self.credential)

    async def blob(self, descriptor: manifests.Descriptor, index: int | None) -> BlobCheck:
        """Verify a blob once per check, whatever number of manifests list it."""
        task = self.blob_results.get(descriptor.digest)
        if task is None:
            task = asyncio.ensure_future(self._verify(descriptor))
            self.blob_results[descriptor.digest] = task
        result = await task
        return dataclasses.replace(result, descriptor=descriptor, index=index)

    async def _verify(self, descriptor: manifests.Descriptor) -> BlobCheck:
        key = self._key(descriptor.digest)
        if self.cache is not None and self.cache.trusted(key, self.asker):
            self.skip(f"blob {descriptor.digest}")
            facts = BlobFacts(cached=True, actual=descriptor.digest, received=descriptor.size)
        else:
            facts = await self.in_turn(
                f"blob {descriptor.digest}",
                lambda: self.client.fetch_blob(
                    self.target.repository, descriptor, download=self.mode is Mode.FULL, budget=self.budget
                ),
            )
        status, detail = classify_blob(descriptor, facts)
        if status.value == "ok" and not facts.cached and self.cache is not None:
            self.cache.remember(key, self.asker)
        return BlobCheck(descriptor, None, status, detail, facts)

    async def manifest_check(
        self, digest: str, parsed: manifests.Manifest, platform: str | None
    ) -> ManifestCheck:
        blobs = await asyncio.gather(
            self.blob(parsed.config, None), *(self.blob(layer, i) for i, layer in enumerate(parsed.layers))
        )
        return ManifestCheck(digest, parsed, tuple(blobs), platform)


def _verify_manifest_bytes(fetched: FetchedManifest, digest: str) -> ManifestProblem | None:
    """Why the bytes are not the manifest ``digest`` names, or None when they are."""
    if fetched.cut:
        return ManifestProblem(
            ManifestFault.TRUNCATED, digest or None, count=len(fetched.body), limit=fetched.declared or 0
        )
    if fetched.encoding is not None:
        return ManifestProblem(ManifestFault.ENCODED, digest, detail=fetched.encoding)
    if fetched.oversize:
        return ManifestProblem(ManifestFault.OVERSIZE, digest, limit=manifests.MAX_MANIFEST_BYTES)
    actual = fetched.digest(digest.partition(":")[0])
    if actual != digest:
        return ManifestProblem(ManifestFault.OTHER_BYTES, digest, actual=actual)
    return None


def _over_caps(parsed: manifests.Manifest, digest: str) -> ManifestProblem | None:
    """Why a manifest asks for more work than a check does, or None."""
    if len(parsed.layers) > MAX_LAYERS:
        return ManifestProblem(
            ManifestFault.TOO_MANY_LAYERS, digest, count=len(parsed.layers), limit=MAX_LAYERS
        )
    for blob in parsed.blobs:
        if blob.size > MAX_BLOB_BYTES:
            return ManifestProblem(
                ManifestFault.BLOB_TOO_LARGE, digest, count=blob.size, limit=MAX_BLOB_BYTES
            )
    return None


class _SharedParses:
    """Parses of verified manifest bytes, shared by digest and content type.

    Bytes that hash to a digest are those bytes, so their parse is one value: 10,000 targets over
    100 artifacts on a 3-hop chain then keep 100 parsed manifests in their results, not 30,000.
    The bytes are still fetched and verified by every check; only the parse is shared. Bounded in
    entries, and manifests with many blobs are not kept at all.
    """

    ENTRIES = 1024
    MAX_BLOBS = 64

    def __init__(self) -> None:
        self._parsed: collections.OrderedDict[tuple[str, str | None], manifests.Manifest | manifests.Index]
        self._parsed = collections.OrderedDict()

    def parse(self, fetched: FetchedManifest, digest: str) -> manifests.Manifest | manifests.Index:
        """``manifests.parse`` of bytes already verified to be ``digest``."""
        key = (digest, fetched.media_type)
        parsed = self._parsed.get(key)
        if parsed is not None:
            self._parsed.move_to_end(key)
            return parsed
        parsed = manifests.parse(fetched.body, fetched.media_type)
        size = len(parsed.blobs) if isinstance(parsed, manifests.Manifest) else len(parsed.manifests)
        if size <= self.MAX_BLOBS:
            self._parsed[key] = parsed
            if len(self._parsed) > self.ENTRIES:
                self._parsed.popitem(last=False)
        return parsed


_SHARED_PARSES = _SharedParses()


def _parse(fetched: FetchedManifest, digest: str) -> manifests.Manifest | manifests.Index | ManifestProblem:
    """The verified, parsed manifest, or what is wrong with it."""
    problem = _verify_manifest_bytes(fetched, digest)
    if problem is not None:
        return problem
    try:
        parsed = _SHARED_PARSES.parse(fetched, digest)
    except manifests.ManifestError as exc:
        return ManifestProblem(ManifestFault.UNPARSABLE, digest, detail=str(exc))
    if isinstance(parsed, manifests.Manifest):
        return _over_caps(parsed, digest) or parsed
    return parsed


async def observe_hop(
    client: RegistryClient,
    target: HopTarget,
    reference: Reference,
    *,
    mode: Mode = Mode.FULL,
    cache: BlobCache | None = None,
    asker: Asker = ("", ""),
    verify: Verify | None = None,
    order: tuple[EdgeFirst, int] | None = None,
) -> HopObservation:
    """Pull ``reference`` from one hop and record what it served. Never raises (but for
    cancellation), and never outlives the check deadline (plus the time it waited for the hops in
    front of it: ``order`` is the check's `EdgeFirst` and this hop's position in it)."""
    base = HopObservation(
        hop=target.hop.name,
        url=target.hop.url,
        repository=target.repository,
        location=target.location,
        tag=reference.tag,
    )
    started = time.monotonic()
    work = _HopCheck(client, target, reference, mode, cache, asker, order)
    seen: dict[str, Any] = {"tag_digest": None, "digest": None}

    def observed(**facts: Any) -> HopObservation:
        answers = tuple(work.manifest_answers)
        return dataclasses.replace(
            base, **seen, duration=time.monotonic() - started, manifest_answers=answers, **facts
        )

    deadline = client.settings.check_deadline
    try:
        async with asyncio.timeout(deadline) as work.timer:
            return await _observe(work, seen, observed, verify)
    except TimeoutError:
        return observed(failure=Fault(FaultKind.DEADLINE, f"check deadline of {deadline:.0f}s passed"))
    except RegistryError as exc:
        return observed(failure=exc.fault)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug must end as a verdict for this hop, never cost the others theirs
        logger.exception("check of hop %s failed unexpectedly", target.hop.name)
        return observed(failure=Fault(FaultKind.INTERNAL, f"{type(exc).__name__}: {exc}"[:160]))
    finally:
        for task in work.blob_results.values():
            task.cancel()
        if order is not None:
            order[0].over(order[1])


async def _observe(
    work: _HopCheck, seen: dict[str, Any], observed: Callable[..., HopObservation], verify: Verify | None
) -> HopObservation:
    try:
        seen["tag_digest"], digest, fetched = await work.manifest_bytes()
    except RegistryNotFound as exc:
        asked = work.reference.digest
        return observed(manifest_problem=ManifestProblem(ManifestFault.NOT_FOUND, asked, fault=exc.fault))
    seen["digest"] = digest or None
    parsed = _parse(fetched, digest)
    if isinstance(parsed, ManifestProblem):
        return observed(manifest_problem=parsed)
    if verify is not None:
        repository = work.target.repository
        seen["signatures"] = await work.in_turn(
            f"signatures {digest}",
            lambda: observe_signatures(work.client, repository, digest, verify, work.budget),
        )
    if isinstance(parsed, manifests.Index):
        children = await _index_children(work, parsed)
        if isinstance(children, ManifestProblem):
            return observed(index=parsed, manifest_problem=children)
        return observed(index=parsed, manifests=children)
    return observed(manifests=(await work.manifest_check(digest, parsed, None),))


async def _index_children(
    work: _HopCheck, index: manifests.Index
) -> tuple[ManifestCheck, ...] | ManifestProblem:
    """Check every image manifest an index lists, or say what is wrong with the first bad child."""
    children = [c for c in index.manifests if c.media_type in manifests.MANIFEST_TYPES or not c.media_type]
    if len(children) > MAX_INDEX_CHILDREN:
        return ManifestProblem(ManifestFault.TOO_MANY_CHILDREN, count=len(children), limit=MAX_INDEX_CHILDREN)

    async def child(descriptor: manifests.Descriptor) -> ManifestCheck | ManifestProblem:
        def of_child(problem: ManifestProblem) -> ManifestProblem:
            return dataclasses.replace(
                problem, digest=descriptor.digest, child=True, platform=descriptor.platform
            )

        try:
            fetched = await work.child_manifest(descriptor.digest)
        except RegistryNotFound as exc:
            return of_child(ManifestProblem(ManifestFault.NOT_FOUND, fault=exc.fault))
        parsed = _parse(fetched, descriptor.digest)
        if isinstance(parsed, ManifestProblem):
            return of_child(parsed)
        if not isinstance(parsed, manifests.Manifest):
            return of_child(ManifestProblem(ManifestFault.NESTED_INDEX))
        return await work.manifest_check(descriptor.digest, parsed, descriptor.platform)

    results = await asyncio.gather(*(child(c) for c in children))
    for result in results:
        if isinstance(result, ManifestProblem):
            return result
    return tuple(r for r in results if isinstance(r, ManifestCheck))


async def check_target(
    reference: Reference,
    path: Sequence[HopTarget],
    clients: Mapping[str, RegistryClient],
    *,
    mode: Mode = Mode.FULL,
    layer_media_type: str | None = None,
    pinned_digest: str | None = None,
    cache: BlobCache | None = None,
    asker: Asker = ("", ""),
    verify: Verify | None = None,
) -> CheckResult:
    """Check one target over its whole pull path (hops concurrently, edge first per object: see
    `EdgeFirst`) and judge the result.

    ``clients`` maps hop names to their clients (shared across checks, so tokens and connections
    are reused). ``pinned_digest`` is the digest Flux resolved, for the "Flux is behind" note.
    ``asker`` names the target, so that its checks never trust their own earlier cache entries.
    ``verify`` (the OCIRepository's ``spec.verify.provider``) also checks signatures at every hop.
    """
    started = time.time()
    order = EdgeFirst(len(path), max((clients[t.hop.name].settings.check_deadline for t in path), default=0))
    try:
        observations = await asyncio.gather(
            *(
                observe_hop(
                    clients[t.hop.name],
                    t,
                    reference,
                    mode=mode,
                    cache=cache,
                    asker=asker,
                    verify=verify,
                    order=(order, position),
                )
                for position, t in enumerate(path)
            )
        )
    finally:
        order.close()
    judgement = judge(observations, layer_media_type=layer_media_type, pinned_digest=pinned_digest, mode=mode)
    return CheckResult(
        reference=reference,
        observations=tuple(observations),
        judgement=judgement,
        mode=mode,
        layer_media_type=layer_media_type,
        started=started,
        finished=time.time(),
    )


def failed_result(
    reference: Reference, path: Sequence[HopTarget], fault: Fault, *, mode: Mode
) -> CheckResult:
    """A check that could not run at all: every hop ends with ``fault`` (unknown), never silently."""
    now = time.time()
    observations = [
        HopObservation(
            hop=t.hop.name, url=t.hop.url, repository=t.repository, location=t.location, failure=fault
        )
        for t in path
    ]
    return CheckResult(reference, tuple(observations), judge(observations, mode=mode), mode, None, now, now)
