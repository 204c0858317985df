"""Edge first: each hop asks for an object only after the hops in front of it had their answer.

Three in-process registries stand for edge -> core -> origin. A proxy cache that layerwatch pulls
through before the edge is asked is warm when the edge asks, so a first-pull failure (Harbor's
cold chain answering empty blobs) would never show; these tests record the order in which the
fakes see requests and answer them, and that waiting for a slow edge never makes core look broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import jsonschema
import pytest
from aiohttp import web

from layerwatch.chain import Chain, Hop
from layerwatch.check import EdgeFirst, check_target
from layerwatch.observation import Answer
from layerwatch.reference import Reference
from layerwatch.registry import RegistryClient
from layerwatch.report import passed_on, to_json, to_text
from layerwatch.settings import EngineSettings
from layerwatch.verdict import CheckResult

from .fake_registry import REPOSITORY, TAG, FakeRegistry, check, digest, running

HOPS = ("edge", "core", "origin")
SETTINGS = EngineSettings(timeout=5.0, retries=1, retry_budget=2.0, backoff=0.01, check_deadline=20.0)
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "report.schema.json").read_text())
Log = list[tuple[str, str, str]]
"""(hop, "asked" | "answered", object): the last path segment, a tag or a digest."""


def record(name: str, registry: FakeRegistry, log: Log, delays: Mapping[str, float] | None = None) -> None:
    """Log when ``registry`` is asked for an object and when it answers (after ``delays[object]``)."""

    async def hook(request: web.Request) -> web.StreamResponse:
        asked = request.path.rsplit("/", 1)[-1]
        log.append((name, "asked", asked))
        await asyncio.sleep((delays or {}).get(asked, 0.0))
        answer = registry.serve(request)
        log.append((name, "answered", asked))
        return answer

    registry.hooks.append(hook)


@contextlib.asynccontextmanager
async def three_hops() -> AsyncIterator[dict[str, FakeRegistry]]:
    registries = {name: FakeRegistry() for name in HOPS}
    async with running(registries["edge"]), running(registries["core"]), running(registries["origin"]):
        yield registries


async def check_chain(
    registries: Mapping[str, FakeRegistry], settings: Mapping[str, EngineSettings] | None = None
) -> CheckResult:
    """One check of ``org/app:v1`` through edge -> core -> origin (no prefixes), as the CLI runs it."""
    hops = tuple(Hop.from_url(name, registries[name].url) for name in HOPS)
    reference = Reference.parse(f"{registries['edge'].url.split('://', 1)[1]}/{REPOSITORY}:{TAG}")
    path = Chain(name="test", hops=hops).pull_path(reference)
    clients = {
        hop.name: RegistryClient.for_hop(hop, (settings or {}).get(hop.name, SETTINGS)) for hop in hops
    }
    try:
        return await check_target(reference, path, clients)
    finally:
        await asyncio.gather(*(client.aclose() for client in clients.values()))


def verdicts(result: CheckResult) -> dict[str, str]:
    return {o.hop: v.verdict.value for o, v in zip(result.observations, result.judgement.hops, strict=True)}


async def test_every_hop_asks_for_each_object_only_after_every_hop_in_front_of_it_had_its_answer() -> None:
    log: Log = []
    async with three_hops() as registries:
        edge = registries["edge"]
        slow = {TAG: 0.2, digest(edge.manifest): 0.2, digest(edge.config): 0.2, edge.layer_digest: 0.6}
        record("edge", edge, log, slow)
        record("core", registries["core"], log, {key: 0.1 for key in slow})
        record("origin", registries["origin"], log)
        result = await check_chain(registries)
    assert verdicts(result) == dict.fromkeys(HOPS, "Healthy")
    objects = {asked for _, _, asked in log}
    assert objects == {TAG, digest(edge.manifest), digest(edge.config), edge.layer_digest}
    for asked in objects:
        events = [(hop, event) for hop, event, what in log if what == asked]
        for outer, inner in (("edge", "core"), ("edge", "origin"), ("core", "origin")):
            last_answer = max(i for i, e in enumerate(events) if e == (outer, "answered"))
            first_ask = min(i for i, e in enumerate(events) if e == (inner, "asked"))
            assert last_answer < first_ask, (
                f"{inner} asked for {asked[:19]} before {outer} answered: {events}"
            )
    # a pipeline, not a queue: core has its config while the edge still serves the layer
    core_config = log.index(("core", "answered", digest(edge.config)))
    assert core_config < log.index(("edge", "answered", edge.layer_digest))


async def test_edge_first_sends_no_request_more_than_before() -> None:
    async with three_hops() as registries:
        result = await check_chain(registries)
    edge = registries["edge"]
    expected = sorted(
        [
            ("HEAD", f"/v2/{REPOSITORY}/manifests/{TAG}"),
            ("GET", f"/v2/{REPOSITORY}/manifests/{digest(edge.manifest)}"),
            ("GET", f"/v2/{REPOSITORY}/blobs/{digest(edge.config)}"),
            ("GET", f"/v2/{REPOSITORY}/blobs/{edge.layer_digest}"),
        ]
    )
    assert verdicts(result) == dict.fromkeys(HOPS, "Healthy")
    assert {name: sorted(registries[name].requests) for name in HOPS} == dict.fromkeys(HOPS, expected)


async def test_waiting_for_a_slow_edge_is_not_counted_against_cores_check_deadline() -> None:
    log: Log = []
    async with three_hops() as registries:
        record("edge", registries["edge"], log, {registries["edge"].layer_digest: 1.5})
        short = EngineSettings(timeout=5.0, retries=1, retry_budget=2.0, backoff=0.01, check_deadline=1.0)
        result = await check_chain(registries, {"core": short, "origin": short})
    assert verdicts(result) == dict.fromkeys(HOPS, "Healthy"), result.judgement


async def test_an_edge_that_never_answers_a_blob_is_unreachable_there_and_core_stays_healthy() -> None:
    never = asyncio.Event()
    async with three_hops() as registries:
        layer = registries["edge"].layer_digest

        async def hang(request: web.Request) -> web.StreamResponse | None:
            if request.path.endswith(layer):
                await never.wait()
            return None

        registries["edge"].hooks.append(hang)
        edge = EngineSettings(timeout=30.0, retries=0, check_deadline=1.5)
        core = EngineSettings(timeout=5.0, retries=0, check_deadline=1.0)
        result = await check_chain(registries, {"edge": edge, "core": core, "origin": core})
        never.set()  # let the fake's handler end before the server stops
    assert verdicts(result) == {"edge": "Unreachable", "core": "Healthy", "origin": "Healthy"}
    assert "check deadline" in result.judgement.hops[0].message
    assert registries["core"].count("GET", layer) == 1, "core still checked the layer the edge never served"


async def test_waits_end_at_the_give_up_time_even_for_a_hop_that_never_finishes() -> None:
    order = EdgeFirst(2, give_up=0.05)
    closed = order.closed(1, "blob sha256:x")
    assert closed, "core waits while the edge has not had its answer"
    await asyncio.wait_for(asyncio.wait(closed), 5.0)
    assert not order.closed(1, "blob sha256:y"), "after give-up nothing waits any more"
    order.close()


# -- what a hop passed on from its upstream ----------------------------------------------------------

UNQUOTED = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # measured on Harbor v2.15.2 (edge -> core -> origin), see tests/registry/test_harbor_order.py
        (Answer(646, "", ""), True),  # manifest GET by tag passed on: both headers sent empty
        (Answer(646, UNQUOTED, UNQUOTED), True),  # manifest GET by digest passed on
        (Answer(0, UNQUOTED, UNQUOTED), True),  # the cold chain's empty blob
        (Answer(None, None, None), True),  # a blob streamed through (chunked)
        (Answer(2, None, None), True),  # a small blob passed on with its length
        (Answer(7093, f'"{UNQUOTED}"', UNQUOTED), False),  # from the hop's own storage
        (Answer(646, f'W/"{UNQUOTED}"', None), False),
        (Answer(646, None, UNQUOTED), False),  # a digest header and no ETag: no evidence
    ],
)
def test_an_answer_counts_as_passed_on_only_by_the_headers_harbor_sends_when_passing_on(
    answer: Answer, expected: bool
) -> None:
    assert passed_on(answer) is expected


def pass_on(registry: FakeRegistry) -> None:
    """Answer as a Harbor proxy does when it has not cached anything: the upstream's bytes passed on."""

    async def hook(request: web.Request) -> web.StreamResponse | None:
        ref = request.path.rsplit("/", 1)[-1]
        if request.method != "GET" or ref == TAG:
            return None
        if "/blobs/" in request.path:
            response = web.StreamResponse()  # chunked, no ETag, no Docker-Content-Digest
            await response.prepare(request)
            await response.write(registry.blobs[ref])
            await response.write_eof()
            return response
        body, media_type = registry.manifests[ref]
        headers = {"Docker-Content-Digest": ref, "ETag": ref, "Content-Type": media_type}
        return web.Response(body=body, headers=headers)

    registry.hooks.append(hook)


async def test_the_report_counts_per_hop_what_it_passed_on_and_never_at_the_origin() -> None:
    async with three_hops() as registries:
        pass_on(registries["edge"])
        pass_on(registries["origin"])  # the origin has no upstream: never counted
        result = await check_chain(registries)
    report = to_json(result)
    jsonschema.Draft202012Validator(SCHEMA).validate(report)
    assert {hop["name"]: hop["fromUpstream"] for hop in report["hops"]} == {
        "edge": {"manifests": 1, "blobs": 2},
        "core": {"manifests": 0, "blobs": 0},
        "origin": {"manifests": 0, "blobs": 0},
    }
    text = to_text(result)
    assert "edge passed 1 manifest and 2 blobs on from its upstream (not cached at edge)" in text
    assert "core passed" not in text and "origin passed" not in text


async def test_a_blobs_facts_keep_the_length_etag_and_digest_header_its_get_was_answered_with() -> None:
    registry = FakeRegistry()

    async def empty(request: web.Request) -> web.StreamResponse | None:
        if request.path.endswith(registry.layer_digest):
            return web.Response(body=b"", headers={"ETag": registry.layer_digest})
        return None

    registry.hooks.append(empty)
    async with running(registry):
        result = await check(registry.url)
    config, layer = result.observations[0].manifests[0].blobs
    assert (layer.facts.received, layer.facts.declared) == (0, 0)
    assert layer.facts.answer == Answer(0, registry.layer_digest, None)
    assert config.facts.answer == Answer(2, f'"{digest(registry.config)}"', digest(registry.config))
    assert result.observations[0].manifest_answers[0].declared == len(registry.manifest)
