"""What a check saw at each hop: plain data, produced by ``check`` and judged by ``verdict``.

Observations record facts (digests served, blobs verified, errors met) and no conclusions, so
the verdict rules can be table-tested without a network.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING

from layerwatch.manifest import Descriptor, Index, Manifest

if TYPE_CHECKING:
    from layerwatch.signatures import SignatureObservation

__all__ = [
    "Answer",
    "BlobCheck",
    "BlobFacts",
    "BlobStatus",
    "Fault",
    "FaultKind",
    "HopObservation",
    "ManifestCheck",
    "ManifestFault",
    "ManifestProblem",
]


class BlobStatus(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"
    CORRUPT = "corrupt"
    UNCHECKED = "unchecked"


class FaultKind(enum.StrEnum):
    """What stopped an exchange with a registry, as a fact; ``verdict`` says what it means."""

    REFUSED = "refused"
    DNS = "dns"
    TLS = "tls"
    TLS_SETTINGS = "tls-settings"
    """The hop's own TLS settings (CA bundle, client certificate) cannot be used."""
    CONNECT_TIMEOUT = "connect-timeout"
    HEADER_TIMEOUT = "header-timeout"
    RESET = "reset"
    PROTOCOL = "protocol"
    STALLED = "stalled"
    BODY_CUT = "body-cut"
    HTTP_STATUS = "http-status"
    """5xx after retries, or a status a registry should not answer."""
    RATE_LIMITED = "rate-limited"
    AUTH_REJECTED = "auth-rejected"
    """401/403 with the configured credentials, or from the token endpoint."""
    AUTH_UNANSWERABLE = "auth-unanswerable"
    """A challenge layerwatch cannot answer, or one that needs credentials nobody configured."""
    BAD_REDIRECT = "bad-redirect"
    HOP_DOWN = "hop-down"
    DEADLINE = "deadline"
    INTERNAL = "internal"
    """A bug in layerwatch; reported as a verdict rather than lost."""


@dataclasses.dataclass(frozen=True)
class Fault:
    """One failed exchange: its kind plus what the registry and the network said.

    ``subject`` names what was asked for ("tag v1", "layer 0 sha256:…"); ``code`` and
    ``registry_message`` come from an OCI error body; ``detail`` is a short technical line
    (never a URL query, header or credential).
    """

    kind: FaultKind
    detail: str = ""
    status: int | None = None
    code: str | None = None
    registry_message: str | None = None
    attempts: int = 1
    subject: str = ""
    anonymous: bool = False
    """The refused request carried no credentials: none are configured for the hop."""


class ManifestFault(enum.StrEnum):
    """What was wrong with a manifest a hop was asked for, as a fact; ``verdict`` says what it means."""

    NOT_FOUND = "not-found"
    ENCODED = "encoded"
    """Served with a Content-Encoding: not the bytes its digest names."""
    OVERSIZE = "oversize"
    OTHER_BYTES = "other-bytes"
    """The bytes hash to another digest."""
    TRUNCATED = "truncated"
    """The connection closed before the body ended (twice): fewer bytes than announced."""
    UNPARSABLE = "unparsable"
    TOO_MANY_LAYERS = "too-many-layers"
    BLOB_TOO_LARGE = "blob-too-large"
    TOO_MANY_CHILDREN = "too-many-children"
    NESTED_INDEX = "nested-index"
    """A child of an index is itself an index."""


@dataclasses.dataclass(frozen=True)
class ManifestProblem:
    """Why a hop's manifest (or a child of its index) could not be checked.

    ``digest`` is the manifest asked for (None: the tag did not resolve); ``child`` and ``platform``
    say it is an index's child; ``detail`` is the parser's reason or the Content-Encoding;
    ``actual`` what the bytes hash to; ``count`` what was found against ``limit``; ``fault`` the
    registry's answer when it was not found.
    """

    kind: ManifestFault
    digest: str | None = None
    child: bool = False
    platform: str | None = None
    detail: str = ""
    actual: str | None = None
    count: int = 0
    limit: int = 0
    fault: Fault | None = None


@dataclasses.dataclass(frozen=True)
class Answer:
    """Headers of a 2xx GET that say how the hop came by what it sent (facts only; `report` reads them).

    ``declared`` is the Content-Length (None when absent, e.g. a chunked body); ``etag`` and
    ``digest_header`` are the ETag and Docker-Content-Digest as sent: "" when sent empty, None when
    not sent at all.
    """

    declared: int | None = None
    etag: str | None = None
    digest_header: str | None = None


@dataclasses.dataclass(frozen=True)
class BlobFacts:
    """What a hop did when asked for one blob (all facts, no conclusions).

    ``status`` is the HTTP status of the answer that counted; ``received`` the body bytes that
    arrived; ``actual`` the digest of those bytes (when the body was read to its end);
    ``header_size`` a HEAD's Content-Length; ``encoding`` a Content-Encoding the hop put on it.
    """

    status: int | None = None
    received: int = 0
    actual: str | None = None
    header_size: int | None = None
    encoding: str | None = None
    overflow: bool = False
    """More bytes arrived than the descriptor's size."""
    headed: bool = False
    """Only asked for (HEAD), not downloaded."""
    cached: bool = False
    """Verified at this hop by another target's check within the interval; not fetched now."""
    fault: Fault | None = None
    answer: Answer | None = None
    """The headers of the GET that answered (None when none did: HEAD only, cached, failed)."""

    @property
    def declared(self) -> int | None:
        """The GET's Content-Length (None when it sent none or no GET answered)."""
        return None if self.answer is None else self.answer.declared


@dataclasses.dataclass(frozen=True)
class BlobCheck:
    """One blob of a manifest as this hop served it. ``index`` is None for the config blob."""

    descriptor: Descriptor
    index: int | None
    status: BlobStatus
    detail: str = ""
    facts: BlobFacts = dataclasses.field(default_factory=BlobFacts)

    @property
    def bytes_verified(self) -> int:
        verified = self.status is BlobStatus.OK and not (self.facts.headed or self.facts.cached)
        return self.facts.received if verified else 0


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
    failure: Fault | None = None
    tag: str | None = None
    tag_digest: str | None = None
    """What the tag resolved to here (None for digest references or when resolution failed)."""
    manifest_problem: ManifestProblem | None = None
    digest: str | None = None
    """Digest of the manifest checked here."""
    index: Index | None = None
    manifests: tuple[ManifestCheck, ...] = ()
    duration: float = 0.0
    signatures: SignatureObservation | None = None
    """The signatures of ``digest`` here; None when the target asks for none (no ``verify``)."""
    manifest_answers: tuple[Answer, ...] = ()
    """The headers of each GET of the artifact's manifests here (the top one, then index children)."""

    @property
    def layer_digests(self) -> tuple[str, ...]:
        return tuple(layer.descriptor.digest for m in self.manifests for layer in m.layers)

    @property
    def bytes_verified(self) -> int:
        return sum(blob.bytes_verified for m in self.manifests for blob in m.blobs)
