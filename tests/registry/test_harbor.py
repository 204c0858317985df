"""layerwatch against real Harbor v2.15.2 proxy caches: edge Harbor -> core Harbor -> origin registry.

One chain for the whole session (the ``harbor_chain`` fixture; Harbor is built by
``hack/build-tools.sh harbor``). Both Harbor projects are private proxy-cache projects; layerwatch
reaches each with that project's robot account through Harbor's own token service. Each test pulls
a repository no other test touched, so every check starts from cold caches at both Harbors.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest
from tests.registry.helpers import CliRun, chain_file, engine_check, hop_verdicts, run_cli

from lab.artifacts import PushedArtifact, push_flux_artifact
from lab.harbor import HarborChain
from layerwatch.chain import Mode

pytestmark = [pytest.mark.registry, pytest.mark.harbor]

HOPS = {"edge": "Healthy", "core": "Healthy", "origin": "Healthy"}
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


@pytest.fixture
def pushed(harbor_chain: HarborChain, fresh_repo: str) -> PushedArtifact:
    """A Flux artifact at the origin under a repository no Harbor has seen (cold at both hops)."""
    return push_flux_artifact(harbor_chain.push_address, fresh_repo, "v1")


def _token(harbor_chain: HarborChain, hop: str, repository: str, credentials: tuple[str, str] | None) -> str:
    """A pull token from the hop's own ``/service/token``, as a client gets it after a 401."""
    harbor = harbor_chain.harbor(hop)
    path = harbor_chain.repository_at(hop, repository)
    challenge = httpx.get(f"{harbor.base_url}/v2/{path}/manifests/v1", timeout=10.0)
    assert challenge.status_code == 401, "a private proxy project answers anonymous pulls with 401"
    fields = dict(_CHALLENGE.findall(challenge.headers["www-authenticate"]))
    answer = httpx.get(
        fields["realm"],
        params={"service": fields["service"], "scope": f"repository:{path}:pull"},
        auth=credentials,
        timeout=10.0,
    )
    answer.raise_for_status()
    return str(answer.json()["token"])


def _check_json(harbor_chain: HarborChain, pushed: PushedArtifact, path: Path) -> CliRun:
    """``layerwatch check --output json`` of the pushed artifact at the edge, over the chain file."""
    reference = f"oci://{harbor_chain.reference(pushed.repository, pushed.tag)}"
    return run_cli("check", "--chain", str(path), "--output", "json", reference)


def test_a_flux_artifact_through_two_cold_harbors_is_healthy_at_every_hop_in_full_mode(
    harbor_chain: HarborChain, pushed: PushedArtifact, tmp_path: Path
) -> None:
    path = chain_file(harbor_chain, tmp_path)
    run = _check_json(harbor_chain, pushed, path)
    assert run.status == 0, run
    assert hop_verdicts(run.report) == HOPS
    assert pushed.manifest_digest in run.stdout, "the report names the digest the origin has"


def test_head_mode_is_healthy_although_a_cold_harbor_answers_head_404_for_every_blob(
    harbor_chain: HarborChain, pushed: PushedArtifact, tmp_path: Path
) -> None:
    edge = harbor_chain.harbor("edge")
    token = _token(harbor_chain, "edge", pushed.repository, edge.credentials)
    path = harbor_chain.repository_at("edge", pushed.repository)
    blob = httpx.head(
        f"{edge.base_url}/v2/{path}/blobs/{pushed.content_layer.digest}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10.0,
    )
    assert blob.status_code == 404, "Harbor v2.15.2 answers HEAD only from its own cache"
    result = engine_check(
        chain_file(harbor_chain, tmp_path), harbor_chain.reference(pushed.repository, "v1"), mode=Mode.HEAD
    )
    assert hop_verdicts(result) == HOPS, result.judgement


def test_without_the_robot_account_the_private_edge_project_is_auth_failed(
    harbor_chain: HarborChain, pushed: PushedArtifact, tmp_path: Path
) -> None:
    path = chain_file(harbor_chain, tmp_path, credentials={"edge": None})
    run = _check_json(harbor_chain, pushed, path)
    verdicts = hop_verdicts(run.report)
    assert verdicts["edge"] == "AuthFailed", run
    assert verdicts["core"] == verdicts["origin"] == "Healthy", run


def test_a_wrong_robot_secret_is_auth_failed_although_harbor_hands_out_a_token_for_it(
    harbor_chain: HarborChain, pushed: PushedArtifact, tmp_path: Path
) -> None:
    robot, _ = harbor_chain.harbor("edge").credentials or ("", "")
    path = chain_file(harbor_chain, tmp_path, credentials={"edge": (robot, "not-the-secret")})
    run = _check_json(harbor_chain, pushed, path)
    assert hop_verdicts(run.report)["edge"] == "AuthFailed", run
    assert "not-the-secret" not in run.output


def test_every_process_of_every_harbor_listens_on_loopback_only(harbor_chain: HarborChain) -> None:
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    addresses: dict[int, set[str]] = {}
    for line in listening.splitlines():
        host, _, port = line.split()[3].rpartition(":")
        addresses.setdefault(int(port), set()).add(host)
    for harbor in harbor_chain.harbors:
        assert set(harbor.processes.ports) == {"core", "jobservice", "registry", "redis", "postgres"}
        for name, port in harbor.processes.ports.items():
            assert addresses.get(port) == {"127.0.0.1"}, (
                f"{harbor.name} {name} listens on {addresses.get(port)}"
            )
