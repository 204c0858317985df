"""`make demo` and `make lab` on a clean clone, where pip may only install into a virtualenv.

The clone is of the committed HEAD. pip runs with ``PIP_REQUIRE_VIRTUALENV=1``, and with Debian's
own Python when it is there: that one is marked EXTERNALLY-MANAGED (PEP 668) and refuses
system-wide installs, so the demo can only pass through the project virtualenv.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.kube import REPO

pytestmark = pytest.mark.registry

DEBIAN_PYTHON = Path("/usr/bin/python3")


def _python() -> str:
    """Debian's refusing Python when present (the case the demo must survive), else this one."""
    managed = list(Path("/usr/lib").glob("python3*/EXTERNALLY-MANAGED"))
    return str(DEBIAN_PYTHON) if managed and DEBIAN_PYTHON.is_file() else sys.executable


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | {"PIP_REQUIRE_VIRTUALENV": "1", "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clean") / "layerwatch"
    subprocess.run(["git", "clone", "-q", str(REPO), str(path)], check=True, timeout=120)
    return path


@pytest.fixture(scope="module")
def demo(clone: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "demo", f"PYTHON={_python()}"],
        cwd=clone,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_make_demo_passes_in_a_project_virtualenv(
    clone: Path, demo: subprocess.CompletedProcess[str]
) -> None:
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "verdict LayerMissing, blame: hop core" in demo.stdout
    assert "layerwatch check exited with 1" in demo.stdout
    assert (clone / ".venv" / "bin" / "layerwatch").is_file()


def test_the_demo_installs_only_what_it_needs(clone: Path, demo: subprocess.CompletedProcess[str]) -> None:
    """Runtime dependencies only; of the Debian packages, only the registry (and venv support)."""
    assert demo.returncode == 0
    listed = subprocess.run(
        [str(clone / ".venv" / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    assert "kopf==" in listed and "layerwatch==" in listed
    for test_only in ("pytest", "mypy", "ruff", "hypothesis"):
        assert f"{test_only}==" not in listed, f"{test_only} installed for the demo"
    assert "hack/install-deps.sh docker-registry python3-venv" in demo.stdout


def test_make_lab_keeps_the_chain_up_until_ctrl_c(
    clone: Path, demo: subprocess.CompletedProcess[str]
) -> None:
    assert demo.returncode == 0, "needs the demo's virtualenv"
    lab = subprocess.Popen(
        ["make", "-s", "lab", f"PYTHON={_python()}"],
        cwd=clone,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines = _until(lab, "serve --config", 180)
        commands = [line.strip() for line in lines if " check --chain " in line]
        assert len(commands) == 2, lines
        healthy, broken = (
            subprocess.run(c.split(), capture_output=True, text=True, timeout=120) for c in commands
        )
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert broken.returncode == 1 and "blame: hop core" in broken.stdout, broken.stdout
        time.sleep(1)
        assert lab.poll() is None, "make lab exited on its own"
        os.killpg(lab.pid, signal.SIGINT)
        rest, _ = lab.communicate(timeout=60)
        assert "lab chain stopped" in rest
    finally:
        if lab.poll() is None:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait(10)


def _until(process: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """Lines of ``process``'s output up to and including the first that contains ``marker``."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    for line in iter(process.stdout.readline, ""):
        lines.append(line)
        if marker in line:
            return lines
        assert time.monotonic() < deadline, "".join(lines)
    raise AssertionError("make lab ended before printing its commands:\n" + "".join(lines))
