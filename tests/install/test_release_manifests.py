"""`hack/release_manifests.py` pushes manifests/ in Flux's artifact format, reproducibly.

Pushed to a real registry (Debian's docker-registry) with the real oras CLI, then read back.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
from collections.abc import Iterator

import httpx
import pytest

from lab.artifacts import FLUX_CONFIG_MEDIA_TYPE, FLUX_CONTENT_MEDIA_TYPE
from lab.kube import REPO
from lab.registry import RegistryProcess

pytestmark = pytest.mark.registry

ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


@pytest.fixture(scope="module")
def registry() -> Iterator[RegistryProcess]:
    process = RegistryProcess("release")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def release(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(REPO / "hack")}
    return subprocess.run(
        [sys.executable, str(REPO / "hack" / "release_manifests.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_the_artifact_has_flux_format_and_the_manifests(registry: RegistryProcess) -> None:
    repository = f"layerwatch/manifests-{secrets.token_hex(3)}"
    done = release("--plain-http", "--tag", "test", f"{registry.address}/{repository}")
    assert done.returncode == 0, done.stderr
    digest = done.stdout.strip().rpartition("@")[2]
    assert done.stdout.strip() == f"oci://{registry.address}/{repository}:test@{digest}"

    base = f"{registry.url}/v2/{repository}"
    manifest = httpx.get(f"{base}/manifests/test", headers=ACCEPT).json()
    assert manifest["config"]["mediaType"] == FLUX_CONFIG_MEDIA_TYPE
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == FLUX_CONTENT_MEDIA_TYPE
    annotations = manifest["annotations"]
    assert set(annotations) == {
        "org.opencontainers.image.created",
        "org.opencontainers.image.source",
        "org.opencontainers.image.revision",
    }
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert annotations["org.opencontainers.image.revision"].endswith(f"@sha1:{commit}")

    blob = httpx.get(f"{base}/blobs/{layer['digest']}", follow_redirects=True).content
    assert gzip.decompress(blob)  # a gzip stream, as Flux expects
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert all(m.isfile() for m in members.values()), "links or directories in the artifact"
        assert all(m.uid == 0 and m.mtime == 0 for m in members.values())
        for name in (
            "kustomization.yaml",
            "deployment.yaml",
            "base/deployment.yaml",
            "sharded/kustomization.yaml",
        ):
            assert name in members, name
        file = tar.extractfile(members["deployment.yaml"])
        assert (
            file is not None and file.read() == (REPO / "manifests" / "base" / "deployment.yaml").read_bytes()
        )
    assert json.loads(httpx.get(f"{base}/blobs/{manifest['config']['digest']}").content) == {}


def test_the_same_commit_gives_the_same_artifact(registry: RegistryProcess) -> None:
    """Re-running the release of one commit pushes the same digest (creation time = commit time)."""
    repository = f"layerwatch/manifests-{secrets.token_hex(3)}"
    first, second = (
        release("--plain-http", "--tag", tag, f"{registry.address}/{repository}") for tag in ("a", "b")
    )
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.strip().rpartition("@")[2] == second.stdout.strip().rpartition("@")[2]


@pytest.mark.parametrize(
    "target", ["ghcr.io", "ghcr.io/layerwatch/manifests:0.1.0", "oci://ghcr.io/x@sha256:00"]
)
def test_a_bad_target_is_one_line_and_exit_2(target: str) -> None:
    done = release(target)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "is not REGISTRY/REPOSITORY" in done.stderr
