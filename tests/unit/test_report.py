"""The report users and CI read: SPEC 6 JSON, the text table, exit codes, and no secrets."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from layerwatch.chain import Chain, Credentials, Hop, Mode
from layerwatch.manifest import FLUX_CONTENT, OCI_INDEX, Descriptor, Index
from layerwatch.observation import BlobStatus, FaultKind, HopObservation
from layerwatch.reference import Reference
from layerwatch.report import describe_artifact, exit_code, to_json, to_text
from layerwatch.verdict import CheckResult, judge

from .builders import ARTIFACT, REFERENCE, descriptor, failure, healthy_chain, manifest, observe, replace_at

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
    observations = replace_at(healthy_chain(), CORE, observe(CORE, manifest_missing="tag v1 unknown (404)"))
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


def test_inspect_says_which_layer_flux_extracts_with_and_without_a_selector() -> None:
    readme_first = manifest(descriptor("readme", "text/markdown"), descriptor("content"))
    text = describe_artifact("ghcr.io/org/app:v1", "sha256:" + "f" * 64, readme_first, None)
    assert "config (not a layer)" in text
    assert "without layerSelector: layer 0 (text/markdown, NOT the Flux content layer)" in text
    assert f"with layerSelector.mediaType={FLUX_CONTENT}: layer 1" in text
    text = describe_artifact("ghcr.io/org/app:v1", "sha256:" + "f" * 64, ARTIFACT, "application/x-yaml")
    assert "without layerSelector: layer 0\n" in text
    assert "with layerSelector.mediaType=application/x-yaml: nothing (no layer matches; Flux fails)" in text
    assert "without layerSelector: nothing (no layers)" in describe_artifact(
        "x", "sha256:" + "f" * 64, manifest(), None
    )


def test_inspect_lists_an_indexs_platforms() -> None:
    index = Index(
        OCI_INDEX,
        (
            Descriptor(
                "application/vnd.oci.image.manifest.v1+json",
                "sha256:" + "1" * 64,
                500,
                platform="linux/arm64",
            ),
        ),
    )
    text = describe_artifact("ghcr.io/org/app:v1", "sha256:" + "f" * 64, index, None)
    assert "index of 1 manifests:" in text and "linux/arm64" in text
