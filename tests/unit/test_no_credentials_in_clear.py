"""Credentials meant for an HTTPS registry never travel in clear.

A registry (or whoever answers in its name) can name any token realm and redirect anywhere. The
robot password of an HTTPS hop goes only to HTTPS: a Bearer realm on ``http://`` gets no
credentials and the check ends ``AuthFailed`` naming the refused realm; a redirect to HTTP carries
no Authorization. A realm on another HTTPS origin stays legitimate (Docker Hub's is).
"""

from __future__ import annotations

import base64
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from tests.unit.fake_registry import FakeRegistry, check

from lab.certs import TestCA
from layerwatch.chain import Credentials
from layerwatch.verdict import CheckResult, Health, Verdict

PASSWORD = "robot-s3cret-password"
ROBOT = Credentials("robot$admin", PASSWORD)
BASIC = "Basic " + base64.b64encode(f"robot$admin:{PASSWORD}".encode()).decode()


class Recorder:
    """A token endpoint (or redirect target) that records every request's headers."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        if request.path == "/token":
            return web.json_response({"token": "tok", "expires_in": 300})
        return web.Response(status=404)

    @property
    def authorizations(self) -> list[str]:
        return [h["Authorization"] for h in self.seen if "Authorization" in h]


@contextlib.asynccontextmanager
async def serve(handler: web.Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def server_tls(tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    ca = TestCA(tmp_path)
    cert, key = ca.issue("registry")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, ca.path.read_text()


def bearer_to(realm: list[str]):  # type: ignore[no-untyped-def]
    """A hook asking for a Bearer token from ``realm[0]``, accepting any token."""

    async def hook(request: web.Request) -> web.Response | None:
        if request.path.startswith("/v2/org/") and "Authorization" not in request.headers:
            challenge = f'Bearer realm="{realm[0]}",service="registry"'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        return None

    return hook


async def bearer_check(
    tmp_path: Path, *, realm_tls: bool, credentials: Credentials | None = ROBOT, query: str = ""
) -> tuple[CheckResult, Recorder, str]:
    """A check of an HTTPS registry whose Bearer realm is a recorder (HTTPS or plain HTTP)."""
    tls, ca_pem = server_tls(tmp_path)
    recorder, realm = Recorder(), [""]
    registry = FakeRegistry()
    registry.hooks.append(bearer_to(realm))
    async with (
        serve(recorder.handle, tls if realm_tls else None) as token_url,
        serve(registry.handle, tls) as url,
    ):
        realm[0] = f"{token_url}/token{query}"
        result = await check(url, ca_pem=ca_pem, credentials=credentials)
    return result, recorder, token_url


async def test_an_http_token_realm_of_an_https_registry_gets_no_credentials_and_is_auth_failed(
    tmp_path: Path,
) -> None:
    result, recorder, token_url = await bearer_check(tmp_path, realm_tls=False, query="?account=robot")
    hop = result.judgement.hops[0]
    assert recorder.seen == []  # not even asked: the password never left
    assert hop.verdict is Verdict.AUTH_FAILED and result.judgement.health is Health.UNKNOWN
    assert f"token realm {token_url}/token is plain HTTP" in hop.message
    assert "account=robot" not in hop.message


async def test_a_token_realm_on_another_https_origin_still_gets_the_credentials(tmp_path: Path) -> None:
    result, recorder, _ = await bearer_check(tmp_path, realm_tls=True)
    assert result.judgement.verdict is Verdict.HEALTHY, result.judgement.message
    assert recorder.authorizations == [BASIC]


async def test_an_anonymous_check_may_still_take_a_token_from_an_http_realm(tmp_path: Path) -> None:
    result, recorder, _ = await bearer_check(tmp_path, realm_tls=False, credentials=None)
    assert result.judgement.verdict is Verdict.HEALTHY, result.judgement.message
    assert recorder.authorizations == []  # nothing of anyone's to send


async def test_a_redirect_from_https_to_http_carries_no_authorization(tmp_path: Path) -> None:
    tls, ca_pem = server_tls(tmp_path)
    recorder = Recorder()
    registry = FakeRegistry()
    target = [""]

    async def basic_then_redirect(request: web.Request) -> web.Response | None:
        if request.path.startswith("/v2/org/") and request.headers.get("Authorization") != BASIC:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        if "/blobs/" in request.path and request.method == "GET":
            return web.Response(status=307, headers={"Location": f"{target[0]}{request.path}"})
        return None

    registry.hooks.append(basic_then_redirect)
    async with serve(recorder.handle) as plain, serve(registry.handle, tls) as url:
        target[0] = plain
        result = await check(url, ca_pem=ca_pem, credentials=ROBOT)
    assert recorder.seen, "the redirect was followed"
    assert recorder.authorizations == []
    assert result.judgement.verdict is Verdict.LAYER_MISSING  # the plain target answered 404
