"""Everything a hostile or unlucky registry can do ends as a bounded, honest verdict.

Each test stands for a case a user met: a 429 storm, a hop that never answers, trickled headers,
a slow layer, a lying digest header, compression bombs, absurd manifests, and messages that must
name the right thing. All run against the in-process fake registry (``fake_registry``).
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import resource
import time
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.builders import scraped
from tests.unit.fake_registry import (
    FAST,
    REPOSITORY,
    TAG,
    FakeRegistry,
    check,
    digest,
    oci_error,
    raw_server,
    running,
)

from layerwatch.chain import Chain, ChainError, Credentials, Hop, Mode, Proxy, Target
from layerwatch.check import BlobCache
from layerwatch.manifest import OCI_INDEX, OCI_MANIFEST
from layerwatch.metrics import Metrics
from layerwatch.observation import Fault, FaultKind
from layerwatch.reference import Reference
from layerwatch.registry import RegistryClient
from layerwatch.registry.client import MAX_RETRY_AFTER, retry_after
from layerwatch.report import to_json, to_text
from layerwatch.scheduler import Scheduler, Watch
from layerwatch.settings import EngineSettings, SettingsError
from layerwatch.store import ResultStore
from layerwatch.verdict import CheckResult, Health, Verdict


async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept the connection, never answer."""
    await asyncio.sleep(3600)


async def timed(url: str, **options: Any) -> tuple[CheckResult, float]:
    """A check and how many seconds it took."""
    started = time.monotonic()
    result = await check(url, **options)
    return result, time.monotonic() - started


def hop_verdict(result: object) -> tuple[Verdict, str]:
    judgement = result.judgement  # type: ignore[attr-defined]
    return judgement.hops[0].verdict, judgement.hops[0].message


# -- 429: slow down means fewer requests, not more --------------------------------------------------


@pytest.mark.parametrize(
    "header",
    ["0", email.utils.format_datetime(email.utils.localtime().replace(year=2000), usegmt=False), "²", "soon"],
)
async def test_a_429_with_a_zero_past_or_odd_retry_after_waits_and_gives_up_within_the_budget(
    header: str,
) -> None:
    async def always_429(request: web.Request) -> web.Response | None:
        if request.path.startswith("/v2/org/"):
            answer = oci_error(429, "TOOMANYREQUESTS", "slow down")
            answer.headers["Retry-After"] = header
            return answer
        return None

    registry = FakeRegistry()
    registry.hooks.append(always_429)
    settings = EngineSettings(timeout=1.0, retries=2, retry_budget=3.0, backoff=0.01)
    async with running(registry):
        result, elapsed = await timed(registry.url, settings=settings)
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.RATE_LIMITED
    assert "HTTP 429 after 3 attempts" in message  # the tag's HEAD: a HEAD answer has no error body
    assert registry.count(contains="/v2/org/") <= 3  # the first ask and at most two retries
    assert elapsed >= 1.9  # each wait floored at one second (Retry-After 0 would loop at once)


def test_retry_after_is_floored_capped_and_never_raises() -> None:
    assert retry_after("0") == 1.0
    assert retry_after("²") == 1.0
    assert retry_after("120") == 120.0
    assert retry_after("99999999") == MAX_RETRY_AFTER
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 1.0


@given(st.text(max_size=60))
def test_retry_after_parses_anything_into_a_bounded_wait(text: str) -> None:
    assert 1.0 <= retry_after(text) <= MAX_RETRY_AFTER


async def test_a_rate_limited_endpoint_is_held_for_every_client_so_a_storm_stays_small() -> None:
    async def always_429(request: web.Request) -> web.Response | None:
        if request.path.startswith("/v2/org/"):
            return web.Response(status=429, headers={"Retry-After": "0"})
        return None

    registry = FakeRegistry()
    registry.hooks.append(always_429)
    settings = EngineSettings(timeout=1.0, retries=2, retry_budget=2.5, backoff=0.01)
    async with running(registry):
        hop = Hop.from_url("hop", registry.url)
        client = RegistryClient.for_hop(hop, settings)
        try:
            results = await asyncio.gather(*(check(registry.url, client=client) for _ in range(5)))
        finally:
            await client.aclose()
    assert all(hop_verdict(r)[0] is Verdict.RATE_LIMITED for r in results)
    # Five checks at once share the hold: about one request each per second of quiet asked for.
    assert registry.count(contains="/v2/org/") <= 15


# -- hangs: every wait is bounded ---------------------------------------------------------------


async def test_a_black_hole_hop_is_unreachable_within_the_request_timeout() -> None:
    async with raw_server(black_hole) as url:
        result, elapsed = await timed(url, settings=EngineSettings(timeout=0.5, retries=0, backoff=0))
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.UNREACHABLE
    assert "timed out waiting for response headers" in message
    assert elapsed < 10  # without the deadline it never ends


async def test_trickled_headers_are_cut_off_at_the_request_deadline() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for byte in b"X-Slow: " + b"a" * 1000:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.1)

    async with raw_server(trickle) as url:
        result, elapsed = await timed(url, settings=EngineSettings(timeout=1.0, retries=0, backoff=0))
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.UNREACHABLE and "timed out waiting for response headers" in message
    assert elapsed < 10  # without the deadline it never ends


async def test_a_trickled_token_body_is_bounded_too() -> None:
    registry = FakeRegistry()

    async def challenge(request: web.Request) -> web.StreamResponse | None:
        if request.path == "/token":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            for _ in range(200):
                await response.write(b" ")
                await asyncio.sleep(0.1)
            return response
        if "authorization" not in request.headers and request.path != "/v2/":
            realm = f'Bearer realm="{registry.url}/token",service="fake"'
            return web.Response(status=401, headers={"WWW-Authenticate": realm})
        return None

    registry.hooks.append(challenge)
    settings = EngineSettings(timeout=0.5, retries=0, min_blob_rate=1024 * 1024, backoff=0)
    async with running(registry):
        result, elapsed = await timed(registry.url, settings=settings)
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.UNREACHABLE and "token endpoint" in message and "stalled" in message
    assert elapsed < 10  # without the deadline it never ends


async def test_the_check_deadline_bounds_a_hop_that_is_merely_slow_everywhere() -> None:
    registry = FakeRegistry()

    async def slow(request: web.Request) -> web.Response | None:
        await asyncio.sleep(0.4)
        return None

    registry.hooks.append(slow)
    settings = EngineSettings(timeout=1.0, check_deadline=1.0, retries=0, backoff=0)
    async with running(registry):
        result, elapsed = await timed(registry.url, settings=settings)
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.UNREACHABLE and "check deadline of 1s passed" in message
    assert elapsed < 10  # without the deadline it never ends


# -- slow is not corrupt ------------------------------------------------------------------------


def dripping(data: bytes, chunk: int, pause: float):  # type: ignore[no-untyped-def]
    async def hook(request: web.Request) -> web.StreamResponse | None:
        if request.method != "GET" or "/blobs/" + digest(data) not in request.path:
            return None
        response = web.StreamResponse(headers={"Content-Length": str(len(data))})
        await response.prepare(request)
        for start in range(0, len(data), chunk):
            await response.write(data[start : start + chunk])
            await asyncio.sleep(pause)
        return response

    return hook


async def test_a_slow_intact_layer_is_stalled_unknown_never_corrupt() -> None:
    layer = b"x" * 200_000
    registry = FakeRegistry(layer)
    registry.hooks.append(dripping(layer, 4096, 0.05))  # about 80 KiB/s
    settings = EngineSettings(timeout=0.5, min_blob_rate=512 * 1024, retries=0, backoff=0)
    async with running(registry):
        result = await check(registry.url, settings=settings)
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.UNREACHABLE and result.judgement.health is Health.UNKNOWN
    assert "stalled:" in message and "of 200000 bytes" in message
    assert to_json(result)["hops"][0]["layers"][0]["status"] == "unchecked"


async def test_a_slow_layer_above_the_minimum_rate_is_healthy() -> None:
    layer = b"x" * 100_000
    registry = FakeRegistry(layer)
    registry.hooks.append(dripping(layer, 16384, 0.05))  # about 320 KiB/s
    settings = EngineSettings(timeout=1.0, min_blob_rate=32 * 1024, retries=0, backoff=0)
    async with running(registry):
        result = await check(registry.url, settings=settings)
    assert hop_verdict(result)[0] is Verdict.HEALTHY


async def test_a_truncated_layer_says_how_many_bytes_really_arrived() -> None:
    layer = b"y" * 200_846
    registry = FakeRegistry(layer)

    async def half(request: web.Request) -> web.Response | None:
        if request.method == "GET" and registry.layer_digest in request.path:
            return web.Response(body=layer[:100_423])
        return None

    registry.hooks.append(half)
    async with running(registry):
        result = await check(registry.url)
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.LAYER_CORRUPT
    assert "truncated: 100423 of 200846 bytes" in message


# -- registry-supplied values are validated before use ---------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "../../etc/passwd",
        "sha256:abc?x=1",
        "md5:" + "0" * 32,
        "sha256:" + "A" * 64,
        "sha256:" + "0" * 64 + "/x",
    ],
)
async def test_a_digest_header_that_is_not_a_digest_is_never_used(header: str) -> None:
    registry = FakeRegistry()

    async def lying(request: web.Request) -> web.Response | None:
        if "/manifests/" in request.path:
            answer = registry.serve(request)
            answer.headers["Docker-Content-Digest"] = header
            return answer  # type: ignore[return-value]
        return None

    registry.hooks.append(lying)
    async with running(registry):
        result = await check(registry.url)
    assert hop_verdict(result)[0] is Verdict.HEALTHY  # the bytes themselves were hashed
    assert result.observations[0].digest == digest(registry.manifest)
    paths = [path for _, path in registry.requests]
    assert all("passwd" not in p and "?" not in p and "md5" not in p for p in paths)
    assert all(p.startswith(f"/v2/{REPOSITORY}/") or p == "/v2/" for p in paths)


async def test_a_gzip_encoded_manifest_is_corrupt_and_never_decoded() -> None:
    registry = FakeRegistry()

    async def encoded(request: web.Request) -> web.Response | None:
        if "/manifests/" in request.path and request.method == "GET":
            return web.Response(body=b"not gzip at all", headers={"Content-Encoding": "gzip"})
        return None

    registry.hooks.append(encoded)
    async with running(registry):
        result = await check(registry.url)
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.MANIFEST_CORRUPT and "Content-Encoding gzip" in message


async def test_checks_of_one_artifact_share_its_parse_but_each_still_verifies_the_bytes() -> None:
    registry = FakeRegistry()
    async with running(registry):
        first = await check(registry.url, mode=Mode.HEAD)
        second = await check(registry.url, mode=Mode.HEAD)
        tampered = registry.manifest.replace(b'"schemaVersion": 2', b'"schemaVersion": 2 ')

        async def other_bytes(request: web.Request) -> web.Response | None:
            if "/manifests/sha256:" in request.path and request.method == "GET":
                return web.Response(body=tampered, headers={"Content-Type": OCI_MANIFEST})
            return None

        registry.hooks.append(other_bytes)
        third = await check(registry.url, mode=Mode.HEAD)
    shared = [r.observations[0].manifests[0].manifest for r in (first, second)]
    assert shared[0] is shared[1], "10,000 targets over 100 artifacts keep 100 parsed manifests"
    assert registry.count("GET", "/manifests/sha256:") == 3, "every check fetches the manifest itself"
    verdict, message = hop_verdict(third)
    assert verdict is Verdict.MANIFEST_CORRUPT and "hash to" in message


async def test_a_compression_bomb_manifest_costs_no_memory() -> None:
    bomb = gzip.compress(gzip.compress(b"\0" * 200_000_000))
    registry = FakeRegistry()

    async def bomb_hook(request: web.Request) -> web.Response | None:
        if "/manifests/" in request.path and request.method == "GET":
            return web.Response(body=bomb, headers={"Content-Encoding": "gzip, gzip"})
        return None

    registry.hooks.append(bomb_hook)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    async with running(registry):
        result = await check(registry.url)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.MANIFEST_CORRUPT and "Content-Encoding gzip, gzip" in message
    assert grown_mb < 50


async def test_an_encoded_blob_is_corrupt() -> None:
    registry = FakeRegistry()

    async def encoded(request: web.Request) -> web.Response | None:
        if registry.layer_digest in request.path and request.method == "GET":
            return web.Response(body=gzip.compress(registry.layer), headers={"Content-Encoding": "gzip"})
        return None

    registry.hooks.append(encoded)
    async with running(registry):
        result = await check(registry.url)
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.LAYER_CORRUPT and "Content-Encoding gzip" in message


@pytest.mark.parametrize("location", ["http://127.0.0.1:99999/v2/", "http://[1.2.3.4/v2/", "gopher://x/"])
async def test_a_redirect_to_an_unusable_location_is_unreachable(location: str) -> None:
    registry = FakeRegistry()

    async def redirect(request: web.Request) -> web.Response | None:
        if "/manifests/" in request.path:
            return web.Response(status=307, headers={"Location": location})
        return None

    registry.hooks.append(redirect)
    async with running(registry):
        result = await check(registry.url)
        hop = Hop.from_url("hop", registry.url)
        registry.hooks.insert(0, lambda r: _redirect_v2(r, location))
        async with RegistryClient.for_hop(hop, FAST) as client:
            ping = await client.ping()
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.UNREACHABLE and "redirect to an unusable location" in message
    assert ping is not None and ping.kind is FaultKind.BAD_REDIRECT


async def _redirect_v2(request: web.Request, location: str) -> web.Response | None:
    return web.Response(status=307, headers={"Location": location}) if request.path == "/v2/" else None


async def test_a_token_realm_that_is_not_a_url_is_auth_failed() -> None:
    registry = FakeRegistry()

    async def challenge(request: web.Request) -> web.Response | None:
        if request.path != "/v2/":
            return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer realm="http://[1.2.3.4]/t"'})
        return None

    registry.hooks.append(challenge)
    async with running(registry):
        result = await check(registry.url)
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.AUTH_FAILED and "realm is not a usable URL" in message


@pytest.mark.parametrize("size", ["1e400", "-1", "1.5", "true", "9007199254740993000"])
async def test_a_layer_size_that_is_not_a_sane_integer_is_manifest_corrupt(size: str) -> None:
    registry = FakeRegistry()
    document = json.loads(registry.manifest)
    body = json.dumps(document).replace(f'"size": {len(registry.layer)}', f'"size": {size}').encode()
    registry.put_manifest(body, TAG)
    async with running(registry):
        result = await check(registry.url)
    assert hop_verdict(result)[0] is Verdict.MANIFEST_CORRUPT


async def test_a_blob_declared_over_64_gib_is_refused_not_streamed() -> None:
    registry = FakeRegistry()
    body = json.dumps(json.loads(registry.manifest)).replace(
        f'"size": {len(registry.layer)}', f'"size": {10**15}'
    )
    registry.put_manifest(body.encode(), TAG)
    async with running(registry):
        result = await check(registry.url)
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.MANIFEST_CORRUPT and "byte limit" in message
    assert registry.count("GET", "/blobs/") == 0


async def test_a_manifest_with_40000_layers_is_refused_in_a_handful_of_requests() -> None:
    registry = FakeRegistry()
    layers = ",".join(f'{{"digest":"{digest(str(i).encode())}","size":1}}' for i in range(40_000))
    config = f'{{"digest":"{digest(registry.config)}","size":2}}'
    body = f'{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{config},"layers":[{layers}]}}'
    assert len(body) < 4 * 1024 * 1024
    registry.put_manifest(body.encode(), TAG)
    async with running(registry):
        result = await check(registry.url)
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.MANIFEST_CORRUPT and "40000 layers, more than the 1024 checked" in message
    assert len(registry.requests) <= 3


# -- true messages ------------------------------------------------------------------------------


async def test_a_refused_connection_says_refused_not_tls() -> None:
    async with raw_server(lambda r, w: asyncio.sleep(0)) as url:
        port = url.rsplit(":", 1)[1]
    result = await check(f"http://127.0.0.1:{port}")
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.UNREACHABLE and "connection refused" in message and "TLS" not in message


async def test_a_name_that_does_not_resolve_says_dns() -> None:
    result = await check("http://no-such-registry.invalid")
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.UNREACHABLE and "DNS lookup failed" in message and "TLS" not in message


async def test_a_5xx_on_a_blob_names_the_blob_and_quotes_the_registrys_error() -> None:
    registry = FakeRegistry()

    async def broken(request: web.Request) -> web.Response | None:
        if registry.layer_digest in request.path:
            return oci_error(503, "UNAVAILABLE", "core could not reach origin")
        return None

    registry.hooks.append(broken)
    async with running(registry):
        result = await check(registry.url)
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.UNREACHABLE
    assert f"layer 0 sha256:{registry.layer_digest[7:19]}" in message
    assert "HTTP 503 after 3 attempts (UNAVAILABLE: core could not reach origin)" in message


async def test_a_missing_layer_quotes_the_registrys_code() -> None:
    registry = FakeRegistry()
    del registry.blobs[registry.layer_digest]
    async with running(registry):
        result = await check(registry.url)
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.LAYER_MISSING and "missing (404 BLOB_UNKNOWN)" in message


@pytest.mark.parametrize("status", [400, 405, 501])
async def test_a_head_that_is_not_supported_falls_back_to_get(status: int) -> None:
    registry = FakeRegistry()

    async def no_head(request: web.Request) -> web.Response | None:
        return web.Response(status=status) if request.method == "HEAD" else None

    registry.hooks.append(no_head)
    async with running(registry):
        full = await check(registry.url)
        head = await check(registry.url, mode=Mode.HEAD)
    assert hop_verdict(full)[0] is Verdict.HEALTHY
    verdict, message = hop_verdict(head)
    assert verdict is Verdict.HEALTHY and "2 blobs present (HEAD)" in message


async def test_head_mode_says_present_not_verified() -> None:
    registry = FakeRegistry()
    async with running(registry):
        result = await check(registry.url, mode=Mode.HEAD)
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.HEALTHY
    assert "2 blobs present (HEAD)" in message and "blobs verified" not in message


async def test_a_missing_child_of_an_index_is_manifest_missing() -> None:
    registry = FakeRegistry()
    child = registry.manifest
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": digest(child + b" "),
                    "size": len(child) + 1,
                    "platform": {"os": "linux", "architecture": "amd64"},
                }
            ],
        }
    ).encode()
    registry.put_manifest(index, TAG, OCI_INDEX)
    async with running(registry):
        result = await check(registry.url)
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.MANIFEST_MISSING
    assert "(linux/amd64) missing (404 MANIFEST_UNKNOWN)" in message


async def test_registry_text_with_newlines_and_escapes_is_printed_safely() -> None:
    registry = FakeRegistry()
    nasty = "application/x\n\x1b[31mEVIL\x1b[0m"
    body = json.dumps(json.loads(registry.manifest)).replace(
        '"application/vnd.cncf.flux.content.v1.tar+gzip"', json.dumps(nasty)
    )
    registry.put_manifest(body.encode(), TAG)
    async with running(registry):
        result = await check(registry.url)
    text = to_text(result)
    assert "\x1b" not in text
    assert all("EVIL" not in line or line.count("\n") == 0 for line in text.splitlines())


# -- an honest cache ----------------------------------------------------------------------------


async def test_a_targets_next_check_fetches_every_blob_again_while_other_targets_share() -> None:
    registry = FakeRegistry()
    cache = BlobCache(ttl=300)
    async with running(registry):
        await check(registry.url, cache=cache, asker=("team-a", "app"))
        first = registry.count("GET", "/blobs/")
        second = await check(registry.url, cache=cache, asker=("team-a", "app"))
        again = registry.count("GET", "/blobs/") - first
        other = await check(registry.url, cache=cache, asker=("team-b", "app"))
        shared = registry.count("GET", "/blobs/") - first - again
    assert first == 2 and again == 2  # the same target never trusts its own last check
    assert shared == 0  # another target of the chain shares what was verified this interval
    layers = to_json(other)["hops"][0]["layers"]
    assert layers[0]["cached"] is True and to_json(second)["hops"][0]["layers"][0]["cached"] is False


async def test_a_digest_check_sends_a_request_to_the_hop_and_a_dead_hop_is_never_healthy() -> None:
    registry = FakeRegistry()
    cache = BlobCache(ttl=300)
    ref = f"{REPOSITORY}@{digest(registry.manifest)}"
    async with running(registry):
        url = registry.url
        await check(url, ref, cache=cache, asker=("team-a", "one"))
        before = len(registry.requests)
        await check(url, ref, cache=cache, asker=("team-b", "two"))
        assert len(registry.requests) > before  # the manifest by digest at least
    result = await check(url, ref, cache=cache, asker=("team-c", "three"))  # the hop is gone now
    assert result.judgement.health is Health.UNKNOWN


# -- fair and alive -----------------------------------------------------------------------------


async def test_a_known_down_hop_gets_no_more_requests_until_its_next_probe() -> None:
    connections = []

    async def counting_black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await black_hole(reader, writer)

    settings = EngineSettings(timeout=0.3, retries=0, backoff=0)
    async with raw_server(counting_black_hole) as url:
        client = RegistryClient.for_hop(Hop.from_url("hop", url), settings)
        try:
            for _ in range(3):
                await check(url, client=client)
            tried = len(connections)
            result = await check(url, client=client)
        finally:
            await client.aclose()
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.UNREACHABLE and "hop down" in message
    assert len(connections) == tried  # known down: the fourth check asked nothing


async def test_a_black_holed_chain_does_not_starve_a_healthy_one() -> None:
    registry = FakeRegistry()
    settings = EngineSettings(timeout=1.0, retries=1, backoff=0.01, parallel_checks=4)
    store = ResultStore()
    scheduler = Scheduler(store=store, metrics=Metrics(store), settings=settings)
    async with raw_server(black_hole) as dead_url, running(registry):
        dead = Chain("dead", (Hop.from_url("dead", dead_url),), interval=2.0)
        good = Chain("good", (Hop.from_url("good", registry.url),), interval=2.0)
        watches = [
            Watch(Target(f"d{i}", Reference.parse(f"{dead_url[7:]}/org/app{i}:v1"), "dead"), dead)
            for i in range(40)
        ]
        watches.append(
            Watch(Target("g", Reference.parse(f"{registry.url[7:]}/{REPOSITORY}:{TAG}"), "good"), good)
        )
        scheduler.update({"dead": dead, "good": good}, watches)
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run(stop))
        await asyncio.sleep(6.5)
        stop.set()
        await asyncio.wait_for(task, 5)
    good_checks = scraped(
        scheduler.metrics, "layerwatch_checks_total", {"chain": "good", "hop": "good", "verdict": "Healthy"}
    )
    assert good_checks is not None and good_checks >= 2  # about one per 2 s interval, dead hop or not
    assert scheduler.alive()


async def test_a_ca_bundle_that_is_not_pem_is_a_verdict_and_the_scheduler_keeps_turning() -> None:
    registry = FakeRegistry()
    async with running(registry):
        result = await check(registry.url.replace("http://", "https://"), ca_pem="not a certificate")
        store = ResultStore()
        scheduler = Scheduler(store=store, metrics=Metrics(store), settings=FAST)
        bad = Chain("bad", (Hop.from_url("h", "https://127.0.0.1:1", ca_pem="garbage"),), interval=1.0)
        scheduler.update(
            {"bad": bad}, [Watch(Target("t", Reference.parse("127.0.0.1:1/org/app:v1"), "bad"), bad)]
        )
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run(stop))
        await asyncio.sleep(2.5)
        assert not task.done() and scheduler.alive()
        stop.set()
        await asyncio.wait_for(task, 5)
    verdict, message = hop_verdict(result)
    assert verdict is Verdict.UNREACHABLE and "CA bundle cannot be used" in message
    status = store.get(("", "t"))
    assert status is not None and status.result is not None
    assert "CA bundle cannot be used" in status.result.judgement.message


def test_liveness_fails_when_the_loop_stops_turning() -> None:
    now = [1000.0]
    store = ResultStore()
    scheduler = Scheduler(store=store, metrics=Metrics(store), clock=lambda: now[0])
    assert scheduler.alive()
    now[0] += 200
    assert not scheduler.alive()


async def test_a_failing_loop_turn_is_logged_and_retried_never_ends_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = ResultStore()
    scheduler = Scheduler(store=store, metrics=Metrics(store))
    calls = []

    def broken_turn() -> float:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("bug")
        return time.monotonic() + 0.05

    monkeypatch.setattr(scheduler, "_turn", broken_turn)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await asyncio.sleep(1.3)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert len(calls) >= 2


# -- bounds on configuration ---------------------------------------------------------------------


def test_an_interval_below_one_second_is_refused() -> None:
    with pytest.raises(ChainError, match="at least 1s"):
        Chain("c", (Hop.from_url("h", "https://r.example"),), interval=0.000001)


@pytest.mark.parametrize(
    ("field", "value"),
    [("timeout", -1), ("timeout", float("nan")), ("min_blob_rate", float("inf")), ("retries", -1)],
)
def test_engine_settings_refuse_values_they_cannot_run_with(field: str, value: float) -> None:
    with pytest.raises(SettingsError):
        EngineSettings(**{field: value})


def test_engine_settings_come_from_flags_then_environment() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    EngineSettings.add_arguments(parser)
    args = parser.parse_args(["--timeout", "5"])
    settings = EngineSettings.from_args(args, {"LAYERWATCH_TIMEOUT": "9", "LAYERWATCH_RETRIES": "4"})
    assert settings.timeout == 5.0 and settings.retries == 4
    with pytest.raises(SettingsError, match="LAYERWATCH_MIN_BLOB_RATE must be a number"):
        EngineSettings.from_args(parser.parse_args([]), {"LAYERWATCH_MIN_BLOB_RATE": "fast"})


def test_a_fault_never_words_a_secret_or_a_url_query() -> None:
    from layerwatch.verdict import describe_fault

    text = describe_fault(
        Fault(FaultKind.HTTP_STATUS, status=502, code="UNKNOWN", registry_message="x", attempts=3)
    )
    assert text == "HTTP 502 after 3 attempts (UNKNOWN: x)"


async def test_bytes_seen_through_another_proxy_are_never_trusted_for_the_direct_way() -> None:
    """A tenant's own proxy may serve good bytes for a URL whose hop has lost them: no false green."""
    hop, tenant_proxy = FakeRegistry(), FakeRegistry()  # the proxy answers absolute-URI requests itself
    del hop.blobs[digest(hop.layer)]
    cache = BlobCache(ttl=300)
    async with running(hop), running(tenant_proxy):
        through_proxy = await check(
            hop.url, cache=cache, asker=("team-a", "app"), proxy=Proxy(tenant_proxy.url)
        )
        asked_before = hop.count()
        direct = await check(hop.url, cache=cache, asker=("team-b", "app"))
    assert through_proxy.judgement.health is Health.HEALTHY and asked_before == 0
    assert direct.judgement.verdict is Verdict.LAYER_MISSING
    assert hop.count("GET", f"/blobs/{digest(hop.layer)}") >= 1


@pytest.mark.parametrize(
    ("credentials", "wording"),
    [(None, "without credentials (none configured)"), (Credentials("robot", "pw"), "with the configured")],
)
async def test_a_refusal_says_whether_any_credentials_were_sent(
    credentials: Credentials | None, wording: str
) -> None:
    """A private project asked anonymously needs a Secret, not a new robot password.

    As Harbor does: its token service hands a token to anyone, and ``/v2/`` refuses that token.
    """
    registry = FakeRegistry()

    async def refuse(request: web.Request) -> web.Response:
        if request.path == "/token":
            return web.json_response({"token": "t"})
        if "authorization" not in request.headers:
            realm = f'Bearer realm="{registry.url}/token",service="harbor-registry"'
            return web.Response(status=401, headers={"WWW-Authenticate": realm})
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="harbor"'})

    registry.hooks.append(refuse)
    async with running(registry):
        result = await check(registry.url, credentials=credentials)
    assert result.judgement.verdict is Verdict.AUTH_FAILED
    assert wording in result.judgement.hops[0].message and "pw" not in result.judgement.hops[0].message
