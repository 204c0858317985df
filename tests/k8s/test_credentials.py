"""The operator sees what Flux sees: serviceAccountName pull secrets, proxies from Secrets.

A ProxyChain whose edge hop has no credentials of its own, reached through an authenticating
tinyproxy (the proxy's credentials in a Secret): an OCIRepository whose ServiceAccount lists the
edge's pull secret is checked Healthy, one without is AuthFailed; one with a proxySecretRef goes
through that other proxy instead. The proxies' own logs say which requests passed them.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from tests.k8s.operator_harness import (
    FLUX,
    LAB_INTERVAL,
    LW,
    Operator,
    condition,
    ocirepository,
    proxychain_document,
    push_artifact,
    wait_for,
)
from tests.k8s.test_operator import operator  # noqa: F401 - the operator fixture, shared

from lab.artifacts import push_flux_artifact
from lab.certs import TestCA
from lab.chain import LocalChain
from lab.kube import ControlPlane
from lab.proxy import TINYPROXY, TinyProxy
from lab.registry import RegistryProcess

pytestmark = pytest.mark.k8s

PROXY_USER = ("lw-chain-proxy", "chain-proxy-pw-51c")


@pytest.fixture(scope="module")
def proxies() -> Iterator[tuple[TinyProxy, TinyProxy]]:
    """(the chain's authenticating proxy, an OCIRepository's own proxy)."""
    if not shutil.which(TINYPROXY):
        pytest.fail(f"{TINYPROXY} missing (hack/install-deps.sh installs tinyproxy)", pytrace=False)
    with TinyProxy(user=PROXY_USER) as chain_proxy, TinyProxy() as own_proxy:
        yield chain_proxy, own_proxy


@pytest.fixture(scope="module")
def bare_chain(
    control_plane: ControlPlane, chain: LocalChain, proxies: tuple[TinyProxy, TinyProxy]
) -> Iterator[str]:
    """The lab chain with no credentials on the edge, which is reached through the chain proxy."""
    control_plane.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "lab-proxy", "namespace": "layerwatch"},
            "stringData": {"username": PROXY_USER[0], "password": PROXY_USER[1]},
        }
    )
    name = f"bare-{secrets.token_hex(3)}"
    document = proxychain_document(chain, name, LAB_INTERVAL)
    edge = document["spec"]["hops"][0]
    del edge["secretRef"]
    edge["proxy"] = {"address": proxies[0].url, "secretRef": {"name": "lab-proxy", "namespace": "layerwatch"}}
    control_plane.apply(document)
    yield name
    client.CustomObjectsApi(control_plane.api_client()).delete_cluster_custom_object(*LW, "proxychains", name)


def _pull_secret(core: client.CoreV1Api, namespace: str, chain: LocalChain) -> None:
    user, password = chain.hop("edge").credentials or ("", "")
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config = {"auths": {chain.hop("edge").address: {"auth": auth}}}
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "edge-pull"},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": json.dumps(config)},
        },
    )
    core.create_namespaced_service_account(
        namespace, {"metadata": {"name": "puller"}, "imagePullSecrets": [{"name": "edge-pull"}]}
    )


def _settled(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return wait_for(
        f"{name} checked",
        lambda: (c := condition(custom, namespace, name)) and c["reason"] not in ("Pending", "") and c,
    )


def test_service_account_pull_secrets_and_proxies_reach_the_entry_hop(
    operator: Operator,  # noqa: F811 - the shared fixture
    chain: LocalChain,
    bare_chain: str,
    proxies: tuple[TinyProxy, TinyProxy],
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    chain_proxy, own_proxy = proxies
    _pull_secret(core, namespace, chain)
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "own-proxy"}, "stringData": {"address": own_proxy.url}}
    )
    repository, url, _ = push_artifact(chain)
    pick = {"metadata": {"annotations": {"layerwatch.io/chain": bare_chain}}}
    bodies = {
        "with-sa": ocirepository(namespace, "with-sa", url, serviceAccountName="puller"),
        "without-sa": ocirepository(namespace, "without-sa", url),
        "own-proxy": ocirepository(
            namespace, "own-proxy", url, serviceAccountName="puller", proxySecretRef={"name": "own-proxy"}
        ),
    }
    for body in bodies.values():
        body["metadata"] |= pick["metadata"]
        custom.create_namespaced_custom_object(*FLUX, namespace, "ocirepositories", body)

    assert _settled(custom, namespace, "with-sa")["reason"] == "Healthy"
    refused = _settled(custom, namespace, "without-sa")
    assert (refused["status"], refused["reason"]) == ("Unknown", "AuthFailed")
    assert _settled(custom, namespace, "own-proxy")["reason"] == "Healthy"

    at_edge = f" {chain.hop('edge').gateway.url}/v2/{chain.repository_at('edge', repository)}/manifests/"
    assert any(at_edge in line for line in chain_proxy.requests()), chain_proxy.log()[-2000:]
    assert any(at_edge in line for line in own_proxy.requests()), own_proxy.log()[-2000:]
    # Neither the pull secret's password nor the proxy's shows in logs, events or metrics.
    said = operator.text() + operator.metrics()
    said += "".join(f"{e.reason} {e.message}" for e in core.list_namespaced_event(namespace).items)
    for body in bodies:
        said += str(condition(custom, namespace, body))
    for secret in (PROXY_USER[1], (chain.hop("edge").credentials or ("", "x"))[1]):
        assert secret not in said


@pytest.mark.parametrize(
    ("hop", "message"),
    [
        (
            {"proxy": {"address": "http://me:hunter2@proxy.corp:3128"}},
            "without credentials (they go in secretRef)",
        ),
        ({"provider": "alibaba"}, "spec.hops[0].provider: Unsupported value"),
        ({"certSecretRef": {"name": "mtls"}}, "spec.hops[0].certSecretRef.namespace: Required value"),
    ],
)
def test_the_crd_refuses_bad_credential_and_network_fields(
    custom: client.CustomObjectsApi, hop: dict[str, Any], message: str
) -> None:
    body = {
        "apiVersion": "layerwatch.io/v1alpha1",
        "kind": "ProxyChain",
        "metadata": {"name": f"bad-{secrets.token_hex(3)}"},
        "spec": {"hops": [{"name": "origin", "url": "https://ghcr.io", **hop}]},
    }
    with pytest.raises(client.exceptions.ApiException) as info:
        custom.create_cluster_custom_object(*LW, "proxychains", body)
    assert info.value.status == 422 and message in str(info.value.body)
    assert "hunter2" not in str(info.value.body)


@pytest.fixture(scope="module")
def mtls_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RegistryProcess, dict[str, str]]]:
    """An HTTPS registry that requires client certificates, holding org/app:v1; and the PEMs."""
    directory = tmp_path_factory.mktemp("k8s-mtls")
    ca = TestCA(directory)
    server, client_pair = ca.issue("server"), ca.issue("client", client=True)
    with RegistryProcess("k8s-mtls-origin") as origin:
        push_flux_artifact(origin.address, "org/app", "v1")
        with RegistryProcess("k8s-mtls", remote_url=origin.url, tls=server, client_cas=ca.path) as registry:
            pems = {
                "ca.crt": ca.path.read_text(),
                "tls.crt": client_pair[0].read_text(),
                "tls.key": client_pair[1].read_text(),
            }
            yield registry, pems


def test_client_certificates_from_a_proxychain_hop_and_an_ocirepository_pass_mtls(
    operator: Operator,  # noqa: F811 - the shared fixture
    mtls_registry: tuple[RegistryProcess, dict[str, str]],
    control_plane: ControlPlane,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    registry, pems = mtls_registry
    ca_only = {"ca.crt": pems["ca.crt"]}
    for name, data, where in (("chain-mtls", pems, "layerwatch"), ("repo-mtls", pems, namespace)):
        control_plane.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {"name": name, "namespace": where},
                "stringData": data,
            }
        )
    control_plane.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "ca-only", "namespace": namespace},
            "stringData": ca_only,
        }
    )
    chains = {
        "with-cert": {
            "name": "registry",
            "url": registry.url,
            "certSecretRef": {"name": "chain-mtls", "namespace": "layerwatch"},
        },
        "ca-only": {
            "name": "registry",
            "url": registry.url,
            "caSecretRef": {"name": "chain-mtls", "namespace": "layerwatch"},
        },
    }
    names = {}
    for label, hop in chains.items():
        names[label] = f"mtls-{label}-{secrets.token_hex(3)}"
        control_plane.apply(
            {
                "apiVersion": "layerwatch.io/v1alpha1",
                "kind": "ProxyChain",
                "metadata": {"name": names[label]},
                "spec": {"hops": [hop], "interval": LAB_INTERVAL},
            }
        )
    url = f"oci://{registry.address}/org/app"
    repos = {
        "chain-cert": ocirepository(namespace, "chain-cert", url, insecure=False),
        "own-cert": ocirepository(
            namespace, "own-cert", url, insecure=False, certSecretRef={"name": "repo-mtls"}
        ),
        "no-cert": ocirepository(
            namespace, "no-cert", url, insecure=False, certSecretRef={"name": "ca-only"}
        ),
    }
    chain_of = {"chain-cert": "with-cert", "own-cert": "ca-only", "no-cert": "ca-only"}
    try:
        for name, body in repos.items():
            body["metadata"]["annotations"] = {"layerwatch.io/chain": names[chain_of[name]]}
            custom.create_namespaced_custom_object(*FLUX, namespace, "ocirepositories", body)
        assert _settled(custom, namespace, "chain-cert")["reason"] == "Healthy"
        assert _settled(custom, namespace, "own-cert")["reason"] == "Healthy"
        refused = _settled(custom, namespace, "no-cert")
        assert (refused["status"], refused["reason"]) == ("Unknown", "Unreachable")
        assert "PRIVATE KEY" not in operator.text()
    finally:
        for name in names.values():
            custom.delete_cluster_custom_object(*LW, "proxychains", name)
