"""A tenant-controlled destination that records every credential sent to it.

One loopback port plays everything a tenant (or someone on the network path) can point layerwatch
at: a registry over plain HTTP, a registry over TLS (a certificate of the given CA, so only a client
that trusts that CA completes the handshake), and an HTTP proxy (absolute URIs, and CONNECT
tunnels whose TLS it terminates itself). Every request is answered ``401`` with a Basic challenge,
so a client holding credentials for the host sends them; every request's header block is kept.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import ssl
import threading
from pathlib import Path
from typing import Any

from lab.process import LOOPBACK

__all__ = ["Recorded", "RecordingEndpoint"]

_MAX_HEAD = 65536
_TLS_HANDSHAKE = 0x16
"""The first byte of a TLS ClientHello: a connection that starts with it goes to the TLS side."""
_ANSWER = (
    b"HTTP/1.1 401 Unauthorized\r\n"
    b'WWW-Authenticate: Basic realm="registry"\r\n'
    b"Docker-Distribution-API-Version: registry/2.0\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\n\r\nunauthorized"
)


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One request as it arrived: its request line, headers, and whether it came over TLS."""

    line: str
    headers: tuple[tuple[str, str], ...]
    tls: bool

    def basic(self) -> list[str]:
        """The ``user:password`` pairs of its Basic ``Authorization`` and ``Proxy-Authorization``."""
        found = []
        for name, value in self.headers:
            scheme, _, token = value.partition(" ")
            if name.lower() in ("authorization", "proxy-authorization") and scheme.lower() == "basic":
                try:
                    found.append(base64.b64decode(token.strip(), validate=True).decode(errors="replace"))
                except (binascii.Error, ValueError):
                    found.append(token)
        return found


class RecordingEndpoint:
    """The recorder on a free loopback port; ``tls`` = (certificate, key) files for its TLS side.

    Use ``async with`` inside a running loop (hermetic tests) or ``with`` (its own loop in a thread,
    for a process such as the operator to reach).
    """

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self._ssl: ssl.SSLContext | None = None
        if tls is not None:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(str(tls[0]), str(tls[1]))
        self.requests: list[Recorded] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self._tls_port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: a registry host, or (after ``http://``) a proxy address."""
        return f"{LOOPBACK}:{self.port}"

    def credentials(self) -> list[str]:
        """Every ``user:password`` it was sent, in order."""
        return [pair for request in list(self.requests) for pair in request.basic()]

    def heard(self, secret: str) -> bool:
        """Whether ``secret`` arrived anywhere: a request line, a header, or inside a Basic token."""
        return any(
            secret in text
            for request in list(self.requests)
            for text in (request.line, *request.basic(), *(v for _, v in request.headers))
        )

    async def start(self) -> RecordingEndpoint:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        if self._ssl is not None:
            self._tls_server = await asyncio.start_server(
                functools.partial(self._serve, tls=True), LOOPBACK, 0, ssl=self._ssl
            )
            self._tls_port = int(self._tls_server.sockets[0].getsockname()[1])
        return self

    async def aclose(self) -> None:
        for server in (self._server, self._tls_server):
            if server is not None:
                server.close()
                await server.wait_closed()

    async def __aenter__(self) -> RecordingEndpoint:
        return await self.start()

    async def __aexit__(self, *_: Any) -> None:
        await self.aclose()

    def __enter__(self) -> RecordingEndpoint:
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="recorder", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), loop).result(10)
        return self

    def __exit__(self, *_: Any) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.aclose(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: bool = False
    ) -> None:
        try:
            first = b"" if tls else await reader.read(1)
            if first[:1] == bytes([_TLS_HANDSHAKE]):
                await self._relay(first, reader, writer)
                return
            while True:
                head = first + await reader.readuntil(b"\r\n\r\n")
                first = b""
                line, *fields = head.decode("latin-1").split("\r\n")
                headers = tuple(
                    (name.strip(), value.strip())
                    for name, sep, value in (f.partition(":") for f in fields if f)
                    if sep
                )
                self.requests.append(Recorded(line, headers, tls))
                length = next((v for n, v in headers if n.lower() == "content-length"), "0")
                if length.isdigit() and int(length):
                    await reader.readexactly(min(int(length), _MAX_HEAD))
                if line.upper().startswith("CONNECT "):
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await writer.drain()
                    await self._relay(b"", reader, writer)
                    return
                head_only = line.upper().startswith("HEAD ")
                writer.write(_ANSWER.partition(b"\r\n\r\n")[0] + b"\r\n\r\n" if head_only else _ANSWER)
                await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            writer.close()

    async def _relay(self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Hand a TLS connection (direct, or inside a CONNECT tunnel) to the TLS side of the recorder."""
        if not self._tls_port:
            return
        up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self._tls_port)
        up_writer.write(first)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer), return_exceptions=True)
