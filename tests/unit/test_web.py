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
from layerwatch.signatures import Provider, ReferrersApi, SignatureCheck, SignatureObservation
from layerwatch.store import ResultStore, TargetStatus
from layerwatch.verdict import HopVerdict
from layerwatch.web import RUNBOOKS, WebServer, runbook_url, status_document, status_page

from .builders import (
    CHAIN,
    FINISHED,
    REFERENCE,
    TAG_UNKNOWN,
    check_result,
    digest_of,
    failure,
    healthy_chain,
    observe,
    replace_at,
)

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
    assert document["summary"] == {"artifacts": 5, "healthy": 1, "unhealthy": 1, "unknown": 2, "waiting": 1}
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


def test_a_pending_artifact_is_unknown_and_an_unchecked_one_is_waiting_for_its_first_check() -> None:
    artifacts = {a["name"]: a for a in status_document(populated(), {"corp": CHAIN}, UP)["artifacts"]}
    semver = artifacts["semver"]
    assert (semver["verdict"], semver["health"]) == ("Unknown", "unknown")
    assert semver["pending"] == semver["message"] == "semver ref not resolved by Flux yet"
    new = artifacts["new"]
    assert (new["health"], new["message"], new["checkedAt"], new["since"]) == (
        "waiting",
        "waiting for the first check",
        None,
        None,
    )
    assert [(h["name"], h["health"], h["verdict"]) for h in new["hops"]] == [
        ("edge", "waiting", None),
        ("core", "waiting", None),
        ("origin", "waiting", None),
    ]


def test_broken_artifacts_come_first() -> None:
    artifacts = status_document(populated(), {"corp": CHAIN}, UP)["artifacts"]
    assert [a["name"] for a in artifacts] == ["broken", "semver", "unreachable", "new", "healthy"]


def test_since_and_the_runbook_are_given_per_artifact_and_per_hop() -> None:
    store = populated()
    later = check_result(
        [observe(EDGE, blobs=MISSING), observe(CORE, blobs=MISSING), observe(ORIGIN)], finished=FINISHED + 600
    )
    store.put(TargetStatus(target("broken"), "corp", later))
    artifacts = {a["name"]: a for a in status_document(store, {"corp": CHAIN}, UP)["artifacts"]}
    broken = artifacts["broken"]
    assert broken["since"] == "2023-11-14T22:13:21Z", "the verdict held since the first check"
    assert broken["checkedAt"] == "2023-11-14T22:23:21Z"
    assert broken["runbook"] == RUNBOOKS + "#layerwatchlayermissing"
    core = broken["hops"][1]
    assert (core["since"], core["runbook"]) == ("2023-11-14T22:13:21Z", RUNBOOKS + "#layerwatchlayermissing")
    assert broken["hops"][2]["runbook"] is None  # origin is healthy
    assert artifacts["unreachable"]["runbook"] == RUNBOOKS + "#layerwatchartifactunreachable"
    assert runbook_url("AuthFailed") == RUNBOOKS + "#layerwatchhopauthfailed"
    assert runbook_url("Healthy") is None


def test_chains_that_are_not_ready_are_listed_with_why() -> None:
    document = status_document(ResultStore(), {}, {}, {"corp": "Secret layerwatch/robot not found"})
    assert document["chainsNotReady"] == [{"name": "corp", "reason": "Secret layerwatch/robot not found"}]
    assert "chain corp is not ready, nothing on it is checked: Secret layerwatch/robot" in status_page(
        document
    )


# -- the status page -------------------------------------------------------------------------------


def page(store: ResultStore | None = None, chains: dict[str, Chain] | None = None) -> str:
    return status_page(
        status_document(store or populated(), {"corp": CHAIN} if chains is None else chains, UP)
    )


def test_the_page_shows_one_row_per_artifact_and_one_cell_per_hop() -> None:
    html = page()
    assert html.count(" data-artifact=") == 5
    assert 'data-artifact="team-a/broken"' in html
    assert html.count('data-blamed="true"') == 2  # broken at core, unreachable at edge
    assert 'class="unhealthy blamed" data-hop="core" data-verdict="LayerMissing" data-blamed="true"' in html
    assert 'class="unhealthy passed" data-hop="edge"' in html
    assert "passes on the fault of hop core" in html
    assert "LayerMissing at core since 2023-11-14T22:13:21Z" in html
    assert f'<a class="runbook" href="{RUNBOOKS}#layerwatchlayermissing">runbook</a>' in html
    assert '<span class="down">down</span>' in html and '<span class="up">up</span>' in html


def cells(html: str, artifact: str) -> dict[str, str]:
    row = re.search(rf'<tr [^>]*data-artifact="team-a/{artifact}".*?</tr>', html)
    assert row is not None
    return dict(re.findall(r'<td [^>]*data-hop="(\w+)"[^>]*>(.*?)</td>', row.group(0)))


def test_a_hop_with_a_fault_of_its_own_behind_a_blamed_hop_is_not_said_to_pass_it_on() -> None:
    corrupt = {1: (BlobStatus.CORRUPT, "truncated: 10 of 77 bytes")}
    store = ResultStore()
    both = check_result([observe(EDGE, blobs=corrupt), observe(CORE, blobs=MISSING), observe(ORIGIN)])
    store.put(TargetStatus(target("both"), "corp", both))
    html = page(store)
    row = cells(html, "both")
    assert "passes on the fault" not in row["edge"]
    assert "layer 1" in row["edge"] and 'class="unhealthy" data-hop="edge"' in html


def test_a_hop_passing_on_a_down_upstream_shows_where_from_and_the_named_diagnosis() -> None:
    down = observe(CORE, failure=failure(FaultKind.HOP_DOWN))
    result = check_result([observe(EDGE, manifest_problem=TAG_UNKNOWN), down, observe(ORIGIN)])
    store = ResultStore()
    store.put(TargetStatus(target("down"), "corp", result))
    html = page(store)
    row = cells(html, "down")
    assert "passes on the fault of hop core" in row["edge"]
    assert (
        '<div class="diag" data-diagnosis="upstream-down"><b>upstream-down</b>: heals by itself; '
        "bring hop core back; nothing to fix at this hop</div>"
    ) in row["edge"]
    assert 'class="unknown blamed" data-hop="core" data-verdict="Unreachable" data-blamed="true"' in html
    assert "ManifestMissing at core" in html
    (artifact,) = status_document(store, {"corp": CHAIN}, UP)["artifacts"]
    edge, core, _ = artifact["hops"]
    assert edge["inheritedFrom"] == "core" and edge["diagnosis"]["name"] == "upstream-down"
    assert core["inheritedFrom"] is None and core["diagnosis"] is None


def test_a_pending_target_is_shown_with_why_it_is_not_checked() -> None:
    html = page()
    row = re.search(r'<tr [^>]*data-artifact="team-a/semver".*?</tr>', html)
    assert row is not None
    assert row.group(0).count("semver ref not resolved by Flux yet") == 4  # the artifact and each hop
    waiting = re.search(r'<tr [^>]*data-artifact="team-a/new".*?</tr>', html)
    assert waiting is not None
    assert waiting.group(0).count("waiting for the first check") == 4
    assert "not on pull path" not in waiting.group(0)


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
    assert "<script>alert" not in html
    assert "<marquee>" not in html and "<blink>" not in html
    assert 'ns"><marquee>' not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert 'id="chain-chain&quot;&lt;blink&gt;"' in html
    assert "pending &lt;script&gt;" in html  # the pending row was rendered, escaped
    assert html.count("&lt;/script&gt;") >= 4  # name, pending reason and the unhealthy hop messages


def test_the_page_loads_nothing_from_other_hosts() -> None:
    html = page()
    assert not re.search(r"""(?:src|action)\s*=\s*["']?(?:[a-z]+:)?//""", html, re.IGNORECASE)
    assert "@import" not in html and "url(" not in html
    assert re.findall(r"<script[^>]*>", html) == ["<script>"]  # the inline refresh, nothing loaded
    links = re.findall(r'href="([^"]*)"', html)
    assert links[:2] == ["api/v1/status", "metrics"]  # relative: works behind a path-prefixing proxy
    assert links[2:] and all(link.startswith(RUNBOOKS + "#") for link in links[2:]), links


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
    assert document["summary"] == {"artifacts": 5, "healthy": 1, "unhealthy": 1, "unknown": 2, "waiting": 1}
    assert [c["name"] for c in document["chains"]] == ["corp"]


async def test_the_status_page_is_served_as_html(serve: Callable[..., Any]) -> None:
    client = await serve()
    response = await client.get("/")
    assert response.status == 200
    assert response.content_type == "text/html"
    assert 'data-artifact="team-a/broken"' in await response.text()


def test_a_hop_asked_for_signatures_shows_how_many_of_them_are_intact() -> None:
    intact = SignatureCheck("cosign .sig", digest_of("s1"), digest_of("s1"), "tag", BlobStatus.OK)
    lost = dataclasses.replace(intact, key=digest_of("s2"), status=BlobStatus.MISSING)
    signed = SignatureObservation(Provider.COSIGN, digest_of("subject"), ReferrersApi.ABSENT, (intact, lost))
    observations = healthy_chain()
    observations[EDGE] = dataclasses.replace(observations[EDGE], signatures=signed)
    observations[CORE] = dataclasses.replace(
        observations[CORE], signatures=dataclasses.replace(signed, signatures=())
    )
    store = ResultStore()
    store.put(TargetStatus(target("signed"), "corp", check_result(observations)))
    page = status_page(status_document(store, {"corp": CHAIN}, UP))
    assert '<div class="sigs">1 of 2 cosign signatures intact</div>' in page
    assert '<div class="sigs">no cosign signature</div>' in page
    assert page.count('class="sigs"') == 2, "a hop asked for no signatures says nothing about them"
