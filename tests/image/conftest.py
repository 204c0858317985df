"""Fixtures for the container image tests: build with hack/build-image.sh (buildah), then look inside.

Build facts (times, size) are collected in `IMAGE_FACTS` and printed in the terminal summary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from image_support import BASE_IMAGE, BUILD_TIMEOUT, IMAGE_FACTS, REPO, Buildah, Container


@pytest.fixture(scope="session")
def buildah() -> Buildah:
    """buildah is a project dependency (hack/install-deps.sh): a missing one is a failure, not a skip."""
    if shutil.which("buildah") is None:
        pytest.fail("buildah is missing: run hack/install-deps.sh (make deps)")
    return Buildah()


@pytest.fixture(scope="session")
def built_image(buildah: Buildah) -> str:
    """hack/build-image.sh with the buildah builder; the image reference it printed last."""
    env = dict(os.environ, LAYERWATCH_BUILDER="buildah")
    started = time.monotonic()
    done = subprocess.run(
        [str(REPO / "hack/build-image.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        pytest.fail(
            f"hack/build-image.sh exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
        )
    image = done.stdout.strip().splitlines()[-1]
    IMAGE_FACTS["image"] = image
    IMAGE_FACTS["build_seconds"] = round(elapsed, 1)
    IMAGE_FACTS["build_log"] = [
        line for line in done.stderr.splitlines() if line.startswith(("build-image:", "base-image:"))
    ]
    return image


@pytest.fixture(scope="session")
def image_config(buildah: Buildah, built_image: str) -> dict[str, Any]:
    """The OCI image config (``config`` of the image JSON) of the built image."""
    return dict(buildah.inspect(built_image)["OCIv1"]["config"])


@pytest.fixture(scope="session")
def container(buildah: Buildah, built_image: str) -> Iterator[Container]:
    """One working container of the built image, removed at the end."""
    ctr = Container(buildah, built_image)
    try:
        yield ctr
    finally:
        ctr.remove()


@pytest.fixture(scope="session")
def base_root(buildah: Buildah, built_image: str) -> Iterator[Path]:
    """The mounted root filesystem of the debootstrap base the image was built on."""
    ctr = Container(buildah, BASE_IMAGE)
    try:
        yield ctr.root
    finally:
        ctr.remove()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not IMAGE_FACTS:
        return
    terminalreporter.section("container image")
    for line in IMAGE_FACTS.get("build_log", []):
        terminalreporter.write_line(line)
    for key, value in IMAGE_FACTS.items():
        if key != "build_log":
            terminalreporter.write_line(f"{key}: {value}")
