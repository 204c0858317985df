"""Docker config parity: ``credHelpers``, ``credsStore`` and ``identitytoken``, as docker uses them.

The helper is a script that follows docker's credential-helper protocol (``get`` on argv, the
server URL on stdin, ``{ServerURL, Username, Secret}`` on stdout, "credentials not found" and a
non-zero exit when it has none) and records what it was asked. Debian's
golang-docker-credential-helpers need a desktop keyring (secretservice) or a GPG-initialised
``pass`` store, so a protocol-following script is the headless stand-in.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tests.registry.cloud_fakes import IdentityTokenRegistry, serve
from tests.registry.helpers import CliRun, engine_check_async, hop_verdicts, run_cli

from lab.artifacts import push_flux_artifact
from lab.control import GatewayProcess
from lab.registry import RegistryProcess
from layerwatch.reference import Reference

pytestmark = pytest.mark.registry

ROBOT = ("robot$helper", "helper-secret-9f2c")
IDENTITY_TOKEN = "idt-refresh-7d41e0c2b9a8"

_HELPER = """#!{python}
import json, sys
from pathlib import Path
here = Path(__file__).parent
server = sys.stdin.read().strip()
with (here / "asked.log").open("a") as log:
    log.write(" ".join(sys.argv[1:]) + " " + server + "\\n")
answers = json.loads((here / "answers.json").read_text())
if sys.argv[1:] != ["get"] or server not in answers:
    print("credentials not found in native keychain")
    sys.exit(1)
username, secret = answers[server]
print(json.dumps({{"ServerURL": server, "Username": username, "Secret": secret}}))
"""


@pytest.fixture(scope="module")
def registry() -> Iterator[GatewayProcess]:
    """An origin behind a front that issues tokens only to `ROBOT`."""
    with RegistryProcess("helper-origin") as origin:
        push_flux_artifact(origin.address, "org/app", "v1")
        gateway = GatewayProcess("helper", origin.url, auth="required", user=ROBOT).start()
        try:
            yield gateway
        finally:
            gateway.stop()


@pytest.fixture(scope="module")
def identity_origin() -> Iterator[RegistryProcess]:
    with RegistryProcess("identity-origin") as origin:
        push_flux_artifact(origin.address, "org/app", "v1")
        yield origin


def _helper(directory: Path, answers: dict[str, tuple[str, str]], name: str = "lwtest") -> Path:
    """``docker-credential-<name>`` in ``directory``, answering ``answers`` (server -> user, secret)."""
    script = directory / f"docker-credential-{name}"
    script.write_text(_HELPER.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    (directory / "answers.json").write_text(json.dumps(answers))
    return script


def _config(directory: Path, config: dict[str, object]) -> Path:
    path = directory / "config.json"
    path.write_text(json.dumps(config))
    return path


def _check(directory: Path, config: Path, reference: str) -> CliRun:
    env = {"PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}
    return run_cli(
        "check", "--plain-http", "--output", "json", "--docker-config", str(config), reference, env=env
    )


def test_cred_helpers_run_the_hosts_helper_with_the_server_on_stdin(
    registry: GatewayProcess, tmp_path: Path
) -> None:
    _helper(tmp_path, {registry.address: ROBOT})
    config = _config(tmp_path, {"credHelpers": {registry.address: "lwtest"}, "auths": {}})
    run = _check(tmp_path, config, f"{registry.address}/org/app:v1")
    assert run.status == 0, run
    assert (tmp_path / "asked.log").read_text() == f"get {registry.address}\n"
    assert ROBOT[1] not in run.output


def test_creds_store_is_used_for_every_registry(registry: GatewayProcess, tmp_path: Path) -> None:
    _helper(tmp_path, {registry.address: ROBOT}, name="lwstore")
    config = _config(tmp_path, {"credsStore": "lwstore", "auths": {registry.address: {}}})
    run = _check(tmp_path, config, f"{registry.address}/org/app:v1")
    assert run.status == 0, run


def test_a_helper_without_credentials_for_the_host_leaves_it_anonymous(
    registry: GatewayProcess, tmp_path: Path
) -> None:
    _helper(tmp_path, {"other.example.com": ROBOT})
    config = _config(tmp_path, {"credsStore": "lwtest"})
    run = _check(tmp_path, config, f"{registry.address}/org/app:v1")
    assert run.status == 3, run
    assert run.report["hops"][0]["verdict"] == "AuthFailed"


def test_a_helper_that_is_not_installed_is_a_one_line_error(registry: GatewayProcess, tmp_path: Path) -> None:
    config = _config(tmp_path, {"credHelpers": {registry.address: "nowhere"}})
    run = _check(tmp_path, config, f"{registry.address}/org/app:v1")
    assert run.status == 2, run
    assert "credential helper docker-credential-nowhere (from the docker config) is not on PATH" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def _identity_chain(directory: Path, url: str, config: Path) -> Path:
    document = {
        "apiVersion": "layerwatch.io/v1alpha1",
        "kind": "ProxyChain",
        "metadata": {"name": "idt"},
        "spec": {"hops": [{"name": "registry", "url": url, "dockerConfig": str(config)}]},
    }
    path = directory / "chain.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


async def test_an_identitytoken_is_traded_with_the_refresh_token_grant(
    identity_origin: RegistryProcess, tmp_path: Path
) -> None:
    fake = IdentityTokenRegistry(identity_origin.url, IDENTITY_TOKEN)
    async with serve(fake) as address:
        config = _config(tmp_path, {"auths": {address: {"identitytoken": IDENTITY_TOKEN}}})
        result = await engine_check_async(
            _identity_chain(tmp_path, f"http://{address}", config), Reference.parse(f"{address}/org/app:v1")
        )
    assert hop_verdicts(result) == {"registry": "Healthy"}, result.judgement
    assert fake.grants[0] == {
        "grant_type": "refresh_token",
        "refresh_token": IDENTITY_TOKEN,
        "service": "fake-registry",
        "scope": "repository:org/app:pull",
        "client_id": "layerwatch",
    }


async def test_a_helper_answering_token_gives_an_identity_token(
    identity_origin: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = IdentityTokenRegistry(identity_origin.url, IDENTITY_TOKEN)
    async with serve(fake) as address:
        _helper(tmp_path, {address: ("<token>", IDENTITY_TOKEN)})
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
        config = _config(tmp_path, {"credHelpers": {address: "lwtest"}})
        result = await engine_check_async(
            _identity_chain(tmp_path, f"http://{address}", config), Reference.parse(f"{address}/org/app:v1")
        )
    assert hop_verdicts(result) == {"registry": "Healthy"}, result.judgement
    assert [grant["grant_type"] for grant in fake.grants] == ["refresh_token"]
