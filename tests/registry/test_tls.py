"""TLS hops: verified by default, trusted through a custom CA, or skipped with --insecure."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.artifacts import push_flux_artifact
from lab.certs import TestCA
from lab.registry import RegistryProcess

pytestmark = pytest.mark.registry


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a serving certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    ca = TestCA(directory)
    return (ca.path, *ca.issue("tls"))


@pytest.fixture(scope="module")
def tls_hop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS pull-through proxy (private CA) of a plain origin holding org/app:v1: (address, ca)."""
    directory = tmp_path_factory.mktemp("tls")
    ca, cert, key = _certificates(directory)
    origin = RegistryProcess("tls-origin").start()
    try:
        push_flux_artifact(origin.address, "org/app", "v1")
        proxy = RegistryProcess("tls-proxy", remote_url=origin.url, tls=(cert, key)).start()
        try:
            yield proxy.address, ca
        finally:
            proxy.stop()
    finally:
        origin.stop()


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["layerwatch", "check", "--output", "json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_hop_with_an_untrusted_certificate_is_unreachable_not_unhealthy(tls_hop: tuple[str, Path]) -> None:
    address, _ = tls_hop
    done = _check(f"{address}/org/app:v1")
    assert done.returncode == 3, done.stderr
    hop = json.loads(done.stdout)["hops"][0]
    assert hop["verdict"] == "Unreachable"
    assert "TLS" in hop["message"] or "certificate" in hop["message"].lower()
    assert "Traceback" not in done.stderr


def test_a_custom_ca_makes_the_hop_verifiable(tls_hop: tuple[str, Path]) -> None:
    address, ca = tls_hop
    done = _check("--ca-file", str(ca), f"{address}/org/app:v1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["verdict"] == "Healthy"


def test_insecure_skips_verification(tls_hop: tuple[str, Path]) -> None:
    address, _ = tls_hop
    done = _check("--insecure", f"{address}/org/app:v1")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_chain_file_hop_can_carry_its_own_ca_file(tls_hop: tuple[str, Path], tmp_path: Path) -> None:
    address, ca = tls_hop
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        "apiVersion: layerwatch.io/v1alpha1\nkind: ProxyChain\nmetadata: {name: tls}\nspec:\n  hops:\n"
        f"  - {{name: proxy, url: 'https://{address}', caFile: {ca}}}\n"
    )
    done = _check("--chain", str(chain), f"oci://{address}/org/app:v1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["hops"][0]["url"] == f"https://{address}"
