"""Installing layerwatch the Flux way: an OCIRepository of the release artifact, then layerwatch watching it.

`make release-manifests` pushes manifests/ to the lab chain's origin as a Flux artifact. The real
source-controller pulls it through the chain (edge -> core -> origin) for an OCIRepository named
``layerwatch``. What source-controller serves is then built and applied as Flux's
kustomize-controller would (``kubectl kustomize`` + server-side apply; kustomize-controller itself
is not run here). layerwatch, running as the ServiceAccount that install created, then checks its
own OCIRepository through the chain and marks it healthy.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from tests.e2e.source_controller import (
    EDGE_PULL_SECRET,
    SourceController,
    conditions_of,
    get_repository,
    poll,
)
from tests.k8s.operator_harness import CONDITION, FLUX, Operator, metric_value

from lab.chain import LocalChain
from lab.kube import REPO, ControlPlane

pytestmark = pytest.mark.e2e

WAIT = 180.0


def _version() -> str:
    import tomllib

    with (REPO / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def _release(chain: LocalChain, repository: str) -> str:
    """Run `make release-manifests` against the origin; returns what it printed (oci://...@digest)."""
    done = subprocess.run(
        [
            "make",
            "-s",
            "release-manifests",
            f"PYTHON={sys.executable}",
            f"RELEASE_REPOSITORY={chain.push_address}/{repository}",
            "RELEASE_FLAGS=--plain-http",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO / "hack"), str(REPO / "operator")])},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().splitlines()[-1]


def _kustomize(cp: ControlPlane, directory: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(cp.kubectl("kustomize", str(directory)).stdout) if doc]


def test_flux_installs_layerwatch_from_its_oci_artifact_and_layerwatch_watches_it(
    control_plane: ControlPlane,
    chain: LocalChain,
    source_controller: SourceController,
    proxychain: str,
    namespace: str,
    custom: client.CustomObjectsApi,
    work_dir: Path,
    tmp_path: Path,
) -> None:
    repository = f"layerwatch/manifests-{secrets.token_hex(3)}"
    printed = _release(chain, repository)
    assert printed.startswith(f"oci://{chain.push_address}/{repository}:{_version()}@sha256:")
    digest = printed.rpartition("@")[2]

    # What the README tells a Flux user to apply, with the lab's edge in place of ghcr.io.
    url = f"oci://{chain.hop('edge').address}/{chain.repository_at('edge', repository)}"
    body = {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "OCIRepository",
        "metadata": {"name": "layerwatch", "namespace": namespace},
        "spec": {
            "url": url,
            "ref": {"tag": _version()},
            "interval": "10m",
            "insecure": True,
            "secretRef": {"name": EDGE_PULL_SECRET},
        },
    }
    custom.create_namespaced_custom_object(*FLUX, namespace, "ocirepositories", body)

    def ready() -> dict[str, Any] | None:
        assert source_controller.alive(), source_controller.logs()
        obj = get_repository(custom, namespace, "layerwatch")
        ok = conditions_of(obj).get("Ready", {}).get("status") == "True"
        return obj if ok else None

    try:
        pulled = poll("source-controller to pull the release artifact", ready, WAIT)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{source_controller.logs(4000)}") from None
    artifact = pulled["status"]["artifact"]
    assert artifact["revision"] == f"{_version()}@{digest}"
    assert artifact["metadata"]["org.opencontainers.image.revision"].startswith(f"{_version()}@sha1:")

    # The tarball source-controller serves is our manifests/ tree, and builds to the same install.
    with urllib.request.urlopen(artifact["url"], timeout=30) as response:
        tarball = response.read()
    assert "sha256:" + hashlib.sha256(tarball).hexdigest() == artifact["digest"]
    unpacked = tmp_path / "artifact"
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        tar.extractall(unpacked, filter="data")
    assert _kustomize(control_plane, unpacked) == _kustomize(control_plane, REPO / "manifests")
    assert _kustomize(control_plane, unpacked / "sharded") == _kustomize(
        control_plane, REPO / "manifests" / "sharded"
    )

    applied = control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(unpacked))
    assert "deployment.apps/layerwatch serverside-applied" in applied.stdout, applied.stdout

    logs = work_dir / "flux-install"
    logs.mkdir(exist_ok=True)
    operator = Operator(control_plane.token_kubeconfig("layerwatch", "layerwatch"), logs).start()
    try:

        def watched() -> dict[str, Any] | None:
            """Healthy in the condition and, at every hop, in this operator's own metrics (another
            layerwatch of the test session may share the cluster and write the condition first)."""
            conditions = conditions_of(get_repository(custom, namespace, "layerwatch"))
            metrics = operator.metrics()
            hops = [
                metric_value(
                    metrics,
                    "layerwatch_artifact_hop_healthy",
                    namespace=namespace,
                    name="layerwatch",
                    hop=hop,
                )
                for hop in ("edge", "core", "origin")
            ]
            healthy = conditions.get(CONDITION, {}).get("status") == "True" and hops == [1.0, 1.0, 1.0]
            return conditions if healthy else None

        try:
            conditions = poll("layerwatch to check its own OCIRepository", watched, WAIT)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{operator.logs()}") from None
        assert conditions[CONDITION]["reason"] == "Healthy"
        assert conditions["Ready"]["status"] == "True"  # Flux's condition, untouched
    finally:
        operator.stop()
