"""The OCI 1.1 referrers API at a lab gateway, as registries that support it answer.

The lab's registries (distribution 2.8) have no referrers API, so cosign and notation store
referrers under the ``sha256-<hex>`` referrers tag there. Each gateway answers
``GET /v2/<name>/referrers/<digest>[?artifactType=…]`` from that tag of the registry behind it (a
proxy registry pulls the tag through), the way a registry with the API (or a Harbor proxy
project with ``proxy_referrer_api`` on) does: an image index, empty when there are none (never a
404), filtered when asked, with ``OCI-Filters-Applied: artifactType``. The ``hide-referrers``
fault (`lab.faults`) turns the API off at one hop: 404. The API reads the registry behind the
gateway directly, so a ``drop`` of the referrers tag at a gateway empties the API of the hops
*below* it (their proxies pull the tag through it), not its own.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["OCI_INDEX", "referrers_index"]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_LIMIT = 4 * 1024 * 1024


async def referrers_index(
    session: aiohttp.ClientSession, upstream: str, repository: str, digest: str, artifact_type: str | None
) -> web.Response:
    """The referrers index of ``digest`` in ``repository`` at ``upstream`` (a registry base URL)."""
    tag = digest.replace(":", "-", 1)
    url = f"{upstream}/v2/{repository}/manifests/{tag}"
    listed: list[Any] = []
    try:
        async with session.get(url, headers={"Accept": OCI_INDEX, "Accept-Encoding": "identity"}) as response:
            if response.status == 200:
                document = json.loads(await response.content.read(_LIMIT))
                listed = [m for m in document.get("manifests", []) if isinstance(m, dict)]
            elif response.status != 404:
                return _error(502, f"referrers tag {tag}: upstream answered {response.status}")
    except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
        return _error(502, f"referrers tag {tag}: {exc}")
    headers = {"Content-Type": OCI_INDEX, "Docker-Distribution-Api-Version": "registry/2.0"}
    if artifact_type:
        listed = [m for m in listed if m.get("artifactType") == artifact_type]
        headers["OCI-Filters-Applied"] = "artifactType"
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed}).encode()
    return web.Response(body=body, headers=headers)


def _error(status: int, message: str) -> web.Response:
    body = {"errors": [{"code": "UNKNOWN", "message": message, "detail": {}}]}
    return web.json_response(body, status=status)
