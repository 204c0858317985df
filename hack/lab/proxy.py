"""Debian ``tinyproxy``: a real HTTP proxy (CONNECT for https, absolute URIs for http) on loopback.

Tests prove a hop was reached *through* the proxy from the proxy's own log: tinyproxy logs every
request line (``Request (file descriptor N): CONNECT 127.0.0.1:PORT HTTP/1.1`` or ``GET
http://127.0.0.1:PORT/v2/... HTTP/1.1``) and every upstream connection it opens. With
``user`` set it demands ``Proxy-Authorization: Basic`` and answers 407 without it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from lab.process import LOOPBACK, LabError, ManagedChild, free_port, wait_tcp

__all__ = ["TINYPROXY", "TinyProxy"]

TINYPROXY = "/usr/bin/tinyproxy"


class TinyProxy(ManagedChild):
    """One ``tinyproxy -d`` child on a free loopback port; ``user`` = (name, password) for BasicAuth."""

    def __init__(self, *, user: tuple[str, str] | None = None, binary: str = TINYPROXY) -> None:
        self.user = user
        self._binary = binary
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, the proxy address without credentials."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        if self._dir is None:
            raise LabError("tinyproxy is not started")
        return self._dir / "tinyproxy.log"

    def log(self) -> str:
        """Everything tinyproxy logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def requests(self) -> list[str]:
        """The request lines it proxied, e.g. ``CONNECT 127.0.0.1:5000 HTTP/1.1``."""
        return [
            line.split("): ", 1)[1] for line in self.log().splitlines() if " Request (file descriptor" in line
        ]

    def start(self, timeout: float = 10.0) -> TinyProxy:
        if not shutil.which(self._binary):
            raise LabError(f"{self._binary} not found: apt-get install tinyproxy (hack/install-deps.sh)")
        self._dir = Path(tempfile.mkdtemp(prefix="lab-tinyproxy-"))
        self.port = free_port()
        lines = [
            f"Port {self.port}",
            f"Listen {LOOPBACK}",
            "Timeout 60",
            f'LogFile "{self.log_path}"',
            "LogLevel Info",
            "MaxClients 64",
            f"Allow {LOOPBACK}",
            "DisableViaHeader Yes",
        ]
        if self.user is not None:
            lines.append(f"BasicAuth {self.user[0]} {self.user[1]}")
        config = self._dir / "tinyproxy.conf"
        config.write_text("\n".join(lines) + "\n")
        self._proc = subprocess.Popen(
            [self._binary, "-d", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=(self._dir / "stdout.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_tcp(self.port, self._proc, self.log_path, timeout)
        except LabError:
            self.stop()
            raise
        return self
