"""A running ``layerwatch serve`` against the real local registry chain, for end-to-end tests.

`running_serve` starts a `LocalChain` (edge -> core -> origin), pushes Flux artifacts to the
origin, breaks one of them (its content layer dropped at core before anything pulls it, so no
proxy can have it cached), writes a serve config (the chain plus one Target per artifact), starts
``layerwatch serve`` on a free loopback port and waits until every target has a completed check.
Everything it starts is stopped when the context exits, also when start-up fails half-way.

The Prometheus and browser tests both use it (through fixtures in their conftest files), and
``live_exposition()`` in tests/prometheus/test_expressions.py scrapes one briefly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from lab.artifacts import PushedArtifact, push_flux_artifact
from lab.chain import LocalChain
from lab.process import LOOPBACK, LabError, free_port, log_tail, stop_process
from lab.registry import DOCKER_REGISTRY

__all__ = [
    "BROKEN",
    "BROKEN_HOP",
    "CHAIN",
    "HEALTHY",
    "ROOT",
    "ServeLab",
    "missing_tools",
    "running_serve",
    "serve_lab",
    "serving",
]

ROOT = Path(__file__).resolve().parents[1]
CHAIN = "lab"
TAG = "v1"
HEALTHY = ("podinfo", "team-apps")
"""Targets whose artifacts are fine at every hop."""
BROKEN = "platform-config"
"""The target whose content layer is dropped at `BROKEN_HOP`."""
BROKEN_HOP = "core"
REPOSITORIES = {"podinfo": "apps/podinfo", "team-apps": "teams/a/apps", "platform-config": "platform/config"}
START_TIMEOUT = 30.0
"""Seconds for ``/healthz`` to answer after the process starts."""
FIRST_CHECK_TIMEOUT = 60.0
"""Seconds for every target's first check (first checks fall within the first interval)."""


def _oras() -> str:
    return os.environ.get("ORAS") or str(Path.home() / ".cache/layerwatch/bin/oras")


def missing_tools() -> str | None:
    """Why the lab cannot run here (for ``pytest.skip``), or None when it can."""
    if not shutil.which(DOCKER_REGISTRY):
        return f"{DOCKER_REGISTRY} missing (apt-get install docker-registry)"
    if not os.access(_oras(), os.X_OK):
        return f"oras missing at {_oras()} (hack/build-tools.sh oras)"
    return None


@dataclasses.dataclass
class ServeLab:
    """The running chain and ``layerwatch serve``, and what was pushed to it."""

    chain: LocalChain
    url: str
    """``http://127.0.0.1:PORT`` of the serve process (metrics, status page, API)."""
    port: int
    config: Path
    log: Path
    artifacts: dict[str, PushedArtifact]
    """Target name -> the artifact pushed for it."""
    process: subprocess.Popen[bytes]

    @property
    def broken(self) -> PushedArtifact:
        return self.artifacts[BROKEN]

    def get(self, path: str, timeout: float = 10.0) -> httpx.Response:
        """GET a path of the serve process; fails with the process log if it died."""
        if self.process.poll() is not None:
            raise LabError(f"layerwatch serve exited with {self.process.returncode}:\n{log_tail(self.log)}")
        return httpx.get(f"{self.url}{path}", timeout=timeout)

    def status(self) -> dict[str, Any]:
        """``/api/v1/status`` as JSON."""
        response = self.get("/api/v1/status")
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document

    def metrics(self) -> str:
        """The ``/metrics`` exposition text."""
        response = self.get("/metrics")
        response.raise_for_status()
        return response.text

    def repository_at(self, hop: str, target: str) -> str:
        """Repository path of a target's artifact at ``hop`` (prefixes included)."""
        return self.chain.repository_at(hop, REPOSITORIES[target])


def _layerwatch() -> list[str]:
    if script := shutil.which("layerwatch"):
        return [script]
    return [sys.executable, "-c", "import sys; from layerwatch.cli import main; sys.exit(main())"]


def write_config(chain: LocalChain, path: Path, interval: str) -> Path:
    """The chain (edge credentials inline) and one Target per artifact, as ``serve --config`` reads."""
    chain_document = chain.chain_document(CHAIN)
    spec = chain_document["spec"]
    assert isinstance(spec, dict)
    spec["interval"] = interval
    targets = [
        {
            "kind": "Target",
            "name": name,
            "url": "oci://" + chain.reference(repository, TAG).rsplit(":", 1)[0],
            "ref": {"tag": TAG},
            "chain": CHAIN,
        }
        for name, repository in REPOSITORIES.items()
    ]
    path.write_text(yaml.safe_dump_all([chain_document, *targets], sort_keys=False))
    return path


def _wait_first_checks(lab: ServeLab, timeout: float) -> None:
    """Poll ``/healthz`` and then ``/api/v1/status`` until every target has a completed check."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if lab.get("/healthz", timeout=2.0).status_code == 200:
                artifacts = lab.status()["artifacts"]
                last = {a["name"]: a["checkedAt"] for a in artifacts}
                if len(artifacts) == len(REPOSITORIES) and all(a["checkedAt"] for a in artifacts):
                    return
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.2)
    raise LabError(
        f"not every target was checked within {timeout:.0f}s (last: {last!r}):\n{log_tail(lab.log, 40)}"
    )


@contextlib.contextmanager
def serving(config: Path, workdir: Path) -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    """``layerwatch serve --config CONFIG`` on a free loopback port: (port, log, process); stopped on exit."""
    port = free_port()
    log = workdir / "serve.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "operator"), env.get("PYTHONPATH")]))
    command = [
        *_layerwatch(),
        "serve",
        "--config",
        str(config),
        "--metrics-port",
        str(port),
        "--metrics-address",
        LOOPBACK,
        "--timeout",
        "10",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield port, log, process
    finally:
        stop_process(process)


@contextlib.contextmanager
def running_serve(workdir: Path | None = None, *, interval: str = "5s") -> Iterator[ServeLab]:
    """Start chain, pushes, faults and ``layerwatch serve``; yield once every target was checked."""
    if reason := missing_tools():
        raise LabError(reason)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="layerwatch-serve-")))
        chain = stack.enter_context(LocalChain())
        artifacts = {
            name: push_flux_artifact(chain.push_address, repository, TAG)
            for name, repository in REPOSITORIES.items()
        }
        # Break the artifact before anything pulls it, so neither proxy can have the layer cached.
        chain.faults(BROKEN_HOP).set(
            [
                {
                    "kind": "drop",
                    "repository": chain.repository_at(BROKEN_HOP, REPOSITORIES[BROKEN]),
                    "digest": artifacts[BROKEN].content_layer.digest,
                }
            ]
        )
        config = write_config(chain, workdir / "serve.yaml", interval)
        port, log, process = stack.enter_context(serving(config, workdir))
        lab = ServeLab(chain, f"http://{LOOPBACK}:{port}", port, config, log, artifacts, process)
        _wait_first_checks(lab, START_TIMEOUT + FIRST_CHECK_TIMEOUT)
        yield lab


@pytest.fixture(scope="session")
def serve_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeLab]:
    """One running chain + ``layerwatch serve`` per test session (per conftest that imports it)."""
    if reason := missing_tools():
        pytest.skip(reason)
    with running_serve(tmp_path_factory.mktemp("serve")) as lab:
        yield lab
