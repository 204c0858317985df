"""The metrics port: the status page people open, the JSON behind it, /metrics and /healthz."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from layerwatch import __version__
from layerwatch.chain import Chain, Mode, Target
from layerwatch.metrics import Metrics
from layerwatch.observation import BlobStatus, FaultKind
from layerwatch.store import ResultStore, TargetStatus
from layerwatch.verdict import HopVerdict
from layerwatch.web import WebServer, status_document, status_page

from .builders import CHAIN, REFERENCE, check_result, failure, healthy_chain, observe, replace_at

EDGE, CORE, ORIGIN = 0, 1, 2
MISSING = {0: (BlobStatus.MISSING, "missing (404)")}
SCRIPT = "<script>alert('x')</script>"


def target(name: str, namespace: str = "team-a", chain: str = "corp") -> Target:
    return Target(name=name, reference=REFERENCE, chain=chain, namespace=namespace)


def core_lost_a_layer() -> Any:
    return check_result([observe(EDGE, blobs=MISSING), observe(CORE, blobs=MISSING), observe(ORIGIN)])


def edge_unreachable() -> Any:
    return check_result(replace_at(healthy_chain(), EDGE, observe(EDGE, failure=failure(FaultKind.REFUSED))))


def populated() -> ResultStore:
    store = ResultStore()
    store.put(TargetStatus(target("healthy"), "corp", check_result(healthy_chain())))
    store.put(TargetStatus(target("broken"), "corp", core_lost_a_layer()))
    store.put(TargetStatus(target("unreachable"), "corp", edge_unreachable()))
    store.put(TargetStatus(target("semver"), "corp", pending="semver ref not resolved by Flux yet"))
    store.put(TargetStatus(target("new"), "corp"))
    return store


UP = {("corp", "edge"): True, ("corp", "core"): False}


# -- /api/v1/status --------------------------------------------------------------------------------


def test_the_status_document_counts_artifacts_by_health() -> None:
    document = status_document(populated(), {"corp": CHAIN}, UP)
    assert document["summary"] == {"artifacts": 5, "healthy": 1, "unhealthy": 1, "unknown": 3}
    assert document["version"] == __version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", document["generatedAt"])
    json.dumps(document)  # serialisable as is


def test_chains_list_their_hops_edge_first_with_whether_each_answers() -> None:
    head = dataclasses.replace(CHAIN, name="b-head", mode=Mode.HEAD, interval=60.0)
    document = status_document(ResultStore(), {"corp": CHAIN, "b-head": head}, UP)
    assert [c["name"] for c in document["chains"]] == ["b-head", "corp"]
    corp = document["chains"][1]
    assert (corp["interval"], corp["mode"]) == (300.0, "full")
    assert corp["hops"] == [
        {"name": "edge", "url": "https://a.example/p-core", "up": True},
        {"name": "core", "url": "https://b.example/p-ghcr", "up": False},
        {"name": "origin", "url": "https://ghcr.io", "up": None},  # not pinged yet
    ]


def test_each_artifact_has_its_verdict_blame_and_per_hop_verdicts() -> None:
    artifacts = {a["name"]: a for a in status_document(populated(), {"corp": CHAIN}, UP)["artifacts"]}
    broken = artifacts["broken"]
    assert (broken["namespace"], broken["chain"], broken["reference"]) == (
        "team-a",
        "corp",
        "oci://a.example/p-core/p-ghcr/org/app:v1",
    )
    assert (broken["verdict"], broken["health"], broken["blame"]) == ("LayerMissing", "unhealthy", "core")
    assert broken["message"].startswith("hop core (b.example/p-ghcr/org/app): layer 0 ")
    assert broken["checkedAt"] == "2023-11-14T22:13:21Z"
    assert [(h["name"], h["verdict"], h["health"]) for h in broken["hops"]] == [
        ("edge", "LayerMissing", "unhealthy"),
        ("core", "LayerMissing", "unhealthy"),
        ("origin", "Healthy", "healthy"),
    ]
    assert [h["repository"] for h in broken["hops"]] == ["p-core/p-ghcr/org/app", "p-ghcr/org/app", "org/app"]
    assert all(h["manifestDigest"].startswith("sha256:") for h in broken["hops"])
    assert (artifacts["unreachable"]["health"], artifacts["unreachable"]["blame"]) == ("unknown", "edge")
    assert artifacts["healthy"]["blame"] is None


def test_a_pending_or_unchecked_artifact_is_unknown_with_the_reason() -> None:
    artifacts = {a["name"]: a for a in status_document(populated(), {"corp": CHAIN}, UP)["artifacts"]}
    semver = artifacts["semver"]
    assert (semver["verdict"], semver["health"], semver["hops"]) == ("Unknown", "unknown", [])
    assert semver["pending"] == semver["message"] == "semver ref not resolved by Flux yet"
    assert (artifacts["new"]["message"], artifacts["new"]["checkedAt"]) == ("not checked yet", None)


# -- the status page -------------------------------------------------------------------------------


def page(store: ResultStore | None = None, chains: dict[str, Chain] | None = None) -> str:
    return status_page(
        status_document(store or populated(), {"corp": CHAIN} if chains is None else chains, UP)
    )


def test_the_page_shows_one_row_per_artifact_and_one_cell_per_hop() -> None:
    html = page()
    assert html.count('<tr data-artifact="') == 5
    assert 'data-artifact="team-a/broken"' in html
    assert html.count('data-blamed="true"') == 2  # broken at core, unreachable at edge
    assert 'data-hop="core" data-verdict="LayerMissing" data-blamed="true"' in html
    assert '<span class="down">down</span>' in html and '<span class="up">up</span>' in html


def test_a_pending_target_is_shown_with_why_it_is_not_checked() -> None:
    html = page()
    row = re.search(r'<tr data-artifact="team-a/semver">.*?</tr>', html)
    assert row is not None
    assert "semver ref not resolved by Flux yet" in row.group(0)
    assert row.group(0).count('class="none"') == 3  # no hop checked


def test_every_user_controlled_string_is_escaped() -> None:
    hostile = dataclasses.replace(target(SCRIPT, namespace='ns"><marquee>'), chain="corp")
    result = core_lost_a_layer()
    judgement = result.judgement
    hops = tuple(HopVerdict(h.hop, h.verdict, f"{h.message} {SCRIPT}") for h in judgement.hops)
    result = dataclasses.replace(result, judgement=dataclasses.replace(judgement, hops=hops))
    store = ResultStore()
    store.put(TargetStatus(hostile, 'chain"<blink>', result))
    store.put(
        TargetStatus(dataclasses.replace(hostile, name="p"), 'chain"<blink>', pending=f"pending {SCRIPT}")
    )
    evil_chain = dataclasses.replace(CHAIN, name='chain"<blink>')
    html = page(store, {'chain"<blink>': evil_chain})
    assert "<script>" not in html
    assert "<marquee>" not in html and "<blink>" not in html
    assert 'ns"><marquee>' not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert 'id="chain-chain&quot;&lt;blink&gt;"' in html
    assert "pending &lt;script&gt;" in html  # the pending row was rendered, escaped
    assert html.count("&lt;/script&gt;") >= 4  # name, pending reason and the unhealthy hop messages


def test_the_page_loads_nothing_from_other_hosts() -> None:
    html = page()
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?(?:[a-z]+:)?//""", html, re.IGNORECASE)
    assert "@import" not in html and "url(" not in html
    assert "<script" not in html.lower()
    links = re.findall(r'href="([^"]*)"', html)
    assert links == ["api/v1/status", "metrics"]  # relative: works behind a path-prefixing proxy


def test_a_page_without_chains_says_so() -> None:
    assert "No chains configured yet." in page(ResultStore(), {})


# -- the server ------------------------------------------------------------------------------------


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    clients: list[TestClient[Any, Any]] = []

    async def start(healthy: bool = True) -> TestClient[Any, Any]:
        metrics = Metrics(populated())
        metrics.set_chain("corp", CHAIN.interval, [h.name for h in CHAIN.hops])
        server = WebServer(metrics, lambda: {"corp": CHAIN}, healthy=lambda: healthy)
        client: TestClient[Any, Any] = TestClient(TestServer(server.app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def test_healthz_answers_ok_or_503(serve: Callable[..., Any]) -> None:
    ok = await serve()
    response = await ok.get("/healthz")
    assert (response.status, await response.json()) == (200, {"status": "ok"})
    sick = await serve(healthy=False)
    response = await sick.get("/healthz")
    assert (response.status, await response.json()) == (503, {"status": "unhealthy"})


async def test_metrics_are_served_in_the_prometheus_text_format(serve: Callable[..., Any]) -> None:
    client = await serve()
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    body = await response.text()
    assert f'layerwatch_build_info{{version="{__version__}"}} 1.0' in body
    assert (
        'layerwatch_artifact_hop_healthy{chain="corp",hop="core",name="broken",namespace="team-a"} 0.0'
        in body
    )


async def test_the_status_api_serves_the_status_document_as_json(serve: Callable[..., Any]) -> None:
    client = await serve()
    response = await client.get("/api/v1/status")
    assert response.status == 200
    assert response.content_type == "application/json"
    document = await response.json()
    assert document["summary"] == {"artifacts": 5, "healthy": 1, "unhealthy": 1, "unknown": 3}
    assert [c["name"] for c in document["chains"]] == ["corp"]


async def test_the_status_page_is_served_as_html(serve: Callable[..., Any]) -> None:
    client = await serve()
    response = await client.get("/")
    assert response.status == 200
    assert response.content_type == "text/html"
    assert 'data-artifact="team-a/broken"' in await response.text()
