"""Helpers for the container image tests: buildah with hack/build-image.sh's storage, working containers.

Everything goes through the same buildah storage hack/build-image.sh uses (vfs under
~/.cache/layerwatch/buildah), so the cached debootstrap base and cached layers are reused between runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "layerwatch"
BUILDAH_ROOT = Path(os.environ.get("BUILDAH_ROOT") or CACHE / "buildah/root")
BUILDAH_RUNROOT = Path(os.environ.get("BUILDAH_RUNROOT") or CACHE / "buildah/runroot")
BASE_IMAGE = "localhost/layerwatch-base:bookworm"
BUILD_TIMEOUT = 1500.0

IMAGE_FACTS: dict[str, Any] = {}
"""What the build measured; printed at the end of the run (and kept as junit properties by the tests)."""


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


class Buildah:
    """buildah with the storage options hack/build-image.sh uses (vfs, storage under ~/.cache)."""

    def __init__(self) -> None:
        self.env = dict(os.environ, BUILDAH_ISOLATION="chroot")

    def command(self, *args: str) -> list[str]:
        return [
            "buildah",
            "--root",
            str(BUILDAH_ROOT),
            "--runroot",
            str(BUILDAH_RUNROOT),
            "--storage-driver",
            "vfs",
            *args,
        ]

    def run(self, *args: str, timeout: float = 300.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.command(*args), capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"buildah {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )
        return done

    def inspect(self, image: str) -> dict[str, Any]:
        return dict(json.loads(self.run("inspect", "--type", "image", image).stdout))


class Container:
    """A working container of an image: its root filesystem mounted on the host, and `buildah run`."""

    def __init__(self, buildah: Buildah, image: str) -> None:
        self.buildah = buildah
        self.name = buildah.run("from", "--pull=never", image).stdout.strip()
        self.root = Path(buildah.run("mount", self.name).stdout.strip())

    def exec(
        self, *command: str, volumes: tuple[str, ...] = (), timeout: float = 180.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in the container as the image's user, on the host's network (the lab's)."""
        options = ["--network", "host", *(f"--volume={v}" for v in volumes)]
        return self.buildah.run("run", *options, self.name, "--", *command, timeout=timeout, check=False)

    def remove(self) -> None:
        self.buildah.run("rm", self.name, check=False)
