"""The lab control plane itself: it starts, serves the CRDs we depend on, and the manifests install."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from lab import kube
from lab.kube import REPO, ControlPlane, load_docs

pytestmark = pytest.mark.k8s

MANIFESTS = REPO / "manifests"


def _crd(admin_api: Any, name: str) -> Any:
    return client.ApiextensionsV1Api(admin_api).read_custom_resource_definition(name)


def _established(crd: Any) -> bool:
    return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])


def test_control_plane_is_up(control_plane: ControlPlane, admin_api: Any) -> None:
    version = client.VersionApi(admin_api).get_code()
    assert version.git_version.startswith("v1.")
    names = {ns.metadata.name for ns in client.CoreV1Api(admin_api).list_namespace().items}
    assert {"default", "kube-system"} <= names
    # RBAC is on: the bootstrap roles exist (created by the apiserver's post-start hook).
    roles = {r.metadata.name for r in client.RbacAuthorizationV1Api(admin_api).list_cluster_role().items}
    assert {"cluster-admin", "view"} <= roles
    print(f"control plane timings (s): {json.dumps(control_plane.timings)}")


def test_flux_ocirepository_crd_established(admin_api: Any, namespace: str) -> None:
    crd = _crd(admin_api, "ocirepositories.source.toolkit.fluxcd.io")
    assert _established(crd)
    v1 = next(v for v in crd.spec.versions if v.name == "v1")
    assert v1.served and v1.storage and v1.subresources.status is not None
    api = client.CustomObjectsApi(admin_api)
    body = {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "OCIRepository",
        "metadata": {"name": "podinfo"},
        "spec": {
            "url": "oci://ghcr.io/stefanprodan/manifests/podinfo",
            "interval": "5m",
            "ref": {"tag": "latest"},
        },
    }
    created = api.create_namespaced_custom_object(
        "source.toolkit.fluxcd.io", "v1", namespace, "ocirepositories", body
    )
    assert created["spec"]["ref"] == {"tag": "latest"}


def test_proxychain_crd_established(admin_api: Any) -> None:
    crd = _crd(admin_api, "proxychains.layerwatch.io")
    assert _established(crd)
    assert crd.spec.scope == "Cluster"
    assert crd.spec.names.kind == "ProxyChain" and crd.spec.names.plural == "proxychains"
    assert "pc" in crd.spec.names.short_names
    assert crd.status.accepted_names.kind == "ProxyChain"
    version = crd.spec.versions[0]
    assert (version.name, version.served, version.storage) == ("v1alpha1", True, True)
    columns = [c.name for c in version.additional_printer_columns if not c.priority]
    assert columns == ["Hops", "Artifacts", "Unhealthy", "Unknown", "Ready", "Age"]


def test_crds_dir_points_at_the_manifests_crd() -> None:
    """One copy of the CRD: crds/proxychain.yaml is the file kustomize installs."""
    assert (REPO / "crds/proxychain.yaml").resolve() == (MANIFESTS / "base/crds/proxychain.yaml").resolve()


def test_fresh_cluster_install_and_stop(control_plane: ControlPlane) -> None:
    """`kubectl apply -k manifests/` works in one run on an empty cluster (no CRD/CR ordering trap),
    the sharded overlay and the example apply too, and stop() leaves no process or file behind."""
    if control_plane.tools.kubectl is None:
        pytest.skip("no kubectl next to kube-apiserver (KUBEBUILDER_ASSETS without kubectl)")
    cp = ControlPlane(control_plane.tools)
    try:
        cp.start()
        run = cp.kubectl("apply", "-k", str(MANIFESTS), check=False)
        assert run.returncode == 0, run.stderr
        assert "customresourcedefinition.apiextensions.k8s.io/proxychains.layerwatch.io created" in run.stdout
        assert "deployment.apps/layerwatch created" in run.stdout
        cp.wait_crd_established("proxychains.layerwatch.io")
        run = cp.kubectl("apply", "-f", str(MANIFESTS / "example-proxychain.yaml"), check=False)
        assert run.returncode == 0, run.stderr
        run = cp.kubectl("apply", "-k", str(MANIFESTS / "sharded"), check=False)
        assert run.returncode == 0, run.stderr
        assert "statefulset.apps/layerwatch created" in run.stdout
        sts = yaml.safe_load(
            cp.kubectl("get", "statefulset", "-n", "layerwatch", "layerwatch", "-o", "yaml").stdout
        )
        args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"--shard-count={sts['spec']['replicas']}" in args
        # peering.yaml holds a CRD and an object of it: our apply() waits for the CRD in between.
        cp.apply(MANIFESTS / "peering.yaml")
        assert cp.kubectl("get", "clusterkopfpeering", "layerwatch").returncode == 0
        pids = [p.popen.pid for p in (cp.etcd, cp.apiserver) if p]
    finally:
        cp.stop()
    assert not cp.dir.exists()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_deployment_is_hardened() -> None:
    """The pod would pass the `restricted` Pod Security Standard its namespace enforces."""
    (deployment,) = load_docs(MANIFESTS / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["image"] == "ghcr.io/layerwatch/layerwatch"  # the tag: manifests/image/
    assert container["args"] == [
        "operator",
        "--all-namespaces",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--metrics-port=9090",
    ]
    assert {"mountPath": "/tmp", "name": "tmp"} in container["volumeMounts"]
    assert container["resources"]["limits"] and container["resources"]["requests"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    (service,) = load_docs(MANIFESTS / "service.yaml")
    assert service["spec"]["ports"][0]["name"] == "metrics" and service["spec"]["ports"][0]["port"] == 9090
    assert os.path.islink(MANIFESTS / "deployment.yaml")  # the real file is in base/ (kustomize layout)


def test_server_side_dry_run_of_base_manifests(control_plane: ControlPlane) -> None:
    """Every object of the install passes the apiserver's schema validation (strict field checks)."""
    if control_plane.tools.kubectl is None:
        pytest.skip("no kubectl next to kube-apiserver")
    control_plane.apply(MANIFESTS / "namespace.yaml")
    run = control_plane.kubectl(
        "apply", "-k", str(MANIFESTS / "sharded"), "--dry-run=server", "--validate=strict", check=False
    )
    assert run.returncode == 0, run.stderr
    run = control_plane.kubectl(
        "apply", "-k", str(MANIFESTS), "--dry-run=server", "--validate=strict", check=False
    )
    assert run.returncode == 0, run.stderr


def test_kubebuilder_assets_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = kube.find_tools(build=False)
    for binary in (real.kube_apiserver, real.etcd, real.kubectl):
        assert binary is not None
        (tmp_path / binary.name).symlink_to(binary)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    tools = kube.find_tools(build=False)
    assert (tools.kube_apiserver, tools.etcd, tools.kubectl) == (
        tmp_path / "kube-apiserver",
        tmp_path / "etcd",
        tmp_path / "kubectl",
    )


def test_missing_binaries_are_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a clean machine find_tools() runs build-tools.sh for exactly what is missing (faked here:
    a real cold build takes 10-25 min)."""
    real = kube.find_tools(build=False)
    assert real.flux_crds is not None
    cache = tmp_path / "cache"
    calls = tmp_path / "calls"
    script = tmp_path / "build-tools.sh"
    script.write_text(
        f"""#!/usr/bin/env bash
set -eu
if [ "$1" = paths ]; then
  echo KUBE_DIR={cache}/kube; echo ETCD_DIR={cache}/etcd; echo FLUX_CRDS={cache}/flux-crds; exit 0
fi
echo "$@" >> {calls}
mkdir -p {cache}/kube {cache}/etcd
ln -sf {real.kube_apiserver} {cache}/kube/kube-apiserver
ln -sf {real.etcd} {cache}/etcd/etcd
ln -sfn {real.flux_crds} {cache}/flux-crds
"""
    )
    monkeypatch.setattr(kube, "BUILD_TOOLS", script)
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    with pytest.raises(kube.ControlPlaneError, match="not found"):
        kube.find_tools(build=False)
    tools = kube.find_tools(build=True)
    assert calls.read_text().split() == ["etcd", "flux-crds", "kube"]
    assert tools.kube_apiserver == cache / "kube" / "kube-apiserver" and tools.kubectl is None
    kube.find_tools(build=True)
    assert len(calls.read_text().splitlines()) == 1  # nothing missing any more: no second build
