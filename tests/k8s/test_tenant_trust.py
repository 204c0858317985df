"""Nobody's deputy, on a real apiserver: a tenant never gets the chain's robot sent where it points.

A ProxyChain's edge hop (with the platform's robot account) is a port of a recording endpoint run
by the test, which also serves plain HTTP, TLS with a CA only the tenant's Secret trusts, and an
HTTP/CONNECT proxy, answering ``401 Basic`` to every request. A tenant namespace holds one
OCIRepository per combination of ``insecure``, ``certSecretRef``, ``proxySecretRef``,
``secretRef``, ``provider`` and ``serviceAccountName``, each on its own repository path so the
recorder says which object sent what. The operator (as deployed: ServiceAccount token, manifests'
RBAC) checks them all; the chain's password never arrives, the tenant's own credentials do where
its own transport reaches the recorder. ``check --kube`` follows the same rules. A namespace
outside the chain's namespaceSelector is checked at its own URL only, and one tenant's malformed
proxy Secret never stops the plan of the others.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.k8s.operator_harness import FLUX, LW, Operator, condition, ocirepository, wait_for
from tests.registry.helpers import run_cli

from lab.certs import TestCA
from lab.kube import ControlPlane, basic_auth_secret, secret_document
from lab.recorder import RecordingEndpoint

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(420)]

CHAIN_USER, CHAIN_PW = "robot$platform", f"chain-pw-{secrets.token_hex(6)}"
TENANT = ("tenant", f"tenant-pw-{secrets.token_hex(6)}")
PULLER = ("puller", f"puller-pw-{secrets.token_hex(6)}")
FIELDS = ("insecure", "certSecretRef", "proxySecretRef", "secretRef", "provider", "serviceAccountName")
COMBINATIONS = [c for n in range(len(FIELDS) + 1) for c in itertools.combinations(FIELDS, n)]


def _name(fields: tuple[str, ...]) -> str:
    """``c-`` and one bit per field: a DNS name, and a repository path of its own."""
    return "c-" + "".join("1" if field in fields else "0" for field in FIELDS)


def _spec(fields: tuple[str, ...]) -> dict[str, Any]:
    values: dict[str, Any] = {
        "certSecretRef": {"name": "recorder-ca"},
        "proxySecretRef": {"name": "recorder-proxy"},
        "secretRef": {"name": "tenant-pull"},
        "provider": "gcp",
        "serviceAccountName": "puller",
    }
    return {"insecure": "insecure" in fields} | {f: values[f] for f in fields if f != "insecure"}


class Lab:
    """The recorder, the ProxyChain on it, and the namespaces the tests use."""

    def __init__(
        self, recorder: RecordingEndpoint, ca_pem: str, chain: str, served: str, outside: str
    ) -> None:
        self.recorder, self.ca_pem, self.chain = recorder, ca_pem, chain
        self.served, self.outside = served, outside

    def url(self, name: str) -> str:
        return f"oci://{self.recorder.address}/p-core/{name}"

    def requests_of(self, name: str) -> list[Any]:
        return [r for r in list(self.recorder.requests) if f"/p-core/{name}/" in r.line]

    def tenant_secrets(self, namespace: str) -> list[dict[str, Any]]:
        """What a tenant with edit rights writes: its credentials, a CA, a proxy, a ServiceAccount."""
        auth = base64.b64encode(":".join(PULLER).encode()).decode()
        config = json.dumps({"auths": {self.recorder.address: {"auth": auth}}})
        return [
            basic_auth_secret(namespace, "tenant-pull", TENANT),
            secret_document(namespace, "recorder-ca", {"ca.crt": self.ca_pem}),
            secret_document(namespace, "recorder-proxy", {"address": f"http://{self.recorder.address}"}),
            secret_document(
                namespace, "puller-pull", {".dockerconfigjson": config}, "kubernetes.io/dockerconfigjson"
            ),
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "puller", "namespace": namespace},
                "imagePullSecrets": [{"name": "puller-pull"}],
            },
        ]


@pytest.fixture(scope="module")
def lab(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    ca = TestCA(tmp_path_factory.mktemp("tenant-trust"))
    with RecordingEndpoint(tls=ca.issue("recorder")) as recorder:
        label = f"lw-trust-{secrets.token_hex(3)}"
        served, outside = (
            control_plane.create_namespace("lw-tenant"),
            control_plane.create_namespace("lw-other"),
        )
        core = client.CoreV1Api(control_plane.api_client())
        core.patch_namespace(served, {"metadata": {"labels": {label: "served"}}})
        control_plane.apply(basic_auth_secret("layerwatch", "trust-robot", (CHAIN_USER, CHAIN_PW)))
        name = f"trust-{secrets.token_hex(3)}"
        hop = {
            "name": "edge",
            "url": f"https://{recorder.address}/p-core",
            "secretRef": {"name": "trust-robot", "namespace": "layerwatch"},
        }
        control_plane.apply(
            {
                "apiVersion": "layerwatch.io/v1alpha1",
                "kind": "ProxyChain",
                "metadata": {"name": name},
                "spec": {
                    "hops": [hop],
                    "interval": "3s",
                    "namespaceSelector": {"matchLabels": {label: "served"}},
                },
            }
        )
        result = Lab(recorder, ca.path.read_text(), name, served, outside)
        control_plane.apply(result.tenant_secrets(served) + result.tenant_secrets(outside))
        try:
            yield result
        finally:
            client.CustomObjectsApi(control_plane.api_client()).delete_cluster_custom_object(
                *LW, "proxychains", name
            )


@pytest.fixture(scope="module")
def trust_operator(
    operator_kubeconfig: Path, lab: Lab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    process = Operator(operator_kubeconfig, tmp_path_factory.mktemp("trust-operator")).start()
    try:
        yield process
    finally:
        process.stop()


def _create(custom: client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> None:
    custom.create_namespaced_custom_object(*FLUX, namespace, "ocirepositories", body)


def _settled(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return wait_for(
        f"{namespace}/{name} checked",
        lambda: (c := condition(custom, namespace, name)) and c["reason"] not in ("Pending", "") and c,
        timeout=150,
    )


def test_no_combination_of_tenant_fields_gets_the_chain_robot_sent_to_the_tenant(
    trust_operator: Operator, lab: Lab, custom: client.CustomObjectsApi, control_plane: ControlPlane
) -> None:
    for fields in COMBINATIONS:
        name = _name(fields)
        _create(custom, lab.served, ocirepository(lab.served, name, lab.url(name), **_spec(fields)))
    outside = {"o-none": (), "o-insecure": ("insecure",), "o-own-ca": ("certSecretRef", "secretRef")}
    for name, fields in outside.items():
        _create(custom, lab.outside, ocirepository(lab.outside, name, lab.url(name), **_spec(fields)))

    settled = {_name(fields): _settled(custom, lab.served, _name(fields)) for fields in COMBINATIONS}
    assert not lab.recorder.heard(CHAIN_PW), [r for r in lab.recorder.requests if r.basic()]
    reached = [name for name in settled if lab.requests_of(name)]
    assert len(reached) >= 16, f"the recorder saw too few of the objects to prove anything: {reached}"
    for fields in COMBINATIONS:
        name = _name(fields)
        sent = [pair for request in lab.requests_of(name) for pair in request.basic()]
        if "provider" in fields and not {"secretRef", "serviceAccountName"} & set(fields):
            # The pod's cloud token: never over plain HTTP, never to a host that is not gcp's registry.
            assert (settled[name]["status"], settled[name]["reason"]) == ("Unknown", "InvalidSpec"), settled[
                name
            ]
            assert not lab.requests_of(name), "no request at all when the cloud token cannot go there"
        own = ":".join(TENANT) if "secretRef" in fields else ":".join(PULLER)
        trusted = "insecure" in fields or "certSecretRef" in fields
        if ("secretRef" in fields or "serviceAccountName" in fields) and trusted and "provider" not in fields:
            # The control: the recorder does receive credentials the tenant sends it.
            assert own in sent, (name, sent, settled[name])
        assert set(sent) <= {":".join(TENANT), ":".join(PULLER)}, (name, sent)

    for name in outside:
        found = _settled(custom, lab.outside, name)
        assert f"outside ProxyChain {lab.chain}'s namespaceSelector" in found["message"], found
    assert lab.requests_of("o-insecure") and not any(r.basic() for r in lab.requests_of("o-insecure"))
    assert {p for r in lab.requests_of("o-own-ca") for p in r.basic()} == {":".join(TENANT)}

    # check --kube, run by someone who may read it all, follows the same rules.
    for fields in (("insecure",), ("certSecretRef",), ("insecure", "proxySecretRef")):
        run = run_cli(
            "check",
            "--kube",
            "-n",
            lab.served,
            f"ocirepository/{_name(fields)}",
            env={"KUBECONFIG": str(control_plane.kubeconfig)},
        )
        assert "Traceback" not in run.output, run
    assert not lab.recorder.heard(CHAIN_PW)
    assert CHAIN_PW not in trust_operator.text()


def test_a_malformed_proxy_secret_never_stops_planning_the_others(
    trust_operator: Operator, lab: Lab, custom: client.CustomObjectsApi, control_plane: ControlPlane
) -> None:
    broken = control_plane.create_namespace("lw-broken")
    control_plane.apply(secret_document(broken, "bad-proxy", {"address": "http://me:hunter2@127.0.0.1:3l28"}))
    body = ocirepository(broken, "typo", lab.url("typo"), proxySecretRef={"name": "bad-proxy"})
    _create(custom, broken, body)
    found = _settled(custom, broken, "typo")
    assert found["status"] == "Unknown" and found["message"].startswith("spec.proxySecretRef: "), found
    assert "hunter2" not in found["message"] and "hunter2" not in trust_operator.text()

    # Planned after the broken object: a new OCIRepository in another namespace still gets its condition.
    _create(custom, lab.outside, ocirepository(lab.outside, "late", lab.url("late")))
    late = _settled(custom, lab.outside, "late")
    assert late["status"] == "Unknown", late
