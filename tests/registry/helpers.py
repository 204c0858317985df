"""Running the real layerwatch engine and CLI against the lab chain (`lab.chain.LocalChain`).

Two ways in, so both are covered: `engine_check` builds `RegistryClient`s from a chain file with
`layerwatch.config.load_chain_file` and calls `check_target` in-process; `run_cli` runs the
installed ``layerwatch`` console script as a user would.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from lab.chain import ChainLayout
from layerwatch.chain import Mode
from layerwatch.check import check_target
from layerwatch.config import FileSettings, load_chain_file
from layerwatch.reference import Reference
from layerwatch.registry import RegistryClient
from layerwatch.settings import EngineSettings
from layerwatch.signatures import Provider
from layerwatch.verdict import CheckResult

__all__ = [
    "CLI_TIMEOUT",
    "FAST",
    "HOPS",
    "CliRun",
    "chain_file",
    "cli_environment",
    "closed_port_url",
    "engine_check",
    "engine_check_async",
    "hop_verdicts",
    "layerwatch_command",
    "run_cli",
]

HOPS = ("edge", "core", "origin")
CLI_TIMEOUT = 90.0
FAST = EngineSettings(timeout=5.0, retries=1, backoff=0.05, retry_budget=3.0)
"""Client settings for checks that are meant to fail: short timeouts, one retry, a small 429 budget."""

_REPO_ROOT = Path(__file__).resolve().parents[2]


def closed_port_url() -> str:
    """``http://127.0.0.1:9``: the discard port, closed on a test box (connection refused)."""
    return "http://127.0.0.1:9"


def chain_file(
    chain: ChainLayout[Any],
    directory: Path,
    *,
    urls: Mapping[str, str] | None = None,
    credentials: Mapping[str, tuple[str, str] | None] | None = None,
    name: str = "lab",
) -> Path:
    """Write the lab's ProxyChain (hop credentials inline) to ``directory/chain.yaml``.

    ``urls`` replaces hop URLs (e.g. a closed port), ``credentials`` replaces or removes a hop's
    ``username``/``password``. An empty docker config sits beside it so nothing from ``~/.docker``
    leaks into a test.
    """
    document: dict[str, Any] = chain.chain_document(name)
    for hop in document["spec"]["hops"]:
        if urls and hop["name"] in urls:
            hop["url"] = urls[hop["name"]]
        if credentials and hop["name"] in credentials:
            hop.pop("username", None)
            hop.pop("password", None)
            pair = credentials[hop["name"]]
            if pair is not None:
                hop["username"], hop["password"] = pair
    path = directory / "chain.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    empty_docker_config(directory)
    return path


def empty_docker_config(directory: Path) -> Path:
    path = directory / "docker-config.json"
    if not path.exists():
        path.write_text("{}")
    return path


async def engine_check_async(
    path: Path,
    reference: Reference,
    settings: EngineSettings | None = None,
    mode: Mode = Mode.FULL,
    layer_media_type: str | None = None,
    verify: Provider | None = None,
) -> CheckResult:
    """`engine_check` inside a running event loop (beside in-process fakes)."""
    settings = settings or EngineSettings()
    chain = load_chain_file(path, FileSettings(docker_config=empty_docker_config(path.parent)))
    pull_path = chain.pull_path(reference)
    clients = {t.hop.name: RegistryClient.for_hop(t.hop, settings) for t in pull_path}
    try:
        return await check_target(
            reference, pull_path, clients, mode=mode, layer_media_type=layer_media_type, verify=verify
        )
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.values()))


def engine_check(
    path: Path,
    reference: str,
    *,
    settings: EngineSettings | None = None,
    mode: Mode = Mode.FULL,
    layer_media_type: str | None = None,
    verify: Provider | None = None,
) -> CheckResult:
    """One in-process check of ``reference`` over the chain in ``path``, with fresh clients."""
    return asyncio.run(
        engine_check_async(path, Reference.parse(reference), settings, mode, layer_media_type, verify)
    )


def hop_verdicts(result: CheckResult | Mapping[str, Any]) -> dict[str, str]:
    """``{hop: verdict}`` from a `CheckResult` or a ``--output json`` report."""
    if isinstance(result, CheckResult):
        return {v.hop: v.verdict.value for v in result.judgement.hops}
    return {hop["name"]: hop["verdict"] for hop in result["hops"]}


class CliRun:
    """A finished ``layerwatch`` run: exit status, stdout, stderr (and the JSON report, if any)."""

    def __init__(self, done: subprocess.CompletedProcess[str]) -> None:
        self.status = done.returncode
        self.stdout = done.stdout
        self.stderr = done.stderr

    @property
    def report(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.stdout)
        return document

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __repr__(self) -> str:
        return f"CliRun(status={self.status}, stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-2000:]!r})"


def layerwatch_command() -> list[str]:
    """The installed console script (the way users run it), else the module from this checkout."""
    if script := shutil.which("layerwatch"):
        return [script]
    return [sys.executable, "-c", "import sys; from layerwatch.cli import main; sys.exit(main())"]


def cli_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with this checkout's package first on the path, no ambient docker
    config, and ``env`` on top: how every ``layerwatch`` child of the tests runs."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(_REPO_ROOT / "operator"), environment.get("PYTHONPATH")])
    )
    environment.pop("DOCKER_CONFIG", None)
    environment.update(env or {})
    return environment


def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = CLI_TIMEOUT) -> CliRun:
    """Run ``layerwatch ARGS`` (see `cli_environment`) to completion."""
    command: Sequence[str] = [*layerwatch_command(), *args]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=cli_environment(env), check=False
    )
    return CliRun(done)
