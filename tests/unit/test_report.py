"""The report users and CI read: the JSON report, the text table, exit codes, and no secrets."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from layerwatch.chain import Chain, Credentials, Hop, Mode
from layerwatch.manifest import FLUX_CONTENT, OCI_INDEX, OCI_MANIFEST, Descriptor, Index, Manifest
from layerwatch.observation import BlobStatus, Fault, FaultKind, HopObservation
from layerwatch.reference import Reference
from layerwatch.report import (
    Children,
    combined_exit_code,
    combined_json,
    combined_text,
    describe_artifact,
    exit_code,
    inspect_json,
    to_json,
    to_text,
)
from layerwatch.verdict import CheckResult, judge

from .builders import (
    ARTIFACT,
    REFERENCE,
    TAG_UNKNOWN,
    descriptor,
    failure,
    healthy_chain,
    manifest,
    observe,
    replace_at,
)

EDGE, CORE, ORIGIN = 0, 1, 2
PASSWORD = "hunter2-Sup3rSecret"


def result(
    observations: Sequence[HopObservation],
    *,
    layer_media_type: str | None = None,
    reference: Reference = REFERENCE,
) -> CheckResult:
    return CheckResult(
        reference=reference,
        observations=tuple(observations),
        judgement=judge(observations, layer_media_type=layer_media_type),
        mode=Mode.FULL,
        layer_media_type=layer_media_type,
        started=1_700_000_000.0,
        finished=1_700_000_001.5,
    )


def core_lost_a_layer() -> list[HopObservation]:
    missing = {0: (BlobStatus.MISSING, "missing (404)")}
    return [observe(EDGE, blobs=missing), observe(CORE, blobs=missing), observe(ORIGIN)]


def keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield key
            yield from keys(child)
    elif isinstance(value, list):
        for child in value:
            yield from keys(child)


def test_the_json_report_has_every_spec_field_with_camel_case_names() -> None:
    report = to_json(result(core_lost_a_layer()))
    json.dumps(report)  # serialisable as is
    assert report["reference"] == "oci://a.example/p-core/p-ghcr/org/app:v1"
    assert report["verdict"] == "LayerMissing"
    assert report["blame"] == "core"
    assert report["originDigest"].startswith("sha256:")
    assert {"reference", "verdict", "blame", "originDigest", "hops"} <= report.keys()
    assert [hop["name"] for hop in report["hops"]] == ["edge", "core", "origin"]
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
        } <= hop.keys()
        assert set(hop["config"]) >= {"digest", "mediaType", "size", "status"}
        assert "index" not in hop["config"]
        for position, layer in enumerate(hop["layers"]):
            assert set(layer) >= {"index", "digest", "mediaType", "size", "status"}
            assert layer["index"] == position
    core = report["hops"][CORE]
    assert (core["url"], core["repository"]) == ("https://b.example/p-ghcr", "p-ghcr/org/app")
    assert core["layers"][0]["status"] == "missing"
    assert core["message"].startswith("hop core (b.example/p-ghcr/org/app): layer 0 ")
    assert report["hops"][ORIGIN]["verdict"] == "Healthy"
    assert all("_" not in key for key in keys(report)), sorted(k for k in keys(report) if "_" in k)


def test_a_healthy_report_blames_nobody() -> None:
    report = to_json(result(healthy_chain()))
    assert report["verdict"] == "Healthy" and report["blame"] is None


@pytest.mark.parametrize("status", list(BlobStatus))
def test_blob_statuses_are_ok_missing_corrupt_or_unchecked(status: BlobStatus) -> None:
    report = to_json(result(replace_at(healthy_chain(), EDGE, observe(EDGE, blobs={0: (status, "x")}))))
    statuses = {blob["status"] for hop in report["hops"] for blob in [hop["config"], *hop["layers"]]}
    assert statuses <= {"ok", "missing", "corrupt", "unchecked"}
    assert report["hops"][EDGE]["layers"][0]["status"] == status.value


def test_a_hop_that_served_no_manifest_has_no_config_and_no_layers() -> None:
    observations = replace_at(healthy_chain(), CORE, observe(CORE, manifest_problem=TAG_UNKNOWN))
    hop = to_json(result(observations))["hops"][CORE]
    assert hop["config"] is None and hop["layers"] == [] and hop["manifestDigest"] is None
    assert hop["verdict"] == "ManifestMissing"


def test_an_index_lists_its_platform_manifests_in_the_report() -> None:
    edge = observe(EDGE)
    child = dataclasses.replace(edge.manifests[0], platform="linux/amd64")
    index = Index(
        OCI_INDEX,
        (
            Descriptor(
                "application/vnd.oci.image.manifest.v1+json", child.digest, 500, platform="linux/amd64"
            ),
        ),
    )
    hop = to_json(result([dataclasses.replace(edge, index=index, manifests=(child,))]))["hops"][0]
    assert hop["config"] is None and hop["layers"] == []
    assert [(m["platform"], m["config"]["status"], len(m["layers"])) for m in hop["manifests"]] == [
        ("linux/amd64", "ok", 2)
    ]


@pytest.mark.parametrize(
    ("observations", "code"),
    [
        pytest.param(healthy_chain(), 0, id="all-healthy-is-0"),
        pytest.param(core_lost_a_layer(), 1, id="unhealthy-is-1"),
        pytest.param(
            replace_at(healthy_chain(), CORE, observe(CORE, failure=failure(FaultKind.REFUSED))),
            3,
            id="unknown-is-3",
        ),
        pytest.param(
            replace_at(core_lost_a_layer(), ORIGIN, observe(ORIGIN, failure=failure(FaultKind.RATE_LIMITED))),
            1,
            id="unhealthy-and-unknown-is-1",
        ),
    ],
)
def test_the_exit_code_says_healthy_unhealthy_or_unknown(
    observations: list[HopObservation], code: int
) -> None:
    assert exit_code(result(observations)) == code


def test_the_text_report_shows_every_hop_and_names_the_blamed_one() -> None:
    text = to_text(result(core_lost_a_layer()))
    assert "verdict LayerMissing, blame: hop core" in text
    assert "LayerMissing: hop core (b.example/p-ghcr/org/app): layer 0 " in text
    for location in ("a.example/p-core/p-ghcr/org/app", "b.example/p-ghcr/org/app", "ghcr.io/org/app"):
        assert location in text
    assert "2/3 ok" in text


def test_the_text_report_of_a_healthy_chain_says_so() -> None:
    text = to_text(result(healthy_chain()))
    assert text.splitlines()[-1] == "verdict Healthy: every hop serves the artifact intact"


def test_a_hop_password_never_appears_in_any_report() -> None:
    creds = Credentials("robot$ci", PASSWORD)
    chain = Chain(
        name="corp",
        hops=(
            Hop.from_url("edge", "https://a.example/p-core", credentials=creds),
            Hop.from_url("core", "https://b.example/p-ghcr", credentials=creds),
            Hop.from_url("origin", "https://ghcr.io", credentials=creds),
        ),
    )
    observations = []
    for position, target in enumerate(chain.pull_path(REFERENCE)):
        seen = observe(
            position, blobs={0: (BlobStatus.MISSING, "missing (404)")} if position == CORE else None
        )
        observations.append(dataclasses.replace(seen, url=target.hop.url, location=target.location))
    observations[EDGE] = dataclasses.replace(
        observations[EDGE], failure=failure(FaultKind.AUTH_REJECTED, "HTTP 401")
    )
    checked = result(observations)
    for text in (json.dumps(to_json(checked)), to_text(checked), repr(checked)):
        assert PASSWORD not in text


DIGEST = "sha256:" + "f" * 64


def described(parsed: Manifest | Index, selector: str | None = None, children: Children | None = None) -> str:
    return describe_artifact(inspect_json("ghcr.io/org/app:v1", DIGEST, parsed, selector, children))


def test_inspect_says_which_layer_flux_extracts_with_and_without_a_selector() -> None:
    readme_first = manifest(descriptor("readme", "text/markdown"), descriptor("content"))
    text = described(readme_first)
    assert "config (not a layer)" in text
    assert "without layerSelector: layer 0 (text/markdown, NOT the Flux content layer)" in text
    assert f"with layerSelector.mediaType={FLUX_CONTENT}: layer 1" in text
    text = described(ARTIFACT, "application/x-yaml")
    assert "without layerSelector: layer 0\n" in text
    assert "with layerSelector.mediaType=application/x-yaml: nothing (no layer matches; Flux fails)" in text
    assert "without layerSelector: nothing (no layers)" in described(manifest())


def _child(platform: str | None, seed: str) -> Descriptor:
    return Descriptor(OCI_MANIFEST, descriptor(seed).digest, 500, platform=platform)


def test_inspect_of_an_index_shows_each_platforms_layers_and_the_one_flux_pulls() -> None:
    arm, amd = _child("linux/arm64", "arm"), _child("linux/amd64/v2", "amd")
    arm_manifest = manifest(descriptor("arm-layer", "application/x-tar"))
    index = Index(OCI_INDEX, (arm, amd))
    children: Children = {arm.digest: arm_manifest, amd.digest: ARTIFACT}
    text = described(index, children=children)
    assert "index of 2 manifests:" in text
    assert f"linux/amd64/v2  {amd.digest}  500 B  {OCI_MANIFEST}  <- Flux pulls this one" in text
    assert f"linux/arm64  {arm.digest}  500 B  {OCI_MANIFEST}\n" in text
    assert f"[0] {arm_manifest.layers[0].digest}" in text and f"[0] {ARTIFACT.layers[0].digest}" in text
    assert f"Flux pulls: the linux/amd64 manifest {amd.digest}" in text
    data = inspect_json("ghcr.io/org/app:v1", DIGEST, index, None, children)
    assert data["fluxManifest"] == amd.digest and data["fluxPlatform"] == "linux/amd64"
    assert [m["platform"] for m in data["manifests"]] == ["linux/arm64", "linux/amd64/v2"]
    assert data["manifests"][1]["manifest"]["fluxLayer"]["withoutSelector"] == 0


def test_inspect_of_an_index_without_linux_amd64_says_flux_fails_and_names_unreadable_children() -> None:
    arm = _child("linux/arm64", "arm")
    text = described(Index(OCI_INDEX, (arm, _child(None, "x"))), children={arm.digest: "404"})
    assert "cannot read it: 404" in text
    assert "Flux pulls: nothing (no linux/amd64 manifest; Flux fails)" in text


def test_inspect_json_names_config_layers_annotations_and_flux_choice() -> None:
    data = inspect_json("ghcr.io/org/app:v1", DIGEST, ARTIFACT, None)
    assert data["reference"] == "oci://ghcr.io/org/app:v1" and data["digest"] == DIGEST
    assert data["config"]["digest"] == ARTIFACT.config.digest
    assert [layer["index"] for layer in data["layers"]] == list(range(len(ARTIFACT.layers)))
    assert data["fluxLayer"] == {
        "withoutSelector": 0,
        "withoutSelectorIsContent": True,
        "selectorMediaType": FLUX_CONTENT,
        "withSelector": 0,
    }
    json.dumps(data)  # plain data, ready for -o json


def test_several_checks_combine_into_one_report_and_the_worst_exit_code() -> None:
    healthy = result(healthy_chain())
    broken = result(core_lost_a_layer())
    unknown = result(replace_at(healthy_chain(), EDGE, observe(EDGE, failure=failure(FaultKind.REFUSED))))
    assert combined_exit_code([healthy, unknown]) == 3
    assert combined_exit_code([unknown, broken, healthy]) == 1
    assert combined_exit_code([healthy, healthy]) == 0
    combined = combined_json([healthy, broken])
    assert combined["verdict"] == broken.judgement.verdict.value
    assert combined["counts"] == {"healthy": 1, "unknown": 0, "unhealthy": 1}
    assert combined["checks"] == [to_json(healthy), to_json(broken)]
    text = combined_text([healthy, broken])
    assert text.startswith(to_text(healthy)) and "2 artifacts checked:" in text
    assert f"!!  {broken.judgement.verdict.value} (blame: hop {broken.judgement.blame})" in text


SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "report.schema.json").read_text())


def core_down_edge_404() -> list[HopObservation]:
    down = observe(CORE, failure=Fault(FaultKind.HOP_DOWN, "connection refused"))
    return [observe(EDGE, manifest_problem=TAG_UNKNOWN), down, observe(ORIGIN)]


def test_a_hop_passing_on_a_down_upstream_says_so_and_why_in_the_json_report() -> None:
    report = to_json(result(core_down_edge_404()))
    jsonschema.validate(report, SCHEMA)
    edge, core, origin = report["hops"]
    assert (report["verdict"], report["blame"]) == ("ManifestMissing", "core")
    assert (edge["verdict"], edge["inheritedFrom"]) == ("ManifestMissing", "core")
    assert edge["diagnosis"] == {
        "name": "upstream-down",
        "heals": True,
        "remedy": "bring hop core back; nothing to fix at this hop",
    }
    assert core["inheritedFrom"] is None and core["diagnosis"] is None
    assert origin["inheritedFrom"] is None and origin["diagnosis"] is None
    assert report["message"].startswith("hop edge (a.example/p-core/p-ghcr/org/app): tag v1 unknown (404); ")


def test_every_hop_of_a_plain_report_has_null_inheritance_and_diagnosis() -> None:
    report = to_json(result(healthy_chain()))
    jsonschema.validate(report, SCHEMA)
    assert all(hop["inheritedFrom"] is None and hop["diagnosis"] is None for hop in report["hops"])


def test_the_text_report_blames_the_down_upstream_and_shows_what_the_edge_passes_on() -> None:
    text = to_text(result(core_down_edge_404()))
    assert text.splitlines()[-1] == (
        "verdict ManifestMissing, blame: hop core (Unreachable there; hops in front of it pass it on)"
    )
    assert (
        "ManifestMissing: hop edge (a.example/p-core/p-ghcr/org/app): tag v1 unknown (404); "
        "passed on from hop core (Unreachable there)" in text
    )
    assert "upstream-down: answers in place of hop core" in text
