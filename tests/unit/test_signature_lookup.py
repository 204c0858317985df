"""Asking a hop for signatures, against an in-process fake registry (aiohttp), error paths included."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from layerwatch.chain import Hop, HopTarget, Mode
from layerwatch.check import observe_hop
from layerwatch.observation import BlobStatus
from layerwatch.reference import Reference
from layerwatch.registry import RegistryClient, RegistryError
from layerwatch.settings import EngineSettings
from layerwatch.signature_lookup import observe_signatures
from layerwatch.signatures import (
    COSIGN_SIGNATURE_ANNOTATION,
    NOTATION_SIGNATURE,
    Provider,
    ReferrersApi,
    SignatureObservation,
)
from layerwatch.verdict import describe_fault

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
REPO = "org/app"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest(data), "size": len(data), **extra}


class FakeRegistry:
    """Manifests by reference, blobs by digest, an optional referrers API, and a request log."""

    def __init__(self) -> None:
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.blobs: dict[str, bytes] = {}
        self.referrers_api = True
        self.status: dict[str, int] = {}
        """Path suffix -> HTTP status to answer instead (e.g. 503)."""
        self.requests: list[str] = []

    def blob(self, data: bytes) -> bytes:
        self.blobs[digest(data)] = data
        return data

    def manifest(self, document: dict[str, Any], *refs: str, media_type: str = OCI_MANIFEST) -> str:
        body = json.dumps(document).encode()
        for ref in (digest(body), *refs):
            self.manifests[ref] = (body, media_type)
        return digest(body)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/v2/{path:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        self.requests.append(request.path_qs)
        for suffix, status in self.status.items():
            if path.endswith(suffix):
                return web.json_response({"errors": [{"code": "UNKNOWN", "message": "x"}]}, status=status)
        rest = path.partition(f"{REPO}/")[2]
        kind, _, ref = rest.partition("/")
        if kind == "manifests" and ref in self.manifests:
            body, media_type = self.manifests[ref]
            return web.Response(
                body=body, headers={"Content-Type": media_type, "Docker-Content-Digest": digest(body)}
            )
        if kind == "blobs" and ref in self.blobs:
            return web.Response(body=self.blobs[ref])
        if kind == "referrers" and self.referrers_api:
            tag = ref.replace(":", "-", 1)
            listed = json.loads(self.manifests[tag][0])["manifests"] if tag in self.manifests else []
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed}).encode()
            return web.Response(body=body, headers={"Content-Type": OCI_INDEX})
        return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}, status=404)


@pytest.fixture
async def registry() -> AsyncIterator[tuple[FakeRegistry, Callable[[], RegistryClient]]]:
    fake = FakeRegistry()
    server = TestServer(fake.app())
    await server.start_server()
    clients: list[RegistryClient] = []

    def client() -> RegistryClient:
        hop = Hop.from_url("core", f"http://127.0.0.1:{server.port}")
        made = RegistryClient.for_hop(hop, EngineSettings(timeout=5.0, retries=0, backoff=0))
        clients.append(made)
        return made

    yield fake, client
    for made in clients:
        await made.aclose()
    await server.close()


async def lookup(client: RegistryClient, subject: str, provider: Provider) -> SignatureObservation:
    return await observe_signatures(client, REPO, subject, provider, client.budget())


def artifact(fake: FakeRegistry) -> str:
    config = fake.blob(b"{}")
    layer = fake.blob(b"content")
    return fake.manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(config, "application/vnd.cncf.flux.config.v1+json"),
            "layers": [descriptor(layer, "application/vnd.cncf.flux.content.v1.tar+gzip")],
        },
        "v1",
    )


def referrer(fake: FakeRegistry, subject: str, artifact_type: str, payload: bytes) -> dict[str, Any]:
    """Push a referrer manifest of ``subject``; returns its index entry."""
    empty = fake.blob(b"{}")
    layer = fake.blob(payload)
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": descriptor(empty, "application/vnd.oci.empty.v1+json"),
        "layers": [descriptor(layer, "application/octet-stream")],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
    }
    body_digest = fake.manifest(document)
    size = len(fake.manifests[body_digest][0])
    return {"mediaType": OCI_MANIFEST, "digest": body_digest, "size": size, "artifactType": artifact_type}


def referrers_tag_index(fake: FakeRegistry, subject: str, *entries: dict[str, Any]) -> None:
    fake.manifest(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(entries)},
        subject.replace(":", "-", 1),
        media_type=OCI_INDEX,
    )


def sig_tag(fake: FakeRegistry, subject: str, *payloads: bytes) -> None:
    empty = fake.blob(b"{}")
    layers = [
        descriptor(
            fake.blob(p),
            "application/vnd.dev.cosign.simplesigning.v1+json",
            annotations={COSIGN_SIGNATURE_ANNOTATION: f"sig-{i}"},
        )
        for i, p in enumerate(payloads)
    ]
    fake.manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(empty, "application/json"),
            "layers": layers,
        },
        subject.replace(":", "-", 1) + ".sig",
    )


async def test_cosign_finds_bundles_among_all_referrers_and_the_sig_tag(registry: Any) -> None:
    fake, client = registry
    subject = artifact(fake)
    bundle = referrer(fake, subject, BUNDLE_TYPE, b"bundle")
    sbom = referrer(fake, subject, "application/spdx+json", b"sbom")
    referrers_tag_index(fake, subject, bundle, sbom)
    sig_tag(fake, subject, b"payload")
    found = await lookup(client(), subject, Provider.COSIGN)
    assert found.referrers_api is ReferrersApi.OK
    assert [(s.kind, s.status) for s in found.signatures] == [
        ("cosign bundle", BlobStatus.OK),
        ("cosign signature", BlobStatus.OK),
    ]
    assert not any("artifactType" in r for r in fake.requests), "cosign asks for all referrers"


async def test_notation_asks_with_the_artifact_type_and_filters_the_answer_itself(registry: Any) -> None:
    fake, client = registry
    subject = artifact(fake)
    referrers_tag_index(
        fake,
        subject,
        referrer(fake, subject, NOTATION_SIGNATURE, b"jws"),
        referrer(fake, subject, BUNDLE_TYPE, b"b"),
    )
    found = await lookup(client(), subject, Provider.NOTATION)
    assert [s.kind for s in found.signatures] == ["notation signature"]
    assert any("artifactType=application/vnd.cncf.notary.signature" in unquote(r) for r in fake.requests)


async def test_without_a_referrers_api_the_referrers_tag_is_used(registry: Any) -> None:
    fake, client = registry
    fake.referrers_api = False
    subject = artifact(fake)
    referrers_tag_index(fake, subject, referrer(fake, subject, BUNDLE_TYPE, b"bundle"))
    found = await lookup(client(), subject, Provider.COSIGN)
    assert found.referrers_api is ReferrersApi.ABSENT
    assert [s.found_via for s in found.signatures] == [f"tag {subject.replace(':', '-', 1)}"]


async def test_a_listed_referrer_whose_manifest_is_gone_is_missing(registry: Any) -> None:
    fake, client = registry
    subject = artifact(fake)
    entry = referrer(fake, subject, BUNDLE_TYPE, b"bundle")
    del fake.manifests[entry["digest"]]
    referrers_tag_index(fake, subject, entry)
    (check,) = (await lookup(client(), subject, Provider.COSIGN)).signatures
    assert check.status is BlobStatus.MISSING
    assert "listed, but its manifest is missing (404 MANIFEST_UNKNOWN)" in check.detail


async def test_a_damaged_signature_blob_is_corrupt(registry: Any) -> None:
    fake, client = registry
    subject = artifact(fake)
    sig_tag(fake, subject, b"payload-0", b"payload-1")
    fake.blobs[digest(b"payload-1")] = b"payload-X"
    found = await lookup(client(), subject, Provider.COSIGN)
    assert [s.status for s in found.signatures] == [BlobStatus.OK, BlobStatus.CORRUPT]
    assert "layer 1" in found.signatures[1].detail and "content hashes to" in found.signatures[1].detail


async def test_a_referrers_index_that_is_not_json_is_corrupt(registry: Any) -> None:
    fake, client = registry
    fake.referrers_api = False
    subject = artifact(fake)
    fake.manifests[subject.replace(":", "-", 1)] = (b"<html>", OCI_INDEX)
    (check,) = (await lookup(client(), subject, Provider.NOTATION)).signatures
    assert check.status is BlobStatus.CORRUPT and "referrers index is" in check.detail


async def test_a_referrers_api_failing_is_could_not_check_and_says_signatures(registry: Any) -> None:
    fake, client = registry
    subject = artifact(fake)
    fake.status["referrers/" + subject] = 503
    with pytest.raises(RegistryError) as caught:
        await lookup(client(), subject, Provider.NOTATION)
    assert describe_fault(caught.value.fault).startswith("signatures: HTTP 503")


async def test_observe_hop_records_signatures_only_when_asked(registry: Any) -> None:
    fake, client = registry
    subject = artifact(fake)
    sig_tag(fake, subject, b"payload")
    hop = Hop.from_url("core", client().base_url)
    target = HopTarget(hop, REPO)
    reference = Reference.parse(f"{hop.host}/{REPO}:v1")
    plain = await observe_hop(client(), target, reference)
    assert plain.signatures is None and not any(".sig" in r for r in fake.requests)
    signed = await observe_hop(client(), target, reference, verify=Provider.COSIGN)
    assert signed.signatures is not None and signed.signatures.subject == subject


async def test_signatures_are_downloaded_and_hashed_even_in_head_mode(registry: Any) -> None:
    fake, client = registry
    subject = artifact(fake)
    sig_tag(fake, subject, b"payload")
    fake.blobs[digest(b"payload")] = b"pAyload"
    hop = Hop.from_url("core", client().base_url)
    observed = await observe_hop(
        client(),
        HopTarget(hop, REPO),
        Reference.parse(f"{hop.host}/{REPO}:v1"),
        mode=Mode.HEAD,
        verify=Provider.COSIGN,
    )
    assert observed.signatures is not None
    (check,) = observed.signatures.signatures
    assert check.status is BlobStatus.CORRUPT and "content hashes to" in check.detail


async def test_signature_trouble_at_a_hop_is_unreachable_not_a_crash(registry: Any) -> None:
    fake, client = registry
    subject = artifact(fake)
    fake.status[subject.replace(":", "-", 1) + ".sig"] = 503
    hop = Hop.from_url("core", client().base_url)
    observed = await observe_hop(
        client(), HopTarget(hop, REPO), Reference.parse(f"{hop.host}/{REPO}:v1"), verify=Provider.COSIGN
    )
    assert observed.failure is not None
    assert describe_fault(observed.failure).startswith("signatures: HTTP 503"), observed.failure
