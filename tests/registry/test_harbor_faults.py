"""How real Harbor v2.15.2 proxy caches lose layers, and what layerwatch reports for each way.

Every fault here is produced by Harbor itself on the session's ``harbor_chain`` (edge Harbor ->
core Harbor -> origin registry), never emulated: data lost behind Harbor's Redis descriptor cache,
a cold chain's empty blobs, a repository path with a ``manifests`` segment, a Harbor or the
origin down, signatures behind a cold referrers API. Each test first proves the fault with a
plain HTTP client (what any client meets at that hop), then asserts the report of
``layerwatch check --output json``: the verdict a client meets at each hop, which hop is blamed,
and the named diagnosis. A hop taken down is started again before the test ends, so the chain
serves the next test as before. Each test uses repositories no other test touched.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.registry.helpers import CliRun, chain_file, hop_verdicts, run_cli

from lab.artifacts import PushedArtifact, push_flux_artifact
from lab.harbor import HarborChain, HarborHop
from lab.signing import Signer

pytestmark = [pytest.mark.registry, pytest.mark.harbor]

MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
REFERRERS_APPEAR = 60.0
"""Bound for a signature to show in a Harbor's referrers answer after a pull by digest (~20 s measured)."""
BIG = {"big.yaml": os.urandom(64 * 1024)}
"""Incompressible content: a content layer well over the ~2 KiB from which a cold chain serves it empty."""


def _check(chain: HarborChain, pushed: PushedArtifact, tmp_path: Path, *args: str) -> CliRun:
    """``layerwatch check --output json [ARGS]`` of the pushed artifact at the edge."""
    reference = f"oci://{chain.reference(pushed.repository, pushed.tag)}"
    path = chain_file(chain, tmp_path)
    return run_cli("check", "--chain", str(path), "--output", "json", *args, reference)


def _hops(run: CliRun) -> dict[str, dict[str, Any]]:
    return {hop["name"]: hop for hop in run.report["hops"]}


def _diagnosis(run: CliRun, hop: str) -> str | None:
    found = _hops(run)[hop]["diagnosis"]
    return None if found is None else str(found["name"])


def _client(chain: HarborChain, hop: str, repository: str) -> httpx.Client:
    """A client of ``hop`` for the origin's ``repository``, with that hop's robot token."""
    return chain.harbor(hop).registry_client(chain.repository_at(hop, repository))


def _pull(chain: HarborChain, hop: str, pushed: PushedArtifact) -> None:
    """Pull the artifact through ``hop`` as a client does: manifest by tag, then every blob."""
    with _client(chain, hop, pushed.repository) as client:
        client.get(f"manifests/{pushed.tag}", headers={"Accept": MANIFEST_ACCEPT}).raise_for_status()
        for blob in (pushed.config, *pushed.layers):
            assert client.get(f"blobs/{blob.digest}").content == _origin_blob(chain, pushed, blob.digest)


def _origin_blob(chain: HarborChain, pushed: PushedArtifact, digest: str) -> bytes:
    answer = httpx.get(f"http://{chain.push_address}/v2/{pushed.repository}/blobs/{digest}", timeout=30.0)
    answer.raise_for_status()
    return answer.content


def _read_blob(client: httpx.Client, digest: str) -> tuple[int, dict[str, str], int, bool]:
    """GET a blob: (status, headers, bytes received, whether the connection closed before the end)."""
    with client.stream("GET", f"blobs/{digest}") as answer:
        received, cut = 0, False
        try:
            for chunk in answer.iter_bytes():
                received += len(chunk)
        except httpx.RemoteProtocolError:
            cut = True
        return answer.status_code, dict(answer.headers), received, cut


@pytest.fixture
def pushed(harbor_chain: HarborChain, fresh_repo: str) -> PushedArtifact:
    """A Flux artifact at the origin under a repository no Harbor has seen (cold at both hops)."""
    return push_flux_artifact(harbor_chain.push_address, fresh_repo, "v1")


def test_data_lost_behind_the_descriptor_cache_at_the_edge_is_cached_data_lost_and_head_mode_misses_it(
    harbor_chain: HarborChain, pushed: PushedArtifact, tmp_path: Path
) -> None:
    layer = pushed.content_layer
    _pull(harbor_chain, "edge", pushed)
    harbor_chain.harbor("edge").processes.lose_blob(layer.digest, layer.size)

    with _client(harbor_chain, "edge", pushed.repository) as edge:
        for _ in range(2):  # never healed: Harbor trusts its descriptor cache and never re-fetches
            status, headers, received, cut = _read_blob(edge, layer.digest)
            assert (status, headers.get("content-length"), received, cut) == (200, str(layer.size), 0, True)
        head = edge.head(f"blobs/{layer.digest}")
    # head mode's blind spot: HEAD answers from the descriptor cache alone
    assert (head.status_code, head.headers.get("content-length")) == (200, str(layer.size))

    run = _check(harbor_chain, pushed, tmp_path)
    assert hop_verdicts(run.report) == {"edge": "LayerCorrupt", "core": "Healthy", "origin": "Healthy"}, run
    assert run.report["blame"] == "edge", run
    head_run = _check(harbor_chain, pushed, tmp_path, "--mode", "head")
    assert hop_verdicts(head_run.report)["edge"] == "Healthy", "head mode cannot see lost data (documented)"
    edge_hop = _hops(run)["edge"]
    assert edge_hop["diagnosis"]["name"] == "cached-data-lost", run
    assert edge_hop["diagnosis"]["heals"] is False, run
    assert edge_hop["inheritedFrom"] is None, run
    assert _hops(run)["core"]["diagnosis"] is None, run


def test_a_cold_chain_empty_blob_is_named_differently_from_lost_data(
    harbor_chain: HarborChain, fresh_repo: str, tmp_path: Path
) -> None:
    # the fact, on a repository of its own: the first pull through two cold Harbors is empty
    probe = push_flux_artifact(harbor_chain.push_address, f"{fresh_repo}-probe", "v1", BIG)
    with _client(harbor_chain, "edge", probe.repository) as edge:
        edge.get(f"manifests/{probe.tag}", headers={"Accept": MANIFEST_ACCEPT}).raise_for_status()
        status, headers, received, _ = _read_blob(edge, probe.content_layer.digest)
    assert (status, headers.get("content-length"), received) == (200, "0", 0), "goharbor/harbor#23373"

    pushed = push_flux_artifact(harbor_chain.push_address, fresh_repo, "v1", BIG)
    run = _check(harbor_chain, pushed, tmp_path)
    assert hop_verdicts(run.report) == {"edge": "LayerCorrupt", "core": "Healthy", "origin": "Healthy"}, run
    diagnosis = _hops(run)["edge"]["diagnosis"]
    assert diagnosis["name"] == "cold-upstream-empty-body", run
    assert diagnosis["heals"] is True, run


def _blob_statuses(hop: dict[str, Any]) -> list[str]:
    """The status of every blob a hop's report lists (config first)."""
    blobs = [hop["config"], *hop["layers"]] if hop["config"] is not None else hop["layers"]
    return [str(blob["status"]) for blob in blobs]


def test_a_manifests_path_segment_makes_blobs_404_and_the_report_names_the_repository_as_cause(
    harbor_chain: HarborChain, fresh_repo: str, tmp_path: Path
) -> None:
    """Under a ``…/manifests/…`` repository Harbor routes a blob request as a manifest request on
    some requests and not on others (measured: each blob GET is 404 about 2 times in 3 at core and
    more often at the edge, whatever the same blob got before). So: whenever a Harbor hop's report
    has a blob missing, that hop is LayerMissing with the diagnosis; a hop that got every blob is
    Healthy; and within a few fresh repositories the fault must show at least once."""
    owner, name = fresh_repo.split("/")
    seen = 0
    for attempt in range(3):
        repository = f"{owner}/manifests/{name}-{attempt}"
        pushed = push_flux_artifact(harbor_chain.push_address, repository, "v1")
        run = _check(harbor_chain, pushed, tmp_path)
        hops = _hops(run)
        assert hops["origin"]["verdict"] == "Healthy", run
        for hop in ("edge", "core"):
            statuses = _blob_statuses(hops[hop])
            assert hops[hop]["manifestDigest"] == pushed.manifest_digest, run
            if "missing" not in statuses:
                assert hops[hop]["verdict"] == "Healthy", run
                continue
            seen += 1
            assert set(statuses) <= {"ok", "missing"}, run
            assert hops[hop]["verdict"] == "LayerMissing", run
            assert _diagnosis(run, hop) == "manifests-path-segment", run
            assert hops[hop]["diagnosis"]["heals"] is False, run
        if seen:
            break
    assert seen, "Harbor served every blob under a manifests segment in 3 checks"


def test_core_down_an_artifact_the_edge_never_cached_is_inherited_at_the_edge_and_blamed_on_core(
    harbor_chain: HarborChain, pushed: PushedArtifact, tmp_path: Path
) -> None:
    with harbor_chain.down("core"):
        with _client(harbor_chain, "edge", pushed.repository) as edge:
            answer = edge.get(f"manifests/{pushed.tag}", headers={"Accept": MANIFEST_ACCEPT})
        assert answer.status_code == 404, answer.text
        assert "repository" in answer.text and "not found" in answer.text, answer.text
        run = _check(harbor_chain, pushed, tmp_path, "--timeout", "10")
    _pull(harbor_chain, "edge", pushed)  # it heals: with core back the edge serves the artifact
    verdicts = hop_verdicts(run.report)
    assert verdicts == {"edge": "ManifestMissing", "core": "Unreachable", "origin": "Healthy"}, run
    assert run.report["blame"] == "core", run
    edge = _hops(run)["edge"]
    assert edge["inheritedFrom"] == "core", run
    assert edge["diagnosis"]["name"] == "upstream-down", run
    assert edge["diagnosis"]["heals"] is True, run


def test_core_serving_lost_data_to_a_cold_edge_is_a_500_at_the_edge_inherited_from_core(
    harbor_chain: HarborChain, pushed: PushedArtifact, tmp_path: Path
) -> None:
    layer = pushed.content_layer
    _pull(harbor_chain, "core", pushed)  # only core: the edge never saw this repository
    harbor_chain.harbor("core").processes.lose_blob(layer.digest, layer.size)

    run = _check(harbor_chain, pushed, tmp_path)
    with _client(harbor_chain, "edge", pushed.repository) as edge:
        blob = edge.get(f"blobs/{layer.digest}")
    assert blob.status_code == 500, "the edge turns core's cut-off stream into a 500"
    verdicts = hop_verdicts(run.report)
    assert verdicts == {"edge": "LayerCorrupt", "core": "LayerCorrupt", "origin": "Healthy"}, run
    assert run.report["blame"] == "core", run
    assert _hops(run)["edge"]["inheritedFrom"] == "core", run
    assert _diagnosis(run, "core") == "cached-data-lost", run
    assert _hops(run)["core"]["inheritedFrom"] is None, run


def test_the_origin_down_reports_what_each_hop_serves_and_blames_the_origin(
    harbor_chain: HarborChain, pushed: PushedArtifact, fresh_repo: str, tmp_path: Path
) -> None:
    cached = push_flux_artifact(harbor_chain.push_address, f"{fresh_repo}-cached", "v1")
    _pull(harbor_chain, "edge", cached)  # through both Harbors; wait until both stored it
    harbor_chain.harbor("core").wait_tag_stored(cached.repository, "v1")
    harbor_chain.harbor("edge").wait_tag_stored(harbor_chain.repository_at("core", cached.repository), "v1")
    with harbor_chain.down("origin"):
        answers = {}
        for hop in ("edge", "core"):
            with _client(harbor_chain, hop, pushed.repository) as client:
                answers[hop] = client.get(f"manifests/{pushed.tag}", headers={"Accept": MANIFEST_ACCEPT})
        run = _check(harbor_chain, pushed, tmp_path, "--timeout", "10")
        warm = _check(harbor_chain, cached, tmp_path, "--timeout", "10")
    _pull(harbor_chain, "edge", pushed)  # it heals: with the origin back every hop serves it
    assert {hop: answer.status_code for hop, answer in answers.items()} == {"edge": 404, "core": 404}, {
        hop: answer.text for hop, answer in answers.items()
    }
    # what the Harbors cached they serve: that is what a client there gets
    assert hop_verdicts(warm.report) == {"edge": "Healthy", "core": "Healthy", "origin": "Unreachable"}, warm
    assert warm.report["blame"] == "origin", warm
    # what they did not cache: no hop is Healthy for it, and the origin is to blame
    verdicts = hop_verdicts(run.report)
    assert verdicts == {"edge": "ManifestMissing", "core": "ManifestMissing", "origin": "Unreachable"}, run
    assert run.report["blame"] == "origin", run
    hops = _hops(run)
    assert hops["core"]["inheritedFrom"] == "origin", run
    assert hops["edge"]["inheritedFrom"] in ("core", "origin"), run
    assert _diagnosis(run, "core") == _diagnosis(run, "edge") == "upstream-down", run


# -- signatures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["cosign", "notation"])
def test_a_cold_harbor_hides_a_signature_from_the_referrers_api_until_it_was_pulled_by_digest(
    harbor_chain: HarborChain, pushed: PushedArtifact, signer: Signer, tmp_path: Path, provider: str
) -> None:
    """A cosign v3 bundle or a notation signature: both are found only through the referrers API."""
    subject = pushed.manifest_digest
    signed = f"{harbor_chain.push_address}/{pushed.repository}@{subject}"
    if provider == "notation":
        signer.notation_sign(signed)
    else:
        signer.cosign_sign(signed, bundle=True)
    cold = _check(harbor_chain, pushed, tmp_path, "--verify", provider)
    verdicts = hop_verdicts(cold.report)
    assert verdicts == {"edge": "SignatureMissing", "core": "SignatureMissing", "origin": "Healthy"}, cold
    assert cold.report["blame"] == "core", cold

    edge = harbor_chain.harbor("edge")
    path = harbor_chain.repository_at("edge", pushed.repository)
    assert _referrers(edge, path, subject) == [], "a cold Harbor never asks its upstream for referrers"
    bundle = _origin_referrers(harbor_chain, pushed.repository, subject)
    with edge.registry_client(path) as client:  # what makes it appear: a pull by digest through the hop
        manifest = client.get(f"manifests/{bundle}", headers={"Accept": MANIFEST_ACCEPT})
        manifest.raise_for_status()
        for blob in [manifest.json()["config"], *manifest.json()["layers"]]:
            client.get(f"blobs/{blob['digest']}").raise_for_status()
    deadline = time.monotonic() + REFERRERS_APPEAR
    while bundle not in _referrers(edge, path, subject):
        assert time.monotonic() < deadline, f"the bundle did not appear in {REFERRERS_APPEAR:.0f}s"
        time.sleep(1.0)
    warm = _check(harbor_chain, pushed, tmp_path, "--verify", provider)
    assert hop_verdicts(warm.report) == {"edge": "Healthy", "core": "Healthy", "origin": "Healthy"}, warm

    for hop in ("edge", "core"):
        assert "answers the referrers API only from what it has cached" in _hops(cold)[hop]["message"], cold


def _referrers(harbor: HarborHop, path: str, digest: str) -> list[str]:
    """The digests a Harbor's referrers API lists for ``digest``."""
    with harbor.registry_client(path) as client:
        answer = client.get(f"referrers/{digest}")
    answer.raise_for_status()
    return [entry["digest"] for entry in answer.json().get("manifests", [])]


def _origin_referrers(chain: HarborChain, repository: str, subject: str) -> str:
    """The one referrer the origin holds under the referrers tag (it has no referrers API)."""
    tag = "sha256-" + subject.removeprefix("sha256:")
    index = httpx.get(
        f"http://{chain.push_address}/v2/{repository}/manifests/{tag}",
        headers={"Accept": MANIFEST_ACCEPT},
        timeout=30.0,
    )
    index.raise_for_status()
    [referrer] = index.json()["manifests"]
    return str(referrer["digest"])


# -- facts the docs rely on ------------------------------------------------------------------------


def _tags(client: httpx.Client) -> tuple[int, list[str]]:
    answer = client.get("tags/list")
    return answer.status_code, list(answer.json().get("tags") or []) if answer.status_code == 200 else []


def test_a_harbor_tag_list_merges_upstream_and_cached_tags_and_shows_only_cached_ones_without_upstream(
    harbor_chain: HarborChain, fresh_repo: str
) -> None:
    old = push_flux_artifact(harbor_chain.push_address, fresh_repo, "v1")
    _pull(harbor_chain, "core", old)
    harbor_chain.harbor("core").wait_tag_stored(fresh_repo, "v1")
    origin = f"http://{harbor_chain.push_address}/v2/{fresh_repo}"
    httpx.delete(f"{origin}/manifests/{old.manifest_digest}", timeout=30.0).raise_for_status()
    push_flux_artifact(harbor_chain.push_address, fresh_repo, "v2")

    with _client(harbor_chain, "core", fresh_repo) as client:
        assert _tags(client) == (200, ["v1", "v2"]), "the upstream's v2 and the cached v1"
        with harbor_chain.down("origin"):
            assert _tags(client) == (200, ["v1"]), "only what core cached, answered 200"


def test_harbor_lists_a_dead_upstream_as_healthy_while_its_ping_says_unhealthy(
    harbor_chain: HarborChain,
) -> None:
    core = harbor_chain.harbor("core")
    admin = core.admin()
    try:
        with harbor_chain.down("origin"):
            listed = {r["id"]: r.get("status") for r in admin.get("/registries")}
            ping = admin.ping_registry(core.registry_id)
    finally:
        admin.close()
    assert listed[core.registry_id] == "healthy", listed
    assert ping.status_code == 400 and "unhealthy" in ping.text, (ping.status_code, ping.text)
