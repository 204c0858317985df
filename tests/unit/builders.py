"""Hand-built observations for verdict and report tests: a three-hop Harbor chain, no network."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence

from prometheus_client.parser import text_string_to_metric_families

from layerwatch.chain import Chain, Hop, Mode
from layerwatch.manifest import FLUX_CONFIG, FLUX_CONTENT, OCI_MANIFEST, Descriptor, Manifest
from layerwatch.metrics import Metrics
from layerwatch.observation import (
    BlobCheck,
    BlobFacts,
    BlobStatus,
    Fault,
    FaultKind,
    HopObservation,
    ManifestCheck,
    ManifestFault,
    ManifestProblem,
)
from layerwatch.reference import Reference
from layerwatch.verdict import CheckResult, judge

SBOM = "application/vnd.example.sbom.v1+json"
TAG = "v1"


def digest_of(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def descriptor(seed: str, media_type: str = FLUX_CONTENT, size: int = 151) -> Descriptor:
    return Descriptor(media_type=media_type, digest=digest_of(seed), size=size)


def manifest(
    *layers: Descriptor, config: Descriptor | None = None, annotations: Mapping[str, str] | None = None
) -> Manifest:
    return Manifest(
        media_type=OCI_MANIFEST,
        config=config or descriptor("config", FLUX_CONFIG, 2),
        layers=tuple(layers),
        annotations=dict(annotations or {}),
    )


def manifest_digest(m: Manifest) -> str:
    """A stable digest for a hand-built manifest (what a registry would compute from its bytes)."""
    document = {
        "config": m.config.digest,
        "layers": [layer.digest for layer in m.layers],
        "annotations": dict(m.annotations),
    }
    return digest_of(json.dumps(document, sort_keys=True))


CONTENT = descriptor("content")
EXTRA = descriptor("sbom", SBOM, 77)
ARTIFACT = manifest(CONTENT, EXTRA)
"""The artifact every healthy hop serves: the Flux content layer first, then an SBOM layer."""

EDGE = Hop.from_url("edge", "https://a.example/p-core")
CORE = Hop.from_url("core", "https://b.example/p-ghcr")
ORIGIN = Hop.from_url("origin", "https://ghcr.io")
CHAIN = Chain(name="corp", hops=(EDGE, CORE, ORIGIN))
REFERENCE = Reference.parse(f"oci://a.example/p-core/p-ghcr/org/app:{TAG}")
PATH = CHAIN.pull_path(REFERENCE)
HOP_NAMES = tuple(target.hop.name for target in PATH)


def observe(
    position: int,
    served: Manifest = ARTIFACT,
    *,
    blobs: Mapping[int | None, tuple[BlobStatus, str]] | None = None,
    tag: str | None = TAG,
    failure: Fault | None = None,
    manifest_problem: ManifestProblem | None = None,
) -> HopObservation:
    """What hop ``position`` of ``PATH`` served; blob statuses default to ok (``None`` = config).

    A ``manifest_problem`` replaces the manifest (a tag not found resolves to no digest).
    """
    target = PATH[position]
    base = HopObservation(
        hop=target.hop.name,
        url=target.hop.url,
        repository=target.repository,
        location=target.location,
        tag=tag,
    )
    if failure is not None:
        return dataclasses.replace(base, failure=failure)
    digest = manifest_digest(served)
    tag_digest = digest if tag else None
    if manifest_problem is not None and manifest_problem.kind is ManifestFault.NOT_FOUND:
        return dataclasses.replace(base, manifest_problem=manifest_problem)
    if manifest_problem is not None:
        return dataclasses.replace(
            base, tag_digest=tag_digest, digest=digest, manifest_problem=manifest_problem
        )
    statuses = dict(blobs or {})
    checks = []
    for index, desc in [(None, served.config), *enumerate(served.layers)]:
        status, detail = statuses.get(index, (BlobStatus.OK, "verified"))
        verified = desc.size if status is BlobStatus.OK else 0
        checks.append(
            BlobCheck(desc, index, status, detail, BlobFacts(received=verified, actual=desc.digest))
        )
    check = ManifestCheck(digest=digest, manifest=served, blobs=tuple(checks))
    return dataclasses.replace(base, tag_digest=tag_digest, digest=digest, manifests=(check,))


def healthy_chain(served: Manifest = ARTIFACT, *, tag: str | None = TAG) -> list[HopObservation]:
    return [observe(position, served, tag=tag) for position in range(len(PATH))]


def failure(kind: FaultKind, message: str = "") -> Fault:
    return Fault(kind, message or f"{kind.value} for the test")


def replace_at(
    observations: Sequence[HopObservation], position: int, new: HopObservation
) -> list[HopObservation]:
    result = list(observations)
    result[position] = new
    return result


# -- check results and Kubernetes bodies (operator, scheduler, metrics and web tests) -------------

FINISHED = 1_700_000_001.5
"""When hand-built checks end (Unix time): 2023-11-14T22:13:21Z."""


def check_result(
    observations: Sequence[HopObservation],
    *,
    reference: Reference = REFERENCE,
    layer_media_type: str | None = None,
    pinned_digest: str | None = None,
    finished: float = FINISHED,
) -> CheckResult:
    """A completed check of hand-built observations, judged as the engine would."""
    return CheckResult(
        reference=reference,
        observations=tuple(observations),
        judgement=judge(observations, layer_media_type=layer_media_type, pinned_digest=pinned_digest),
        mode=Mode.FULL,
        layer_media_type=layer_media_type,
        started=finished - 1.0,
        finished=finished,
    )


def oci_repository(
    name: str = "app",
    namespace: str = "team-a",
    *,
    url: str = "oci://a.example/p-core/p-ghcr/org/app",
    ref: Mapping[str, str] | None = None,
    revision: str | None = None,
    annotations: Mapping[str, str] | None = None,
    suspend: bool | None = None,
    api_version: str = "source.toolkit.fluxcd.io/v1",
    conditions: Sequence[Mapping[str, object]] | None = None,
    generation: int = 3,
    spec: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """An OCIRepository body as the apiserver sends it (status only when Flux wrote something)."""
    body_spec: dict[str, object] = {
        "interval": "1m",
        "url": url,
        "ref": dict({"tag": TAG} if ref is None else ref),
    }
    if suspend is not None:
        body_spec["suspend"] = suspend
    body_spec.update(spec or {})
    body: dict[str, object] = {
        "apiVersion": api_version,
        "kind": "OCIRepository",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "generation": generation,
            "resourceVersion": "4711",
            "annotations": dict(annotations or {}),
        },
        "spec": body_spec,
    }
    if revision is not None or conditions is not None:
        status: dict[str, object] = {"observedGeneration": generation, "conditions": list(conditions or ())}
        if revision is not None:
            status["artifact"] = {
                "revision": revision,
                "digest": digest_of("flux's own tarball"),
                "path": f"ocirepository/{namespace}/{name}/x.tar.gz",
            }
        body["status"] = status
    return body


def scraped(metrics: Metrics, metric: str, labels: Mapping[str, str]) -> float | None:
    """The value of one sample as Prometheus would scrape it from ``metrics`` (None when absent)."""
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == metric and sample.labels == dict(labels):
                return float(sample.value)
    return None


TAG_UNKNOWN = ManifestProblem(ManifestFault.NOT_FOUND, fault=Fault(FaultKind.HTTP_STATUS, status=404))
"""The hop answered 404 for the tag."""
