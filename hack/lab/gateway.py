"""A Harbor proxy-cache project stand-in in front of one registry, with fault injection.

Run as ``python -m lab.gateway --listen 127.0.0.1:0 --upstream http://127.0.0.1:N --prefix p-core
[--auth none|anonymous|required] [--user robot:secret] [--token-ttl SECONDS]``; once both listeners
are bound it prints ``{"port": P, "blob_port": B}`` as one JSON line on stdout.

What it copies from a Harbor proxy-cache project:

- ``/v2/<prefix>/<rest>/...`` is forwarded upstream as ``/v2/<rest>/...``; other projects get 401
  ``UNAUTHORIZED`` "project … not found" with an empty ``WWW-Authenticate`` (as Harbor answers);
  an empty prefix is a transparent mirror. Pushes get 403 ``DENIED``.
- With auth on, a ``/v2/`` request without credentials gets 401 and
  ``Bearer realm="http://<Host>/service/token",service="harbor-registry",scope="repository:<repo>:pull"``;
  one whose credentials do not allow it gets 401 ``Basic realm="harbor"`` (Harbor's answer to any
  request that carried an ``Authorization`` header). ``GET /service/token`` hands out a random token
  (``token``, ``access_token``, ``expires_in``) to anyone, as Harbor does, but it allows the requested
  repositories only for Basic credentials equal to ``--user``, or anonymously with ``--auth
  anonymous``. Tokens expire after ``--token-ttl``. Basic credentials equal to ``--user`` sent
  straight to ``/v2/`` are accepted too.

What a proxy project (a non-empty prefix) answers as Harbor v2.15.2 does, measured side by side in
``tests/registry/test_gateway_vs_harbor.py``:

- ``HEAD`` of a blob this hop has not yet served by ``GET`` is 404 (Harbor answers ``HEAD`` from its
  own storage only).
- ``GET`` of a manifest by tag within `MANIFEST_CACHE_SECONDS` of its first pull carries empty
  ``Docker-Content-Digest`` and ``ETag`` headers (Harbor passes its upstream's answer on until it has
  stored the manifest itself); ``HEAD`` and by-digest answers carry the digest.
- An unknown tag or blob upstream is 404 ``NOT_FOUND`` with Harbor's messages.
- Requests from the lab's own downstream proxy registries (distribution's client sends
  ``User-Agent: Go-http-client/…``) get the plain upstream answers: distribution's proxy sends ``HEAD``
  for a blob before it pulls it, which Harbor's proxy never does, so a 404 there would break the lab.

Differences that are on purpose: no caching here (the registry behind does that; the gateway only
remembers which blobs it served), one upstream,
``Range`` is passed through but faults shape bytes relative to the start of whatever is served.
The admin API (``/_lab/faults``, ``/_lab/requests``) is described in `lab.faults` and `FaultClient`.
A second listener, the *blob host*, serves ``/blobs/<upstream repo>/<digest>`` without auth: it is
where ``redirect`` faults send clients, and it logs whether they wrongly sent ``Authorization``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import dataclasses
import hashlib
import json
import re
import secrets
import signal
import socket
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from lab.faults import MANIFEST_REWRITES, Fault, FaultError, parse_faults
from lab.process import LOOPBACK
from lab.referrers import referrers_index

__all__ = ["Gateway", "main"]

SERVICE = "harbor-registry"
API_VERSION = {"Docker-Distribution-Api-Version": "registry/2.0"}
CHUNK = 64 * 1024
MANIFEST_LIMIT = 8 * 1024 * 1024
LOG_LIMIT = 10_000
MANIFEST_CACHE_SECONDS = 20.0
"""Seconds after a tag's first pull during which a proxy project passes the upstream's manifest on
(empty digest headers): Harbor stores a proxied manifest about 20 s after the first pull."""
DOWNSTREAM_PROXY_AGENT = "Go-http-client/"
"""User-Agent prefix of distribution's proxy client: the lab's own proxy registries asking upstream."""
HANG_LIMIT = 600.0
"""Seconds a ``trickle`` or ``blackhole`` answer holds a connection at most (clients leave sooner)."""
DRIP_TICK = 0.1
"""Seconds between pieces of a ``slow`` fault given as a ``rate``."""
_ERROR_CODES = {400: "UNSUPPORTED", 405: "UNSUPPORTED", 501: "UNSUPPORTED"}
DEFAULT_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
_PASSTHROUGH = (
    "Content-Type",
    "Docker-Content-Digest",
    "ETag",
    "Content-Range",
    "Accept-Ranges",
    "Last-Modified",
    "Cache-Control",
    "Link",
    "Retry-After",
)
_CONTENT_PATH = re.compile(r"^(?P<name>.+)/(?P<endpoint>manifests|blobs)/(?P<reference>[^/]+)$")
_REFERRERS_PATH = re.compile(r"^(?P<name>.+)/(?P<endpoint>referrers)/(?P<reference>[^/]+)$")
_OTHER_PATH = re.compile(r"^(?P<name>.+?)/(?:tags/list|blobs/uploads(?:/.*)?)$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True)
class _Grant:
    """What one issued token allows, and until when (monotonic clock)."""

    repositories: frozenset[str]
    expires_at: float
    authenticated: bool = True
    """False for a token handed out to wrong or missing credentials (Harbor issues those too)."""


@dataclasses.dataclass(frozen=True)
class _Target:
    """A parsed ``/v2/...`` registry request: repository as seen here and as asked upstream."""

    repository: str
    upstream_repository: str
    endpoint: str
    reference: str
    tail: str

    def upstream_path(self, reference: str | None = None) -> str:
        """The upstream path, optionally with another reference (how ``stale`` swaps manifests)."""
        if reference is None:
            return f"/v2/{self.upstream_repository}/{self.tail}"
        return f"/v2/{self.upstream_repository}/{self.endpoint}/{reference}"


def registry_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """A distribution-spec error body, as registries and Harbor send it."""
    body = {"errors": [{"code": code, "message": message, "detail": {}}]}
    return web.json_response(body, status=status, headers={**API_VERSION, **(headers or {})})


class _Shaper:
    """Turns an upstream body into what a ``corrupt``, ``truncate`` or ``cut`` fault says to serve."""

    def __init__(self, fault: Fault | None, length: int | None) -> None:
        self.kind = fault.kind if fault else None
        self.position = 0
        half = (length or 0) // 2
        self.flip_at = half if fault is None or fault.offset is None else fault.offset
        self.keep = half if fault is None or fault.keep is None else fault.keep

    def declared_length(self, length: int | None) -> int | None:
        """The Content-Length to announce: shorter only for ``truncate`` and ``empty-body`` (``cut``
        lies on purpose)."""
        if self.kind == "empty-body":
            return 0
        if self.kind == "truncate" and length is not None:
            return min(self.keep, length)
        return length

    def shape(self, chunk: bytes) -> bytes:
        start, self.position = self.position, self.position + len(chunk)
        if self.kind == "empty-body":
            return b""
        if self.kind == "corrupt" and start <= self.flip_at < self.position:
            i = self.flip_at - start
            return chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
        if self.kind in ("truncate", "cut"):
            return chunk[: max(0, self.keep - start)]
        return chunk

    @property
    def finished(self) -> bool:
        """True once a shortening fault has sent all it will send."""
        return self.kind == "empty-body" or (self.kind in ("truncate", "cut") and self.position >= self.keep)


class _Drip:
    """Writes a ``slow`` fault's body: ``chunk`` bytes ``seconds`` apart, or paced at ``rate`` bytes/s."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.active = fault.drip or fault.rate is not None
        self.started = time.monotonic()
        self.sent = 0

    async def write(self, response: web.StreamResponse, data: bytes) -> None:
        rate = self.fault.rate
        piece = self.fault.chunk if rate is None else max(1, int(rate * DRIP_TICK))
        for i in range(0, len(data), piece):
            part = data[i : i + piece]
            await response.write(part)
            self.sent += len(part)
            if rate is None:
                await asyncio.sleep(self.fault.seconds)
            else:  # paced against the clock, so the rate holds whatever the writes cost
                await asyncio.sleep(max(0.0, self.started + self.sent / rate - time.monotonic()))


class Gateway:
    """State and handlers of one gateway: faults, issued tokens, the request log, synthesized manifests."""

    def __init__(
        self,
        upstream: str,
        *,
        prefix: str = "",
        auth: str = "none",
        user: tuple[str, str] | None = None,
        token_ttl: float = 1800.0,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.prefix = prefix.strip("/")
        self.auth = auth
        self.user = user
        self.token_ttl = token_ttl
        self.faults: list[Fault] = []
        self.log: collections.deque[dict[str, Any]] = collections.deque(maxlen=LOG_LIMIT)
        self.logged = 0
        """Requests logged since start (the log keeps only the last `LOG_LIMIT`; storms send more)."""
        self.blob_port = 0
        self._tokens: dict[str, _Grant] = {}
        self._synthesized: dict[str, tuple[bytes, str]] = {}
        self._bombs: dict[int, bytes] = {}
        self._served_blobs: set[tuple[str, str]] = set()
        """(upstream repository, digest) of blobs served by GET: what a Harbor here would have stored."""
        self._first_pulled: dict[tuple[str, str], float] = {}
        """(upstream repository, tag) -> monotonic time of its first manifest GET."""
        self._session: aiohttp.ClientSession | None = None

    # -- applications --------------------------------------------------------------------------

    def registry_app(self) -> web.Application:
        """The Harbor-like listener: ``/v2/``, ``/service/token`` and the ``/_lab/`` admin API."""
        app = web.Application(middlewares=[self._recorder("registry")])
        app.router.add_route("GET", "/v2/", self.handle_base)
        app.router.add_route("*", "/v2/{path:.+}", self.handle_registry)
        app.router.add_get("/service/token", self.handle_token)
        app.router.add_post("/_lab/faults", self.handle_set_faults)
        app.router.add_get("/_lab/faults", self.handle_get_faults)
        app.router.add_delete("/_lab/faults", self.handle_clear_faults)
        app.router.add_get("/_lab/requests", self.handle_get_requests)
        app.router.add_delete("/_lab/requests", self.handle_clear_requests)
        app.router.add_get("/_lab/stats", self.handle_stats)
        app.on_startup.append(self._open_session)
        app.on_cleanup.append(self._close_session)
        return app

    def blob_app(self) -> web.Application:
        """The separate, unauthenticated blob host that ``redirect`` faults point at."""
        app = web.Application(middlewares=[self._recorder("blobs")])
        app.router.add_get("/blobs/{path:.+}", self.handle_redirected_blob)
        return app

    async def _open_session(self, _app: web.Application) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)

    async def _close_session(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    def _recorder(self, listener: str) -> Middleware:
        """Middleware logging every non-admin request with its status and whether it carried credentials."""

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            status = 0
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                if not request.path.startswith("/_lab/"):
                    self.logged += 1
                    self.log.append(
                        {
                            "seq": self.logged,
                            "listener": listener,
                            "method": request.method,
                            "path": request.path_qs,
                            "raw_path": request.raw_path,
                            "status": status,
                            "authorization": "Authorization" in request.headers,
                            "agent": request.headers.get("User-Agent", ""),
                            "host": request.host,
                            "fault": request.get("fault"),
                            "time": time.time(),
                        }
                    )

        return record

    # -- admin API -----------------------------------------------------------------------------

    async def handle_set_faults(self, request: web.Request) -> web.Response:
        try:
            faults = parse_faults(await request.json())
        except (FaultError, json.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        for fault in faults:  # built now, so the faulted request answers at once (1 GiB: ~5 s)
            if fault.kind == "gzip-bomb":
                await self._bomb(fault.bomb_bytes)
        self.faults = faults
        return web.json_response({"faults": len(self.faults)})

    async def handle_get_faults(self, _request: web.Request) -> web.Response:
        return web.json_response([dataclasses.asdict(f) for f in self.faults])

    async def handle_clear_faults(self, _request: web.Request) -> web.Response:
        self.faults = []
        return web.json_response({"faults": 0})

    async def handle_get_requests(self, _request: web.Request) -> web.Response:
        return web.json_response(list(self.log))

    async def handle_clear_requests(self, _request: web.Request) -> web.Response:
        self.log.clear()
        return web.json_response({"requests": 0})

    async def handle_stats(self, _request: web.Request) -> web.Response:
        """``{"requests": N}``: every request logged since start, also those the log no longer holds."""
        return web.json_response({"requests": self.logged})

    # -- auth ----------------------------------------------------------------------------------

    def _challenge(self, request: web.Request, repository: str | None) -> web.Response:
        """Harbor's 401: a Bearer challenge without credentials, else ``Basic realm="harbor"``."""
        if "Authorization" in request.headers:
            action = f": {repository}, action: pull" if repository is not None else ""
            message = f"unauthorized to access repository{action}"
            return registry_error(401, "UNAUTHORIZED", message, {"WWW-Authenticate": 'Basic realm="harbor"'})
        value = f'Bearer realm="http://{request.host}/service/token",service="{SERVICE}"'
        if repository is not None:
            value += f',scope="repository:{repository}:pull"'
        return registry_error(
            401, "UNAUTHORIZED", "unauthorized to access repository", {"WWW-Authenticate": value}
        )

    def _authorized(self, request: web.Request, repository: str | None) -> bool:
        if self.auth == "none" or self._basic_user(request):
            return True
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        grant = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if grant is None or not grant.authenticated:
            return False
        if grant.expires_at < time.monotonic():
            del self._tokens[token.strip()]
            return False
        return repository is None or repository in grant.repositories

    def _basic_user(self, request: web.Request) -> bool | None:
        """None without Basic credentials, else whether they equal ``--user``."""
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            username, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return self.user is not None and (
            secrets.compare_digest(username, self.user[0]) and secrets.compare_digest(password, self.user[1])
        )

    async def handle_token(self, request: web.Request) -> web.StreamResponse:
        """Harbor's ``/service/token``: anonymous (with a scope) or Basic, never POST.

        ``token: true`` faults apply first (a hanging token endpoint, a dripped token body).
        """
        target = _Target("", "", "token", "", "")
        fault = self._match(request, target, before_auth=True) or self._match(
            request, target, before_auth=False
        )
        if fault is not None and fault.before_auth:
            return await self._before_auth(request, fault, target)
        if fault is not None and (immediate := await self._apply_fault(request, target, fault)) is not None:
            return immediate
        user = self._basic_user(request)
        scopes = request.query.getall("scope", [])
        authenticated = user is True or (user is None and self.auth == "anonymous" and bool(scopes))
        repositories = set()
        for scope in scopes:
            for item in scope.split(" "):
                kind, _, rest = item.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind == "repository" and {"pull", "*"} & set(actions.split(",")):
                    repositories.add(name)
        token = secrets.token_urlsafe(32)
        if not authenticated:  # Harbor hands a token to anyone; it allows nothing
            repositories.clear()
        self._tokens[token] = _Grant(
            frozenset(repositories), time.monotonic() + self.token_ttl, authenticated
        )
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        ttl = int(self.token_ttl)
        body = json.dumps({"token": token, "access_token": token, "expires_in": ttl, "issued_at": issued})
        headers = {"Content-Type": "application/json"}
        return await self._send(request, 200, headers, _once(body.encode()), len(body), fault)

    # -- registry ------------------------------------------------------------------------------

    async def handle_base(self, request: web.Request) -> web.StreamResponse:
        """The API version check: 200, or 401 with a challenge; base-level faults apply here too."""
        target = _Target("", "", "base", "", "")
        early = self._match(request, target, before_auth=True)
        if early is not None:
            return await self._before_auth(request, early, target)
        if not self._authorized(request, None):
            return self._challenge(request, None)
        fault = self._match(request, target, before_auth=False)
        if fault is not None and (immediate := await self._apply_fault(request, target, fault)) is not None:
            return immediate
        return web.json_response({}, headers=API_VERSION)

    def _parse(self, path: str) -> _Target | None:
        if match := _CONTENT_PATH.match(path) or _REFERRERS_PATH.match(path):
            name, endpoint, reference = match["name"], match["endpoint"], match["reference"]
        elif match := _OTHER_PATH.match(path):
            name, endpoint, reference = match["name"], "other", ""
        else:
            return None
        if not self.prefix:
            upstream = name
        elif name.startswith(self.prefix + "/"):
            upstream = name[len(self.prefix) + 1 :]
        else:
            upstream = ""
        return _Target(name, upstream, endpoint, reference, path[len(name) + 1 :])

    def _match(self, request: web.Request, target: _Target, *, before_auth: bool) -> Fault | None:
        """The first live fault for this request; those that are `Fault.before_auth` answer first.

        Matching consumes one use of a counted fault, so requests refused by auth must not match.
        """
        for fault in self.faults:
            if fault.before_auth == before_auth and fault.matches(
                repository=target.repository,
                endpoint=target.endpoint,
                reference=target.reference,
                method=request.method,
            ):
                fault.use()
                request["fault"] = fault.kind
                return fault
        return None

    async def handle_registry(self, request: web.Request) -> web.StreamResponse:
        """Auth, prefix mapping, then whichever fault matches, else a streaming proxy to upstream."""
        target = self._parse(request.match_info["path"])
        if target is None:
            return registry_error(404, "NAME_UNKNOWN", "repository name not known to registry")
        early = self._match(request, target, before_auth=True)
        if early is not None:
            return await self._before_auth(request, early, target)
        if not self._authorized(request, target.repository):
            return self._challenge(request, target.repository)
        if not target.upstream_repository:
            project = target.repository.split("/", 1)[0]
            message = f"project {project} not found: project {project} not found"
            return registry_error(401, "UNAUTHORIZED", message, {"WWW-Authenticate": ""})
        if request.method not in ("GET", "HEAD"):
            return registry_error(403, "DENIED", "can not push artifact to a proxy project")
        fault = self._match(request, target, before_auth=False)
        if fault is not None:
            immediate = await self._apply_fault(request, target, fault)
            if immediate is not None:
                return immediate
        synthesized = self._synthesized.get(target.reference) if target.endpoint == "manifests" else None
        if synthesized is not None:
            body, content_type = synthesized
            headers = {"Content-Type": content_type, "Docker-Content-Digest": target.reference}
            return await self._send(request, 200, headers, _once(body), len(body), fault)
        if fault is not None and fault.kind in MANIFEST_REWRITES:
            return await self._rewrite(request, target, fault)
        if target.endpoint == "referrers" and self._session is not None:
            artifact_type = request.query.get("artifactType")
            return await referrers_index(
                self._session, self.upstream, target.upstream_repository, target.reference, artifact_type
            )
        harbor = bool(self.prefix) and not request.headers.get("User-Agent", "").startswith(
            DOWNSTREAM_PROXY_AGENT
        )
        blob = (target.upstream_repository, target.reference) if target.endpoint == "blobs" else None
        uncached = blob is not None and blob not in self._served_blobs
        if harbor and fault is None and request.method == "HEAD" and uncached:
            return registry_error(404, "NOT_FOUND", f"blob {target.reference} not found in local storage")
        reference = fault.serve_digest if fault is not None and fault.kind == "stale" else None
        response = await self._proxy(
            request,
            target.upstream_path(reference),
            fault,
            target if harbor else None,
        )
        if blob is not None and request.method == "GET" and response.status == 200:
            self._served_blobs.add(blob)
        return response

    def _passed_on(self, target: _Target) -> bool:
        """Whether a Harbor proxy project would still pass this manifest GET by tag on from upstream
        (before it stores the manifest itself, `MANIFEST_CACHE_SECONDS` after the first pull)."""
        if target.endpoint != "manifests" or ":" in target.reference:
            return False
        key = (target.upstream_repository, target.reference)
        first = self._first_pulled.setdefault(key, time.monotonic())
        return time.monotonic() - first < MANIFEST_CACHE_SECONDS

    @staticmethod
    def _harbor_not_found(target: _Target, body: bytes) -> web.Response:
        """Harbor's 404 for what its upstream does not have: ``NOT_FOUND`` with Harbor's message."""
        if target.endpoint == "manifests" and ":" not in target.reference:
            message = f"resource not found: repo {target.repository}, tag {target.reference} not found"
        else:
            message = f"http status code: 404, body: {body.decode(errors='replace')}"
        return registry_error(404, "NOT_FOUND", message)

    async def _apply_fault(
        self, request: web.Request, target: _Target, fault: Fault
    ) -> web.StreamResponse | None:
        """Answer faults that replace the response entirely; None lets the request go on (shaped)."""
        kind = fault.kind
        if kind == "hide-referrers":
            return registry_error(404, "NOT_FOUND", "referrers API not available (hidden by lab)")
        if kind == "drop":
            code = "MANIFEST_UNKNOWN" if target.endpoint == "manifests" else "BLOB_UNKNOWN"
            return registry_error(404, code, f"{target.reference} unknown to registry (dropped by lab)")
        if kind == "ratelimit":
            return registry_error(
                429, "TOOMANYREQUESTS", "too many requests", {"Retry-After": str(fault.retry_after)}
            )
        if kind == "error":
            code = fault.code or _ERROR_CODES.get(fault.status, "UNKNOWN")
            return registry_error(fault.status, code, fault.message or "injected server error")
        if kind == "redirect":
            location = (
                f"http://{LOOPBACK}:{self.blob_port}/blobs/{target.upstream_repository}/{target.reference}"
            )
            return web.Response(status=307, headers={**API_VERSION, "Location": location})
        if kind in ("digest-header", "gzip-bomb"):
            return await self._relabelled_manifest(request, target, fault)
        if kind == "garbage-manifest":
            body = b"\x89<html>not a manifest</html>\x00\xff" * 4
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            headers = {
                "Content-Type": "application/vnd.oci.image.manifest.v1+json",
                "Docker-Content-Digest": digest,
            }
            return await self._send(request, 200, headers, _once(body), len(body), None)
        if kind == "endless":
            return await self._endless(request)
        if kind == "slow" and not fault.drip:
            await asyncio.sleep(fault.seconds)
        return None

    def _hostile_auth(self, request: web.Request, fault: Fault, target: _Target) -> web.Response:
        realm = f"http://{request.host}/service/token"
        scope = f"repository:{target.repository}:pull"
        values = {
            "malformed": f'Bearer realm="{realm},service="{SERVICE}",scope="{scope}',
            "garbage": 'Bearer ,,=="\\",realm==,,service"=scope=,"\\',
            "huge": f'Bearer realm="{realm}",service="{"x" * 65536}",scope="{scope}"',
            "no-realm": f'Bearer service="{SERVICE}",scope="{scope}"',
            "unknown-scheme": "Negotiate YIIB",
            "dead-realm": f'Bearer realm="http://{LOOPBACK}:9/service/token",service="{SERVICE}",scope="{scope}"',
            "bad-realm": f'Bearer realm="http://[1.2.3.4]/service/token",service="{SERVICE}",scope="{scope}"',
        }
        return registry_error(
            401, "UNAUTHORIZED", "unauthorized", {"WWW-Authenticate": values[fault.variant]}
        )

    async def _before_auth(self, request: web.Request, fault: Fault, target: _Target) -> web.StreamResponse:
        if fault.kind == "trickle":
            return await self._hang(request, fault.seconds or 0.5, b"HTTP/1.1 200 OK\r\n", b"X")
        if fault.kind == "blackhole":
            return await self._hang(request, 0.2, b"", b"")
        if fault.kind == "redirect":
            return web.Response(status=307, headers={**API_VERSION, "Location": fault.location or ""})
        return self._hostile_auth(request, fault, target)

    async def _hang(
        self, request: web.Request, every: float, first: bytes, then: bytes
    ) -> web.StreamResponse:
        """Write ``first``, then ``then`` every ``every`` seconds, never a whole answer; end when the
        client leaves (or after `HANG_LIMIT`). The connection is closed, so no real answer follows."""
        transport = request.transport
        if transport is None:
            return web.Response(status=500)
        transport.write(first)
        deadline = time.monotonic() + HANG_LIMIT
        while not transport.is_closing() and time.monotonic() < deadline:
            await asyncio.sleep(every)
            if then and not transport.is_closing():
                transport.write(then)
        transport.close()
        return web.Response(status=599)  # never sent: aiohttp drops it on the closed transport

    async def _upstream(self, method: str, path: str, request: web.Request) -> aiohttp.ClientResponse:
        assert self._session is not None
        headers = {"Accept-Encoding": "identity"}
        for name in ("Accept", "Range", "User-Agent"):
            if values := request.headers.getall(name, []):
                headers[name] = ", ".join(values)
        return await self._session.request(
            method, self.upstream + path, headers=headers, allow_redirects=False
        )

    def _rewrite_location(self, request: web.Request, location: str) -> str:
        """Point upstream redirects back at this gateway, prefix included (Harbor hides its backend)."""
        parts = urlsplit(location)
        if parts.netloc not in ("", urlsplit(self.upstream).netloc) or not parts.path.startswith("/v2/"):
            return location
        path = parts.path[len("/v2/") :]
        prefixed = f"{self.prefix}/{path}" if self.prefix else path
        query = f"?{parts.query}" if parts.query else ""
        return f"http://{request.host}/v2/{prefixed}{query}"

    async def _proxy(
        self, request: web.Request, path: str, fault: Fault | None, harbor: _Target | None = None
    ) -> web.StreamResponse:
        """Stream one upstream response through, shaping the body if a fault says so.

        ``harbor`` (the request's target) makes the answer a Harbor proxy project's: 404s as
        `_harbor_not_found`, empty digest headers on a manifest by tag it would pass on.
        """
        try:
            upstream = await self._upstream(request.method, path, request)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return registry_error(502, "UNKNOWN", f"upstream unreachable: {exc}")
        async with upstream:
            if harbor is not None and upstream.status == 404 and harbor.endpoint in ("manifests", "blobs"):
                return self._harbor_not_found(harbor, await upstream.content.read(CHUNK))
            headers = {k: upstream.headers[k] for k in _PASSTHROUGH if k in upstream.headers}
            passed_on = harbor is not None and request.method == "GET" and self._passed_on(harbor)
            if passed_on and upstream.status == 200:
                headers |= {"Docker-Content-Digest": "", "ETag": ""}
            if "Location" in upstream.headers:
                headers["Location"] = self._rewrite_location(request, upstream.headers["Location"])
            if fault is not None and fault.kind == "content-encoding":
                headers["Content-Encoding"] = fault.value or "gzip"
            shaped = fault if upstream.status in (200, 206) else None
            return await self._send(
                request,
                upstream.status,
                headers,
                upstream.content.iter_chunked(CHUNK),
                upstream.content_length,
                shaped,
            )

    async def _send(
        self,
        request: web.Request,
        status: int,
        headers: dict[str, str],
        chunks: AsyncIterator[bytes],
        length: int | None,
        fault: Fault | None,
    ) -> web.StreamResponse:
        """Write a response from chunks, applying corrupt/truncate/cut/drip faults on the way."""
        shaper = _Shaper(fault, length)
        response = web.StreamResponse(status=status, headers={**API_VERSION, **headers})
        declared = shaper.declared_length(length)
        if declared is not None:
            response.content_length = declared
        await response.prepare(request)
        if request.method == "HEAD":
            await response.write_eof()
            return response
        drip = _Drip(fault) if fault is not None and fault.kind == "slow" else None
        async for chunk in chunks:
            data = shaper.shape(chunk)
            if drip is not None and drip.active:
                await drip.write(response, data)
            else:
                await response.write(data)
            if shaper.finished:
                break
        if shaper.kind == "cut":
            await response.drain()
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        """A 200 whose chunked body never ends; stops only when the client goes away."""
        response = web.StreamResponse(
            status=200, headers={**API_VERSION, "Content-Type": "application/octet-stream"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        filler = b" " * CHUNK
        with contextlib.suppress(ConnectionError):
            while True:
                await response.write(filler)
        return response

    async def _upstream_manifest(self, request: web.Request, target: _Target) -> tuple[bytes, str, str]:
        """The upstream manifest as served: bytes, Content-Type and Docker-Content-Digest.

        Raises `_Refused` with the answer to give when upstream does not serve one.
        """
        try:
            upstream = await self._upstream("GET", target.upstream_path(), request)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Refused(registry_error(502, "UNKNOWN", f"upstream unreachable: {exc}")) from None
        async with upstream:
            if upstream.status != 200:
                raise _Refused(registry_error(upstream.status, "MANIFEST_UNKNOWN", "upstream refused"))
            content_type = upstream.headers.get("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            try:
                body = await _read_limited(upstream.content, MANIFEST_LIMIT)
            except ValueError as exc:
                raise _Refused(registry_error(502, "UNKNOWN", str(exc))) from None
        digest = upstream.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()
        return body, content_type, digest

    async def _rewrite(self, request: web.Request, target: _Target, fault: Fault) -> web.StreamResponse:
        """Serve the upstream manifest rewritten by a `MANIFEST_REWRITES` fault, remembering it under
        its new digest (so by-digest requests get the same bytes)."""
        try:
            body, content_type, _ = await self._upstream_manifest(request, target)
            manifest = json.loads(body)
        except _Refused as refused:
            return refused.response
        except ValueError as exc:
            return registry_error(502, "UNKNOWN", f"cannot rewrite: {exc}")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
            return registry_error(502, "UNKNOWN", "cannot rewrite: upstream manifest has no layers")
        body = _rewritten(manifest, fault)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self._synthesized[digest] = (body, content_type)
        headers = {"Content-Type": content_type, "Docker-Content-Digest": digest}
        return await self._send(request, 200, headers, _once(body), len(body), fault)

    async def _relabelled_manifest(
        self, request: web.Request, target: _Target, fault: Fault
    ) -> web.StreamResponse:
        """``digest-header``: the intact manifest under a lying digest header; ``gzip-bomb``: the
        manifest's real digest header over a doubly gzipped bomb body."""
        try:
            body, content_type, digest = await self._upstream_manifest(request, target)
        except _Refused as refused:
            return refused.response
        headers = {"Content-Type": content_type, "Docker-Content-Digest": digest}
        if fault.kind == "gzip-bomb":
            body = await self._bomb(fault.bomb_bytes)
            headers["Content-Encoding"] = "gzip, gzip"
        elif fault.value == "md5":
            headers["Docker-Content-Digest"] = "md5:" + hashlib.md5(body, usedforsecurity=False).hexdigest()
        else:
            headers["Docker-Content-Digest"] = fault.value or ""
        return await self._send(request, 200, headers, _once(body), len(body), None)

    async def _bomb(self, size: int) -> bytes:
        """gzip(gzip(``size`` zero bytes)), built once per size off the event loop (1 GiB: ~5 s, 2 KiB).

        Set when its fault is set (`handle_set_faults`), so requests never wait for it.
        """
        if size not in self._bombs:
            self._bombs[size] = await asyncio.to_thread(_double_gzip_zeros, size)
        return self._bombs[size]

    async def handle_redirected_blob(self, request: web.Request) -> web.StreamResponse:
        """Blob host: serve ``/blobs/<upstream repo>/<digest>`` like a presigned storage URL (no auth)."""
        repository, _, digest = request.match_info["path"].rpartition("/")
        return await self._proxy(request, f"/v2/{repository}/blobs/{digest}", None)


class _Refused(Exception):
    """Upstream did not serve what a fault needs; ``response`` is what to answer instead."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


_SIZE_PLACEHOLDER = "\x00lab-size\x00"


def _rewritten(manifest: dict[str, Any], fault: Fault) -> bytes:
    """The bytes a `MANIFEST_REWRITES` fault serves in place of ``manifest``."""
    layers: list[Any] = manifest["layers"]
    if fault.kind == "reorder":
        layers.reverse()
    elif fault.kind == "many-layers":
        layers += [
            {"size": 1, "digest": "sha256:" + hashlib.sha256(b"lab layer %d" % i).hexdigest()}
            for i in range(fault.layers)
        ]
    elif fault.kind == "media-type":
        for layer in layers if fault.offset is None else layers[fault.offset : fault.offset + 1]:
            if isinstance(layer, dict):
                layer["mediaType"] = fault.value
    else:  # layer-size: a number Python's json cannot write (1e400), so put its text in afterwards
        for layer in layers:
            if isinstance(layer, dict):
                layer["size"] = _SIZE_PLACEHOLDER
    text = json.dumps(manifest, separators=(",", ":"))
    if fault.kind == "layer-size":
        text = text.replace(json.dumps(_SIZE_PLACEHOLDER), fault.size or "0")
    return text.encode()


def _double_gzip_zeros(size: int) -> bytes:
    inner = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(min(size, CHUNK * 16))
    parts, left = [], size
    while left > 0:
        parts.append(inner.compress(zeros[: min(left, len(zeros))]))
        left -= len(zeros)
    parts.append(inner.flush())
    outer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return outer.compress(b"".join(parts)) + outer.flush()


async def _read_limited(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """A whole small body, refusing more than ``limit`` bytes (manifests only, never blobs)."""
    data = bytearray()
    async for chunk in stream.iter_chunked(CHUNK):
        data += chunk
        if len(data) > limit:
            raise ValueError(f"upstream manifest exceeds {limit} bytes")
    return bytes(data)


async def _once(body: bytes) -> AsyncIterator[bytes]:
    """An in-memory body as a chunk iterator, so buffered and streamed bodies share `Gateway._send`."""
    yield body


def _bind(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    return sock


async def serve(args: argparse.Namespace) -> None:
    """Bind both listeners, announce the ports on stdout, serve until SIGTERM/SIGINT."""
    user: tuple[str, str] | None = None
    if args.user:
        name, colon, secret = args.user.partition(":")
        if not colon:
            raise SystemExit("--user must be NAME:SECRET")
        user = (name, secret)
    if args.auth == "required" and user is None:
        raise SystemExit("--auth required needs --user NAME:SECRET")
    gateway = Gateway(args.upstream, prefix=args.prefix, auth=args.auth, user=user, token_ttl=args.token_ttl)
    main_sock, blob_sock = _bind(args.listen), _bind(args.blob_listen)
    gateway.blob_port = blob_sock.getsockname()[1]
    runners = [
        web.AppRunner(gateway.registry_app(), access_log=None),
        web.AppRunner(gateway.blob_app(), access_log=None),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        for runner, sock in zip(runners, (main_sock, blob_sock), strict=True):
            await runner.setup()
            await web.SockSite(runner, sock, shutdown_timeout=1.0).start()
        print(json.dumps({"port": main_sock.getsockname()[1], "blob_port": gateway.blob_port}), flush=True)
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default=f"{LOOPBACK}:0", help="HOST:PORT of the registry listener")
    parser.add_argument("--blob-listen", default=f"{LOOPBACK}:0", help="HOST:PORT of the redirect blob host")
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT of the registry behind")
    parser.add_argument("--prefix", default="", help="Harbor proxy project name; empty for a mirror")
    parser.add_argument("--auth", choices=["none", "anonymous", "required"], default="none")
    parser.add_argument("--user", help="NAME:SECRET accepted by /service/token")
    parser.add_argument("--token-ttl", type=float, default=1800.0, help="token lifetime in seconds")
    args = parser.parse_args(argv)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main(sys.argv[1:])
