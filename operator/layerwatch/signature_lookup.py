"""Asking one hop for the signatures of a digest, the way cosign and notation ask (the network part).

Every signature manifest is fetched by digest (or by tag, then hashed against its
``Docker-Content-Digest``) and every blob of it downloaded and hashed, even in head mode: they
are a few kilobytes, and a verifier reads them all. `layerwatch.signatures` judges the result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib

from layerwatch import manifest as manifests
from layerwatch.documents import json_object
from layerwatch.observation import BlobStatus
from layerwatch.reference import is_digest, short_digest
from layerwatch.registry import FetchedManifest, RegistryClient, RegistryError, RegistryNotFound, RetryBudget
from layerwatch.signature_keys import PublicKey, load_public_key, verify_bundle, verify_simple_signing
from layerwatch.signatures import (
    COSIGN_BUNDLE,
    COSIGN_SIGNATURE_ANNOTATION,
    MAX_REFERRERS,
    NOTATION_SIGNATURE,
    KeyedCosign,
    Provider,
    ReferrersApi,
    SignatureCheck,
    SignatureObservation,
    Verify,
    referrers_tag,
    sig_tag,
)
from layerwatch.verdict import classify_blob, not_found

__all__ = ["observe_signatures"]


def _manifest_problem(fetched: FetchedManifest, digest: str | None) -> str | None:
    """Why the bytes are not the manifest ``digest`` names (None when they are or nothing names them)."""
    if fetched.encoding is not None:
        return f"served with Content-Encoding {fetched.encoding}"
    if fetched.oversize:
        return f"manifest larger than {manifests.MAX_MANIFEST_BYTES} bytes"
    if digest is None or not is_digest(digest):
        return None
    actual = fetched.digest(digest.partition(":")[0])
    return None if actual == digest else f"manifest bytes hash to {short_digest(actual)}"


def _parse_signature_manifest(fetched: FetchedManifest, digest: str | None) -> manifests.Manifest | str:
    """The verified, parsed signature manifest, or why it is corrupt."""
    problem = _manifest_problem(fetched, digest)
    if problem is not None:
        return problem
    try:
        parsed = manifests.parse(fetched.body, fetched.media_type)
    except manifests.ManifestError as exc:
        return str(exc)
    return parsed if isinstance(parsed, manifests.Manifest) else "is an index, not a signature manifest"


def _referrer_entries(body: bytes, artifact_type: str) -> list[manifests.Descriptor] | str:
    """The referrers an index lists whose artifactType starts with ``artifact_type``, or why not."""
    try:
        document = json_object(body)
    except ValueError as exc:
        return f"referrers index is {exc}"
    raw = document.get("manifests")
    if not isinstance(raw, list):
        return "referrers index has no manifests list"
    entries = []
    for position, item in enumerate(raw):
        declared = item.get("artifactType") if isinstance(item, dict) else None
        if isinstance(declared, str) and declared.startswith(artifact_type):
            try:
                entries.append(manifests.Descriptor.parse(item, f"referrers manifests[{position}]"))
            except manifests.ManifestError as exc:
                return str(exc)
            if len(entries) == MAX_REFERRERS:
                break
    return entries


@dataclasses.dataclass(frozen=True)
class _Blob:
    """One signature blob as the hop served it."""

    status: BlobStatus
    detail: str
    verified: int


def _blob_problem(results: list[_Blob], position: int) -> _Blob | None:
    """The config's or layer ``position``'s failed result (a bad config spoils every signature)."""
    for index in (0, position + 1):
        if results[index].status is not BlobStatus.OK:
            return results[index]
    return None


def _describe(parsed: manifests.Manifest, results: list[_Blob]) -> str:
    for position, result in enumerate(results):
        if result.status is not BlobStatus.OK:
            where = "config" if position == 0 else f"layer {position - 1}"
            return f"{where} {short_digest(parsed.blobs[position].digest)} {result.detail}"
    return ""


class _Lookup:
    """The requests of one hop's lookup, sharing the client, repository, subject digest and budget."""

    def __init__(
        self,
        client: RegistryClient,
        repository: str,
        subject: str,
        budget: RetryBudget,
        key: PublicKey | None,
    ) -> None:
        self.client, self.repository, self.subject, self.budget = client, repository, subject, budget
        self.key = key

    async def trust(
        self, check: SignatureCheck, blob: manifests.Descriptor, signature: str | None
    ) -> SignatureCheck:
        """The optional key check of an intact cosign signature (its blob is small: read whole)."""
        if self.key is None or check.status is not BlobStatus.OK:
            return check
        fetched = await self.client.fetch_manifest(
            self.repository, blob.digest, self.budget, endpoint="blobs"
        )
        if signature is None:
            why = verify_bundle(self.key, fetched.body, self.subject)
        else:
            why = verify_simple_signing(self.key, fetched.body, signature, self.subject)
        return dataclasses.replace(check, trusted=why is None, detail=why or check.detail)

    async def manifest(self, ref: str) -> FetchedManifest:
        return await self.client.fetch_manifest(self.repository, ref, self.budget)

    async def blob(self, descriptor: manifests.Descriptor) -> _Blob:
        """Download and hash one blob; one that could not be checked makes the whole lookup fail."""
        facts = await self.client.fetch_blob(self.repository, descriptor, download=True, budget=self.budget)
        status, detail = classify_blob(descriptor, facts)
        if status is BlobStatus.UNCHECKED and facts.fault is not None:
            raise RegistryError(facts.fault)
        return _Blob(status, detail, facts.received if status is BlobStatus.OK else 0)

    async def blobs(self, parsed: manifests.Manifest) -> list[_Blob]:
        return list(await asyncio.gather(*(self.blob(blob) for blob in parsed.blobs)))

    async def referrer(self, kind: str, entry: manifests.Descriptor, found_via: str) -> SignatureCheck:
        """One listed referrer: its manifest by digest, then its blobs."""
        check = SignatureCheck(kind, entry.digest, entry.digest, found_via, BlobStatus.CORRUPT)
        try:
            fetched = await self.manifest(entry.digest)
        except RegistryNotFound as exc:
            detail = f"listed, but its manifest is missing ({not_found(exc.fault)})"
            return dataclasses.replace(check, status=BlobStatus.MISSING, detail=detail)
        parsed = _parse_signature_manifest(fetched, entry.digest)
        if isinstance(parsed, str):
            return dataclasses.replace(check, detail=parsed)
        results = await self.blobs(parsed)
        bad = next((r for r in results if r.status is not BlobStatus.OK), None)
        check = dataclasses.replace(
            check,
            status=BlobStatus.OK if bad is None else bad.status,
            detail=_describe(parsed, results),
            bytes_verified=sum(r.verified for r in results),
        )
        bundles = [layer for layer in parsed.layers if layer.media_type.startswith(COSIGN_BUNDLE)]
        return await self.trust(check, bundles[0], None) if kind == "cosign bundle" and bundles else check

    async def referrers(
        self, kind: str, artifact_type: str, *, filtered: bool
    ) -> tuple[ReferrersApi, list[SignatureCheck]]:
        """Referrers of ``artifact_type``: from the API, or from the referrers tag where it answers 404."""
        api, found_via = ReferrersApi.OK, "referrers API"
        try:
            index = await self.client.fetch_referrers(
                self.repository, self.subject, self.budget, artifact_type if filtered else None
            )
        except RegistryNotFound:
            api, found_via = ReferrersApi.ABSENT, f"tag {referrers_tag(self.subject)}"
            try:
                index = await self.manifest(referrers_tag(self.subject))
            except RegistryNotFound:
                return api, []
        entries = _referrer_entries(index.body, artifact_type)
        if isinstance(entries, str):
            key = f"referrers of {self.subject}"
            return api, [SignatureCheck(kind, key, index.digest(), found_via, BlobStatus.CORRUPT, entries)]
        return api, list(await asyncio.gather(*(self.referrer(kind, e, found_via) for e in entries)))

    async def sig_tag(self) -> list[SignatureCheck]:
        """cosign's ``.sig`` tag: one signature per layer of its manifest."""
        tag = sig_tag(self.subject)
        try:
            fetched = await self.manifest(tag)
        except RegistryNotFound:
            return []
        digest = fetched.digest_header or fetched.digest()
        parsed = _parse_signature_manifest(fetched, fetched.digest_header)
        if isinstance(parsed, str):
            key = f"{tag} manifest"
            return [SignatureCheck("cosign signature", key, digest, f"tag {tag}", BlobStatus.CORRUPT, parsed)]
        results = await self.blobs(parsed)
        checks = []
        for position, layer in enumerate(parsed.layers):
            annotation = layer.annotations.get(COSIGN_SIGNATURE_ANNOTATION, "")
            key = f"{layer.digest}/{hashlib.sha256(annotation.encode()).hexdigest()[:16]}"
            bad = _blob_problem(results, position)
            verified = results[position + 1].verified + (results[0].verified if position == 0 else 0)
            check = SignatureCheck(
                "cosign signature",
                key,
                digest,
                f"tag {tag} layer {position}",
                BlobStatus.OK if bad is None else bad.status,
                "" if bad is None else _describe(parsed, results),
                verified,
            )
            checks.append(await self.trust(check, layer, annotation))
        return checks


async def observe_signatures(
    client: RegistryClient, repository: str, subject: str, verify: Verify, budget: RetryBudget
) -> SignatureObservation:
    """Look the signatures of ``subject`` up at one hop.

    A hop that cannot answer raises a ``RegistryError`` whose fault's subject says
    ``signatures``, so the hop check that called it reports "could not check" as for any other
    request.
    """
    provider = Provider.COSIGN if isinstance(verify, KeyedCosign) else verify
    key = load_public_key(verify.public_key) if isinstance(verify, KeyedCosign) else None
    lookup = _Lookup(client, repository, subject, budget, key)
    try:
        if provider is Provider.NOTATION:
            api, found = await lookup.referrers("notation signature", NOTATION_SIGNATURE, filtered=True)
        else:
            # cosign's GetBundles asks for all referrers and keeps the bundles itself.
            (api, found), legacy = await asyncio.gather(
                lookup.referrers("cosign bundle", COSIGN_BUNDLE, filtered=False), lookup.sig_tag()
            )
            found += legacy
    except RegistryError as exc:
        where = f"signatures ({exc.fault.subject})" if exc.fault.subject else "signatures"
        raise RegistryError(dataclasses.replace(exc.fault, subject=where)) from None
    return SignatureObservation(provider, subject, api, tuple(found))
