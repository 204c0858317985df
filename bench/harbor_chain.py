"""Requests and bytes per check through the real Harbor chain next to the gateway chain.

``python bench/harbor_chain.py [--artifacts 10] [--rechecks 3] [--settle 25] [--chains harbor,gateway]``

For each chain (`lab.harbor.HarborChain`: edge Harbor -> core Harbor -> origin registry, real
Harbor v2.15.2; `lab.chain.LocalChain`: the same layout with `lab.gateway` playing Harbor), one
after the other so only one chain runs at a time: push 2N small Flux artifacts to the origin,
check the first N in full mode and the other N in head mode while every cache is cold (the first
check), wait ``--settle`` seconds (Harbor stores a proxied manifest ~20 s after the first pull and
blobs in the background), then re-check each set ``--rechecks`` times (warm). Every check covers
all three hops, 4 checks at a time, one `RegistryClient` per hop for the whole run and a fresh
blob cache per round (so full mode downloads every blob every round). Requests are counted per
hop by the clients' ``on_request`` hook (what ``layerwatch_registry_requests_total`` counts), bytes
as the blob bytes each hop's observation verified. Prints one JSON object (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from benchlib import host_info, rounded
from lab.artifacts import push_flux_artifact
from lab.chain import ChainLayout, LocalChain
from lab.harbor import HarborChain
from layerwatch.chain import Chain, Credentials, Hop, HopTarget, Mode
from layerwatch.check import BlobCache, check_target
from layerwatch.reference import Reference
from layerwatch.registry import RegistryClient
from layerwatch.settings import EngineSettings

TAG = "v1"
PARALLEL = 4
"""Checks at once, as the operator's scheduler runs them by default."""


def layerwatch_chain(layout: ChainLayout[Any]) -> Chain:
    """The lab chain as layerwatch sees it, each hop with its robot account (if any)."""
    hops = []
    for hop in layout.hops:
        credentials = Credentials(*hop.credentials) if hop.credentials else None
        hops.append(Hop.from_url(hop.name, hop.url, credentials=credentials))
    return Chain(name="bench", hops=tuple(hops))


class Phase:
    """What one round kind (e.g. full mode, cold) cost: requests by hop and kind, bytes, verdicts."""

    def __init__(self) -> None:
        self.checks = 0
        self.wall = 0.0
        self.requests: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.verdicts: Counter[str] = Counter()

    def report(self) -> dict[str, Any]:
        checks = max(self.checks, 1)
        return {
            "checks": self.checks,
            "wall_s": rounded(self.wall),
            "requests_per_check": rounded(sum(self.requests.values()) / checks),
            "requests_per_check_by_hop": {
                hop: rounded(n / checks) for hop, n in sorted(self.requests.items())
            },
            "blob_bytes_verified_per_check_by_hop": {
                hop: rounded(n / checks, 1) for hop, n in sorted(self.bytes.items())
            },
            "requests_by_kind": dict(sorted(self.kinds.items())),
            "verdicts": dict(sorted(self.verdicts.items())),
        }


class Checker:
    """One client per hop, counting every exchange into the current `Phase`."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.phase = Phase()
        self.clients = {
            hop.name: RegistryClient.for_hop(hop, EngineSettings(), on_request=self._hook(hop.name))
            for hop in chain.hops
        }

    def _hook(self, hop: str) -> Any:
        def count(method: str, code: str) -> None:
            self.phase.requests[hop] += 1
            self.phase.kinds[f"{hop} {method} {code}"] += 1

        return count

    async def close(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients.values()))

    async def round(self, phase: Phase, references: Sequence[Reference], mode: Mode) -> None:
        self.phase = phase
        cache = BlobCache(ttl=3600.0)
        limit = asyncio.Semaphore(PARALLEL)

        async def one(reference: Reference) -> None:
            path: list[HopTarget] = self.chain.pull_path(reference)
            async with limit:
                result = await check_target(reference, path, self.clients, mode=mode, cache=cache)
            phase.checks += 1
            for observation in result.observations:
                hop = observation.hop
                phase.bytes[hop] += sum(b.bytes_verified for m in observation.manifests for b in m.blobs)
            for hop, verdict in _hop_verdicts(result).items():
                phase.verdicts[f"{hop} {verdict}"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(reference) for reference in references))
        phase.wall += time.perf_counter() - started


def _hop_verdicts(result: Any) -> dict[str, str]:
    return {hop.hop: hop.verdict.value for hop in result.judgement.hops}


def push(layout: ChainLayout[Any], count: int) -> list[Reference]:
    """``count`` fresh Flux artifacts at the origin, as references at the edge."""
    references = []
    for _ in range(count):
        repository = f"bench/h{secrets.token_hex(4)}"
        push_flux_artifact(layout.push_address, repository, TAG)  # type: ignore[attr-defined]
        references.append(Reference.parse(layout.reference(repository, TAG)))
    return references


async def measure(layout: ChainLayout[Any], artifacts: int, rechecks: int, settle: float) -> dict[str, Any]:
    sets = {mode: push(layout, artifacts) for mode in (Mode.FULL, Mode.HEAD)}
    checker = Checker(layerwatch_chain(layout))
    report: dict[str, Any] = {}
    try:
        for mode, references in sets.items():
            cold = Phase()
            await checker.round(cold, references, mode)
            report[mode.value] = {"cold": cold.report()}
        await asyncio.sleep(settle)
        for mode, references in sets.items():
            warm = Phase()
            for _ in range(rechecks):
                await checker.round(warm, references, mode)
            report[mode.value]["warm"] = warm.report()
    finally:
        await checker.close()
    return report


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "host": host_info(),
        "artifacts": args.artifacts,
        "rechecks": args.rechecks,
        "settle_s": args.settle,
        "parallel": PARALLEL,
        "chains": {},
    }
    for kind in args.chains.split(","):
        started = time.monotonic()
        layout: ChainLayout[Any] = HarborChain() if kind == "harbor" else LocalChain()
        with layout:
            up = time.monotonic() - started
            print(f"[bench] {kind} chain up in {up:.1f} s", file=sys.stderr)
            chain_report = asyncio.run(measure(layout, args.artifacts, args.rechecks, args.settle))
        result["chains"][kind] = {"start_s": rounded(up, 1), **chain_report}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=int, default=10, help="artifacts per mode (default 10)")
    parser.add_argument("--rechecks", type=int, default=3, help="warm rounds per mode (default 3)")
    parser.add_argument("--settle", type=float, default=25.0, help="seconds between cold and warm rounds")
    parser.add_argument("--chains", default="harbor,gateway", help="harbor, gateway or both (default)")
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        report = run(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
