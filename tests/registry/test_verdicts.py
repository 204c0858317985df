"""Every verdict, produced by the real engine against the real proxy chain, with the right blame.

Faults are injected at the edge, the middle hop (core) or the origin before anything pulls, on a
repository no earlier test used (distribution's proxies cache what they pull). A fault at a hop is
also what every hop downstream of it receives, so the faulted hop and the ones before it are
unhealthy, the ones behind it healthy, and blame names the faulted hop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.registry.helpers import (
    FAST,
    HOPS,
    CliRun,
    chain_file,
    closed_port_url,
    engine_check,
    hop_verdicts,
    run_cli,
)

from lab.artifacts import (
    FLUX_CONTENT_MEDIA_TYPE,
    PushedArtifact,
    push_flux_artifact,
    push_multilayer_artifact,
)
from lab.chain import LocalChain
from layerwatch.chain import Mode
from layerwatch.settings import EngineSettings

pytestmark = [pytest.mark.registry, pytest.mark.timeout(120)]

FILES = {"kustomization.yaml": b"resources: []\n", "app.yaml": b"kind: ConfigMap\n"}
"""Fixed content, so a one-layer and a two-layer artifact share the very same content layer blob."""


def check_json(path: Path, reference: str) -> CliRun:
    """``layerwatch check --chain PATH --output json --timeout 5 REF``, as a user runs it."""
    return run_cli("check", "--chain", str(path), "--output", "json", "--timeout", "5", reference)


def assert_verdicts(
    verdicts: dict[str, str], faulted: str, verdict: str, downstream: frozenset[str] | None = None
) -> None:
    """``verdict`` at the faulted hop, Healthy behind it, one of ``downstream`` (default: the same) before."""
    position = HOPS.index(faulted)
    for i, hop in enumerate(HOPS):
        if i < position:
            assert verdicts[hop] in (downstream or {verdict}), (hop, verdicts)
        else:
            assert verdicts[hop] == (verdict if i == position else "Healthy"), (hop, verdicts)


Faults = list[dict[str, Any]]


def _flux(chain: LocalChain, repo: str) -> PushedArtifact:
    return push_flux_artifact(chain.push_address, repo, "v1")


def _content_first(chain: LocalChain, repo: str) -> PushedArtifact:
    """``[flux content, octet-stream]``: healthy as pushed; reversed, Flux would extract the wrong layer."""
    return push_multilayer_artifact(chain.push_address, repo, "v1", FILES, content_last=False)


def _tag_dropped(chain: LocalChain, repo: str, pushed: PushedArtifact) -> Faults:
    return [{"kind": "drop", "tag": "v1"}]


def _manifest_flipped(chain: LocalChain, repo: str, pushed: PushedArtifact) -> Faults:
    """Both ways a manifest is fetched (by tag, as proxies do, and by digest) get a flipped byte."""
    return [{"kind": "corrupt", "tag": "v1"}, {"kind": "corrupt", "digest": pushed.manifest_digest}]


def _stale(chain: LocalChain, repo: str, pushed: PushedArtifact) -> Faults:
    older = push_flux_artifact(chain.push_address, repo, "v0")
    return [{"kind": "stale", "tag": "v1", "serve_digest": older.manifest_digest}]


def _subset(chain: LocalChain, repo: str, pushed: PushedArtifact) -> Faults:
    """Tag v1 served as a manifest listing only the content layer of the two-layer v1 (same blob)."""
    fewer = push_flux_artifact(chain.push_address, repo, "content-only", FILES)
    assert fewer.layer_digests[0] in pushed.layer_digests
    return [{"kind": "stale", "tag": "v1", "serve_digest": fewer.manifest_digest}]


def _reorder(chain: LocalChain, repo: str, pushed: PushedArtifact) -> Faults:
    return [{"kind": "reorder", "tag": "v1"}]


def _layer(kind: str, **fields: Any) -> Callable[[LocalChain, str, PushedArtifact], Faults]:
    def faults(chain: LocalChain, repo: str, pushed: PushedArtifact) -> Faults:
        return [{"kind": kind, "digest": pushed.content_layer.digest, **fields}]

    return faults


@dataclasses.dataclass(frozen=True)
class Scenario:
    """What to push, which faults to set at the hop under test, and the verdict they must give."""

    verdict: str
    faults: Callable[[LocalChain, str, PushedArtifact], Faults]
    push: Callable[[LocalChain, str], PushedArtifact] = _flux
    hops: tuple[str, ...] = HOPS
    downstream: frozenset[str] | None = None
    """Verdicts accepted at hops downstream of the fault, when a proxy passes the damage on differently."""


PROXY_REFUSED = frozenset({"ManifestCorrupt", "ManifestMissing", "Unreachable"})
"""What a distribution proxy makes of a corrupt upstream manifest: it refuses it (404 or 500)."""


SCENARIOS: dict[str, Scenario] = {
    "tag-dropped": Scenario("ManifestMissing", _tag_dropped),
    "manifest-byte-flipped": Scenario("ManifestCorrupt", _manifest_flipped, downstream=PROXY_REFUSED),
    "stale-tag": Scenario("DigestMismatch", _stale, hops=("edge", "core")),
    "layer-dropped": Scenario("LayerMissing", _layer("drop")),
    "manifest-lists-fewer-layers": Scenario("LayerMissing", _subset, _content_first, ("edge", "core")),
    "layer-byte-flipped": Scenario("LayerCorrupt", _layer("corrupt")),
    "layer-truncated": Scenario("LayerCorrupt", _layer("truncate", keep=50)),
    "layer-connection-cut": Scenario("LayerCorrupt", _layer("cut", keep=50)),
    "layers-reordered": Scenario("LayerOrderMismatch", _reorder, _content_first),
}
CASES = [
    pytest.param(name, hop, id=f"{name}-at-{hop}")
    for name, scenario in SCENARIOS.items()
    for hop in scenario.hops
]


@pytest.mark.parametrize(("scenario", "hop"), CASES)
def test_a_fault_at_one_hop_gives_its_verdict_there_and_downstream_and_blames_that_hop(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path, scenario: str, hop: str
) -> None:
    case = SCENARIOS[scenario]
    pushed = case.push(local_chain, fresh_repo)
    repository = local_chain.repository_at(hop, fresh_repo)
    local_chain.faults(hop).set(
        [{"repository": repository, **fault} for fault in case.faults(local_chain, fresh_repo, pushed)]
    )

    result = engine_check(
        chain_file(local_chain, tmp_path), local_chain.reference(fresh_repo, "v1"), settings=FAST
    )

    assert_verdicts(hop_verdicts(result), hop, case.verdict, case.downstream)
    assert result.judgement.verdict.value == case.verdict
    assert result.judgement.blame == hop
    if hop != "origin":
        assert result.judgement.origin_digest == pushed.manifest_digest


def test_a_tag_moved_at_the_origin_that_core_cannot_refresh_is_a_digest_mismatch_blamed_on_core(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    """The origin itself cannot be stale (it is what hops are compared with); its tag moving while the
    proxies keep serving their cached one is the origin-side case. The origin hop is checked directly
    at its registry here, so a fault on the origin gateway only cuts the proxies off from it."""
    origin_registry = local_chain.hop("origin").registry.url
    path = chain_file(local_chain, tmp_path, urls={"origin": origin_registry})
    reference = local_chain.reference(fresh_repo, "v1")
    first = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    assert engine_check(path, reference).judgement.verdict.value == "Healthy"  # both proxies cache v1

    moved = push_flux_artifact(local_chain.push_address, fresh_repo, "v1", {"new.yaml": b"kind: Secret\n"})
    local_chain.faults("origin").set([{"kind": "drop", "repository": fresh_repo, "tag": "v1"}])
    result = engine_check(path, reference, settings=FAST)

    assert hop_verdicts(result) == {"edge": "DigestMismatch", "core": "DigestMismatch", "origin": "Healthy"}
    assert result.judgement.blame == "core"
    assert result.judgement.origin_digest == moved.manifest_digest
    core = result.observations[1]
    assert core.tag_digest == first.manifest_digest


@pytest.mark.parametrize("hop", HOPS)
def test_a_dropped_layer_is_reported_per_hop_in_the_cli_json_with_blame_and_exit_status_1(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path, hop: str
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    layer = pushed.content_layer.digest
    repository = local_chain.repository_at(hop, fresh_repo)
    local_chain.faults(hop).set([{"kind": "drop", "repository": repository, "digest": layer}])

    path = chain_file(local_chain, tmp_path)
    run = run_cli(
        "check", "--chain", str(path), "--output", "json", f"oci://{local_chain.reference(fresh_repo, 'v1')}"
    )

    assert run.status == 1, run
    report = run.report
    assert report["verdict"] == "LayerMissing"
    assert report["blame"] == hop
    assert report["originDigest"] == pushed.manifest_digest
    assert_verdicts(hop_verdicts(report), hop, "LayerMissing")
    faulted = next(h for h in report["hops"] if h["name"] == hop)
    assert faulted["config"]["status"] == "ok"
    assert [(layer["index"], layer["digest"], layer["status"]) for layer in faulted["layers"]] == [
        (0, layer, "missing")
    ]
    assert f"layer 0 {layer[:19]}" in faulted["message"]


def test_without_a_selector_an_octet_stream_first_layer_is_a_layer_order_mismatch_blamed_on_the_origin(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    """fluxcd/flux2#4955: with no layerSelector Flux extracts layers[0], here not the content layer."""
    push_multilayer_artifact(local_chain.push_address, fresh_repo, "v1")
    path = chain_file(local_chain, tmp_path)
    reference = local_chain.reference(fresh_repo, "v1")

    result = engine_check(path, reference)
    assert hop_verdicts(result) == dict.fromkeys(HOPS, "LayerOrderMismatch")
    assert result.judgement.blame == "origin"
    assert "Flux extracts layer 0" in result.judgement.message

    selected = engine_check(path, reference, layer_media_type=FLUX_CONTENT_MEDIA_TYPE)
    assert hop_verdicts(selected) == dict.fromkeys(HOPS, "Healthy")
    assert selected.judgement.blame is None


def test_a_layer_selector_that_matches_no_layer_is_blamed_on_the_origin(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    path = chain_file(local_chain, tmp_path)
    run = run_cli(
        "check",
        "--chain",
        str(path),
        "--output",
        "json",
        "--layer-media-type",
        "application/vnd.example.missing.v1",
        f"oci://{local_chain.reference(fresh_repo, 'v1')}",
    )
    assert run.status == 1, run
    assert hop_verdicts(run.report) == dict.fromkeys(HOPS, "LayerSelectorUnmatched")
    assert run.report["blame"] == "origin"
    assert run.report["layerMediaType"] == "application/vnd.example.missing.v1"


def test_an_intact_artifact_is_healthy_at_every_hop_with_a_two_prefix_harbor_path_mapping(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    path = chain_file(local_chain, tmp_path)
    run = run_cli(
        "check", "--chain", str(path), "--output", "json", f"oci://{local_chain.reference(fresh_repo, 'v1')}"
    )

    assert run.status == 0, run
    report = run.report
    assert report["verdict"] == "Healthy"
    assert report["blame"] is None
    assert report["originDigest"] == pushed.manifest_digest
    assert [(h["name"], h["repository"]) for h in report["hops"]] == [
        ("edge", f"p-core/p-ghcr/{fresh_repo}"),
        ("core", f"p-ghcr/{fresh_repo}"),
        ("origin", fresh_repo),
    ]
    assert [h["url"] for h in report["hops"]] == [
        local_chain.edge_url,
        local_chain.core_url,
        local_chain.origin_url,
    ]
    for hop in report["hops"]:
        assert hop["verdict"] == "Healthy"
        assert hop["manifestDigest"] == pushed.manifest_digest
        assert hop["config"] == {
            "digest": pushed.config_digest,
            "mediaType": pushed.config.media_type,
            "size": pushed.config.size,
            "status": "ok",
            "cached": False,
            "detail": "verified",
        }
        assert [(x["digest"], x["size"], x["status"]) for x in hop["layers"]] == [
            (pushed.content_layer.digest, pushed.content_layer.size, "ok")
        ]


def test_head_mode_finds_an_intact_artifact_healthy_and_a_dropped_layer_missing(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    path = chain_file(local_chain, tmp_path)
    reference = local_chain.reference(fresh_repo, "v1")
    cold = engine_check(path, reference, mode=Mode.HEAD)
    assert hop_verdicts(cold) == dict.fromkeys(HOPS, "Healthy"), "HEAD 404 of an uncached blob is not missing"
    healthy = engine_check(path, reference, mode=Mode.HEAD)
    assert hop_verdicts(healthy) == dict.fromkeys(HOPS, "Healthy")
    assert all(o.bytes_verified == 0 for o in healthy.observations), "head mode downloads no cached blob"

    other = f"{fresh_repo}-b"
    pushed = push_flux_artifact(local_chain.push_address, other, "v1")
    layer = pushed.content_layer.digest
    local_chain.faults("core").set(
        [{"kind": "drop", "repository": local_chain.repository_at("core", other), "digest": layer}]
    )
    missing = engine_check(path, local_chain.reference(other, "v1"), mode=Mode.HEAD, settings=FAST)
    assert hop_verdicts(missing) == {"edge": "LayerMissing", "core": "LayerMissing", "origin": "Healthy"}
    assert missing.judgement.blame == "core"


# -- could not check: unknown verdicts never count as unhealthy ------------------------------------


def _unknown(
    run_status: int, report: dict[str, Any], verdicts: dict[str, str], blame: str, verdict: str
) -> None:
    assert run_status == 3, report
    assert hop_verdicts(report) == verdicts
    assert report["verdict"] == verdict
    assert report["blame"] == blame


@pytest.mark.parametrize("hop", ["core", "origin"])
def test_a_hop_whose_port_is_closed_is_unreachable_not_unhealthy_and_exits_3(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path, hop: str
) -> None:
    """Only the checker's own view of the hop is cut; the proxies still reach it, so the rest is healthy."""
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    prefix = local_chain.hop(hop).prefix
    url = closed_port_url() + (f"/{prefix}" if prefix else "")
    path = chain_file(local_chain, tmp_path, urls={hop: url})
    run = check_json(path, f"oci://{local_chain.reference(fresh_repo, 'v1')}")
    verdicts = dict.fromkeys(HOPS, "Healthy") | {hop: "Unreachable"}
    _unknown(run.status, run.report, verdicts, hop, "Unreachable")


def test_a_hop_answering_503_after_retries_is_unreachable_not_unhealthy(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    repository = local_chain.repository_at("edge", fresh_repo)
    local_chain.faults("edge").set([{"kind": "error", "status": 503, "repository": repository}])
    path = chain_file(local_chain, tmp_path)
    run = check_json(path, f"oci://{local_chain.reference(fresh_repo, 'v1')}")
    _unknown(
        run.status,
        run.report,
        {"edge": "Unreachable", "core": "Healthy", "origin": "Healthy"},
        "edge",
        "Unreachable",
    )
    assert "503" in run.report["hops"][0]["message"]
    errors = [r for r in local_chain.faults("edge").requests() if r["status"] == 503]
    assert len(errors) == 3, "the first attempt and two retries (EngineSettings.retries=2)"


def test_wrong_credentials_at_the_edge_are_auth_failed_not_unhealthy(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    path = chain_file(local_chain, tmp_path, credentials={"edge": ("robot$lab+edge", "not-the-secret")})
    run = run_cli(
        "check", "--chain", str(path), "--output", "json", f"oci://{local_chain.reference(fresh_repo, 'v1')}"
    )
    _unknown(
        run.status,
        run.report,
        {"edge": "AuthFailed", "core": "Healthy", "origin": "Healthy"},
        "edge",
        "AuthFailed",
    )


def test_a_429_whose_retry_after_outlasts_the_budget_is_rate_limited_not_unhealthy(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    repository = local_chain.repository_at("core", fresh_repo)
    local_chain.faults("core").set(
        [{"kind": "ratelimit", "retry_after": 120, "repository": repository, "method": "HEAD", "tag": "v1"}]
    )
    path = chain_file(local_chain, tmp_path)
    run = run_cli(
        "check",
        "--chain",
        str(path),
        "--output",
        "json",
        "--timeout",
        "10",
        f"oci://{local_chain.reference(fresh_repo, 'v1')}",
        timeout=30,
    )
    verdicts = hop_verdicts(run.report)
    assert verdicts["core"] == "RateLimited", run
    unknown_or_healthy = {"Healthy", "Unreachable", "AuthFailed", "RateLimited"}
    assert set(verdicts.values()) <= unknown_or_healthy, verdicts
    assert run.status == 3, run
    assert run.report["verdict"] == "RateLimited"
    assert run.report["blame"] == "core"


def test_a_429_with_a_short_retry_after_is_waited_out_and_ends_healthy(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    repository = local_chain.repository_at("edge", fresh_repo)
    local_chain.faults("edge").set(
        [{"kind": "ratelimit", "retry_after": 1, "count": 2, "repository": repository}]
    )
    path = chain_file(local_chain, tmp_path)
    result = engine_check(
        path, local_chain.reference(fresh_repo, "v1"), settings=EngineSettings(retry_budget=5.0)
    )
    assert hop_verdicts(result) == dict.fromkeys(HOPS, "Healthy")
    assert local_chain.faults("edge").active()[0]["count"] == 0, "both 429s were served and waited out"
    assert result.observations[0].duration >= 1.0
