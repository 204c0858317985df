"""An in-process registry for hermetic tests of every network path: aiohttp on loopback.

It serves one Flux artifact (config + content layer) under ``org/app:v1`` and records every
request. A test bends it with ``hooks``: each hook sees the request first and may answer it
instead (a 429, a hostile header, a slow body). Faults below HTTP (a black hole, trickled
headers) use ``raw_server``, a bare TCP server whose handler writes what it likes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
from aiohttp import web

from layerwatch.chain import Chain, Hop, Mode
from layerwatch.check import BlobCache, check_target
from layerwatch.manifest import FLUX_CONFIG, FLUX_CONTENT, OCI_MANIFEST
from layerwatch.reference import Reference
from layerwatch.registry import RegistryClient
from layerwatch.settings import EngineSettings
from layerwatch.verdict import CheckResult

Hook = Callable[[web.Request], Awaitable[web.StreamResponse | None]]
R = TypeVar("R", "FakeRegistry", "PushRegistry")
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
async def running(registry: R) -> AsyncIterator[R]:
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


_ROUTE = re.compile(r"^/v2/(?P<name>.+?)/(?P<kind>manifests|blobs|tags)/(?P<ref>.*)$")


class PushRegistry:
    """A registry of any repository that takes pushes, lists tags and deletes by digest; given an
    ``upstream`` it is a pull-through proxy: what it lacks it asks there (its ``prefix`` stripped
    from the path, as a Harbor proxy project does) and keeps.

    ``requests`` records (method, path, Authorization header or None) in arrival order; ``log``, if
    shared between registries, records (registry name, method, path, User-Agent) across a chain.
    ``push_credentials`` (user, password) makes writes need Basic auth; ``deletes=False`` answers
    deletes 405 UNSUPPORTED, as registries without deletion enabled do.
    """

    def __init__(
        self,
        name: str,
        *,
        upstream: PushRegistry | None = None,
        prefix: str = "",
        push_credentials: tuple[str, str] | None = None,
        deletes: bool = True,
        log: list[tuple[str, str, str, str]] | None = None,
    ) -> None:
        self.name, self.upstream, self.prefix = name, upstream, prefix
        self.push_credentials, self.deletes = push_credentials, deletes
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.manifests: dict[tuple[str, str], bytes] = {}
        """(repository, tag or digest) -> manifest bytes."""
        self.uploads: set[str] = set()
        self.hooks: list[Hook] = []
        self.requests: list[tuple[str, str, str | None]] = []
        self.log = log if log is not None else []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tags(self, repository: str) -> list[str]:
        return sorted(r for (repo, r) in self.manifests if repo == repository and not r.startswith("sha256:"))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs, request.headers.get("Authorization")))
        self.log.append((self.name, request.method, request.path, request.headers.get("User-Agent", "")))
        for hook in self.hooks:
            answer = await hook(request)
            if answer is not None:
                return answer
        if request.path in ("/v2/", "/v2"):
            return web.Response(status=200)
        match = _ROUTE.match(request.path)
        if match is None:
            return oci_error(404, "NAME_UNKNOWN", "repository name not known to registry")
        name, kind, ref = match["name"], match["kind"], match["ref"]
        if request.method in ("POST", "PUT", "DELETE") and self.push_credentials is not None:
            expected = "Basic " + base64.b64encode(":".join(self.push_credentials).encode()).decode()
            if request.headers.get("Authorization") != expected:
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="push"'})
        if kind == "tags":
            tags = self.tags(name)
            return (
                web.json_response({"name": name, "tags": tags})
                if tags
                else oci_error(404, "NAME_UNKNOWN", "")
            )
        if kind == "blobs" and ref.startswith("uploads/"):
            return await self._upload(request, name, ref.removeprefix("uploads/"))
        if kind == "blobs":
            return await self._blob(request, name, ref)
        return await self._manifest(request, name, ref)

    async def _upload(self, request: web.Request, name: str, session: str) -> web.StreamResponse:
        if request.method == "POST" and not session:
            session = uuid.uuid4().hex
            self.uploads.add(session)
            location = f"/v2/{name}/blobs/uploads/{session}?_state=abc"
            return web.Response(status=202, headers={"Location": location})
        if request.method == "PUT" and session in self.uploads:
            body = await request.read()
            if digest(body) != request.query.get("digest"):
                return oci_error(400, "DIGEST_INVALID", "digest did not match")
            self.uploads.discard(session)
            self.blobs[(name, digest(body))] = body
            return web.Response(status=201, headers={"Location": f"/v2/{name}/blobs/{digest(body)}"})
        return oci_error(404, "BLOB_UPLOAD_UNKNOWN", "upload unknown")

    def _upstream_path(self, name: str) -> str | None:
        if self.upstream is None:
            return None
        if self.prefix:
            return name.removeprefix(self.prefix + "/") if name.startswith(self.prefix + "/") else None
        return name

    async def _pull(self, path: str) -> httpx.Response | None:
        assert self.upstream is not None
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{self.upstream.url}{path}", headers={"Accept": OCI_MANIFEST})
        return response if response.status_code == 200 else None

    async def _blob(self, request: web.Request, name: str, ref: str) -> web.StreamResponse:
        body = self.blobs.get((name, ref))
        upstream = self._upstream_path(name)
        if body is None and upstream is not None:
            answer = await self._pull(f"/v2/{upstream}/blobs/{ref}")
            if answer is not None:
                body = self.blobs[(name, ref)] = answer.content
        if body is None:
            return oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(body))})
        return web.Response(body=body, content_type="application/octet-stream")

    async def _manifest(self, request: web.Request, name: str, ref: str) -> web.StreamResponse:
        if request.method == "PUT":
            body = await request.read()
            self.manifests[(name, ref)] = self.manifests[(name, digest(body))] = body
            return web.Response(status=201, headers={"Docker-Content-Digest": digest(body)})
        if request.method == "DELETE":
            if not self.deletes:
                return oci_error(405, "UNSUPPORTED", "The operation is unsupported.")
            if not ref.startswith("sha256:"):
                return oci_error(400, "UNSUPPORTED", "delete by digest only")
            doomed = [key for key, body in self.manifests.items() if key[0] == name and digest(body) == ref]
            for key in doomed:
                del self.manifests[key]
            return web.Response(status=202) if doomed else oci_error(404, "MANIFEST_UNKNOWN", "")
        body = self.manifests.get((name, ref))
        upstream = self._upstream_path(name)
        if upstream is not None and (body is None or not ref.startswith("sha256:")):
            answer = await self._pull(f"/v2/{upstream}/manifests/{ref}")  # tags: always asked upstream
            if answer is not None:
                body = self.manifests[(name, ref)] = self.manifests[(name, digest(answer.content))] = (
                    answer.content
                )
        if body is None:
            return oci_error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        headers = {"Docker-Content-Digest": digest(body), "Content-Type": OCI_MANIFEST}
        return web.Response(body=b"" if request.method == "HEAD" else body, headers=headers)


@contextlib.asynccontextmanager
async def running_all(*registries: PushRegistry) -> AsyncIterator[tuple[PushRegistry, ...]]:
    """Serve several registries at once (origin first, so proxies can reach it)."""
    async with contextlib.AsyncExitStack() as stack:
        for registry in registries:
            await stack.enter_async_context(running(registry))
        yield registries
