"""Hand-built observations for verdict and report tests: a three-hop Harbor chain, no network."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence

from layerwatch.chain import Chain, Hop
from layerwatch.manifest import FLUX_CONFIG, FLUX_CONTENT, OCI_MANIFEST, Descriptor, Manifest
from layerwatch.observation import (
    BlobCheck,
    BlobStatus,
    Failure,
    FailureKind,
    HopObservation,
    ManifestCheck,
)
from layerwatch.reference import Reference

SBOM = "application/vnd.example.sbom.v1+json"
TAG = "v1"


def digest_of(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def descriptor(seed: str, media_type: str = FLUX_CONTENT, size: int = 151) -> Descriptor:
    return Descriptor(media_type=media_type, digest=digest_of(seed), size=size)


def manifest(
    *layers: Descriptor, config: Descriptor | None = None, annotations: Mapping[str, str] | None = None
) -> Manifest:
    return Manifest(
        media_type=OCI_MANIFEST,
        config=config or descriptor("config", FLUX_CONFIG, 2),
        layers=tuple(layers),
        annotations=dict(annotations or {}),
    )


def manifest_digest(m: Manifest) -> str:
    """A stable digest for a hand-built manifest (what a registry would compute from its bytes)."""
    document = {
        "config": m.config.digest,
        "layers": [layer.digest for layer in m.layers],
        "annotations": dict(m.annotations),
    }
    return digest_of(json.dumps(document, sort_keys=True))


CONTENT = descriptor("content")
EXTRA = descriptor("sbom", SBOM, 77)
ARTIFACT = manifest(CONTENT, EXTRA)
"""The artifact every healthy hop serves: the Flux content layer first, then an SBOM layer."""

EDGE = Hop.from_url("edge", "https://a.example/p-core")
CORE = Hop.from_url("core", "https://b.example/p-ghcr")
ORIGIN = Hop.from_url("origin", "https://ghcr.io")
CHAIN = Chain(name="corp", hops=(EDGE, CORE, ORIGIN))
REFERENCE = Reference.parse(f"oci://a.example/p-core/p-ghcr/org/app:{TAG}")
PATH = CHAIN.pull_path(REFERENCE)
HOP_NAMES = tuple(target.hop.name for target in PATH)


def observe(
    position: int,
    served: Manifest = ARTIFACT,
    *,
    blobs: Mapping[int | None, tuple[BlobStatus, str]] | None = None,
    tag: str | None = TAG,
    failure: Failure | None = None,
    manifest_missing: str | None = None,
    manifest_corrupt: str | None = None,
) -> HopObservation:
    """What hop ``position`` of ``PATH`` served; blob statuses default to ok (``None`` = config)."""
    target = PATH[position]
    base = HopObservation(
        hop=target.hop.name,
        url=target.hop.url,
        repository=target.repository,
        location=target.location,
        tag=tag,
    )
    if failure is not None:
        return dataclasses.replace(base, failure=failure)
    if manifest_missing is not None:
        return dataclasses.replace(base, manifest_missing=manifest_missing)
    digest = manifest_digest(served)
    tag_digest = digest if tag else None
    if manifest_corrupt is not None:
        return dataclasses.replace(
            base, tag_digest=tag_digest, digest=digest, manifest_corrupt=manifest_corrupt
        )
    statuses = dict(blobs or {})
    checks = []
    for index, desc in [(None, served.config), *enumerate(served.layers)]:
        status, detail = statuses.get(index, (BlobStatus.OK, "verified"))
        verified = desc.size if status is BlobStatus.OK else 0
        checks.append(BlobCheck(desc, index, status, detail, verified))
    check = ManifestCheck(digest=digest, manifest=served, blobs=tuple(checks))
    return dataclasses.replace(base, tag_digest=tag_digest, digest=digest, manifests=(check,))


def healthy_chain(served: Manifest = ARTIFACT, *, tag: str | None = TAG) -> list[HopObservation]:
    return [observe(position, served, tag=tag) for position in range(len(PATH))]


def failure(kind: FailureKind, message: str = "") -> Failure:
    return Failure(kind, message or f"{kind.value.lower()} for the test")


def replace_at(
    observations: Sequence[HopObservation], position: int, new: HopObservation
) -> list[HopObservation]:
    result = list(observations)
    result[position] = new
    return result
