"""Pulling one target through its pull path, the way Flux pulls it, into observations.

Per hop: resolve the tag (HEAD, GET when HEAD fails or gives no digest), GET the manifest by
digest and verify its bytes, then every blob of it (and of every child of an index). Hops run
concurrently and independently: one hop's failure never stops another. A blob verified at a hop
for a repository within the cache's lifetime is not fetched again (content-addressed), which is
what keeps many targets sharing layers cheap on the registries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from layerwatch import manifest as manifests
from layerwatch.chain import HopTarget, Mode
from layerwatch.observation import BlobCheck, BlobStatus, Failure, FailureKind, HopObservation, ManifestCheck
from layerwatch.reference import Reference, short_digest
from layerwatch.registry import (
    FetchedManifest,
    RegistryAuthFailed,
    RegistryClient,
    RegistryError,
    RegistryNotFound,
    RegistryRateLimited,
)
from layerwatch.verdict import CheckResult, judge

__all__ = ["BlobCache", "check_target", "observe_hop"]

_MAX_INDEX_CHILDREN = 64
"""Children of an index checked at most (a 64-platform index is already extreme)."""


class BlobCache:
    """Content verified recently at a hop: blobs and manifests, by (hop URL, repository, digest).

    Both are content-addressed, so what was verified stays true for its digest; ``ttl`` (the
    chain's interval) bounds how long layerwatch trusts that the hop still serves it. A manifest
    is kept with its bytes, so a check that resolves a tag to a known digest needs no GET: the
    HEAD alone, as Flux does between revisions.
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._verified: dict[tuple[str, str, str], tuple[float, FetchedManifest | None]] = {}

    def _entry(self, key: tuple[str, str, str]) -> tuple[float, FetchedManifest | None] | None:
        entry = self._verified.get(key)
        if entry is not None and self._clock() - entry[0] >= self.ttl:
            del self._verified[key]
            return None
        return entry

    def fresh(self, key: tuple[str, str, str]) -> bool:
        return self._entry(key) is not None

    def remember(self, key: tuple[str, str, str], manifest: FetchedManifest | None = None) -> None:
        self._verified[key] = (self._clock(), manifest)

    def manifest(self, key: tuple[str, str, str]) -> FetchedManifest | None:
        entry = self._entry(key)
        return entry[1] if entry is not None else None

    def prune(self) -> None:
        cutoff = self._clock() - self.ttl
        self._verified = {k: v for k, v in self._verified.items() if v[0] > cutoff}


class _HopCheck:
    """The work for one hop within one check (a small object so the steps can share state)."""

    def __init__(
        self,
        client: RegistryClient,
        target: HopTarget,
        reference: Reference,
        mode: Mode,
        cache: BlobCache | None,
    ) -> None:
        self.client, self.target, self.reference, self.mode, self.cache = (
            client,
            target,
            reference,
            mode,
            cache,
        )
        self.blob_results: dict[str, asyncio.Task[BlobCheck]] = {}

    async def manifest_bytes(self) -> tuple[str | None, str, FetchedManifest]:
        """(tag digest, manifest digest, bytes): resolve the tag, then fetch by digest."""
        repository, reference = self.target.repository, self.reference
        tag_digest: str | None = None
        if reference.digest is None and reference.tag is not None:
            try:
                tag_digest = await self.client.resolve(repository, reference.tag)
            except RegistryNotFound:
                tag_digest = None  # some proxies only answer GET; ask once more the full way.
            if tag_digest is None:
                fetched = await self.client.fetch_manifest(repository, reference.tag)
                tag_digest = fetched.digest_header or fetched.digest()
                return tag_digest, tag_digest, fetched
            return tag_digest, tag_digest, await self._manifest(tag_digest)
        digest = reference.ref
        return None, digest, await self._manifest(digest)

    def _key(self, digest: str) -> tuple[str, str, str]:
        return (self.target.hop.url, self.target.repository, digest)

    async def _manifest(self, digest: str) -> FetchedManifest:
        cached = self.cache.manifest(self._key(digest)) if self.cache is not None else None
        return cached or await self.client.fetch_manifest(self.target.repository, digest)

    def remember_manifest(self, digest: str, fetched: FetchedManifest) -> None:
        """A manifest whose bytes matched its digest and parsed: trusted for the cache's lifetime."""
        if self.cache is not None:
            self.cache.remember(self._key(digest), fetched)

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
        if self.cache is not None and self.cache.fresh(key):
            return BlobCheck(descriptor, None, BlobStatus.OK, "verified earlier this interval")
        result = await self.client.verify_blob(
            self.target.repository, descriptor, download=self.mode is Mode.FULL
        )
        if result.status == "ok" and self.cache is not None:
            self.cache.remember(key)
        return BlobCheck(descriptor, None, BlobStatus(result.status), result.detail, result.bytes_verified)

    async def manifest_check(
        self, digest: str, parsed: manifests.Manifest, platform: str | None
    ) -> ManifestCheck:
        blobs = await asyncio.gather(
            self.blob(parsed.config, None), *(self.blob(layer, i) for i, layer in enumerate(parsed.layers))
        )
        return ManifestCheck(digest, parsed, tuple(blobs), platform)


def _verify_manifest_bytes(fetched: FetchedManifest, digest: str) -> str | None:
    """Why the bytes are not the manifest ``digest`` names, or None when they are."""
    if len(fetched.body) > manifests.MAX_MANIFEST_BYTES:
        return f"manifest larger than {manifests.MAX_MANIFEST_BYTES} bytes"
    algorithm = digest.partition(":")[0]
    actual = fetched.digest(algorithm)
    if actual != digest:
        return f"manifest bytes hash to {short_digest(actual)}, not {short_digest(digest)}"
    return None


async def observe_hop(
    client: RegistryClient,
    target: HopTarget,
    reference: Reference,
    *,
    mode: Mode = Mode.FULL,
    cache: BlobCache | None = None,
) -> HopObservation:
    """Pull ``reference`` from one hop and record what it served; never raises for registry trouble."""
    base = HopObservation(
        hop=target.hop.name,
        url=target.hop.url,
        repository=target.repository,
        location=target.location,
        tag=reference.tag,
    )
    started = time.monotonic()
    work = _HopCheck(client, target, reference, mode, cache)
    seen: dict[str, Any] = {"tag_digest": None, "digest": None}

    def observed(**facts: Any) -> HopObservation:
        return dataclasses.replace(base, **seen, duration=time.monotonic() - started, **facts)

    try:
        try:
            seen["tag_digest"], digest, fetched = await work.manifest_bytes()
        except RegistryNotFound as exc:
            what = (
                f"tag {reference.tag}"
                if reference.digest is None
                else f"manifest {short_digest(reference.digest)}"
            )
            return observed(manifest_missing=f"{what} unknown ({exc.status})")
        seen["digest"] = digest
        problem = _verify_manifest_bytes(fetched, digest)
        if problem is not None:
            return observed(manifest_corrupt=problem)
        try:
            parsed = manifests.parse(fetched.body, fetched.media_type)
        except manifests.ManifestError as exc:
            return observed(manifest_corrupt=f"manifest {short_digest(digest)}: {exc}")
        work.remember_manifest(digest, fetched)
        if isinstance(parsed, manifests.Index):
            checks = await _index_children(work, parsed)
            if isinstance(checks, str):
                return observed(index=parsed, manifest_corrupt=checks)
            return observed(index=parsed, manifests=checks)
        return observed(manifests=(await work.manifest_check(digest, parsed, None),))
    except RegistryError as exc:
        kind = FailureKind.UNREACHABLE
        if isinstance(exc, RegistryAuthFailed):
            kind = FailureKind.AUTH_FAILED
        elif isinstance(exc, RegistryRateLimited):
            kind = FailureKind.RATE_LIMITED
        return observed(failure=Failure(kind, str(exc)))
    finally:
        for task in work.blob_results.values():
            task.cancel()


async def _index_children(work: _HopCheck, index: manifests.Index) -> tuple[ManifestCheck, ...] | str:
    """Check every image manifest an index lists; a string explains a corrupt or missing child."""
    children = [c for c in index.manifests if c.media_type in manifests.MANIFEST_TYPES or not c.media_type]
    if len(children) > _MAX_INDEX_CHILDREN:
        return f"index lists {len(children)} manifests, more than the {_MAX_INDEX_CHILDREN} checked"

    async def child(descriptor: manifests.Descriptor) -> ManifestCheck | str:
        try:
            fetched = await work.client.fetch_manifest(work.target.repository, descriptor.digest)
        except RegistryNotFound:
            return f"child manifest {short_digest(descriptor.digest)} ({descriptor.platform}) missing (404)"
        problem = _verify_manifest_bytes(fetched, descriptor.digest)
        if problem:
            return f"child manifest {descriptor.platform}: {problem}"
        try:
            parsed = manifests.parse(fetched.body, fetched.media_type)
        except manifests.ManifestError as exc:
            return f"child manifest {short_digest(descriptor.digest)}: {exc}"
        if not isinstance(parsed, manifests.Manifest):
            return f"child manifest {short_digest(descriptor.digest)} is itself an index"
        return await work.manifest_check(descriptor.digest, parsed, descriptor.platform)

    results = await asyncio.gather(*(child(c) for c in children))
    for result in results:
        if isinstance(result, str):
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
) -> CheckResult:
    """Check one target over its whole pull path (hops concurrently) and judge the result.

    ``clients`` maps hop names to their clients (shared across checks, so tokens and connections
    are reused). ``pinned_digest`` is the digest Flux resolved, for the "Flux is behind" note.
    """
    started = time.time()
    observations = await asyncio.gather(
        *(observe_hop(clients[t.hop.name], t, reference, mode=mode, cache=cache) for t in path)
    )
    judgement = judge(observations, layer_media_type=layer_media_type, pinned_digest=pinned_digest)
    return CheckResult(
        reference=reference,
        observations=tuple(observations),
        judgement=judgement,
        mode=mode,
        layer_media_type=layer_media_type,
        started=started,
        finished=time.time(),
    )
