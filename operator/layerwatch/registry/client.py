"""The async registry client: auth, retries, redirects and streaming, reporting facts.

Everything that touches the network for a hop goes through ``RegistryClient``. It exposes what a
check needs (resolve a tag, fetch a manifest, fetch a blob, ping ``/v2/``). It never words a
verdict: a blob comes back as ``BlobFacts`` (status, bytes received, their digest, encoding), and
anything that stopped an exchange is a ``RegistryError`` carrying a typed ``Fault``.

Every value a registry supplies is checked before use: digest headers must be digests, lengths
must be plain integers, redirect targets must be http(s) URLs, ``Retry-After`` is floored at one
second and capped by the retry budget, and no body is ever decompressed (``Accept-Encoding:
identity``; a ``Content-Encoding`` on a manifest or blob is reported as such). Every wait is
bounded: the request deadline covers send to last header, body deadlines follow the size at the
minimum rate, and retries draw on the hop check's ``RetryBudget``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import hashlib
import random
import re
import time
from collections.abc import Callable
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from layerwatch.chain import Credentials, Hop
from layerwatch.documents import json_object
from layerwatch.manifest import ACCEPT, MAX_MANIFEST_BYTES, Descriptor
from layerwatch.observation import Answer, BlobFacts, Fault, FaultKind
from layerwatch.reference import is_digest
from layerwatch.registry import auth, credhelpers, providers, proxies
from layerwatch.registry.errors import RegistryError, RegistryNotFound
from layerwatch.registry.network import (
    Endpoint,
    EndpointState,
    RetryBudget,
    clean_text,
    fault_from_exception,
)
from layerwatch.settings import EngineSettings

__all__ = [
    "MAX_RETRY_AFTER",
    "ExchangeHook",
    "FetchedManifest",
    "RegistryClient",
    "RequestHook",
    "Upload",
    "endpoint_of",
    "retry_after",
]

RequestHook = Callable[[str, str], None]
"""Called as ``hook(method, code)`` for every HTTP exchange; ``code`` is the status or ``error``."""
ExchangeHook = Callable[[str, str, str], None]
"""Called as ``hook(method, url, code)`` for every HTTP exchange (``layerwatch check --verbose``);
``url`` carries no query and no userinfo."""

_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_RETRY_FAULTS = frozenset(
    {
        FaultKind.REFUSED,
        FaultKind.CONNECT_TIMEOUT,
        FaultKind.HEADER_TIMEOUT,
        FaultKind.RESET,
        FaultKind.PROTOCOL,
    }
)
_NO_HEAD = frozenset({400, 405, 501})
"""HEAD answers that mean "ask with GET instead"."""
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_MAX_TOKEN_BYTES = 64 * 1024
_MAX_ERROR_BYTES = 16 * 1024
_LENGTH = re.compile(r"[0-9]{1,19}")
_DELTA_SECONDS = re.compile(r"[0-9]{1,9}")
_ERROR_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,39}")
_HEADERS = {"Accept": ACCEPT, "User-Agent": "layerwatch", "Accept-Encoding": "identity"}


@dataclasses.dataclass(frozen=True)
class Upload:
    """A body a request sends (a blob or a manifest pushed), with its media type."""

    body: bytes = dataclasses.field(repr=False)
    media_type: str = "application/octet-stream"


@dataclasses.dataclass(frozen=True)
class FetchedManifest:
    """Manifest bytes as served, with the headers that matter (already validated)."""

    body: bytes
    media_type: str
    digest_header: str | None
    """``Docker-Content-Digest`` when it is a well-formed digest; None otherwise."""
    encoding: str | None = None
    """A Content-Encoding the hop put on the bytes (then ``body`` is empty: never decoded)."""
    oversize: bool = False
    cut: bool = False
    """The connection closed before the body ended (twice): ``body`` is what arrived."""
    declared: int | None = None
    """The Content-Length the hop announced, when it did."""
    answer: Answer | None = None
    """The headers that say how the hop came by the bytes (a 2xx answer's)."""

    def digest(self, algorithm: str = "sha256") -> str:
        return f"{algorithm}:{hashlib.new(algorithm, self.body).hexdigest()}"


def endpoint_of(hop: Hop) -> Endpoint:
    return Endpoint(
        hop.base_url,
        hop.ca_pem,
        hop.insecure,
        proxy=proxies.hop_proxy(hop),
        client_cert_pem=hop.client_cert_pem,
        client_key_pem=hop.client_key_pem,
    )


def _length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "").strip()
    return int(value) if _LENGTH.fullmatch(value) else None


def _encoding(response: httpx.Response) -> str | None:
    value = clean_text(response.headers.get("content-encoding", ""), 40)
    return value if value and value.lower() != "identity" else None


def _digest_header(response: httpx.Response) -> str | None:
    value = response.headers.get("docker-content-digest", "").strip()
    return value if is_digest(value) else None


def _sent(response: httpx.Response, name: str) -> str | None:
    """A header as sent, made safe to keep ("" when sent empty), or None when not sent."""
    value = response.headers.get(name)
    return None if value is None else clean_text(value.strip(), 100)


def _answer(response: httpx.Response) -> Answer:
    return Answer(_length(response), _sent(response, "etag"), _sent(response, "docker-content-digest"))


MAX_RETRY_AFTER = 900.0
"""A registry may ask for at most this much quiet; longer asks are read as this (a typo or a
hostile header must not silence the monitor for a year)."""


def retry_after(value: str | None, now: float | None = None) -> float:
    """Seconds from ``Retry-After`` (delta seconds or an HTTP date), within [1, 900]; 1 when odd."""
    value = (value or "").strip()
    seconds = 1.0
    if _DELTA_SECONDS.fullmatch(value):
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, OverflowError, IndexError):
            seconds = 1.0
    return min(MAX_RETRY_AFTER, max(1.0, seconds))


def _redirect_target(current: str, location: str) -> str:
    """An absolute http(s) URL for a redirect, or a ``BAD_REDIRECT`` fault."""
    try:
        target = urljoin(current, location.strip())
        parts = urlsplit(target)
        _ = parts.port  # raises for ports out of range
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL")
        httpx.URL(target)
    except (ValueError, httpx.InvalidURL):
        raise RegistryError(Fault(FaultKind.BAD_REDIRECT, "redirect to an unusable location")) from None
    return target


def _refused(response: httpx.Response) -> bool:
    """401, or 403 as ECR answers an expired login: credentials a source may have renewed since."""
    return response.status_code in (401, 403)


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


def _printable_url(url: str) -> str:
    """``scheme://host[:port]/path``: no userinfo, no query, one safe line."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return clean_text(f"{parts.scheme}://{host}{parts.path}", 200)


def _in_clear(origin: str, target: str) -> bool:
    """True when sending to ``target`` what was meant for the HTTPS ``origin`` would send it in clear."""
    return origin.startswith("https://") and not target.startswith("https://")


def _oci_error(body: bytes) -> tuple[str | None, str | None]:
    """The first ``errors[].code`` and ``message`` of an OCI error body, made safe to print."""
    try:
        errors = json_object(body).get("errors")
    except ValueError:
        return None, None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None, None
    code, message = errors[0].get("code"), errors[0].get("message")
    code = code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None
    message = clean_text(message, 120) if isinstance(message, str) else None
    return code, message or None


class RegistryClient:
    """Auth state for one (endpoint, credentials); connections, limits and health are the endpoint's."""

    def __init__(
        self,
        state: EndpointState,
        credentials: Credentials | None = None,
        *,
        provider: str | None = None,
        on_request: RequestHook | None = None,
        on_exchange: ExchangeHook | None = None,
        owns_state: bool = False,
    ) -> None:
        self.state = state
        self.settings = state.settings
        self.credentials = credentials
        self.provider = provider
        """``aws``/``azure``/``gcp``: the credentials come from the cloud (`providers`)."""
        self._source = providers.credential_source(
            provider, state.endpoint.base_url, credentials, state.transport
        )
        self._on_request = on_request
        self._on_exchange = on_exchange
        self._owns_state = owns_state
        self._tokens = auth.TokenCache()
        self._challenge: auth.Challenge | None = None
        self._token_locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    @classmethod
    def for_hop(
        cls,
        hop: Hop,
        settings: EngineSettings | None = None,
        *,
        on_request: RequestHook | None = None,
        on_exchange: ExchangeHook | None = None,
    ) -> RegistryClient:
        """A client with an endpoint state of its own (the CLI and tests; the scheduler shares states)."""
        state = EndpointState(endpoint_of(hop), settings or EngineSettings())
        return cls(
            state,
            hop.credentials,
            provider=hop.provider,
            on_request=on_request,
            on_exchange=on_exchange,
            owns_state=True,
        )

    @property
    def base_url(self) -> str:
        return self.state.endpoint.base_url

    def budget(self) -> RetryBudget:
        return RetryBudget(self.settings.retry_budget)

    async def aclose(self) -> None:
        if self._owns_state:
            await self.state.aclose()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    # -- what a check asks ---------------------------------------------------------------------

    async def ping(self) -> Fault | None:
        """None when ``/v2/`` answers like a registry (200, or 401 with a challenge); else why not."""
        try:
            async with self.state.limit:
                response = await self._exchange("GET", f"{self.base_url}/v2/", None, answer_challenge=False)
                await response.aclose()
        except RegistryError as exc:
            return exc.fault  # counted by ``_send`` like any failure toward "known down"
        if response.status_code == 200 or (
            response.status_code == 401 and "www-authenticate" in response.headers
        ):
            return None
        return Fault(
            FaultKind.HTTP_STATUS, f"/v2/ answered HTTP {response.status_code}", response.status_code
        )

    async def resolve(self, repository: str, tag: str, budget: RetryBudget) -> str | None:
        """Digest a tag points at, by HEAD; None when HEAD gives no usable digest or is not supported."""
        try:
            async with self.state.limit:
                response = await self._request(
                    "HEAD", self._url(repository, "manifests", tag), repository, budget
                )
                await response.aclose()
        except RegistryNotFound:
            return None  # some proxies only answer GET: the caller asks once more the full way
        except RegistryError as exc:
            if exc.status in _NO_HEAD:
                return None
            raise
        return _digest_header(response)

    async def fetch_referrers(
        self, repository: str, digest: str, budget: RetryBudget, artifact_type: str | None = None
    ) -> FetchedManifest:
        """GET the OCI 1.1 referrers index of ``digest``; ``RegistryNotFound`` means no referrers API."""
        query = "?" + urlencode({"artifactType": artifact_type}) if artifact_type else ""
        return await self.fetch_manifest(repository, digest, budget, endpoint="referrers", query=query)

    async def fetch_manifest(
        self, repository: str, ref: str, budget: RetryBudget, *, endpoint: str = "manifests", query: str = ""
    ) -> FetchedManifest:
        """GET a manifest, refusing bodies over the 4 MiB cap and never decoding an encoded one.

        A body cut short is asked for once more (a cut can be the network; twice is the hop) and
        then returned as ``cut``; a stalled one raises (slow is not corrupt).
        """
        url = self._url(repository, endpoint, ref) + query
        async with self.state.limit:
            fetched = await self._fetch_manifest_once(url, repository, budget)
            if fetched.cut:
                fetched = await self._fetch_manifest_once(url, repository, budget)
        return fetched

    async def _fetch_manifest_once(self, url: str, repository: str, budget: RetryBudget) -> FetchedManifest:
        response = await self._request("GET", url, repository, budget)
        try:
            media_type = clean_text(response.headers.get("content-type", ""), 200)
            digest_header = _digest_header(response)
            encoding = _encoding(response)
            answer = _answer(response)
            declared = answer.declared
            if encoding is not None:
                return FetchedManifest(b"", media_type, digest_header, encoding=encoding)
            if declared is not None and declared > MAX_MANIFEST_BYTES:
                return FetchedManifest(b"", media_type, digest_header, oversize=True)
            body = bytearray()
            received, fault = await self._body(response, MAX_MANIFEST_BYTES, body.extend, declared)
        finally:
            await response.aclose()
        if received > MAX_MANIFEST_BYTES:
            return FetchedManifest(b"", media_type, digest_header, oversize=True)
        if fault is not None and fault.kind is not FaultKind.BODY_CUT:
            raise RegistryError(fault)
        cut = fault is not None
        return FetchedManifest(
            bytes(body), media_type, digest_header, cut=cut, declared=declared, answer=answer
        )

    async def fetch_blob(
        self, repository: str, descriptor: Descriptor, *, download: bool, budget: RetryBudget
    ) -> BlobFacts:
        """Ask for one blob: stream it through its digest (``download``), or HEAD it (GET if HEAD
        says 404 or is not supported, because Harbor answers 404 for blobs it has not cached yet).

        The endpoint's limit covers the whole blob, body included. Never raises for registry
        trouble: a fault ends up in the facts.
        """
        url = self._url(repository, "blobs", descriptor.digest)
        try:
            async with self.state.limit:
                if not download:
                    headed = await self._head_blob(url, repository, budget)
                    if headed is not None:
                        return headed
                return await self._download(url, repository, descriptor, budget)
        except RegistryError as exc:
            return BlobFacts(status=exc.status, fault=exc.fault)

    # -- what a push asks (``registry.push``) ---------------------------------------------------

    async def send(
        self,
        method: str,
        url: str,
        repository: str,
        budget: RetryBudget,
        *,
        upload: Upload | None = None,
        actions: str,
        cap: int = _MAX_ERROR_BYTES,
    ) -> bytes:
        """One request within the endpoint's limit, retried like any other; the 2xx answer's small body.

        For ``registry.push``: the token asked for has ``actions`` scope (``pull,push``, ``delete``).
        """
        async with self.state.limit:
            response = await self._request(method, url, repository, budget, upload=upload, actions=actions)
            try:
                return await self._read(response, cap)
            finally:
                await response.aclose()

    async def send_for_location(
        self, method: str, url: str, repository: str, budget: RetryBudget, *, actions: str
    ) -> str:
        """A request whose 2xx answer names where to go next (a blob upload session): that URL,
        refused unless it is on this registry (the credentials must not follow it elsewhere)."""
        async with self.state.limit:
            response = await self._request(method, url, repository, budget, actions=actions)
            await response.aclose()
        location = response.headers.get("location", "")
        target = _redirect_target(url, location) if location else ""
        if not target or not _same_origin(target, self.base_url):
            raise RegistryError(
                Fault(FaultKind.BAD_REDIRECT, "upload location missing or elsewhere", response.status_code)
            )
        return target

    def url(self, repository: str, kind: str, ref: str) -> str:
        return self._url(repository, kind, ref)

    # -- plumbing --------------------------------------------------------------------------------

    def _url(self, repository: str, kind: str, ref: str) -> str:
        return f"{self.base_url}/v2/{repository}/{kind}/{ref}"

    async def _head_blob(self, url: str, repository: str, budget: RetryBudget) -> BlobFacts | None:
        try:
            response = await self._request("HEAD", url, repository, budget)
        except RegistryNotFound:
            return None
        except RegistryError as exc:
            if exc.status in _NO_HEAD:
                return None
            raise
        await response.aclose()
        return BlobFacts(status=response.status_code, header_size=_length(response), headed=True)

    async def _body(
        self, response: httpx.Response, size: int, consume: Callable[[bytes], object], declared: int | None
    ) -> tuple[int, Fault | None]:
        """Feed a body of ``size`` bytes (a chunk more tells "over") to ``consume`` within its deadline.

        Returns the bytes received and, when the body did not end, why: ``STALLED`` when its
        deadline (``timeout + size / min_blob_rate``) passed, whatever pauses it had before that
        (slow is not corrupt); ``BODY_CUT`` when the connection closed first, a body shorter than
        its Content-Length included. ``declared`` is the length the hop announced, for the message.
        """
        deadline = self.settings.timeout + size / self.settings.min_blob_rate
        received = 0
        try:
            async with asyncio.timeout(deadline):
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    consume(chunk)
                    if received > size:
                        break
        except (TimeoutError, httpx.TimeoutException):
            rate = f"below {self.settings.min_blob_rate / 1024:.0f} KiB/s"
            so_far = f"{received} of {declared} bytes" if declared is not None else f"{received} bytes"
            return received, Fault(FaultKind.STALLED, f"stalled: {so_far} in {deadline:.0f}s ({rate})")
        except (httpx.TransportError, OSError) as exc:
            return received, dataclasses.replace(fault_from_exception(exc), kind=FaultKind.BODY_CUT)
        return received, None

    async def _read(self, response: httpx.Response, cap: int) -> bytes:
        """A small body (an error, a token) of at most ``cap`` (+1) bytes; raises when it did not end."""
        body = bytearray()
        _, fault = await self._body(response, cap, body.extend, _length(response))
        if fault is not None:
            raise RegistryError(fault)
        return bytes(body)

    async def _download(
        self, url: str, repository: str, descriptor: Descriptor, budget: RetryBudget
    ) -> BlobFacts:
        """Stream a blob through its hash; memory stays at one chunk whatever the blob's size."""
        algorithm = descriptor.digest.partition(":")[0]
        facts = BlobFacts()
        for attempt in range(2):
            response = await self._request("GET", url, repository, budget)
            status, answer = response.status_code, _answer(response)
            encoding = _encoding(response)
            if encoding is not None:
                await response.aclose()
                return BlobFacts(status=status, encoding=encoding, answer=answer)
            hasher = hashlib.new(algorithm)
            try:
                received, fault = await self._body(response, descriptor.size, hasher.update, descriptor.size)
            finally:
                await response.aclose()
            if received > descriptor.size:
                return BlobFacts(status=status, received=received, overflow=True, answer=answer)
            facts = BlobFacts(status=status, received=received, fault=fault, answer=answer)
            if fault is None:
                return dataclasses.replace(facts, actual=f"{algorithm}:{hasher.hexdigest()}")
            if fault.kind is not FaultKind.BODY_CUT or attempt:
                return facts
            # one retry: a cut can be the network; twice is the hop
        return facts

    async def _request(
        self,
        method: str,
        url: str,
        repository: str,
        budget: RetryBudget,
        *,
        upload: Upload | None = None,
        actions: str = "pull",
    ) -> httpx.Response:
        """One logical request: retries for network errors, 5xx and 429 within the budget.

        ``upload`` is a body to send (``registry.push``); ``actions`` the token scope asked for.
        Returns a 2xx response with an unread body (the caller closes it); raises otherwise.
        """
        attempt = 0
        while True:
            held = self.state.held_for()
            if held > 0:
                if not budget.take(held):
                    raise RegistryError(
                        Fault(
                            FaultKind.RATE_LIMITED,
                            f"registry asked for {held:.0f}s of quiet",
                            429,
                            attempts=attempt + 1,
                        )
                    )
                await asyncio.sleep(held)
            try:
                response = await self._exchange(method, url, repository, upload=upload, actions=actions)
            except RegistryError as exc:
                delay = self._backoff(budget, attempt) if exc.fault.kind in _RETRY_FAULTS else None
                if delay is not None:
                    attempt += 1
                    await asyncio.sleep(delay)
                    continue
                raise RegistryError(dataclasses.replace(exc.fault, attempts=attempt + 1)) from None
            status = response.status_code
            if 200 <= status < 300:
                return response
            code, message = await self._error_body(response, method)
            if status == 429:
                delay = retry_after(response.headers.get("retry-after"))
                self.state.hold(delay)
                if attempt < self.settings.retries and delay <= budget.left:
                    attempt += 1
                    continue  # the hold at the top of the loop does the waiting
                raise RegistryError(
                    Fault(
                        FaultKind.RATE_LIMITED, f"Retry-After {delay:.0f}s", 429, code, message, attempt + 1
                    )
                )
            delay = self._backoff(budget, attempt) if status in _RETRY_STATUSES else None
            if delay is not None:
                attempt += 1
                await asyncio.sleep(delay)
                continue
            if status == 404:
                raise RegistryNotFound(404, code, message)
            kind = FaultKind.AUTH_REJECTED if status in (401, 403) else FaultKind.HTTP_STATUS
            raise RegistryError(
                Fault(kind, "", status, code, message, attempt + 1, anonymous=self._anonymous)
            )

    @property
    def _anonymous(self) -> bool:
        """No credentials of any kind are configured for this hop."""
        return self.credentials is None and self.provider is None

    def _backoff(self, budget: RetryBudget, attempt: int) -> float | None:
        """A jittered delay for the next attempt, paid from the budget; None when no retry is left."""
        if attempt >= self.settings.retries:
            return None
        delay = random.uniform(0, self.settings.backoff * 2**attempt)
        return delay if budget.take(delay) else None

    async def _error_body(self, response: httpx.Response, method: str) -> tuple[str | None, str | None]:
        """The OCI error code and message of a non-2xx answer (bounded read); closes the response."""
        try:
            if method == "HEAD":
                return None, None
            try:
                body = await self._read(response, _MAX_ERROR_BYTES)
            except RegistryError:
                return None, None
            return _oci_error(body[:_MAX_ERROR_BYTES])
        finally:
            await response.aclose()

    async def _exchange(
        self,
        method: str,
        url: str,
        repository: str | None,
        *,
        answer_challenge: bool = True,
        upload: Upload | None = None,
        actions: str = "pull",
    ) -> httpx.Response:
        """Send, answering one auth challenge and following redirects (Authorization stays home)."""
        headers = dict(_HEADERS)
        content = None
        if upload is not None:
            content = upload.body
            headers["Content-Type"] = upload.media_type
        seen = self._source.generation
        authorization = await self._authorization(repository, actions=actions) if repository else None
        if authorization:
            headers["Authorization"] = authorization
        challenged = not answer_challenge  # a ping only asks whether the registry answers
        renewed = False
        for _ in range(_MAX_REDIRECTS + 1):
            response = await self._send(method, url, headers, content=content)
            if response.status_code in _REDIRECTS and "location" in response.headers:
                await response.aclose()
                target = _redirect_target(url, response.headers["location"])
                if not _same_origin(target, self.base_url):  # HTTPS to HTTP is another origin too
                    headers.pop("Authorization", None)
                url = target
                continue
            if (
                response.status_code == 401
                and not challenged
                and _same_origin(url, self.base_url)
                and "www-authenticate" in response.headers
            ):
                challenged = True
                await response.aclose()
                self._learn(response.headers["www-authenticate"])
                authorization = await self._authorization(repository, fresh=True, actions=actions)
                if authorization:
                    headers["Authorization"] = authorization
                    continue
                raise RegistryError(
                    Fault(
                        FaultKind.AUTH_UNANSWERABLE,
                        "registry asked for credentials and none are configured",
                        401,
                    )
                )
            if _refused(response) and "Authorization" in headers and not renewed:
                renewed = True  # once: expired helper or cloud credentials are asked for anew
                if await self._renewed(response, seen):
                    authorization = await self._authorization(repository, fresh=True, actions=actions)
                    headers["Authorization"] = authorization or headers["Authorization"]
                    continue
            return response
        raise RegistryError(Fault(FaultKind.BAD_REDIRECT, f"more than {_MAX_REDIRECTS} redirects"))

    async def _renewed(self, response: httpx.Response, seen: int) -> bool:
        """Whether the source now has other credentials than the refused ones (then, or when asking
        fails, ``response`` is closed; otherwise it stands as the answer)."""
        try:
            renewed = await self._source.renew(seen)
        except BaseException:
            await response.aclose()
            raise
        if renewed:
            await response.aclose()
        return renewed

    async def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        params: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """One HTTP exchange, bounded from send to its last header; the body stays unread."""
        if self.state.down is not None:
            down = self.state.admit()
            if down is not None:
                raise RegistryError(Fault(FaultKind.HOP_DOWN, down.detail or down.kind.value))
        transport = await self.state.transport()
        try:
            request = httpx.Request(
                method,
                url,
                params=params,
                headers=headers,
                content=content,
                extensions={"timeout": self._timeouts()},
            )
            async with asyncio.timeout(self.settings.timeout + 1):
                response = await transport.handle_async_request(request)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            self._count(method, url, "error")
            raise RegistryError(
                Fault(FaultKind.BAD_REDIRECT, f"unusable URL: {clean_text(str(exc), 80)}")
            ) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every transport, parser or OS error becomes a fault
            fault = fault_from_exception(exc)
            self._count(method, url, "error")
            self.state.failed(fault)
            raise RegistryError(fault) from None
        self.state.answered()
        self._count(method, url, str(response.status_code))
        return response

    def _timeouts(self) -> dict[str, float | None]:
        """No per-read timeout: headers are bounded in ``_send`` and bodies by their own deadline
        (``_body``), so a pause inside a large body is judged against that body's size."""
        return {**dict.fromkeys(("connect", "write", "pool"), self.settings.timeout), "read": None}

    def _count(self, method: str, url: str, code: str) -> None:
        if self._on_request is not None:
            self._on_request(method, code)
        if self._on_exchange is not None:
            self._on_exchange(method, _printable_url(url), code)

    def _learn(self, header: str) -> None:
        try:
            self._challenge = auth.parse_challenge(header)
        except auth.ChallengeError as exc:
            raise RegistryError(
                Fault(FaultKind.AUTH_UNANSWERABLE, f"cannot answer the registry's challenge: {exc}", 401)
            ) from None

    async def _authorization(
        self, repository: str | None, *, fresh: bool = False, actions: str = "pull"
    ) -> str | None:
        """The Authorization header for a repository, from what the hop's last challenge asked."""
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            credentials = await self._source.get()
            return auth.basic_header(credentials) if credentials else None
        scope = f"repository:{repository}:{actions}" if repository else challenge.scope
        key = (challenge.realm, challenge.service, scope)
        if fresh:
            self._tokens.forget(key)
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        async with lock:
            token = self._tokens.get(key)
            if token is None:
                seen = self._source.generation
                try:
                    token, lifetime = await self._fetch_token(challenge, scope)
                except RegistryError as exc:  # once more when the source renewed what was refused
                    if exc.fault.status not in (401, 403) or not await self._source.renew(seen):
                        raise
                    token, lifetime = await self._fetch_token(challenge, scope)
                self._tokens.put(key, token, lifetime)
        return f"Bearer {token}"

    async def _fetch_token(self, challenge: auth.Challenge, scope: str) -> tuple[str, float]:
        """A token from the challenge's realm; credentials of an HTTPS registry never go to an
        ``http://`` realm (nobody on the path may read them): that ends as an auth failure."""
        if _in_clear(self.base_url, challenge.realm) and (self.credentials is not None or self.provider):
            raise RegistryError(
                Fault(
                    FaultKind.AUTH_UNANSWERABLE,
                    f"token realm {_printable_url(challenge.realm)} is plain HTTP: "
                    "credentials for an HTTPS registry are not sent in clear",
                )
            )
        params = {key: value for key, value in (("service", challenge.service), ("scope", scope)) if value}
        headers = {"User-Agent": "layerwatch", "Accept-Encoding": "identity"}
        credentials = await self._source.get()
        form = None
        if credentials and credentials.identity_token:  # docker identity token: OAuth2 refresh grant
            form = credhelpers.refresh_token_form(challenge, scope, credentials)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif credentials:
            headers["Authorization"] = auth.basic_header(credentials)
        try:
            if form is not None:
                response = await self._send("POST", challenge.realm, headers, content=form)
            else:
                response = await self._send("GET", challenge.realm, headers, params)
        except RegistryError as exc:
            raise RegistryError(dataclasses.replace(exc.fault, subject="token endpoint")) from None
        try:
            if response.status_code != 200:
                kind = (
                    FaultKind.AUTH_REJECTED if response.status_code in (401, 403) else FaultKind.HTTP_STATUS
                )
                raise RegistryError(
                    Fault(kind, "", response.status_code, subject="token endpoint", anonymous=self._anonymous)
                )
            if _encoding(response) is not None:
                raise RegistryError(
                    Fault(
                        FaultKind.AUTH_UNANSWERABLE, "token answer is encoded", 200, subject="token endpoint"
                    )
                )
            body = await self._read(response, _MAX_TOKEN_BYTES)
        except RegistryError as exc:
            raise RegistryError(dataclasses.replace(exc.fault, subject="token endpoint")) from None
        finally:
            await response.aclose()
        if len(body) > _MAX_TOKEN_BYTES:
            raise RegistryError(
                Fault(FaultKind.AUTH_UNANSWERABLE, "answered more than 64 KiB", 200, subject="token endpoint")
            )
        try:
            return auth.token_from_response(body)
        except auth.ChallengeError as exc:
            raise RegistryError(
                Fault(FaultKind.AUTH_UNANSWERABLE, str(exc), 200, subject="token endpoint")
            ) from None
