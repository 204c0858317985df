"""manifests/clusterrole.yaml is enough for the operator and no more (least privilege).

The operator identity is a real ServiceAccount token (TokenRequest API) in a kubeconfig that holds
nothing else, bound by manifests/clusterrolebinding.yaml to exactly manifests/clusterrole.yaml.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lab.kube import REPO, ControlPlane, load_docs

pytestmark = pytest.mark.k8s

FLUX = ("source.toolkit.fluxcd.io", "v1")
LW = ("layerwatch.io", "v1alpha1")
CONDITION = "layerwatch.io/ProxyHealthy"


def forbidden(call: Callable[[], Any]) -> str:
    """Run ``call`` and insist the apiserver answers 403; returns its message."""
    with pytest.raises(ApiException) as info:
        call()
    assert info.value.status == 403, f"expected 403, got {info.value.status}: {info.value.body}"
    return str(json.loads(info.value.body)["message"])


@pytest.fixture
def ocirepo(admin_api: Any, namespace: str) -> dict[str, Any]:
    """An OCIRepository as Flux leaves it: spec plus a Ready condition owned by source-controller."""
    api = client.CustomObjectsApi(admin_api)
    body = {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "OCIRepository",
        "metadata": {"name": "app"},
        "spec": {
            "url": "oci://harbor-edge.example.com/p-core/p-ghcr/org/app",
            "interval": "1m",
            "ref": {"tag": "1.0"},
        },
    }
    api.create_namespaced_custom_object(*FLUX, namespace, "ocirepositories", body)
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "Succeeded",
        "message": "stored artifact",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 1,
    }
    obj: dict[str, Any] = api.patch_namespaced_custom_object_status(
        *FLUX,
        namespace,
        "ocirepositories",
        "app",
        {"status": {"conditions": [ready], "observedGeneration": 1}},
    )
    return obj


def test_kubeconfig_holds_only_a_token(operator_kubeconfig: Path, operator_api: Any) -> None:
    config = yaml.safe_load(operator_kubeconfig.read_text())
    (user,) = config["users"]
    assert set(user["user"]) == {"token"}
    assert set(config["clusters"][0]["cluster"]) == {"server", "certificate-authority-data"}
    review = client.AuthenticationV1Api(operator_api).create_self_subject_review(
        client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
    )
    info = review.status.user_info
    assert info.username == "system:serviceaccount:layerwatch:layerwatch"
    assert "system:masters" not in (info.groups or [])


def test_bound_to_exactly_the_manifests_clusterrole(admin_api: Any, operator_kubeconfig: Path) -> None:
    rbac = client.RbacAuthorizationV1Api(admin_api)
    (wanted,) = load_docs(REPO / "manifests/clusterrole.yaml")
    live = rbac.read_cluster_role("layerwatch")
    as_tuples = sorted(
        (tuple(r.api_groups), tuple(r.resources), tuple(r.verbs), tuple(r.resource_names or ()))
        for r in live.rules
    )
    assert as_tuples == sorted(
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"]), ()) for r in wanted["rules"]
    )
    subject = "system:serviceaccount:layerwatch:layerwatch"
    bound = [
        b.role_ref.name
        for b in rbac.list_cluster_role_binding().items
        if any(f"system:serviceaccount:{s.namespace}:{s.name}" == subject for s in b.subjects or [])
    ]
    assert bound == ["layerwatch"]
    assert not [
        b
        for b in rbac.list_role_binding_for_all_namespaces().items
        if b.subjects
        and any(
            s.kind == "ServiceAccount" and s.name == "layerwatch" and s.namespace == "layerwatch"
            for s in b.subjects
        )
    ]


def test_can_watch_ocirepositories_and_write_their_status(
    operator_api: Any, admin_api: Any, namespace: str, ocirepo: dict[str, Any]
) -> None:
    api = client.CustomObjectsApi(operator_api)
    assert api.list_cluster_custom_object(*FLUX, "ocirepositories")["items"]
    assert api.list_namespaced_custom_object(*FLUX, namespace, "ocirepositories")["items"]
    stream = api.list_cluster_custom_object(
        *FLUX, "ocirepositories", watch=True, timeout_seconds=1, _preload_content=False
    )
    stream.release_conn()
    live = api.get_namespaced_custom_object_status(*FLUX, namespace, "ocirepositories", "app")
    # The operator's write: read-modify-write of the full condition list, guarded by resourceVersion.
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ours = {
        "type": CONDITION,
        "status": "False",
        "reason": "LayerMissing",
        "message": "hop core (harbor-core.example.com/p-ghcr/org/app): layer 0 sha256:75b13d43a5b5 missing",
        "lastTransitionTime": now,
        "observedGeneration": live["metadata"]["generation"],
    }
    patch = {
        "metadata": {"resourceVersion": live["metadata"]["resourceVersion"]},
        "status": {"conditions": [*live["status"]["conditions"], ours]},
    }
    api.patch_namespaced_custom_object_status(*FLUX, namespace, "ocirepositories", "app", patch)
    after = client.CustomObjectsApi(admin_api).get_namespaced_custom_object(
        *FLUX, namespace, "ocirepositories", "app"
    )
    assert [c["type"] for c in after["status"]["conditions"]] == ["Ready", CONDITION]
    assert after["metadata"]["generation"] == live["metadata"]["generation"]
    # A stale resourceVersion is a conflict, not a silent overwrite of Flux's concurrent write.
    with pytest.raises(ApiException) as info:
        api.patch_namespaced_custom_object_status(*FLUX, namespace, "ocirepositories", "app", patch)
    assert info.value.status == 409


def test_cannot_touch_ocirepository_spec_or_metadata(
    operator_api: Any, namespace: str, ocirepo: dict[str, Any]
) -> None:
    api = client.CustomObjectsApi(operator_api)
    name = ("ocirepositories", "app")
    forbidden(
        lambda: api.patch_namespaced_custom_object(*FLUX, namespace, *name, {"spec": {"suspend": True}})
    )
    forbidden(
        lambda: api.patch_namespaced_custom_object(
            *FLUX, namespace, *name, {"metadata": {"finalizers": ["kopf.zalando.org/KopfFinalizerMarker"]}}
        )
    )
    forbidden(
        lambda: api.patch_namespaced_custom_object(
            *FLUX,
            namespace,
            *name,
            {"metadata": {"annotations": {"kopf.zalando.org/last-handled-configuration": "{}"}}},
        )
    )
    forbidden(lambda: api.replace_namespaced_custom_object(*FLUX, namespace, *name, ocirepo))
    forbidden(lambda: api.delete_namespaced_custom_object(*FLUX, namespace, *name))
    forbidden(lambda: api.delete_collection_namespaced_custom_object(*FLUX, namespace, "ocirepositories"))
    body = {**ocirepo, "metadata": {"name": "other"}}
    forbidden(lambda: api.create_namespaced_custom_object(*FLUX, namespace, "ocirepositories", body))
    # Status: patch only; a PUT of the whole status is not needed and not granted.
    forbidden(lambda: api.replace_namespaced_custom_object_status(*FLUX, namespace, *name, ocirepo))


def test_secrets_by_name_only(admin_api: Any, operator_api: Any, namespace: str) -> None:
    client.CoreV1Api(admin_api).create_namespaced_secret(
        namespace, {"metadata": {"name": "robot"}, "stringData": {"username": "u", "password": "p"}}
    )
    core = client.CoreV1Api(operator_api)
    assert core.read_namespaced_secret("robot", namespace).data["username"]
    message = forbidden(lambda: core.list_namespaced_secret(namespace))
    assert 'cannot list resource "secrets"' in message
    forbidden(lambda: core.list_secret_for_all_namespaces())
    forbidden(
        lambda: core.list_namespaced_secret(namespace, watch=True, timeout_seconds=1, _preload_content=False)
    )
    forbidden(lambda: core.create_namespaced_secret(namespace, {"metadata": {"name": "x"}}))
    forbidden(lambda: core.delete_namespaced_secret("robot", namespace))
    forbidden(lambda: core.patch_namespaced_secret("robot", namespace, {"metadata": {"labels": {"a": "b"}}}))


def test_service_accounts_by_name_only(admin_api: Any, operator_api: Any, namespace: str) -> None:
    """spec.serviceAccountName: its imagePullSecrets are read; nothing else about ServiceAccounts."""
    client.CoreV1Api(admin_api).create_namespaced_service_account(
        namespace, {"metadata": {"name": "puller"}, "imagePullSecrets": [{"name": "robot"}]}
    )
    core = client.CoreV1Api(operator_api)
    assert [s.name for s in core.read_namespaced_service_account("puller", namespace).image_pull_secrets] == [
        "robot"
    ]
    message = forbidden(lambda: core.list_namespaced_service_account(namespace))
    assert 'cannot list resource "serviceaccounts"' in message
    forbidden(lambda: core.list_service_account_for_all_namespaces())
    forbidden(lambda: core.create_namespaced_service_account(namespace, {"metadata": {"name": "x"}}))
    forbidden(
        lambda: core.patch_namespaced_service_account(
            "puller", namespace, {"metadata": {"labels": {"a": "b"}}}
        )
    )
    forbidden(lambda: core.delete_namespaced_service_account("puller", namespace))
    # No tokens: layerwatch checks with its own identity, never impersonates the ServiceAccount.
    forbidden(
        lambda: core.create_namespaced_service_account_token(
            "puller",
            namespace,
            client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])),
        )
    )


def test_events(operator_api: Any, namespace: str, ocirepo: dict[str, Any]) -> None:
    ref = {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "OCIRepository",
        "name": "app",
        "namespace": namespace,
        "uid": ocirepo["metadata"]["uid"],
    }
    now = dt.datetime.now(dt.UTC)
    name = f"app.{secrets.token_hex(8)}"
    core = client.CoreV1Api(operator_api)
    core.create_namespaced_event(
        namespace,
        {
            "metadata": {"name": name},
            "involvedObject": ref,
            "type": "Warning",
            "reason": "LayerMissing",
            "message": "hop core: layer 0 missing",
            "source": {"component": "layerwatch"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        },
    )
    core.patch_namespaced_event(name, namespace, {"count": 2})
    events = client.EventsV1Api(operator_api)
    events.create_namespaced_event(
        namespace,
        {
            "metadata": {"name": f"app.{secrets.token_hex(8)}"},
            "regarding": ref,
            "type": "Normal",
            "reason": "ProxyRecovered",
            "note": "all hops healthy",
            "action": "Check",
            "reportingController": "layerwatch.io/operator",
            "reportingInstance": "layerwatch-0",
            "eventTime": now,
        },
    )
    forbidden(lambda: core.list_namespaced_event(namespace))
    forbidden(lambda: core.delete_namespaced_event(name, namespace))


def test_proxychains(operator_api: Any, admin_api: Any) -> None:
    name = f"rbac-{secrets.token_hex(4)}"
    body = {
        "apiVersion": "layerwatch.io/v1alpha1",
        "kind": "ProxyChain",
        "metadata": {"name": name},
        "spec": {"hops": [{"name": "origin", "url": "https://ghcr.io"}]},
    }
    admin = client.CustomObjectsApi(admin_api)
    admin.create_cluster_custom_object(*LW, "proxychains", body)
    try:
        api = client.CustomObjectsApi(operator_api)
        assert any(
            c["metadata"]["name"] == name for c in api.list_cluster_custom_object(*LW, "proxychains")["items"]
        )
        live = api.get_cluster_custom_object(*LW, "proxychains", name)
        api.patch_cluster_custom_object_status(
            *LW, "proxychains", name, {"status": {"hopCount": 1, "artifacts": 0}}
        )
        live = api.get_cluster_custom_object_status(*LW, "proxychains", name)
        live["status"]["unknown"] = 0
        api.replace_cluster_custom_object_status(*LW, "proxychains", name, live)
        # kopf's daemon finalizer (the peering gate) is the one metadata write allowed on our own CRD.
        api.patch_cluster_custom_object(
            *LW, "proxychains", name, {"metadata": {"finalizers": ["layerwatch.io/finalizer"]}}
        )
        api.patch_cluster_custom_object(*LW, "proxychains", name, {"metadata": {"finalizers": []}})
        forbidden(lambda: api.delete_cluster_custom_object(*LW, "proxychains", name))
        forbidden(
            lambda: api.create_cluster_custom_object(*LW, "proxychains", {**body, "metadata": {"name": "x"}})
        )
    finally:
        admin.delete_cluster_custom_object(*LW, "proxychains", name)


def test_discovery_and_namespaces(operator_api: Any, namespace: str) -> None:
    """kopf's cluster scanning: CRDs list/watch and namespaces list/watch, but nothing to change."""
    crds = client.ApiextensionsV1Api(operator_api)
    names = {c.metadata.name for c in crds.list_custom_resource_definition().items}
    assert {"ocirepositories.source.toolkit.fluxcd.io", "proxychains.layerwatch.io"} <= names
    forbidden(lambda: crds.read_custom_resource_definition("proxychains.layerwatch.io"))
    forbidden(lambda: crds.delete_custom_resource_definition("proxychains.layerwatch.io"))
    core = client.CoreV1Api(operator_api)
    assert namespace in {n.metadata.name for n in core.list_namespace().items}
    assert core.read_namespace(namespace).metadata.name == namespace
    forbidden(lambda: core.create_namespace({"metadata": {"name": f"x-{secrets.token_hex(3)}"}}))
    forbidden(lambda: core.patch_namespace(namespace, {"metadata": {"labels": {"a": "b"}}}))
    forbidden(lambda: core.delete_namespace(namespace))


def test_kopf_peering(control_plane: ControlPlane, operator_api: Any) -> None:
    control_plane.apply(REPO / "manifests/peering.yaml")
    api = client.CustomObjectsApi(operator_api)
    group = ("kopf.dev", "v1")
    assert api.list_cluster_custom_object(*group, "clusterkopfpeerings")["items"]
    api.get_cluster_custom_object(*group, "clusterkopfpeerings", "layerwatch")
    # kopf's keep-alive: a merge patch of the peering object's status (no status subresource).
    peer = {"priority": 0, "lifetime": 60, "lastseen": "2026-01-01T00:00:00", "id": "test@host"}
    patched = api.patch_cluster_custom_object(
        *group, "clusterkopfpeerings", "layerwatch", {"status": {"test@host": peer}}
    )
    assert patched["status"]["test@host"]["lifetime"] == 60
    api.patch_cluster_custom_object(
        *group, "clusterkopfpeerings", "layerwatch", {"status": {"test@host": None}}
    )
    forbidden(lambda: api.delete_cluster_custom_object(*group, "clusterkopfpeerings", "layerwatch"))
    forbidden(
        lambda: api.create_cluster_custom_object(
            *group,
            "clusterkopfpeerings",
            {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "x"}},
        )
    )


def test_no_other_powers(operator_api: Any, namespace: str) -> None:
    apps = client.AppsV1Api(operator_api)
    deployment = {
        "metadata": {"name": "evil"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
        },
    }
    forbidden(lambda: apps.create_namespaced_deployment(namespace, deployment))
    forbidden(lambda: apps.list_deployment_for_all_namespaces())
    core = client.CoreV1Api(operator_api)
    forbidden(lambda: core.list_pod_for_all_namespaces())
    forbidden(lambda: core.list_config_map_for_all_namespaces())
    forbidden(
        lambda: core.create_namespaced_service_account_token(
            "layerwatch",
            "layerwatch",
            client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])),
        )
    )
    rbac = client.RbacAuthorizationV1Api(operator_api)
    forbidden(lambda: rbac.list_cluster_role())
    forbidden(
        lambda: rbac.create_cluster_role_binding(
            {
                "metadata": {"name": "escalate"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "cluster-admin",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "layerwatch", "namespace": "layerwatch"}],
            }
        )
    )
    # Other Flux kinds are not granted either.
    forbidden(
        lambda: client.CustomObjectsApi(operator_api).list_cluster_custom_object(
            "source.toolkit.fluxcd.io", "v1", "gitrepositories"
        )
    )
