"""`LocalChain`: a Harbor-style two-prefix proxy chain of real registries on loopback.

Topology (each arrow is "asks upstream"; ``[gw]`` is a `lab.gateway` playing a Harbor project)::

    client -> edge [gw p-core, Bearer auth] -> edge proxy registry
                 -> core [gw p-ghcr] -> core proxy registry
                 -> origin [gw, mirror] -> origin registry (pushes go here directly)

Distribution's proxy forwards the repository path unchanged to its ``remoteurl`` host, so the edge
registry asks the core *gateway* for ``/v2/p-ghcr/org/app/...``, which strips ``p-ghcr``: the artifact
``org/app`` is ``p-core/p-ghcr/org/app`` at edge, ``p-ghcr/org/app`` at core and ``org/app`` at origin,
exactly as with two chained Harbor proxy projects. Proxies cache what they pull (see
`lab.registry`), so each test should push to a fresh repository name.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

import yaml

from lab.control import FaultClient, GatewayProcess
from lab.registry import RegistryProcess

__all__ = ["EDGE_USER", "ChainHop", "ChainLayout", "LabHop", "LocalChain"]

EDGE_USER = ("robot$lab+edge", "lab-edge-secret")
"""Robot credentials the edge gateway accepts at its token endpoint (Harbor robot naming)."""


@dataclasses.dataclass(frozen=True)
class LabHop:
    """One hop: the gateway clients talk to and the registry behind it."""

    name: str
    prefix: str
    gateway: GatewayProcess
    registry: RegistryProcess
    credentials: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        """The hop URL as a ProxyChain names it: ``http://127.0.0.1:PORT[/prefix]``."""
        return self.gateway.url + (f"/{self.prefix}" if self.prefix else "")

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` of the gateway."""
        return self.gateway.address


class ChainHop(Protocol):
    """What addressing a chain needs of a hop, whatever serves it (a gateway, a real Harbor)."""

    @property
    def name(self) -> str: ...
    @property
    def prefix(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def credentials(self) -> tuple[str, str] | None: ...


HopT = TypeVar("HopT", bound=ChainHop)


class ChainLayout(Generic[HopT]):
    """Hop lookup, per-hop repository paths and the ProxyChain document of a started lab chain.

    ``hops`` runs edge first; each hop's ``prefix`` is the project it adds in front of the path.
    """

    hops: list[HopT]
    _stack: contextlib.ExitStack

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop every process, edge first, and delete their storage; safe to call twice."""
        self._stack.close()
        self.hops = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def hop(self, name: str) -> HopT:
        """The hop called ``edge``, ``core`` or ``origin``."""
        for hop in self.hops:
            if hop.name == name:
                return hop
        raise KeyError(f"no hop {name!r}; hops: {[h.name for h in self.hops]}")

    @property
    def edge_url(self) -> str:
        return self.hop("edge").url

    @property
    def core_url(self) -> str:
        return self.hop("core").url

    @property
    def origin_url(self) -> str:
        return self.hop("origin").url

    def repository_at(self, hop: str, repository: str) -> str:
        """The path of origin ``repository`` at ``hop``: every prefix from that hop to the origin, joined."""
        names = [h.name for h in self.hops]
        prefixes = [h.prefix for h in self.hops[names.index(hop) :] if h.prefix]
        return "/".join([*prefixes, repository])

    def reference(self, repository: str, tag: str, hop: str = "edge") -> str:
        """``127.0.0.1:PORT/<path at hop>:tag``, e.g. for ``oci://`` URLs and CLI arguments."""
        return f"{self.hop(hop).address}/{self.repository_at(hop, repository)}:{tag}"

    def chain_document(self, name: str = "lab") -> dict[str, object]:
        """A ProxyChain for this chain, with each hop's credentials inline (CLI file format)."""
        hops: list[dict[str, str]] = []
        for hop in self.hops:
            entry = {"name": hop.name, "url": hop.url}
            if hop.credentials is not None:
                entry |= {"username": hop.credentials[0], "password": hop.credentials[1]}
            hops.append(entry)
        return {
            "apiVersion": "layerwatch.io/v1alpha1",
            "kind": "ProxyChain",
            "metadata": {"name": name},
            "spec": {"hops": hops},
        }

    def write_chain_yaml(self, path: Path, name: str = "lab") -> Path:
        """Write `chain_document` as YAML to ``path`` (for ``layerwatch check --chain``)."""
        path.write_text(yaml.safe_dump(self.chain_document(name), sort_keys=False))
        return path


class LocalChain(ChainLayout[LabHop]):
    """Start (and always stop) the three-hop chain; usable as a context manager.

    ``edge_auth`` is the edge gateway's ``--auth`` (``required``: only `EDGE_USER` gets tokens;
    ``anonymous``: anonymous tokens too; ``none``). ``token_ttl`` is the edge's token lifetime.
    """

    def __init__(self, *, edge_auth: str = "required", token_ttl: float = 1800.0) -> None:
        self._edge_auth = edge_auth
        self._token_ttl = token_ttl
        self._stack = contextlib.ExitStack()
        self.hops: list[LabHop] = []

    def start(self) -> Self:
        """Start origin first: a proxy registry panics at start-up if its upstream does not answer."""
        with self._stack:
            origin_registry = self._started(RegistryProcess("origin"))
            origin = self._hop("origin", "", origin_registry, None)
            core_registry = self._started(RegistryProcess("core", remote_url=origin.gateway.url))
            core = self._hop("core", "p-ghcr", core_registry, None)
            edge_registry = self._started(RegistryProcess("edge", remote_url=core.gateway.url))
            user = EDGE_USER if self._edge_auth != "none" else None
            edge = self._hop("edge", "p-core", edge_registry, user)
            self.hops = [edge, core, origin]
            self._stack = self._stack.pop_all()
        return self

    def _started(self, registry: RegistryProcess) -> RegistryProcess:
        registry.start()
        self._stack.callback(registry.stop)
        return registry

    def _hop(self, name: str, prefix: str, registry: RegistryProcess, user: tuple[str, str] | None) -> LabHop:
        auth = self._edge_auth if name == "edge" else "none"
        gateway = GatewayProcess(
            name, registry.url, prefix=prefix, auth=auth, user=user, token_ttl=self._token_ttl
        ).start()
        self._stack.callback(gateway.stop)
        return LabHop(name, prefix, gateway, registry, user)

    @property
    def push_address(self) -> str:
        """``127.0.0.1:PORT`` of the origin registry itself (gateways refuse pushes, as Harbor proxies do)."""
        return self.hop("origin").registry.address

    def faults(self, hop: str) -> FaultClient:
        """Admin client of ``hop``'s gateway."""
        return self.hop(hop).gateway.faults
