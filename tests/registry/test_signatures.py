"""Signatures through the lab chain, signed with the real cosign and notation CLIs.

Each test signs a fresh artifact at the origin, breaks one hop with a gateway fault (lost
``.sig`` tag, referrers API hidden as a Harbor proxy project hides it, a corrupted signature
blob) and checks that layerwatch names the verdict Flux's ``spec.verify`` would meet there and
blames that hop; hops downstream inherit the damage, hops upstream stay healthy.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml
from tests.registry.helpers import (
    HOPS,
    CliRun,
    chain_file,
    closed_port_url,
    engine_check,
    hop_verdicts,
    run_cli,
)

from lab.artifacts import PushedArtifact, push_flux_artifact
from lab.chain import LocalChain
from lab.signing import Signer
from layerwatch.signatures import Provider, ReferrersApi, referrers_tag, sig_tag
from layerwatch.verdict import CheckResult

pytestmark = pytest.mark.registry


def _signed(chain: LocalChain, signer: Signer, repo: str, how: str) -> PushedArtifact:
    artifact = push_flux_artifact(chain.push_address, repo, "v1")
    reference = f"{chain.push_address}/{repo}@{artifact.manifest_digest}"
    if how == "notation":
        signer.notation_sign(reference)
    else:
        signer.cosign_sign(reference, bundle=how == "bundle")
    return artifact


def _origin_manifest(chain: LocalChain, repo: str, ref: str) -> dict[str, object]:
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
    response = httpx.get(f"http://{chain.push_address}/v2/{repo}/manifests/{ref}", headers={"Accept": accept})
    response.raise_for_status()
    document: dict[str, object] = response.json()
    return document


def assert_blamed(result: CheckResult, hop: str, verdict: str) -> None:
    """``verdict`` at ``hop`` and below it (they pull through it), Healthy above it, ``hop`` blamed."""
    below = HOPS.index(hop)
    expected = {name: verdict if i <= below else "Healthy" for i, name in enumerate(HOPS)}
    assert hop_verdicts(result) == expected, result.judgement
    assert result.judgement.blame == hop


def without_referrers(subject: str) -> list[dict[str, str]]:
    """A Harbor proxy project without proxy_referrer_api in front of an origin with the referrers API:
    404 at the API, and no referrers tag to fall back to (such an origin never writes one)."""
    return [{"kind": "hide-referrers"}, {"kind": "drop", "tag": referrers_tag(subject)}]


def _check(chain: LocalChain, tmp_path: Path, repo: str, provider: Provider | None) -> CheckResult:
    return engine_check(chain_file(chain, tmp_path), chain.reference(repo, "v1"), verify=provider)


def test_signed_artifact_is_healthy_with_its_signatures_at_every_hop(
    local_chain: LocalChain, signer: Signer, fresh_repo: str, tmp_path: Path
) -> None:
    _signed(local_chain, signer, fresh_repo, "bundle")
    result = _check(local_chain, tmp_path, fresh_repo, Provider.COSIGN)
    assert hop_verdicts(result) == dict.fromkeys(HOPS, "Healthy")
    for observation in result.observations:
        assert observation.signatures is not None
        assert [s.kind for s in observation.signatures.signatures] == ["cosign bundle"]
        assert observation.signatures.signatures[0].found_via == "referrers API"


def test_dropped_sig_tag_is_signature_missing_blamed_on_that_hop(
    local_chain: LocalChain, signer: Signer, fresh_repo: str, tmp_path: Path
) -> None:
    artifact = _signed(local_chain, signer, fresh_repo, "legacy")
    local_chain.faults("core").set([{"kind": "drop", "tag": sig_tag(artifact.manifest_digest)}])
    result = _check(local_chain, tmp_path, fresh_repo, Provider.COSIGN)
    assert_blamed(result, "core", "SignatureMissing")
    assert f"tag {sig_tag(artifact.manifest_digest)} layer 0" in result.judgement.message
    assert "not found here" in result.judgement.message


def test_hidden_referrers_api_without_fallback_tag_is_the_harbor_case(
    local_chain: LocalChain, signer: Signer, fresh_repo: str, tmp_path: Path
) -> None:
    """Origin answers the referrers API; core answers 404 and has no referrers tag: Flux finds no bundle."""
    artifact = _signed(local_chain, signer, fresh_repo, "bundle")
    local_chain.faults("core").set(without_referrers(artifact.manifest_digest))
    result = _check(local_chain, tmp_path, fresh_repo, Provider.COSIGN)
    assert_blamed(result, "core", "SignatureMissing")
    message = result.judgement.message
    assert "the referrers API answers 404 here but works at origin" in message
    assert "proxy_referrer_api" in message


def test_a_referrers_api_answering_without_the_bundle_is_missing_with_the_same_advice(
    local_chain: LocalChain, signer: Signer, fresh_repo: str, tmp_path: Path
) -> None:
    """The origin keeps its referrers behind its API only (no referrers tag a proxy could pull), and
    core answers the API from what it holds itself, nothing: as a Harbor proxy project does by default."""
    artifact = _signed(local_chain, signer, fresh_repo, "bundle")
    local_chain.faults("origin").set([{"kind": "drop", "tag": referrers_tag(artifact.manifest_digest)}])
    result = _check(local_chain, tmp_path, fresh_repo, Provider.COSIGN)
    assert_blamed(result, "core", "SignatureMissing")
    core = result.observations[1].signatures
    assert core is not None and core.referrers_api is ReferrersApi.OK and core.signatures == ()
    assert "the referrers API here does not list it" in result.judgement.message


def test_hidden_referrers_api_saved_by_the_tag_fallback_is_a_note(
    local_chain: LocalChain, signer: Signer, fresh_repo: str, tmp_path: Path
) -> None:
    """The verifier falls back to the sha256-<hex> tag on 404: healthy, but the hop is named."""
    _signed(local_chain, signer, fresh_repo, "bundle")
    local_chain.faults("core").set([{"kind": "hide-referrers"}])
    result = _check(local_chain, tmp_path, fresh_repo, Provider.COSIGN)
    assert hop_verdicts(result) == dict.fromkeys(HOPS, "Healthy")
    core = result.observations[1].signatures
    assert core is not None and core.signatures[0].found_via.startswith("tag sha256-")
    assert any(note.startswith("hop core: the referrers API answers 404") for note in result.judgement.notes)


def test_corrupted_signature_blob_is_signature_corrupt_blamed_on_that_hop(
    local_chain: LocalChain, signer: Signer, fresh_repo: str, tmp_path: Path
) -> None:
    artifact = _signed(local_chain, signer, fresh_repo, "legacy")
    signature = _origin_manifest(local_chain, fresh_repo, sig_tag(artifact.manifest_digest))
    layer = signature["layers"][0]["digest"]  # type: ignore[index]
    local_chain.faults("core").set([{"kind": "corrupt", "digest": layer}])
    result = _check(local_chain, tmp_path, fresh_repo, Provider.COSIGN)
    assert_blamed(result, "core", "SignatureCorrupt")
    assert "content hashes to" in result.judgement.message


def test_notation_signature_behind_a_hop_without_referrers_is_missing(
    local_chain: LocalChain, signer: Signer, fresh_repo: str, tmp_path: Path
) -> None:
    artifact = _signed(local_chain, signer, fresh_repo, "notation")
    local_chain.faults("edge").set(without_referrers(artifact.manifest_digest))
    result = _check(local_chain, tmp_path, fresh_repo, Provider.NOTATION)
    assert_blamed(result, "edge", "SignatureMissing")
    assert "notation signature" in result.judgement.message


def test_corrupted_notation_envelope_is_signature_corrupt(
    local_chain: LocalChain, signer: Signer, fresh_repo: str, tmp_path: Path
) -> None:
    artifact = _signed(local_chain, signer, fresh_repo, "notation")
    index = _origin_manifest(local_chain, fresh_repo, referrers_tag(artifact.manifest_digest))
    signature = _origin_manifest(local_chain, fresh_repo, index["manifests"][0]["digest"])  # type: ignore[index]
    envelope = signature["layers"][0]["digest"]  # type: ignore[index]
    local_chain.faults("core").set([{"kind": "corrupt", "digest": envelope}])
    result = _check(local_chain, tmp_path, fresh_repo, Provider.NOTATION)
    assert_blamed(result, "core", "SignatureCorrupt")


def test_unsigned_artifact_without_verify_is_never_judged_on_signatures(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    result = _check(local_chain, tmp_path, fresh_repo, None)
    assert hop_verdicts(result) == dict.fromkeys(HOPS, "Healthy")
    assert all(o.signatures is None for o in result.observations)
    asked = [r["path"] for hop in local_chain.hops for r in hop.gateway.faults.requests()]
    assert asked and not any("/referrers/" in p or p.endswith(".sig") for p in asked)


def test_unsigned_artifact_with_verify_is_signature_missing_at_the_origin(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    result = _check(local_chain, tmp_path, fresh_repo, Provider.COSIGN)
    assert set(hop_verdicts(result).values()) == {"SignatureMissing"}
    assert result.judgement.blame == "origin"
    assert "Flux's verification would fail" in result.judgement.message


def test_cli_report_lists_signatures_per_hop(
    local_chain: LocalChain, signer: Signer, fresh_repo: str, tmp_path: Path
) -> None:
    artifact = _signed(local_chain, signer, fresh_repo, "legacy")
    local_chain.faults("core").set([{"kind": "drop", "tag": sig_tag(artifact.manifest_digest)}])
    run = run_cli(
        "check",
        "--chain",
        str(chain_file(local_chain, tmp_path)),
        "--docker-config",
        str(tmp_path / "docker-config.json"),
        "--verify",
        "cosign",
        "--output",
        "json",
        local_chain.reference(fresh_repo, "v1"),
    )
    assert run.status == 1, run
    hops = {hop["name"]: hop for hop in run.report["hops"]}
    assert hops["core"]["verdict"] == "SignatureMissing" and run.report["blame"] == "core"
    assert hops["core"]["signatures"]["signatures"] == []
    origin = hops["origin"]["signatures"]
    assert origin["provider"] == "cosign" and origin["signatures"][0]["status"] == "ok"
    assert origin["signatures"][0]["foundVia"].endswith(".sig layer 0")
    assert origin["signatures"][0]["bytesVerified"] > 0, "the payload and config were downloaded and hashed"
    schema = json.loads((Path(__file__).resolve().parents[2] / "docs" / "report.schema.json").read_text())
    jsonschema.validate(run.report, schema)


def test_a_chain_file_can_opt_in_to_signature_checks(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    path = chain_file(local_chain, tmp_path)
    document = yaml.safe_load(path.read_text())
    document["spec"]["verify"] = {"provider": "notation"}
    path.write_text(yaml.safe_dump(document))
    run = run_cli(
        "check",
        "--chain",
        str(path),
        "--docker-config",
        str(tmp_path / "docker-config.json"),
        "--output",
        "json",
        local_chain.reference(fresh_repo, "v1"),
    )
    assert run.status == 1, run
    assert run.report["verdict"] == "SignatureMissing" and run.report["blame"] == "origin"
    assert "no notation signature" in run.report["message"]


@pytest.mark.parametrize("bundle", [False, True], ids=["sig-tag", "bundle"])
def test_the_optional_key_check_tells_the_signing_key_from_another(
    local_chain: LocalChain,
    signer: Signer,
    fresh_repo: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    bundle: bool,
) -> None:
    _signed(local_chain, signer, fresh_repo, "bundle" if bundle else "legacy")
    path = str(chain_file(local_chain, tmp_path))
    config = str(tmp_path / "docker-config.json")
    reference = local_chain.reference(fresh_repo, "v1")

    def check(key: Path) -> CliRun:
        args = ("--docker-config", config, "--cosign-key", str(key), "--output", "json", reference)
        return run_cli("check", "--chain", path, *args)

    good = check(signer.cosign_keys()[1])
    assert good.status == 0, good
    assert all(h["signatures"]["signatures"][0]["trusted"] is True for h in good.report["hops"])
    stranger = Signer(tmp_path_factory.mktemp("other-keys")).cosign_keys()[1]
    bad = check(stranger)
    assert bad.status == 1, bad
    assert set(hop_verdicts(bad.report).values()) == {"SignatureMissing"} and bad.report["blame"] == "origin"
    assert "does not verify with the given key" in bad.report["message"]


def test_a_cosign_key_with_notation_or_that_is_no_key_is_a_usage_error(tmp_path: Path) -> None:
    key = tmp_path / "cosign.pub"
    key.write_text("not a key")
    where = ("--hop", f"origin={closed_port_url()}", "127.0.0.1:9/org/app:v1")
    run = run_cli("check", "--verify", "notation", "--cosign-key", str(key), *where)
    assert run.status == 2 and "does not go with --verify notation" in run.stderr, run
    run = run_cli("check", "--cosign-key", str(key), *where)
    assert run.status == 2 and "not a PEM public key" in run.stderr, run


def test_lab_gateways_answer_the_referrers_api_as_the_distribution_spec_says(
    local_chain: LocalChain, signer: Signer, fresh_repo: str
) -> None:
    """An index, empty rather than 404 when nothing refers; filtered on request, saying so; and
    404 under the hide-referrers fault. Through every hop, since each asks its own registry."""
    unsigned = push_flux_artifact(local_chain.push_address, fresh_repo, "v0").manifest_digest
    signed = _signed(local_chain, signer, fresh_repo, "notation").manifest_digest
    core = local_chain.hop("core")
    base = f"{core.gateway.url}/v2/{local_chain.repository_at('core', fresh_repo)}/referrers"
    empty = httpx.get(f"{base}/{unsigned}")
    assert empty.status_code == 200 and empty.json()["manifests"] == []
    assert empty.headers["content-type"] == "application/vnd.oci.image.index.v1+json"
    listed = httpx.get(f"{base}/{signed}", params={"artifactType": "application/vnd.cncf.notary.signature"})
    assert [m["artifactType"] for m in listed.json()["manifests"]] == [
        "application/vnd.cncf.notary.signature"
    ]
    assert listed.headers["oci-filters-applied"] == "artifactType"
    other = httpx.get(f"{base}/{signed}", params={"artifactType": "application/spdx+json"})
    assert other.json()["manifests"] == []
    local_chain.faults("core").set([{"kind": "hide-referrers"}])
    assert httpx.get(f"{base}/{signed}").status_code == 404
    manifest = httpx.get(
        f"{core.gateway.url}/v2/{local_chain.repository_at('core', fresh_repo)}/manifests/{unsigned}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert manifest.status_code == 200, "hide-referrers touches nothing but the referrers API"
