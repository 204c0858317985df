"""The edge observed as a client meets it, on real Harbor v2.15.2 proxies (edge -> core -> origin).

The first pull through two cold Harbors answers every blob over about 2 KiB at the edge with
``200``, ``Content-Length: 0`` and no bytes (goharbor/harbor#23373). A check that pulled through
core before the edge asked would warm core and hide it; layerwatch asks edge first per object, so
every cold check sees it. Each run pushes a repository no Harbor has seen.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from tests.registry.helpers import chain_file, engine_check, hop_verdicts

from lab.artifacts import PushedArtifact, push_flux_artifact
from lab.harbor import HarborChain
from layerwatch.report import to_json, to_text
from layerwatch.verdict import CheckResult

pytestmark = [pytest.mark.registry, pytest.mark.harbor]

COLD_RUNS = 10
STORED_WITHIN = 90.0
"""Harbor stores a proxied manifest about 20 s after the first pull; a busy box takes longer."""


def push_cold(harbor_chain: HarborChain, repository: str) -> PushedArtifact:
    """A Flux artifact whose content layer (~7 KiB of incompressible text) is well over 2 KiB."""
    files = {"data.txt": os.urandom(3500).hex().encode()}
    return push_flux_artifact(harbor_chain.push_address, repository, "v1", files)


def check(harbor_chain: HarborChain, pushed: PushedArtifact, tmp_path: Path) -> CheckResult:
    return engine_check(chain_file(harbor_chain, tmp_path), harbor_chain.reference(pushed.repository, "v1"))


def content_layer_at_edge(result: CheckResult, pushed: PushedArtifact) -> tuple[int, int | None]:
    """(bytes received, Content-Length announced) of the content layer at the edge."""
    edge = result.observations[0]
    blob = next(b for b in edge.manifests[0].layers if b.descriptor.digest == pushed.content_layer.digest)
    return blob.facts.received, blob.facts.declared


def from_upstream(result: CheckResult) -> dict[str, dict[str, int]]:
    return {hop["name"]: hop["fromUpstream"] for hop in to_json(result)["hops"]}


def test_every_cold_check_sees_the_cold_chain_empty_blobs_at_the_edge(
    harbor_chain: HarborChain, tmp_path: Path
) -> None:
    seen = []
    for run in range(COLD_RUNS):
        pushed = push_cold(harbor_chain, f"org/cold{run}-{os.urandom(4).hex()}")
        result = check(harbor_chain, pushed, tmp_path)
        seen.append((hop_verdicts(result), content_layer_at_edge(result, pushed)))
    expected = ({"edge": "LayerCorrupt", "core": "Healthy", "origin": "Healthy"}, (0, 0))
    showed = sum(1 for verdicts, _ in seen if verdicts["edge"] == "LayerCorrupt")
    assert seen == [expected] * COLD_RUNS, f"the fault showed in {showed} of {COLD_RUNS} cold runs: {seen}"


def test_a_cold_edge_passes_objects_on_from_its_upstream_and_a_warm_one_serves_its_own_cache(
    harbor_chain: HarborChain, fresh_repo: str, tmp_path: Path
) -> None:
    pushed = push_cold(harbor_chain, fresh_repo)
    cold = check(harbor_chain, pushed, tmp_path)
    assert from_upstream(cold)["edge"] == {"manifests": 1, "blobs": 2}, to_json(cold)
    assert from_upstream(cold)["origin"] == {"manifests": 0, "blobs": 0}
    assert "edge passed 1 manifest and 2 blobs on from its upstream (not cached at edge)" in to_text(cold)

    warm = check(harbor_chain, pushed, tmp_path)
    assert hop_verdicts(warm) == {"edge": "Healthy", "core": "Healthy", "origin": "Healthy"}, warm.judgement
    assert from_upstream(warm)["edge"]["blobs"] == 0, "the edge serves the blobs it cached on the cold pull"

    deadline = time.monotonic() + STORED_WITHIN
    while from_upstream(warm)["edge"]["manifests"] and time.monotonic() < deadline:
        time.sleep(5)
        warm = check(harbor_chain, pushed, tmp_path)
    assert from_upstream(warm) == {hop: {"manifests": 0, "blobs": 0} for hop in ("edge", "core", "origin")}
    assert " on from its upstream" not in to_text(warm)
