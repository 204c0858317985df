"""Child-process plumbing shared by the lab's servers: free ports, readiness waits, bounded shutdown.

Every wait here has a deadline, and `stop_process` always ends with SIGKILL, so a failing test can
never leave a registry or gateway running behind it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

__all__ = [
    "LOOPBACK",
    "LabError",
    "ManagedChild",
    "free_port",
    "log_tail",
    "stop_process",
    "wait_http",
    "wait_tcp",
]

LOOPBACK = "127.0.0.1"


class LabError(RuntimeError):
    """A lab component could not be started or driven; the message carries the child's log tail."""


def free_port() -> int:
    """Ask the kernel for a loopback port that is free right now (a child binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 20) -> str:
    """Last lines of a child's log, for error messages (empty when the log does not exist)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    """Poll ``url`` until it answers below 500, failing early if ``proc`` dies.

    Any HTTP answer (200, or 401 from an authenticated endpoint) means the server is accepting.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"process {proc.args!r} exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            if httpx.get(url, timeout=2.0, verify=False).status_code < 500:  # readiness, not trust
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise LabError(f"{url} did not answer within {timeout:.0f}s:\n{log_tail(log)}")


def wait_tcp(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    """Poll until ``127.0.0.1:port`` accepts connections (for servers HTTP probes cannot reach:
    a proxy, a registry that demands a client certificate), failing early if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"process {proc.args!r} exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise LabError(f"{LOOPBACK}:{port} did not accept connections within {timeout:.0f}s:\n{log_tail(log)}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the child's process group, wait, then SIGKILL it; safe to call twice."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


class ManagedChild:
    """A child process with a temp dir of its own: `stop` ends both; a context manager around `start`."""

    _proc: subprocess.Popen[bytes] | None = None
    _dir: Path | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL) and delete its temp dir; safe to call twice."""
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
