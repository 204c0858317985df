"""Paths and helpers shared by the monitoring tests (a uniquely named module, unlike conftest)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "manifests" / "monitoring"
RULES_FILE = MONITORING / "layerwatch.rules.yaml"
DASHBOARD_FILE = MONITORING / "dashboard.json"
RULES_TEST_FILE = Path(__file__).resolve().parent / "rules_test.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
GENERATOR = ROOT / "hack" / "dashboard" / "generate.py"


def load_generator() -> ModuleType:
    """Import hack/dashboard/generate.py by path (hack/ is not a package)."""
    spec = importlib.util.spec_from_file_location("layerwatch_monitoring_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_promtool(promtool: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run promtool; fail the calling test with its full output when it exits non-zero."""
    result = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"promtool {' '.join(args)} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
    return result
