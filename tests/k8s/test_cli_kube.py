"""``layerwatch check --kube``: what a Flux user runs while debugging, against a real apiserver.

The CLI reads the OCIRepository, the ProxyChain it matches and their Secrets from the cluster of
the kubeconfig, and checks the real lab chain from here. A user who may not read Secrets gets a
warning and the hop is checked without them; an object layerwatch would not watch says why.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.k8s.operator_harness import ocirepository, push_artifact
from tests.registry.helpers import CliRun, run_cli

from lab.chain import LocalChain
from lab.kube import ControlPlane

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(300)]


def kube_check(kubeconfig: Path, *args: str) -> CliRun:
    return run_cli("check", "--kube", *args, env={"KUBECONFIG": str(kubeconfig)})


@pytest.fixture(scope="module")
def reader_kubeconfig(control_plane: ControlPlane) -> Path:
    """A user who may read OCIRepositories, ProxyChains and namespaces, but no Secret."""
    name = f"reader-{secrets.token_hex(3)}"
    role: dict[str, Any] = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [
            {"apiGroups": ["source.toolkit.fluxcd.io"], "resources": ["ocirepositories"], "verbs": ["get"]},
            {"apiGroups": ["layerwatch.io"], "resources": ["proxychains"], "verbs": ["list"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "default"}],
    }
    return control_plane.service_account_kubeconfig("default", name, [role, binding])


def test_check_kube_reads_the_ocirepository_its_chain_and_secrets_and_blames_the_broken_hop(
    control_plane: ControlPlane, proxychain: str, chain: LocalChain, namespace: str
) -> None:
    _, url, _ = push_artifact(chain, drop_at="core")
    control_plane.apply(ocirepository(namespace, "app", url))
    run = kube_check(control_plane.kubeconfig, "-n", namespace, "ocirepository/app", "-o", "json")
    assert run.status == 1, run
    report = run.report
    assert report["reference"] == f"{url}:v1"
    assert report["verdict"] == "LayerMissing" and report["blame"] == "core"
    assert {hop["name"]: hop["verdict"] for hop in report["hops"]} == {
        "edge": "LayerMissing",
        "core": "LayerMissing",
        "origin": "Healthy",
    }, "the edge robot's credentials came from its Secret (no AuthFailed)"
    assert "Traceback" not in run.output


def test_check_kube_takes_several_ocirepositories_and_the_namespace_of_the_current_context(
    control_plane: ControlPlane, proxychain: str, chain: LocalChain, namespace: str, tmp_path: Path
) -> None:
    for name in ("one", "two"):
        _, url, _ = push_artifact(chain)
        control_plane.apply(ocirepository(namespace, name, url))
    kubeconfig = tmp_path / "kubeconfig"
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    for context in config["contexts"]:
        context["context"]["namespace"] = namespace
    kubeconfig.write_text(yaml.safe_dump(config))
    run = kube_check(kubeconfig, "ocirepository/one", "ocirepositories/two", "-o", "json")
    assert run.status == 0, run
    assert [check["verdict"] for check in run.report["checks"]] == ["Healthy", "Healthy"]


def test_check_kube_without_rights_on_secrets_warns_and_checks_without_them(
    control_plane: ControlPlane, proxychain: str, chain: LocalChain, namespace: str, reader_kubeconfig: Path
) -> None:
    _, url, _ = push_artifact(chain)
    control_plane.apply(ocirepository(namespace, "app", url))
    run = kube_check(reader_kubeconfig, "-n", namespace, "ocirepository/app", "-o", "json")
    assert run.status == 3, run
    assert "Secret layerwatch/lab-edge: HTTP 403; checking 127.0.0.1" in run.stderr
    verdicts = {hop["name"]: hop["verdict"] for hop in run.report["hops"]}
    assert verdicts == {"edge": "AuthFailed", "core": "Healthy", "origin": "Healthy"}
    assert "Traceback" not in run.output


def test_check_kube_says_why_an_object_is_not_checked(
    control_plane: ControlPlane, proxychain: str, namespace: str
) -> None:
    control_plane.apply(ocirepository(namespace, "elsewhere", "oci://quay.io/org/app"))
    cases = {
        ("ocirepository/elsewhere",): "is not watched by layerwatch: no chain has a hop for this URL",
        ("ocirepository/absent",): f"ocirepository {namespace}/absent not found",
        ("deployment/app",): "--kube checks OCIRepositories; write ocirepository/NAME",
    }
    for args, message in cases.items():
        run = kube_check(control_plane.kubeconfig, "-n", namespace, *args, "-o", "json")
        assert run.status == 2, (args, run)
        assert run.report == {
            "error": {"kind": "config", "message": run.stderr.strip().removeprefix("layerwatch: ")}
        }
        assert message in run.report["error"]["message"], run


def test_check_kube_without_a_cluster_is_one_line(tmp_path: Path) -> None:
    run = kube_check(tmp_path / "absent-kubeconfig", "ocirepository/app")
    assert run.status == 2, run
    assert run.stderr.startswith("layerwatch: no usable cluster configuration")
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.output


def test_check_kube_with_an_unreachable_apiserver_is_one_line(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "gone", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "me", "user": {"token": "t0ken-Zq9"}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "me"}}],
                "current-context": "gone",
            }
        )
    )
    run = kube_check(kubeconfig, "ocirepository/app", "-o", "json")
    assert run.status == 2, run
    assert run.report["error"]["message"].startswith("cannot reach the cluster at https://127.0.0.1:9: ")
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.output
    assert "t0ken-Zq9" not in run.output
