"""The Helm chart installs what the kustomize manifests install, and its values do what they say.

Both sides are rendered by the real tools: ``helm template`` (Helm built from its Go module) and
``kubectl kustomize`` (the kustomize inside the pinned kubectl), then compared object by object.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.install.conftest import CHART, MANIFESTS

from lab.kube import REPO

Doc = dict[str, Any]
HELM_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
}
KEEP = "helm.sh/resource-policy"


def helm_template(
    helm: Path, env: dict[str, str], *args: str, namespace: str = "layerwatch", check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(helm), "template", "layerwatch", str(CHART), "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def rendered(helm: Path, env: dict[str, str], *args: str, namespace: str = "layerwatch") -> dict[Any, Doc]:
    text = helm_template(helm, env, *args, namespace=namespace).stdout
    return by_key(doc for doc in yaml.safe_load_all(text) if doc)


def kustomized(kubectl: Path, directory: Path) -> dict[Any, Doc]:
    done = subprocess.run(
        [str(kubectl), "kustomize", str(directory)], capture_output=True, text=True, check=True, timeout=60
    )
    return by_key(doc for doc in yaml.safe_load_all(done.stdout) if doc and doc["kind"] != "Namespace")


def by_key(docs: Any) -> dict[Any, Doc]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def without_helm_metadata(docs: dict[Any, Doc]) -> dict[Any, Doc]:
    """The objects minus what only Helm adds: its labels on every object, the CRD's keep policy."""
    result = {}
    for key, doc in docs.items():
        doc = copy.deepcopy(doc)
        labels = doc["metadata"].get("labels", {})
        assert set(labels) >= HELM_LABELS, f"{key} lacks Helm's labels: {labels}"
        doc["metadata"]["labels"] = {k: v for k, v in labels.items() if k not in HELM_LABELS}
        annotations = doc["metadata"].get("annotations", {})
        annotations.pop(KEEP, None)
        if "annotations" in doc["metadata"] and not annotations:
            del doc["metadata"]["annotations"]
        result[key] = doc
    return result


def pod(docs: dict[Any, Doc], kind: str = "Deployment") -> Doc:
    return dict(docs[(kind, "layerwatch")]["spec"]["template"])


def test_chart_is_generated_from_the_current_manifests() -> None:
    """`make lint` fails when someone edits manifests/ and forgets `python3 hack/chart.py`."""
    done = subprocess.run(
        [sys.executable, str(REPO / "hack" / "chart.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("mode", ["single", "peering", "sharded"])
def test_helm_lint_is_clean(helm: Path, helm_env: dict[str, str], mode: str) -> None:
    done = subprocess.run(
        [str(helm), "lint", "--strict", str(CHART), "--set", f"mode={mode}"],
        capture_output=True,
        text=True,
        env=helm_env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_default_values_install_exactly_the_kustomize_base(
    helm: Path, kubectl: Path, helm_env: dict[str, str]
) -> None:
    """Same objects, same fields: CRD, RBAC, Deployment, Service, NetworkPolicy (the namespace is Helm's)."""
    chart = rendered(helm, helm_env)
    assert without_helm_metadata(chart) == kustomized(kubectl, MANIFESTS)
    assert chart[("CustomResourceDefinition", "proxychains.layerwatch.io")]["metadata"]["annotations"] == {
        KEEP: "keep"
    }


def test_sharded_mode_installs_exactly_the_sharded_overlay(
    helm: Path, kubectl: Path, helm_env: dict[str, str]
) -> None:
    chart = rendered(helm, helm_env, "--set", "mode=sharded")
    assert without_helm_metadata(chart) == kustomized(kubectl, MANIFESTS / "sharded")
    five = rendered(helm, helm_env, "--set", "mode=sharded", "--set", "shards=5")
    sts = five[("StatefulSet", "layerwatch")]
    assert sts["spec"]["replicas"] == 5
    assert "--shard-count=5" in sts["spec"]["template"]["spec"]["containers"][0]["args"]


def test_peering_mode_is_the_base_with_kopf_peering(
    helm: Path, kubectl: Path, helm_env: dict[str, str]
) -> None:
    """Active/standby as manifests/peering.yaml has it: N replicas, --peering=layerwatch, the peering CRD."""
    chart = without_helm_metadata(rendered(helm, helm_env, "--set", "mode=peering", "--set", "replicas=3"))
    base = kustomized(kubectl, MANIFESTS)
    peering = {
        (d["kind"], d["metadata"]["name"]): d
        for d in yaml.safe_load_all((MANIFESTS / "peering.yaml").read_text())
    }
    deployment = chart.pop(("Deployment", "layerwatch"))
    expected = base.pop(("Deployment", "layerwatch"))
    expected["spec"]["replicas"] = 3
    expected["spec"]["template"]["spec"]["containers"][0]["args"].append("--peering=layerwatch")
    assert deployment == expected
    assert chart.pop(("ClusterKopfPeering", "layerwatch")) == peering[("ClusterKopfPeering", "layerwatch")]
    assert chart == base
    crds = helm_template(helm, helm_env, "--include-crds", "--set", "mode=peering").stdout
    kinds = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all(crds)
        if d and d["kind"] == "CustomResourceDefinition"
    }
    assert (
        kinds["clusterkopfpeerings.kopf.dev"]
        == peering[("CustomResourceDefinition", "clusterkopfpeerings.kopf.dev")]
    )


def test_monitoring_objects_are_the_monitoring_kustomization(
    helm: Path, kubectl: Path, helm_env: dict[str, str]
) -> None:
    """ServiceMonitor, PrometheusRule (alert templates intact) and dashboard, plus the selector labels."""
    switches = [
        f"monitoring.{name}.enabled=true" for name in ("serviceMonitor", "prometheusRule", "dashboard")
    ]
    chart = without_helm_metadata(rendered(helm, helm_env, "--set", ",".join(switches)))
    base = kustomized(kubectl, MANIFESTS)
    monitoring = {key: doc for key, doc in chart.items() if key not in base}
    assert monitoring == kustomized(kubectl, MANIFESTS / "monitoring")
    rule = monitoring[("PrometheusRule", "layerwatch")]
    assert "{{ $labels.hop }}" in yaml.safe_dump(rule)
    labelled = rendered(helm, helm_env, "--set", ",".join(switches), "--set", "monitoring.labels.release=kps")
    for kind in ("ServiceMonitor", "PrometheusRule", "ConfigMap"):
        (doc,) = [d for (k, _), d in labelled.items() if k == kind]
        assert doc["metadata"]["labels"]["release"] == "kps", kind
    assert not any(k in ("ServiceMonitor", "PrometheusRule") for k, _ in rendered(helm, helm_env))


def test_values_reach_the_operator_pod(helm: Path, helm_env: dict[str, str]) -> None:
    """Image, pull policy, resources, extra args and placement are values; so is the namespace."""
    values = {
        "image": {
            "repository": "registry.example.com/platform/layerwatch",
            "tag": "0.1.0-corp.1",
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "corp-registry"}],
        "resources": {
            "requests": {"cpu": "10m", "memory": "64Mi"},
            "limits": {"cpu": "500m", "memory": "256Mi"},
        },
        "extraArgs": ["--log-level=debug"],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "infra", "operator": "Exists"}],
        "podAnnotations": {"example.com/team": "platform"},
    }
    for mode, kind in (("single", "Deployment"), ("sharded", "StatefulSet")):
        done = subprocess.run(
            [
                str(helm),
                "template",
                "layerwatch",
                str(CHART),
                "-n",
                "platform",
                "--set",
                f"mode={mode}",
                "-f",
                "-",
            ],
            input=yaml.safe_dump(values),
            capture_output=True,
            text=True,
            env=helm_env,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        docs = by_key(d for d in yaml.safe_load_all(done.stdout) if d)
        template = pod(docs, kind)
        (container,) = template["spec"]["containers"]
        assert container["image"] == "registry.example.com/platform/layerwatch:0.1.0-corp.1"
        assert container["imagePullPolicy"] == "Always"
        assert container["resources"] == values["resources"]
        assert container["args"][-1] == "--log-level=debug"
        assert template["spec"]["imagePullSecrets"] == values["imagePullSecrets"]
        assert template["spec"]["nodeSelector"] == values["nodeSelector"]
        assert template["spec"]["tolerations"] == values["tolerations"]
        assert template["metadata"]["annotations"] == values["podAnnotations"]
        namespaced = [d for d in docs.values() if "namespace" in d["metadata"]]
        assert namespaced and {d["metadata"]["namespace"] for d in namespaced} == {"platform"}
        (subject,) = docs[("ClusterRoleBinding", "layerwatch")]["subjects"]
        assert subject["namespace"] == "platform"


def test_switches_remove_their_objects(helm: Path, helm_env: dict[str, str]) -> None:
    docs = rendered(helm, helm_env, "--set", "crds.install=false,networkPolicy.enabled=false")
    assert not {k for k, _ in docs} & {"CustomResourceDefinition", "NetworkPolicy"}
    assert ("Deployment", "layerwatch") in docs


def test_image_tag_defaults_to_the_app_version(helm: Path, helm_env: dict[str, str]) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (container,) = pod(rendered(helm, helm_env))["spec"]["containers"]
    assert container["image"] == f"ghcr.io/layerwatch/layerwatch:{chart['appVersion']}"


@pytest.mark.parametrize(
    ("setting", "message"),
    [("mode=shard", "value must be one of 'single', 'peering', 'sharded'"), ("shards=0", "minimum")],
)
def test_bad_values_are_refused_with_a_clear_message(
    helm: Path, helm_env: dict[str, str], setting: str, message: str
) -> None:
    done = helm_template(helm, helm_env, "--set", setting, check=False)
    assert done.returncode != 0
    assert message in done.stderr
