"""The lab gateway side by side with the real Harbor v2.15.2: where they disagreed, Harbor won.

One real Harbor chain (``harbor_chain``) and one gateway chain (``local_chain``), both edge
``p-core`` -> core ``p-ghcr`` -> origin with a private, robot-only edge. Each test asks both edges
the same question about a fresh artifact and asserts the same answer (status, error code, the
headers a client reads), and that this answer is the one Harbor gives. The gateway answers that
used to differ: ``HEAD`` of an uncached blob (200, Harbor 404), a token for wrong credentials (401,
Harbor hands one out and then answers ``Basic realm="harbor"``), Basic credentials on ``/v2/``
(refused), an unknown project (404 ``NAME_UNKNOWN``, Harbor 401 ``UNAUTHORIZED``), unknown tags
and blobs (the registry's ``MANIFEST_UNKNOWN``/``BLOB_UNKNOWN``, Harbor ``NOT_FOUND``), and the digest
headers of a manifest Harbor passes on from upstream (set, Harbor empty). Harbor's two ways of
losing a blob's bytes are faults at the gateway (``empty-body``; ``cut`` with ``keep: 0``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from lab.artifacts import PushedArtifact, push_flux_artifact
from lab.chain import LocalChain
from lab.harbor import HarborChain

pytestmark = [pytest.mark.registry, pytest.mark.harbor]

MANIFEST = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
NO_BLOB = "sha256:" + "0" * 64
CACHE_WAIT = 60.0
"""Seconds Harbor may take to store a blob it proxied (it copies it in the background)."""
_FIELDS = re.compile(r'(\w+)="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class Edge:
    """The edge hop of one chain as a client reaches it: its URL, the path prefix, its robot."""

    kind: str
    base: str
    chain: HarborChain | LocalChain
    credentials: tuple[str, str]

    def path(self, repository: str) -> str:
        return self.chain.repository_at("edge", repository)

    def push(self, tag: str = "v1", files: dict[str, bytes] | None = None) -> PushedArtifact:
        """A Flux artifact under a repository no hop has seen."""
        repository = f"org/vs-{secrets.token_hex(4)}"
        return push_flux_artifact(self.chain.push_address, repository, tag, files)

    def token(self, repository_path: str, credentials: tuple[str, str] | None) -> httpx.Response:
        """The token service's answer for ``credentials``, found as a client finds it (the 401)."""
        challenge = httpx.get(f"{self.base}/v2/{repository_path}/manifests/v1", timeout=10.0)
        fields = dict(_FIELDS.findall(challenge.headers.get("www-authenticate", "")))
        params = {"service": fields["service"], "scope": f"repository:{repository_path}:pull"}
        return httpx.get(fields["realm"], params=params, auth=credentials, timeout=10.0)

    def bearer(self, repository_path: str, credentials: tuple[str, str] | None = None) -> dict[str, str]:
        answer = self.token(repository_path, credentials or self.credentials)
        assert answer.status_code == 200, (self.kind, answer.text)
        return {"Authorization": f"Bearer {answer.json()['token']}"}

    def url(self, artifact_path: str, endpoint: str, reference: str) -> str:
        return f"{self.base}/v2/{artifact_path}/{endpoint}/{reference}"


@pytest.fixture
def edges(harbor_chain: HarborChain, local_chain: LocalChain) -> list[Edge]:
    """Harbor's edge and the gateway's edge, each with its robot account."""
    found = []
    for kind, chain in (("harbor", harbor_chain), ("gateway", local_chain)):
        hop = chain.hop("edge")
        assert hop.credentials is not None
        found.append(Edge(kind, f"http://{hop.address}", chain, hop.credentials))
    return found


def error_code(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["errors"][0]["code"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def same(edges: list[Edge], ask: Callable[[Edge], Any]) -> Any:
    """``ask`` each edge; assert both answers are equal and return Harbor's."""
    answers = {edge.kind: ask(edge) for edge in edges}
    assert answers["gateway"] == answers["harbor"], answers
    return answers["harbor"]


@dataclasses.dataclass(frozen=True)
class Fetched:
    """A blob GET as a client sees it: status, declared length, bytes received, whether it completed."""

    status: int
    length: str | None
    received: int
    complete: bool


def fetch(url: str, headers: dict[str, str]) -> Fetched:
    received, complete = 0, True
    with httpx.stream("GET", url, headers=headers, timeout=30.0) as response:
        try:
            for chunk in response.iter_raw():
                received += len(chunk)
        except (httpx.RemoteProtocolError, httpx.ReadError):
            complete = False
        return Fetched(response.status_code, response.headers.get("content-length"), received, complete)


def head_when_cached(edge: Edge, url: str, headers: dict[str, str]) -> httpx.Response:
    """``HEAD`` until 200: Harbor stores a proxied blob in the background after the GET."""
    deadline = time.monotonic() + CACHE_WAIT
    while True:
        head = httpx.head(url, headers=headers, timeout=10.0)
        if head.status_code == 200 or time.monotonic() > deadline:
            return head
        time.sleep(0.5)


def test_an_anonymous_ping_is_a_bearer_challenge_naming_harbors_token_service(edges: list[Edge]) -> None:
    def ask(edge: Edge) -> tuple[int, str | None, str, dict[str, str]]:
        ping = httpx.get(f"{edge.base}/v2/", timeout=10.0)
        challenge = ping.headers["www-authenticate"]
        fields = dict(_FIELDS.findall(challenge))
        fields["realm"] = fields["realm"].removeprefix(edge.base)
        return ping.status_code, error_code(ping), challenge.split(" ", 1)[0], fields

    assert same(edges, ask) == (
        401,
        "UNAUTHORIZED",
        "Bearer",
        {"realm": "/service/token", "service": "harbor-registry"},
    )


def test_wrong_credentials_get_a_token_and_then_a_basic_challenge(edges: list[Edge]) -> None:
    """Harbor's token service answers anyone; the request with that token is refused."""

    def ask(edge: Edge) -> list[tuple[int, str | None, str | None]]:
        pushed = edge.push()
        path = edge.path(pushed.repository)
        answers = []
        for credentials in ((edge.credentials[0], "not-the-secret"), None):
            token = edge.token(path, credentials)
            assert token.status_code == 200, (edge.kind, credentials is None, token.text)
            auth = {"Authorization": f"Bearer {token.json()['token']}"}
            for url in (f"{edge.base}/v2/", edge.url(path, "manifests", "v1")):
                refused = httpx.get(url, headers={**auth, **MANIFEST}, timeout=10.0)
                challenge = refused.headers.get("www-authenticate")
                answers.append((refused.status_code, error_code(refused), challenge))
        return answers

    assert same(edges, ask) == [(401, "UNAUTHORIZED", 'Basic realm="harbor"')] * 4


def test_the_robots_basic_credentials_straight_to_the_registry_api_are_accepted(edges: list[Edge]) -> None:
    def ask(edge: Edge) -> tuple[int, int, bool]:
        pushed = edge.push()
        ping = httpx.get(f"{edge.base}/v2/", auth=edge.credentials, timeout=10.0)
        url = edge.url(edge.path(pushed.repository), "manifests", pushed.manifest_digest)
        manifest = httpx.get(url, auth=edge.credentials, headers=MANIFEST, timeout=30.0)
        return ping.status_code, manifest.status_code, manifest.content == pushed.manifest

    assert same(edges, ask) == (200, 200, True)


def test_an_unknown_project_is_401_unauthorized_with_an_empty_challenge(edges: list[Edge]) -> None:
    def ask(edge: Edge) -> tuple[int, str | None, str | None, bool]:
        path = f"nope/org/vs-{secrets.token_hex(4)}"
        auth = edge.bearer(path)
        head = httpx.head(edge.url(path, "manifests", "v1"), headers={**auth, **MANIFEST}, timeout=10.0)
        assert head.status_code == 401, edge.kind
        answer = httpx.get(edge.url(path, "manifests", "v1"), headers={**auth, **MANIFEST}, timeout=10.0)
        named = "project nope not found" in answer.text
        return answer.status_code, error_code(answer), answer.headers.get("www-authenticate"), named

    assert same(edges, ask) == (401, "UNAUTHORIZED", "", True)


def test_an_unknown_tag_or_blob_is_404_not_found(edges: list[Edge]) -> None:
    def ask(edge: Edge) -> list[tuple[str, int, str | None]]:
        pushed = edge.push()
        path = edge.path(pushed.repository)
        auth = edge.bearer(path)
        asked = [
            ("GET", edge.url(path, "manifests", "nosuchtag")),
            ("HEAD", edge.url(path, "manifests", "nosuchtag")),
            ("GET", edge.url(path, "blobs", NO_BLOB)),
            ("HEAD", edge.url(path, "blobs", NO_BLOB)),
        ]
        answers = []
        for method, url in asked:
            answer = httpx.request(method, url, headers={**auth, **MANIFEST}, timeout=30.0)
            answers.append((method, answer.status_code, error_code(answer)))
        tag = httpx.get(asked[0][1], headers={**auth, **MANIFEST}, timeout=30.0)
        assert "tag nosuchtag not found" in tag.text, (edge.kind, tag.text)
        return answers

    assert same(edges, ask) == [
        ("GET", 404, "NOT_FOUND"),
        ("HEAD", 404, None),
        ("GET", 404, "NOT_FOUND"),
        ("HEAD", 404, None),
    ]


def test_head_of_a_blob_the_hop_has_not_cached_is_404_until_a_get_pulled_it(edges: list[Edge]) -> None:
    """Harbor answers HEAD from its own storage only: what head mode must not call missing."""

    def ask(edge: Edge) -> tuple[int, int, int, bool]:
        pushed = edge.push()  # ~770 bytes: below the cold-chain empty-body size
        path = edge.path(pushed.repository)
        auth = edge.bearer(path)
        layer = pushed.content_layer
        url = edge.url(path, "blobs", layer.digest)
        cold = httpx.head(url, headers=auth, timeout=30.0)
        pulled = httpx.get(url, headers=auth, timeout=30.0)
        assert hashlib.sha256(pulled.content).hexdigest() == layer.digest.removeprefix("sha256:")
        warm = head_when_cached(edge, url, auth)
        full = warm.headers.get("content-length") == str(layer.size)
        return cold.status_code, pulled.status_code, warm.status_code, full

    assert same(edges, ask) == (404, 200, 200, True)


def test_a_manifest_harbor_passes_on_from_upstream_carries_empty_digest_headers(edges: list[Edge]) -> None:
    """GET by tag before the hop has stored the manifest: empty Docker-Content-Digest and ETag;
    HEAD by tag and GET by digest name the digest."""

    def ask(edge: Edge) -> list[tuple[Any, ...]]:
        pushed = edge.push()
        path = edge.path(pushed.repository)
        auth = {**edge.bearer(path), **MANIFEST}
        answers = []
        for method, reference in (("GET", "v1"), ("HEAD", "v1"), ("GET", pushed.manifest_digest)):
            answer = httpx.request(method, edge.url(path, "manifests", reference), headers=auth, timeout=30.0)
            digest = answer.headers.get("docker-content-digest")
            etag = (answer.headers.get("etag") or "").strip('"')
            body = method == "HEAD" or answer.content == pushed.manifest
            named = ["digest" if value == pushed.manifest_digest else value for value in (digest, etag)]
            answers.append((method, answer.status_code, *named, body))
        return answers

    assert same(edges, ask) == [
        ("GET", 200, "", "", True),
        ("HEAD", 200, "digest", "digest", True),
        ("GET", 200, "digest", "digest", True),
    ]


def test_the_empty_body_fault_answers_as_an_edge_harbor_in_front_of_a_cold_harbor(edges: list[Edge]) -> None:
    """goharbor/harbor#23373: a blob over ~2 KiB through two cold Harbors is 200 with no bytes."""

    def ask(edge: Edge) -> Fetched:
        pushed = edge.push(files={"blob.bin": secrets.token_bytes(16384)})
        path = edge.path(pushed.repository)
        layer = pushed.content_layer
        if isinstance(edge.chain, LocalChain):
            edge.chain.faults("edge").set([{"kind": "empty-body", "digest": layer.digest}])
        return fetch(edge.url(path, "blobs", layer.digest), edge.bearer(path))

    assert same(edges, ask) == Fetched(200, "0", 0, True), "200, Content-Length 0, no bytes, no error"


def test_cut_to_nothing_answers_as_a_harbor_whose_storage_lost_a_cached_blob(edges: list[Edge]) -> None:
    """Data gone, descriptor cached: 200 with the full length, 0 bytes, closed; every time; HEAD 200."""

    def ask(edge: Edge) -> tuple[list[Fetched], int, bool]:
        pushed = edge.push()
        path = edge.path(pushed.repository)
        auth = edge.bearer(path)
        layer = pushed.content_layer
        url = edge.url(path, "blobs", layer.digest)
        assert fetch(url, auth).complete
        assert head_when_cached(edge, url, auth).status_code == 200
        if isinstance(edge.chain, HarborChain):
            edge.chain.harbor("edge").processes.lose_blob(layer.digest, layer.size)
        else:
            edge.chain.faults("edge").set([{"kind": "cut", "keep": 0, "digest": layer.digest}])
        pulls = [fetch(url, auth) for _ in range(2)]
        head = httpx.head(url, headers=auth, timeout=10.0)
        lengths = {p.length for p in pulls} | {head.headers.get("content-length")}
        full = lengths == {str(layer.size)}
        return [dataclasses.replace(p, length=None) for p in pulls], head.status_code, full

    pulls, head, full = same(edges, ask)
    assert pulls == [Fetched(200, None, 0, False)] * 2, "the full length announced, no bytes, closed"
    assert head == 200 and full
