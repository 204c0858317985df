"""What a check saw at each hop: plain data, produced by ``check`` and judged by ``verdict``.

Observations record facts (digests served, blobs verified, errors met) and no conclusions, so
the verdict rules can be table-tested without a network.
"""

from __future__ import annotations

import dataclasses
import enum

from layerwatch.manifest import Descriptor, Index, Manifest

__all__ = ["BlobCheck", "BlobStatus", "Failure", "FailureKind", "HopObservation", "ManifestCheck"]


class BlobStatus(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"
    CORRUPT = "corrupt"
    UNCHECKED = "unchecked"


class FailureKind(enum.StrEnum):
    """Why a hop could not be checked; each maps to an unknown-class verdict."""

    UNREACHABLE = "Unreachable"
    AUTH_FAILED = "AuthFailed"
    RATE_LIMITED = "RateLimited"


@dataclasses.dataclass(frozen=True)
class Failure:
    kind: FailureKind
    message: str


@dataclasses.dataclass(frozen=True)
class BlobCheck:
    """One blob of a manifest as this hop served it. ``index`` is None for the config blob."""

    descriptor: Descriptor
    index: int | None
    status: BlobStatus
    detail: str = ""
    bytes_verified: int = 0


@dataclasses.dataclass(frozen=True)
class ManifestCheck:
    """One image manifest (the top one, or a child of an index) with its blob checks."""

    digest: str
    manifest: Manifest
    blobs: tuple[BlobCheck, ...]
    platform: str | None = None

    @property
    def config(self) -> BlobCheck:
        return self.blobs[0]

    @property
    def layers(self) -> tuple[BlobCheck, ...]:
        return self.blobs[1:]


@dataclasses.dataclass(frozen=True)
class HopObservation:
    """Everything one hop served during one check."""

    hop: str
    url: str
    repository: str
    location: str
    failure: Failure | None = None
    tag: str | None = None
    tag_digest: str | None = None
    """What the tag resolved to here (None for digest references or when resolution failed)."""
    manifest_missing: str | None = None
    manifest_corrupt: str | None = None
    digest: str | None = None
    """Digest of the manifest checked here."""
    index: Index | None = None
    manifests: tuple[ManifestCheck, ...] = ()
    duration: float = 0.0

    @property
    def layer_digests(self) -> tuple[str, ...]:
        return tuple(layer.descriptor.digest for m in self.manifests for layer in m.layers)

    @property
    def bytes_verified(self) -> int:
        return sum(blob.bytes_verified for m in self.manifests for blob in m.blobs)
