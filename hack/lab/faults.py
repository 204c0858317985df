"""The fault model of the lab gateway: what a fault matches and how it is written as JSON.

A fault set is a JSON list, replaced as a whole over ``POST /_lab/faults``. For each registry
request the first fault that matches (and has uses left) applies; at most one fault per request.
Matching fields, all optional and all required to match when given:

- ``repository``: repository path as seen at this gateway, prefix included (``p-ghcr/org/app``);
- ``digest`` / ``tag``: the reference in the URL (a blob or manifest digest, or a tag);
- ``method``: ``GET`` or ``HEAD``;
- ``count``: apply to the first N matching requests only (default: always).

Faults naming no repository, digest or tag of kinds ``error``, ``ratelimit``, ``slow`` and
``hostile-auth`` also hit ``GET /v2/``, which a downstream distribution proxy pings before every
upstream request: such a fault at core makes the whole hop look down from the edge too.

Kinds and their own fields:

===================  =========================================================================
``drop``             404 ``BLOB_UNKNOWN`` / ``MANIFEST_UNKNOWN`` (HEAD too)
``corrupt``          flip the byte at ``offset`` (default: the middle) of the body, same length
``truncate``         serve only ``keep`` bytes (default: half) with a matching Content-Length
``cut``              declare the full Content-Length, send ``keep`` bytes, close the connection
``reorder``          manifest by tag served with ``layers`` reversed (a new digest, also served by
                     that digest afterwards)
``stale``            manifest by tag served as the manifest ``serve_digest`` names
``ratelimit``        429 ``TOOMANYREQUESTS`` with ``Retry-After: retry_after`` (default 1)
``redirect``         blob GET answered 307 to the gateway's unauthenticated blob host
``slow``             wait ``seconds`` before answering; with ``drip: true`` instead send the body in
                     ``chunk``-byte pieces (default 1024) ``seconds`` apart
``error``            answer ``status`` (default 500) with an ``UNKNOWN`` error body
``garbage-manifest`` manifest body of non-JSON bytes, with a Docker-Content-Digest matching them
``hostile-auth``     401 with a hostile ``WWW-Authenticate`` of ``variant`` (see ``HOSTILE_AUTH_VARIANTS``)
``endless``          200 with a body that never ends and no Content-Length
``hide-referrers``   404 ``NOT_FOUND`` to the referrers API (`lab.referrers`), as a Harbor proxy
                     project without ``proxy_referrer_api`` answers; other requests never match
===================  =========================================================================

Signatures are broken with the kinds above: ``drop`` with ``tag: sha256-<hex>.sig`` loses a cosign
signature, ``corrupt`` with the ``digest`` of a signature blob damages it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = [
    "BASE_KINDS",
    "HOSTILE_AUTH_VARIANTS",
    "KINDS",
    "MANIFEST_ONLY",
    "Fault",
    "FaultError",
    "parse_faults",
]

KINDS = frozenset(
    {
        "drop",
        "corrupt",
        "truncate",
        "cut",
        "reorder",
        "stale",
        "ratelimit",
        "redirect",
        "slow",
        "error",
        "garbage-manifest",
        "hostile-auth",
        "endless",
        "hide-referrers",
    }
)
MANIFEST_ONLY = frozenset({"reorder", "stale", "garbage-manifest"})
"""Kinds that only make sense for manifest requests (blob requests never match them)."""
BASE_KINDS = frozenset({"error", "ratelimit", "slow", "hostile-auth"})
"""Kinds that also apply to the ``GET /v2/`` version check (when they name no repository or reference)."""

HOSTILE_AUTH_VARIANTS = frozenset(
    {"malformed", "garbage", "huge", "no-realm", "unknown-scheme", "dead-realm"}
)


class FaultError(ValueError):
    """A fault document is invalid; the gateway answers 400 with this message."""


@dataclasses.dataclass
class Fault:
    """One injected fault; ``count`` counts down as it is applied (``None`` means unlimited)."""

    kind: str
    repository: str | None = None
    digest: str | None = None
    tag: str | None = None
    method: str | None = None
    count: int | None = None
    offset: int | None = None
    keep: int | None = None
    serve_digest: str | None = None
    retry_after: int = 1
    seconds: float = 0.0
    drip: bool = False
    chunk: int = 1024
    status: int = 500
    variant: str = "malformed"

    @classmethod
    def from_json(cls, doc: Any) -> Fault:
        """Validate one JSON object; unknown fields are refused so typos do not silently match all."""
        if not isinstance(doc, dict):
            raise FaultError(f"a fault must be an object, got {doc!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(doc) - known):
            raise FaultError(f"unknown fault field(s) {unknown}; known: {sorted(known)}")
        try:
            fault = cls(**doc)
        except TypeError as exc:
            raise FaultError(str(exc)) from exc
        fault.validate()
        return fault

    def validate(self) -> None:
        """Check field combinations that would otherwise fail in the middle of a request."""
        if self.kind not in KINDS:
            raise FaultError(f"unknown fault kind {self.kind!r}; known: {sorted(KINDS)}")
        if self.method is not None:
            self.method = self.method.upper()
        if self.kind == "stale" and not (self.tag and self.serve_digest):
            raise FaultError("a stale fault needs 'tag' and 'serve_digest'")
        if self.kind == "error" and not 500 <= self.status <= 599:
            raise FaultError(f"an error fault needs a 5xx status, got {self.status}")
        if self.kind == "hostile-auth" and self.variant not in HOSTILE_AUTH_VARIANTS:
            raise FaultError(
                f"unknown hostile-auth variant {self.variant!r}; known: {sorted(HOSTILE_AUTH_VARIANTS)}"
            )
        if self.count is not None and self.count < 0:
            raise FaultError("count must be >= 0")
        if self.chunk <= 0:
            raise FaultError("chunk must be > 0")

    def matches(self, *, repository: str, endpoint: str, reference: str, method: str) -> bool:
        """Whether this fault applies to a request.

        ``endpoint`` is ``manifests``, ``blobs``, ``referrers``, ``base`` or ``other``.
        """
        if self.count == 0:
            return False
        if endpoint == "base" and self.kind not in BASE_KINDS:
            return False
        if self.kind in MANIFEST_ONLY and endpoint != "manifests":
            return False
        if self.kind == "redirect" and (endpoint != "blobs" or method != "GET"):
            return False
        if self.kind == "hide-referrers" and endpoint != "referrers":
            return False
        return (
            (self.repository is None or self.repository == repository)
            and (self.digest is None or self.digest == reference)
            and (self.tag is None or self.tag == reference)
            and (self.method is None or self.method == method)
        )

    def use(self) -> None:
        """Count one application of a limited fault."""
        if self.count is not None:
            self.count -= 1


def parse_faults(doc: Any) -> list[Fault]:
    """Parse the body of ``POST /_lab/faults``: a list of fault objects (a single object is accepted)."""
    items = doc if isinstance(doc, list) else [doc]
    return [Fault.from_json(item) for item in items]
