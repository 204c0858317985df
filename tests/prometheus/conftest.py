"""Fixtures for the monitoring tests: promtool, the rules, the generator in hack/dashboard/, and
prometheus plus a running ``layerwatch serve`` on the lab chain (`serve_lab`, from tests/serve_harness.py)."""

from __future__ import annotations

import shutil
from types import ModuleType
from typing import Any

import pytest
import yaml
from monitoring_support import RULES_FILE, load_generator
from tests.serve_harness import serve_lab  # noqa: F401 - a fixture, registered by importing it here


@pytest.fixture(scope="session")
def generate() -> ModuleType:
    """The monitoring manifest generator module."""
    return load_generator()


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of Debian's promtool; skips the test when it is not installed."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed (Debian package prometheus)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def rules() -> dict[str, Any]:
    """The plain Prometheus rules file."""
    loaded: dict[str, Any] = yaml.safe_load(RULES_FILE.read_text())
    return loaded


@pytest.fixture(scope="session")
def alerts(rules: dict[str, Any]) -> list[dict[str, Any]]:
    """Every alerting rule of every group."""
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """Path of Debian's prometheus server; skips the test when it is not installed."""
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail("prometheus is not installed (Debian package prometheus)", pytrace=False)
    return path
