"""Shared plumbing of the benchmarks: import paths, the lab chain as a layerwatch `Chain`, counting.

The bench scripts run as plain scripts (``python bench/x.py``), so they put the checkout's
``hack/`` (the `lab` package) and ``operator/`` (`layerwatch`) first on ``sys.path`` themselves
(`setup_paths`) before importing anything from there.

Requests are counted from the gateways' own logs (``GET /_lab/requests``). A proxy registry asks
its upstream gateway for the same paths a client does, so to tell the two apart the benchmarks
reach every gateway as ``localhost:PORT`` while the proxies use ``127.0.0.1:PORT``: the Host
header each gateway logs then says who asked.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[1]
CLIENT_HOST = "localhost"
"""How the benchmarks name the loopback gateways (the lab's proxies use ``127.0.0.1``)."""
LOG_LIMIT = 10_000
"""Entries a gateway keeps in its request log (``lab.gateway.LOG_LIMIT``); reading more is a bug."""


def setup_paths() -> None:
    """Put ``hack/`` and ``operator/`` of this checkout first on ``sys.path`` (idempotent)."""
    for path in (REPO / "operator", REPO / "hack"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


setup_paths()

if TYPE_CHECKING:
    from lab.chain import LocalChain
    from layerwatch.chain import Chain, HopTarget
    from layerwatch.reference import Reference


def bench_chain(local: LocalChain, name: str = "bench") -> Chain:
    """The lab chain as layerwatch sees it, every hop addressed as ``localhost:PORT``."""
    from layerwatch.chain import Chain, Credentials, Hop

    hops = []
    for hop in local.hops:
        url = f"http://{CLIENT_HOST}:{hop.gateway.port}" + (f"/{hop.prefix}" if hop.prefix else "")
        credentials = Credentials(*hop.credentials) if hop.credentials else None
        hops.append(Hop.from_url(hop.name, url, credentials=credentials))
    return Chain(name=name, hops=tuple(hops))


def edge_reference(local: LocalChain, repository: str, tag: str) -> Reference:
    """``localhost:EDGE/p-core/p-ghcr/<repository>:tag``."""
    from layerwatch.reference import Reference

    edge = local.hop("edge")
    return Reference.parse(
        f"{CLIENT_HOST}:{edge.gateway.port}/{local.repository_at('edge', repository)}:{tag}"
    )


def pull_path(local: LocalChain, chain: Chain, repository: str, tag: str) -> list[HopTarget]:
    """Every hop of the chain, edge to origin, with the artifact's path there."""
    return chain.pull_path(edge_reference(local, repository, tag))


class RequestTally:
    """Requests the gateways logged, split into ours (Host ``localhost``) and the proxies' own."""

    def __init__(self) -> None:
        self.client: Counter[str] = Counter()
        """Client requests per hop."""
        self.proxy: Counter[str] = Counter()
        """Requests a proxy registry made to its upstream gateway, per gateway."""
        self.kinds: Counter[str] = Counter()
        """Client requests by hop, method and kind (``edge HEAD manifests``; status unless 2xx/3xx)."""
        self.proxy_kinds: Counter[str] = Counter()
        """The same for the proxies' requests (``core HEAD manifests``: the edge proxy asked core)."""

    def add(self, hop: str, entries: Iterable[Mapping[str, Any]]) -> None:
        for entry in entries:
            if entry.get("listener") != "registry":
                continue
            status = int(entry.get("status") or 0)
            kind = f"{hop} {entry['method']} {_kind(str(entry['path']))}" + (
                f" {status}" if not 200 <= status < 400 else ""
            )
            if str(entry.get("host", "")).startswith(f"{CLIENT_HOST}:"):
                self.client[hop] += 1
                self.kinds[kind] += 1
            else:
                self.proxy[hop] += 1
                self.proxy_kinds[kind] += 1

    def collect(self, local: LocalChain) -> None:
        """Read and clear every gateway's log (call between rounds: the logs hold `LOG_LIMIT` entries)."""
        for hop in local.hops:
            faults = hop.gateway.faults
            entries = faults.requests()
            faults.clear_requests()
            if len(entries) >= LOG_LIMIT:
                raise RuntimeError(
                    f"gateway {hop.name} log overflowed ({len(entries)} entries): fewer per round"
                )
            self.add(hop.name, entries)

    @property
    def client_total(self) -> int:
        return sum(self.client.values())

    @property
    def proxy_total(self) -> int:
        return sum(self.proxy.values())


def clear_logs(local: LocalChain) -> None:
    """Forget what the gateways logged so far (warm-up traffic)."""
    for hop in local.hops:
        hop.gateway.faults.clear_requests()


def _kind(path: str) -> str:
    if path.startswith("/service/token"):
        return "token"
    if path == "/v2/":
        return "ping"
    for kind in ("manifests", "blobs"):
        if f"/{kind}/" in path:
            return kind
    return "other"


def host_info() -> dict[str, Any]:
    """Where the numbers come from."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def rounded(value: float, digits: int = 3) -> float:
    """A float fit for JSON reports."""
    return round(value, digits)
