"""The async registry client: one per hop, owning auth, retries, limits, redirects and streaming.

Everything that touches the network for a hop goes through ``RegistryClient``. It exposes just
what a check needs (resolve a tag, fetch a manifest, verify a blob, ping ``/v2/``) and turns every
HTTP or network outcome into either a value or one of the errors in ``errors.py``.

The HTTP transport is a single seam (``make_transport``): httpx's own transport or httpx over
aiohttp. Measured on a 2-core box, httpx over aiohttp costs about half the client CPU per check
of httpx's default transport, so it is the default.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import hashlib
import random
import ssl
import time
from collections.abc import Callable
from typing import Literal
from urllib.parse import urljoin, urlsplit

import aiohttp
import httpx

from layerwatch.chain import Hop
from layerwatch.manifest import ACCEPT, MAX_MANIFEST_BYTES, Descriptor
from layerwatch.registry import auth
from layerwatch.registry.errors import (
    RegistryAuthFailed,
    RegistryError,
    RegistryNotFound,
    RegistryRateLimited,
    RegistryUnavailable,
)

__all__ = [
    "BlobResult",
    "ClientSettings",
    "FetchedManifest",
    "RegistryClient",
    "TransportKind",
    "make_transport",
]

TransportKind = Literal["aiohttp", "httpx"]
RequestHook = Callable[[str, str], None]
"""Called as ``hook(method, code)`` for every HTTP exchange; ``code`` is the status or ``error``."""

_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_MAX_TOKEN_BYTES = 64 * 1024
_MIN_BLOB_RATE = 512 * 1024
"""Bytes per second below which a blob download counts as stalled (bounds endless slow bodies)."""
_CHUNK = 256 * 1024


@dataclasses.dataclass(frozen=True)
class ClientSettings:
    """How a hop is talked to. Times are seconds."""

    timeout: float = 30.0
    """Per request: connect, and each read; a whole manifest download is bounded by it too."""
    concurrency: int = 4
    """Requests in flight at once to one hop; registries rate-limit, so layerwatch stays polite."""
    retries: int = 2
    """Extra attempts after a transient failure (network error, 500/502/503/504)."""
    backoff: float = 0.25
    """First retry delay; doubles per attempt, with full jitter."""
    rate_limit_budget: float = 30.0
    """Total Retry-After waiting one client accepts per call before calling it RateLimited."""
    transport: TransportKind = "aiohttp"


@dataclasses.dataclass(frozen=True)
class FetchedManifest:
    """Manifest bytes as served, with the headers that matter."""

    body: bytes
    media_type: str
    digest_header: str | None

    def digest(self, algorithm: str = "sha256") -> str:
        return f"{algorithm}:{hashlib.new(algorithm, self.body).hexdigest()}"


@dataclasses.dataclass(frozen=True)
class BlobResult:
    """What a hop served for one blob: ``ok``, ``missing`` or ``corrupt``, and why."""

    status: Literal["ok", "missing", "corrupt"]
    detail: str
    bytes_verified: int = 0


def make_transport(
    kind: TransportKind, verify: ssl.SSLContext | bool, limits: httpx.Limits
) -> httpx.AsyncBaseTransport:
    """The HTTP transport seam; everything above it speaks httpx."""
    if kind == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        transport: httpx.AsyncBaseTransport = AiohttpTransport(verify=verify, limits=limits, trust_env=False)
        return transport
    return httpx.AsyncHTTPTransport(verify=verify, limits=limits, trust_env=False)


def _ssl_context(hop: Hop) -> ssl.SSLContext | bool:
    if hop.scheme != "https":
        return False
    if hop.insecure:
        return False
    context = ssl.create_default_context()
    if hop.ca_pem:
        context.load_verify_locations(cadata=hop.ca_pem)
    return context


def _describe(exc: Exception) -> str:
    """One line for a network error, without the URL's query or anything secret."""
    kinds: dict[type[Exception], str] = {
        httpx.ConnectTimeout: "connect timeout",
        httpx.ReadTimeout: "read timeout",
        httpx.PoolTimeout: "connection pool timeout",
        httpx.ConnectError: "connection failed",
        httpx.RemoteProtocolError: "protocol error",
        httpx.ReadError: "read error",
    }
    kind = kinds.get(type(exc), type(exc).__name__)
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    if "certificate" in text.lower() or "ssl" in text.lower():
        kind = "TLS failure"
    return f"{kind}: {text}" if text else kind


def _retry_after(value: str | None) -> float:
    """Seconds from ``Retry-After`` (delta seconds or an HTTP date); 1 s when absent or odd."""
    if not value:
        return 1.0
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 1.0
    return max(0.0, when.timestamp() - time.time())


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


class RegistryClient:
    """A connection pool, a concurrency limit and an auth state for one hop."""

    def __init__(
        self, hop: Hop, settings: ClientSettings | None = None, *, on_request: RequestHook | None = None
    ) -> None:
        self.hop = hop
        self.settings = settings or ClientSettings()
        self._on_request = on_request
        limits = httpx.Limits(
            max_connections=self.settings.concurrency, max_keepalive_connections=self.settings.concurrency
        )
        # The transport is driven directly: auth, redirects and retries are this class's job, and
        # httpx's client layer (cookies, URL merging, hooks) was half the client CPU per check.
        self._transport = make_transport(self.settings.transport, _ssl_context(hop), limits)
        self._timeouts = dict.fromkeys(("connect", "read", "write", "pool"), self.settings.timeout)
        self._limit = asyncio.Semaphore(self.settings.concurrency)
        self._tokens = auth.TokenCache()
        self._challenge: auth.Challenge | None = None
        self._token_locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    # -- what a check asks ---------------------------------------------------------------------

    async def ping(self) -> bool:
        """True when ``/v2/`` answers like a registry (200, or 401 with a challenge)."""
        try:
            async with self._limit:
                response = await self._exchange(
                    "GET", f"{self.hop.base_url}/v2/", repository=None, answer_challenge=False
                )
                await response.aclose()
        except RegistryError:
            return False
        return response.status_code == 200 or (
            response.status_code == 401 and "www-authenticate" in response.headers
        )

    async def resolve(self, repository: str, tag: str) -> str | None:
        """Digest a tag points at, by HEAD; None when the hop answers without a digest header."""
        url = self._url(repository, "manifests", tag)
        async with self._limit:
            response = await self._request("HEAD", url, repository=repository)
            await response.aclose()
        return response.headers.get("docker-content-digest") or None

    async def fetch_manifest(self, repository: str, ref: str) -> FetchedManifest:
        """GET a manifest, refusing bodies over the 4 MiB cap without reading further."""
        async with self._limit:
            return await self._fetch_manifest(repository, ref)

    async def _fetch_manifest(self, repository: str, ref: str) -> FetchedManifest:
        response = await self._request("GET", self._url(repository, "manifests", ref), repository=repository)
        try:
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > MAX_MANIFEST_BYTES:
                return FetchedManifest(b"\0" * (MAX_MANIFEST_BYTES + 1), "", None)
            body = bytearray()
            async with asyncio.timeout(self.settings.timeout * 2):
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_MANIFEST_BYTES:
                        break
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise RegistryUnavailable(f"manifest download timed out ({_describe(exc)})") from None
        except httpx.TransportError as exc:
            raise RegistryUnavailable(f"manifest download failed ({_describe(exc)})") from None
        finally:
            await response.aclose()
        return FetchedManifest(
            bytes(body),
            response.headers.get("content-type", ""),
            response.headers.get("docker-content-digest"),
        )

    async def verify_blob(self, repository: str, descriptor: Descriptor, *, download: bool) -> BlobResult:
        """Check one blob. ``download`` streams and hashes it; otherwise HEAD (GET if HEAD says 404).

        The per-hop limit covers the whole blob, body included, not just the wait for headers.
        """
        async with self._limit:
            return await self._verify_blob(repository, descriptor, download=download)

    async def _verify_blob(self, repository: str, descriptor: Descriptor, *, download: bool) -> BlobResult:
        url = self._url(repository, "blobs", descriptor.digest)
        if not download:
            try:
                response = await self._request("HEAD", url, repository=repository)
            except RegistryNotFound:
                pass  # Harbor answers 404 to HEAD for blobs it has not cached yet: ask for real.
            else:
                await response.aclose()
                length = response.headers.get("content-length")
                if length and length.isdigit() and int(length) != descriptor.size:
                    return BlobResult("corrupt", f"size {length}, expected {descriptor.size}")
                return BlobResult("ok", "present (HEAD)")
        try:
            return await self._download(url, repository, descriptor)
        except RegistryNotFound as exc:
            return BlobResult("missing", str(exc.status))

    # -- plumbing --------------------------------------------------------------------------------

    def _url(self, repository: str, kind: str, ref: str) -> str:
        return f"{self.hop.base_url}/v2/{repository}/{kind}/{ref}"

    async def _download(self, url: str, repository: str, descriptor: Descriptor) -> BlobResult:
        """Stream a blob through its hash; memory stays at one chunk whatever the blob's size."""
        algorithm, _, expected = descriptor.digest.partition(":")
        deadline = self.settings.timeout + descriptor.size / _MIN_BLOB_RATE
        for attempt in range(2):
            response = await self._request("GET", url, repository=repository)
            hasher = hashlib.new(algorithm)
            received = 0
            try:
                async with asyncio.timeout(deadline):
                    async for chunk in response.aiter_bytes(_CHUNK):
                        received += len(chunk)
                        if received > descriptor.size:
                            return BlobResult(
                                "corrupt", f"more than {descriptor.size} bytes served", received
                            )
                        hasher.update(chunk)
            except TimeoutError:
                return BlobResult(
                    "corrupt", f"body stalled after {received} of {descriptor.size} bytes", received
                )
            except httpx.TransportError as exc:
                if attempt == 0:
                    continue  # one retry: a cut can be the network; twice is the hop.
                return BlobResult(
                    "corrupt",
                    f"body ended after {received} of {descriptor.size} bytes ({_describe(exc)})",
                    received,
                )
            finally:
                await response.aclose()
            if received < descriptor.size:
                return BlobResult("corrupt", f"truncated: {received} of {descriptor.size} bytes", received)
            actual = hasher.hexdigest()
            if actual != expected:
                return BlobResult("corrupt", f"content hashes to {algorithm}:{actual[:12]}", received)
            return BlobResult("ok", "verified", received)
        raise AssertionError("unreachable: the loop returns")  # pragma: no cover

    async def _request(self, method: str, url: str, *, repository: str) -> httpx.Response:
        """One logical request with retries for transient failures and 429; errors mapped.

        Returns a response with an unread body (2xx only); the caller closes it.
        """
        waited = 0.0
        attempt = 0
        while True:
            try:
                response = await self._exchange(method, url, repository=repository)
            except RegistryUnavailable:
                if attempt < self.settings.retries:
                    attempt += 1
                    await self._backoff(attempt)
                    continue
                raise
            status = response.status_code
            if 200 <= status < 300:
                return response
            await response.aclose()
            if status in _RETRY_STATUSES:
                if attempt < self.settings.retries:
                    attempt += 1
                    await self._backoff(attempt)
                    continue
                raise RegistryUnavailable(f"HTTP {status} after {attempt + 1} attempts", status=status)
            if status == 429:
                delay = _retry_after(response.headers.get("retry-after"))
                if waited + delay <= self.settings.rate_limit_budget:
                    waited += delay
                    await asyncio.sleep(delay)
                    continue
                raise RegistryRateLimited(
                    f"HTTP 429 (Retry-After {delay:.0f}s, waited {waited:.0f}s already)", status=429
                )
            if status in (401, 403):
                raise RegistryAuthFailed(f"HTTP {status} with the configured credentials", status=status)
            if status == 404:
                raise RegistryNotFound(f"{status}", status=status)
            raise RegistryUnavailable(f"unexpected HTTP {status}", status=status)

    async def _backoff(self, attempt: int) -> None:
        await asyncio.sleep(random.uniform(0, self.settings.backoff * 2 ** (attempt - 1)))

    async def _exchange(
        self, method: str, url: str, *, repository: str | None, answer_challenge: bool = True
    ) -> httpx.Response:
        """Send, answering one auth challenge and following redirects (Authorization stays home)."""
        headers = {"Accept": ACCEPT, "User-Agent": "layerwatch"}
        authorization = await self._authorization(repository) if repository else None
        if authorization:
            headers["Authorization"] = authorization
        challenged = not answer_challenge  # a ping only asks whether the registry answers
        for _ in range(_MAX_REDIRECTS + 1):
            response = await self._send(method, url, headers)
            if response.status_code in _REDIRECTS and "location" in response.headers:
                await response.aclose()
                target = urljoin(url, response.headers["location"])
                if not _same_origin(target, self.hop.base_url):
                    headers.pop("Authorization", None)
                url = target
                continue
            if (
                response.status_code == 401
                and not challenged
                and _same_origin(url, self.hop.base_url)
                and "www-authenticate" in response.headers
            ):
                challenged = True
                await response.aclose()
                self._learn(response.headers["www-authenticate"])
                authorization = await self._authorization(repository, fresh=True)
                if authorization:
                    headers["Authorization"] = authorization
                    continue
                raise RegistryAuthFailed("registry asked for credentials and none are configured", status=401)
            return response
        raise RegistryUnavailable(f"more than {_MAX_REDIRECTS} redirects")

    async def _send(
        self, method: str, url: str, headers: dict[str, str], params: dict[str, str] | None = None
    ) -> httpx.Response:
        """One HTTP exchange through the transport; the body stays unread. Counted for metrics."""
        try:
            request = httpx.Request(
                method, url, params=params, headers=headers, extensions={"timeout": self._timeouts}
            )
            response = await self._transport.handle_async_request(request)
        except httpx.TransportError as exc:
            self._count(method, "error")
            raise RegistryUnavailable(_describe(exc)) from None
        except (ValueError, aiohttp.ClientError) as exc:
            # Hostile Location headers httpx refuses to parse; responses aiohttp refuses to parse
            # (e.g. a header line over its limit), which httpx-aiohttp passes on unmapped.
            self._count(method, "error")
            raise RegistryUnavailable(f"invalid response: {str(exc)[:120]}") from None
        self._count(method, str(response.status_code))
        return response

    def _count(self, method: str, code: str) -> None:
        if self._on_request is not None:
            self._on_request(method, code)

    def _learn(self, header: str) -> None:
        try:
            self._challenge = auth.parse_challenge(header)
        except auth.ChallengeError as exc:
            raise RegistryAuthFailed(f"cannot answer the registry's challenge: {exc}", status=401) from None

    async def _authorization(self, repository: str | None, *, fresh: bool = False) -> str | None:
        """The Authorization header for a repository, from what the hop's last challenge asked."""
        challenge = self._challenge
        if challenge is None:
            return None
        credentials = self.hop.credentials
        if challenge.scheme == "basic":
            return auth.basic_header(credentials) if credentials else None
        scope = f"repository:{repository}:pull" if repository else challenge.scope
        key = (challenge.realm, challenge.service, scope)
        if fresh:
            self._tokens.forget(key)
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        async with lock:
            token = self._tokens.get(key)
            if token is None:
                token, lifetime = await self._fetch_token(challenge, scope)
                self._tokens.put(key, token, lifetime)
        return f"Bearer {token}"

    async def _fetch_token(self, challenge: auth.Challenge, scope: str) -> tuple[str, float]:
        params = {key: value for key, value in (("service", challenge.service), ("scope", scope)) if value}
        headers = {"User-Agent": "layerwatch"}
        if self.hop.credentials:
            headers["Authorization"] = auth.basic_header(self.hop.credentials)
        try:
            response = await self._send("GET", challenge.realm, headers, params)
        except RegistryUnavailable as exc:
            raise RegistryUnavailable(f"token endpoint: {exc}") from None
        try:
            if response.status_code != 200:
                error = RegistryAuthFailed if response.status_code in (401, 403) else RegistryUnavailable
                raise error(
                    f"token endpoint answered HTTP {response.status_code}", status=response.status_code
                )
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > _MAX_TOKEN_BYTES:
                    raise RegistryAuthFailed("token endpoint answered more than 64 KiB", status=200)
        except httpx.TransportError as exc:
            raise RegistryUnavailable(f"token endpoint: {_describe(exc)}") from None
        finally:
            await response.aclose()
        try:
            return auth.token_from_response(bytes(body))
        except auth.ChallengeError as exc:
            raise RegistryAuthFailed(str(exc), status=200) from None
