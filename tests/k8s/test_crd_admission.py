"""The ProxyChain CRD refuses bad chains at admission, with messages a person can act on."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lab.kube import REPO, ControlPlane, load_docs

pytestmark = pytest.mark.k8s

GROUP, VERSION, PLURAL = "layerwatch.io", "v1alpha1", "proxychains"
EDGE = {"name": "edge", "url": "https://harbor-edge.example.com/p-core"}
CORE = {"name": "core", "url": "https://harbor-core.example.com/p-ghcr"}
ORIGIN = {"name": "origin", "url": "https://ghcr.io"}


@pytest.fixture
def chains(admin_api: Any) -> Iterator[list[str]]:
    """Names of the chains a test created; deleted afterwards (ProxyChain is cluster-scoped)."""
    names: list[str] = []
    yield names
    api = client.CustomObjectsApi(admin_api)
    for name in names:
        try:
            api.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def document(spec: dict[str, Any]) -> dict[str, Any]:
    """A ProxyChain with a fresh name."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ProxyChain",
        "metadata": {"name": f"test-{secrets.token_hex(4)}"},
        "spec": spec,
    }


def create(admin_api: Any, chains: list[str], spec: dict[str, Any], **options: Any) -> dict[str, Any]:
    body = document(spec)
    created: dict[str, Any] = client.CustomObjectsApi(admin_api).create_cluster_custom_object(
        GROUP, VERSION, PLURAL, body, **options
    )
    chains.append(body["metadata"]["name"])
    return created


def refusal(admin_api: Any, chains: list[str], spec: dict[str, Any]) -> str:
    """Create the chain, expect 422 Invalid, return the apiserver's message."""
    with pytest.raises(ApiException) as info:
        create(admin_api, chains, spec)
    assert info.value.status == 422, info.value.body
    message: str = json.loads(info.value.body)["message"]
    return message


def test_valid_chain_gets_defaults(admin_api: Any, chains: list[str]) -> None:
    created = create(admin_api, chains, {"hops": [EDGE, CORE, ORIGIN]})
    spec = created["spec"]
    assert spec["interval"] == "5m"
    assert spec["mode"] == "full"
    assert spec["suspend"] is False
    assert [h["name"] for h in spec["hops"]] == ["edge", "core", "origin"]  # order kept
    assert spec["hops"][0]["insecureSkipTLSVerify"] is False


def test_example_chain_is_accepted(admin_api: Any, chains: list[str]) -> None:
    (example,) = load_docs(REPO / "manifests/example-proxychain.yaml")
    created = create(admin_api, chains, example["spec"])
    assert [h["name"] for h in created["spec"]["hops"]] == ["edge", "core", "origin"]
    assert created["spec"]["hops"][0]["secretRef"] == {"name": "edge-robot", "namespace": "layerwatch"}


@pytest.mark.parametrize(
    "url",
    [
        "https://ghcr.io",
        "http://127.0.0.1:5000",
        "https://harbor.example.com:8443/p-core/nested/project",
        "https://harbor.example.com/p-core/",
        "http://localhost:5001/mirror",
        "https://[::1]:5000/p",
    ],
)
def test_good_urls(admin_api: Any, chains: list[str], url: str) -> None:
    create(admin_api, chains, {"hops": [{"name": "only", "url": url}]})


def test_duplicate_hop_names_are_refused(admin_api: Any, chains: list[str]) -> None:
    message = refusal(admin_api, chains, {"hops": [EDGE, {**CORE, "name": "edge"}, ORIGIN]})
    assert "hop names must be unique" in message
    assert "spec.hops" in message


def test_empty_hops_are_refused(admin_api: Any, chains: list[str]) -> None:
    message = refusal(admin_api, chains, {"hops": []})
    assert "spec.hops" in message and "a chain needs at least one hop" in message


def test_missing_hops_are_refused(admin_api: Any, chains: list[str]) -> None:
    message = refusal(admin_api, chains, {"interval": "5m"})
    assert "spec.hops: Required value" in message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("harbor.example.com/p-core", "url must start with https:// or http://"),
        ("ftp://harbor.example.com/p-core", "url must start with https:// or http://"),
        ("https://", "url must be https://host[:port][/path-prefix]"),
        ("https://harbor.example.com/p-core?x=1", "no credentials, query or fragment"),
        ("https://robot:secret@harbor.example.com/p", "no credentials, query or fragment"),
        ("https://harbor.example.com/p#frag", "no credentials, query or fragment"),
        ("https://harbor example.com/p", "url must be https://host[:port][/path-prefix]"),
        ("https://harbor.example.com:port/p", "url must be https://host[:port][/path-prefix]"),
        ("oci://ghcr.io/org", "url must start with https:// or http://"),
    ],
)
def test_bad_url_is_refused(admin_api: Any, chains: list[str], url: str, expected: str) -> None:
    message = refusal(admin_api, chains, {"hops": [EDGE, {"name": "bad", "url": url}]})
    assert expected in message
    assert "spec.hops[1].url" in message


@pytest.mark.parametrize(
    ("hop", "expected"),
    [
        ({"name": "Edge_1", "url": "https://a.example"}, "hop name must be a DNS label"),
        ({"name": "-edge", "url": "https://a.example"}, "spec.hops[0].name"),
        (
            {"name": "edge", "url": "https://a.example", "secretRef": {"name": "x"}},
            "spec.hops[0].secretRef.namespace",
        ),
    ],
)
def test_bad_hop_fields_are_refused(
    admin_api: Any, chains: list[str], hop: dict[str, Any], expected: str
) -> None:
    assert expected in refusal(admin_api, chains, {"hops": [hop]})


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("mode", "fast", 'spec.mode: Unsupported value: "fast"'),
        ("interval", "5 minutes", "interval must be a duration such as 30s, 5m or 1h30m"),
        ("interval", "5d", "interval must be a duration such as 30s, 5m or 1h30m"),
        ("interval", "0s", "interval must be at least 1s"),
        ("suspend", "yes", "spec.suspend"),
        ("namespaceSelector", {"matchExpressions": [{"key": "a", "operator": "Like"}]}, "Unsupported value"),
        ("verify", {"provider": "gpg"}, 'spec.verify.provider: Unsupported value: "gpg"'),
        ("verify", {}, "spec.verify.provider: Required value"),
    ],
)
def test_bad_spec_fields_are_refused(
    admin_api: Any, chains: list[str], field: str, value: Any, expected: str
) -> None:
    assert expected in refusal(admin_api, chains, {"hops": [ORIGIN], field: value})


def test_a_chain_can_opt_in_to_signature_checks(admin_api: Any, chains: list[str]) -> None:
    created = create(admin_api, chains, {"hops": [ORIGIN], "verify": {"provider": "notation"}})
    assert created["spec"]["verify"] == {"provider": "notation"}


def test_status_subresource_and_printer_columns(
    control_plane: ControlPlane, admin_api: Any, chains: list[str]
) -> None:
    """Status is written only through /status, and `kubectl get proxychains` shows its numbers."""
    api = client.CustomObjectsApi(admin_api)
    chain = create(admin_api, chains, {"hops": [EDGE, CORE, ORIGIN]})
    name = chain["metadata"]["name"]
    now = "2026-01-01T00:00:00Z"
    status = {
        "observedGeneration": 1,
        "hopCount": 3,
        "artifacts": 42,
        "unhealthy": 1,
        "unknown": 0,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Checked",
                "message": "ok",
                "lastTransitionTime": now,
            }
        ],
        "hops": [
            {
                "name": "edge",
                "up": True,
                "artifacts": 42,
                "healthy": 41,
                "unhealthy": 1,
                "unknown": 0,
                "lastCheckTime": now,
            },
        ],
    }
    # Through the main resource the status is dropped ...
    api.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"status": status})
    assert "status" not in api.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    # ... through /status it is kept.
    api.patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, name, {"status": status})
    assert api.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)["status"]["artifacts"] == 42
    if control_plane.tools.kubectl is None:
        return
    out = control_plane.kubectl("get", "proxychains.layerwatch.io", name).stdout.splitlines()
    assert out[0].split() == ["NAME", "HOPS", "ARTIFACTS", "UNHEALTHY", "UNKNOWN", "READY", "AGE"]
    assert out[1].split()[:6] == [name, "3", "42", "1", "0", "True"]
    wide = control_plane.kubectl("get", "proxychains.layerwatch.io", name, "-o", "wide").stdout
    assert "https://harbor-edge.example.com/p-core" in wide


def test_bad_status_is_refused(admin_api: Any, chains: list[str]) -> None:
    api = client.CustomObjectsApi(admin_api)
    name = create(admin_api, chains, {"hops": [ORIGIN]})["metadata"]["name"]
    with pytest.raises(ApiException) as info:
        api.patch_cluster_custom_object_status(
            GROUP, VERSION, PLURAL, name, {"status": {"conditions": [{"type": "Ready", "status": "Maybe"}]}}
        )
    assert info.value.status == 422


# -- strict configuration: the same rules as chain files, enforced at admission --------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"hops": [{**ORIGIN, "insecureSkipTLSVerify": "false"}]}, "spec.hops[0].insecureSkipTLSVerify"),
        ({"hops": [ORIGIN], "suspend": "false"}, "spec.suspend"),
        ({"hops": [ORIGIN], "interval": "999ms"}, "interval must be at least 1s"),
        ({"hops": [ORIGIN], "interval": "0.5s"}, "interval must be at least 1s"),
        ({"hops": [{"name": "edge", "url": "https://robot@harbor.example.com/p"}]}, "no credentials"),
        ({"hops": [{"name": "edge", "url": "https://robot:s3cret@harbor.example.com/p"}]}, "no credentials"),
    ],
)
def test_a_quoted_boolean_a_short_interval_or_userinfo_is_refused(
    admin_api: Any, chains: list[str], spec: dict[str, Any], expected: str
) -> None:
    message = refusal(admin_api, chains, spec)
    assert expected in message
    if "insecureSkipTLSVerify" in expected or "suspend" in expected:
        assert "must be of type boolean" in message


@pytest.mark.parametrize("interval", ["1s", "1500ms", "1m", "1h30m"])
def test_intervals_of_at_least_one_second_are_accepted(
    admin_api: Any, chains: list[str], interval: str
) -> None:
    assert create(admin_api, chains, {"hops": [ORIGIN], "interval": interval})["spec"]["interval"] == interval


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"hops": [{**ORIGIN, "usrname": "robot"}]}, "spec.hops[0].usrname"),
        ({"hops": [ORIGIN], "intervall": "5m"}, "spec.intervall"),
        (
            {"hops": [{**ORIGIN, "secretRef": {"name": "a", "namespace": "b", "key": "c"}}]},
            "spec.hops[0].secretRef.key",
        ),
    ],
)
def test_an_unknown_field_is_refused_under_strict_field_validation_and_never_reaches_layerwatch(
    admin_api: Any, chains: list[str], spec: dict[str, Any], field: str
) -> None:
    """kubectl asks for strict field validation by default; other clients get the field pruned."""
    with pytest.raises(ApiException) as info:
        create(admin_api, chains, spec, field_validation="Strict")
    assert info.value.status in (400, 422), info.value.body
    assert f'unknown field "{field}"' in json.loads(info.value.body)["message"]
    created = create(admin_api, chains, spec)
    assert field.rpartition(".")[2] not in json.dumps(created["spec"]), (
        "pruned, so the operator never sees it"
    )


def test_kubectl_apply_refuses_a_misspelt_field(control_plane: ControlPlane, tmp_path: Any) -> None:
    if control_plane.tools.kubectl is None:
        pytest.fail("kubectl missing (hack/build-tools.sh kube)", pytrace=False)
    path = tmp_path / "chain.yaml"
    path.write_text(json.dumps(document({"hops": [{**ORIGIN, "insecureSkipTlsVerify": True}]})))
    done = control_plane.kubectl("apply", "-f", str(path), check=False)
    assert done.returncode != 0
    assert 'unknown field "spec.hops[0].insecureSkipTlsVerify"' in done.stderr


def test_no_object_in_the_schema_keeps_unknown_fields() -> None:
    """Every object lists its properties (or is a string map), so unknown fields never get through."""
    (crd,) = load_docs(REPO / "crds/proxychain.yaml")

    def walk(node: dict[str, Any], where: str) -> None:
        assert not node.get("x-kubernetes-preserve-unknown-fields"), where
        if node.get("type") == "object" and where != "metadata":
            assert "properties" in node or "additionalProperties" in node, where
        for name, child in (node.get("properties") or {}).items():
            walk(child, name)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")

    walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "")


def test_a_hop_url_with_a_password_is_refused_without_echoing_the_password(
    admin_api: Any, chains: list[str]
) -> None:
    message = refusal(
        admin_api, chains, {"hops": [{"name": "edge", "url": "https://robot:s3cr3t-Pw@a.example/p"}]}
    )
    assert "spec.hops[0].url" in message and "no credentials" in message
    assert "s3cr3t-Pw" not in message, message
