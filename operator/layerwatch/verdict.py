"""Verdicts and blame: pure functions from per-hop observations to what users are told.

One verdict per hop, the first rule that applies in the order of Verdict below. Unknown verdicts (could not
check) are never unhealthy. Blame walks from the origin toward the edge and names the first hop
where the worst class of problem appears, because a proxy passes its upstream's damage on.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

from layerwatch.chain import Mode
from layerwatch.manifest import FLUX_CONTENT, Descriptor, flux_layer
from layerwatch.observation import (
    BlobCheck,
    BlobFacts,
    BlobStatus,
    Fault,
    FaultKind,
    HopObservation,
    ManifestFault,
    ManifestProblem,
)
from layerwatch.reference import Reference, short_digest
from layerwatch.signatures import judge_signatures, referrers_notes
from layerwatch.text import one_line

__all__ = [
    "MESSAGE_LIMIT",
    "CheckResult",
    "Health",
    "HopVerdict",
    "Judgement",
    "Verdict",
    "classify_blob",
    "describe_fault",
    "describe_manifest_problem",
    "judge",
    "not_found",
    "verdict_of",
]


class Health(enum.IntEnum):
    """Verdict classes, ordered so that ``max`` picks the worst."""

    HEALTHY = 0
    UNKNOWN = 1
    UNHEALTHY = 2


class Verdict(enum.StrEnum):
    UNREACHABLE = "Unreachable"
    AUTH_FAILED = "AuthFailed"
    RATE_LIMITED = "RateLimited"
    MANIFEST_MISSING = "ManifestMissing"
    MANIFEST_CORRUPT = "ManifestCorrupt"
    DIGEST_MISMATCH = "DigestMismatch"
    LAYER_MISSING = "LayerMissing"
    LAYER_CORRUPT = "LayerCorrupt"
    LAYER_ORDER_MISMATCH = "LayerOrderMismatch"
    LAYER_SELECTOR_UNMATCHED = "LayerSelectorUnmatched"
    SIGNATURE_MISSING = "SignatureMissing"
    SIGNATURE_CORRUPT = "SignatureCorrupt"
    HEALTHY = "Healthy"

    @property
    def health(self) -> Health:
        if self is Verdict.HEALTHY:
            return Health.HEALTHY
        if self in (Verdict.UNREACHABLE, Verdict.AUTH_FAILED, Verdict.RATE_LIMITED):
            return Health.UNKNOWN
        return Health.UNHEALTHY


@dataclasses.dataclass(frozen=True)
class HopVerdict:
    hop: str
    verdict: Verdict
    message: str


@dataclasses.dataclass(frozen=True)
class Judgement:
    """Per-hop verdicts (edge first), the overall verdict, the blamed hop and notes."""

    hops: tuple[HopVerdict, ...]
    verdict: Verdict
    blame: str | None
    origin_digest: str | None
    notes: tuple[str, ...] = ()

    @property
    def health(self) -> Health:
        return self.verdict.health

    @property
    def message(self) -> str:
        """The blamed hop's message (or the first hop's when all are healthy): one line for people."""
        for hop in self.hops:
            if hop.hop == self.blame:
                return hop.message
        return self.hops[0].message if self.hops else ""


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One check of one target: what each hop served and what that means."""

    reference: Reference
    observations: tuple[HopObservation, ...]
    judgement: Judgement
    mode: Mode
    layer_media_type: str | None
    started: float
    finished: float


MESSAGE_LIMIT = 1024
"""Characters in one hop message or note at most: one line whatever a registry put in it."""
_FIELD_LIMIT = 120
"""Characters of one registry-supplied value (a media type, a platform) quoted in a message."""


def _quoted(text: str) -> str:
    """A registry-supplied value bounded, so that it cannot push the rest out of the message."""
    return one_line(text, _FIELD_LIMIT)


_AUTH_FAULTS = frozenset({FaultKind.AUTH_REJECTED, FaultKind.AUTH_UNANSWERABLE})


def verdict_of(fault: Fault) -> Verdict:
    """The unknown-class verdict a fault means: could not check, never unhealthy."""
    if fault.kind in _AUTH_FAULTS:
        return Verdict.AUTH_FAILED
    if fault.kind is FaultKind.RATE_LIMITED:
        return Verdict.RATE_LIMITED
    return Verdict.UNREACHABLE


def _registry_said(fault: Fault) -> str:
    """``(CODE: message)`` from an OCI error body, or nothing."""
    said = ": ".join(part for part in (fault.code, fault.registry_message) if part)
    return f" ({said})" if said else ""


def not_found(fault: Fault) -> str:
    """``404 MANIFEST_UNKNOWN``: the status and the registry's error code, as a 404 is quoted."""
    return f"{fault.status or 404} {fault.code}" if fault.code else f"{fault.status or 404}"


def describe_manifest_problem(problem: ManifestProblem, tag: str | None) -> str:
    """One line saying what is wrong with a manifest a hop served (``tag``: what the hop was asked)."""
    digest = short_digest(problem.digest) if problem.digest else ""
    platform = _quoted(problem.platform) if problem.platform else "no platform"
    name = f"child manifest {digest} ({platform})" if problem.child else ""
    where = f"{name}: " if name else ""
    fault = problem.fault or Fault(FaultKind.HTTP_STATUS, status=404)
    match problem.kind:
        case ManifestFault.NOT_FOUND if problem.child:
            return f"{name} missing ({not_found(fault)})"
        case ManifestFault.NOT_FOUND:
            return f"{f'manifest {digest}' if digest else f'tag {tag}'} unknown ({not_found(fault)})"
        case ManifestFault.ENCODED:
            encoding = _quoted(problem.detail)
            return f"{where}served with Content-Encoding {encoding}: not the bytes {digest} names"
        case ManifestFault.OVERSIZE:
            return f"{where}manifest larger than {problem.limit} bytes"
        case ManifestFault.TRUNCATED:
            of = f" of {problem.limit}" if problem.limit else ""
            what = f"manifest {digest}" if digest else f"manifest of tag {tag}"
            return f"{where}{what} truncated: {problem.count}{of} bytes (connection closed)"
        case ManifestFault.OTHER_BYTES:
            return f"{where}manifest bytes hash to {short_digest(problem.actual or '')}, not {digest}"
        case ManifestFault.UNPARSABLE:
            return f"{where}manifest {digest}: {_quoted(problem.detail)}"
        case ManifestFault.TOO_MANY_LAYERS:
            return f"{where}lists {problem.count} layers, more than the {problem.limit} checked"
        case ManifestFault.BLOB_TOO_LARGE:
            return f"{where}declares a blob of {problem.count} bytes, over the {problem.limit} byte limit"
        case ManifestFault.TOO_MANY_CHILDREN:
            return f"index lists {problem.count} manifests, more than the {problem.limit} checked"
        case ManifestFault.NESTED_INDEX:
            return f"{name} is itself an index"


def describe_fault(fault: Fault) -> str:
    """One line saying what stopped an exchange, as a person debugging the hop needs it."""
    attempts = f" after {fault.attempts} attempts" if fault.attempts > 1 else ""
    if fault.kind is FaultKind.HTTP_STATUS or (
        fault.kind in _AUTH_FAULTS and fault.status and not fault.detail
    ):
        text = f"HTTP {fault.status}{attempts}{_registry_said(fault)}"
        if fault.kind is FaultKind.AUTH_REJECTED:
            text += (
                " without credentials (none configured)"
                if fault.anonymous
                else " with the configured credentials"
            )
    elif fault.kind is FaultKind.RATE_LIMITED:
        text = f"HTTP 429{attempts}{_registry_said(fault)}; {fault.detail}".rstrip("; ")
    elif fault.kind is FaultKind.HOP_DOWN:
        text = f"hop down ({fault.detail}); probed again once per interval"
    elif fault.kind is FaultKind.INTERNAL:
        text = f"internal error in layerwatch ({fault.detail}); please report"
    else:
        text = f"{fault.detail or fault.kind.value}{attempts}"
    return one_line(f"{fault.subject}: {text}" if fault.subject else text, MESSAGE_LIMIT)


def classify_blob(descriptor: Descriptor, facts: BlobFacts) -> tuple[BlobStatus, str]:
    """What a hop's answer for one blob means: ok, missing, corrupt, or unchecked (with why)."""
    size = descriptor.size
    if facts.cached:
        return BlobStatus.OK, "verified by another target's check this interval"
    if facts.fault is not None:
        if facts.status == 404:
            return BlobStatus.MISSING, f"missing ({not_found(facts.fault)})"
        if facts.fault.kind is FaultKind.BODY_CUT:
            return BlobStatus.CORRUPT, f"truncated: {facts.received} of {size} bytes (connection closed)"
        return BlobStatus.UNCHECKED, describe_fault(facts.fault)
    if facts.encoding is not None:
        return (
            BlobStatus.CORRUPT,
            f"served with Content-Encoding {facts.encoding}: not the bytes the digest names",
        )
    if facts.headed:
        if facts.header_size is not None and facts.header_size != size:
            return BlobStatus.CORRUPT, f"size {facts.header_size}, expected {size}"
        return BlobStatus.OK, "present (HEAD)"
    if facts.overflow:
        return BlobStatus.CORRUPT, f"more than {size} bytes served"
    if facts.received < size:
        return BlobStatus.CORRUPT, f"truncated: {facts.received} of {size} bytes"
    if facts.actual != descriptor.digest:
        return BlobStatus.CORRUPT, f"content hashes to {short_digest(facts.actual)}"
    return BlobStatus.OK, "verified"


def _blob_name(blob: BlobCheck, platform: str | None) -> str:
    where = "config" if blob.index is None else f"layer {blob.index}"
    prefix = f"manifest for {_quoted(platform)}: " if platform else ""
    return f"{prefix}{where} {short_digest(blob.descriptor.digest)}"


def _blob_status(status: BlobStatus, detail: str) -> str:
    """``missing (404)``, ``corrupt (truncated: ...)``: the status once, then the detail if any.

    The registry client already words its detail as ``missing (404)``; repeating the status in
    front of it would read ``missing (missing (404))``.
    """
    if not detail:
        return status.value
    if detail.startswith(status.value):
        return detail
    return f"{status.value} ({detail})"


def _first_blob(observation: HopObservation, status: BlobStatus) -> str | None:
    for manifest in observation.manifests:
        for blob in manifest.blobs:
            if blob.status is status:
                return f"{_blob_name(blob, manifest.platform)} {_blob_status(status, blob.detail)}"
    return None


def _first_unchecked(observation: HopObservation) -> tuple[Verdict, str] | None:
    """The verdict and message of the first blob that could not be checked (its fault's)."""
    for manifest in observation.manifests:
        for blob in manifest.blobs:
            if blob.status is BlobStatus.UNCHECKED and blob.facts.fault is not None:
                return verdict_of(blob.facts.fault), f"{_blob_name(blob, manifest.platform)}: {blob.detail}"
    return None


def _reference_digest(observations: Sequence[HopObservation], position: int) -> HopObservation | None:
    """The observation a hop's tag resolution is compared with: the origin's, else the nearest upstream."""
    for upstream in reversed(observations[position + 1 :]):
        if upstream.failure is None and upstream.digest and upstream.manifests:
            return upstream
    return None


def _judge_hop(
    observations: Sequence[HopObservation], position: int, layer_media_type: str | None, mode: Mode
) -> tuple[Verdict, str]:
    obs = observations[position]
    if obs.failure is not None:
        return verdict_of(obs.failure), describe_fault(obs.failure)
    if obs.manifest_problem is not None:
        not_there = obs.manifest_problem.kind is ManifestFault.NOT_FOUND
        verdict = Verdict.MANIFEST_MISSING if not_there else Verdict.MANIFEST_CORRUPT
        return verdict, describe_manifest_problem(obs.manifest_problem, obs.tag)
    if not obs.manifests:
        return Verdict.MANIFEST_CORRUPT, "manifest has no image manifests"
    reordered = subset = False
    upstream = _reference_digest(observations, position)
    if obs.tag_digest and upstream is not None and upstream.tag_digest and obs.digest != upstream.digest:
        here, there = obs.layer_digests, upstream.layer_digests
        # Same layers in the same order under another digest (a stale tag whose manifest differs
        # only in annotations or config) is a digest mismatch, not a reordering.
        reordered = here != there and sorted(here) == sorted(there)
        subset = set(here) < set(there)
        if not (reordered or subset):
            return Verdict.DIGEST_MISMATCH, (
                f"tag {obs.tag} is {short_digest(obs.digest)} here but {short_digest(upstream.digest)} "
                f"at {upstream.hop}"
            )
    if subset and upstream is not None:
        lost = [d for d in upstream.layer_digests if d not in obs.layer_digests]
        return Verdict.LAYER_MISSING, (
            f"manifest lists {len(obs.layer_digests)} of the {len(upstream.layer_digests)} layers at "
            f"{upstream.hop}; {short_digest(lost[0])} missing"
        )
    # A definite finding about one blob is not hidden by another blob that could not be checked.
    missing = _first_blob(obs, BlobStatus.MISSING)
    if missing:
        return Verdict.LAYER_MISSING, missing
    corrupt = _first_blob(obs, BlobStatus.CORRUPT)
    if corrupt:
        return Verdict.LAYER_CORRUPT, corrupt
    unchecked = _first_unchecked(obs)
    if unchecked is not None:
        return unchecked
    if reordered and upstream is not None:
        return Verdict.LAYER_ORDER_MISMATCH, (
            f"same layers as at {upstream.hop} in another order (manifest {short_digest(obs.digest)} "
            f"vs {short_digest(upstream.digest)})"
        )
    for check in obs.manifests:
        manifest = check.manifest
        if layer_media_type is None:
            contents = [i for i, layer in enumerate(manifest.layers) if layer.media_type == FLUX_CONTENT]
            if contents and contents[0] != 0:
                return Verdict.LAYER_ORDER_MISMATCH, (
                    f"layer 0 is {_quoted(manifest.layers[0].media_type)}, not the Flux content layer (layer "
                    f"{contents[0]}); without layerSelector Flux extracts layer 0"
                )
        elif flux_layer(manifest, layer_media_type) is None:
            return Verdict.LAYER_SELECTOR_UNMATCHED, f"no layer has media type {_quoted(layer_media_type)}"
    signature = judge_signatures(observations, position)
    if signature is not None:
        verdict = Verdict.SIGNATURE_MISSING if signature.missing else Verdict.SIGNATURE_CORRUPT
        return verdict, signature.message
    blobs = sum(len(m.blobs) for m in obs.manifests)
    signed = f", {len(obs.signatures.signatures)} signatures" if obs.signatures is not None else ""
    if mode is Mode.HEAD:
        return Verdict.HEALTHY, (
            f"manifest {short_digest(obs.digest)} verified, {blobs} blobs present (HEAD){signed}"
        )
    return Verdict.HEALTHY, f"manifest {short_digest(obs.digest)} and {blobs} blobs verified{signed}"


def judge(
    observations: Sequence[HopObservation],
    *,
    layer_media_type: str | None = None,
    pinned_digest: str | None = None,
    mode: Mode = Mode.FULL,
) -> Judgement:
    """Verdict per hop (edge first, origin last), overall verdict and blame.

    This is where facts become words: every message and note leaves as one line of at most
    ``MESSAGE_LIMIT`` characters, whatever text a registry (or a tenant) put into it.

    ``pinned_digest`` is the digest Flux resolved for a tag; when the origin's tag now points
    elsewhere, a note says Flux is behind (not a hop fault).
    """
    verdicts: list[HopVerdict] = []
    for position, obs in enumerate(observations):
        verdict, detail = _judge_hop(observations, position, layer_media_type, mode)
        message = one_line(f"hop {obs.hop} ({obs.location}): {detail}", MESSAGE_LIMIT)
        verdicts.append(HopVerdict(obs.hop, verdict, message))
    worst = max((v.verdict.health for v in verdicts), default=Health.HEALTHY)
    blame: str | None = None
    overall = Verdict.HEALTHY
    if worst is not Health.HEALTHY:
        for hop_verdict in reversed(verdicts):
            if hop_verdict.verdict.health is worst:
                blame, overall = hop_verdict.hop, hop_verdict.verdict
                break
    origin = observations[-1] if observations else None
    origin_digest = origin.digest if origin and origin.failure is None else None
    notes: list[str] = referrers_notes(observations)
    if pinned_digest and origin is not None and origin.tag_digest and origin.tag_digest != pinned_digest:
        notes.append(
            f"Flux is behind: tag {origin.tag} at the origin is now {short_digest(origin.tag_digest)}, "
            f"Flux has {short_digest(pinned_digest)}"
        )
    safe_notes = tuple(one_line(note, MESSAGE_LIMIT) for note in notes)
    return Judgement(tuple(verdicts), overall, blame, origin_digest, safe_notes)
