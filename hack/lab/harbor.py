"""Real Harbor (v2.15.2) proxy caches on loopback: `HarborHop` and `HarborChain` (edge -> core -> origin).

One Harbor is five processes, each in this hop's temp dir and on its own loopback port: PostgreSQL
(Debian ``postgresql``, a throwaway cluster), Redis (Debian ``redis-server``), a distribution
registry with Harbor's config shape (`lab.registry.RegistryProcess` with the Redis descriptor
cache), ``harbor_core`` (the front door: ``/v2/``, ``/service/token``, ``/api/v2.0/``) and
``harbor_jobservice`` (Harbor will not create a proxy-cache project without one). The binaries come
from ``hack/build-tools.sh harbor``. Unlike Harbor's shipped setup, the registry behind core has no
htpasswd of its own: it listens on loopback only and core is its only client.

Everything after start-up is done through Harbor's REST API as an operator would (`HarborAdmin`):
a registry endpoint for the upstream, a private proxy-cache project on it, a pull-only robot account
for that project. The edge's endpoint is the core Harbor, authenticated with core's robot account,
so ``org/app`` at the origin is ``p-ghcr/org/app`` at core and ``p-core/p-ghcr/org/app`` at edge.

Faults the tests make Harbor produce itself: `HarborProcesses.lose_blob` deletes a stored blob's
bytes while the Redis descriptor cache keeps listing it; `HarborChain.down` stops a Harbor's core
(or the origin) for a ``with`` block and starts it again, same port and state;
`HarborHop.wait_tag_stored` and `HarborProcesses.wait_blob_stored` wait for what Harbor stores only
after a pull.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import glob
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx
import yaml

from lab.chain import ChainLayout
from lab.kube import build_tools_paths
from lab.process import LOOPBACK, LabError, free_port, log_tail, stop_process, wait_http, wait_tcp
from lab.registry import RegistryProcess

__all__ = [
    "HarborAdmin",
    "HarborChain",
    "HarborHop",
    "HarborProcesses",
    "OriginHop",
    "harbor_dir",
    "missing_harbor_parts",
]

ADMIN_USER = "admin"
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
START_TIMEOUT = 60.0
"""Core applies every migration at its first start (1.5-4 s idle); a busy 2-core box needs more."""
_API_TIMEOUT = 30.0
_REDIS_SERVER = "/usr/bin/redis-server"
_REDIS_CLI = "/usr/bin/redis-cli"
_REGISTRY_REDIS_DB = 1
STORE_TIMEOUT = 90.0
"""How long a Harbor may take to store what it proxied (measured: a few seconds for a blob, about 20 s
for a manifest; a busy 2-core box needs more)."""
_POSTGRES_GLOB = "/usr/lib/postgresql/*/bin"


@functools.cache
def harbor_dir() -> Path:
    """Where Harbor's binaries, views and migrations are: ``$HARBOR_DIR``, else where
    ``hack/build-tools.sh harbor`` builds them (its ``HARBOR_VERSION`` is the one version)."""
    if directory := os.environ.get("HARBOR_DIR"):
        return Path(directory)
    return Path(build_tools_paths()["HARBOR_DIR"])


def _postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` holding ``initdb`` (Debian's layout), if any."""
    found = [Path(d) for d in glob.glob(_POSTGRES_GLOB) if (Path(d) / "initdb").is_file()]
    return max(found, key=lambda d: int(d.parent.name)) if found else None


def missing_harbor_parts() -> list[str]:
    """What this machine lacks to run a Harbor hop, as install hints (empty when all is there)."""
    missing = []
    directory = harbor_dir()
    if not all(os.access(directory / b, os.X_OK) for b in ("harbor_core", "harbor_jobservice")):
        missing.append(f"Harbor binaries in {directory} (hack/build-tools.sh harbor)")
    if _postgres_bin() is None:
        missing.append("PostgreSQL in /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    if not os.access(_REDIS_SERVER, os.X_OK):
        missing.append(f"{_REDIS_SERVER} (apt-get install redis-server)")
    return missing


def _spawn(
    command: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own session (so `stop_process` ends its whole group), output to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            user=user,
            start_new_session=True,
        )


def _wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float
) -> None:
    """Poll ``ready`` until it holds, failing early if ``proc`` dies and after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"{what}: {proc.args!r} exited with {proc.returncode}:\n{log_tail(log)}")
        if ready():
            return
        time.sleep(0.1)
    raise LabError(f"{what} not ready within {timeout:.0f}s:\n{log_tail(log)}")


class _Postgres:
    """A throwaway PostgreSQL cluster (trust auth, loopback TCP only, no fsync) with one database.

    Run as user ``postgres`` when we are root (PostgreSQL refuses to run as root).
    """

    def __init__(self, name: str, database: str) -> None:
        self.name = name
        self.database = database
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    def start(self, timeout: float) -> None:
        bin_dir = _postgres_bin()
        if bin_dir is None:
            raise LabError("PostgreSQL not found in /usr/lib/postgresql/*/bin: apt-get install postgresql")
        user = "postgres" if os.geteuid() == 0 else None
        self._dir = Path(tempfile.mkdtemp(prefix=f"lab-harbor-{self.name}-pg-"))
        if user is not None:
            shutil.chown(self._dir, user, user)
        data, log = self._dir / "data", self._dir / "postgres.log"
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        done = subprocess.run(
            [*initdb, "--no-sync"], capture_output=True, text=True, user=user, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise LabError(f"initdb for {self.name} failed: {done.stderr.strip()}")
        self.port = free_port()
        settings = {
            "listen_addresses": LOOPBACK,
            "port": str(self.port),
            "unix_socket_directories": "",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        self._proc = _spawn([str(bin_dir / "postgres"), "-D", str(data), *options], log, user=user)
        createdb = [str(bin_dir / "createdb"), "-h", LOOPBACK, "-p", str(self.port), "-U", "postgres"]

        def created() -> bool:
            return subprocess.run([*createdb, self.database], capture_output=True, timeout=10).returncode == 0

        _wait_until(created, self._proc, log, f"PostgreSQL of {self.name}", timeout)

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)  # smart shutdown; core and jobservice are gone by now
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


@dataclasses.dataclass
class HarborHop:
    """One running Harbor: its URL, its proxy-cache project (``prefix``) and that project's robot."""

    prefix: str
    processes: HarborProcesses
    credentials: tuple[str, str] | None = None
    registry_id: int = 0

    @property
    def name(self) -> str:
        return self.processes.name

    @property
    def port(self) -> int:
        return self.processes.port

    @property
    def admin_password(self) -> str:
        return self.processes.admin_password

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` of core (the hop's front door)."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.address}"

    @property
    def url(self) -> str:
        """The hop URL as a ProxyChain names it: ``http://127.0.0.1:PORT/<project>``."""
        return f"{self.base_url}/{self.prefix}"

    def admin(self) -> HarborAdmin:
        """An admin REST client of this Harbor."""
        return HarborAdmin(self.base_url, self.admin_password)

    def stored_tags(self, repository: str) -> set[str]:
        """The tags this Harbor has stored for ``repository`` (the path inside its project), as its
        own API lists them (empty while it stores nothing for it)."""
        encoded = urllib.parse.quote(urllib.parse.quote(repository, safe=""), safe="")  # Harbor: %252F
        admin = self.admin()
        try:
            path = f"/projects/{self.prefix}/repositories/{encoded}/artifacts"
            artifacts = admin.get(f"{path}?with_tag=true&page_size=100")
        except LabError:  # 404 until the repository exists here
            return set()
        finally:
            admin.close()
        return {str(tag["name"]) for artifact in artifacts for tag in artifact.get("tags") or []}

    def wait_tag_stored(self, repository: str, tag: str, timeout: float = STORE_TIMEOUT) -> None:
        """Poll until this Harbor has stored ``repository:tag`` it proxied: Harbor stores a manifest
        only after the pull, once its blobs are stored too (about 20 s measured)."""
        deadline = time.monotonic() + timeout
        while tag not in self.stored_tags(repository):
            if time.monotonic() > deadline:
                raise LabError(f"Harbor {self.name} did not store {repository}:{tag} within {timeout:.0f}s")
            time.sleep(0.5)

    def pull_token(self, path: str) -> str:
        """A pull token for repository ``path`` (project included) from this Harbor's own
        ``/service/token`` with the project's robot, as a client gets it after the ``401``."""
        challenge = httpx.get(f"{self.base_url}/v2/", timeout=_API_TIMEOUT)
        fields = dict(_CHALLENGE.findall(challenge.headers.get("www-authenticate", "")))
        if challenge.status_code != 401 or "realm" not in fields:
            status = challenge.status_code
            raise LabError(f"Harbor {self.name} /v2/ answered {status} without a Bearer challenge")
        answer = httpx.get(
            fields["realm"],
            params={"service": fields.get("service", ""), "scope": f"repository:{path}:pull"},
            auth=self.credentials,
            timeout=_API_TIMEOUT,
        )
        if answer.status_code != 200:
            raise LabError(f"Harbor {self.name} /service/token: {answer.status_code} {answer.text.strip()}")
        return str(answer.json()["token"])

    def registry_client(self, path: str, timeout: float = _API_TIMEOUT) -> httpx.Client:
        """An HTTP client on ``/v2/<path>/`` of this Harbor with a pull token for ``path``: what a
        client of this hop sends (``get("manifests/v1")``, ``head("blobs/sha256:…")``)."""
        return httpx.Client(
            base_url=f"{self.base_url}/v2/{path}/",
            headers={"Authorization": f"Bearer {self.pull_token(path)}"},
            timeout=timeout,
        )


@dataclasses.dataclass(frozen=True)
class OriginHop:
    """The origin: a plain distribution registry that pushes go to (no project prefix, no auth)."""

    registry: RegistryProcess
    name: str = "origin"
    prefix: str = ""
    credentials: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        return self.registry.url

    @property
    def address(self) -> str:
        return self.registry.address


class HarborAdmin:
    """Harbor's ``/api/v2.0`` as the admin user: the calls an operator makes to set up a proxy cache."""

    def __init__(self, base_url: str, password: str) -> None:
        self._http = httpx.Client(
            base_url=f"{base_url}/api/v2.0", auth=(ADMIN_USER, password), timeout=_API_TIMEOUT
        )

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        # Basic auth on every call and no session: with Harbor's session cookie, writes need a CSRF token.
        self._http.cookies.clear()
        response = self._http.request(method, path, json=body)
        if response.status_code >= 300:
            raise LabError(f"Harbor {method} {path}: {response.status_code} {response.text.strip()}")
        return response

    def _created_id(self, response: httpx.Response) -> int:
        """The id at the end of a ``201 Created`` answer's ``Location``."""
        return int(response.headers["location"].rstrip("/").rsplit("/", 1)[-1])

    def add_registry(self, name: str, url: str, kind: str, credentials: tuple[str, str] | None) -> int:
        """``POST /registries`` (an upstream endpoint); its id."""
        body: dict[str, Any] = {"name": name, "type": kind, "url": url, "insecure": True}
        if credentials is not None:
            body["credential"] = {
                "type": "basic",
                "access_key": credentials[0],
                "access_secret": credentials[1],
            }
        return self._created_id(self._call("POST", "/registries", body))

    def add_proxy_project(self, name: str, registry_id: int, *, public: bool = False) -> int:
        """``POST /projects`` with ``registry_id``: a proxy-cache project; its id."""
        body = {
            "project_name": name,
            "registry_id": registry_id,
            "metadata": {"public": str(public).lower()},
            "storage_limit": -1,
        }
        return self._created_id(self._call("POST", "/projects", body))

    def add_robot(self, name: str, project: str, actions: Sequence[str] = ("pull",)) -> tuple[str, str]:
        """``POST /robots``: a project robot allowed ``actions`` on its repositories; (name, secret)."""
        body = {
            "name": name,
            "level": "project",
            "duration": -1,
            "disable": False,
            "permissions": [
                {
                    "kind": "project",
                    "namespace": project,
                    "access": [{"resource": "repository", "action": action} for action in actions],
                }
            ],
        }
        created = self._call("POST", "/robots", body).json()
        return str(created["name"]), str(created["secret"])

    def get(self, path: str) -> Any:
        """``GET path`` as JSON (e.g. ``/registries``, ``/systeminfo``)."""
        return self._call("GET", path).json()

    def ping_registry(self, registry_id: int) -> httpx.Response:
        """``POST /registries/ping`` of an endpoint (Harbor checks the upstream now); the answer as is,
        error statuses included."""
        self._http.cookies.clear()
        return self._http.post("/registries/ping", json={"id": registry_id})


class HarborProcesses:
    """The five processes of one Harbor, started in dependency order and stopped in reverse.

    Once started: ``port`` is core's, ``redis_port`` the Redis that holds the registry's
    descriptor cache (db 1), ``registry`` the registry behind core (its storage is
    ``registry.data_dir``), ``ports`` every process's listening port by name, and ``directory``
    holds ``core.log``, ``jobservice.log``, ``redis.log``.
    """

    def __init__(self, name: str, admin_password: str) -> None:
        self.name = name
        self.admin_password = admin_password
        self.port = 0
        self.redis_port = 0
        self.registry: RegistryProcess | None = None
        self.ports: dict[str, int] = {}
        self._stack = contextlib.ExitStack()
        self._dir: Path | None = None
        self._core_env: Mapping[str, str] = {}
        self._core_proc: subprocess.Popen[bytes] | None = None

    @property
    def directory(self) -> Path:
        if self._dir is None:
            raise LabError(f"Harbor {self.name} is not started")
        return self._dir

    def start(self, timeout: float) -> None:
        with self._stack:
            self._dir = Path(tempfile.mkdtemp(prefix=f"lab-harbor-{self.name}-"))
            self._stack.callback(shutil.rmtree, self._dir, ignore_errors=True)
            postgres = _Postgres(self.name, "registry")
            self._stack.callback(postgres.stop)
            postgres.start(timeout)
            self.redis_port = self._redis(timeout)
            self.registry = RegistryProcess(
                f"harbor-{self.name}", redis=(f"{LOOPBACK}:{self.redis_port}", _REGISTRY_REDIS_DB)
            )
            self._stack.callback(self.registry.stop)
            self.registry.start(timeout)
            env = self._environment(postgres.port, self.redis_port, self.registry.url)
            self._core(env, timeout)
            self._jobservice(env, self.redis_port, timeout)
            self.ports = {
                "core": self.port,
                "jobservice": int(env["JOBSERVICE_PORT"]),
                "registry": self.registry.port,
                "redis": self.redis_port,
                "postgres": postgres.port,
            }
            self._stack = self._stack.pop_all()

    def stop(self) -> None:
        self._stack.close()

    def _child(self, command: Sequence[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = _spawn(command, log, **kwargs)
        self._stack.callback(stop_process, proc)
        return proc

    def _redis(self, timeout: float) -> int:
        assert self._dir is not None
        port, log = free_port(), self._dir / "redis.log"
        options = ["--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "no"]
        proc = self._child([_REDIS_SERVER, *options, "--dir", str(self._dir)], log)
        wait_tcp(port, proc, log, timeout)
        return port

    def _environment(self, postgres_port: int, redis_port: int, registry_url: str) -> dict[str, str]:
        """Core's (and jobservice's) configuration, all by environment as Harbor's installer writes it."""
        assert self._dir is not None
        self.port = free_port()
        core = f"http://{LOOPBACK}:{self.port}"
        jobservice_port = free_port()
        key = self._dir / "key"
        key.write_text(secrets.token_hex(8))  # Harbor wants exactly 16 characters
        token_key = self._dir / "private_key.pem"
        subprocess.run(  # PKCS#1 ("traditional"): with PKCS#8 /service/token answers 500
            ["openssl", "genrsa", "-traditional", "-out", str(token_key), "2048"],
            capture_output=True,
            check=True,
        )
        (self._dir / "app.conf").write_text(
            f"appname = Harbor\nrunmode = prod\nenablegzip = true\n\n[prod]\n"
            f"httpaddr = {LOOPBACK}\nhttpport = {self.port}\n"
        )
        redis = f"redis://{LOOPBACK}:{redis_port}"
        placeholder = f"http://{LOOPBACK}:9"  # portal, trivy, registryctl: not run in the lab
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CONFIG_PATH": str(self._dir / "app.conf"),
            "KEY_PATH": str(key),
            "TOKEN_PRIVATE_KEY_PATH": str(token_key),
            "POSTGRES_MIGRATION_SCRIPTS_PATH": str(harbor_dir() / "migrations/postgresql"),
            "_REDIS_URL_CORE": f"{redis}/0?idle_timeout_seconds=30",
            "_REDIS_URL_REG": f"{redis}/1?idle_timeout_seconds=30",
            "LOG_LEVEL": "warning",
            "EXT_ENDPOINT": core,
            "CORE_URL": core,
            "CORE_LOCAL_URL": core,
            "TOKEN_SERVICE_URL": f"{core}/service/token",
            "REGISTRY_URL": registry_url,
            "REGISTRY_CONTROLLER_URL": placeholder,
            "PORTAL_URL": placeholder,
            "TRIVY_ADAPTER_URL": placeholder,
            "JOBSERVICE_URL": f"http://{LOOPBACK}:{jobservice_port}",
            "JOBSERVICE_PORT": str(jobservice_port),
            "DATABASE_TYPE": "postgresql",
            "POSTGRESQL_HOST": LOOPBACK,
            "POSTGRESQL_PORT": str(postgres_port),
            "POSTGRESQL_USERNAME": "postgres",
            "POSTGRESQL_PASSWORD": "trust",
            "POSTGRESQL_DATABASE": "registry",
            "POSTGRESQL_SSLMODE": "disable",
            "POSTGRESQL_MAX_IDLE_CONNS": "10",
            "POSTGRESQL_MAX_OPEN_CONNS": "50",
            "HARBOR_ADMIN_PASSWORD": self.admin_password,
            "CORE_SECRET": secrets.token_hex(8),
            "JOBSERVICE_SECRET": secrets.token_hex(8),
            "CSRF_KEY": secrets.token_hex(16),
            "WITH_TRIVY": "false",
            "REGISTRY_STORAGE_PROVIDER_NAME": "filesystem",
            "REGISTRY_CREDENTIAL_USERNAME": "harbor_registry_user",
            "REGISTRY_CREDENTIAL_PASSWORD": secrets.token_hex(8),
            "PERMITTED_REGISTRY_TYPES_FOR_PROXY_CACHE": "docker-registry,harbor",
            "READ_ONLY": "false",
        }

    def _core(self, env: Mapping[str, str], timeout: float) -> None:
        """``harbor_core``, run from a directory where its ``views/`` are (it reads them relative)."""
        assert self._dir is not None
        (self._dir / "views").symlink_to(harbor_dir() / "views")
        self._core_env = env
        self._stack.callback(self.stop_core)
        self.start_core(timeout)

    def start_core(self, timeout: float = START_TIMEOUT) -> None:
        """Start ``harbor_core`` (again, after `stop_core`: same port, database and secrets)."""
        log = self.directory / "core.log"
        command = [str(harbor_dir() / "harbor_core")]
        self._core_proc = _spawn(command, log, env=self._core_env, cwd=self.directory)
        wait_http(f"http://{LOOPBACK}:{self.port}/api/v2.0/ping", self._core_proc, log, timeout)

    def stop_core(self) -> None:
        """Stop ``harbor_core``, this Harbor's front door: the hop is down for its clients and for
        the Harbors that use it as upstream; its registry, database and Redis keep their state."""
        if self._core_proc is not None:
            stop_process(self._core_proc)
            self._core_proc = None

    def blob_path(self, digest: str) -> Path:
        """Where the registry behind core keeps a blob's bytes (distribution's filesystem layout)."""
        if self.registry is None:
            raise LabError(f"Harbor {self.name} is not started")
        algorithm, _, hexpart = digest.partition(":")
        blobs = self.registry.data_dir / "docker/registry/v2/blobs"
        return blobs / algorithm / hexpart[:2] / hexpart / "data"

    def descriptor_cached(self, digest: str) -> bool:
        """Whether the registry's Redis descriptor cache (Harbor's ``layerinfo: redis``) lists the blob."""
        command = [_REDIS_CLI, "-h", LOOPBACK, "-p", str(self.redis_port), "-n", str(_REGISTRY_REDIS_DB)]
        done = subprocess.run(
            [*command, "EXISTS", f"blobs::{digest}"], capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip() == "1"

    def wait_blob_stored(self, digest: str, size: int, timeout: float = STORE_TIMEOUT) -> Path:
        """Poll until this Harbor has stored the blob it proxied (all ``size`` bytes, listed in the
        descriptor cache): Harbor writes proxied content to its registry only after the pull."""
        path = self.blob_path(digest)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_size == size and self.descriptor_cached(digest):
                    return path
            time.sleep(0.2)
        raise LabError(f"Harbor {self.name} did not store {digest} within {timeout:.0f}s")

    def lose_blob(self, digest: str, size: int, timeout: float = STORE_TIMEOUT) -> None:
        """Lose a stored blob's bytes while the descriptor cache keeps listing it (a disk or storage
        fault Harbor does not notice): waits until the blob is stored first."""
        self.wait_blob_stored(digest, size, timeout).unlink()
        if not self.descriptor_cached(digest):
            raise LabError(f"Harbor {self.name}'s descriptor cache dropped {digest} with its data")

    def _jobservice(self, env: Mapping[str, str], redis_port: int, timeout: float) -> None:
        assert self._dir is not None
        port = int(env["JOBSERVICE_PORT"])
        config = {
            "protocol": "http",
            "port": port,
            "worker_pool": {
                "workers": 2,
                "backend": "redis",
                "redis_pool": {
                    "redis_url": f"redis://{LOOPBACK}:{redis_port}/2",
                    "namespace": "harbor_job_service_namespace",
                    "idle_timeout_second": 3600,
                },
            },
            "job_loggers": [{"name": "STD_OUTPUT", "level": "INFO"}],
            "loggers": [{"name": "STD_OUTPUT", "level": "INFO"}],
            "reaper": {"max_update_hours": 24, "max_dangling_hours": 168},
            "max_retrieve_size_mb": 10,
        }
        path = self._dir / "jobservice.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        log = self._dir / "jobservice.log"
        command = [str(harbor_dir() / "harbor_jobservice"), "-c", str(path)]
        proc = self._child(command, log, env=env, cwd=self._dir)
        wait_http(f"http://{LOOPBACK}:{port}/api/v1/stats", proc, log, timeout)


def _all_at_once(calls: Sequence[Callable[[], None]]) -> None:
    """Run ``calls`` in parallel threads (Harbors start and stop independently; core alone takes ~3 s
    to shut down), then raise the first error any of them raised."""
    with concurrent.futures.ThreadPoolExecutor(max(len(calls), 1)) as pool:
        for done in [pool.submit(call) for call in calls]:
            done.result()


class HarborChain(ChainLayout[HarborHop | OriginHop]):
    """Start (and always stop) origin registry <- core Harbor <- edge Harbor; a context manager.

    ``hops`` names the Harbors edge first with their proxy projects (default edge ``p-core``, core
    ``p-ghcr``, as in `lab.chain.LocalChain`). Each Harbor's project is private and has one pull
    robot; the next Harbor out uses it for its upstream endpoint, and the chain document gives
    each hop its robot.
    """

    def __init__(
        self,
        hops: Sequence[tuple[str, str]] = (("edge", "p-core"), ("core", "p-ghcr")),
        *,
        timeout: float = START_TIMEOUT,
    ) -> None:
        self._names = list(hops)
        self._timeout = timeout
        self._stack = contextlib.ExitStack()
        self.hops: list[HarborHop | OriginHop] = []
        self.start_seconds = 0.0

    def start(self) -> Self:
        """Origin first, then every Harbor's processes at once; then each Harbor from the inside out
        is configured through its API (an endpoint needs its upstream answering)."""
        started = time.monotonic()
        with self._stack:
            origin_registry = RegistryProcess("origin")
            self._stack.callback(origin_registry.stop)
            origin_registry.start(self._timeout)
            harbors = [HarborProcesses(name, secrets.token_urlsafe(12) + "A1a") for name, _ in self._names]
            self._stack.callback(_all_at_once, [processes.stop for processes in harbors])
            _all_at_once([functools.partial(processes.start, self._timeout) for processes in harbors])
            upstream: HarborHop | OriginHop = OriginHop(origin_registry)
            hops: list[HarborHop | OriginHop] = [upstream]
            for (_, project), processes in reversed(list(zip(self._names, harbors, strict=True))):
                upstream = self._configure(processes, project, upstream)
                hops.insert(0, upstream)
            self.hops = hops
            self._stack = self._stack.pop_all()
        self.start_seconds = time.monotonic() - started
        return self

    @staticmethod
    def _configure(processes: HarborProcesses, project: str, upstream: HarborHop | OriginHop) -> HarborHop:
        """As an operator: an endpoint for ``upstream``, a private proxy project on it, a pull robot."""
        hop = HarborHop(project, processes)
        admin = hop.admin()
        try:
            kind = "docker-registry" if isinstance(upstream, OriginHop) else "harbor"
            upstream_url = upstream.url if isinstance(upstream, OriginHop) else upstream.base_url
            hop.registry_id = admin.add_registry(
                f"upstream-{upstream.name}", upstream_url, kind, upstream.credentials
            )
            admin.add_proxy_project(project, hop.registry_id)
            hop.credentials = admin.add_robot("layerwatch", project)
        finally:
            admin.close()
        return hop

    @property
    def push_address(self) -> str:
        """``127.0.0.1:PORT`` of the origin registry (Harbor refuses pushes into proxy projects)."""
        return self.hop("origin").address

    @property
    def harbors(self) -> list[HarborHop]:
        """The Harbor hops, edge first."""
        return [hop for hop in self.hops if isinstance(hop, HarborHop)]

    def harbor(self, name: str) -> HarborHop:
        """The Harbor hop called ``name`` (``edge``, ``core``)."""
        hop = self.hop(name)
        if not isinstance(hop, HarborHop):
            raise KeyError(f"{name!r} is not a Harbor hop")
        return hop

    @contextlib.contextmanager
    def down(self, name: str) -> Iterator[None]:
        """Hop ``name`` is down (connection refused) inside the block: the origin's registry or a
        Harbor's core is stopped, keeping its port and state, and started again on the way out, so
        the chain serves later tests as before."""
        hop = self.hop(name)
        if isinstance(hop, OriginHop):
            hop.registry.halt()
            try:
                yield
            finally:
                hop.registry.resume(self._timeout)
        else:
            hop.processes.stop_core()
            try:
                yield
            finally:
                hop.processes.start_core(self._timeout)
