"""A minimal OCI push for the cold-path canary: upload blobs, put a manifest, list and delete tags.

Only what the canary needs, over the hop's own client (its transport, TLS, proxy and auth): a
blob goes up monolithically (``POST`` an upload session, ``PUT`` it with the digest), a manifest
is ``PUT`` under a tag, old tags are listed and their manifests deleted by digest. Tokens are asked
with the scope each step needs (``pull,push``, ``delete``). Every request is bounded and retried
like a pull; whatever goes wrong raises ``RegistryError`` with a typed ``Fault``.
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import urlencode, urlsplit, urlunsplit

from layerwatch.observation import Fault, FaultKind
from layerwatch.registry.client import RegistryClient, Upload
from layerwatch.registry.errors import RegistryError, RegistryNotFound
from layerwatch.registry.network import RetryBudget

__all__ = ["MAX_TAGS", "delete_manifest", "digest_of", "list_tags", "push_blob", "push_manifest"]

PUSH = "pull,push"
MAX_TAGS = 1000
"""Tags asked for in one listing; a canary repository holds a handful."""
_MAX_TAG_LIST_BYTES = 256 * 1024


def digest_of(data: bytes) -> str:
    """The sha256 digest of bytes pushed (the registry must store them under it)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _with_digest(location: str, digest: str) -> str:
    """The upload session URL with ``digest=`` added to whatever query the registry put there."""
    parts = urlsplit(location)
    query = "&".join(filter(None, [parts.query, urlencode({"digest": digest})]))
    return urlunsplit(parts._replace(query=query))


async def push_blob(client: RegistryClient, repository: str, data: bytes, budget: RetryBudget) -> str:
    """Upload ``data`` as a blob of ``repository`` in one PUT; returns its digest."""
    digest = digest_of(data)
    start = client.url(repository, "blobs", "uploads/")
    location = await client.send_for_location("POST", start, repository, budget, actions=PUSH)
    await client.send(
        "PUT", _with_digest(location, digest), repository, budget, upload=Upload(data), actions=PUSH
    )
    return digest


async def push_manifest(
    client: RegistryClient, repository: str, tag: str, body: bytes, media_type: str, budget: RetryBudget
) -> str:
    """PUT a manifest under ``tag``; returns its digest (what the bytes hash to, not what a header says)."""
    url = client.url(repository, "manifests", tag)
    await client.send("PUT", url, repository, budget, upload=Upload(body, media_type), actions=PUSH)
    return digest_of(body)


async def list_tags(client: RegistryClient, repository: str, budget: RetryBudget) -> list[str]:
    """The repository's tags (at most ``MAX_TAGS``); none when the repository does not exist yet."""
    url = client.url(repository, "tags", "list") + "?" + urlencode({"n": MAX_TAGS})
    try:
        body = await client.send("GET", url, repository, budget, actions="pull", cap=_MAX_TAG_LIST_BYTES)
    except RegistryNotFound:
        return []
    try:
        document = json.loads(body[:_MAX_TAG_LIST_BYTES])
        tags = document.get("tags") or []
        if len(body) > _MAX_TAG_LIST_BYTES or not isinstance(tags, list):
            raise ValueError("not a tag list")
    except (ValueError, AttributeError):
        raise RegistryError(Fault(FaultKind.HTTP_STATUS, "the tag list is not JSON", 200)) from None
    return [tag for tag in tags if isinstance(tag, str)]


async def delete_manifest(client: RegistryClient, repository: str, digest: str, budget: RetryBudget) -> None:
    """DELETE a manifest by digest (the registry API deletes by digest only); gone already is fine."""
    url = client.url(repository, "manifests", digest)
    try:
        await client.send("DELETE", url, repository, budget, actions="delete")
    except RegistryNotFound:
        return
