"""The fault model of the lab gateway: what a fault matches and how it is written as JSON.

A fault set is a JSON list, replaced as a whole over ``POST /_lab/faults``. For each registry
request the first fault that matches (and has uses left) applies; at most one fault per request.
Matching fields, all optional and all required to match when given:

- ``repository``: repository path as seen at this gateway, prefix included (``p-ghcr/org/app``);
- ``digest`` / ``tag``: the reference in the URL (a blob or manifest digest, or a tag);
- ``method``: ``GET`` or ``HEAD``;
- ``count``: apply to the first N matching requests only (default: always);
- ``token``: ``true`` makes the fault match only ``GET /service/token`` (kinds in ``TOKEN_KINDS``),
  which no other fault matches.

Faults naming no repository, digest or tag of the kinds in ``BASE_KINDS`` (``error``,
``ratelimit``, ``slow``, ``hostile-auth``, ``trickle``, ``blackhole``, and ``redirect`` with a
``location``) also hit ``GET /v2/``, which a downstream distribution proxy pings before every
upstream request: such a fault at core makes the whole hop look down from the edge too.

Kinds and their own fields:

====================  ========================================================================
``drop``              404 ``BLOB_UNKNOWN`` / ``MANIFEST_UNKNOWN`` (HEAD too); dropping a child's
                      digest makes an index's child missing
``corrupt``           flip the byte at ``offset`` (default: the middle) of the body, same length
``truncate``          serve only ``keep`` bytes (default: half) with a matching Content-Length
``cut``               declare the full Content-Length, send ``keep`` bytes, close the connection;
                      ``keep: 0`` is Harbor's lost data (storage lost the blob, its Redis
                      descriptor cache still lists it: 200, full length, 0 bytes, every time)
``empty-body``        200 with ``Content-Length: 0`` and no bytes: what an edge Harbor v2.15.2
                      answers for a blob its cold upstream Harbor streams without a length
                      (goharbor/harbor#23373)
``reorder``           manifest by tag served with ``layers`` reversed (a new digest, also served by
                      that digest afterwards)
``many-layers``       manifest by tag served with ``layers`` more distinct (absent) layers appended
                      (default 40000; descriptors without mediaType, so 40000 stay under 4 MiB)
``layer-size``        manifest by tag served with every layer's size replaced by the JSON number
                      text ``size`` (e.g. ``1000000000000000`` or ``1e400``)
``media-type``        manifest by tag served with the mediaType of layer ``offset`` (default: every
                      layer) replaced by ``value`` (e.g. one holding a newline and ANSI escapes)
``stale``             manifest by tag served as the manifest ``serve_digest`` names
``ratelimit``         429 ``TOOMANYREQUESTS`` with ``Retry-After: retry_after`` (default 1; a string
                      is sent verbatim: ``"0"``, an HTTP date, ``"²"``)
``redirect``          blob GET answered 307 to the gateway's unauthenticated blob host; with
                      ``location``, any request (``/v2/`` too) answered 307 to that text verbatim
``slow``              wait ``seconds`` before answering; with ``drip: true`` instead send the body in
                      ``chunk``-byte pieces (default 1024) ``seconds`` apart, or with ``rate``
                      (bytes/s) in tenth-of-a-second pieces at that rate
``error``             answer ``status`` (default 500; 5xx, 400, 405 or 501) with an OCI errors body
                      of ``code`` and ``message`` (defaults by status)
``garbage-manifest``  manifest body of non-JSON bytes, with a Docker-Content-Digest matching them
``hostile-auth``      401 with a hostile ``WWW-Authenticate`` of ``variant`` (see ``HOSTILE_AUTH_VARIANTS``)
``endless``           200 with a body that never ends and no Content-Length
``trickle``           the status line, then one header byte every ``seconds`` (default 0.5), never
                      finishing the headers, until the client leaves
``blackhole``         read the request and never answer, until the client leaves
``digest-header``     manifest served intact but with ``Docker-Content-Digest: value`` (``md5``:
                      the real md5 of the bytes, as ``md5:<hex>``), GET and HEAD
``gzip-bomb``         manifest GET answered with gzip(gzip(``bomb_bytes`` zero bytes), default 1 GiB)
                      and ``Content-Encoding: gzip, gzip``: a few KiB on the wire
``content-encoding``  the intact body, labelled ``Content-Encoding: value`` (default ``gzip``)
``hide-referrers``    404 ``NOT_FOUND`` to the referrers API (`lab.referrers`), as a Harbor proxy
                      project without ``proxy_referrer_api`` answers; other requests never match
====================  ========================================================================

``trickle``, ``blackhole`` and ``redirect`` with a ``location`` answer before the auth check, like
``hostile-auth``: a dead hop does not hand out challenges either, nor does a load balancer.

Signatures are broken with the kinds above: ``drop`` with ``tag: sha256-<hex>.sig`` loses a cosign
signature, ``corrupt`` with the ``digest`` of a signature blob damages it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

__all__ = [
    "BASE_KINDS",
    "HOSTILE_AUTH_VARIANTS",
    "KINDS",
    "MANIFEST_ONLY",
    "PRE_AUTH_KINDS",
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
        "empty-body",
        "reorder",
        "many-layers",
        "layer-size",
        "media-type",
        "stale",
        "ratelimit",
        "redirect",
        "slow",
        "error",
        "garbage-manifest",
        "hostile-auth",
        "endless",
        "hide-referrers",
        "trickle",
        "blackhole",
        "digest-header",
        "gzip-bomb",
        "content-encoding",
    }
)
MANIFEST_ONLY = frozenset(
    {
        "reorder",
        "many-layers",
        "layer-size",
        "media-type",
        "stale",
        "garbage-manifest",
        "digest-header",
        "gzip-bomb",
    }
)
"""Kinds that only make sense for manifest requests (blob requests never match them)."""
BASE_KINDS = frozenset({"error", "ratelimit", "slow", "hostile-auth", "trickle", "blackhole"})
"""Kinds that also apply to the ``GET /v2/`` version check (when they name no repository or reference)."""
PRE_AUTH_KINDS = frozenset({"hostile-auth", "trickle", "blackhole"})
"""Kinds that answer before the auth check (a hop that hangs or lies about auth does so to everyone);
so does a ``redirect`` with a ``location`` (as a load balancer in front of the registry would)."""
MANIFEST_REWRITES = frozenset({"reorder", "many-layers", "layer-size", "media-type"})
"""Kinds that serve the upstream manifest by tag rewritten (a new digest, remembered for by-digest GETs)."""
TOKEN_KINDS = frozenset({"trickle", "blackhole", "slow", "endless", "error", "ratelimit"})
"""Kinds a ``token: true`` fault may have (what a token endpoint can do to a client)."""

HOSTILE_AUTH_VARIANTS = frozenset(
    {"malformed", "garbage", "huge", "no-realm", "unknown-scheme", "dead-realm", "bad-realm"}
)
ERROR_STATUSES = frozenset({400, 405, 501, *range(500, 600)})
"""What an ``error`` fault may answer: 5xx, and the statuses registries refuse HEAD with."""
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


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
    retry_after: int | str = 1
    seconds: float = 0.0
    drip: bool = False
    chunk: int = 1024
    rate: int | None = None
    status: int = 500
    code: str | None = None
    message: str | None = None
    variant: str = "malformed"
    location: str | None = None
    value: str | None = None
    layers: int = 40_000
    size: str | None = None
    bomb_bytes: int = 1 << 30
    token: bool = False

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
        if self.kind == "error" and self.status not in ERROR_STATUSES:
            raise FaultError(f"an error fault needs a 5xx, 400, 405 or 501 status, got {self.status}")
        if self.kind == "hostile-auth" and self.variant not in HOSTILE_AUTH_VARIANTS:
            raise FaultError(
                f"unknown hostile-auth variant {self.variant!r}; known: {sorted(HOSTILE_AUTH_VARIANTS)}"
            )
        if self.kind in ("digest-header", "media-type") and not self.value:
            raise FaultError(f"a {self.kind} fault needs 'value'")
        if self.token and self.kind not in TOKEN_KINDS:
            raise FaultError(f"a token fault must be one of {sorted(TOKEN_KINDS)}, not {self.kind!r}")
        if self.kind == "layer-size" and not (self.size and _NUMBER.fullmatch(self.size)):
            raise FaultError(f"a layer-size fault needs 'size', the text of a JSON number, got {self.size!r}")
        if self.count is not None and self.count < 0:
            raise FaultError("count must be >= 0")
        if self.chunk <= 0 or (self.rate is not None and self.rate <= 0):
            raise FaultError("chunk and rate must be > 0")
        if self.layers < 0 or self.bomb_bytes <= 0:
            raise FaultError("layers must be >= 0 and bomb_bytes > 0")

    def matches(self, *, repository: str, endpoint: str, reference: str, method: str) -> bool:
        """Whether this fault applies to a request.

        ``endpoint`` is ``manifests``, ``blobs``, ``referrers``, ``base``, ``token`` or ``other``.
        """
        if self.count == 0 or self.token != (endpoint == "token"):
            return False
        located = self.kind == "redirect" and self.location is not None
        if endpoint == "base" and not (self.kind in BASE_KINDS or located):
            return False
        if self.kind in MANIFEST_ONLY and endpoint != "manifests":
            return False
        if self.kind == "gzip-bomb" and method != "GET":
            return False
        if self.kind == "redirect" and not located and (endpoint != "blobs" or method != "GET"):
            return False
        if self.kind == "hide-referrers" and endpoint != "referrers":
            return False
        return (
            (self.repository is None or self.repository == repository)
            and (self.digest is None or self.digest == reference)
            and (self.tag is None or self.tag == reference)
            and (self.method is None or self.method == method)
        )

    @property
    def before_auth(self) -> bool:
        """Whether this fault answers before the gateway checks credentials."""
        return self.kind in PRE_AUTH_KINDS or (self.kind == "redirect" and self.location is not None)

    def use(self) -> None:
        """Count one application of a limited fault."""
        if self.count is not None:
            self.count -= 1


def parse_faults(doc: Any) -> list[Fault]:
    """Parse the body of ``POST /_lab/faults``: a list of fault objects (a single object is accepted)."""
    items = doc if isinstance(doc, list) else [doc]
    return [Fault.from_json(item) for item in items]
