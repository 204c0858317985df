"""``layerwatch`` as a user runs it (the installed console script) against the real chain.

Exit statuses (0 healthy, 1 unhealthy, 2 usage, 3 unknown), the JSON report, hostile registries
giving a verdict and never a traceback, credentials never printed, ``inspect`` (text and JSON,
indexes too), several references in one run, and ``--verbose``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml
from tests.registry.helpers import HOPS, CliRun, chain_file, closed_port_url, hop_verdicts, run_cli

from lab.artifacts import (
    FLUX_CONTENT_MEDIA_TYPE,
    OCTET_STREAM,
    push_flux_artifact,
    push_index,
    push_multilayer_artifact,
)
from lab.chain import EDGE_USER, LocalChain
from lab.faults import HOSTILE_AUTH_VARIANTS

pytestmark = [pytest.mark.registry, pytest.mark.timeout(120)]

WRONG_PASSWORD = "Wr0ng-pa55-Zq9xK7"
"""A password no registry accepts, distinctive enough that finding it in output means a leak."""


def assert_clean(run: CliRun) -> None:
    """No traceback, and anything on stderr is one line."""
    assert "Traceback" not in run.output, run
    assert len(run.stderr.strip().splitlines()) <= 1, run


def check(chain: LocalChain, path: Path, repository: str, *args: str, tag: str = "v1") -> CliRun:
    return run_cli("check", "--chain", str(path), *args, f"oci://{chain.reference(repository, tag)}")


# -- exit statuses and the JSON report ------------------------------------------------------------


def test_exit_status_is_0_healthy_1_unhealthy_3_unknown_2_usage(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    path = chain_file(local_chain, tmp_path)
    assert check(local_chain, path, fresh_repo).status == 0

    local_chain.faults("origin").set([{"kind": "drop", "digest": pushed.content_layer.digest}])
    unhealthy = check(local_chain, path, fresh_repo, "--output", "text")
    assert unhealthy.status == 1, unhealthy
    assert "verdict LayerMissing, blame: hop origin" in unhealthy.stdout
    local_chain.faults("origin").clear()

    other = f"{fresh_repo}-b"
    push_flux_artifact(local_chain.push_address, other, "v1")
    down = chain_file(local_chain, tmp_path, urls={"origin": closed_port_url()})
    unknown = check(local_chain, down, other, "--timeout", "5")
    assert unknown.status == 3, unknown
    assert "Unreachable" in unknown.stdout

    usage = run_cli("check", "--chain", str(path), "--mode", "sideways", "oci://x/y:z")
    assert usage.status == 2
    assert "Traceback" not in usage.output


def test_the_json_report_has_every_spec_field_for_every_hop(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    run = check(local_chain, chain_file(local_chain, tmp_path), fresh_repo, "--output", "json")
    assert run.status == 0, run
    assert_clean(run)
    report = run.report
    assert report["reference"] == f"oci://{local_chain.reference(fresh_repo, 'v1')}"
    assert report["verdict"] == "Healthy" and report["blame"] is None
    assert report["originDigest"] == pushed.manifest_digest
    assert [hop["name"] for hop in report["hops"]] == list(HOPS)
    for hop in report["hops"]:
        assert {
            "name",
            "url",
            "repository",
            "verdict",
            "message",
            "manifestDigest",
            "config",
            "layers",
        } <= set(hop)
        assert hop["manifestDigest"] == pushed.manifest_digest
        assert set(hop["config"]) >= {"digest", "mediaType", "size", "status"}
        assert hop["config"]["status"] in {"ok", "missing", "corrupt", "unchecked"}
        for layer in hop["layers"]:
            assert set(layer) >= {"index", "digest", "mediaType", "size", "status"}
        assert hop["layers"][0]["mediaType"] == FLUX_CONTENT_MEDIA_TYPE


# -- hostile registries: a verdict, never a traceback ---------------------------------------------


def test_a_garbage_manifest_is_manifest_corrupt_without_a_traceback(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    edge = local_chain.repository_at("edge", fresh_repo)
    local_chain.faults("edge").set([{"kind": "garbage-manifest", "repository": edge}])
    for output in ("text", "json"):
        run = check(local_chain, chain_file(local_chain, tmp_path), fresh_repo, "--output", output)
        assert run.status == 1, run
        assert_clean(run)
    assert hop_verdicts(run.report) == {"edge": "ManifestCorrupt", "core": "Healthy", "origin": "Healthy"}
    assert "not valid JSON" in run.report["hops"][0]["message"]


@pytest.mark.parametrize("variant", sorted(HOSTILE_AUTH_VARIANTS))
def test_a_hostile_www_authenticate_is_an_unknown_verdict_without_a_traceback(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path, variant: str
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    edge = local_chain.repository_at("edge", fresh_repo)
    local_chain.faults("edge").set([{"kind": "hostile-auth", "variant": variant, "repository": edge}])
    run = check(
        local_chain, chain_file(local_chain, tmp_path), fresh_repo, "--output", "json", "--timeout", "5"
    )
    assert_clean(run)
    assert run.status == 3, run
    verdicts = hop_verdicts(run.report)
    assert verdicts["edge"] in {"AuthFailed", "Unreachable"}, run.report["hops"][0]["message"]
    assert verdicts["core"] == verdicts["origin"] == "Healthy"
    assert len(run.report["hops"][0]["message"]) < 400, "a huge header is not echoed back"


@pytest.mark.parametrize("what", ["manifest", "blob"])
def test_an_endless_body_is_cut_off_and_reported_corrupt(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path, what: str
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    edge = local_chain.repository_at("edge", fresh_repo)
    target = {"tag": "v1"} if what == "manifest" else {"digest": pushed.content_layer.digest}
    local_chain.faults("edge").set([{"kind": "endless", "repository": edge, **target}])
    run = check(
        local_chain, chain_file(local_chain, tmp_path), fresh_repo, "--output", "json", "--timeout", "10"
    )
    assert_clean(run)
    assert run.status == 1, run
    expected = "ManifestCorrupt" if what == "manifest" else "LayerCorrupt"
    assert hop_verdicts(run.report) == {"edge": expected, "core": "Healthy", "origin": "Healthy"}


# -- bad input: one line, exit 2 ---------------------------------------------------------------


def test_bad_input_is_one_line_on_stderr_and_exit_2(local_chain: LocalChain, tmp_path: Path) -> None:
    good = chain_file(local_chain, tmp_path)
    duplicate = tmp_path / "duplicate.yaml"
    document = yaml.safe_load(good.read_text())
    document["spec"]["hops"][1]["name"] = "edge"
    duplicate.write_text(yaml.safe_dump(document))
    reference = f"oci://{local_chain.reference('org/app', 'v1')}"
    cases = {
        "bad reference": ("check", "--chain", str(good), "oci://Not A/Reference:::"),
        "missing chain file": ("check", "--chain", str(tmp_path / "absent.yaml"), reference),
        "duplicate hop names": ("check", "--chain", str(duplicate), reference),
        "reference under no hop": ("check", "--chain", str(good), "oci://elsewhere.example/org/app:v1"),
        "chain and hops together": ("check", "--chain", str(good), "--hop", "a=http://x", reference),
    }
    for case, args in cases.items():
        run = run_cli(*args)
        assert run.status == 2, (case, run)
        assert run.stdout == "", (case, run)
        assert_clean(run)
        assert run.stderr.startswith("layerwatch: "), (case, run)
    assert "duplicate hop names: edge" in run_cli(*cases["duplicate hop names"]).stderr


# -- credentials never appear in output ---------------------------------------------------------


def _secrets(username: str, password: str) -> list[str]:
    return [password, base64.b64encode(f"{username}:{password}".encode()).decode(), "Bearer "]


def _docker_config(directory: Path, host: str, username: str, password: str) -> Path:
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    path = directory / "docker" / "config.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


@pytest.mark.parametrize("source", ["chain-file", "docker-config"])
@pytest.mark.parametrize("password", ["right", "wrong"])
def test_credentials_never_appear_in_text_or_json_output(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path, source: str, password: str
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    username, secret = EDGE_USER[0], EDGE_USER[1] if password == "right" else WRONG_PASSWORD
    extra: list[str] = []
    if source == "chain-file":
        path = chain_file(local_chain, tmp_path, credentials={"edge": (username, secret)})
    else:
        path = chain_file(local_chain, tmp_path, credentials={"edge": None})
        config = _docker_config(tmp_path, local_chain.hop("edge").address, username, secret)
        extra = ["--docker-config", str(config)]
    # Damage at the edge too, so messages about the failing hop are printed as well.
    local_chain.faults("edge").set([{"kind": "drop", "digest": pushed.content_layer.digest}])
    for output in ("text", "json"):
        run = check(local_chain, path, fresh_repo, "--output", output, *extra)
        assert_clean(run)
        assert run.status == (1 if password == "right" else 3), run
        for leaked in _secrets(username, secret):
            assert leaked not in run.output, f"{leaked!r} printed with --output {output}"
    if password == "wrong":
        assert hop_verdicts(run.report)["edge"] == "AuthFailed"
    inspect = run_cli(
        "inspect", "--chain", str(path), *extra, f"oci://{local_chain.reference(fresh_repo, 'v1')}"
    )
    for leaked in _secrets(username, secret):
        assert leaked not in inspect.output


# -- inspect -------------------------------------------------------------------------------------


def test_inspect_says_which_layer_flux_extracts_with_and_without_a_selector_and_that_config_is_not_a_layer(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    pushed = push_multilayer_artifact(local_chain.push_address, fresh_repo, "v1")
    run = run_cli(
        "inspect",
        "--chain",
        str(chain_file(local_chain, tmp_path)),
        f"oci://{local_chain.reference(fresh_repo, 'v1')}",
    )
    assert run.status == 0, run
    assert_clean(run)
    text = run.stdout
    assert f"config (not a layer)  {pushed.config_digest}" in text
    assert f"[0] {pushed.layers[0].digest}  {pushed.layers[0].size} B  {OCTET_STREAM}" in text
    assert f"[1] {pushed.layers[1].digest}" in text
    assert f"without layerSelector: layer 0 ({OCTET_STREAM}, NOT the Flux content layer)" in text
    assert f"with layerSelector.mediaType={FLUX_CONTENT_MEDIA_TYPE}: layer 1" in text
    assert "org.opencontainers.image.revision=v1@sha1:" in text


def test_inspect_o_json_is_the_same_structure_as_data(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    pushed = push_multilayer_artifact(local_chain.push_address, fresh_repo, "v1")
    reference = f"oci://{local_chain.reference(fresh_repo, 'v1')}"
    run = run_cli("inspect", "--chain", str(chain_file(local_chain, tmp_path)), "-o", "json", reference)
    assert run.status == 0, run
    report = run.report
    assert report["reference"] == reference and report["digest"] == pushed.manifest_digest
    assert report["config"]["digest"] == pushed.config_digest
    assert [layer["digest"] for layer in report["layers"]] == pushed.layer_digests
    assert report["fluxLayer"]["withoutSelector"] == 0 and not report["fluxLayer"]["withoutSelectorIsContent"]
    assert report["fluxLayer"]["withSelector"] == 1


def test_inspect_of_an_index_shows_every_platforms_layers_and_the_one_flux_pulls(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    amd = push_flux_artifact(local_chain.push_address, fresh_repo, "amd")
    arm = push_multilayer_artifact(local_chain.push_address, fresh_repo, "arm")
    index = push_index(local_chain.push_address, fresh_repo, "v1", {"linux/arm64": arm, "linux/amd64": amd})
    reference = f"oci://{local_chain.reference(fresh_repo, 'v1')}"
    path = str(chain_file(local_chain, tmp_path))
    run = run_cli("inspect", "--chain", path, reference)
    assert run.status == 0, run
    assert "index of 2 manifests:" in run.stdout
    assert f"linux/amd64  {amd.manifest_digest}" in run.stdout and "<- Flux pulls this one" in run.stdout
    for layer in (*amd.layers, *arm.layers):
        assert f"] {layer.digest}  {layer.size} B" in run.stdout
    assert f"Flux pulls: the linux/amd64 manifest {amd.manifest_digest}" in run.stdout
    data = run_cli("inspect", "--chain", path, "-o", "json", reference).report
    assert data["digest"] == index and data["fluxManifest"] == amd.manifest_digest
    by_platform = {m["platform"]: m for m in data["manifests"]}
    assert [
        layer["digest"] for layer in by_platform["linux/arm64"]["manifest"]["layers"]
    ] == arm.layer_digests
    assert by_platform["linux/arm64"]["manifest"]["fluxLayer"]["withSelector"] == 1


# -- several references in one run ---------------------------------------------------------------------


def test_several_references_give_one_combined_report_and_the_worst_exit_code(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    good, bad = f"{fresh_repo}-good", f"{fresh_repo}-bad"
    push_flux_artifact(local_chain.push_address, good, "v1")
    broken = push_flux_artifact(local_chain.push_address, bad, "v1")
    local_chain.faults("origin").set([{"kind": "drop", "digest": broken.content_layer.digest}])
    path = str(chain_file(local_chain, tmp_path))
    refs = [f"oci://{local_chain.reference(repo, 'v1')}" for repo in (good, bad)]
    run = run_cli("check", "--chain", path, "-o", "json", *refs)
    assert run.status == 1, run
    report = run.report
    assert report["verdict"] == "LayerMissing"
    assert report["counts"] == {"healthy": 1, "unknown": 0, "unhealthy": 1}
    assert [check["reference"] for check in report["checks"]] == refs
    assert [check["verdict"] for check in report["checks"]] == ["Healthy", "LayerMissing"]
    text = run_cli("check", "--chain", path, *refs)
    assert text.status == 1 and "2 artifacts checked:" in text.stdout
    assert f"!!  LayerMissing (blame: hop origin)  {refs[1].removeprefix('oci://')}" in text.stdout
    healthy = run_cli("check", "--chain", path, "-o", "json", refs[0])
    assert healthy.status == 0 and healthy.report["reference"] == refs[0] and "checks" not in healthy.report


def test_a_targets_file_checks_each_target_on_its_chain_with_its_layer_selector(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    push_multilayer_artifact(local_chain.push_address, fresh_repo, "v2")
    chain = yaml.safe_load(chain_file(local_chain, tmp_path).read_text())
    url = f"oci://{local_chain.reference(fresh_repo, 'v1').rpartition(':')[0]}"
    targets = [
        chain,
        {"kind": "Target", "name": "plain", "url": url, "ref": {"tag": "v1"}, "chain": "lab"},
        {"kind": "Target", "name": "wrong-layer-first", "url": url, "ref": {"tag": "v2"}},
        {
            "kind": "Target",
            "name": "selected",
            "url": url,
            "ref": {"tag": "v2"},
            "layerSelector": {"mediaType": FLUX_CONTENT_MEDIA_TYPE},
        },
    ]
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump_all(targets))
    run = run_cli("check", "--targets", str(path), "-o", "json")
    assert run.status == 1, run
    verdicts = [check["verdict"] for check in run.report["checks"]]
    assert verdicts == ["Healthy", "LayerOrderMismatch", "Healthy"], run.report
    assert run.report["checks"][2]["layerMediaType"] == FLUX_CONTENT_MEDIA_TYPE


# -- --verbose -------------------------------------------------------------------------------------------


def test_verbose_prints_each_request_and_its_status_and_never_a_credential(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    username, password = EDGE_USER
    path = chain_file(local_chain, tmp_path, credentials={"edge": (username, password)})
    run = check(local_chain, path, fresh_repo, "--verbose", "-o", "json")
    assert run.status == 0, run
    edge = local_chain.hop("edge").address
    lines = run.stderr.splitlines()
    assert f"layerwatch: hop edge: http://{edge}/p-core as {username}, password ***" in lines
    repository = local_chain.repository_at("edge", fresh_repo)
    assert f"> edge: HEAD http://{edge}/v2/{repository}/manifests/v1 -> 200" in lines
    assert f"> edge: GET http://{edge}/v2/{repository}/blobs/{pushed.content_layer.digest} -> 200" in lines
    assert any(
        line.startswith(f"> edge: HEAD http://{edge}/") and line.endswith(" -> 401") for line in lines
    ), run
    for leaked in _secrets(username, password):
        assert leaked not in run.output
    assert json.loads(run.stdout)["verdict"] == "Healthy", "stdout keeps only the report"
