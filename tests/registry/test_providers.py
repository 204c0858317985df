"""``provider: aws | azure | gcp``: a hop checked with the cloud credentials Flux would get there.

AWS runs against moto's server (STS AssumeRoleWithWebIdentity from a web identity token file, or
an EKS Pod Identity agent, then ECR GetAuthorizationToken) through the real CLI; Azure and Google
against the wire-format fakes in `cloud_fakes`. Each registry is a real one that accepts only
the credentials the cloud issued, and no token ever shows in a report, a log line or the CLI's
output.

A provider logs in only to its cloud's registry hosts, so each hop is named as the cloud names
it (``<account>.dkr.ecr.<region>.amazonaws.com``, ``<name>.azurecr.io``,
``<region>-docker.pkg.dev``) and reached over plain HTTP through ``HTTP_PROXY`` pointing at the
loopback front (Azure's through the hop's own ``proxy``): an HTTP server takes absolute-URI
requests, so the front serves the cloud's name itself, with no resolver or override in layerwatch.
The cloud endpoints stay on loopback (``NO_PROXY``), where their own settings
(``AWS_ENDPOINT_URL``, ``AZURE_AUTHORITY_HOST``, ``GCE_METADATA_HOST``) point.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tests.registry.cloud_fakes import FakeCloud, serve
from tests.registry.helpers import CliRun, empty_docker_config, engine_check_async, hop_verdicts, run_cli

from lab.artifacts import push_flux_artifact
from lab.control import GatewayProcess
from lab.process import free_port, wait_http
from lab.registry import RegistryProcess
from layerwatch.reference import Reference
from layerwatch.registry import providers
from layerwatch.registry.providers import ACR_USERNAME, GCP_USERNAME
from layerwatch.report import to_json, to_text
from layerwatch.verdict import CheckResult

pytestmark = pytest.mark.registry

TENANT = "7f1c9a52-0000-4000-8000-00000000cafe"
CLIENT_ID = "5b6e1d3a-0000-4000-8000-00000000beef"
FEDERATED = "eyJhbGciOiJSUzI1NiJ9.federated-service-account-token.sig"
AWS_ACCOUNT = "123456789012"
AWS_PASSWORD = f"{AWS_ACCOUNT}-auth-token"
"""What moto's ECR GetAuthorizationToken hands out for the account."""
ECR_HOST = f"{AWS_ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com"
ACR_HOST = "lwtest.azurecr.io"
GAR_HOST = "europe-docker.pkg.dev"


@pytest.fixture(autouse=True)
def cloud_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cloud-credential cache per test: every test's fake cloud issues its own tokens for one host."""
    monkeypatch.setattr(providers, "_CACHE", providers.ProviderCache())


def _through(front: str) -> dict[str, str]:
    """Reach every registry host through ``front`` (``host:port``), the cloud endpoints directly."""
    return {"HTTP_PROXY": f"http://{front}", "NO_PROXY": "127.0.0.1,localhost"}


@pytest.fixture(scope="module")
def origin() -> Iterator[RegistryProcess]:
    with RegistryProcess("cloud-origin") as registry:
        push_flux_artifact(registry.address, "org/app", "v1")
        yield registry


def _gateway(origin: RegistryProcess, user: tuple[str, str]) -> GatewayProcess:
    """A registry front that issues tokens only to ``user`` (as ECR and GAR accept only cloud logins)."""
    return GatewayProcess("cloud", origin.url, auth="required", user=user).start()


def _chain(directory: Path, url: str, provider: str, proxy: str | None = None) -> Path:
    hop: dict[str, object] = {"name": "registry", "url": url, "provider": provider}
    if proxy is not None:
        hop["proxy"] = {"address": proxy}
    document = {
        "apiVersion": "layerwatch.io/v1alpha1",
        "kind": "ProxyChain",
        "metadata": {"name": "cloud"},
        "spec": {"hops": [hop]},
    }
    path = directory / "chain.yaml"
    path.write_text(yaml.safe_dump(document))
    empty_docker_config(directory)
    return path


def _assert_nowhere(secrets: list[str], *texts: str) -> None:
    for secret in secrets:
        for text in texts:
            assert secret not in text


def _printed(result: CheckResult) -> str:
    return json.dumps(to_json(result)) + to_text(result)


# -- AWS: moto ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``moto_server`` on loopback: STS and ECR at one endpoint."""
    directory = tmp_path_factory.mktemp("moto")
    port = free_port()
    log = directory / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", proc, log, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _aws_env(directory: Path, moto: str, *, web_identity: bool = True) -> dict[str, str]:
    token = directory / "web-identity-token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.irsa-projected-token.sig")
    env = {
        "AWS_ENDPOINT_URL": moto,
        "AWS_REGION": "eu-west-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(directory / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(directory / "no-aws-credentials"),
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_ROLE_ARN": "",
        "AWS_WEB_IDENTITY_TOKEN_FILE": "",
    }
    if web_identity:
        env |= {
            "AWS_ROLE_ARN": f"arn:aws:iam::{AWS_ACCOUNT}:role/layerwatch",
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
            "AWS_ROLE_SESSION_NAME": "layerwatch",
        }
    return env


def _aws_check(
    origin: RegistryProcess,
    moto: str,
    directory: Path,
    *,
    web_identity: bool = True,
    env: dict[str, str] | None = None,
) -> CliRun:
    """``layerwatch check`` of a hop with ``provider: aws`` that accepts only moto's ECR login."""
    gateway = _gateway(origin, ("AWS", AWS_PASSWORD))
    try:
        chain = _chain(directory, f"http://{ECR_HOST}", "aws")
        return run_cli(
            "check",
            "--output",
            "json",
            "--chain",
            str(chain),
            f"{ECR_HOST}/org/app:v1",
            env=(env or _aws_env(directory, moto, web_identity=web_identity)) | _through(gateway.address),
        )
    finally:
        gateway.stop()


def test_aws_web_identity_through_sts_and_ecr_logs_in_to_the_registry(
    origin: RegistryProcess, moto: str, tmp_path: Path
) -> None:
    run = _aws_check(origin, moto, tmp_path, web_identity=True)
    assert run.status == 0, run
    assert hop_verdicts(run.report) == {"registry": "Healthy"}
    _assert_nowhere([AWS_PASSWORD], run.output)


class _PodIdentityAgent(http.server.BaseHTTPRequestHandler):
    """The EKS Pod Identity agent's wire format: GET with the projected token as Authorization."""

    token = ""
    asked: list[str] = []

    def do_GET(self) -> None:
        type(self).asked.append(self.headers.get("Authorization", ""))
        if self.headers.get("Authorization") != self.token:
            self.send_response(401)
            self.end_headers()
            return
        expiration = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = json.dumps(
            {
                "AccessKeyId": "ASIAPODIDENTITYEXAMPLE",
                "SecretAccessKey": "pod-identity-secret-key",
                "Token": "pod-identity-session-token",
                "AccountId": AWS_ACCOUNT,
                "Expiration": expiration,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_aws_eks_pod_identity_credentials_reach_ecr(
    origin: RegistryProcess, moto: str, tmp_path: Path
) -> None:
    token = tmp_path / "eks-pod-identity-token"
    token.write_text("eks-projected-sa-token")
    _PodIdentityAgent.token, _PodIdentityAgent.asked = "eks-projected-sa-token", []
    agent = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PodIdentityAgent)
    threading.Thread(target=agent.serve_forever, daemon=True).start()
    env = _aws_env(tmp_path, moto, web_identity=False) | {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{agent.server_address[1]}/v1/credentials",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token),
    }
    try:
        run = _aws_check(origin, moto, tmp_path, env=env)
    finally:
        agent.shutdown()
    assert run.status == 0, run
    assert _PodIdentityAgent.asked and set(_PodIdentityAgent.asked) == {"eks-projected-sa-token"}
    _assert_nowhere([AWS_PASSWORD, "pod-identity-secret-key", "pod-identity-session-token"], run.output)


def test_aws_without_an_identity_is_auth_failed_saying_so(
    origin: RegistryProcess, moto: str, tmp_path: Path
) -> None:
    run = _aws_check(origin, moto, tmp_path, web_identity=False)
    assert run.status == 3, run
    hop = run.report["hops"][0]
    assert hop["verdict"] == "AuthFailed" and "aws provider: credentials: no AWS identity" in hop["message"]


# -- Azure: Entra ID + ACR exchange ------------------------------------------------------------------


def _azure_env(monkeypatch: pytest.MonkeyPatch, address: str, token_file: Path) -> None:
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", f"http://{address}/")
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))


async def test_azure_workload_identity_is_exchanged_for_an_acr_refresh_token_once(
    origin: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(FEDERATED + "\n")
    cloud = FakeCloud(tenant=TENANT, client_id=CLIENT_ID, federated_token=FEDERATED, origin=origin.url)
    async with serve(cloud) as address:
        _azure_env(monkeypatch, address, token_file)
        # The hop's own proxy carries the registry's traffic, ACR's /oauth2/exchange included.
        chain = _chain(tmp_path, f"http://{ACR_HOST}", "azure", proxy=f"http://{address}")
        reference = Reference.parse(f"{ACR_HOST}/org/app:v1")
        results = [await engine_check_async(chain, reference) for _ in range(2)]
    assert [hop_verdicts(r) for r in results] == [{"registry": "Healthy"}] * 2
    assert cloud.calls["entra"] == 1 and cloud.calls["exchange"] == 1  # cached for the second check
    secrets = [FEDERATED, cloud.entra_token, cloud.refresh_token, cloud.acr_access]
    _assert_nowhere(secrets, caplog.text, *(_printed(r) for r in results))
    assert ACR_USERNAME not in caplog.text


async def test_a_federated_token_entra_refuses_is_auth_failed_with_entras_error(
    origin: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text("eyJ.some-other-token.sig")
    cloud = FakeCloud(tenant=TENANT, client_id=CLIENT_ID, federated_token=FEDERATED, origin=origin.url)
    async with serve(cloud) as address:
        _azure_env(monkeypatch, address, token_file)
        result = await engine_check_async(
            _chain(tmp_path, f"http://{ACR_HOST}", "azure", proxy=f"http://{address}"),
            Reference.parse(f"{ACR_HOST}/org/app:v1"),
        )
    (hop,) = result.judgement.hops
    assert hop.verdict.value == "AuthFailed"
    assert "azure provider: Entra ID token: HTTP 401 invalid_client AADSTS700213" in hop.message
    assert "some-other-token" not in _printed(result)


# -- Google: metadata server -------------------------------------------------------------------------


def _gar_env(monkeypatch: pytest.MonkeyPatch, gateway: GatewayProcess) -> None:
    for name, value in _through(gateway.address).items():
        monkeypatch.setenv(name, value)


async def test_gcp_metadata_token_logs_in_as_oauth2accesstoken_and_is_cached(
    origin: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cloud = FakeCloud(tenant=TENANT, client_id=CLIENT_ID, federated_token=FEDERATED, origin=origin.url)
    gateway = _gateway(origin, (GCP_USERNAME, cloud.gcp_token))
    try:
        async with serve(cloud) as address:
            monkeypatch.setenv("GCE_METADATA_HOST", address)
            _gar_env(monkeypatch, gateway)
            chain = _chain(tmp_path, f"http://{GAR_HOST}", "gcp")
            reference = Reference.parse(f"{GAR_HOST}/org/app:v1")
            results = [await engine_check_async(chain, reference) for _ in range(2)]
    finally:
        gateway.stop()
    assert [hop_verdicts(r) for r in results] == [{"registry": "Healthy"}] * 2
    assert cloud.calls["metadata"] == 1
    _assert_nowhere([cloud.gcp_token], caplog.text, *(_printed(r) for r in results))


async def test_gcp_without_a_metadata_server_is_auth_failed(
    origin: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    gateway = _gateway(origin, (GCP_USERNAME, "unused"))
    _gar_env(monkeypatch, gateway)
    try:
        result = await engine_check_async(
            _chain(tmp_path, f"http://{GAR_HOST}", "gcp"), Reference.parse(f"{GAR_HOST}/org/app:v1")
        )
    finally:
        gateway.stop()
    (hop,) = result.judgement.hops
    assert (
        hop.verdict.value == "AuthFailed"
        and "gcp provider: metadata server token: ConnectError" in hop.message
    )


def test_an_unknown_provider_in_a_chain_file_is_a_one_line_error(tmp_path: Path) -> None:
    chain = _chain(tmp_path, "https://registry.example.com", "alibaba")
    run = run_cli("check", "--chain", str(chain), "registry.example.com/org/app:v1")
    assert run.status == 2, run
    assert "provider must be one of generic, aws, azure, gcp, not 'alibaba'" in run.stderr
