"""Fixtures for the install tests: the real Helm CLI and kubectl (kustomize), built when missing.

Missing tools are built (``hack/build-tools.sh helm kube``) once at collection end, before any test
runs, so a cold build is not charged to a test's timeout. A tool that cannot be built fails the tests
that need it; nothing is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.kube import BUILD_TOOLS, REPO

CHART = REPO / "charts" / "layerwatch"
MANIFESTS = REPO / "manifests"

_errors: dict[str, str] = {}


def tool_paths() -> dict[str, str]:
    """``hack/build-tools.sh paths``: where the pinned versions of the tools live."""
    out = subprocess.run(
        ["bash", str(BUILD_TOOLS), "paths"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _binary(name: str) -> Path:
    paths = tool_paths()
    return Path(paths["HELM"]) if name == "helm" else Path(paths["KUBE_DIR"]) / "kubectl"


def pytest_collection_finish(session: pytest.Session) -> None:
    here = Path(__file__).parent
    if not any(here in Path(str(item.path)).parents for item in session.items):
        return
    for name, target in (("helm", "helm"), ("kubectl", "kube")):
        if os.access(_binary(name), os.X_OK):
            continue
        started = time.monotonic()
        try:
            subprocess.run(["bash", str(BUILD_TOOLS), target], check=True, timeout=3600, stdout=sys.stderr)
        except (subprocess.SubprocessError, OSError) as exc:
            _errors[name] = f"{type(exc).__name__}: {exc}"
        print(f"\n[install] {name} built in {time.monotonic() - started:.0f} s", file=sys.stderr)


def _tool(name: str) -> Path:
    path = _binary(name)
    if name in _errors or not os.access(path, os.X_OK):
        pytest.fail(
            f"{name} not available ({_errors.get(name, path)}): run hack/build-tools.sh", pytrace=False
        )
    return path


@pytest.fixture(scope="session")
def helm() -> Path:
    return _tool("helm")


@pytest.fixture(scope="session")
def kubectl() -> Path:
    return _tool("kubectl")


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Helm's config, cache and data directories in a temporary place (never the user's)."""
    home = tmp_path_factory.mktemp("helm-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_") and k != "KUBECONFIG"}
    return env | {f"HELM_{kind}_HOME": str(home / kind.lower()) for kind in ("CONFIG", "CACHE", "DATA")}
