"""`helm install`, `upgrade` and `uninstall` of charts/layerwatch on a real kube-apiserver.

The real Helm CLI (built from its Go module) installs the chart into its own control plane. The
operator then runs as the ServiceAccount the chart created, bound only by the chart's RBAC, and
must do its job: write the ProxyHealthy condition for an OCIRepository behind the lab chain.
There is no kubelet here, so the Deployment's pod never starts; the operator is a local process
with that ServiceAccount's token, which is what RBAC sees either way.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.install.conftest import CHART, MANIFESTS
from tests.k8s.operator_harness import (
    FLUX,
    LW,
    Operator,
    condition,
    metric_value,
    ocirepository,
    proxychain_document,
    push_artifact,
    wait_for,
)

from lab.chain import LocalChain
from lab.kube import ControlPlane, basic_auth_secret, control_plane, find_tools, load_docs, load_flux_crds

pytestmark = pytest.mark.k8s

RELEASE = "layerwatch"
NAMESPACE = "layerwatch"


@pytest.fixture(scope="module")
def cluster() -> Iterator[ControlPlane]:
    """A control plane of its own, with only Flux's OCIRepository CRD: the chart brings the rest."""
    with control_plane(find_tools(build=True)) as cp:
        cp.apply(load_flux_crds(cp.tools))
        yield cp


@pytest.fixture(scope="module")
def chain() -> Iterator[LocalChain]:
    with LocalChain() as lab:
        yield lab


class Helm:
    """The helm CLI against one control plane, with its own config and cache directories."""

    def __init__(self, binary: Path, env: dict[str, str], cluster: ControlPlane) -> None:
        self.binary, self.env = binary, env | {"KUBECONFIG": str(cluster.kubeconfig)}

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=self.env, timeout=300
        )
        assert done.returncode == 0, f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def release(self) -> dict[str, Any]:
        (entry,) = json.loads(self("list", "-n", NAMESPACE, "-o", "json"))
        return dict(entry)


def _get(cluster: ControlPlane, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    args = ["get", kind, name, "-o", "json", *(["-n", namespace] if namespace else [])]
    done = cluster.kubectl(*args, check=False)
    if done.returncode != 0:
        assert "NotFound" in done.stderr, done.stderr
        return None
    return dict(json.loads(done.stdout))


def _lab_proxychain(cluster: ControlPlane, chain: LocalChain) -> None:
    """A ProxyChain for the lab chain, the edge's robot account in the release's namespace."""
    cluster.apply(basic_auth_secret(NAMESPACE, "lab-edge", chain.hop("edge").credentials))
    cluster.apply(proxychain_document(chain, f"helm-{secrets.token_hex(3)}", "3s"))


def _operator_works_under_the_chart_rbac(
    cluster: ControlPlane, chain: LocalChain, log_dir: Path, *extra: str, standalone: bool = True
) -> Operator:
    """The chart's ServiceAccount, and nothing else, is enough for a real check and its condition."""
    namespace = cluster.create_namespace("lw-helm")
    _, url, _ = push_artifact(chain)
    custom = client.CustomObjectsApi(cluster.api_client())
    custom.create_namespaced_custom_object(
        *FLUX, namespace, "ocirepositories", ocirepository(namespace, "app", url)
    )
    log_dir.mkdir(exist_ok=True)
    kubeconfig = cluster.token_kubeconfig(NAMESPACE, "layerwatch")
    operator = Operator(kubeconfig, log_dir, *extra, standalone=standalone).start()
    try:
        healthy = wait_for(
            "ProxyHealthy=True written as the chart's ServiceAccount",
            lambda: (c := condition(custom, namespace, "app")) and c["status"] == "True" and c,
        )
        assert healthy["reason"] == "Healthy"
        metrics = operator.metrics()
        assert (
            metric_value(metrics, "layerwatch_artifact_hop_healthy", namespace=namespace, hop="core") == 1.0
        )
        assert "Forbidden" not in operator.text() and "403" not in operator.text(), operator.logs()
    except BaseException:
        operator.stop()
        raise
    return operator


def test_install_upgrade_uninstall(
    cluster: ControlPlane, chain: LocalChain, helm: Path, helm_env: dict[str, str], tmp_path: Path
) -> None:
    run = Helm(helm, helm_env, cluster)
    chart_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]

    out = run("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace")
    assert "STATUS: deployed" in out and "kubectl apply -f chain.yaml" in out  # NOTES.txt
    assert run.release()["app_version"] == chart_version
    cluster.wait_crd_established("proxychains.layerwatch.io")
    (wanted,) = load_docs(MANIFESTS / "clusterrole.yaml")
    role = _get(cluster, "clusterrole", "layerwatch")
    assert role is not None and role["rules"] == wanted["rules"]
    deployment = _get(cluster, "deployment", "layerwatch", NAMESPACE)
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f":{chart_version}")
    assert _get(cluster, "networkpolicy", "layerwatch", NAMESPACE) is not None
    assert _get(cluster, "crd", "clusterkopfpeerings.kopf.dev") is not None  # crds/, for mode=peering

    _lab_proxychain(cluster, chain)
    _operator_works_under_the_chart_rbac(cluster, chain, tmp_path / "single").stop()

    run("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--set", "mode=sharded,shards=2,image.tag=9.9.9")
    assert run.release()["revision"] == "2"
    assert _get(cluster, "deployment", "layerwatch", NAMESPACE) is None
    sts = _get(cluster, "statefulset", "layerwatch", NAMESPACE)
    assert sts is not None and sts["spec"]["replicas"] == 2
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/layerwatch/layerwatch:9.9.9"
    assert "--shard-count=2" in container["args"]

    run("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--set", "mode=peering")
    assert _get(cluster, "clusterkopfpeering", "layerwatch") is not None
    assert _get(cluster, "statefulset", "layerwatch", NAMESPACE) is None
    deployment = _get(cluster, "deployment", "layerwatch", NAMESPACE)
    assert deployment is not None and deployment["spec"]["replicas"] == 2
    assert "--peering=layerwatch" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    # An operator in the chart's peering mode: the peering object and RBAC are enough for it.
    peered = _operator_works_under_the_chart_rbac(
        cluster, chain, tmp_path / "peering", "--peering", "layerwatch", standalone=False
    )
    peered.stop()

    out = run("uninstall", RELEASE, "-n", NAMESPACE)
    assert "uninstalled" in out
    for kind, name, ns in (
        ("deployment", "layerwatch", NAMESPACE),
        ("clusterrole", "layerwatch", None),
        ("clusterrolebinding", "layerwatch", None),
        ("serviceaccount", "layerwatch", NAMESPACE),
        ("service", "layerwatch-metrics", NAMESPACE),
        ("clusterkopfpeering", "layerwatch", None),
    ):
        assert _get(cluster, kind, name, ns) is None, f"{kind} {name} outlived helm uninstall"
    # crds.keep: the CRD and the user's chains stay (uninstalling must not delete every ProxyChain).
    assert _get(cluster, "crd", "proxychains.layerwatch.io") is not None
    chains = client.CustomObjectsApi(cluster.api_client()).list_cluster_custom_object(*LW, "proxychains")
    assert chains["items"]
    with pytest.raises(ApiException) as info:
        client.CoreV1Api(cluster.api_client()).read_namespaced_service_account("layerwatch", NAMESPACE)
    assert info.value.status == 404
