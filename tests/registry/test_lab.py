"""The lab itself works: real registries, Harbor-like gateways, faults, oras pushes (plain httpx client)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import socket
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from lab.artifacts import (
    FLUX_CONFIG_MEDIA_TYPE,
    FLUX_CONTENT_MEDIA_TYPE,
    OCI_MANIFEST_MEDIA_TYPE,
    OCTET_STREAM,
    PushedArtifact,
    push_blob_artifact,
    push_flux_artifact,
    push_index,
    push_multilayer_artifact,
)
from lab.chain import EDGE_USER, LocalChain
from lab.control import GatewayProcess
from lab.faults import HOSTILE_AUTH_VARIANTS
from lab.process import LabError

pytestmark = pytest.mark.registry

ACCEPT = {"Accept": f"{OCI_MANIFEST_MEDIA_TYPE}, application/vnd.oci.image.index.v1+json"}
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class HopClient:
    """A minimal registry client for one hop: answers Bearer challenges with the hop's credentials."""

    def __init__(self, chain: LocalChain, hop: str) -> None:
        self.hop = chain.hop(hop)
        self.http = httpx.Client(base_url=self.hop.gateway.url, timeout=30.0)
        self.token: str | None = None

    def headers(self) -> dict[str, str]:
        """Accept plus the current token, if any."""
        return {**ACCEPT, "Authorization": f"Bearer {self.token}"} if self.token else dict(ACCEPT)

    def request(
        self, method: str, path: str, *, follow_redirects: bool = False, timeout: float = 30.0
    ) -> httpx.Response:
        response = self.http.request(
            method, path, headers=self.headers(), follow_redirects=follow_redirects, timeout=timeout
        )
        if response.status_code == 401 and response.headers.get("www-authenticate", "").startswith("Bearer "):
            challenge = dict(_CHALLENGE.findall(response.headers["www-authenticate"]))
            params = {"service": challenge["service"], "scope": challenge["scope"]}
            token = httpx.get(challenge["realm"], params=params, auth=self.hop.credentials, timeout=10.0)
            token.raise_for_status()
            self.token = token.json()["token"]
            response = self.http.request(
                method, path, headers=self.headers(), follow_redirects=follow_redirects, timeout=timeout
            )
        return response

    def manifest(self, chain: LocalChain, repo: str, ref: str, method: str = "GET") -> httpx.Response:
        return self.request(method, f"/v2/{chain.repository_at(self.hop.name, repo)}/manifests/{ref}")

    def blob(self, chain: LocalChain, repo: str, digest: str, method: str = "GET") -> httpx.Response:
        return self.request(method, f"/v2/{chain.repository_at(self.hop.name, repo)}/blobs/{digest}")


@pytest.fixture
def clients(local_chain: LocalChain) -> Iterator[dict[str, HopClient]]:
    hops = {hop.name: HopClient(local_chain, hop.name) for hop in local_chain.hops}
    yield hops
    for client in hops.values():
        client.http.close()


@pytest.fixture
def artifact(local_chain: LocalChain, fresh_repo: str) -> PushedArtifact:
    return push_flux_artifact(local_chain.push_address, fresh_repo, "v1")


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["errors"][0]["code"]
    return code


# -- auth and path mapping ---------------------------------------------------------------------


def test_token_flow_like_harbor(local_chain: LocalChain, artifact: PushedArtifact) -> None:
    edge = local_chain.hop("edge").gateway.url
    path = f"/v2/{local_chain.repository_at('edge', artifact.repository)}/manifests/v1"

    base = httpx.get(f"{edge}/v2/")
    assert base.status_code == 401
    assert base.headers["www-authenticate"] == (
        f'Bearer realm="{edge}/service/token",service="harbor-registry"'
    )
    denied = httpx.get(edge + path, headers=ACCEPT)
    assert denied.status_code == 401
    challenge = dict(_CHALLENGE.findall(denied.headers["www-authenticate"]))
    assert challenge == {
        "realm": f"{edge}/service/token",
        "service": "harbor-registry",
        "scope": f"repository:{local_chain.repository_at('edge', artifact.repository)}:pull",
    }

    params = {"service": challenge["service"], "scope": challenge["scope"]}
    for credentials in (None, (EDGE_USER[0], "wrong")):
        worthless = httpx.get(challenge["realm"], params=params, auth=credentials)
        assert worthless.status_code == 200, "Harbor's token service hands a token to anyone"
        refused = httpx.get(edge + path, headers={"Authorization": f"Bearer {worthless.json()['token']}"})
        assert refused.status_code == 401, "... that allows nothing (--auth required)"
        assert refused.headers["www-authenticate"] == 'Basic realm="harbor"'
    issued = httpx.get(challenge["realm"], params=params, auth=EDGE_USER)
    assert issued.status_code == 200
    body = issued.json()
    assert body["token"] == body["access_token"] and body["expires_in"] > 0

    auth = {"Authorization": f"Bearer {body['token']}", **ACCEPT}
    assert httpx.get(f"{edge}/v2/", headers=auth).status_code == 200
    ok = httpx.get(edge + path, headers=auth)
    assert ok.status_code == 200 and ok.content == artifact.manifest
    assert httpx.get(edge + path, headers={"Authorization": "Bearer forged", **ACCEPT}).status_code == 401
    other = f"/v2/{local_chain.repository_at('edge', 'org/other')}/manifests/v1"
    assert httpx.get(edge + other, headers=auth).status_code == 401, "token is scoped to its repository"


def test_tokens_expire_and_anonymous_mode(local_chain: LocalChain, artifact: PushedArtifact) -> None:
    """A short-lived anonymous gateway in front of the origin registry: anonymous tokens, then expiry."""
    origin = local_chain.hop("origin").registry
    gateway = GatewayProcess("short", origin.url, prefix="proj", auth="anonymous", token_ttl=1.0).start()
    try:
        scope = f"repository:proj/{artifact.repository}:pull"
        realm = f"{gateway.url}/service/token"
        unscoped = httpx.get(realm).json()["token"]
        url = f"{gateway.url}/v2/proj/{artifact.repository}/manifests/v1"
        refused = httpx.get(url, headers={"Authorization": f"Bearer {unscoped}", **ACCEPT})
        assert refused.status_code == 401, "an anonymous token without a scope allows nothing"
        token = httpx.get(realm, params={"service": "harbor-registry", "scope": scope}).json()["token"]
        headers = {"Authorization": f"Bearer {token}", **ACCEPT}
        assert httpx.get(url, headers=headers).status_code == 200
        time.sleep(1.2)
        assert httpx.get(url, headers=headers).status_code == 401
    finally:
        gateway.stop()


def test_path_mapping_through_three_hops(
    local_chain: LocalChain, clients: dict[str, HopClient], artifact: PushedArtifact
) -> None:
    assert local_chain.repository_at("edge", "org/app") == "p-core/p-ghcr/org/app"
    assert local_chain.repository_at("core", "org/app") == "p-ghcr/org/app"
    assert (
        local_chain.reference("org/app", "v1")
        == f"{local_chain.hop('edge').address}/p-core/p-ghcr/org/app:v1"
    )
    for name, client in clients.items():
        manifest = client.manifest(local_chain, artifact.repository, "v1")
        assert manifest.status_code == 200, name
        assert manifest.content == artifact.manifest
        # a Harbor proxy project passes a manifest by tag on from upstream with empty digest headers
        passed_on = client.hop.prefix != ""
        assert manifest.headers["docker-content-digest"] == ("" if passed_on else artifact.manifest_digest)
        layer = client.blob(local_chain, artifact.repository, artifact.content_layer.digest)
        assert sha256(layer.content) == artifact.content_layer.digest
    origin_log = [r["path"] for r in local_chain.faults("origin").requests()]
    assert f"/v2/{artifact.repository}/manifests/v1" in origin_log
    core_log = [r["path"] for r in local_chain.faults("core").requests()]
    assert f"/v2/p-ghcr/{artifact.repository}/manifests/v1" in core_log, "edge registry asks the core gateway"


def test_outside_prefix_and_push_refused(local_chain: LocalChain, artifact: PushedArtifact) -> None:
    core = local_chain.hop("core").gateway.url
    outside = httpx.get(f"{core}/v2/{artifact.repository}/manifests/v1", headers=ACCEPT)
    assert outside.status_code == 401 and error_code(outside) == "UNAUTHORIZED", "Harbor: project not found"
    assert outside.headers["www-authenticate"] == ""
    push = httpx.post(f"{core}/v2/p-ghcr/{artifact.repository}/blobs/uploads/")
    assert push.status_code == 403 and error_code(push) == "DENIED"
    assert httpx.get(f"{core}/v2/").status_code == 200


def test_chain_yaml(local_chain: LocalChain, tmp_path: Path) -> None:
    document = yaml.safe_load(local_chain.write_chain_yaml(tmp_path / "chain.yaml").read_text())
    assert document["apiVersion"] == "layerwatch.io/v1alpha1" and document["kind"] == "ProxyChain"
    hops = document["spec"]["hops"]
    assert [h["name"] for h in hops] == ["edge", "core", "origin"]
    assert hops[0] == {
        "name": "edge",
        "url": local_chain.edge_url,
        "username": EDGE_USER[0],
        "password": EDGE_USER[1],
    }
    assert hops[1]["url"].endswith("/p-ghcr") and hops[2]["url"] == local_chain.origin_url


# -- artifacts ---------------------------------------------------------------------------------


def test_flux_artifact_format(local_chain: LocalChain, fresh_repo: str) -> None:
    files = {"deploy/app.yaml": b"kind: ConfigMap\n"}
    pushed = push_flux_artifact(
        local_chain.push_address, fresh_repo, "v1", files, source="git://x", revision="r"
    )
    served = httpx.get(f"http://{pushed.registry}/v2/{fresh_repo}/manifests/v1", headers=ACCEPT)
    assert served.content == pushed.manifest and sha256(served.content) == pushed.manifest_digest
    manifest = json.loads(served.content)
    assert manifest["mediaType"] == OCI_MANIFEST_MEDIA_TYPE
    assert manifest["config"] == {"mediaType": FLUX_CONFIG_MEDIA_TYPE, "size": 2, "digest": sha256(b"{}")}
    assert [layer["mediaType"] for layer in manifest["layers"]] == [FLUX_CONTENT_MEDIA_TYPE]
    assert set(manifest["annotations"]) == {
        "org.opencontainers.image.created",
        "org.opencontainers.image.source",
        "org.opencontainers.image.revision",
    }
    assert manifest["annotations"]["org.opencontainers.image.source"] == "git://x"
    layer = httpx.get(f"http://{pushed.registry}/v2/{fresh_repo}/blobs/{pushed.layer_digests[0]}").content
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        member = tar.getmember("deploy/app.yaml")
        assert (member.uid, member.mtime, member.uname) == (0, 0, "")
        assert tar.extractfile(member).read() == files["deploy/app.yaml"]  # type: ignore[union-attr]


def test_multilayer_artifact_puts_octet_stream_first(local_chain: LocalChain, fresh_repo: str) -> None:
    pushed = push_multilayer_artifact(local_chain.push_address, fresh_repo, "v1")
    assert [layer.media_type for layer in pushed.layers] == [OCTET_STREAM, FLUX_CONTENT_MEDIA_TYPE]
    assert pushed.content_layer == pushed.layers[1]


# -- faults ------------------------------------------------------------------------------------


def test_drop_at_core_is_missing_downstream_only(
    local_chain: LocalChain, clients: dict[str, HopClient], artifact: PushedArtifact
) -> None:
    layer = artifact.content_layer.digest
    local_chain.faults("core").set([{"kind": "drop", "digest": layer}])
    for hop in ("edge", "core"):
        for method in ("GET", "HEAD"):
            response = clients[hop].blob(local_chain, artifact.repository, layer, method)
            assert response.status_code == 404, (hop, method)
    assert error_code(clients["core"].blob(local_chain, artifact.repository, layer)) == "BLOB_UNKNOWN"
    assert clients["origin"].blob(local_chain, artifact.repository, layer).status_code == 200
    assert clients["edge"].manifest(local_chain, artifact.repository, "v1").status_code == 200
    dropped = [r for r in local_chain.faults("core").requests() if r["fault"] == "drop"]
    assert dropped and all(r["status"] == 404 for r in dropped)


def test_drop_manifest_by_tag(
    local_chain: LocalChain, clients: dict[str, HopClient], artifact: PushedArtifact
) -> None:
    local_chain.faults("origin").set([{"kind": "drop", "tag": "v1", "repository": artifact.repository}])
    response = clients["edge"].manifest(local_chain, artifact.repository, "v1")
    assert response.status_code == 404 and error_code(response) == "NOT_FOUND", "Harbor's code"


def test_corrupt_changes_sha_not_size(
    local_chain: LocalChain, clients: dict[str, HopClient], artifact: PushedArtifact
) -> None:
    layer = artifact.content_layer
    local_chain.faults("core").set([{"kind": "corrupt", "digest": layer.digest}])
    for hop in ("edge", "core"):
        body = clients[hop].blob(local_chain, artifact.repository, layer.digest).content
        assert len(body) == layer.size and sha256(body) != layer.digest, hop
    assert (
        sha256(clients["origin"].blob(local_chain, artifact.repository, layer.digest).content) == layer.digest
    )


def test_corrupt_manifest(
    local_chain: LocalChain, clients: dict[str, HopClient], artifact: PushedArtifact
) -> None:
    local_chain.faults("edge").set([{"kind": "corrupt", "tag": "v1"}])
    response = clients["edge"].manifest(local_chain, artifact.repository, "v1")
    assert len(response.content) == len(artifact.manifest) and response.content != artifact.manifest
    assert response.headers["docker-content-digest"] == "", "passed on from upstream, as Harbor does"


def test_truncate_and_cut(
    local_chain: LocalChain, clients: dict[str, HopClient], artifact: PushedArtifact
) -> None:
    layer = artifact.content_layer
    faults = local_chain.faults("edge")
    faults.set([{"kind": "truncate", "digest": layer.digest, "keep": 10}])
    short = clients["edge"].blob(local_chain, artifact.repository, layer.digest)
    assert short.status_code == 200 and short.headers["content-length"] == "10" and len(short.content) == 10
    head = clients["edge"].blob(local_chain, artifact.repository, layer.digest, "HEAD")
    assert head.headers["content-length"] == "10"
    faults.set([{"kind": "cut", "digest": layer.digest, "keep": 10}])
    with pytest.raises(httpx.RemoteProtocolError):
        clients["edge"].blob(local_chain, artifact.repository, layer.digest)


def test_reorder_serves_new_manifest_by_tag_and_digest(
    local_chain: LocalChain, clients: dict[str, HopClient], fresh_repo: str
) -> None:
    pushed = push_multilayer_artifact(local_chain.push_address, fresh_repo, "v1")
    local_chain.faults("core").set([{"kind": "reorder", "tag": "v1"}])
    for hop in ("core", "edge"):
        response = clients[hop].manifest(local_chain, fresh_repo, "v1")
        digest = sha256(response.content)
        # core's fault answers with the new digest; the edge passes it on (empty, as Harbor does)
        assert response.headers["docker-content-digest"] == (digest if hop == "core" else ""), hop
        assert digest != pushed.manifest_digest, hop
        layers = [layer["digest"] for layer in json.loads(response.content)["layers"]]
        assert layers == list(reversed(pushed.layer_digests))
        by_digest = clients[hop].manifest(local_chain, fresh_repo, digest)
        assert by_digest.status_code == 200 and by_digest.content == response.content
    head = clients["core"].manifest(local_chain, fresh_repo, "v1", "HEAD")
    assert head.headers["docker-content-digest"] == digest


def test_stale_tag(local_chain: LocalChain, clients: dict[str, HopClient], fresh_repo: str) -> None:
    old = push_flux_artifact(local_chain.push_address, fresh_repo, "v1", {"a.yaml": b"old\n"})
    new = push_flux_artifact(local_chain.push_address, fresh_repo, "v1", {"a.yaml": b"new\n"})
    local_chain.faults("core").set([{"kind": "stale", "tag": "v1", "serve_digest": old.manifest_digest}])
    for hop, expected in (("edge", old), ("core", old), ("origin", new)):
        response = clients[hop].manifest(local_chain, fresh_repo, "v1")
        assert response.content == expected.manifest, hop


def test_ratelimit_then_recovers(
    local_chain: LocalChain, clients: dict[str, HopClient], artifact: PushedArtifact
) -> None:
    local_chain.faults("edge").set([{"kind": "ratelimit", "count": 2, "retry_after": 3}])
    for _ in range(2):
        limited = clients["edge"].manifest(local_chain, artifact.repository, "v1")
        assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
        assert error_code(limited) == "TOOMANYREQUESTS"
    assert clients["edge"].manifest(local_chain, artifact.repository, "v1").status_code == 200
    assert local_chain.faults("edge").active()[0]["count"] == 0


def test_redirect_to_blob_host_without_authorization(
    local_chain: LocalChain, clients: dict[str, HopClient], artifact: PushedArtifact
) -> None:
    layer = artifact.content_layer.digest
    faults = local_chain.faults("edge")
    faults.set([{"kind": "redirect", "digest": layer}])
    redirect = clients["edge"].blob(local_chain, artifact.repository, layer)
    assert redirect.status_code == 307
    location = redirect.headers["location"]
    assert location.startswith(f"http://127.0.0.1:{local_chain.hop('edge').gateway.blob_port}/")
    # httpx drops Authorization when a redirect changes origin (host:port): the blob host must see none.
    followed = clients["edge"].request("GET", redirect.request.url.path, follow_redirects=True)
    assert followed.status_code == 200 and sha256(followed.content) == layer
    httpx.get(location, headers={"Authorization": "Bearer leaked"})
    blob_host = [r for r in faults.requests() if r["listener"] == "blobs"]
    assert [r["authorization"] for r in blob_host] == [False, True], "the log tells a leak apart"


def test_slow_and_drip(
    local_chain: LocalChain, clients: dict[str, HopClient], artifact: PushedArtifact
) -> None:
    faults = local_chain.faults("edge")
    faults.set([{"kind": "slow", "seconds": 0.6, "tag": "v1"}])
    started = time.monotonic()
    assert clients["edge"].manifest(local_chain, artifact.repository, "v1").status_code == 200
    assert time.monotonic() - started >= 0.6
    layer = artifact.content_layer
    faults.set([{"kind": "slow", "drip": True, "chunk": 100, "seconds": 0.2, "digest": layer.digest}])
    started = time.monotonic()
    body = clients["edge"].blob(local_chain, artifact.repository, layer.digest).content
    assert sha256(body) == layer.digest and time.monotonic() - started >= 0.4


def test_error_status(
    local_chain: LocalChain, clients: dict[str, HopClient], artifact: PushedArtifact
) -> None:
    local_chain.faults("edge").set([{"kind": "error", "status": 503, "method": "HEAD"}])
    assert clients["edge"].manifest(local_chain, artifact.repository, "v1", "HEAD").status_code == 503
    assert clients["edge"].manifest(local_chain, artifact.repository, "v1").status_code == 200


def test_base_fault_makes_hop_look_down(
    local_chain: LocalChain, clients: dict[str, HopClient], artifact: PushedArtifact
) -> None:
    """A fault with no repository also hits /v2/, which the edge registry pings before asking core."""
    local_chain.faults("core").set([{"kind": "error", "status": 503}])
    assert httpx.get(f"{local_chain.hop('core').gateway.url}/v2/").status_code == 503
    # distribution's tag fallback turns the upstream failure into "unknown tag" (see lab.registry)
    assert clients["edge"].manifest(local_chain, artifact.repository, "v1").status_code == 404
    blob = clients["edge"].blob(local_chain, artifact.repository, artifact.content_layer.digest)
    assert blob.status_code >= 500


def test_garbage_manifest(
    local_chain: LocalChain, clients: dict[str, HopClient], artifact: PushedArtifact
) -> None:
    local_chain.faults("edge").set([{"kind": "garbage-manifest"}])
    response = clients["edge"].manifest(local_chain, artifact.repository, "v1")
    assert response.status_code == 200 and response.headers["docker-content-digest"] == sha256(
        response.content
    )
    with pytest.raises(ValueError):
        json.loads(response.content)


@pytest.mark.parametrize("variant", sorted(HOSTILE_AUTH_VARIANTS))
def test_hostile_auth(local_chain: LocalChain, artifact: PushedArtifact, variant: str) -> None:
    local_chain.faults("core").set([{"kind": "hostile-auth", "variant": variant}])
    url = f"{local_chain.hop('core').gateway.url}/v2/p-ghcr/{artifact.repository}/manifests/v1"
    response = httpx.get(url, headers=ACCEPT)
    assert response.status_code == 401
    header = response.headers["www-authenticate"]
    assert header and (len(header) > 65536) == (variant == "huge")


def test_endless_body(local_chain: LocalChain, artifact: PushedArtifact) -> None:
    local_chain.faults("core").set([{"kind": "endless", "digest": artifact.content_layer.digest}])
    core = local_chain.hop("core").gateway.url
    url = f"{core}/v2/p-ghcr/{artifact.repository}/blobs/{artifact.content_layer.digest}"
    received = 0
    with httpx.stream("GET", url, timeout=10.0) as response:
        assert response.status_code == 200 and "content-length" not in response.headers
        for chunk in response.iter_bytes():
            received += len(chunk)
            if received > 4 * 1024 * 1024:
                break
    assert received > artifact.content_layer.size


def test_fault_validation(local_chain: LocalChain) -> None:
    faults = local_chain.faults("edge")
    for bad in ({"kind": "explode"}, {"kind": "drop", "digets": "x"}, {"kind": "stale", "tag": "v1"}):
        with pytest.raises(LabError, match="400"):
            faults.set([bad])
    assert faults.active() == []


def test_big_blob_streams_through_the_chain(local_chain: LocalChain, fresh_repo: str) -> None:
    """A 1 GiB blob (LAB_BIG_BLOB_BYTES to change) passes without any gateway buffering it."""
    size = int(os.environ.get("LAB_BIG_BLOB_BYTES", str(1 << 30)))
    pushed = push_blob_artifact(local_chain.push_address, fresh_repo, "v1", size)
    client = HopClient(local_chain, "edge")
    digest = hashlib.sha256()
    received = 0
    path = f"/v2/{local_chain.repository_at('edge', fresh_repo)}/blobs/{pushed.layer_digests[0]}"
    # gets the token the stream below carries (a cold Harbor answers HEAD of an uncached blob 404)
    manifest = f"/v2/{local_chain.repository_at('edge', fresh_repo)}/manifests/v1"
    assert client.request("HEAD", manifest, timeout=120.0).status_code == 200
    with client.http.stream("GET", path, headers=client.headers(), timeout=120.0) as response:
        assert response.status_code == 200 and int(response.headers["content-length"]) == size
        for chunk in response.iter_bytes(1 << 20):
            digest.update(chunk)
            received += len(chunk)
    client.http.close()
    assert received == size and "sha256:" + digest.hexdigest() == pushed.layer_digests[0]
    status = Path(f"/proc/{local_chain.hop('edge').gateway.pid}/status").read_text()
    peak_kib = int(status.split("VmHWM:")[1].split()[0])
    assert peak_kib < 200 * 1024, f"edge gateway peaked at {peak_kib} KiB"


# -- faults for the engine's bounds (issue 9) ------------------------------------------------------


def _raw_exchange(address: str, path: str, seconds: float) -> bytes:
    """What a gateway sends within ``seconds`` for one raw GET (a client with no HTTP timeouts)."""
    host, _, port = address.rpartition(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=5.0) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n".encode())
        sock.settimeout(0.2)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                received += sock.recv(4096)
    return received


@pytest.mark.parametrize("kind", ["trickle", "blackhole"])
def test_trickle_and_blackhole_never_finish_the_headers(
    local_chain: LocalChain, artifact: PushedArtifact, kind: str
) -> None:
    local_chain.faults("core").set([{"kind": kind, "seconds": 0.25}])
    core = local_chain.hop("core")
    for path in ("/v2/", f"/v2/{local_chain.repository_at('core', artifact.repository)}/manifests/v1"):
        received = _raw_exchange(core.address, path, 1.6)
        assert b"\r\n\r\n" not in received, "the headers never end"
        if kind == "trickle":
            assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.count(b"X") >= 4, received
        else:
            assert received == b""


def test_retry_after_error_bodies_and_located_redirects(
    local_chain: LocalChain, clients: dict[str, HopClient], artifact: PushedArtifact
) -> None:
    faults = local_chain.faults("edge")
    faults.set([{"kind": "ratelimit", "retry_after": "²"}])
    assert clients["edge"].manifest(local_chain, artifact.repository, "v1").headers["retry-after"] == "²"
    faults.set([{"kind": "error", "status": 405, "method": "HEAD"}])
    assert clients["edge"].manifest(local_chain, artifact.repository, "v1", "HEAD").status_code == 405
    assert clients["edge"].manifest(local_chain, artifact.repository, "v1").status_code == 200
    faults.set(
        [{"kind": "error", "status": 503, "code": "UNAVAILABLE", "message": "core could not reach origin"}]
    )
    unavailable = clients["edge"].blob(local_chain, artifact.repository, artifact.content_layer.digest)
    assert unavailable.status_code == 503 and unavailable.json()["errors"][0] == {
        "code": "UNAVAILABLE",
        "message": "core could not reach origin",
        "detail": {},
    }
    faults.set([{"kind": "redirect", "location": "http://127.0.0.1:99999/v2/"}])
    base = httpx.get(f"{local_chain.hop('edge').gateway.url}/v2/")
    assert base.status_code == 307 and base.headers["location"] == "http://127.0.0.1:99999/v2/"


def test_lying_manifests(
    local_chain: LocalChain, clients: dict[str, HopClient], artifact: PushedArtifact
) -> None:
    faults, edge = local_chain.faults("edge"), clients["edge"]
    faults.set([{"kind": "digest-header", "value": "md5"}])
    for method in ("HEAD", "GET"):
        response = edge.manifest(local_chain, artifact.repository, "v1", method)
        assert (
            response.headers["docker-content-digest"] == "md5:" + hashlib.md5(artifact.manifest).hexdigest()
        )
    assert response.content == artifact.manifest
    faults.set([{"kind": "many-layers", "layers": 40_000}])
    many = edge.manifest(local_chain, artifact.repository, "v1")
    layers = json.loads(many.content)["layers"]
    assert len(layers) == 40_001 and len({layer["digest"] for layer in layers}) == 40_001
    assert len(many.content) < 4 * 1024 * 1024
    faults.set([{"kind": "layer-size", "size": "1e400"}])
    odd = edge.manifest(local_chain, artifact.repository, "v1")
    assert b'"size":1e400' in odd.content and sha256(odd.content) == odd.headers["docker-content-digest"]
    faults.set([{"kind": "gzip-bomb", "bomb_bytes": 64 * 1024 * 1024}])
    with edge.http.stream(
        "GET",
        f"/v2/{local_chain.repository_at('edge', artifact.repository)}/manifests/v1",
        headers=edge.headers(),
    ) as bomb:
        wire = b"".join(bomb.iter_raw())
    assert bomb.headers["content-encoding"] == "gzip, gzip" and len(wire) < 4096
    assert len(gzip.decompress(gzip.decompress(wire))) == 64 * 1024 * 1024
    faults.set([{"kind": "content-encoding", "value": "gzip"}])
    with edge.http.stream(
        "GET",
        f"/v2/{local_chain.repository_at('edge', artifact.repository)}/manifests/v1",
        headers=edge.headers(),
    ) as labelled:
        assert (
            labelled.headers["content-encoding"] == "gzip"
            and b"".join(labelled.iter_raw()) == artifact.manifest
        )


def test_paced_drip_holds_its_rate(
    local_chain: LocalChain, clients: dict[str, HopClient], fresh_repo: str
) -> None:
    pushed = push_blob_artifact(local_chain.push_address, fresh_repo, "v1", 256 * 1024)
    layer = pushed.layers[0].digest
    local_chain.faults("edge").set([{"kind": "slow", "rate": 256 * 1024, "digest": layer}])
    started = time.monotonic()
    body = clients["edge"].blob(local_chain, fresh_repo, layer).content
    elapsed = time.monotonic() - started
    assert sha256(body) == layer and 0.9 <= elapsed < 3.0, elapsed


def test_the_request_log_keeps_raw_paths_agents_and_a_total_count(local_chain: LocalChain) -> None:
    faults = local_chain.faults("core")
    before = faults.total_requests()
    core = local_chain.hop("core").gateway.url
    httpx.get(
        f"{core}/v2/p-ghcr/org/app/manifests/..%2F..%2Fetc%2Fpasswd?n=1", headers={"User-Agent": "probe"}
    )
    entry = faults.requests()[-1]
    assert entry["raw_path"] == "/v2/p-ghcr/org/app/manifests/..%2F..%2Fetc%2Fpasswd?n=1"
    assert entry["agent"] == "probe" and entry["seq"] == faults.total_requests() == before + 1


def test_a_dropped_child_of_an_index_is_missing_downstream(
    local_chain: LocalChain, clients: dict[str, HopClient], fresh_repo: str
) -> None:
    amd = push_flux_artifact(local_chain.push_address, fresh_repo, "amd")
    push_index(local_chain.push_address, fresh_repo, "v1", {"linux/amd64": amd})
    child = amd.manifest_digest
    local_chain.faults("core").set([{"kind": "drop", "digest": child}])
    assert clients["core"].manifest(local_chain, fresh_repo, child).status_code == 404
    # distribution's proxy answers an upstream 404 for an uncached digest with 500 (see lab.registry)
    assert clients["edge"].manifest(local_chain, fresh_repo, child).status_code in (404, 500)
    assert clients["edge"].manifest(local_chain, fresh_repo, "v1").status_code == 200
