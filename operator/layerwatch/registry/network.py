"""Registry endpoints and what every client of one shares: connections, limits and health.

An ``Endpoint`` is where a hop's API lives and how TLS to it is set up. All clients of one endpoint
(any chain, any credentials) share one ``EndpointState``: a connection pool built off the event
loop, a concurrency limit, a hold while the registry has asked us to slow down (429), and whether
the endpoint is known down. A known-down endpoint gets one probe per interval; every other request
to it fails at once, so a dead hop costs its targets nothing and delays nobody else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import socket
import ssl
import time
from collections.abc import Callable

import aiohttp
import httpx

from layerwatch.chain import Proxy
from layerwatch.observation import Fault, FaultKind
from layerwatch.registry import proxies, tls
from layerwatch.settings import EngineSettings, TransportKind
from layerwatch.text import one_line

__all__ = [
    "CONNECT_FAULTS",
    "Endpoint",
    "EndpointState",
    "RetryBudget",
    "clean_text",
    "fault_from_exception",
    "make_transport",
]

CONNECT_FAULTS = frozenset(
    {
        FaultKind.REFUSED,
        FaultKind.DNS,
        FaultKind.TLS,
        FaultKind.CONNECT_TIMEOUT,
        FaultKind.HEADER_TIMEOUT,
        FaultKind.RESET,
    }
)
"""Faults that say the endpoint itself is not answering (they count towards "known down")."""
DOWN_AFTER = 3
"""Consecutive connect-class failures after which an endpoint is known down."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where a registry API is (``scheme://host[:port]``) and how TLS to it is verified."""

    base_url: str
    ca_pem: str | None = dataclasses.field(default=None, repr=False)
    insecure: bool = False
    proxy: Proxy | None = None
    """The HTTP proxy in front of it (the hop's own or the environment's); part of the identity."""
    client_cert_pem: str | None = dataclasses.field(default=None, repr=False)
    client_key_pem: str | None = dataclasses.field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.base_url.startswith("https://")


def clean_text(text: str, limit: int = 160) -> str:
    """Registry- or network-supplied text as one short line: whitespace runs (newlines included)
    become one space, anything else invisible is escaped (``one_line``)."""
    return one_line(" ".join(text.split()), limit)


def _ssl_context(endpoint: Endpoint) -> ssl.SSLContext | bool:
    if not endpoint.tls:
        return False
    if endpoint.insecure:
        return tls.insecure_context(endpoint.client_cert_pem, endpoint.client_key_pem)
    context = ssl.create_default_context()
    if endpoint.ca_pem:
        context.load_verify_locations(cadata=endpoint.ca_pem)
    tls.load_client_certificate(context, endpoint.client_cert_pem, endpoint.client_key_pem)
    return context


def make_transport(endpoint: Endpoint, kind: TransportKind, connections: int) -> httpx.AsyncBaseTransport:
    """The HTTP transport seam; everything above it speaks httpx. Loads CA files: run it off the loop."""
    verify = _ssl_context(endpoint)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    proxy = proxies.transport_proxy(endpoint.proxy)
    if kind == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        transport: httpx.AsyncBaseTransport = AiohttpTransport(
            verify=verify, limits=limits, trust_env=False, proxy=proxy
        )
        return transport
    return httpx.AsyncHTTPTransport(verify=verify, limits=limits, trust_env=False, proxy=proxy)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def fault_from_exception(exc: BaseException) -> Fault:
    """Tell refused, DNS, TLS, timeouts, resets and protocol errors apart, whichever layer raised."""
    chain = _chain(exc)
    text = clean_text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def has(*types: type[BaseException]) -> bool:
        return any(isinstance(e, types) for e in chain)

    def errnos() -> set[int]:
        return {e.errno for e in chain if isinstance(e, OSError) and e.errno is not None}

    dns_error = getattr(aiohttp, "ClientConnectorDNSError", ())
    if has(socket.gaierror) or (dns_error and has(dns_error)):
        return Fault(FaultKind.DNS, "DNS lookup failed")
    if has(ssl.SSLError, ssl.CertificateError, aiohttp.ClientSSLError):
        reason = next(
            (clean_text(str(e)) for e in chain if isinstance(e, ssl.SSLError | ssl.CertificateError)), ""
        )
        return Fault(FaultKind.TLS, reason or text)
    codes = errnos()
    if has(ConnectionRefusedError) or errno.ECONNREFUSED in codes:
        return Fault(FaultKind.REFUSED, "connection refused")
    if (
        has(ConnectionResetError, BrokenPipeError, aiohttp.ServerDisconnectedError)
        or errno.ECONNRESET in codes
    ):
        return Fault(FaultKind.RESET, "connection reset or closed by the registry")
    connect_timeout = getattr(aiohttp, "ConnectionTimeoutError", ())
    if (connect_timeout and has(connect_timeout)) or (
        has(httpx.ConnectTimeout) and not has(aiohttp.ClientConnectionError)
    ):
        return Fault(FaultKind.CONNECT_TIMEOUT, "connect timed out")
    if has(TimeoutError, httpx.TimeoutException, aiohttp.ServerTimeoutError):
        return Fault(FaultKind.HEADER_TIMEOUT, "timed out waiting for response headers")
    proxy_answer = next((e for e in chain if isinstance(e, aiohttp.ClientHttpProxyError)), None)
    if proxy_answer is not None:  # the proxy itself said no (407: its credentials)
        return Fault(
            FaultKind.PROTOCOL,
            clean_text(f"proxy answered HTTP {proxy_answer.status} {proxy_answer.message}"),
        )
    if has(aiohttp.ClientPayloadError, httpx.ReadError):
        return Fault(FaultKind.BODY_CUT, text)
    if has(httpx.ConnectError, aiohttp.ClientConnectorError):
        return Fault(FaultKind.REFUSED, f"connection failed: {text}")
    if has(httpx.RemoteProtocolError, aiohttp.ClientResponseError, httpx.ProtocolError):
        return Fault(FaultKind.PROTOCOL, f"protocol error: {text}")
    return Fault(FaultKind.PROTOCOL, f"invalid response: {text}")


class RetryBudget:
    """Seconds one hop check may still spend waiting to retry (backoffs and Retry-After)."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds

    def take(self, seconds: float) -> bool:
        if seconds > self.left:
            return False
        self.left -= seconds
        return True


class EndpointState:
    """Connections, limit, 429 hold and health of one endpoint, shared by all its clients."""

    def __init__(
        self, endpoint: Endpoint, settings: EngineSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.endpoint, self.settings, self._clock = endpoint, settings, clock
        self.limit = asyncio.Semaphore(settings.endpoint_concurrency)
        self.probe_interval = 60.0
        """Seconds between probes of a known-down endpoint (the scheduler sets its chain's interval)."""
        self._transport: httpx.AsyncBaseTransport | None = None
        self._setup_fault: Fault | None = None
        self._setup_lock = asyncio.Lock()
        self._hold_until = 0.0
        self._failures = 0
        self._down: Fault | None = None
        self._probe_at = 0.0

    async def transport(self) -> httpx.AsyncBaseTransport:
        """The shared transport, built once in a thread (loading a CA bundle blocks)."""
        if self._transport is not None:
            return self._transport
        if self._setup_fault is None:
            async with self._setup_lock:
                if self._transport is None and self._setup_fault is None:
                    try:
                        self._transport = await asyncio.to_thread(
                            make_transport,
                            self.endpoint,
                            self.settings.transport,
                            self.settings.endpoint_concurrency,
                        )
                    except (ssl.SSLError, ValueError, OSError) as exc:
                        reason = clean_text(str(exc)) or type(exc).__name__
                        self._setup_fault = Fault(
                            FaultKind.TLS_SETTINGS, f"CA bundle cannot be used: {reason}"
                        )
        if self._setup_fault is not None:
            from layerwatch.registry.errors import RegistryError

            raise RegistryError(self._setup_fault)
        assert self._transport is not None
        return self._transport

    # -- slowing down (429) --------------------------------------------------------------------

    def hold(self, seconds: float) -> None:
        """The registry asked for ``seconds`` of quiet: nobody sends to it before then."""
        self._hold_until = max(self._hold_until, self._clock() + seconds)

    def held_for(self) -> float:
        return max(0.0, self._hold_until - self._clock())

    # -- health --------------------------------------------------------------------------------

    @property
    def down(self) -> Fault | None:
        return self._down

    def admit(self) -> Fault | None:
        """None when a request may go out; the fault that made the endpoint down otherwise.

        While down, one request per ``probe_interval`` goes out as the probe.
        """
        if self._down is None:
            return None
        now = self._clock()
        if now >= self._probe_at:
            self._probe_at = now + self.probe_interval
            return None
        return self._down

    def answered(self) -> None:
        """Any HTTP answer: the endpoint is up."""
        self._failures = 0
        self._down = None

    def failed(self, fault: Fault) -> None:
        if fault.kind not in CONNECT_FAULTS:
            return
        self._failures += 1
        if self._failures >= DOWN_AFTER:
            self.mark_down(fault)

    def mark_down(self, fault: Fault) -> None:
        if self._down is None:
            self._probe_at = self._clock() + self.probe_interval
        self._down = fault

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None
