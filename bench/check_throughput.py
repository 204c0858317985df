"""Check throughput, client CPU and request economy of full checks through a real three-hop chain.

``python bench/check_throughput.py [--artifacts N] [--rounds R] [--transport aiohttp|httpx|both]``

Starts a `lab.chain.LocalChain` (edge -> core -> origin), pushes N small Flux artifacts with oras,
warms the proxies with one check each, then runs R rounds of N checks (every check pulls its
artifact from all three hops in full mode, ``parallel`` checks at a time as the operator's
scheduler does). Clients live for the whole run, as in the operator; each round gets a fresh blob
cache, so every byte is downloaded and hashed every round. With ``both``, rounds of the two
transports are interleaved, and a bare-aiohttp client doing the same minimal requests gives the
floor. Then ``skopeo copy`` does the same work (every artifact from every hop, R rounds).
Prints one JSON object (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from benchlib import (
    CLIENT_HOST,
    RequestTally,
    bench_chain,
    clear_logs,
    edge_reference,
    host_info,
    rounded,
)
from lab.artifacts import push_flux_artifact
from lab.chain import LocalChain
from layerwatch.chain import Chain, HopTarget, Mode
from layerwatch.check import BlobCache, check_target
from layerwatch.manifest import ACCEPT
from layerwatch.reference import Reference
from layerwatch.registry import RegistryClient
from layerwatch.registry.auth import basic_header
from layerwatch.settings import EngineSettings
from layerwatch.verdict import CheckResult, Verdict

TAG = "v1"
HOPS = 3
REQUESTS_PER_HOP = 4
"""HEAD tag, GET manifest by digest, GET config, GET layer."""
SKOPEO_TIMEOUT = 120.0
FLOOR = "bare-aiohttp"


class Runner:
    """One way of doing the checks, with its totals over all rounds."""

    name = ""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.checks = 0
        self.unhealthy = 0
        self.bytes_verified = 0
        self.requests = RequestTally()

    async def start(self) -> None:
        """Open clients (once: they are reused across every round)."""

    async def close(self) -> None:
        """Close clients."""

    async def round(self, paths: Sequence[list[HopTarget]], parallel: int) -> None:
        """Check every path once, ``parallel`` at a time."""
        raise NotImplementedError

    def report(self, artifacts: int, rounds: int) -> dict[str, Any]:
        checks = max(self.checks, 1)
        minimum = minimum_requests(artifacts, rounds)
        client_requests = self.requests.client_total / checks
        return {
            "checks": self.checks,
            "unhealthy_checks": self.unhealthy,
            "wall_s": rounded(self.wall),
            "checks_per_s": rounded(self.checks / self.wall if self.wall else 0.0, 1),
            "cpu_s": rounded(self.cpu),
            "cpu_ms_per_check": rounded(self.cpu * 1000 / checks),
            "bytes_verified_per_check": self.bytes_verified // checks,
            "requests_per_check": rounded(client_requests),
            "requests_per_check_by_hop": {
                hop: rounded(count / checks) for hop, count in sorted(self.requests.client.items())
            },
            "requests_by_kind": dict(sorted(self.requests.kinds.items())),
            "min_requests_per_check": rounded(minimum),
            "requests_ratio": rounded(client_requests / minimum),
            "proxy_upstream_requests_per_check": rounded(self.requests.proxy_total / checks),
            "proxy_upstream_requests_by_kind": dict(sorted(self.requests.proxy_kinds.items())),
        }


class LayerwatchRunner(Runner):
    """`check_target` with one `RegistryClient` per hop on the given transport."""

    def __init__(self, chain: Chain, transport: str) -> None:
        super().__init__()
        self.name = transport
        self.chain = chain
        self.settings = EngineSettings(transport=transport)  # type: ignore[arg-type]
        self.clients: dict[str, RegistryClient] = {}

    async def start(self) -> None:
        self.clients = {hop.name: RegistryClient.for_hop(hop, self.settings) for hop in self.chain.hops}

    async def close(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients.values()))

    async def round(self, paths: Sequence[list[HopTarget]], parallel: int) -> None:
        cache = BlobCache(ttl=3600.0)
        limit = asyncio.Semaphore(parallel)

        async def one(path: list[HopTarget]) -> CheckResult:
            async with limit:
                return await check_target(_reference(path), path, self.clients, mode=Mode.FULL, cache=cache)

        results = await asyncio.gather(*(one(path) for path in paths))
        for result in results:
            self.checks += 1
            self.unhealthy += result.judgement.verdict is not Verdict.HEALTHY
            self.bytes_verified += sum(
                blob.bytes_verified for o in result.observations for m in o.manifests for blob in m.blobs
            )


class BareAiohttpRunner(Runner):
    """The floor: the minimum requests of a full check (token once per repository, realm known in
    advance; HEAD tag, GET manifest, GET config and layer, all hashed) with plain aiohttp."""

    name = FLOOR

    def __init__(self, chain: Chain) -> None:
        super().__init__()
        self.chain = chain
        self.sessions: dict[str, aiohttp.ClientSession] = {}
        self.tokens: dict[tuple[str, str], str] = {}

    async def start(self) -> None:
        for hop in self.chain.hops:
            connector = aiohttp.TCPConnector(limit=EngineSettings().endpoint_concurrency)
            self.sessions[hop.name] = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=60)
            )

    async def close(self) -> None:
        await asyncio.gather(*(session.close() for session in self.sessions.values()))

    async def round(self, paths: Sequence[list[HopTarget]], parallel: int) -> None:
        limit = asyncio.Semaphore(parallel)

        async def one(path: list[HopTarget]) -> list[int]:
            async with limit:
                return await asyncio.gather(*(self._hop(target) for target in path))

        for verified in await asyncio.gather(*(one(path) for path in paths)):
            self.checks += 1
            self.unhealthy += any(size < 0 for size in verified)
            self.bytes_verified += sum(max(size, 0) for size in verified)

    async def _token(self, target: HopTarget) -> str:
        key = (target.hop.name, target.repository)
        if key not in self.tokens:
            assert target.hop.credentials is not None
            credentials = target.hop.credentials
            params = {"service": "harbor-registry", "scope": f"repository:{target.repository}:pull"}
            headers = {"Authorization": basic_header(credentials)}
            session = self.sessions[target.hop.name]
            url = f"{target.hop.base_url}/service/token"
            async with session.get(url, params=params, headers=headers) as response:
                self.tokens[key] = (await response.json())["token"]
        return self.tokens[key]

    async def _hop(self, target: HopTarget) -> int:
        """Bytes verified at one hop, or -1 when anything did not match."""
        session = self.sessions[target.hop.name]
        headers = {"Accept": ACCEPT}
        if target.hop.credentials is not None:
            headers["Authorization"] = f"Bearer {await self._token(target)}"
        base = f"{target.hop.base_url}/v2/{target.repository}"
        async with session.head(f"{base}/manifests/{TAG}", headers=headers) as response:
            digest = response.headers.get("Docker-Content-Digest", "")
        async with session.get(f"{base}/manifests/{digest}", headers=headers) as response:
            body = await response.read()
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            return -1
        manifest = json.loads(body)
        sizes = await asyncio.gather(
            *(self._blob(session, base, headers, d) for d in [manifest["config"], *manifest["layers"]])
        )
        return -1 if min(sizes) < 0 else sum(sizes)

    @staticmethod
    async def _blob(
        session: aiohttp.ClientSession, base: str, headers: dict[str, str], descriptor: dict[str, Any]
    ) -> int:
        hasher = hashlib.sha256()
        received = 0
        async with session.get(f"{base}/blobs/{descriptor['digest']}", headers=headers) as response:
            async for chunk in response.content.iter_chunked(256 * 1024):
                received += len(chunk)
                hasher.update(chunk)
        ok = received == descriptor["size"] and "sha256:" + hasher.hexdigest() == descriptor["digest"]
        return received if ok else -1


def _reference(path: list[HopTarget]) -> Reference:
    """The edge reference a pull path was made from."""
    edge = path[0]
    return Reference(registry=edge.hop.host, repository=edge.repository, tag=TAG)


def minimum_requests(artifacts: int, rounds: int) -> float:
    """Fewest requests per check: 4 per hop, plus one token per repository and one 401 per client."""
    return HOPS * REQUESTS_PER_HOP + (artifacts + 1) / (artifacts * rounds)


async def measure(
    local: LocalChain, runners: list[Runner], paths: list[list[HopTarget]], rounds: int, parallel: int
) -> None:
    """Warm the chain, then run the rounds, interleaving runners; every runner is closed at the end."""
    warm = LayerwatchRunner(bench_chain(local), "aiohttp")
    await warm.start()
    try:
        # Twice: a proxy caches a blob in the background while streaming it, and the first pull
        # may end before that does; the second pull catches what the first one left uncached.
        for _ in range(2):
            await warm.round(paths, parallel)
            await asyncio.sleep(0.5)
    finally:
        await warm.close()
    if warm.unhealthy:
        raise SystemExit(
            f"warm-up: {warm.unhealthy} of {warm.checks} checks not healthy; the chain is broken"
        )
    clear_logs(local)
    started: list[Runner] = []
    try:
        for runner in runners:
            await runner.start()
            started.append(runner)
        for _ in range(rounds):
            for runner in runners:
                wall, cpu = time.perf_counter(), time.process_time()
                await runner.round(paths, parallel)
                runner.wall += time.perf_counter() - wall
                runner.cpu += time.process_time() - cpu
                runner.requests.collect(local)
    finally:
        await asyncio.gather(*(runner.close() for runner in started), return_exceptions=True)


def skopeo_copies(
    local: LocalChain, repositories: list[str], rounds: int, parallel: int, scratch: Path
) -> dict[str, Any]:
    """``skopeo copy`` every artifact from every hop into ``dir:`` (R rounds, ``parallel`` at once)."""
    jobs: list[list[str]] = []
    for repository in repositories:
        for hop in local.hops:
            source = (
                f"docker://{CLIENT_HOST}:{hop.gateway.port}/{local.repository_at(hop.name, repository)}:{TAG}"
            )
            creds = [f"--src-creds={hop.credentials[0]}:{hop.credentials[1]}"] if hop.credentials else []
            jobs.append(["--src-tls-verify=false", *creds, source])
    tally = RequestTally()
    failures: list[str] = []
    counter = itertools.count()

    def copy(job: list[str]) -> None:
        destination = scratch / f"copy-{next(counter)}"
        command = ["skopeo", "--insecure-policy", "copy", "--quiet", *job, f"dir:{destination}"]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=SKOPEO_TIMEOUT, check=False
            )
            if done.returncode != 0:
                failures.append(f"{job[-1]}: {done.stderr.strip()[:300]}")
        except subprocess.TimeoutExpired:
            failures.append(f"{job[-1]}: timed out after {SKOPEO_TIMEOUT:.0f}s")
        finally:
            shutil.rmtree(destination, ignore_errors=True)

    clear_logs(local)
    wall = 0.0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        for _ in range(rounds):
            start = time.perf_counter()
            list(pool.map(copy, jobs))
            wall += time.perf_counter() - start
            tally.collect(local)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if failures:
        raise SystemExit(f"skopeo failed {len(failures)} copies, e.g. {failures[0]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    checks = len(repositories) * rounds
    return {
        "copies": len(jobs) * rounds,
        "checks_equivalent": checks,
        "parallel_copies": parallel,
        "wall_s": rounded(wall),
        "checks_per_s": rounded(checks / wall, 1),
        "cpu_s": rounded(cpu),
        "cpu_ms_per_check": rounded(cpu * 1000 / checks),
        "requests_per_check": rounded(tally.client_total / checks),
        "requests_by_kind": dict(sorted(Counter(tally.kinds).items())),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; every lab process is stopped whatever happens."""
    transports = ["aiohttp", "httpx"] if args.transport == "both" else [args.transport]
    repositories = [f"bench/app-{i:03d}" for i in range(args.artifacts)]
    with LocalChain() as local, tempfile.TemporaryDirectory(prefix="bench-skopeo-") as scratch:
        for repository in repositories:
            push_flux_artifact(local.push_address, repository, TAG)
        chain = bench_chain(local)
        paths = [chain.pull_path(edge_reference(local, repository, TAG)) for repository in repositories]
        runners: list[Runner] = [LayerwatchRunner(chain, t) for t in transports]
        if args.transport == "both":
            runners.append(BareAiohttpRunner(chain))
        asyncio.run(measure(local, runners, paths, args.rounds, args.parallel))
        skopeo = None
        if not args.no_skopeo:
            skopeo = skopeo_copies(local, repositories, args.rounds, args.skopeo_parallel, Path(scratch))
    results = {runner.name: runner.report(args.artifacts, args.rounds) for runner in runners}
    primary = results[transports[0]]
    report: dict[str, Any] = {
        "benchmark": "check_throughput",
        **host_info(),
        "artifacts": args.artifacts,
        "rounds": args.rounds,
        "hops": HOPS,
        "mode": "full",
        "parallel_checks": args.parallel,
        "transport": transports[0],
        **{k: primary[k] for k in ("checks_per_s", "cpu_ms_per_check", "wall_s", "requests_per_check")},
        "min_requests_per_check": primary["min_requests_per_check"],
        "requests_ratio": primary["requests_ratio"],
        "transports": results,
    }
    if skopeo is not None:
        report["skopeo"] = skopeo
        report["layerwatch_vs_skopeo"] = {
            name: {
                "wall_ratio": rounded(result["wall_s"] / skopeo["wall_s"]),
                "cpu_ratio": rounded(result["cpu_s"] / skopeo["cpu_s"]) if skopeo["cpu_s"] else None,
            }
            for name, result in results.items()
        }
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=int, default=20, help="distinct artifacts (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of N checks per transport (default 5)")
    parser.add_argument("--transport", choices=["aiohttp", "httpx", "both"], default="both")
    parser.add_argument("--parallel", type=int, default=4, help="checks at once (the scheduler's default)")
    parser.add_argument("--skopeo-parallel", type=int, default=4, help="skopeo copies at once")
    parser.add_argument("--no-skopeo", action="store_true", help="skip the skopeo comparison")
    args = parser.parse_args(argv)
    if not 1 <= args.artifacts <= 500 or not 1 <= args.rounds <= 100:
        parser.error("--artifacts must be 1..500 and --rounds 1..100")
    if not args.no_skopeo and shutil.which("skopeo") is None:
        parser.error("skopeo not found (apt-get install skopeo) or pass --no-skopeo")
    with contextlib.redirect_stdout(sys.stderr):  # only the JSON goes to stdout
        report = run(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
