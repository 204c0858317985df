"""End to end: an OCIRepository with ``spec.verify`` (cosign, public key Secret) through a hop that
lost the signature. layerwatch says so at once; Flux notices only when the next revision comes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.e2e.flux_harness import create_ocirepository, fresh_repository, holds, wait_conditions
from tests.e2e.source_controller import SourceController, poll
from tests.k8s.operator_harness import CONDITION, Operator, events

from lab.artifacts import push_flux_artifact
from lab.chain import LocalChain
from lab.kube import ControlPlane
from lab.signing import Signer
from layerwatch.signatures import sig_tag

pytestmark = pytest.mark.e2e


def _push_signed(chain: LocalChain, signer: Signer, repository: str, tag: str, marker: str) -> str:
    pushed = push_flux_artifact(chain.push_address, repository, tag, {"marker.txt": marker.encode()})
    signer.cosign_sign(f"{chain.push_address}/{repository}@{pushed.manifest_digest}", bundle=False)
    return pushed.manifest_digest


def _verified(conditions: dict[str, dict[str, Any]]) -> bool:
    return (
        holds(conditions, "Ready", "True", "Succeeded")
        and holds(conditions, "SourceVerified", "True")
        and holds(conditions, CONDITION, "True", "Healthy")
    )


def test_a_hop_that_lost_the_signature_is_signature_missing_and_the_next_revision_fails_flux(
    chain: LocalChain,
    source_controller: SourceController,
    layerwatch: Operator,
    control_plane: ControlPlane,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    tmp_path: Path,
) -> None:
    signer = Signer(tmp_path)
    _, public_key = signer.cosign_keys()
    control_plane.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "cosign-pub", "namespace": namespace},
            "stringData": {"cosign.pub": public_key.read_text()},
        }
    )
    repository, url = fresh_repository(chain)
    first = _push_signed(chain, signer, repository, "v1", "first")
    verify = {"provider": "cosign", "secretRef": {"name": "cosign-pub"}}
    create_ocirepository(custom, namespace, "signed", url, "v1", verify=verify)
    controllers = (source_controller, layerwatch)
    body, conditions = wait_conditions(
        custom, namespace, "signed", "Ready, SourceVerified and ProxyHealthy True", _verified, controllers
    )
    assert body["status"]["artifact"]["revision"] == f"v1@{first}"

    # core loses the .sig tag (a proxy that never cached it, or dropped it). Flux has verified this
    # revision already and does not look again: it stays Ready. layerwatch sees it now.
    core_repository = chain.repository_at("core", repository)
    lost = [{"kind": "drop", "repository": core_repository, "tag": sig_tag(first)}]
    chain.faults("core").set(lost)
    body, conditions = wait_conditions(
        custom,
        namespace,
        "signed",
        "ProxyHealthy=False SignatureMissing",
        lambda c: holds(c, CONDITION, "False", "SignatureMissing"),
        controllers,
    )
    message = conditions[CONDITION]["message"]
    assert message.startswith(f"hop core ({chain.hop('core').address}/p-ghcr/{repository}): "), message
    assert sig_tag(first) in message, message
    assert holds(conditions, "Ready", "True", "Succeeded") and holds(conditions, "SourceVerified", "True")
    warnings = poll(
        "layerwatch's Warning event",
        lambda: [e for e in events(core, namespace, "signed") if e.type == "Warning"],
        60,
    )
    assert [e.reason for e in warnings] == ["SignatureMissing"], [(e.reason, e.message) for e in warnings]
    assert warnings[0].message.startswith("hop core ("), warnings[0].message

    # The next release: signed at the origin, but core loses its .sig tag too. Flux pulls the new
    # revision through the chain and fails verification, as layerwatch predicted.
    second = _push_signed(chain, signer, repository, "v1", "second")
    lost.append({"kind": "drop", "repository": core_repository, "tag": sig_tag(second)})
    chain.faults("core").set(lost)
    body, conditions = wait_conditions(
        custom,
        namespace,
        "signed",
        "SourceVerified=False for the new revision",
        lambda c: holds(c, "SourceVerified", "False"),
        controllers,
    )
    verified = conditions["SourceVerified"]
    print(f"\n[e2e] Flux on the new revision: {verified['reason']}: {verified['message']!r}")
    assert verified["reason"] == "VerificationError", verified
    assert "no matching signatures" in verified["message"] and second in verified["message"], verified
    assert body["status"]["artifact"]["revision"] == f"v1@{first}", "Flux keeps the last verified artifact"
    assert holds(conditions, CONDITION, "False", "SignatureMissing"), conditions[CONDITION]
    assert conditions[CONDITION]["message"].startswith("hop core ("), conditions[CONDITION]
