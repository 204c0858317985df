"""Credentials that expire are asked for again: docker credential helpers and cloud tokens.

A helper's answer (gcloud's token lasts about an hour, ecr-login's 12) was read once at load, so
every check after expiry was AuthFailed until a restart. Now a registry that refuses a helper's
credentials makes layerwatch run the helper once more and retry once; a minute-long floor and a
shared lock keep a registry that refuses everything from running helpers in a loop. Cloud tokens
cached until their expiry are fetched anew the same way when a registry refuses them early.

The helper is a script on PATH speaking docker's protocol; the registry is in-process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from tests.registry.cloud_fakes import FakeCloud, serve

from layerwatch.chain import Credentials, Proxy
from layerwatch.registry import credhelpers, providers
from layerwatch.registry.credhelpers import HelperCache, docker_credentials
from layerwatch.registry.providers import GCP_USERNAME

from .fake_registry import FakeRegistry, check, running

_HELPER = """#!{python}
import json, sys
from pathlib import Path
here = Path(__file__).parent
server = sys.stdin.read().strip()
with (here / "asked.log").open("a") as log:
    log.write(server + "\\n")
answers = json.loads((here / "answers.json").read_text())
asked = len((here / "asked.log").read_text().splitlines())
answer = answers[min(asked, len(answers)) - 1]
if answer is None:
    print("helper broke: keychain locked")
    sys.exit(1)
print(json.dumps({{"ServerURL": server, "Username": answer[0], "Secret": answer[1]}}))
"""


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[list[object]], Path]:
    """``docker-credential-lwtest`` on PATH giving ``answers`` in turn (None: fail); returns its log."""

    def install(answers: list[object]) -> Path:
        script = tmp_path / "docker-credential-lwtest"
        script.write_text(_HELPER.format(python=sys.executable))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        (tmp_path / "answers.json").write_text(json.dumps(answers))
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
        return tmp_path / "asked.log"

    return install


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A fresh process-wide helper cache on a clock the test moves."""
    now = Clock()
    monkeypatch.setattr(credhelpers, "HELPERS", HelperCache(clock=now))
    return now


def _basic_only(registry: FakeRegistry, password: str) -> list[str]:
    """Make the registry accept only Basic ``robot:<password>``; returns the passwords it was sent."""
    sent: list[str] = []

    async def hook(request: web.Request) -> web.StreamResponse | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            sent.append(base64.b64decode(header[6:]).decode().partition(":")[2])
            if sent[-1] == password:
                return None
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="registry"'})

    registry.hooks.append(hook)
    return sent


def _bearer_only(registry: FakeRegistry, password: str) -> list[str]:
    """A registry whose token endpoint takes only ``robot:<password>``; returns what it was sent."""
    sent: list[str] = []

    async def hook(request: web.Request) -> web.StreamResponse | None:
        header = request.headers.get("Authorization", "")
        if request.path == "/token":
            sent.append(base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")[2])
            if sent[-1] != password:
                return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
            return web.json_response({"token": f"t-{password}", "expires_in": 300})
        if header == f"Bearer t-{password}":
            return None
        realm = f'Bearer realm="http://{request.host}/token",service="fake"'
        return web.Response(status=401, headers={"WWW-Authenticate": realm})

    registry.hooks.append(hook)
    return sent


def _loaded(registry: FakeRegistry) -> Credentials | None:
    """The hop's credentials as ``serve`` and the CLI load them: from the docker config's helper."""
    host = registry.url.removeprefix("http://")
    return docker_credentials({"credHelpers": {host: "lwtest"}}, host)


@pytest.mark.parametrize("login", [_basic_only, _bearer_only], ids=["basic", "token-endpoint"])
async def test_a_refused_helper_login_runs_the_helper_again_and_the_check_passes(
    helper: Callable[[list[object]], Path], clock: Clock, login: Callable[[FakeRegistry, str], list[str]]
) -> None:
    asked = helper([["robot", "expired"], ["robot", "fresh"]])
    async with running(FakeRegistry()) as registry:
        sent = login(registry, "fresh")
        credentials = _loaded(registry)
        clock.now += 3600  # an hour later the helper's answer has expired
        first = await check(registry.url, credentials=credentials)
        second = await check(registry.url, credentials=credentials)
    assert [h.verdict.value for h in first.judgement.hops] == ["Healthy"]
    assert [h.verdict.value for h in second.judgement.hops] == ["Healthy"]
    assert len(asked.read_text().splitlines()) == 2, "once at load, once when the registry refused"
    assert sent[0] == "expired" and sent[-1] == "fresh"


async def test_concurrent_checks_share_one_helper_run_and_a_refusing_registry_gets_no_storm(
    helper: Callable[[list[object]], Path], clock: Clock
) -> None:
    asked = helper([["robot", "expired"], ["robot", "fresh"]])
    async with running(FakeRegistry()) as registry:
        _basic_only(registry, "fresh")
        credentials = _loaded(registry)
        clock.now += 3600
        results = await asyncio.gather(*(check(registry.url, credentials=credentials) for _ in range(8)))
        assert {h.verdict.value for r in results for h in r.judgement.hops} == {"Healthy"}
        assert len(asked.read_text().splitlines()) == 2, "eight checks, one helper run"
        registry.hooks.clear()
        _basic_only(registry, "revoked-everything")  # now nothing the helper gives is accepted
        clock.now += 3600
        refused = [await check(registry.url, credentials=credentials) for _ in range(5)]
    assert {h.verdict.value for r in refused for h in r.judgement.hops} == {"AuthFailed"}
    assert len(asked.read_text().splitlines()) == 3, "one more run, then none within the minute"


async def test_a_helper_failing_on_renewal_is_the_hops_auth_failed_reason(
    helper: Callable[[list[object]], Path], clock: Clock
) -> None:
    helper([["robot", "expired"], None])
    async with running(FakeRegistry()) as registry:
        _basic_only(registry, "fresh")
        credentials = _loaded(registry)
        clock.now += 3600
        result = await check(registry.url, credentials=credentials)
    (hop,) = result.judgement.hops
    assert hop.verdict.value == "AuthFailed"
    assert "docker-credential-lwtest get 127.0.0.1:" in hop.message
    assert "helper broke: keychain locked" in hop.message


async def test_static_credentials_are_not_asked_for_again() -> None:
    async with running(FakeRegistry()) as registry:
        sent = _basic_only(registry, "right")
        result = await check(registry.url, credentials=Credentials("robot", "wrong"))
    assert [h.verdict.value for h in result.judgement.hops] == ["AuthFailed"]
    assert set(sent) == {"wrong"}


# -- cloud tokens ------------------------------------------------------------------------------------


class Google:
    """The metadata fake, a cache on a clock the test moves, and a registry serving Google's names.

    The hop is named like Artifact Registry and reached through a proxy that is the in-process
    registry itself (an HTTP server answers absolute-URI requests), so no name is resolved.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock = Clock(time.time())
        monkeypatch.setattr(providers, "_CACHE", providers.ProviderCache(clock=self.clock))
        self.cloud = FakeCloud(tenant="t", client_id="c", federated_token="f", origin="http://unused")
        self.monkeypatch = monkeypatch
        self.registry = FakeRegistry()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Google]:
        async with serve(self.cloud) as metadata, running(self.registry):
            self.monkeypatch.setenv("GCE_METADATA_HOST", metadata)
            yield self

    async def check(self) -> list[str]:
        result = await check("http://europe-docker.pkg.dev", provider="gcp", proxy=Proxy(self.registry.url))
        assert GCP_USERNAME not in "".join(h.message for h in result.judgement.hops)
        return [h.verdict.value for h in result.judgement.hops]


async def test_a_cloud_token_the_registry_refuses_before_its_expiry_is_fetched_anew(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Google(monkeypatch).running() as google:
        _basic_only(google.registry, google.cloud.gcp_token)
        before = await google.check()
        google.cloud.gcp_token = "ya29.rotated"  # revoked and replaced well before its expiry
        google.registry.hooks.clear()
        sent = _basic_only(google.registry, "ya29.rotated")
        google.clock.now += 120
        after = await google.check()
    assert before == after == ["Healthy"]
    assert google.cloud.calls["metadata"] == 2
    assert sent[-1] == "ya29.rotated"


async def test_a_registry_refusing_every_cloud_token_costs_one_fetch_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Google(monkeypatch).running() as google:
        sent = _basic_only(google.registry, "nothing-the-cloud-issues")
        verdicts = [await google.check() for _ in range(5)]
        google.clock.now += 120
        verdicts.append(await google.check())
    assert verdicts == [["AuthFailed"]] * 6
    assert google.cloud.calls["metadata"] == 2, "at the first check, then once after the minute"
    assert len(sent) <= 2 * len(verdicts), "a refused login is retried at most once, never in a loop"
