"""What a body that pauses, stalls or ends early means, and when an endpoint counts as down.

Slow is not corrupt: a pause inside a body is judged against that body's own deadline (its size at
the minimum rate), never against the per-request timeout. A body that really ends before its
Content-Length is wrong bytes at that hop. One failed ``/v2/`` ping is one failure, not a whole
interval of "hop down". All against the in-process fake registry, on both HTTP transports.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from tests.unit.fake_registry import FAST, FakeRegistry, check, digest, running

from layerwatch.chain import Hop
from layerwatch.observation import FaultKind
from layerwatch.registry import RegistryClient
from layerwatch.registry.network import DOWN_AFTER
from layerwatch.settings import EngineSettings, TransportKind
from layerwatch.verdict import Health, Verdict

TRANSPORTS: list[TransportKind] = ["aiohttp", "httpx"]


def pausing(path_part: str, data: bytes, pause: float):  # type: ignore[no-untyped-def]
    """A hook serving ``data`` for GETs of ``path_part`` in two halves, ``pause`` seconds apart."""

    async def hook(request: web.Request) -> web.StreamResponse | None:
        if request.method != "GET" or path_part not in request.path:
            return None
        headers = {"Content-Length": str(len(data)), "Docker-Content-Digest": digest(data)}
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        await asyncio.sleep(pause)
        await response.write(data[len(data) // 2 :])
        return response

    return hook


def cut_short(path_part: str, data: bytes, keep: int, times: int = 1000, *, digest_header: bool = True):  # type: ignore[no-untyped-def]
    """A hook announcing all of ``data`` but closing the connection after ``keep`` bytes (``times`` times)."""
    left = [times]

    async def hook(request: web.Request) -> web.StreamResponse | None:
        if request.method != "GET" or path_part not in request.path or left[0] == 0:
            return None
        left[0] -= 1
        headers = {"Content-Length": str(len(data))}
        if digest_header:
            headers["Docker-Content-Digest"] = digest(data)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        await response.write(data[:keep])
        assert request.transport is not None
        request.transport.close()
        return response

    return hook


def verdict_message(result: object) -> tuple[Verdict, str]:
    hop = result.judgement.hops[0]  # type: ignore[attr-defined]
    return hop.verdict, hop.message


# -- a pause inside a body is judged against that body's own deadline ---------------------------------


async def paused_check(
    registry: FakeRegistry, path_part: str, data: bytes, pause: float, **settings: float | str
) -> tuple[Verdict, str]:
    """A check of ``registry`` while ``data`` at ``path_part`` pauses ``pause`` s halfway through."""
    registry.hooks.append(pausing(path_part, data, pause))
    engine = EngineSettings(timeout=0.5, retries=0, backoff=0, **settings)  # type: ignore[arg-type]
    async with running(registry):
        return verdict_message(await check(registry.url, settings=engine))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_pause_inside_a_layer_longer_than_the_request_timeout_is_no_fault(
    transport: TransportKind,
) -> None:
    layer = b"p" * 8192
    registry = FakeRegistry(layer)
    # timeout 0.5 s, but 8 KiB at 1 KiB/s may take 8.5 s: a 1.5 s pause (a Harbor proxy waiting
    # on its upstream) is within the layer's own deadline.
    path = "/blobs/" + digest(layer)
    verdict, message = await paused_check(registry, path, layer, 1.5, min_blob_rate=1024, transport=transport)
    assert verdict is Verdict.HEALTHY, message
    assert registry.count("GET", path) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_pause_inside_a_manifest_longer_than_the_request_timeout_is_no_fault(
    transport: TransportKind,
) -> None:
    registry = FakeRegistry()
    path = "/manifests/" + digest(registry.manifest)
    verdict, message = await paused_check(
        registry, path, registry.manifest, 1.5, min_blob_rate=1024, transport=transport
    )
    assert verdict is Verdict.HEALTHY, message


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_pause_past_the_layers_own_deadline_is_stalled_and_unknown_never_corrupt(
    transport: TransportKind,
) -> None:
    layer = b"q" * 8192
    # 8 KiB at 1 MiB/s: the layer's deadline is timeout + 0.01 s, far shorter than the pause.
    verdict, message = await paused_check(
        FakeRegistry(layer),
        "/blobs/" + digest(layer),
        layer,
        4.0,
        min_blob_rate=1024 * 1024,
        transport=transport,
    )
    assert verdict is Verdict.UNREACHABLE and verdict.health is Health.UNKNOWN, message
    assert "stalled: 4096 of 8192 bytes" in message and "truncated" not in message


# -- a body that really ends early is wrong bytes at that hop ------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_manifest_shorter_than_its_content_length_is_manifest_corrupt_not_a_protocol_error(
    transport: TransportKind,
) -> None:
    registry = FakeRegistry()
    manifest_digest = digest(registry.manifest)
    size = len(registry.manifest)
    registry.hooks.append(cut_short("/manifests/" + manifest_digest, registry.manifest, 20))
    settings = EngineSettings(timeout=1.0, retries=0, backoff=0, transport=transport)
    async with running(registry):
        result = await check(registry.url, settings=settings)
    verdict, message = verdict_message(result)
    assert verdict is Verdict.MANIFEST_CORRUPT and result.judgement.health is Health.UNHEALTHY, message
    assert f"manifest {manifest_digest[:19]} truncated: 20 of {size} bytes (connection closed)" in message
    assert registry.count("GET", "/manifests/" + manifest_digest) == 2  # once more: a cut can be the net


async def test_a_manifest_cut_once_is_asked_again_and_healthy() -> None:
    registry = FakeRegistry()
    manifest_digest = digest(registry.manifest)
    registry.hooks.append(cut_short("/manifests/" + manifest_digest, registry.manifest, 20, times=1))
    async with running(registry):
        result = await check(registry.url)
    assert verdict_message(result)[0] is Verdict.HEALTHY


async def test_a_manifest_cut_when_asked_by_tag_names_the_tag_not_the_hash_of_a_fragment() -> None:
    registry = FakeRegistry()

    async def no_head(request: web.Request) -> web.Response | None:
        return web.Response(status=405) if request.method == "HEAD" else None  # the tag is read by GET

    registry.hooks += [no_head, cut_short("/manifests/v1", registry.manifest, 20, digest_header=False)]
    async with running(registry):
        result = await check(registry.url)
    verdict, message = verdict_message(result)
    assert verdict is Verdict.MANIFEST_CORRUPT
    assert f"manifest of tag v1 truncated: 20 of {len(registry.manifest)} bytes" in message
    assert result.observations[0].digest is None


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_layer_shorter_than_its_content_length_stays_layer_corrupt(transport: TransportKind) -> None:
    layer = b"s" * 8192
    registry = FakeRegistry(layer)
    registry.hooks.append(cut_short("/blobs/" + digest(layer), layer, 4096))
    settings = EngineSettings(timeout=1.0, retries=0, backoff=0, transport=transport)
    async with running(registry):
        result = await check(registry.url, settings=settings)
    verdict, message = verdict_message(result)
    assert verdict is Verdict.LAYER_CORRUPT
    assert "truncated: 4096 of 8192 bytes (connection closed)" in message


# -- one failed ping is one failure ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def running_on(registry: FakeRegistry, port: int) -> AsyncIterator[FakeRegistry]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", registry.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    registry.port = port
    try:
        yield registry
    finally:
        await runner.cleanup()


async def test_one_failed_ping_does_not_mark_the_hop_down_for_the_interval() -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    async with RegistryClient.for_hop(Hop.from_url("hop", url), FAST) as client:
        ping = await client.ping()  # nothing listens yet: refused
        assert ping is not None and ping.kind is FaultKind.REFUSED
        registry = FakeRegistry()
        async with running_on(registry, port):  # the registry is back a moment later
            result = await check(url, client=client)
    verdict, message = verdict_message(result)
    assert verdict is Verdict.HEALTHY, message
    assert "hop down" not in message


async def test_failed_pings_count_toward_known_down_like_any_failure() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    async with RegistryClient.for_hop(Hop.from_url("hop", url), FAST) as client:
        faults = [await client.ping() for _ in range(DOWN_AFTER + 1)]
    kinds = [f.kind if f is not None else None for f in faults]
    assert kinds == [FaultKind.REFUSED] * DOWN_AFTER + [FaultKind.HOP_DOWN]
