"""Driving a lab gateway from synchronous code: start it as a subprocess and talk to its admin API."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from lab.process import LOOPBACK, LabError, log_tail, stop_process

__all__ = ["FaultClient", "GatewayProcess"]

_HACK_DIR = Path(__file__).resolve().parents[1]
_ADMIN_TIMEOUT = 10.0
_BOMB_TIMEOUT = 120.0
"""Setting a ``gzip-bomb`` fault builds it first: ~5 s of CPU per GiB, more on a busy box."""


class FaultClient:
    """The ``/_lab/`` admin API of one gateway (fault JSON format: see `lab.faults`)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def _call(self, method: str, path: str, body: Any = None, timeout: float = _ADMIN_TIMEOUT) -> Any:
        response = httpx.request(method, f"{self.base_url}/_lab/{path}", json=body, timeout=timeout)
        if response.status_code != 200:
            raise LabError(f"{method} /_lab/{path}: {response.status_code} {response.text}")
        return response.json()

    def set(self, faults: Sequence[Mapping[str, Any]]) -> None:
        """Replace the whole fault set (an empty list clears it); waits while a gzip bomb is built."""
        self._call("POST", "faults", list(faults), timeout=_BOMB_TIMEOUT)

    def active(self) -> list[dict[str, Any]]:
        """The current faults, with their remaining ``count``."""
        result: list[dict[str, Any]] = self._call("GET", "faults")
        return result

    def clear(self) -> None:
        self._call("DELETE", "faults")

    def requests(self) -> list[dict[str, Any]]:
        """The request log, oldest first.

        Fields: seq, listener, method, path (decoded, query included), raw_path (as the client sent
        it), status, authorization, agent (User-Agent), host, fault, time.
        """
        result: list[dict[str, Any]] = self._call("GET", "requests")
        return result

    def clear_requests(self) -> None:
        self._call("DELETE", "requests")

    def total_requests(self) -> int:
        """Requests logged since the gateway started, also those the log (10,000 entries) dropped."""
        count: int = self._call("GET", "stats")["requests"]
        return count


class GatewayProcess:
    """A ``python -m lab.gateway`` child in front of ``upstream``; ports are known once `start` returns."""

    def __init__(
        self,
        name: str,
        upstream: str,
        *,
        prefix: str = "",
        auth: str = "none",
        user: tuple[str, str] | None = None,
        token_ttl: float = 1800.0,
    ) -> None:
        self.name = name
        self.upstream = upstream
        self.prefix = prefix
        self._auth = auth
        self._user = user
        self._token_ttl = token_ttl
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self.port = 0
        self.blob_port = 0

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no prefix)."""
        return f"http://{self.address}"

    @property
    def faults(self) -> FaultClient:
        return FaultClient(self.url)

    @property
    def pid(self) -> int:
        """Process id of the running gateway (tests read its peak memory from /proc)."""
        if self._proc is None:
            raise LabError(f"gateway {self.name} is not started")
        return self._proc.pid

    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "lab.gateway", "--listen", f"{LOOPBACK}:0"]
        command += ["--upstream", self.upstream, "--prefix", self.prefix, "--auth", self._auth]
        command += ["--token-ttl", str(self._token_ttl)]
        if self._user is not None:
            command += ["--user", f"{self._user[0]}:{self._user[1]}"]
        return command

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        """Start the child and wait for the JSON line announcing its ports."""
        self._dir = Path(tempfile.mkdtemp(prefix=f"lab-gateway-{self.name}-"))
        log_path = self._dir / "gateway.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_HACK_DIR), env.get("PYTHONPATH")]))
        with log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self._proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                self.stop()
                raise LabError(f"gateway {self.name} did not announce its ports within {timeout:.0f}s")
        line = self._proc.stdout.readline()
        try:
            ports = json.loads(line)
        except json.JSONDecodeError:
            tail = log_tail(log_path)
            self.stop()
            raise LabError(f"gateway {self.name} failed to start: {line!r}\n{tail}") from None
        self.port, self.blob_port = int(ports["port"]), int(ports["blob_port"])
        return self

    def stop(self) -> None:
        """SIGTERM (then SIGKILL) the child and remove its log dir."""
        if self._proc is not None:
            stop_process(self._proc)
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
