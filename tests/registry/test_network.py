"""Proxies and client certificates, against the real parts: tinyproxy and an mTLS docker-registry.

A hop behind a corporate proxy, or one that demands a client certificate, is checked the way Flux
pulls from it: the proxy's own log proves the hop was reached through it, and the registry itself
refuses the handshake without the certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.registry.helpers import CliRun, empty_docker_config, layerwatch_command, run_cli

from lab.artifacts import push_flux_artifact
from lab.certs import TestCA
from lab.process import free_port
from lab.proxy import TINYPROXY, TinyProxy
from lab.registry import RegistryProcess
from layerwatch.chain import Hop, Proxy
from layerwatch.registry import RegistryClient

pytestmark = pytest.mark.registry

PROXY_USER = ("lw-proxy", "pr0xy-s3cret-value")


@pytest.fixture(scope="module")
def origin() -> Iterator[RegistryProcess]:
    """A plain-HTTP registry holding org/app:v1."""
    with RegistryProcess("net-origin") as registry:
        push_flux_artifact(registry.address, "org/app", "v1")
        yield registry


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pki")
    ca, other = TestCA(directory, "ca"), TestCA(directory, "other-ca")
    server_cert, server_key = ca.issue("server")
    client_cert, client_key = ca.issue("client", client=True)
    stranger_cert, stranger_key = other.issue("stranger", client=True)
    return {
        "ca": ca.path,
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
        "stranger_cert": stranger_cert,
        "stranger_key": stranger_key,
    }


@pytest.fixture(scope="module")
def mtls(origin: RegistryProcess, pki: dict[str, Path]) -> Iterator[RegistryProcess]:
    """A pull-through cache of ``origin`` over HTTPS that requires client certificates (clientcas)."""
    registry = RegistryProcess(
        "mtls", remote_url=origin.url, tls=(pki["server_cert"], pki["server_key"]), client_cas=pki["ca"]
    )
    with registry:
        yield registry


@pytest.fixture
def tinyproxy() -> Iterator[TinyProxy]:
    if not shutil.which(TINYPROXY):
        pytest.fail(f"{TINYPROXY} missing (hack/install-deps.sh installs tinyproxy)", pytrace=False)
    with TinyProxy() as proxy:
        yield proxy


@pytest.fixture
def authenticating_proxy() -> Iterator[TinyProxy]:
    if not shutil.which(TINYPROXY):
        pytest.fail(f"{TINYPROXY} missing (hack/install-deps.sh installs tinyproxy)", pytrace=False)
    with TinyProxy(user=PROXY_USER) as proxy:
        yield proxy


def _chain(directory: Path, url: str, **hop: Any) -> Path:
    document = {
        "apiVersion": "layerwatch.io/v1alpha1",
        "kind": "ProxyChain",
        "metadata": {"name": "net"},
        "spec": {"hops": [{"name": "registry", "url": url, **hop}]},
    }
    path = directory / "chain.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _check(chain: Path, reference: str, env: dict[str, str] | None = None) -> CliRun:
    docker_config = empty_docker_config(chain.parent)
    return run_cli(
        "check",
        "--output",
        "json",
        "--docker-config",
        str(docker_config),
        "--chain",
        str(chain),
        reference,
        env=env,
    )


def _mtls_hop(pki: dict[str, Path], cert: str = "client") -> dict[str, str]:
    return {
        "caFile": str(pki["ca"]),
        "certFile": str(pki[f"{cert}_cert"]),
        "keyFile": str(pki[f"{cert}_key"]),
    }


# -- client certificates --------------------------------------------------------------------------


def test_a_client_certificate_from_the_chain_file_passes_the_registrys_mtls(
    mtls: RegistryProcess, pki: dict[str, Path], tmp_path: Path
) -> None:
    run = _check(_chain(tmp_path, mtls.url, **_mtls_hop(pki)), f"{mtls.address}/org/app:v1")
    assert run.status == 0, run
    assert run.report["hops"][0]["verdict"] == "Healthy"


def test_without_a_client_certificate_the_mtls_registry_is_unreachable_not_unhealthy(
    mtls: RegistryProcess, pki: dict[str, Path], tmp_path: Path
) -> None:
    run = _check(_chain(tmp_path, mtls.url, caFile=str(pki["ca"])), f"{mtls.address}/org/app:v1")
    assert run.status == 3, run
    hop = run.report["hops"][0]
    assert hop["verdict"] == "Unreachable"
    assert "Traceback" not in run.stderr


def test_a_certificate_from_a_ca_the_registry_does_not_trust_is_refused(
    mtls: RegistryProcess, pki: dict[str, Path], tmp_path: Path
) -> None:
    run = _check(_chain(tmp_path, mtls.url, **_mtls_hop(pki, "stranger")), f"{mtls.address}/org/app:v1")
    assert run.status == 3, run
    assert run.report["hops"][0]["verdict"] == "Unreachable"


def test_a_key_that_does_not_match_its_certificate_is_a_one_line_configuration_error(
    mtls: RegistryProcess, pki: dict[str, Path], tmp_path: Path
) -> None:
    hop = {**_mtls_hop(pki), "keyFile": str(pki["stranger_key"])}
    run = _check(_chain(tmp_path, mtls.url, **hop), f"{mtls.address}/org/app:v1")
    assert run.status == 2, run
    assert "client certificate does not load" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert "PRIVATE KEY" not in run.output


# -- proxies --------------------------------------------------------------------------------------


def test_https_proxy_from_the_environment_carries_an_https_hop_through_connect(
    mtls: RegistryProcess, pki: dict[str, Path], tinyproxy: TinyProxy, tmp_path: Path
) -> None:
    env = {"HTTPS_PROXY": tinyproxy.url, "NO_PROXY": ""}
    run = _check(_chain(tmp_path, mtls.url, **_mtls_hop(pki)), f"{mtls.address}/org/app:v1", env)
    assert run.status == 0, run
    assert f"CONNECT {mtls.address} HTTP/1.1" in tinyproxy.requests(), tinyproxy.log()


def test_no_proxy_sends_the_hop_around_the_proxy(
    origin: RegistryProcess, tinyproxy: TinyProxy, tmp_path: Path
) -> None:
    env = {"HTTP_PROXY": tinyproxy.url, "NO_PROXY": "localhost,127.0.0.0/8"}
    run = _check(_chain(tmp_path, origin.url), f"{origin.address}/org/app:v1", env)
    assert run.status == 0, run
    assert tinyproxy.requests() == []


def test_a_chain_file_proxy_with_credentials_reaches_the_hop_and_hides_the_password(
    origin: RegistryProcess, authenticating_proxy: TinyProxy, tmp_path: Path
) -> None:
    proxy = {"address": authenticating_proxy.url, "username": PROXY_USER[0], "password": PROXY_USER[1]}
    run = _check(_chain(tmp_path, origin.url, proxy=proxy), f"{origin.address}/org/app:v1")
    assert run.status == 0, run
    lines = authenticating_proxy.requests()
    assert any(line.startswith(f"GET http://{origin.address}/v2/org/app/manifests/") for line in lines), lines
    assert PROXY_USER[1] not in run.output


def test_a_wrong_proxy_password_is_could_not_check_naming_the_proxy_answer(
    mtls: RegistryProcess, pki: dict[str, Path], authenticating_proxy: TinyProxy, tmp_path: Path
) -> None:
    proxy = {"address": authenticating_proxy.url, "username": PROXY_USER[0], "password": "wrong-password"}
    run = _check(_chain(tmp_path, mtls.url, proxy=proxy, **_mtls_hop(pki)), f"{mtls.address}/org/app:v1")
    assert run.status == 3, run
    hop = run.report["hops"][0]
    # tinyproxy answers a wrong password on CONNECT with 401 (a missing one with 407).
    assert hop["verdict"] == "Unreachable" and "proxy answered HTTP 401 Unauthorized" in hop["message"], hop
    assert "wrong-password" not in run.output


def test_a_password_in_the_proxy_address_is_refused_masked(origin: RegistryProcess, tmp_path: Path) -> None:
    proxy = {"address": "http://me:hunter2@127.0.0.1:3128"}
    run = _check(_chain(tmp_path, origin.url, proxy=proxy), f"{origin.address}/org/app:v1")
    assert run.status == 2, run
    assert "must not carry credentials" in run.stderr and "hunter2" not in run.output


def test_a_hop_proxy_with_credentials_carries_the_engine_through_connect(
    mtls: RegistryProcess, pki: dict[str, Path], authenticating_proxy: TinyProxy
) -> None:
    """What a ProxyChain ``proxy`` with a Secret or an OCIRepository ``proxySecretRef`` becomes."""
    hop = Hop.from_url(
        "registry",
        mtls.url,
        ca_pem=pki["ca"].read_text(),
        client_cert_pem=pki["client_cert"].read_text(),
        client_key_pem=pki["client_key"].read_text(),
        proxy=Proxy(authenticating_proxy.url, *PROXY_USER),
    )

    async def resolve() -> str | None:
        async with RegistryClient.for_hop(hop) as client:
            return await client.resolve("org/app", "v1", client.budget())

    assert (asyncio.run(resolve()) or "").startswith("sha256:")
    assert f"CONNECT {mtls.address} HTTP/1.1" in authenticating_proxy.requests()


def test_serve_reaches_its_hops_through_https_proxy_from_the_environment(
    mtls: RegistryProcess, pki: dict[str, Path], tinyproxy: TinyProxy, tmp_path: Path
) -> None:
    """``layerwatch serve`` builds its clients like ``check``: the environment's proxy applies."""
    chain = yaml.safe_load(_chain(tmp_path, mtls.url, **_mtls_hop(pki)).read_text())
    chain["spec"]["interval"] = "1s"
    target = {
        "kind": "Target",
        "metadata": {"name": "app"},
        "spec": {"url": f"oci://{mtls.address}/org/app", "ref": "v1"},
    }
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump_all([chain, target]))
    port = free_port()
    env = {
        **os.environ,
        "HTTPS_PROXY": tinyproxy.url,
        "NO_PROXY": "",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    command = [*layerwatch_command(), "serve", "--config", str(config), "--metrics-address", "127.0.0.1"]
    proc = subprocess.Popen(
        [*command, "--metrics-port", str(port), "--docker-config", str(empty_docker_config(tmp_path))],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                exposition = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                if any(
                    line.startswith("layerwatch_artifact_hop_healthy{")
                    and 'name="app"' in line
                    and line.endswith(" 1.0")
                    for line in exposition.splitlines()
                ):
                    break
            time.sleep(0.2)
        else:
            pytest.fail(f"serve never reported the hop healthy (exit {proc.poll()})")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert f"CONNECT {mtls.address} HTTP/1.1" in tinyproxy.requests()
