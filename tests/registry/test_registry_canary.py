"""The cold-path canary against real registries: the lab chain, and two real Harbor v2.15.2 hops.

On the lab chain (distribution proxies behind Harbor-like gateways) the canary is pushed straight
to the origin registry, pulled edge first and cleaned up; the origin's gateway refuses pushes as a
Harbor proxy project does (403 DENIED), which the canary reports as unknown. Through two chained
real Harbors a fresh artifact meets Harbor's cold-chain empty-blob bug at the edge
(goharbor/harbor#23373), so the canary of ``layerwatch serve`` reports the chain's cold path
broken within one interval while an artifact already pulled through the chain stays healthy.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.registry.helpers import chain_file, empty_docker_config, engine_check, run_cli
from tests.serve_harness import serving

from lab.artifacts import push_flux_artifact
from lab.chain import LocalChain
from lab.harbor import HarborChain
from lab.process import LabError, log_tail
from layerwatch.canary import PUSH_FAILED, CanaryResult, run_canary
from layerwatch.chain import Chain
from layerwatch.config import FileSettings, load_chain_file
from layerwatch.registry import RegistryClient
from layerwatch.settings import EngineSettings
from layerwatch.verdict import Health

pytestmark = pytest.mark.registry

SETTINGS = EngineSettings(timeout=10.0)


def with_canary(path: Path, repository: str, **canary: Any) -> Chain:
    """The chain file at ``path`` with ``spec.canary`` added, loaded as the CLI and serve load it."""
    document = yaml.safe_load(path.read_text())
    document["spec"]["canary"] = {"repository": repository, **canary}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_chain_file(path, FileSettings(docker_config=empty_docker_config(path.parent)))


async def canary_run(chain: Chain, clock: Callable[[], float] = time.time) -> CanaryResult:
    push = RegistryClient.for_hop(chain.canary_push_hop(), SETTINGS)
    clients = {hop.name: RegistryClient.for_hop(hop, SETTINGS) for hop in chain.hops}
    try:
        return await run_canary(chain, push, clients, clock=clock)
    finally:
        await asyncio.gather(*(c.aclose() for c in [push, *clients.values()]))


def origin_tags(base_url: str, repository: str) -> list[str]:
    answer = httpx.get(f"{base_url}/v2/{repository}/tags/list", timeout=10.0)
    answer.raise_for_status()
    return sorted(answer.json().get("tags") or [])


def test_the_canary_goes_through_the_lab_chain_edge_first_and_cleans_up(
    local_chain: LocalChain, tmp_path: Path
) -> None:
    origin = local_chain.hop("origin").registry.url  # the gateway in front of it refuses pushes
    repository = f"canary/{uuid.uuid4().hex[:8]}"
    chain = with_canary(chain_file(local_chain, tmp_path, urls={"origin": origin}), repository, keep=2)
    started = int(time.time())
    results = []
    for second in range(3):
        for hop in ("edge", "core"):
            local_chain.faults(hop).clear_requests()
        results.append(asyncio.run(canary_run(chain, clock=lambda s=second: started + s)))
        ours = {hop: _layerwatch_times(local_chain, hop, repository) for hop in ("edge", "core")}
        assert ours["edge"] and ours["core"]
        assert max(ours["edge"]) <= min(ours["core"]), "layerwatch asked the edge first"
    for result in results:
        assert result.health is Health.HEALTHY, result.message
        assert result.result is not None
        assert [h.verdict.value for h in result.result.judgement.hops] == ["Healthy"] * 3
    assert len({r.digest for r in results}) == 3, "every canary is a new artifact"
    assert origin_tags(origin, repository) == sorted(r.tag or "" for r in results[1:])


def _layerwatch_times(chain: LocalChain, hop: str, repository: str) -> list[float]:
    """When layerwatch itself (not a proxy behind it) asked ``hop`` for the canary repository."""
    path = f"/v2/{chain.repository_at(hop, repository)}/"
    return [
        float(r["time"])
        for r in chain.faults(hop).requests()
        if r.get("agent") == "layerwatch" and str(r.get("path", "")).startswith(path)
    ]


def test_a_canary_origin_that_refuses_pushes_is_unknown_not_broken(
    local_chain: LocalChain, tmp_path: Path
) -> None:
    chain = with_canary(chain_file(local_chain, tmp_path), f"canary/{uuid.uuid4().hex[:8]}")
    result = asyncio.run(canary_run(chain))
    assert result.health is Health.UNKNOWN
    condition = result.condition(1)
    assert condition["status"] == "Unknown" and condition["reason"] == PUSH_FAILED
    assert "HTTP 403 (DENIED: can not push artifact to a proxy project)" in str(condition["message"])


def test_layerwatch_canary_runs_the_chain_files_canary_once_and_exits_by_its_verdict(
    local_chain: LocalChain, tmp_path: Path
) -> None:
    origin = local_chain.hop("origin").registry.url
    path = chain_file(local_chain, tmp_path, urls={"origin": origin})
    plain = run_cli("canary", "--chain", str(path))
    assert plain.status == 2 and "has no spec.canary" in plain.stderr, plain
    repository = f"canary/{uuid.uuid4().hex[:8]}"
    with_canary(path, repository)
    run = run_cli("canary", "--chain", str(path), "-o", "json")
    assert run.status == 0, run
    assert run.report["condition"]["status"] == "True"
    assert [hop["verdict"] for hop in run.report["report"]["hops"]] == ["Healthy"] * 3
    assert origin_tags(origin, repository) == [run.report["tag"]]
    refused = with_canary(chain_file(local_chain, tmp_path), repository)  # the origin's gateway
    assert refused.canary is not None
    text = run_cli("canary", "--chain", str(tmp_path / "chain.yaml"))
    assert text.status == 3, text
    assert text.stdout.startswith("cold path of chain lab: CanaryPushFailed: canary push to the origin"), text


def _wait_for(what: str, poll: Callable[[], Any], timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = poll()
        except httpx.TransportError:
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise LabError(f"{what} not within {timeout:.0f}s:\n{log_tail(log, 40)}")


@pytest.mark.harbor
def test_two_harbors_are_reported_broken_on_the_cold_path_within_one_interval_while_warm_stays_healthy(
    harbor_chain: HarborChain, tmp_path: Path
) -> None:
    interval = 20
    warm = push_flux_artifact(harbor_chain.push_address, f"org/warm-{uuid.uuid4().hex[:8]}", "v1")
    path = chain_file(harbor_chain, tmp_path)
    reference = harbor_chain.reference(warm.repository, warm.tag)
    for _ in range(5):  # the first pulls may meet the cold-chain bug themselves; then it is cached
        if engine_check(path, reference).judgement.health is Health.HEALTHY:
            break
    else:
        pytest.fail("the warm artifact never came through the Harbor chain intact")
    document = yaml.safe_load(path.read_text())
    document["spec"]["interval"] = f"{interval}s"
    document["spec"]["canary"] = {"repository": f"layerwatch/canary-{uuid.uuid4().hex[:8]}"}
    target = {"kind": "Target", "name": "warm", "url": f"oci://{reference.rsplit(':', 1)[0]}", "ref": "v1"}
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump_all([document, target], sort_keys=False))
    started = time.time()
    with serving(config, tmp_path) as (port, log, _):
        url = f"http://127.0.0.1:{port}"

        def canary() -> dict[str, Any] | None:
            status = httpx.get(f"{url}/api/v1/status", timeout=5.0).json()
            found: dict[str, Any] = status["chains"][0]["canary"]
            return found if found["health"] != "waiting" else None

        run = _wait_for("the first canary", canary, interval + 60, log)
        status = httpx.get(f"{url}/api/v1/status", timeout=5.0).json()
        metrics = httpx.get(f"{url}/metrics", timeout=5.0).text
    assert int(run["tag"].removeprefix("canary-")) <= started + interval + 1, "first run within one interval"
    assert run["health"] == "unhealthy", run
    assert (run["reason"], run["blame"]) == ("LayerCorrupt", "edge"), run
    assert "0 of" in run["message"], run
    assert 'layerwatch_cold_path_healthy{chain="lab"} 0.0' in metrics
    assert 'layerwatch_canary_blame{chain="lab",hop="edge",verdict="LayerCorrupt"} 1.0' in metrics
    (artifact,) = status["artifacts"]
    assert artifact["health"] == "healthy", artifact
