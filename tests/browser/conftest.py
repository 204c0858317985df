"""Fixtures for the browser tests: Debian's chromium and a running ``layerwatch serve``.

`serve_lab` (tests/serve_harness.py) is the same lab the Prometheus tests use: the local chain
with healthy artifacts and one whose content layer is dropped at core.
"""

from __future__ import annotations

import shutil

import pytest
from tests.serve_harness import serve_lab  # noqa: F401 - a fixture, registered by importing it here


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium; skips the test when it is not installed."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed (Debian package chromium)", pytrace=False)
    return path
