"""``layerwatch operator --log-level debug`` on a real apiserver never logs the Secrets it reads.

The operator reads the ProxyChain's robot Secret to check through the edge; at debug level the
Kubernetes client would print that Secret's body. The whole log must hold neither the password
nor its base64, while the check with those credentials succeeds.
"""

from __future__ import annotations

import base64
import signal
from pathlib import Path

from kubernetes import client
from tests.k8s.operator_harness import FLUX, Operator, condition, ocirepository, push_artifact, wait_for

from lab.chain import LocalChain


def test_debug_logs_hold_no_secret_the_operator_read(
    chain: LocalChain,
    proxychain: str,
    operator_kubeconfig: Path,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
) -> None:
    credentials = chain.hop("edge").credentials
    assert credentials is not None
    user, password = credentials
    _, url, _ = push_artifact(chain)
    operator = Operator(operator_kubeconfig, tmp_path, "--log-level", "debug").start()
    try:
        for name, where in (("app", url), ("elsewhere", "oci://registry.elsewhere.example/org/app")):
            document = ocirepository(namespace, name, where)
            custom.create_namespaced_custom_object(*FLUX, namespace, "ocirepositories", document)
        healthy = wait_for(
            "ProxyHealthy=True", lambda: (c := condition(custom, namespace, "app")) and c["status"] == "True"
        )
        assert healthy  # checked through the edge with the Secret's robot account
    finally:
        operator.stop()
    log = operator.text()
    assert operator.process is not None and operator.process.returncode in (0, -signal.SIGTERM), log[-2000:]
    assert f"not watching {namespace}/elsewhere" in log  # a debug line: debug was really on
    for secret in (password, base64.b64encode(password.encode()).decode()):
        assert secret not in log
    assert base64.b64encode(f"{user}:{password}".encode()).decode() not in log
