"""Fakes of the Azure and Google endpoints workload identity talks to, on their documented wire formats.

No emulator exists for them, so these follow the published protocols and check what a real
service would check:

- Microsoft Entra ID token endpoint, ``POST /{tenant}/oauth2/v2.0/token`` with the OAuth2 client
  credentials grant and a JWT-bearer ``client_assertion`` (the federated token); answers
  ``{token_type, expires_in, access_token}`` or ``{error, error_description}``.
- An Azure Container Registry: ``POST /oauth2/exchange`` (``grant_type=access_token``, ``service``,
  ``tenant``, ``access_token``) answers ``{refresh_token}`` (a JWT with ``exp``); ``/v2/`` answers
  401 ``Bearer realm="<host>/oauth2/token",service="<host>"``; ``GET /oauth2/token`` with Basic
  ``00000000-0000-0000-0000-000000000000:<refresh token>`` answers ``{access_token}``; authorized
  ``/v2/`` requests are served by a real registry behind it.
- A registry taking docker identity tokens at ``POST /token`` (the OAuth2 refresh-token grant).
- The GCE metadata server: ``GET /computeMetadata/v1/instance/service-accounts/default/token``
  with ``Metadata-Flavor: Google`` answers ``{access_token, expires_in, token_type}``; without the
  header, 403.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from layerwatch.registry.providers import ACR_USERNAME

__all__ = ["FakeCloud", "IdentityTokenRegistry", "serve"]

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding", "host"}


def fake_jwt(lifetime: float) -> str:
    """An unsigned JWT whose ``exp`` is ``lifetime`` seconds away (ACR refresh tokens are JWTs)."""

    def part(document: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")

    claims = {"exp": int(time.time() + lifetime), "jti": secrets.token_hex(8)}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.sig"


class FakeCloud:
    """State shared by the fakes: what each accepts and how often it was asked."""

    def __init__(
        self, *, tenant: str, client_id: str, federated_token: str, origin: str, lifetime: float = 3600
    ) -> None:
        self.tenant, self.client_id, self.federated_token = tenant, client_id, federated_token
        self.origin = origin.rstrip("/")
        self.lifetime = lifetime
        self.entra_token = f"aad-{secrets.token_hex(12)}"
        self.refresh_token = fake_jwt(lifetime)
        self.acr_access = f"acr-access-{secrets.token_hex(12)}"
        self.gcp_token = f"ya29.{secrets.token_hex(16)}"
        self.calls: Counter[str] = Counter()
        self._session: aiohttp.ClientSession | None = None

    # -- Entra ID --------------------------------------------------------------------------------

    async def entra_token_endpoint(self, request: web.Request) -> web.Response:
        self.calls["entra"] += 1
        form = await request.post()
        if request.match_info["tenant"] != self.tenant:
            return web.json_response(
                {"error": "invalid_request", "error_description": "AADSTS90002: Tenant not found."},
                status=400,
            )
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_assertion_type") != JWT_BEARER
            or form.get("client_id") != self.client_id
            or not str(form.get("scope", "")).endswith("/.default")
        ):
            return web.json_response(
                {"error": "invalid_request", "error_description": "AADSTS900144: malformed request."},
                status=400,
            )
        if form.get("client_assertion") != self.federated_token:
            return web.json_response(
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS700213: No matching federated identity.",
                },
                status=401,
            )
        return web.json_response(
            {"token_type": "Bearer", "expires_in": int(self.lifetime), "access_token": self.entra_token}
        )

    # -- ACR ----------------------------------------------------------------------------------------

    async def acr_exchange(self, request: web.Request) -> web.Response:
        self.calls["exchange"] += 1
        form = await request.post()
        if (
            form.get("grant_type") != "access_token"
            or form.get("service") != request.host
            or form.get("tenant") != self.tenant
            or form.get("access_token") != self.entra_token
        ):
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "bad exchange"}]}, status=401
            )
        return web.json_response({"refresh_token": self.refresh_token})

    async def acr_token(self, request: web.Request) -> web.Response:
        expected = base64.b64encode(f"{ACR_USERNAME}:{self.refresh_token}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "bad login"}]}, status=401
            )
        return web.json_response({"access_token": self.acr_access})

    async def acr_registry(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.acr_access}":
            return challenge(request, f"http://{request.host}/oauth2/token", request.host)
        assert self._session is not None
        return await forward(self._session, self.origin, request)

    # -- GCE metadata ------------------------------------------------------------------------------

    async def gce_token(self, request: web.Request) -> web.Response:
        self.calls["metadata"] += 1
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403, text="Missing required header: Metadata-Flavor")
        return web.json_response(
            {"access_token": self.gcp_token, "expires_in": int(self.lifetime), "token_type": "Bearer"}
        )

    def app(self) -> web.Application:
        """One application with every endpoint (each cloud addresses it by its own URL)."""
        app = web.Application()
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self.entra_token_endpoint)
        app.router.add_post("/oauth2/exchange", self.acr_exchange)
        app.router.add_get("/oauth2/token", self.acr_token)
        app.router.add_get("/computeMetadata/v1/instance/service-accounts/default/token", self.gce_token)
        app.router.add_route("*", "/v2/{tail:.*}", self.acr_registry)
        return app


def challenge(request: web.Request, realm: str, service: str) -> web.Response:
    """The registry's 401 that starts the token flow."""
    return web.json_response(
        {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
        status=401,
        headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="{service}"'},
    )


async def forward(session: aiohttp.ClientSession, origin: str, request: web.Request) -> web.Response:
    """Serve an authorized ``/v2/`` request from the real registry behind the fake."""
    headers = {
        k: v for k, v in request.headers.items() if k.lower() not in (_HOP_HEADERS | {"authorization"})
    }
    async with session.request(
        request.method, origin + request.path_qs, headers=headers, allow_redirects=False
    ) as upstream:
        body = await upstream.read()
        passed = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
        if request.method == "HEAD" and "Content-Length" in upstream.headers:
            passed["Content-Length"] = upstream.headers["Content-Length"]
        return web.Response(status=upstream.status, body=body or None, headers=passed)


class IdentityTokenRegistry:
    """A registry whose token endpoint takes docker identity tokens: the OAuth2 refresh-token grant.

    ``POST /token`` with ``grant_type=refresh_token``, ``refresh_token``, ``service``, ``scope``
    and ``client_id`` answers ``{access_token, expires_in}`` (distribution's token spec, OAuth2
    section); a GET (the Basic-credentials form) is refused, so only the grant can succeed.
    """

    def __init__(self, origin: str, identity_token: str) -> None:
        self.origin = origin.rstrip("/")
        self.identity_token = identity_token
        self.access = f"access-{secrets.token_hex(12)}"
        self.grants: list[dict[str, str]] = []
        self._session: aiohttp.ClientSession | None = None

    async def token(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.grants.append(form)
        if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != self.identity_token:
            return web.json_response({"error": "invalid_grant"}, status=401)
        return web.json_response(
            {"access_token": self.access, "expires_in": 300, "scope": form.get("scope", "")}
        )

    async def registry(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.access}":
            return challenge(request, f"http://{request.host}/token", "fake-registry")
        assert self._session is not None
        return await forward(self._session, self.origin, request)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/token", self.token)
        app.router.add_route("*", "/v2/{tail:.*}", self.registry)
        return app


@asynccontextmanager
async def serve(fake: FakeCloud | IdentityTokenRegistry) -> AsyncIterator[str]:
    """Run a fake on a loopback port for the duration; yields ``127.0.0.1:PORT``."""
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake._session = aiohttp.ClientSession()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"127.0.0.1:{port}"
    finally:
        await fake._session.close()
        await runner.cleanup()
