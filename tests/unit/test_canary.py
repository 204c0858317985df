"""The cold-path canary against in-process registries: push, pull edge first, clean up, report.

A chain of three ``PushRegistry`` servers (edge proxy -> core proxy -> origin, with Harbor-style
project prefixes) stands in for the real thing; hooks make one hop misbehave the way a cold Harbor
does. Scheduling runs on a fake clock with the run itself replaced, so no test waits on time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web

from layerwatch import canary as canary_module
from layerwatch import scheduler as scheduler_module
from layerwatch.canary import CLEANUP_REFUSED, PUSH_FAILED, CanaryResult, build_artifact, run_canary
from layerwatch.chain import Canary, Chain, ChainError, Credentials, Hop, chain_from_spec
from layerwatch.config import FileSettings, load_chain_file
from layerwatch.kube.api import KubeApi
from layerwatch.kube.service import OperatorOptions, OperatorService, _settle
from layerwatch.manifest import FLUX_CONFIG, FLUX_CONTENT, parse
from layerwatch.metrics import Metrics
from layerwatch.registry import RegistryClient
from layerwatch.scheduler import JITTER, Scheduler, first_due_offset
from layerwatch.store import ResultStore
from layerwatch.verdict import Health
from layerwatch.web import status_document, status_page

from .builders import scraped
from .fake_registry import FAST, PushRegistry, digest, running, running_all

REPOSITORY = "layerwatch/canary"
PUSHER = ("canary-bot", "s3cret-push")
PUSH_CREDENTIALS = Credentials(*PUSHER)
BASIC = "Basic " + base64.b64encode(":".join(PUSHER).encode()).decode()


@dataclasses.dataclass
class Lab:
    edge: PushRegistry
    core: PushRegistry
    origin: PushRegistry
    log: list[tuple[str, str, str, str]]

    def chain(self, *, keep: int = 3, credentials: Credentials | None = PUSH_CREDENTIALS) -> Chain:
        hops = (
            Hop.from_url("edge", f"{self.edge.url}/p-core"),
            Hop.from_url("core", f"{self.core.url}/p-ghcr"),
            Hop.from_url("origin", self.origin.url),
        )
        return Chain("corp", hops, interval=60.0, canary=Canary(REPOSITORY, credentials, keep))


@contextlib.asynccontextmanager
async def lab(**origin_options: Any) -> AsyncIterator[Lab]:
    log: list[tuple[str, str, str, str]] = []
    origin = PushRegistry("origin", push_credentials=PUSHER, log=log, **origin_options)
    core = PushRegistry("core", upstream=origin, prefix="p-ghcr", log=log)
    edge = PushRegistry("edge", upstream=core, prefix="p-core", log=log)
    async with running_all(origin, core, edge):
        yield Lab(edge, core, origin, log)


async def run(chain: Chain, clock: float = 1_765_000_000.0) -> CanaryResult:
    push = RegistryClient.for_hop(chain.canary_push_hop(), FAST)
    clients = {hop.name: RegistryClient.for_hop(hop, FAST) for hop in chain.hops}
    try:
        return await run_canary(chain, push, clients, clock=lambda: clock)
    finally:
        for client in [push, *clients.values()]:
            await client.aclose()


def empty_cold_blobs(registry: PushRegistry) -> None:
    """Harbor in front of a cold Harbor: a blob it has not cached yet is 200 with no bytes."""

    async def hook(request: web.Request) -> web.StreamResponse | None:
        name = request.path.removeprefix("/v2/").partition("/blobs/")[0]
        ref = request.path.rpartition("/")[2]
        if request.method == "GET" and "/blobs/sha256:" in request.path and (name, ref) not in registry.blobs:
            return web.Response(status=200, headers={"Content-Length": "0"})
        return None

    registry.hooks.append(hook)


# -- the artifact ----------------------------------------------------------------------------------


def test_each_canary_is_a_new_flux_artifact_with_a_layer_above_harbors_empty_blob_threshold() -> None:
    first, second = build_artifact(1000.0, b"a" * 16), build_artifact(1000.0, b"b" * 16)
    manifest = parse(first.manifest, "application/vnd.oci.image.manifest.v1+json")
    assert first.tag == "canary-1000"
    assert manifest.config.media_type == FLUX_CONFIG
    assert [layer.media_type for layer in manifest.layers] == [FLUX_CONTENT]
    assert manifest.layers[0].size > 4096  # a cold Harbor behind Harbor empties blobs over ~2 KiB
    assert digest(first.manifest) != digest(second.manifest)
    assert digest(first.layer) != digest(second.layer) and digest(first.config) != digest(second.config)


# -- runs against registries -----------------------------------------------------------------------


async def test_a_healthy_chain_passes_the_canary_pulled_edge_first() -> None:
    async with lab() as hops:
        result = await run(hops.chain())
        assert result.health is Health.HEALTHY, result.message
        assert result.reason == "Healthy"
        assert result.condition(4) == {
            "type": "ColdPathHealthy",
            "status": "True",
            "reason": "Healthy",
            "message": result.message,
            "observedGeneration": 4,
        }
        assert hops.origin.tags(REPOSITORY) == [result.tag]
        # after the push, layerwatch asks the edge for everything before it asks any inner hop
        ours = [(hop, method) for hop, method, path, agent in hops.log if agent == "layerwatch"]
        pushed = max(i for i, (_, method) in enumerate(ours) if method in ("POST", "PUT"))
        pulls = [hop for hop, _ in ours[pushed + 1 :]]
        assert pulls[: pulls.count("edge")] == ["edge"] * pulls.count("edge")
        assert pulls.count("edge") >= 4 and {"core", "origin"} <= set(pulls)


async def test_a_cold_edge_that_serves_empty_blobs_breaks_the_cold_path_at_the_edge() -> None:
    async with lab() as hops:
        empty_cold_blobs(hops.edge)
        result = await run(hops.chain())
    assert result.health is Health.UNHEALTHY
    assert result.reason == "LayerCorrupt"
    assert result.result is not None and result.result.judgement.blame == "edge"
    condition = result.condition(1)
    assert condition["status"] == "False" and condition["reason"] == "LayerCorrupt"
    assert "hop edge" in str(condition["message"]) and "0 of" in str(condition["message"])


async def test_a_refused_push_is_unknown_and_says_so_and_nothing_is_pulled() -> None:
    async with lab() as hops:
        result = await run(hops.chain(credentials=Credentials("canary-bot", "wrong")))
        edge_requests = list(hops.edge.requests)
    assert result.health is Health.UNKNOWN
    condition = result.condition(1)
    assert condition["status"] == "Unknown" and condition["reason"] == PUSH_FAILED
    assert "canary push to the origin" in str(condition["message"])
    assert "HTTP 401" in str(condition["message"])
    assert "wrong" not in str(condition["message"])
    assert edge_requests == []


async def test_the_push_credentials_go_to_the_origin_only() -> None:
    async with lab() as hops:
        result = await run(hops.chain())
        assert result.health is Health.HEALTHY, result.message
        writes = [r for r in hops.origin.requests if r[0] in ("POST", "PUT", "DELETE")]
        assert {auth for _, _, auth in writes} == {None, BASIC}  # sent once the origin asks for them
        assert all(auth is None for _, _, auth in hops.edge.requests + hops.core.requests)
        assert all(auth is None for method, _, auth in hops.origin.requests if method in ("GET", "HEAD"))
    assert PUSHER[1] not in result.message


async def test_an_upload_location_on_another_host_is_refused_and_the_credentials_never_go_there() -> None:
    """The origin (or whoever answers in its name) sends the upload elsewhere: the canary's push
    credentials stay with the origin, and the run says why the cold path was not checked."""
    elsewhere = PushRegistry("elsewhere")  # records every request that reaches it
    async with lab() as hops, running(elsewhere):

        async def redirect_upload(request: web.Request) -> web.StreamResponse | None:
            if request.method != "POST" or request.headers.get("Authorization") != BASIC:
                return None
            location = f"http://localhost:{elsewhere.port}/v2/{REPOSITORY}/blobs/uploads/s1?_state=x"
            return web.Response(status=202, headers={"Location": location})

        hops.origin.hooks.append(redirect_upload)
        result = await run(hops.chain())
        edge_requests = list(hops.edge.requests)
    assert elsewhere.requests == []
    assert result.health is Health.UNKNOWN
    condition = result.condition(1)
    assert condition["status"] == "Unknown" and condition["reason"] == PUSH_FAILED
    assert "canary push to the origin" in str(condition["message"])
    assert "upload location missing or elsewhere" in str(condition["message"])
    assert "cold path not checked" in str(condition["message"])
    assert PUSHER[1] not in str(condition["message"])
    assert edge_requests == []


async def test_old_canary_tags_are_deleted_by_digest_keeping_the_newest() -> None:
    async with lab() as hops:
        chain = hops.chain(keep=2)
        tags = []
        for second in range(5):
            result = await run(chain, clock=1_765_000_000.0 + second)
            assert result.health is Health.HEALTHY, result.message
            tags.append(result.tag)
        assert hops.origin.tags(REPOSITORY) == tags[-2:]
        deletes = [path for method, path, auth in hops.origin.requests if method == "DELETE" and auth]
        assert len(deletes) == 3 and all("/manifests/sha256:" in path for path in deletes)
        assert result.cleanup_warning is None


async def test_a_registry_that_refuses_deletes_gets_a_warning_then_a_bounded_pile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(canary_module, "PILE_LIMIT", 3)
    async with lab(deletes=False) as hops:
        chain = hops.chain(keep=1)
        results = [await run(chain, clock=1_765_000_000.0 + second) for second in range(5)]
        assert len(hops.origin.tags(REPOSITORY)) == 3
    warned = results[1]
    assert warned.health is Health.HEALTHY
    assert warned.cleanup_warning is not None and "HTTP 405" in warned.cleanup_warning
    assert "not cleaned up" in warned.condition(1)["message"]  # type: ignore[operator]
    paused = results[-1]
    assert paused.health is Health.UNKNOWN and paused.reason == CLEANUP_REFUSED
    assert "pushes no more" in paused.message


async def test_a_hop_answering_garbage_ends_as_a_verdict_not_a_crash() -> None:
    async with lab() as hops:

        async def broken(request: web.Request) -> web.StreamResponse | None:
            return web.Response(status=200, body=b"\x00" * 10) if "/manifests/" in request.path else None

        hops.core.hooks.append(broken)
        result = await run(hops.chain())
    assert result.health is Health.UNHEALTHY
    assert result.result is not None and result.result.judgement.blame == "core"


# -- scheduling ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 50_000.0

    def __call__(self) -> float:
        return self.now


async def test_the_canary_runs_once_per_interval_per_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[str] = []

    async def fake_run(chain: Chain, *_: Any, **__: Any) -> CanaryResult:
        runs.append(chain.name)
        return CanaryResult(chain.name, 1.0, 2.0, unknown_message="fake")

    monkeypatch.setattr(scheduler_module, "run_canary", fake_run)
    chain = Chain(
        "corp", (Hop.from_url("origin", "https://registry.example"),), interval=60.0, canary=Canary("c/x")
    )
    plain = dataclasses.replace(chain, name="plain", canary=None)
    clock = FakeClock()
    store = ResultStore()
    scheduler = Scheduler(store=store, metrics=Metrics(store), clock=clock)
    scheduler.update({"corp": chain, "plain": plain}, [])
    first = clock.now + first_due_offset(("canary", "corp"), 60.0)
    clock.now = first - 0.01
    scheduler._turn()
    await asyncio.sleep(0)
    assert runs == []
    clock.now = first
    for _ in range(3):  # turning again in the same instant starts nothing more
        scheduler._turn()
        await asyncio.sleep(0)
    assert runs == ["corp"]
    clock.now = first + 60.0 * (1 - JITTER) - 0.01
    scheduler._turn()
    await asyncio.sleep(0)
    assert runs == ["corp"]
    clock.now = first + 60.0 * (1 + JITTER)
    scheduler._turn()
    await asyncio.sleep(0)
    assert runs == ["corp", "corp"]
    assert store.canaries()["corp"].unknown_message == "fake"
    scheduler.update({"plain": plain}, [])  # the canary is switched off: its result goes too
    assert store.canaries() == {}
    await scheduler.aclose()


async def test_a_canary_run_that_fails_unexpectedly_still_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*_: Any, **__: Any) -> CanaryResult:
        raise RuntimeError("bug")

    monkeypatch.setattr(scheduler_module, "run_canary", broken)
    chain = Chain("corp", (Hop.from_url("origin", "https://r.example"),), interval=60.0, canary=Canary("c/x"))
    store = ResultStore()
    scheduler = Scheduler(store=store, metrics=Metrics(store))
    scheduler.update({"corp": chain}, [])
    result = await scheduler.canary_now("corp")
    assert result is not None and result.health is Health.UNKNOWN
    assert "internal error" in result.message
    await scheduler.aclose()


# -- reporting: metrics and the status page ---------------------------------------------------------


async def test_metrics_and_status_page_show_the_cold_path_per_chain() -> None:
    async with lab() as hops:
        empty_cold_blobs(hops.edge)
        chain = hops.chain()
        result = await run(chain)
    store = ResultStore()
    store.put_canary(result)
    metrics = Metrics(store)
    assert scraped(metrics, "layerwatch_cold_path_healthy", {"chain": "corp"}) == 0.0
    blamed = {"chain": "corp", "hop": "edge", "verdict": "LayerCorrupt"}
    assert scraped(metrics, "layerwatch_canary_blame", blamed) == 1.0
    assert scraped(metrics, "layerwatch_canary_verdict", blamed) == 1.0
    core = {"chain": "corp", "hop": "core", "verdict": "Healthy"}
    assert scraped(metrics, "layerwatch_canary_verdict", core) == 1.0
    assert (
        scraped(metrics, "layerwatch_canary_last_run_timestamp_seconds", {"chain": "corp"}) == result.finished
    )
    document = status_document(store, {"corp": chain}, {})
    canary = document["chains"][0]["canary"]
    assert (
        canary["health"] == "unhealthy" and canary["reason"] == "LayerCorrupt" and canary["blame"] == "edge"
    )
    assert canary["tag"] == result.tag
    page = status_page(json.loads(json.dumps(document)))
    assert "cold path (canary): <b>LayerCorrupt</b>" in page
    assert "runbooks.md#layerwatchcoldpathbroken" in page
    # no series per OCIRepository comes from the canary
    assert "layerwatch_artifact_hop_verdict{" not in metrics.exposition().decode()


# -- configuration ---------------------------------------------------------------------------------


def test_canary_spec_is_read_strictly() -> None:
    spec: dict[str, Any] = {"hops": [{"name": "origin", "url": "https://r.example"}]}
    chain = chain_from_spec("c", {**spec, "canary": {"repository": "lw/canary"}})
    assert chain.canary == Canary("lw/canary", None, 3)
    for bad, words in (
        ({"repository": "Not/Valid"}, "canary.repository"),
        ({}, "canary.repository is required"),
        ({"repository": "a/b", "keep": 0}, "canary.keep"),
        ({"repository": "a/b", "repo": "x"}, "unknown key 'repo'"),
        ("yes", "must be a mapping"),
    ):
        with pytest.raises(ChainError, match=words):
            chain_from_spec("c", {**spec, "canary": bad})


def test_a_chain_file_gives_the_canary_its_own_credentials(tmp_path: Path) -> None:
    path = tmp_path / "chain.yaml"
    path.write_text(
        "kind: ProxyChain\nmetadata: {name: c}\nspec:\n"
        "  hops:\n  - {name: edge, url: 'https://edge.example/p'}\n"
        "  - {name: origin, url: 'https://origin.example', username: puller, password: pull}\n"
        "  canary: {repository: lw/canary, username: pusher, password: push, keep: 5}\n"
    )
    chain = load_chain_file(path, FileSettings())
    assert chain.canary == Canary("lw/canary", Credentials("pusher", "push"), 5)
    push = chain.canary_push_hop()
    assert (push.url, push.credentials) == ("https://origin.example", Credentials("pusher", "push"))
    assert chain.origin.credentials == Credentials("puller", "pull")  # the hop keeps its own
    assert str(chain.canary_reference("canary-1")) == "edge.example/p/lw/canary:canary-1"
    path.write_text(path.read_text().replace("username: pusher, password: push", "secretRef: {name: s}"))
    with pytest.raises(ChainError, match="secretRef needs a cluster"):
        load_chain_file(path, FileSettings())


# -- the operator: ProxyChain condition and the push Secret ----------------------------------------


class SecretsOnly:
    """The one KubeApi call planning a chain makes here: a Secret's credentials, recorded."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str]] = []

    async def credentials(self, namespace: str, name: str, host: str) -> Credentials:
        self.asked.append((namespace, name, host))
        return Credentials(*PUSHER)


CANARY_BODY: dict[str, Any] = {
    "metadata": {"name": "corp", "generation": 2},
    "spec": {
        "hops": [
            {"name": "edge", "url": "https://edge.example/p-core"},
            {"name": "origin", "url": "https://origin.example"},
        ],
        "canary": {"repository": "lw/canary", "secretRef": {"name": "canary-push"}},
    },
}


async def test_the_operator_reads_the_canary_secret_for_the_origin_host_only() -> None:
    api = SecretsOnly()
    service = OperatorService(cast(KubeApi, api), OperatorOptions(namespace="layerwatch"))
    chain = await service.plan_chain("corp", CANARY_BODY)
    assert api.asked == [("layerwatch", "canary-push", "origin.example")]
    assert chain.canary == Canary("lw/canary", Credentials(*PUSHER), 3)
    assert [hop.credentials for hop in chain.hops] == [None, None]  # no hop gets the push Secret


async def test_the_proxychain_gets_a_cold_path_condition_from_the_last_canary() -> None:
    service = OperatorService(cast(KubeApi, SecretsOnly()), OperatorOptions())
    chain = await service.plan_chain("corp", CANARY_BODY)
    service.chains, service.chain_bodies = {"corp": chain}, {"corp": CANARY_BODY}
    waiting = service.chain_status("corp")["conditions"]
    assert [c["type"] for c in waiting] == ["Ready", "ColdPathHealthy"]
    assert (waiting[1]["status"], waiting[1]["reason"]) == ("Unknown", "Pending")
    async with lab() as hops:
        empty_cold_blobs(hops.edge)
        broken = await run(hops.chain())
        again = await run(hops.chain(), clock=1_765_000_100.0)
    service.store.put_canary(dataclasses.replace(broken, chain="corp"))
    first = service.chain_status("corp")
    condition = first["conditions"][1]
    assert (condition["status"], condition["reason"]) == ("False", "LayerCorrupt")
    assert condition["message"].startswith("hop edge (") and condition["observedGeneration"] == 2
    # the next canary (a new digest) with the same finding keeps the written message: no write per run
    service.store.put_canary(dataclasses.replace(again, chain="corp"))
    later = _settle(first, service.chain_status("corp"), time.time())
    assert later["conditions"][1] == condition
    assert again.message != broken.message


async def test_with_shards_only_shard_zero_runs_the_canary_and_reads_its_secret() -> None:
    api = SecretsOnly()
    other = OperatorService(cast(KubeApi, api), OperatorOptions(shard_index=1, shard_count=3))
    assert (await other.plan_chain("corp", CANARY_BODY)).canary is None
    assert api.asked == []
    first = OperatorService(cast(KubeApi, api), OperatorOptions(shard_index=0, shard_count=3))
    assert (await first.plan_chain("corp", CANARY_BODY)).canary is not None


async def test_tags_that_cannot_be_listed_are_not_piled_up_further() -> None:
    async with lab() as hops:

        async def no_listing(request: web.Request) -> web.StreamResponse | None:
            return web.Response(status=403) if "/tags/list" in request.path else None

        hops.origin.hooks.append(no_listing)
        result = await run(hops.chain())
        assert hops.origin.tags(REPOSITORY) == []
    assert result.health is Health.UNKNOWN and result.reason == CLEANUP_REFUSED
    assert "HTTP 403" in result.message and "pushes no more" in result.message
