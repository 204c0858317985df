"""What checking signatures costs: requests and time per check with and without ``verify``.

Pushes ``--artifacts`` small Flux artifacts per variant to the lab origin, signs them with the real
CLIs (``cosign`` legacy ``.sig``, ``cosign`` bundle, ``notation``; none for ``unsigned``), warms the
chain (two checks each), then runs ``--rounds`` rounds checking every artifact over the three hops
(full mode, fresh blob cache per round) and prints one JSON object: per variant the client
requests per check, the requests by kind, and the seconds per check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import benchlib
from lab.artifacts import push_flux_artifact
from lab.chain import LocalChain
from lab.signing import Signer
from layerwatch.chain import Chain, HopTarget, Mode
from layerwatch.check import BlobCache, check_target
from layerwatch.reference import Reference
from layerwatch.registry import RegistryClient
from layerwatch.signatures import Provider

VARIANTS: dict[str, tuple[str | None, Provider | None]] = {
    "unsigned": (None, None),
    "cosign-sig": ("legacy", Provider.COSIGN),
    "cosign-bundle": ("bundle", Provider.COSIGN),
    "notation": ("notation", Provider.NOTATION),
}


def push(local: LocalChain, signer: Signer, variant: str, count: int) -> list[str]:
    how = VARIANTS[variant][0]
    repositories = []
    for i in range(count):
        repository = f"bench/sig-{variant}-{i}-{time.monotonic_ns()}"
        pushed = push_flux_artifact(local.push_address, repository, "v1")
        reference = f"{local.push_address}/{repository}@{pushed.manifest_digest}"
        if how == "notation":
            signer.notation_sign(reference)
        elif how is not None:
            signer.cosign_sign(reference, bundle=how == "bundle")
        repositories.append(repository)
    return repositories


async def rounds(
    chain: Chain,
    targets: Sequence[tuple[Reference, list[HopTarget]]],
    provider: Provider | None,
    count: int,
) -> tuple[float, list[str]]:
    clients = {hop.name: RegistryClient.for_hop(hop) for hop in chain.hops}
    verdicts: list[str] = []
    try:
        started = time.perf_counter()
        for _ in range(count):
            cache = BlobCache(300.0)
            results = await asyncio.gather(
                *(
                    check_target(reference, path, clients, mode=Mode.FULL, cache=cache, verify=provider)
                    for reference, path in targets
                )
            )
            verdicts += [r.judgement.verdict.value for r in results]
        return time.perf_counter() - started, verdicts
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.values()))


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "host": benchlib.host_info(),
        "artifacts": args.artifacts,
        "rounds": args.rounds,
    }
    with LocalChain() as local, tempfile.TemporaryDirectory() as keys:
        signer = Signer(Path(keys))
        chain = benchlib.bench_chain(local)
        for variant, (_, provider) in VARIANTS.items():
            repositories = push(local, signer, variant, args.artifacts)
            targets = [
                (benchlib.edge_reference(local, r, "v1"), benchlib.pull_path(local, chain, r, "v1"))
                for r in repositories
            ]
            asyncio.run(rounds(chain, targets, provider, 2))
            benchlib.clear_logs(local)
            seconds, verdicts = asyncio.run(rounds(chain, targets, provider, args.rounds))
            tally = benchlib.RequestTally()
            tally.collect(local)
            checks = args.artifacts * args.rounds
            report[variant] = {
                "verdicts": sorted(set(verdicts)),
                "requests_per_check": benchlib.rounded(tally.client_total / checks),
                "seconds_per_check": benchlib.rounded(seconds / checks, 4),
                "requests_by_kind_per_check": {
                    k: benchlib.rounded(v / checks) for k, v in sorted(tally.kinds.items())
                },
            }
            print(
                f"[bench] {variant}: {report[variant]['requests_per_check']} requests/check", file=sys.stderr
            )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--artifacts", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    print(json.dumps(run(parser.parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
