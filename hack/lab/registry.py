"""Debian ``docker-registry`` (CNCF distribution 2.8) processes: a plain origin or a pull-through proxy.

Quirks of distribution 2.8's proxy mode that tests must design around (observed, and read from
``registry/proxy/`` in v2.8.3):

- Only scheme and host of ``remoteurl`` count: the repository path is forwarded unchanged, so a
  proxy cannot strip a Harbor project prefix itself (the lab's gateways do that).
- At start-up the proxy pings ``<remoteurl>/v2/`` and panics if the upstream is down, hence
  `RegistryProcess.start` on a proxy must follow a ready upstream.
- Tags are always asked upstream first, but on *any* upstream error (404 included) the proxy falls
  back to its own cached tag: a tag dropped upstream after a pull stays served (stale) downstream.
- The proxy pings ``<remoteurl>/v2/`` before upstream requests. When the upstream (or that ping)
  fails, an uncached tag answers 404 ``MANIFEST_UNKNOWN`` (the local-tag fallback finds nothing),
  not a 5xx; an uncached blob answers 500 ``UNKNOWN``. Upstream trouble can thus look like "missing".
- Manifests are cached by digest without verifying layers; by-digest requests are then local only.
- A blob miss (GET *or* HEAD) sends an upstream HEAD and then streams the blob to the client while a
  second upstream GET caches it in the background: one pull shows several upstream requests, and a
  blob fetched once is served locally from then on, whatever happens upstream. Corrupt bytes are
  streamed to the client but fail the local commit, so they are not cached.
- Cache expiry is a fixed 7 days (no ``ttl`` key before distribution 3.0), so within a test run a
  cached object never expires: use a fresh repository name per test.
- Push and delete through a proxy answer 405 UNSUPPORTED; push to the origin instead.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from lab.process import LOOPBACK, LabError, ManagedChild, free_port, stop_process, wait_http, wait_tcp

__all__ = ["DOCKER_REGISTRY", "RegistryProcess"]

DOCKER_REGISTRY = "/usr/bin/docker-registry"
_START_ATTEMPTS = 3


class RegistryProcess(ManagedChild):
    """One ``docker-registry serve`` child on a free loopback port with filesystem storage in a temp dir.

    Give ``remote_url`` to make it a pull-through proxy of that upstream (optionally with
    ``username``/``password`` for the upstream's token auth); without it, it is a plain registry.
    ``tls`` (certificate and key files) makes it serve HTTPS; ``client_cas`` (a CA file) then makes
    it require client certificates signed by that CA (``http.tls.clientcas``). ``redis`` (a Redis
    ``host:port`` and db index) gives it Harbor's shape: the blob descriptor cache in that Redis
    (``storage.cache.layerinfo: redis``), which decides how Harbor behaves when blob data is lost.
    """

    def __init__(
        self,
        name: str,
        *,
        remote_url: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: tuple[Path, Path] | None = None,
        client_cas: Path | None = None,
        redis: tuple[str, int] | None = None,
        binary: str = DOCKER_REGISTRY,
    ) -> None:
        self.name = name
        self.tls = tls
        self.client_cas = client_cas
        self.redis = redis
        self.remote_url = remote_url
        self._username = username
        self._password = password
        self._binary = binary
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the form oras and image references use."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` when serving TLS)."""
        return f"{'https' if self.tls else 'http'}://{self.address}"

    @property
    def data_dir(self) -> Path:
        """The filesystem storage root (``docker/registry/v2/...`` below it)."""
        if self._dir is None:
            raise LabError(f"registry {self.name} is not started")
        return self._dir / "data"

    @property
    def log_path(self) -> Path:
        """Where the child's stdout and stderr go (inside the temp dir, gone after `stop`)."""
        if self._dir is None:
            raise LabError(f"registry {self.name} is not started")
        return self._dir / "registry.log"

    def _config(self) -> dict[str, object]:
        assert self._dir is not None
        http: dict[str, object] = {"addr": self.address, "secret": secrets.token_hex(16)}
        if self.tls is not None:
            http["tls"] = {"certificate": str(self.tls[0]), "key": str(self.tls[1])}
            if self.client_cas is not None:  # mutual TLS: no client certificate, no handshake
                http["tls"] |= {"clientcas": [str(self.client_cas)]}
        storage: dict[str, object] = {
            "filesystem": {"rootdirectory": str(self.data_dir)},
            "delete": {"enabled": True},
        }
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": storage,
            "http": http,
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.redis is not None:
            storage["cache"] = {"layerinfo": "redis"}
            config["redis"] = {"addr": self.redis[0], "db": self.redis[1], "dialtimeout": "10s"}
            config["validation"] = {"disabled": True}
        if self.remote_url is not None:
            proxy = {"remoteurl": self.remote_url}
            if self._username is not None and self._password is not None:
                proxy |= {"username": self._username, "password": self._password}
            config["proxy"] = proxy
        return config

    def start(self, timeout: float = 20.0) -> RegistryProcess:
        """Write the config, start the child and wait until ``/v2/`` answers.

        A port taken between `free_port` and the child's bind makes the child exit; that is retried.
        """
        if not shutil.which(self._binary):
            raise LabError(f"{self._binary} not found: apt-get install docker-registry")
        self._dir = Path(tempfile.mkdtemp(prefix=f"lab-registry-{self.name}-"))
        last_error: LabError | None = None
        for _ in range(_START_ATTEMPTS):
            self.port = free_port()
            config_path = self._dir / "config.yml"
            config_path.write_text(yaml.safe_dump(self._config(), sort_keys=False))
            try:
                self._serve(timeout)
                return self
            except LabError as exc:
                last_error = exc
        self.stop()
        raise LabError(f"registry {self.name} did not start: {last_error}")

    def _serve(self, timeout: float) -> None:
        """Run ``serve`` on the written config and wait until it answers (stopped again if it does not)."""
        assert self._dir is not None
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self._binary, "serve", str(self._dir / "config.yml")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            if self.client_cas is not None:
                wait_tcp(self.port, self._proc, self.log_path, timeout)
            else:
                wait_http(f"{self.url}/v2/", self._proc, self.log_path, timeout)
        except LabError:
            stop_process(self._proc)
            raise

    def halt(self) -> None:
        """Stop the child but keep its port and storage, so `resume` brings the same registry back
        (an upstream that is down for a while, not a new one)."""
        if self._proc is not None:
            stop_process(self._proc)

    def resume(self, timeout: float = 20.0) -> None:
        """Start the halted child again on the same port, config and storage."""
        if self._dir is None:
            raise LabError(f"registry {self.name} is not started")
        self._serve(timeout)
