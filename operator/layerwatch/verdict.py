"""Verdicts and blame: pure functions from per-hop observations to what users are told.

One verdict per hop, the first rule that applies in the order of Verdict below. Unknown verdicts (could not
check) are never unhealthy. Blame walks from the origin toward the edge and names the first hop
where the worst class of problem appears, because a proxy passes its upstream's damage on. A hop
whose only failures are a ``404`` or ``5xx`` (or the same damaged bytes) for objects its upstream
fails on too inherits them: it keeps the verdict a client meets there, and the blame goes to the
hop whose own answer explains it. Known Harbor failure signatures get a named ``Diagnosis``.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

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
    "Diagnosis",
    "DiagnosisName",
    "Health",
    "HopVerdict",
    "Judgement",
    "Verdict",
    "classify_blob",
    "describe_fault",
    "describe_manifest_problem",
    "diagnosis_json",
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


class DiagnosisName(enum.StrEnum):
    """Failure signatures of a real Harbor proxy-cache, recognised from the bytes and headers."""

    COLD_UPSTREAM_EMPTY_BODY = "cold-upstream-empty-body"
    CACHED_DATA_LOST = "cached-data-lost"
    MANIFESTS_PATH_SEGMENT = "manifests-path-segment"
    UPSTREAM_DOWN = "upstream-down"


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """A named cause: what it is, whether it heals by itself, and what to do (one line each)."""

    name: DiagnosisName
    what: str
    heals: bool
    remedy: str

    @property
    def words(self) -> str:
        """The diagnosis as the hop's message says it."""
        heals = "heals by itself" if self.heals else "never heals by itself"
        return f"{self.name.value}: {self.what}; {heals}; {self.remedy}"


def diagnosis_json(diagnosis: Diagnosis | None) -> dict[str, Any] | None:
    """A diagnosis as the JSON report and the status API carry it."""
    if diagnosis is None:
        return None
    return {"name": diagnosis.name.value, "heals": diagnosis.heals, "remedy": diagnosis.remedy}


@dataclasses.dataclass(frozen=True)
class HopVerdict:
    """``inherited_from``: the hop whose failure this one only passes on (blame goes there)."""

    hop: str
    verdict: Verdict
    message: str
    inherited_from: str | None = None
    diagnosis: Diagnosis | None = None


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
    def blamed(self) -> HopVerdict | None:
        return next((hop for hop in self.hops if hop.hop == self.blame), None)

    @property
    def blamed_verdict(self) -> Verdict:
        """The blamed hop's own verdict: the cause that pages (``verdict`` is what a client meets)."""
        blamed = self.blamed
        return blamed.verdict if blamed is not None else self.verdict

    @property
    def message(self) -> str:
        """The blamed hop's message (or the first hop's when all are healthy): one line for people.

        When the verdict is one the blamed hop only causes (core down, edge answers ``404``), the
        message of the hop that inherits it comes first: it says what a client meets and why.
        """
        blamed = self.blamed
        if blamed is None:
            return self.hops[0].message if self.hops else ""
        heir = next(
            (
                hop
                for hop in reversed(self.hops)
                if hop.inherited_from == blamed.hop and hop.verdict is self.verdict
            ),
            None,
        )
        if blamed.verdict is self.verdict or heir is None:
            return blamed.message
        return one_line(f"{heir.message}; {blamed.message}", MESSAGE_LIMIT)


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


class _Finding(NamedTuple):
    """A hop's verdict and detail; ``objects``: it comes from answers about single objects (a
    manifest, a blob), which a proxy may only pass on, not from comparing what it serves."""

    verdict: Verdict
    detail: str
    objects: bool = False


def _judge_hop(
    observations: Sequence[HopObservation], position: int, layer_media_type: str | None, mode: Mode
) -> _Finding:
    obs = observations[position]
    if obs.failure is not None:
        return _Finding(verdict_of(obs.failure), describe_fault(obs.failure), objects=True)
    if obs.manifest_problem is not None:
        not_there = obs.manifest_problem.kind is ManifestFault.NOT_FOUND
        verdict = Verdict.MANIFEST_MISSING if not_there else Verdict.MANIFEST_CORRUPT
        return _Finding(verdict, describe_manifest_problem(obs.manifest_problem, obs.tag), objects=True)
    if not obs.manifests:
        return _Finding(Verdict.MANIFEST_CORRUPT, "manifest has no image manifests")
    reordered = subset = False
    upstream = _reference_digest(observations, position)
    if obs.tag_digest and upstream is not None and upstream.tag_digest and obs.digest != upstream.digest:
        here, there = obs.layer_digests, upstream.layer_digests
        # Same layers in the same order under another digest (a stale tag whose manifest differs
        # only in annotations or config) is a digest mismatch, not a reordering.
        reordered = here != there and sorted(here) == sorted(there)
        subset = set(here) < set(there)
        if not (reordered or subset):
            return _Finding(
                Verdict.DIGEST_MISMATCH,
                f"tag {obs.tag} is {short_digest(obs.digest)} here but {short_digest(upstream.digest)} "
                f"at {upstream.hop}",
            )
    if subset and upstream is not None:
        lost = [d for d in upstream.layer_digests if d not in obs.layer_digests]
        return _Finding(
            Verdict.LAYER_MISSING,
            f"manifest lists {len(obs.layer_digests)} of the {len(upstream.layer_digests)} layers at "
            f"{upstream.hop}; {short_digest(lost[0])} missing",
        )
    # A definite finding about one blob is not hidden by another blob that could not be checked.
    missing = _first_blob(obs, BlobStatus.MISSING)
    if missing:
        return _Finding(Verdict.LAYER_MISSING, missing, objects=True)
    corrupt = _first_blob(obs, BlobStatus.CORRUPT)
    if corrupt:
        return _Finding(Verdict.LAYER_CORRUPT, corrupt, objects=True)
    unchecked = _first_unchecked(obs)
    if unchecked is not None:
        return _Finding(*unchecked, objects=True)
    if reordered and upstream is not None:
        return _Finding(
            Verdict.LAYER_ORDER_MISMATCH,
            f"same layers as at {upstream.hop} in another order (manifest {short_digest(obs.digest)} "
            f"vs {short_digest(upstream.digest)})",
        )
    for check in obs.manifests:
        manifest = check.manifest
        if layer_media_type is None:
            contents = [i for i, layer in enumerate(manifest.layers) if layer.media_type == FLUX_CONTENT]
            if contents and contents[0] != 0:
                return _Finding(
                    Verdict.LAYER_ORDER_MISMATCH,
                    f"layer 0 is {_quoted(manifest.layers[0].media_type)}, not the Flux content layer (layer "
                    f"{contents[0]}); without layerSelector Flux extracts layer 0",
                )
        elif flux_layer(manifest, layer_media_type) is None:
            return _Finding(
                Verdict.LAYER_SELECTOR_UNMATCHED, f"no layer has media type {_quoted(layer_media_type)}"
            )
    signature = judge_signatures(observations, position)
    if signature is not None:
        verdict = Verdict.SIGNATURE_MISSING if signature.missing else Verdict.SIGNATURE_CORRUPT
        return _Finding(verdict, signature.message)
    blobs = sum(len(m.blobs) for m in obs.manifests)
    signed = f", {len(obs.signatures.signatures)} signatures" if obs.signatures is not None else ""
    if mode is Mode.HEAD:
        return _Finding(
            Verdict.HEALTHY,
            f"manifest {short_digest(obs.digest)} verified, {blobs} blobs present (HEAD){signed}",
        )
    return _Finding(
        Verdict.HEALTHY, f"manifest {short_digest(obs.digest)} and {blobs} blobs verified{signed}"
    )


# -- inherited failures ---------------------------------------------------------------------------


class _Answer(enum.Enum):
    """What a hop answered for one object it failed on."""

    NOT_FOUND = "404"
    SERVER_ERROR = "5xx"
    CORRUPT = "corrupt"
    OTHER = "other"


_Object = tuple[str, str]
"""``("manifest", "")`` for the reference checked, ``("manifest", digest)`` for an index's child,
``("blob", digest)`` for a blob."""
_TOP: _Object = ("manifest", "")
_Failures = Mapping[_Object, tuple[_Answer, Verdict]]


def _answer(fault: Fault) -> _Answer:
    server_error = fault.kind is FaultKind.HTTP_STATUS and (fault.status or 0) >= 500
    return _Answer.SERVER_ERROR if server_error else _Answer.OTHER


def _failures(obs: HopObservation) -> _Failures:
    """Every object a hop failed on, with its answer and the verdict that failure means alone."""
    if obs.failure is not None:
        return {_TOP: (_answer(obs.failure), verdict_of(obs.failure))}
    failed: dict[_Object, tuple[_Answer, Verdict]] = {}
    problem = obs.manifest_problem
    if problem is not None:
        key = ("manifest", problem.digest or "") if problem.child else _TOP
        if problem.kind is ManifestFault.NOT_FOUND:
            failed[key] = (_Answer.NOT_FOUND, Verdict.MANIFEST_MISSING)
        else:
            failed[key] = (_Answer.CORRUPT, Verdict.MANIFEST_CORRUPT)
    for check in obs.manifests:
        for blob in check.blobs:
            key = ("blob", blob.descriptor.digest)
            if blob.status is BlobStatus.MISSING:
                failed[key] = (_Answer.NOT_FOUND, Verdict.LAYER_MISSING)
            elif blob.status is BlobStatus.CORRUPT:
                failed[key] = (_Answer.CORRUPT, Verdict.LAYER_CORRUPT)
            elif blob.status is BlobStatus.UNCHECKED and blob.facts.fault is not None:
                failed[key] = (_answer(blob.facts.fault), verdict_of(blob.facts.fault))
    return failed


def _cause(upstream: HopObservation, failed: _Failures, key: _Object) -> tuple[_Answer, Verdict] | None:
    """How a hop's upstream fails on an object, when that failure explains what the hop passes on.

    An upstream refusing layerwatch's credentials or rate-limiting it says nothing about what it
    serves the hop in front of it; one that cannot be reached at all fails on everything.
    """
    if upstream.failure is not None:
        down = upstream.failure.kind is not FaultKind.INTERNAL
        found: tuple[_Answer, Verdict] | None = (_answer(upstream.failure), verdict_of(upstream.failure))
    else:
        down, found = True, failed.get(key)
    if (
        found is None
        or not down
        or (found[1].health is Health.UNKNOWN and found[1] is not Verdict.UNREACHABLE)
    ):
        return None
    return found


@dataclasses.dataclass(frozen=True)
class _Inherited:
    """Why a hop's failures are not its own: per object, the hop that explains it and its verdict."""

    roots: Mapping[_Object, tuple[int, Verdict]]
    verdict: Verdict


def _inherit(observations: Sequence[HopObservation], findings: Sequence[_Finding]) -> list[_Inherited | None]:
    """For each hop, from the origin outward: whether all its failures are passed on from upstream.

    A hop passes an object's failure on when it answers ``404`` or ``5xx`` for it (or the same
    damaged bytes) while its upstream fails on that object too. One failure of its own (another
    object, a stale tag, a dropped layer) makes everything at the hop its own.
    """
    failures = [_failures(obs) for obs in observations]
    inherited: list[_Inherited | None] = [None] * len(observations)
    for position in range(len(observations) - 2, -1, -1):
        finding = findings[position]
        if finding.verdict is Verdict.HEALTHY or not finding.objects or not failures[position]:
            continue
        upstream = inherited[position + 1]
        roots: dict[_Object, tuple[int, Verdict]] = {}
        verdicts: list[Verdict] = []
        for key, (answer, verdict) in failures[position].items():
            cause = _cause(observations[position + 1], failures[position + 1], key)
            passable = answer in (_Answer.NOT_FOUND, _Answer.SERVER_ERROR) or (
                answer is _Answer.CORRUPT and cause is not None and cause[0] is _Answer.CORRUPT
            )
            if cause is None or not passable:
                break
            root = upstream.roots.get(key) if upstream is not None else None
            roots[key] = root or (position + 1, cause[1])
            verdicts.append(roots[key][1] if answer is _Answer.SERVER_ERROR else verdict)
        else:
            worst = max(verdicts, key=lambda v: (v.health, -list(Verdict).index(v)))
            inherited[position] = _Inherited(roots, worst)
    return inherited


# -- named Harbor diagnoses -----------------------------------------------------------------------

COLD_UPSTREAM = Diagnosis(
    DiagnosisName.COLD_UPSTREAM_EMPTY_BODY,
    "answered 200 with an empty body (Content-Length 0) for a blob its upstream had not cached yet, "
    "Harbor's cold-chain bug goharbor/harbor#23373 (fixed on Harbor's main, in no release up to v2.15.2)",
    True,
    "pull again, or warm the upstream first by pulling through the next hop; upgrade Harbor once a "
    "release carries the fix",
)
CACHED_DATA_LOST = Diagnosis(
    DiagnosisName.CACHED_DATA_LOST,
    "announced the full length, then closed the connection with 0 bytes, again on retry: its storage "
    "lost the blob's data while its descriptor cache (Harbor's Redis layerinfo) still lists it",
    False,
    "delete the artifact in the proxy project and clear the blob's layerinfo entry in Harbor's Redis "
    "(or flush or restart that Redis); garbage collection alone may not clear it",
)
MANIFESTS_PATH_SEGMENT = Diagnosis(
    DiagnosisName.MANIFESTS_PATH_SEGMENT,
    "serves the manifest but answers 404 for blobs, and the repository path has a 'manifests' segment: "
    "Harbor's proxy-cache routes a blob URL under a 'manifests' path segment as a manifest URL, so blob "
    "requests fail (not on every request)",
    False,
    "rename the repository so that no path segment is 'manifests', or pull it from a non-proxy project",
)


def _upstream_down(root: str) -> Diagnosis:
    return Diagnosis(
        DiagnosisName.UPSTREAM_DOWN,
        f"answers in place of hop {root}, which could not be checked (Unreachable), for what it has "
        "not cached itself",
        True,
        f"bring hop {root} back; nothing to fix at this hop",
    )


def _empty_body(blob: BlobCheck) -> bool:
    """An empty 200 for a non-empty blob, ended without an error: Content-Length 0."""
    facts = blob.facts
    return (
        facts.status == 200
        and facts.received == 0
        and facts.fault is None
        and not (facts.headed or facts.cached or facts.overflow)
        and facts.encoding is None
        and blob.descriptor.size > 0
    )


def _data_lost(blob: BlobCheck) -> bool:
    """A 200 whose connection closed before a single byte (the client has already retried once)."""
    fault = blob.facts.fault
    return blob.facts.received == 0 and fault is not None and fault.kind is FaultKind.BODY_CUT


def _diagnose(obs: HopObservation, verdict: Verdict, *, passed_on: bool) -> Diagnosis | None:
    """A named Harbor failure at a proxy hop (one with an upstream).

    Damaged bytes a hop only passes on are its upstream's to name; a ``manifests`` segment breaks
    every Harbor hop of the path on its own, so a hop passing the 404s on is named too. Harbor
    decides that 404 per request (the same blob alternates 404 and 200), so one 404 blob is enough.
    """
    blobs = [blob for check in obs.manifests for blob in check.blobs]
    if verdict is Verdict.LAYER_CORRUPT and not passed_on:
        corrupt = next(blob for blob in blobs if blob.status is BlobStatus.CORRUPT)
        if _empty_body(corrupt):
            return COLD_UPSTREAM
        if _data_lost(corrupt):
            return CACHED_DATA_LOST
    if (
        verdict is Verdict.LAYER_MISSING
        and any(blob.status is BlobStatus.MISSING for blob in blobs)
        and "manifests" in obs.repository.split("/")
    ):
        return MANIFESTS_PATH_SEGMENT
    return None


def _hop_verdict(
    observations: Sequence[HopObservation],
    position: int,
    finding: _Finding,
    inherited: _Inherited | None,
) -> HopVerdict:
    """One hop's verdict and message: its own finding, or what it passes on and from where."""
    obs = observations[position]
    verdict, detail = finding.verdict, finding.detail
    root: str | None = None
    diagnosis: Diagnosis | None = None
    suffix = ""
    if inherited is not None:
        deepest, cause = max(inherited.roots.values(), key=lambda root: root[0])
        root, verdict = observations[deepest].hop, inherited.verdict
        suffix = f"; passed on from hop {root} ({cause.value} there)"
        down = [at for at, why in inherited.roots.values() if why is Verdict.UNREACHABLE]
        diagnosis = _upstream_down(observations[max(down)].hop) if down else None
    if diagnosis is None and position < len(observations) - 1:
        diagnosis = _diagnose(obs, verdict, passed_on=inherited is not None)
    if diagnosis is not None:
        suffix += f"; {diagnosis.words}"
    head = f"hop {obs.hop} ({obs.location}): "
    # The registry's words in ``detail`` are bounded so that they cannot push the diagnosis out.
    room = max(MESSAGE_LIMIT - len(head) - len(suffix), _FIELD_LIMIT)
    message = one_line(f"{head}{one_line(detail, room)}{suffix}", MESSAGE_LIMIT)
    return HopVerdict(obs.hop, verdict, message, root, diagnosis)


def _unchecked_upstream_notes(verdicts: Sequence[HopVerdict]) -> list[str]:
    """A hop unhealthy on its own in front of one that could not be checked may still pass on its fault."""
    return [
        f"{upstream.hop} could not be checked; {hop.hop} may only pass on its failure"
        for hop, upstream in itertools.pairwise(verdicts)
        if hop.verdict.health is Health.UNHEALTHY
        and hop.inherited_from is None
        and upstream.verdict.health is Health.UNKNOWN
    ]


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
    findings = [_judge_hop(observations, p, layer_media_type, mode) for p in range(len(observations))]
    inherited = _inherit(observations, findings)
    verdicts = [_hop_verdict(observations, p, finding, inherited[p]) for p, finding in enumerate(findings)]
    worst = max((v.verdict.health for v in verdicts), default=Health.HEALTHY)
    blame: str | None = None
    overall = Verdict.HEALTHY
    if worst is not Health.HEALTHY:
        deepest = next(v for v in reversed(verdicts) if v.verdict.health is worst)
        blame, overall = deepest.inherited_from or deepest.hop, deepest.verdict
    origin = observations[-1] if observations else None
    origin_digest = origin.digest if origin and origin.failure is None else None
    notes: list[str] = [*_unchecked_upstream_notes(verdicts), *referrers_notes(observations)]
    if pinned_digest and origin is not None and origin.tag_digest and origin.tag_digest != pinned_digest:
        notes.append(
            f"Flux is behind: tag {origin.tag} at the origin is now {short_digest(origin.tag_digest)}, "
            f"Flux has {short_digest(pinned_digest)}"
        )
    safe_notes = tuple(one_line(note, MESSAGE_LIMIT) for note in notes)
    return Judgement(tuple(verdicts), overall, blame, origin_digest, safe_notes)
