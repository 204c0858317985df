"""docs/report.schema.json describes what `layerwatch check -o json` really prints.

Real CLI runs against the lab chain (edge -> core -> origin) for each kind of outcome: healthy,
unhealthy (a layer dropped at core), a Flux artifact with its layers in the wrong order, a head-mode
check, an unreachable registry, several references in one run, and a configuration error; every
output must validate against the schema.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from lab.artifacts import push_flux_artifact, push_multilayer_artifact
from lab.chain import LocalChain
from lab.kube import REPO
from lab.process import free_port

pytestmark = pytest.mark.registry

SCHEMA = json.loads((REPO / "docs" / "report.schema.json").read_text())


@pytest.fixture(scope="module")
def chain() -> Iterator[LocalChain]:
    with LocalChain() as lab:
        yield lab


@pytest.fixture(scope="module")
def chain_file(chain: LocalChain, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chain.write_chain_yaml(tmp_path_factory.mktemp("schema") / "chain.yaml")


def check(*args: str) -> tuple[int, dict[str, Any]]:
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")])
    }
    done = subprocess.run(
        [sys.executable, "-m", "layerwatch.cli", "check", "--output", "json", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    return done.returncode, json.loads(done.stdout)


def valid(report: dict[str, Any]) -> dict[str, Any]:
    validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(report)]
    assert not errors, "\n".join(errors)
    return report


def test_the_schema_itself_is_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.fixture(scope="module")
def artifacts(chain: LocalChain) -> Iterator[tuple[str, str]]:
    """References of a healthy artifact and of one whose content layer is gone at core."""
    healthy_repo, broken_repo = (f"org/schema-{secrets.token_hex(3)}" for _ in range(2))
    push_flux_artifact(chain.push_address, healthy_repo, "v1")
    broken = push_flux_artifact(chain.push_address, broken_repo, "v1")
    drop = {
        "kind": "drop",
        "repository": chain.repository_at("core", broken_repo),
        "digest": broken.content_layer.digest,
    }
    chain.faults("core").set([drop])
    try:
        yield f"oci://{chain.reference(healthy_repo, 'v1')}", f"oci://{chain.reference(broken_repo, 'v1')}"
    finally:
        chain.faults("core").clear()


def test_healthy_and_unhealthy_reports_match_the_schema(chain_file: Path, artifacts: tuple[str, str]) -> None:
    healthy, broken = artifacts
    code, report = check("--chain", str(chain_file), healthy)
    assert code == 0 and valid(report)["verdict"] == "Healthy" and report["blame"] is None
    assert [hop["name"] for hop in report["hops"]] == ["edge", "core", "origin"]
    code, report = check("--chain", str(chain_file), broken)
    assert code == 1 and valid(report)["verdict"] == "LayerMissing" and report["blame"] == "core"
    statuses = {blob["status"] for hop in report["hops"] for blob in hop["layers"]}
    assert statuses == {"ok", "missing"}
    code, report = check("--chain", str(chain_file), "--mode", "head", healthy)
    assert code == 0 and valid(report)["mode"] == "head"


def test_a_wrongly_ordered_artifact_report_matches_the_schema(chain: LocalChain, chain_file: Path) -> None:
    repository = f"org/schema-{secrets.token_hex(3)}"
    push_multilayer_artifact(chain.push_address, repository, "v1")
    code, report = check("--chain", str(chain_file), f"oci://{chain.reference(repository, 'v1')}")
    assert code == 1 and valid(report)["verdict"] == "LayerOrderMismatch"
    assert [layer["index"] for layer in report["hops"][0]["layers"]] == [0, 1]


def test_an_unreachable_registry_report_matches_the_schema() -> None:
    code, report = check("--plain-http", "--timeout", "5", f"127.0.0.1:{free_port()}/org/app:v1")
    assert code == 3 and valid(report)["verdict"] == "Unreachable"
    (hop,) = report["hops"]
    assert hop["manifestDigest"] is None and hop["config"] is None and hop["layers"] == []


def test_several_references_give_a_combined_report_matching_the_schema(
    chain_file: Path, artifacts: tuple[str, str]
) -> None:
    code, report = check("--chain", str(chain_file), *artifacts)
    assert code == 1 and valid(report)["verdict"] == "LayerMissing"
    assert report["counts"] == {"healthy": 1, "unknown": 0, "unhealthy": 1}
    assert [c["verdict"] for c in report["checks"]] == ["Healthy", "LayerMissing"]


def test_a_configuration_error_is_an_error_object_matching_the_schema() -> None:
    code, report = check("--hop", "edge", "127.0.0.1:1/org/app:v1")
    assert code == 2 and valid(report)["error"]["kind"] == "config"
    assert "--hop" in report["error"]["message"]
