"""An in-process registry for hermetic tests of every network path: aiohttp on loopback.

It serves one Flux artifact (config + content layer) under ``org/app:v1`` and records every
request. A test bends it with ``hooks``: each hook sees the request first and may answer it
instead (a 429, a hostile header, a slow body). Faults below HTTP (a black hole, trickled
headers) use ``raw_server``, a bare TCP server whose handler writes what it likes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from layerwatch.chain import Chain, Hop, Mode
from layerwatch.check import BlobCache, check_target
from layerwatch.manifest import FLUX_CONFIG, FLUX_CONTENT, OCI_MANIFEST
from layerwatch.reference import Reference
from layerwatch.registry import RegistryClient
from layerwatch.settings import EngineSettings
from layerwatch.verdict import CheckResult

Hook = Callable[[web.Request], Awaitable[web.StreamResponse | None]]
REPOSITORY = "org/app"
TAG = "v1"
FAST = EngineSettings(timeout=1.0, retries=2, retry_budget=5.0, backoff=0.01, check_deadline=20.0)
"""Short bounds so a test of a hang ends in seconds."""


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_for(config: bytes, layers: list[bytes], media_types: list[str] | None = None) -> bytes:
    types = media_types or [FLUX_CONTENT] * len(layers)
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": FLUX_CONFIG, "digest": digest(config), "size": len(config)},
        "layers": [
            {"mediaType": t, "digest": digest(layer), "size": len(layer)}
            for t, layer in zip(types, layers, strict=True)
        ],
    }
    return json.dumps(document).encode()


def oci_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"errors": [{"code": code, "message": message}]}, status=status)


class FakeRegistry:
    """A registry with one artifact; ``hooks`` answer first, ``requests`` records (method, path)."""

    def __init__(self, layer: bytes = b"flux content " * 1000) -> None:
        self.config = b"{}"
        self.layer = layer
        self.blobs = {digest(self.config): self.config, digest(layer): layer}
        self.manifest = manifest_for(self.config, [layer])
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.put_manifest(self.manifest, TAG)
        self.hooks: list[Hook] = []
        self.requests: list[tuple[str, str]] = []
        self.port = 0

    def put_manifest(self, body: bytes, tag: str | None = None, media_type: str = OCI_MANIFEST) -> str:
        name = digest(body)
        self.manifests[name] = (body, media_type)
        if tag:
            self.manifests[tag] = (body, media_type)
        return name

    @property
    def layer_digest(self) -> str:
        return digest(self.layer)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, method: str | None = None, contains: str = "") -> int:
        return sum(1 for m, p in self.requests if (method is None or m == method) and contains in p)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        for hook in self.hooks:
            answer = await hook(request)
            if answer is not None:
                return answer
        return self.serve(request)

    def serve(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path in ("/v2/", "/v2"):
            return web.Response(status=200)
        prefix = f"/v2/{REPOSITORY}/"
        if path.startswith(prefix + "manifests/"):
            ref = path.removeprefix(prefix + "manifests/")
            if ref not in self.manifests:
                return oci_error(404, "MANIFEST_UNKNOWN", "manifest unknown")
            body, media_type = self.manifests[ref]
            headers = {
                "Docker-Content-Digest": digest(body),
                "ETag": f'"{digest(body)}"',
                "Content-Type": media_type,
            }
            return web.Response(body=b"" if request.method == "HEAD" else body, headers=headers)
        if path.startswith(prefix + "blobs/"):
            ref = path.removeprefix(prefix + "blobs/")
            if ref not in self.blobs:
                return oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry")
            body = self.blobs[ref]
            if request.method == "HEAD":
                return web.Response(headers={"Content-Length": str(len(body))})
            headers = {"Docker-Content-Digest": ref, "ETag": f'"{ref}"'}  # as the registry sends them
            return web.Response(body=body, content_type="application/octet-stream", headers=headers)
        return oci_error(404, "NAME_UNKNOWN", "repository name not known to registry")


@contextlib.asynccontextmanager
async def running(registry: FakeRegistry) -> AsyncIterator[FakeRegistry]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", registry.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    registry.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield registry
    finally:
        await runner.cleanup()


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: RawHandler) -> AsyncIterator[str]:
    """A bare TCP server on loopback; yields its ``http://`` base URL."""
    connections: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.add(writer)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await handler(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in connections:
            writer.close()
        server.close()


async def check(
    base_url: str,
    ref: str = f"{REPOSITORY}:{TAG}",
    *,
    settings: EngineSettings = FAST,
    mode: Mode = Mode.FULL,
    cache: BlobCache | None = None,
    asker: tuple[str, str] = ("", "app"),
    client: RegistryClient | None = None,
    **hop_options: Any,
) -> CheckResult:
    """One check of ``ref`` at the single hop ``base_url``, as the CLI runs it."""
    hop = Hop.from_url("hop", base_url, **hop_options)
    host = base_url.split("://", 1)[1]
    reference = Reference.parse(f"{host}/{ref}")
    path = Chain(name="test", hops=(hop,)).pull_path(reference)
    own = client is None
    client = client or RegistryClient.for_hop(hop, settings)
    try:
        return await check_target(reference, path, {"hop": client}, mode=mode, cache=cache, asker=asker)
    finally:
        if own:
            await client.aclose()
