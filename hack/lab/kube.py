"""A real Kubernetes control plane (etcd + kube-apiserver) as local processes, for tests and demos.

No container engine is needed: the binaries come from ``$KUBEBUILDER_ASSETS`` or are built by
``hack/build-tools.sh`` into ``~/.cache/layerwatch``. The apiserver runs with RBAC on, so tests can
prove the operator's ClusterRole is enough (and no more) by using a ServiceAccount token minted with
the TokenRequest API. There is no controller-manager: no garbage collection, namespaces never finish
deleting, no default ServiceAccounts. Use a fresh namespace per test.

Typical use::

    tools = find_tools()                  # builds the binaries when missing (slow the first time)
    with ControlPlane(tools) as cp:
        cp.apply(load_flux_crds())
        cp.apply(REPO / "crds/proxychain.yaml")
        api = cp.api_client()
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime as dt
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parents[2]
BUILD_TOOLS = REPO / "hack" / "build-tools.sh"

# Budgets for a 2-core CI box; the apiserver alone often needs 20-40 s to become ready there.
START_TIMEOUT = float(os.environ.get("LAYERWATCH_CONTROLPLANE_START_TIMEOUT", "180"))
STOP_TIMEOUT = float(os.environ.get("LAYERWATCH_CONTROLPLANE_STOP_TIMEOUT", "20"))
# A cold build of kube-apiserver + kubectl is 10-25 min on 2 cores (GOCACHE empty), ~2.5 min warm.
BUILD_TIMEOUT = float(os.environ.get("LAYERWATCH_BUILD_TIMEOUT", "3600"))

Doc = dict[str, Any]
T = TypeVar("T")


class ControlPlaneError(RuntimeError):
    """The control plane could not be started or did not answer as expected."""


# --------------------------------------------------------------------------------------------------
# Binaries


@dataclass(frozen=True)
class Tools:
    """Where the control-plane binaries and the Flux CRDs are."""

    kube_apiserver: Path
    etcd: Path
    kubectl: Path | None
    flux_crds: Path | None


def build_tools_paths() -> dict[str, str]:
    """Ask ``hack/build-tools.sh paths`` where it builds things (one source of truth for versions)."""
    env = {k: v for k, v in os.environ.items() if k != "KUBEBUILDER_ASSETS"}
    out = subprocess.run(
        ["bash", str(BUILD_TOOLS), "paths"], capture_output=True, text=True, check=True, env=env, timeout=30
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _locate() -> tuple[dict[str, Path | None], Path | None]:
    """Find each binary: ``KUBEBUILDER_ASSETS`` (or ``TEST_ASSET_*``) wins, then the build cache."""
    paths = build_tools_paths()
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    cache = {"kube-apiserver": paths["KUBE_DIR"], "kubectl": paths["KUBE_DIR"], "etcd": paths["ETCD_DIR"]}
    found: dict[str, Path | None] = {}
    for name, cache_dir in cache.items():
        override = os.environ.get("TEST_ASSET_" + name.upper().replace("-", "_"))
        candidates = [Path(override)] if override else []
        if assets:
            candidates.append(Path(assets) / name)
        candidates.append(Path(cache_dir) / name)
        found[name] = next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)
    crds = Path(paths["FLUX_CRDS"])
    return found, (crds if (crds / "source.toolkit.fluxcd.io_ocirepositories.yaml").is_file() else None)


def find_tools(build: bool = True, log: IO[str] | None = None) -> Tools:
    """Locate the binaries; with ``build``, run ``hack/build-tools.sh`` for whatever is missing.

    Building is what makes a clean CI machine work: a cold kube build takes 10-25 min on 2 cores.
    """
    found, crds = _locate()
    missing = [name for name in ("kube-apiserver", "etcd") if found[name] is None]
    if crds is None:
        missing.append("flux-crds")
    if missing and build:
        targets = sorted({"kube" if m == "kube-apiserver" else m for m in missing})
        _build(targets, log)
        found, crds = _locate()
    apiserver, etcd = found["kube-apiserver"], found["etcd"]
    if apiserver is None or etcd is None:
        raise ControlPlaneError(
            "kube-apiserver/etcd not found: set KUBEBUILDER_ASSETS or run `hack/build-tools.sh kube etcd`"
        )
    return Tools(kube_apiserver=apiserver, etcd=etcd, kubectl=found["kubectl"], flux_crds=crds)


def _build(targets: list[str], log: IO[str] | None) -> None:
    """Run build-tools.sh under a lock, so concurrent test sessions do not build the same thing twice."""
    cache = Path(build_tools_paths()["FLUX_CRDS"]).parents[1]
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lab-kube-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other session's build may finish what we miss
        found, crds = _locate()
        if all(found[n] for n in ("kube-apiserver", "etcd")) and crds is not None:
            return
        print(
            f"[lab.kube] building {', '.join(targets)} with {BUILD_TOOLS} (cold: 10-25 min)", file=sys.stderr
        )
        started = time.monotonic()
        subprocess.run(
            ["bash", str(BUILD_TOOLS), *targets],
            check=True,
            timeout=BUILD_TIMEOUT,
            stdout=log or sys.stderr,
            stderr=subprocess.STDOUT,
        )
        print(f"[lab.kube] built in {time.monotonic() - started:.0f} s", file=sys.stderr)


def load_flux_crds(tools: Tools | None = None, kinds: Iterable[str] = ("ocirepositories",)) -> list[Doc]:
    """The real Flux source-controller CRDs (from its Go module, cached at test time; never vendored)."""
    crds = (tools or find_tools()).flux_crds
    if crds is None:
        raise ControlPlaneError("Flux CRDs not found: run `hack/build-tools.sh flux-crds`")
    return [doc for kind in kinds for doc in load_docs(crds / f"source.toolkit.fluxcd.io_{kind}.yaml")]


def secret_document(namespace: str, name: str, data: Mapping[str, str], kind: str = "Opaque") -> Doc:
    """A Secret of ``kind`` holding ``data`` as ``stringData``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": kind,
        "metadata": {"name": name, "namespace": namespace},
        "stringData": dict(data),
    }


def basic_auth_secret(namespace: str, name: str, credentials: tuple[str, str] | None) -> Doc:
    """A ``kubernetes.io/basic-auth`` Secret, e.g. of the lab edge's robot account."""
    user, password = credentials or ("", "")
    return secret_document(
        namespace, name, {"username": user, "password": password}, "kubernetes.io/basic-auth"
    )


def load_docs(source: Path | str | Doc | Iterable[Doc]) -> list[Doc]:
    """Normalise a path (file or directory of YAML), a YAML string, a doc or docs into a list of docs."""
    if isinstance(source, Mapping):
        return [dict(source)]
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and Path(source).exists()):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
            return [doc for p in files for doc in load_docs(p)]
        source = path.read_text()
    if isinstance(source, str):
        return [doc for doc in yaml.safe_load_all(source) if doc]
    return [dict(doc) for doc in source]


# --------------------------------------------------------------------------------------------------
# PKI


def _pem_cert(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(cert.public_bytes(serialization.Encoding.PEM))


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


@dataclass
class Pki:
    """Files of the throwaway PKI: serving CA + cert, client CA + admin cert, SA signing key pair."""

    dir: Path
    ca_crt: Path
    serving_crt: Path
    serving_key: Path
    client_ca_crt: Path
    admin_crt: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path

    @classmethod
    def generate(cls, directory: Path) -> Pki:
        """Make every key and certificate the apiserver and an admin client need (ECDSA, 7 days).

        Separate CAs for serving and client auth, as envtest does: a serving cert can never be used
        to authenticate as a user.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        directory.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        until = now + dt.timedelta(days=7)

        def name(cn: str, org: str | None = None) -> x509.Name:
            attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
            if org:
                attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
            return x509.Name(attrs)

        def ca(cn: str) -> tuple[Any, Any]:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (
                x509.CertificateBuilder()
                .subject_name(name(cn, "layerwatch-lab"))
                .issuer_name(name(cn, "layerwatch-lab"))
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now)
                .not_valid_after(until)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
                )
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256())
            )
            return key, cert

        def leaf(
            ca_key: Any, ca_cert: Any, subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[Any]
        ) -> tuple[Any, Any]:
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(ca_cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now)
                .not_valid_after(until)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
                )
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
                )
            )
            if sans:
                builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            return key, builder.sign(ca_key, hashes.SHA256())

        ca_key, ca_cert = ca("layerwatch-lab-serving-ca")
        srv_key, srv_cert = leaf(
            ca_key,
            ca_cert,
            name("localhost"),
            ExtendedKeyUsageOID.SERVER_AUTH,
            [
                x509.DNSName("localhost"),
                x509.DNSName("kubernetes"),
                x509.DNSName("kubernetes.default.svc"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ],
        )
        cca_key, cca_cert = ca("layerwatch-lab-client-ca")
        adm_key, adm_cert = leaf(
            cca_key, cca_cert, name("lab-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, []
        )
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sa_pub = sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

        pki = cls(
            dir=directory,
            ca_crt=directory / "ca.crt",
            serving_crt=directory / "apiserver.crt",
            serving_key=directory / "apiserver.key",
            client_ca_crt=directory / "client-ca.crt",
            admin_crt=directory / "admin.crt",
            admin_key=directory / "admin.key",
            sa_key=directory / "sa.key",
            sa_pub=directory / "sa.pub",
        )
        files = {
            pki.ca_crt: _pem_cert(ca_cert),
            pki.serving_crt: _pem_cert(srv_cert),
            pki.serving_key: _pem_key(srv_key),
            pki.client_ca_crt: _pem_cert(cca_cert),
            pki.admin_crt: _pem_cert(adm_cert),
            pki.admin_key: _pem_key(adm_key),
            pki.sa_key: _pem_key(sa_key),
            pki.sa_pub: sa_pub,
        }
        for path, data in files.items():
            path.write_bytes(data)
            path.chmod(0o600)
        return pki


# --------------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    """A currently free loopback TCP port (racy by nature; start() retries on bind failures)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Linux: SIGKILL the child when the process that started it dies, so no apiserver outlives CI."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Proc:
    """One child process with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.argv, self.log_path = name, argv, log
        self._log = log.open("ab")
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=preexec
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait, then SIGKILL: etcd and kube-apiserver both shut down cleanly on SIGTERM."""
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T:
    """Poll ``probe`` until it returns something truthy; bounded, with the last error in the message."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except ControlPlaneError:
            raise
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise ControlPlaneError(
                f"timed out after {timeout:.0f} s waiting for {what} (last error: {last!r})"
            )
        time.sleep(interval)


# --------------------------------------------------------------------------------------------------
# Control plane


class ControlPlane:
    """etcd + kube-apiserver on random loopback ports, with RBAC and an admin kubeconfig.

    ``start()`` (or ``with``) brings both up and waits for ``/readyz`` and namespace ``default``;
    ``stop()`` terminates them and removes the temporary directory (PKI, etcd data, logs).
    """

    def __init__(
        self, tools: Tools | None = None, *, keep_dir: bool = False, audit_users: Iterable[str] = ()
    ) -> None:
        """``audit_users``: log every request these users make to ``audit_log`` (JSON lines, one per
        finished request), e.g. to count what an operator's ServiceAccount costs the apiserver."""
        self.tools = tools or find_tools()
        self.keep_dir = keep_dir
        self.audit_users = list(audit_users)
        self.dir = Path(tempfile.mkdtemp(prefix="layerwatch-kube-"))
        self.pki: Pki | None = None
        self.etcd: _Proc | None = None
        self.apiserver: _Proc | None = None
        self.etcd_url = ""
        self.port = 0
        self.kubeconfig = self.dir / "admin.kubeconfig"
        self.audit_log = self.dir / "audit.log"
        self.timings: dict[str, float] = {}
        self._clients: list[Any] = []
        self._admin_client: Any = None
        self._resources: dict[str, list[Doc]] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = START_TIMEOUT, attempts: int = 3) -> ControlPlane:
        """Start etcd and the apiserver; retried because a free port can be taken before we bind it."""
        started = time.monotonic()
        self.pki = Pki.generate(self.dir / "pki")
        for attempt in range(1, attempts + 1):
            try:
                self._start_etcd(timeout)
                self._start_apiserver(timeout)
                break
            except ControlPlaneError:
                crashed = any(p is not None and not p.alive() for p in (self.etcd, self.apiserver))
                self._stop_processes()
                if attempt == attempts or not crashed:
                    self.stop()
                    raise
        self._write_admin_kubeconfig()
        self.timings["start"] = time.monotonic() - started
        return self

    def _start_etcd(self, timeout: float) -> None:
        data = self.dir / "etcd"
        shutil.rmtree(data, ignore_errors=True)
        client, peer = free_port(), free_port()
        while peer == client:
            peer = free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        started = time.monotonic()
        self.etcd = _Proc(
            "etcd",
            [
                str(self.tools.etcd),
                "--name=lab",
                f"--data-dir={data}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=lab={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            self.dir / "etcd.log",
        )

        def healthy() -> bool:
            self._check_alive(self.etcd)
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as rsp:
                return bool(json.load(rsp).get("health") == "true")

        wait_for("etcd /health", healthy, timeout)
        self.timings["etcd"] = time.monotonic() - started

    def _start_apiserver(self, timeout: float) -> None:
        assert self.pki is not None
        pki = self.pki
        self.port = free_port()
        started = time.monotonic()
        self.apiserver = _Proc(
            "kube-apiserver",
            [
                str(self.tools.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                f"--cert-dir={pki.dir}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--tls-cert-file={pki.serving_crt}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.client_ca_crt}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                # No controller-manager creates the `default` ServiceAccount that this plugin requires.
                "--disable-admission-plugins=ServiceAccount",
                f"--service-account-issuer={self.server}/",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--profiling=false",
                "--v=1",
                *self._audit_flags(),
            ],
            self.dir / "kube-apiserver.log",
        )
        ctx = self._ssl_context()

        def ready() -> bool:
            self._check_alive(self.apiserver)
            with urllib.request.urlopen(f"{self.server}/readyz", timeout=5, context=ctx) as rsp:
                return bool(rsp.status == 200)

        wait_for("kube-apiserver /readyz", ready, timeout, interval=0.5)
        self.timings["apiserver_ready"] = time.monotonic() - started

        def default_namespace() -> bool:
            self._check_alive(self.apiserver)
            with urllib.request.urlopen(
                f"{self.server}/api/v1/namespaces/default", timeout=5, context=ctx
            ) as rsp:
                return bool(rsp.status == 200)

        wait_for("namespace default", default_namespace, timeout)
        self.timings["apiserver"] = time.monotonic() - started

    def _audit_flags(self) -> list[str]:
        if not self.audit_users:
            return []
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [{"level": "Metadata", "users": self.audit_users}, {"level": "None"}],
        }
        path = self.dir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump(policy))
        return [
            f"--audit-policy-file={path}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
        ]

    def _check_alive(self, proc: _Proc | None) -> None:
        if proc is not None and not proc.alive():
            raise ControlPlaneError(
                f"{proc.name} exited with {proc.popen.returncode}; last log lines:\n{proc.tail()}"
            )

    def _ssl_context(self) -> ssl.SSLContext:
        assert self.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        ctx.load_cert_chain(str(self.pki.admin_crt), str(self.pki.admin_key))
        return ctx

    def _stop_processes(self) -> None:
        # The apiserver first: it would otherwise log etcd errors while shutting down.
        for proc in (self.apiserver, self.etcd):
            if proc is not None:
                proc.stop()
        self.apiserver = self.etcd = None

    def stop(self) -> None:
        """Stop both processes (SIGTERM, wait, SIGKILL) and remove the temporary directory."""
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        self._admin_client = None
        self._stop_processes()
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self, lines: int = 40) -> str:
        """Recent output of both processes, for failure messages."""
        return "\n".join(f"--- {p.name}\n{p.tail(lines)}" for p in (self.etcd, self.apiserver) if p)

    # -- kubeconfigs and clients -----------------------------------------------------------------

    def _kubeconfig(self, user_name: str, user: Doc) -> Doc:
        assert self.pki is not None
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "lab",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(self.pki.ca_crt.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": user_name, "user": user}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": user_name}}],
            "current-context": "lab",
        }

    def _write_admin_kubeconfig(self) -> None:
        assert self.pki is not None
        user = {
            "client-certificate-data": base64.b64encode(self.pki.admin_crt.read_bytes()).decode(),
            "client-key-data": base64.b64encode(self.pki.admin_key.read_bytes()).decode(),
        }
        self.kubeconfig.write_text(yaml.safe_dump(self._kubeconfig("lab-admin", user)))
        self.kubeconfig.chmod(0o600)

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin (or for ``kubeconfig``); closed by ``stop()``."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(
            config_file=str(kubeconfig or self.kubeconfig), client_configuration=configuration
        )
        api = client.ApiClient(configuration)
        self._clients.append(api)
        return api

    def kubectl(
        self, *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 120
    ) -> Any:
        """Run the matching kubectl (built with the apiserver) against this control plane."""
        if self.tools.kubectl is None:
            raise ControlPlaneError("kubectl not found: run `hack/build-tools.sh kube`")
        return subprocess.run(
            [str(self.tools.kubectl), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    # -- generic object handling -----------------------------------------------------------------

    def _call(
        self, method: str, path: str, body: Any = None, query: list[tuple[str, Any]] | None = None
    ) -> Any:
        """One REST call as admin; non-2xx answers raise ``kubernetes.client.ApiException``."""
        if self._admin_client is None:
            self._admin_client = self.api_client()
        api = self._admin_client
        return api.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            response_types_map={200: "object", 201: "object", 202: "object"},
            _return_http_data_only=True,
            _request_timeout=60,
        )

    def _resource(self, api_version: str, kind: str) -> Doc:
        """Discovery for one group/version, re-read on a miss (new CRDs appear after a while)."""
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"

        def lookup() -> Doc | None:
            if api_version not in self._resources or not any(
                r["kind"] == kind for r in self._resources[api_version]
            ):
                self._resources[api_version] = self._call("GET", base)["resources"]
            for res in self._resources[api_version]:
                if res["kind"] == kind and "/" not in res["name"]:
                    return {**res, "base": base}
            return None

        return wait_for(f"API resource {kind} in {api_version}", lookup, 60, interval=0.5)

    def path_of(self, doc: Doc, *, collection: bool = False) -> str:
        """The REST path of an object (or of its collection)."""
        res = self._resource(doc["apiVersion"], doc["kind"])
        meta = doc.get("metadata", {})
        path = res["base"]
        if res["namespaced"]:
            path += f"/namespaces/{meta.get('namespace') or 'default'}"
        path += f"/{res['name']}"
        return path if collection else f"{path}/{meta['name']}"

    def apply(self, source: Path | str | Doc | Iterable[Doc], *, timeout: float = 60) -> list[Doc]:
        """Create or replace each object (a file, directory, YAML string, doc or docs), in order.

        CRDs are waited for until Established, so their kinds can be applied right after. Objects
        are replaced with a PUT carrying the live resourceVersion, like ``kubectl replace``.
        """
        from kubernetes.client.exceptions import ApiException

        result = []
        for doc in load_docs(source):
            if doc.get("kind") == "List":
                result += self.apply(doc.get("items", []), timeout=timeout)
                continue
            try:
                live = self._call("POST", self.path_of(doc, collection=True), body=doc)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                current = self._call("GET", self.path_of(doc))
                body = {**doc, "metadata": {**doc["metadata"]}}
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                live = self._call("PUT", self.path_of(doc), body=body)
            if doc["kind"] == "CustomResourceDefinition":
                live = self.wait_crd_established(doc["metadata"]["name"], timeout=timeout)
            result.append(live)
        return result

    def delete(self, doc: Doc) -> None:
        """Delete an object if it exists."""
        from kubernetes.client.exceptions import ApiException

        try:
            self._call("DELETE", self.path_of(doc))
        except ApiException as exc:
            if exc.status != 404:
                raise

    def get(self, doc: Doc) -> Doc:
        """The live version of an object."""
        return dict(self._call("GET", self.path_of(doc)))

    def wait_crd_established(self, name: str, timeout: float = 60) -> Doc:
        """Wait until a CRD is Established (its REST endpoint is served) and its kind is discoverable."""

        def established() -> Doc | None:
            crd = self._call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conditions = crd.get("status", {}).get("conditions", [])
            ok = any(c["type"] == "Established" and c["status"] == "True" for c in conditions)
            return dict(crd) if ok else None

        crd = wait_for(f"CRD {name} Established", established, timeout)
        storage = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
        self._resource(f"{crd['spec']['group']}/{storage}", crd["spec"]["names"]["kind"])
        return crd

    def create_namespace(self, prefix: str = "lw") -> str:
        """A fresh namespace with a random suffix (namespaces never finish deleting here)."""
        name = f"{prefix}-{secrets.token_hex(4)}"
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return name

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        cluster_role_binding_docs: Path | str | Doc | Iterable[Doc] = (),
        *,
        expiration_seconds: int = 12 * 3600,
    ) -> Path:
        """A kubeconfig for ServiceAccount ``namespace/name`` holding only a token and the CA.

        Creates the namespace and ServiceAccount if needed and applies the given RBAC docs (ClusterRole,
        ClusterRoleBinding, ...). The token comes from the TokenRequest API, so a process using this
        kubeconfig has exactly the rights RBAC grants that ServiceAccount, and cannot be admin.
        """
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        self.apply(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}
        )
        self.apply(cluster_role_binding_docs)
        return self.token_kubeconfig(namespace, name, expiration_seconds=expiration_seconds)

    def token_kubeconfig(self, namespace: str, name: str, *, expiration_seconds: int = 12 * 3600) -> Path:
        """A kubeconfig holding only a TokenRequest token of an existing ServiceAccount (and the CA).

        For ServiceAccounts that an install (Helm, kustomize) created: nothing is applied or changed.
        """
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [], "expirationSeconds": expiration_seconds},
        }
        token = self._call(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body=request
        )
        path = self.dir / f"sa-{namespace}-{name}.kubeconfig"
        path.write_text(
            yaml.safe_dump(self._kubeconfig(f"{namespace}-{name}", {"token": token["status"]["token"]}))
        )
        path.chmod(0o600)
        return path


@contextlib.contextmanager
def control_plane(tools: Tools | None = None) -> Iterator[ControlPlane]:
    """``with control_plane() as cp:`` starts a ControlPlane and always stops it."""
    cp = ControlPlane(tools)
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


def main() -> None:
    """``python -m lab.kube``: start a control plane with the CRDs and wait (for manual poking)."""
    with control_plane() as cp:
        cp.apply(load_flux_crds(cp.tools))
        cp.apply(REPO / "crds" / "proxychain.yaml")
        print(f"export KUBECONFIG={cp.kubeconfig}  # {cp.timings}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
