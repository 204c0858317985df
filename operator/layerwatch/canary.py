"""The cold-path canary: a fresh artifact pushed at the origin, pulled through every hop, edge first.

Watching the artifacts Flux already pulled checks warm caches; the first pull of a new release
takes another path (each proxy asks its upstream, which asks its own). A chain that opts in gets,
once per interval, a new small Flux artifact (fresh config and content layer, so a new digest) under
a new tag ``canary-<unix seconds>`` at the origin, then pulled by that tag hop after hop from the
edge inward: the edge is asked before any inner hop, so nothing layerwatch does warms the path the
edge takes. The pull is judged by ``verdict.judge`` like any check, and the result belongs to the
chain (a ProxyChain condition, metrics, an alert), never to an OCIRepository.

Old canary tags are deleted at the origin (by digest, as the registry API deletes), keeping the
newest few. A registry that refuses deletes gets a warning in the result; once the tags left pile
up to ``PILE_LIMIT`` the canary stops pushing (unknown, with the reason) rather than fill the
registry. The push credentials go to the origin hop's URL over its own transport only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import io
import json
import os
import re
import tarfile
import time
from collections.abc import Callable, Mapping

from layerwatch.chain import Chain, Mode
from layerwatch.check import observe_hop
from layerwatch.manifest import FLUX_CONFIG, FLUX_CONTENT, OCI_MANIFEST
from layerwatch.observation import Fault, FaultKind, HopObservation
from layerwatch.registry import RegistryClient, RegistryError
from layerwatch.registry.push import delete_manifest, digest_of, list_tags, push_blob, push_manifest
from layerwatch.text import one_line
from layerwatch.verdict import MESSAGE_LIMIT, CheckResult, Health, describe_fault, judge

__all__ = [
    "CANARY_TAG",
    "CLEANUP_REFUSED",
    "CONDITION_TYPE",
    "PILE_LIMIT",
    "PUSH_FAILED",
    "CanaryArtifact",
    "CanaryResult",
    "build_artifact",
    "run_canary",
]

CONDITION_TYPE = "ColdPathHealthy"
"""The ProxyChain condition the canary's verdict goes to."""
PUSH_FAILED = "CanaryPushFailed"
"""Reason of an unknown result: the origin did not take the canary (nothing was pulled)."""
CLEANUP_REFUSED = "CanaryCleanupRefused"
"""Reason of an unknown result: old canary tags cannot be deleted and the pile is full."""
CANARY_TAG = re.compile(r"canary-([0-9]{1,12})")
PILE_LIMIT = 60
"""Canary tags left at the origin at most: past this (deletes refused) the canary pushes no more."""
MAX_DELETES = 20
"""Old tags deleted in one run at most; a backlog goes over a few runs."""
CONTENT_BYTES = 4096
"""Random bytes in the content file: the gzip layer is over 4 KiB, above the ~2 KiB at which a
cold Harbor-behind-Harbor serves empty blobs (goharbor/harbor#23373)."""

_STATUS = {Health.HEALTHY: "True", Health.UNHEALTHY: "False", Health.UNKNOWN: "Unknown"}


@dataclasses.dataclass(frozen=True)
class CanaryArtifact:
    """What one run pushes: a Flux artifact nobody has pulled yet."""

    tag: str
    config: bytes
    layer: bytes
    manifest: bytes


def build_artifact(now: float, nonce: bytes) -> CanaryArtifact:
    """A Flux artifact (config + one gzip tar content layer) unique to ``now`` and ``nonce``."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    content = nonce + os.urandom(CONTENT_BYTES)
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as archive:
        info = tarfile.TarInfo("canary.bin")
        info.size, info.mtime = len(content), int(now)
        archive.addfile(info, io.BytesIO(content))
    layer = gzip.compress(tar_bytes.getvalue(), mtime=0)
    config = json.dumps({"created": created, "nonce": nonce.hex()}, sort_keys=True).encode()

    def descriptor(media_type: str, blob: bytes) -> dict[str, object]:
        return {"mediaType": media_type, "digest": digest_of(blob), "size": len(blob)}

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(FLUX_CONFIG, config),
            "layers": [descriptor(FLUX_CONTENT, layer)],
            "annotations": {
                "org.opencontainers.image.created": created,
                "org.opencontainers.image.source": "layerwatch cold-path canary",
            },
        },
        sort_keys=True,
    ).encode()
    return CanaryArtifact(f"canary-{int(now)}", config, layer, manifest)


@dataclasses.dataclass(frozen=True)
class CanaryResult:
    """One canary run of a chain: the pull's result, or why there was none; and the clean-up."""

    chain: str
    started: float
    finished: float
    tag: str | None = None
    digest: str | None = None
    result: CheckResult | None = None
    """The pull through every hop (None when the push did not happen)."""
    unknown_reason: str | None = None
    """``PUSH_FAILED`` or ``CLEANUP_REFUSED`` when nothing was pulled."""
    unknown_message: str = ""
    cleanup_warning: str | None = None
    """Old canary tags could not be deleted: why, and how many are left."""

    @property
    def health(self) -> Health:
        return self.result.judgement.health if self.result is not None else Health.UNKNOWN

    @property
    def reason(self) -> str:
        """The blamed hop's verdict (``Healthy`` when all are), else why nothing was pulled."""
        if self.result is not None:
            return self.result.judgement.verdict.value
        return self.unknown_reason or PUSH_FAILED

    @property
    def message(self) -> str:
        """One line: the blamed hop's message (and notes), then the clean-up warning if any."""
        if self.result is not None:
            judgement = self.result.judgement
            text = judgement.message
            if judgement.notes:
                text += "; " + "; ".join(judgement.notes)
        else:
            text = self.unknown_message
        if self.cleanup_warning:
            text += f"; {self.cleanup_warning}"
        return one_line(text, MESSAGE_LIMIT)

    def condition(self, generation: int) -> dict[str, object]:
        """The ProxyChain's ``ColdPathHealthy`` condition (without ``lastTransitionTime``)."""
        return {
            "type": CONDITION_TYPE,
            "status": _STATUS[self.health],
            "reason": self.reason,
            "message": self.message,
            "observedGeneration": generation,
        }


async def _cleanup(
    client: RegistryClient, repository: str, keep: int, deadline: float
) -> tuple[str | None, int]:
    """Delete canary tags but the newest ``keep - 1`` (this run adds one): (warning, tags left).

    Tags that cannot even be listed count as a full pile: what cannot be cleaned up is not pushed.
    """
    budget = client.budget()
    left = PILE_LIMIT
    try:
        async with asyncio.timeout(deadline):
            tags = await list_tags(client, repository, budget)
            ours = sorted((int(m.group(1)), t) for t in tags if (m := CANARY_TAG.fullmatch(t)))
            doomed = [tag for _, tag in ours[: max(0, len(ours) - (keep - 1))]]
            left = len(ours)
            for tag in doomed[:MAX_DELETES]:
                digest = await client.resolve(repository, tag, budget)
                if digest is not None:
                    await delete_manifest(client, repository, digest, budget)
                left -= 1
    except TimeoutError:
        return f"old canary tags not cleaned up at the origin: deadline of {deadline:.0f}s passed", left
    except RegistryError as exc:
        what = describe_fault(exc.fault)
        if left >= PILE_LIMIT:
            return f"old canary tags not cleaned up at the origin ({what})", left
        return f"old canary tags not cleaned up at the origin ({what}); {left} canary tags left", left
    return None, left


async def _push(client: RegistryClient, repository: str, artifact: CanaryArtifact) -> str:
    budget = client.budget()
    for blob in (artifact.config, artifact.layer):
        await push_blob(client, repository, blob, budget)
    return await push_manifest(client, repository, artifact.tag, artifact.manifest, OCI_MANIFEST, budget)


async def run_canary(
    chain: Chain,
    push_client: RegistryClient,
    clients: Mapping[str, RegistryClient],
    *,
    clock: Callable[[], float] = time.time,
    nonce: Callable[[int], bytes] = os.urandom,
) -> CanaryResult:
    """One canary run: clean up, push a fresh artifact at the origin, pull it edge first, judge.

    ``push_client`` talks to the origin hop with the canary's credentials; ``clients`` are the
    chain's own, by hop name. Never raises for registry trouble: it ends in the result.
    """
    canary = chain.canary
    if canary is None:
        raise ValueError(f"chain {chain.name} has no canary")
    started = clock()
    deadline = push_client.settings.check_deadline
    location = f"{chain.origin.host}/{canary.repository}"
    warning, left = await _cleanup(push_client, canary.repository, canary.keep, deadline)
    if warning is not None and left >= PILE_LIMIT:
        message = f"{warning}; the canary pushes no more to {location} until they are deleted"
        return CanaryResult(
            chain.name, started, clock(), unknown_reason=CLEANUP_REFUSED, unknown_message=message
        )
    artifact = build_artifact(started, nonce(16))
    try:
        async with asyncio.timeout(deadline):
            digest = await _push(push_client, canary.repository, artifact)
    except (TimeoutError, RegistryError) as exc:
        passed = Fault(FaultKind.DEADLINE, f"push deadline of {deadline:.0f}s passed")
        fault = exc.fault if isinstance(exc, RegistryError) else passed
        why = describe_fault(fault)
        message = f"canary push to the origin {location} failed: {why}; cold path not checked"
        return CanaryResult(
            chain.name,
            started,
            clock(),
            tag=artifact.tag,
            unknown_reason=PUSH_FAILED,
            unknown_message=message,
            cleanup_warning=warning,
        )
    reference = chain.canary_reference(artifact.tag)
    observations: list[HopObservation] = []
    for target in chain.pull_path(reference):  # one after the other: the edge is asked first
        observations.append(await observe_hop(clients[target.hop.name], target, reference, mode=Mode.FULL))
    judgement = judge(observations, pinned_digest=digest, mode=Mode.FULL)
    finished = clock()
    result = CheckResult(reference, tuple(observations), judgement, Mode.FULL, None, started, finished)
    return CanaryResult(chain.name, started, finished, artifact.tag, digest, result, cleanup_warning=warning)
