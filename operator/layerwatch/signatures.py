"""Signatures per hop as Flux's verifier finds them, compared with the origin's (pure).

Flux checks ``spec.verify`` only when it pulls a new revision, so a proxy hop that lost a
signature breaks the *next* release, far from the cause. What the verifiers look up:

- cosign (source-controller since Flux 2.8): bundles among the OCI 1.1 referrers of the digest
  (``GET /v2/<name>/referrers/<digest>``; on 404 the ``sha256-<hex>`` referrers tag), and when none
  is found the legacy ``sha256-<hex>.sig`` tag;
- notation: the referrers API filtered by ``artifactType`` (re-applied on the answer, since a
  registry may ignore the filter), with the same tag fallback.

This module names what to ask for and judges what each hop served; `layerwatch.signature_lookup`
does the asking. Cryptographic verification stays Flux's job, but for the optional key check of
cosign signatures (`layerwatch.signature_keys`, only when a key is given).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from layerwatch.observation import BlobStatus
from layerwatch.reference import short_digest

if TYPE_CHECKING:
    from layerwatch.observation import HopObservation

__all__ = [
    "COSIGN_BUNDLE",
    "NOTATION_SIGNATURE",
    "Finding",
    "KeyedCosign",
    "Provider",
    "ReferrersApi",
    "SignatureCheck",
    "SignatureObservation",
    "Verify",
    "judge_signatures",
    "parse_verify",
    "referrers_notes",
    "referrers_tag",
    "sig_tag",
    "signatures_json",
]

COSIGN_BUNDLE = "application/vnd.dev.sigstore.bundle"
"""Prefix of cosign bundle artifact types (``…bundle.v0.3+json``)."""
NOTATION_SIGNATURE = "application/vnd.cncf.notary.signature"
COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
MAX_REFERRERS = 64
"""Referrers followed at most per digest (an index of hundreds is an attack, not signatures)."""
HARBOR_HINT = (
    "a Harbor proxy-cache project (up to v2.15.2) answers the referrers API only from what it has "
    "cached and never asks its upstream: a signature shows there about 20 s after something pulled it "
    "by digest through this hop; the proxy_referrer_api setting that forwards it exists only on "
    "Harbor's main, in no release up to v2.15.2"
)
"""True of Harbor v2.15.2, measured on it: what a cold Harbor hop's referrers API says, and why."""


class Provider(enum.StrEnum):
    """``spec.verify.provider`` of an OCIRepository (and ``verify.provider`` of chains and Targets)."""

    COSIGN = "cosign"
    NOTATION = "notation"


def parse_verify(value: object, where: str) -> Provider | None:
    """The provider of a ``verify`` mapping (cosign when the mapping has none, as Flux defaults).

    Raises ``ValueError`` naming ``where`` for anything else than a mapping with a known provider.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: verify must be a mapping like {{provider: cosign}}")
    provider = value.get("provider", Provider.COSIGN.value)
    if provider not in {p.value for p in Provider}:
        raise ValueError(f"{where}: verify.provider must be cosign or notation, not {provider!r}")
    return Provider(provider)


@dataclasses.dataclass(frozen=True)
class KeyedCosign:
    """cosign signatures that must also verify with ``public_key`` (PEM): the optional key check."""

    public_key: bytes


Verify = Provider | KeyedCosign
"""What a check looks for: a provider's signatures, or cosign signatures made with one key."""


class ReferrersApi(enum.StrEnum):
    """How the hop answered ``GET /v2/<name>/referrers/<digest>``."""

    OK = "ok"
    ABSENT = "absent"
    """404: the hop has no referrers API (clients fall back to the ``sha256-<hex>`` tag)."""


@dataclasses.dataclass(frozen=True)
class SignatureCheck:
    """One signature as this hop served it.

    ``key`` identifies the signature across hops: the manifest digest of a bundle or notation
    signature; for a ``.sig`` tag, whose manifest changes whenever someone signs again, the layer
    digest with a hash of its signature annotation (one layer per signature).
    """

    kind: str
    key: str
    manifest: str
    found_via: str
    status: BlobStatus
    detail: str = ""
    bytes_verified: int = 0
    trusted: bool | None = None
    """Whether it verifies with the key given for the optional key check (None: no key given)."""

    @property
    def name(self) -> str:
        return f"{self.kind} {short_digest(self.manifest)} ({self.found_via})"


@dataclasses.dataclass(frozen=True)
class SignatureObservation:
    """What one hop served for the signatures of one digest."""

    provider: Provider
    subject: str
    referrers_api: ReferrersApi
    signatures: tuple[SignatureCheck, ...] = ()


def sig_tag(digest: str) -> str:
    """cosign's legacy signature tag of a digest: ``sha256-<hex>.sig``."""
    return f"{referrers_tag(digest)}.sig"


def referrers_tag(digest: str) -> str:
    """The OCI 1.1 referrers tag schema: ``<alg>-<hex>``, used where the API is absent."""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}-{hexpart}"


# -- judging (pure) -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Finding:
    """A signature problem at one hop: ``missing`` or corrupt, worded for people."""

    missing: bool
    message: str


def _reference(observations: Sequence[HopObservation], position: int) -> HopObservation | None:
    """The signatures a hop is compared with: the origin's, else the nearest upstream's that answered."""
    for upstream in reversed(observations[position + 1 :]):
        if upstream.signatures is not None:
            return upstream
    return None


def _where_to_look(signatures: SignatureObservation) -> str:
    tag = referrers_tag(signatures.subject)
    if signatures.provider is Provider.NOTATION:
        subject = short_digest(signatures.subject)
        return f"no notation signature among the referrers of {subject} (API or tag {tag})"
    return f"no cosign bundle among the referrers (API or tag {tag}) and no tag {tag}.sig"


def _referrers_hint(here: SignatureObservation, reference: HopObservation, lost: SignatureCheck) -> str:
    """What the hop's referrers API said about a referrer the reference hop holds.

    A hop whose API answers 200 without it hides it however the reference found it (a Harbor hop
    in front of an origin with only the referrers tag answers 200 too); a hop whose API is absent
    is only remarkable where the reference's API works.
    """
    assert reference.signatures is not None
    by_api = lost.found_via == "referrers API"
    if here.referrers_api is ReferrersApi.OK:
        if by_api or lost.found_via == f"tag {referrers_tag(here.subject)}":
            return f"; the referrers API here does not list it ({HARBOR_HINT})"
        return ""
    if reference.signatures.referrers_api is not ReferrersApi.OK or not by_api:
        return ""
    return (
        f"; the referrers API answers 404 here but works at {reference.hop}, and the "
        f"{referrers_tag(here.subject)} fallback tag is not here either ({HARBOR_HINT})"
    )


def _good(signature: SignatureCheck) -> bool:
    """Intact, and made with the key when one was given."""
    return signature.status is BlobStatus.OK and signature.trusted is not False


def _judge_alone(here: SignatureObservation) -> Finding | None:
    """A hop with nothing intact upstream to compare with: it needs one intact signature of its own."""
    bad = next((s for s in here.signatures if s.status is not BlobStatus.OK), None)
    if not any(_good(s) for s in here.signatures):
        untrusted = next((s for s in here.signatures if s.trusted is False), None)
        if untrusted is not None:
            return Finding(True, f"{untrusted.name} {untrusted.detail}: Flux's verification would fail")
        if bad is not None:
            return Finding(bad.status is BlobStatus.MISSING, f"{bad.name} {bad.status.value}: {bad.detail}")
        return Finding(True, f"{_where_to_look(here)}: Flux's verification would fail")
    if bad is not None and bad.status is BlobStatus.CORRUPT:
        return Finding(False, f"{bad.name} corrupt: {bad.detail}")
    return None


def judge_signatures(observations: Sequence[HopObservation], position: int) -> Finding | None:
    """The signature rule of one hop (None: nothing to say, or signatures were not asked for).

    The origin (or the nearest upstream that answered) is the reference: every signature it
    serves intact must be served intact here too; the reference itself needs at least one.
    """
    here = observations[position].signatures
    if here is None:
        return None
    present = {s.key: s for s in here.signatures}
    corrupt_manifests = {s.manifest: s for s in here.signatures if s.status is BlobStatus.CORRUPT}
    reference = _reference(observations, position)
    upstream = reference.signatures.signatures if reference and reference.signatures else ()
    wanted = [s for s in upstream if _good(s)]
    if reference is None or not wanted:
        return _judge_alone(here)
    missing, corrupt = [], []
    for signature in wanted:
        served = present.get(signature.key)
        if served is not None and served.status is BlobStatus.OK:
            continue
        damaged = served if served is not None and served.status is BlobStatus.CORRUPT else None
        damaged = damaged or corrupt_manifests.get(signature.manifest)
        if damaged is not None:
            corrupt.append(damaged)
        else:
            missing.append((signature, served))
    if missing:
        signature, served = missing[0]
        what = (
            f"{len(missing)} of the {len(wanted)} signatures at {reference.hop} missing: "
            if len(wanted) > 1
            else ""
        )
        detail = served.detail if served is not None else "not found here"
        hint = _referrers_hint(here, reference, signature)
        origin = (
            f"{signature.kind} {short_digest(signature.manifest)} ({signature.found_via} at {reference.hop})"
        )
        return Finding(True, f"{what}{origin} {detail}{hint}")
    if corrupt:
        return Finding(False, f"{corrupt[0].name} corrupt: {corrupt[0].detail}")
    return None


def referrers_notes(observations: Sequence[HopObservation]) -> list[str]:
    """Hops whose referrers API answers 404 while the origin's works, saved by the tag fallback."""
    origin = observations[-1].signatures if observations else None
    if origin is None or origin.referrers_api is not ReferrersApi.OK:
        return []
    notes = []
    for position, obs in enumerate(observations[:-1]):
        here = obs.signatures
        if here is None or here.referrers_api is not ReferrersApi.ABSENT:
            continue
        if judge_signatures(observations, position) is None:
            notes.append(
                f"hop {obs.hop}: the referrers API answers 404 (it works at {observations[-1].hop}); "
                f"signatures were found through the {referrers_tag(here.subject)} tag only ({HARBOR_HINT})"
            )
    return notes


def signatures_json(observation: SignatureObservation | None) -> dict[str, Any] | None:
    """The ``signatures`` object of a hop in the JSON report (null when none were asked for)."""
    if observation is None:
        return None
    return {
        "provider": observation.provider.value,
        "subject": observation.subject,
        "referrersApi": observation.referrers_api.value,
        "signatures": [
            {
                "kind": s.kind,
                "manifestDigest": s.manifest,
                "foundVia": s.found_via,
                "status": s.status.value,
                "bytesVerified": s.bytes_verified,
                **({"trusted": s.trusted} if s.trusted is not None else {}),
                **({"detail": s.detail} if s.detail else {}),
            }
            for s in observation.signatures
        ],
    }
