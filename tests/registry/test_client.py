"""The registry client against real registries: auth, redirects, request economy, limits, big blobs.

The gateways log every request they answer (method, path, status, whether Authorization was sent,
listener, time), which is how these tests see what the client actually did on the wire.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from tests.registry.helpers import HOPS, chain_file, empty_docker_config, engine_check, hop_verdicts

from lab.artifacts import OCTET_STREAM, push_blob_artifact, push_flux_artifact, push_multilayer_artifact
from lab.chain import EDGE_USER, LocalChain
from layerwatch.chain import HopTarget
from layerwatch.check import check_target
from layerwatch.config import FileSettings, load_chain_file
from layerwatch.reference import Reference
from layerwatch.registry import RegistryClient
from layerwatch.settings import EngineSettings
from layerwatch.verdict import CheckResult

pytestmark = [pytest.mark.registry, pytest.mark.timeout(180)]


def _pull_path(path: Path, reference: str) -> list[HopTarget]:
    chain = load_chain_file(path, FileSettings(docker_config=empty_docker_config(path.parent)))
    return chain.pull_path(Reference.parse(reference))


async def _checks(
    path: Path, references: Sequence[str], settings: EngineSettings | None = None, *, only: str | None = None
) -> list[CheckResult]:
    """Check each reference in turn with one set of clients shared by all checks (as the scheduler does)."""
    targets = [_pull_path(path, ref) for ref in references]
    hops = {t.hop.name: t.hop for pull_path in targets for t in pull_path}
    clients = {name: RegistryClient.for_hop(hop, settings) for name, hop in hops.items()}
    try:
        results = []
        for ref, pull_path in zip(references, targets, strict=True):
            chosen = [t for t in pull_path if only is None or t.hop.name == only]
            results.append(await check_target(Reference.parse(ref), chosen, clients))
        return results
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.values()))


def _token_requests(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in log if r["path"].startswith("/service/token")]


def test_a_bearer_token_is_requested_once_per_repository_and_reused_across_requests_and_checks(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    other = f"{fresh_repo}-other"
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    push_flux_artifact(local_chain.push_address, other, "v1")
    path = chain_file(local_chain, tmp_path)
    first, second = local_chain.reference(fresh_repo, "v1"), local_chain.reference(other, "v1")
    local_chain.faults("edge").clear_requests()

    results = asyncio.run(_checks(path, [first, first, second, second], only="edge"))

    assert [hop_verdicts(r) for r in results] == [{"edge": "Healthy"}] * 4
    log = local_chain.faults("edge").requests()
    tokens = _token_requests(log)
    scopes = sorted(parse_qs(urlsplit(r["path"]).query)["scope"][0] for r in tokens)
    assert scopes == sorted(
        f"repository:{local_chain.repository_at('edge', repo)}:pull" for repo in (fresh_repo, other)
    )
    registry = [r for r in log if r["path"].startswith("/v2/")]
    assert sum(1 for r in registry if r["status"] == 401) == 1, (
        "challenged once, then the token is sent up front"
    )
    assert all(r["authorization"] for r in registry if r["status"] != 401)


def test_robot_credentials_get_a_token_with_basic_auth_and_only_the_token_reaches_the_registry(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    assert "$" in EDGE_USER[0], "Harbor robot accounts are named robot$project+name"
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    path = chain_file(local_chain, tmp_path)
    local_chain.faults("edge").clear_requests()

    result = engine_check(path, local_chain.reference(fresh_repo, "v1"))

    assert hop_verdicts(result) == dict.fromkeys(HOPS, "Healthy")
    log = local_chain.faults("edge").requests()
    (token,) = _token_requests(log)
    assert token["status"] == 200 and token["authorization"], "Basic credentials sent to the token realm"
    # Anonymous token requests would get 401 at this gateway (--auth required); none were made.
    assert all(r["status"] == 200 for r in _token_requests(log))


def test_a_blob_redirected_to_another_host_is_fetched_without_authorization_and_verified(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    repository = local_chain.repository_at("edge", fresh_repo)
    faults = local_chain.faults("edge")
    faults.set([{"kind": "redirect", "repository": repository}])
    faults.clear_requests()

    result = engine_check(chain_file(local_chain, tmp_path), local_chain.reference(fresh_repo, "v1"))

    assert hop_verdicts(result) == dict.fromkeys(HOPS, "Healthy")
    log = faults.requests()
    redirected = [r for r in log if r["listener"] == "registry" and r["status"] == 307]
    assert len(redirected) == 2, "config and layer"
    blob_host = [r for r in log if r["listener"] == "blobs"]
    assert sorted(r["path"].rsplit("/", 1)[1] for r in blob_host) == sorted(
        [pushed.config_digest, pushed.content_layer.digest]
    )
    assert all(r["status"] == 200 for r in blob_host)
    assert not any(r["authorization"] for r in blob_host), "Authorization never leaves the hop's host"
    assert result.observations[0].bytes_verified == pushed.config.size + pushed.content_layer.size


def test_a_healthy_check_asks_each_hop_for_each_thing_exactly_once(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    """HEAD the tag, GET the manifest by digest, GET config and layer; plus one token at the edge.

    Each hop is checked on its own, origin first, so its gateway's log holds only the checker's
    requests (a proxy's own upstream traffic goes to the *next* gateway, already checked).
    """
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    path = chain_file(local_chain, tmp_path)
    reference = local_chain.reference(fresh_repo, "v1")
    for hop in reversed(HOPS):
        local_chain.faults(hop).clear_requests()
        (result,) = asyncio.run(_checks(path, [reference], only=hop))
        assert hop_verdicts(result) == {hop: "Healthy"}
        log = local_chain.faults(hop).requests()
        base = f"/v2/{local_chain.repository_at(hop, fresh_repo)}"
        answered = [(r["method"], r["path"]) for r in log if r["status"] != 401]
        repeated = [request for request, n in Counter(answered).items() if n > 1]
        assert repeated == [], f"{hop} asked twice: {repeated}"
        registry = sorted(request for request in answered if request[1].startswith("/v2/"))
        assert registry == sorted(
            [
                ("HEAD", f"{base}/manifests/v1"),
                ("GET", f"{base}/manifests/{pushed.manifest_digest}"),
                ("GET", f"{base}/blobs/{pushed.config_digest}"),
                ("GET", f"{base}/blobs/{pushed.content_layer.digest}"),
            ]
        ), hop
        assert len(_token_requests(log)) == (1 if hop == "edge" else 0)


def test_no_more_requests_than_the_concurrency_limit_are_in_flight_at_one_hop(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    """Every GET held 0.8 s by the origin gateway: the manifest, then seven blobs two or seven at a time."""
    extras = [(OCTET_STREAM, f"extra layer {i}\n".encode()) for i in range(5)]
    pushed = push_multilayer_artifact(local_chain.push_address, fresh_repo, "v1", extra_layers=extras)
    assert len(pushed.layers) + 1 == 7
    faults = local_chain.faults("origin")
    path = chain_file(local_chain, tmp_path)
    reference = local_chain.reference(fresh_repo, "v1", hop="origin")
    durations = {}
    for limit in (2, 7):
        faults.set([{"kind": "slow", "seconds": 0.8, "repository": fresh_repo, "method": "GET"}])
        started = time.monotonic()
        (result,) = asyncio.run(_checks(path, [reference], EngineSettings(endpoint_concurrency=limit)))
        durations[limit] = time.monotonic() - started
        assert hop_verdicts(result) == {"origin": "LayerOrderMismatch"}  # octet-stream first: see verdicts
        assert result.observations[0].bytes_verified == pushed.config.size + sum(
            x.size for x in pushed.layers
        )
    # One slow manifest GET, then 7 blobs: 1 + ceil(7 / 2) = 5 rounds at limit 2, 1 + 1 at limit 7.
    assert durations[2] >= 5 * 0.8 - 0.1, durations
    assert durations[7] < 4 * 0.8, durations


def test_a_64_mib_blob_is_verified_in_full_at_every_hop_without_holding_it_in_memory(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    size = 64 << 20
    pushed = push_blob_artifact(local_chain.push_address, fresh_repo, "v1", size)
    path = chain_file(local_chain, tmp_path)
    # ru_maxrss survives fork+exec (it would count the pytest parent): reset the peak, read VmHWM.
    script = (
        "import re, sys\n"
        "from layerwatch.cli import main\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "status = main(sys.argv[1:])\n"
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1), file=sys.stderr)\n"
        "sys.exit(status)\n"
    )
    reference = f"oci://{local_chain.reference(fresh_repo, 'v1')}"
    args = [sys.executable, "-c", script, "check", "--chain", str(path), "--output", "json", reference]
    done = subprocess.run(args, capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for hop in report["hops"]:
        assert hop["layers"][0] == {
            "index": 0,
            "digest": pushed.layer_digests[0],
            "mediaType": OCTET_STREAM,
            "size": size,
            "status": "ok",
            "cached": False,
            "detail": "verified",
        }
        assert hop["bytesVerified"] == size + pushed.config.size
    peak_kib = int(done.stderr.strip().splitlines()[-1])
    assert peak_kib < 100 * 1024, (
        f"checking 3 x 64 MiB peaked at {peak_kib} KiB (one blob in memory: >104 MiB)"
    )
