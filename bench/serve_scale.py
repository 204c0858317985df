"""``layerwatch serve`` at scale: many targets over few artifacts, checked on schedule for real.

``python bench/serve_scale.py [--targets 1000] [--artifacts 50] [--interval 30] [--intervals 2]``

Starts a `lab.chain.LocalChain`, pushes ``--artifacts`` distinct Flux artifacts, writes a serve
config (one ProxyChain, hops on ``localhost`` so the gateways' logs tell our requests from the
proxies', the edge credentials inline, ``interval: <--interval>s``; ``--targets`` Target documents
round-robin over the artifacts, all via the edge), warms the proxies, then runs ``layerwatch serve``
as a subprocess for one interval (the spread-out first round) plus ``--intervals`` measured ones.
Per measured interval it reports checks (``/metrics``), our requests per hop by kind and blob GETs
(gateway logs), the serve process's CPU (``/proc/<pid>/stat``), and how evenly checks fall over
the interval (edge ``HEAD`` manifest timestamps: every check asks the edge exactly once). Prints
one JSON object (see bench/README.md); every process is stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchlib import (
    CLIENT_HOST,
    LOG_LIMIT,
    REPO,
    RequestTally,
    bench_chain,
    clear_logs,
    edge_reference,
    host_info,
    rounded,
)
from lab.artifacts import push_flux_artifact
from lab.chain import LocalChain
from lab.process import LOOPBACK, free_port, log_tail, stop_process
from layerwatch.chain import Mode
from layerwatch.check import check_target
from layerwatch.registry import RegistryClient
from layerwatch.verdict import Verdict

TAG = "v1"
CHAIN = "lab"
BLOBS_PER_ARTIFACT = 2
"""Config and one content layer: the blob cache keys per (hop, repository) an artifact has."""
LOG_POLL_S = 3.0
"""How often the gateways' request logs are read and cleared (they keep `LOG_LIMIT` entries)."""
BINS = 10
"""Each interval is cut into this many slices to see how evenly checks are spread."""
START_TIMEOUT_S = 30.0
PUSH_PARALLEL = 4
SCRAPES = 5
"""Extra ``/metrics`` scrapes at the end to price one scrape."""
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Sample:
    """What the serve process looked like at one interval boundary."""

    wall: float
    cpu_s: float
    checks: Counter[tuple[str, str]]
    """``layerwatch_checks_total`` by (hop, verdict)."""


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (``/proc/<pid>/stat`` fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_memory_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in MB (10⁶ bytes)."""
    memory: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            memory[key] = rounded(int(value.split()[0]) * 1024 / 1e6, 1)
    return memory


def parse_checks(exposition: str) -> Counter[tuple[str, str]]:
    """``layerwatch_checks_total`` samples of the exposition, by (hop, verdict)."""
    checks: Counter[tuple[str, str]] = Counter()
    for line in exposition.splitlines():
        if not line.startswith("layerwatch_checks_total{"):
            continue
        labels_text, _, value = line[len("layerwatch_checks_total{") :].rpartition("} ")
        labels = dict(part.split("=", 1) for part in labels_text.split(",") if "=" in part)
        hop, verdict = labels.get("hop", "").strip('"'), labels.get("verdict", "").strip('"')
        checks[(hop, verdict)] += int(float(value))
    return checks


def write_config(local: LocalChain, path: Path, targets: int, repositories: list[str], interval: int) -> None:
    """One ProxyChain (hops on ``localhost``, edge credentials inline) and ``targets`` Targets."""
    hops: list[dict[str, str]] = []
    for hop in local.hops:
        url = f"http://{CLIENT_HOST}:{hop.gateway.port}" + (f"/{hop.prefix}" if hop.prefix else "")
        entry = {"name": hop.name, "url": url}
        if hop.credentials is not None:
            entry |= {"username": hop.credentials[0], "password": hop.credentials[1]}
        hops.append(entry)
    chain = {
        "apiVersion": "layerwatch.io/v1alpha1",
        "kind": "ProxyChain",
        "metadata": {"name": CHAIN},
        "spec": {"hops": hops, "interval": f"{interval}s"},
    }
    edge = local.hop("edge")
    documents: list[dict[str, Any]] = [chain]
    for i in range(targets):
        repository = repositories[i % len(repositories)]
        url = f"oci://{CLIENT_HOST}:{edge.gateway.port}/{local.repository_at('edge', repository)}"
        documents.append(
            {"kind": "Target", "name": f"t-{i:05d}", "url": url, "ref": {"tag": TAG}, "chain": CHAIN}
        )
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))


async def warm(local: LocalChain, repositories: list[str]) -> None:
    """Pull every artifact through the edge, twice (a proxy caches blobs in the background)."""
    chain = bench_chain(local)
    edge = chain.hop("edge")
    client = RegistryClient.for_hop(edge)
    limit = asyncio.Semaphore(4)

    async def one(repository: str) -> bool:
        reference = edge_reference(local, repository, TAG)
        async with limit:
            result = await check_target(
                reference, chain.pull_path(reference)[:1], {"edge": client}, mode=Mode.FULL
            )
        return result.judgement.verdict is Verdict.HEALTHY

    try:
        for _ in range(2):
            healthy = await asyncio.gather(*(one(repository) for repository in repositories))
            await asyncio.sleep(0.5)
    finally:
        await client.aclose()
    if not all(healthy):
        raise SystemExit(f"warm-up: {healthy.count(False)} artifacts not healthy at the edge")


class GatewayLogs:
    """Every gateway log entry read during the run, with its hop (logs are read and cleared often)."""

    def __init__(self, local: LocalChain) -> None:
        self.local = local
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def poll(self) -> None:
        for hop in self.local.hops:
            faults = hop.gateway.faults
            entries = faults.requests()
            faults.clear_requests()
            if len(entries) >= LOG_LIMIT:
                raise RuntimeError(f"gateway {hop.name} log overflowed: poll more often than {LOG_POLL_S}s")
            self.entries.extend((hop.name, entry) for entry in entries)

    def between(self, start: float, end: float) -> Iterator[tuple[str, dict[str, Any]]]:
        return ((hop, e) for hop, e in self.entries if start <= float(e["time"]) < end)

    def tally(self, start: float, end: float) -> RequestTally:
        tally = RequestTally()
        for hop, entry in self.between(start, end):
            tally.add(hop, [entry])
        return tally

    def check_starts(self, start: float, end: float) -> list[float]:
        """Times of our ``HEAD`` manifest requests at the edge: one per check, when it starts."""
        return [
            float(e["time"])
            for hop, e in self.between(start, end)
            if hop == "edge"
            and e["method"] == "HEAD"
            and "/manifests/" in str(e["path"])
            and str(e.get("host", "")).startswith(f"{CLIENT_HOST}:")
        ]


def spread(starts: list[float], start: float, interval: float) -> dict[str, Any]:
    """Checks per tenth of each interval: max and min over the mean (1.0 is perfectly even)."""
    counts = [0] * BINS
    for when in starts:
        counts[min(int((when - start) / interval * BINS), BINS - 1)] += 1
    mean = sum(counts) / BINS
    per_second = Counter(int(when - start) for when in starts)
    return {
        "checks_per_tenth": counts,
        "max_over_mean": rounded(max(counts) / mean, 2) if mean else None,
        "min_over_mean": rounded(min(counts) / mean, 2) if mean else None,
        "cv": rounded(statistics.pstdev(counts) / mean, 3) if mean else None,
        "max_checks_in_1s": max(per_second.values(), default=0),
        "mean_checks_per_s": rounded(len(starts) / interval, 1),
    }


class Serve:
    """``layerwatch serve`` as a child process on a free loopback port."""

    def __init__(self, config: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log = log
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "operator"), env.get("PYTHONPATH")]))
        command = [
            sys.executable,
            "-c",
            "import sys; from layerwatch.cli import main; sys.exit(main())",
            "serve",
            "--config",
            str(config),
            "--metrics-port",
            str(self.port),
            "--metrics-address",
            LOOPBACK,
        ]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.http = httpx.Client(timeout=30.0)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> float:
        """Poll ``/healthz``; the time it first answers (the scheduler has just planned every target)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self.alive()
            with contextlib.suppress(httpx.TransportError):
                if self.http.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return time.time()
            time.sleep(0.05)
        raise RuntimeError(f"layerwatch serve not ready in {START_TIMEOUT_S:.0f}s:\n{log_tail(self.log)}")

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"layerwatch serve exited with {self.process.returncode}:\n{log_tail(self.log)}"
            )

    def metrics(self) -> str:
        self.alive()
        response = self.http.get(f"{self.url}/metrics")
        response.raise_for_status()
        return response.text

    def sample(self) -> Sample:
        wall = time.time()
        return Sample(wall, proc_cpu_s(self.pid), parse_checks(self.metrics()))

    def stop(self) -> None:
        self.http.close()
        stop_process(self.process)


def scrape_cost(serve: Serve, background_cpu_per_s: float) -> dict[str, Any]:
    """Size, wall time and CPU (minus the background rate of checking) of one ``/metrics`` scrape."""
    wall, cpu = time.perf_counter(), proc_cpu_s(serve.pid)
    size = sum(len(serve.metrics().encode()) for _ in range(SCRAPES)) // SCRAPES
    elapsed = time.perf_counter() - wall
    spent = proc_cpu_s(serve.pid) - cpu - background_cpu_per_s * elapsed
    return {
        "bytes": size,
        "wall_ms": rounded(elapsed * 1000 / SCRAPES, 1),
        "cpu_ms_estimate": rounded(max(spent, 0.0) * 1000 / SCRAPES, 1),
    }


def by_hop(kinds: Counter[str]) -> dict[str, dict[str, int]]:
    """``{"edge HEAD manifests": n}`` as ``{"edge": {"HEAD manifests": n}}``."""
    nested: dict[str, dict[str, int]] = {}
    for kind, count in sorted(kinds.items()):
        hop, _, rest = kind.partition(" ")
        nested.setdefault(hop, {})[rest] = count
    return nested


def interval_report(
    logs: GatewayLogs, before: Sample, after: Sample, artifacts: int, log_start: float | None = None
) -> dict[str, Any]:
    """One interval: checks, requests per hop by kind, blob GETs, CPU, spread.

    ``log_start`` (first interval) counts requests from the launch on, before ``/healthz`` answered.
    """
    checks = Counter(after.checks)
    checks.subtract(before.checks)
    edge_checks = sum(n for (hop, _), n in checks.items() if hop == "edge")
    tally = logs.tally(before.wall if log_start is None else log_start, after.wall)
    kinds, proxy_kinds = by_hop(tally.kinds), by_hop(tally.proxy_kinds)
    blob_gets = {hop: by_kind.get("GET blobs", 0) for hop, by_kind in kinds.items()}
    cpu = after.cpu_s - before.cpu_s
    return {
        "seconds": rounded(after.wall - before.wall, 1),
        "checks": edge_checks,
        "checks_by_hop": {
            hop: sum(n for (h, _), n in checks.items() if h == hop) for hop in ("edge", "core", "origin")
        },
        "unhealthy_hop_checks": sum(
            n for (_, verdict), n in checks.items() if verdict != Verdict.HEALTHY.value
        ),
        "requests_by_hop_and_kind": kinds,
        "requests_per_check_by_hop": {
            hop: rounded(count / edge_checks, 2) if edge_checks else None
            for hop, count in sorted(tally.client.items())
        },
        "blob_gets_by_hop": blob_gets,
        "blob_gets_over_blob_keys": {
            hop: rounded(n / (BLOBS_PER_ARTIFACT * artifacts), 2) for hop, n in blob_gets.items()
        },
        "proxy_upstream_requests_by_hop_and_kind": proxy_kinds,
        "cpu_s": rounded(cpu, 2),
        "cpu_ms_per_check": rounded(cpu * 1000 / edge_checks, 2) if edge_checks else None,
        "cpu_share_of_one_core": rounded(cpu / (after.wall - before.wall), 3),
        "spread": spread(logs.check_starts(before.wall, after.wall), before.wall, after.wall - before.wall),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; every process it started is stopped whatever happens."""
    repositories = [f"bench/scale-{i:03d}" for i in range(args.artifacts)]
    interval = float(args.interval)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-serve-")))
        started = time.perf_counter()
        local = stack.enter_context(LocalChain())
        with concurrent.futures.ThreadPoolExecutor(max_workers=PUSH_PARALLEL) as pool:
            list(pool.map(lambda r: push_flux_artifact(local.push_address, r, TAG), repositories))
        pushed = time.perf_counter()
        asyncio.run(warm(local, repositories))
        warmed = time.perf_counter()
        config = workdir / "serve.yaml"
        write_config(local, config, args.targets, repositories, args.interval)
        clear_logs(local)
        logs = GatewayLogs(local)
        launched = time.time()
        serve = Serve(config, workdir / "serve.log")
        stack.callback(serve.stop)
        t0 = serve.wait_ready()
        startup_cpu = proc_cpu_s(serve.pid)
        print(
            f"serve ready (pid {serve.pid}); {args.intervals + 1} intervals of {interval:.0f}s",
            file=sys.stderr,
        )
        samples = [Sample(t0, startup_cpu, Counter())]
        for k in range(1, args.intervals + 2):
            boundary = t0 + k * interval
            while (left := boundary - time.time()) > 0:
                time.sleep(min(LOG_POLL_S, left))
                logs.poll()
                serve.alive()
            samples.append(serve.sample())
            so_far = sum(n for (hop, _), n in samples[-1].checks.items() if hop == "edge")
            print(f"interval {k}: {so_far} checks so far", file=sys.stderr)
        end = proc_memory_mb(serve.pid)
        last = samples[-1].cpu_s - samples[-2].cpu_s
        scrape = scrape_cost(serve, last / (samples[-1].wall - samples[-2].wall))
        logs.poll()
        healthy = [
            line
            for line in serve.metrics().splitlines()
            if line.startswith("layerwatch_artifact_hop_healthy{")
        ]
        errors = sum(
            " ERROR " in line or "Traceback" in line
            for line in serve.log.read_text(errors="replace").splitlines()
        )
        setup = {"push_s": rounded(pushed - started, 1), "warm_s": rounded(warmed - pushed, 1)}
    first = interval_report(logs, samples[0], samples[1], args.artifacts, launched)
    measured = [
        interval_report(logs, samples[k], samples[k + 1], args.artifacts) for k in range(1, len(samples) - 1)
    ]
    checks = sum(m["checks"] for m in measured)
    cpu = sum(m["cpu_s"] for m in measured)
    starts = [
        when
        for k in range(1, len(samples) - 1)
        for when in logs.check_starts(samples[k].wall, samples[k + 1].wall)
    ]
    spreads = [m["spread"] for m in measured]
    blob_gets = Counter[str]()
    for m in measured:
        blob_gets.update(m["blob_gets_by_hop"])
    return {
        "benchmark": "serve_scale",
        **host_info(),
        "targets": args.targets,
        "artifacts": args.artifacts,
        "interval_s": interval,
        "measured_intervals": args.intervals,
        "blob_keys_per_hop": BLOBS_PER_ARTIFACT * args.artifacts,
        "checks_per_interval": rounded(checks / args.intervals, 1),
        "unhealthy_hop_checks": sum(m["unhealthy_hop_checks"] for m in measured),
        "unhealthy_series_at_end": sum(line.endswith(" 0.0") for line in healthy),
        "healthy_series_at_end": sum(line.endswith(" 1.0") for line in healthy),
        "serve_log_errors": errors,
        "blob_gets_per_interval_by_hop": {
            hop: rounded(n / args.intervals, 1) for hop, n in sorted(blob_gets.items())
        },
        "cpu_s_per_interval": rounded(cpu / args.intervals, 2),
        "cpu_ms_per_check": rounded(cpu * 1000 / checks, 2) if checks else None,
        "startup_cpu_s": rounded(startup_cpu, 2),
        "rss_mb_at_end": end.get("VmRSS"),
        "hwm_mb_at_end": end.get("VmHWM"),
        "spread_max_over_mean": max((s["max_over_mean"] or 0.0) for s in spreads),
        "spread_min_over_mean": min((s["min_over_mean"] or 0.0) for s in spreads),
        "max_checks_in_1s": max(s["max_checks_in_1s"] for s in spreads),
        "check_starts_seen": len(starts),
        "metrics_scrape": scrape,
        "setup": setup,
        "first_interval": first,
        "intervals": measured,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=1000, help="Target documents (default 1000)")
    parser.add_argument("--artifacts", type=int, default=50, help="distinct artifacts (default 50)")
    parser.add_argument("--interval", type=int, default=30, help="chain interval in seconds (default 30)")
    parser.add_argument(
        "--intervals", type=int, default=2, help="measured intervals after the first (default 2)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.artifacts <= 500 or args.targets < args.artifacts or args.targets > 20_000:
        parser.error("--artifacts must be 1..500 and --targets artifacts..20000")
    if not 5 <= args.interval <= 600 or not 1 <= args.intervals <= 20:
        parser.error("--interval must be 5..600 and --intervals 1..20")
    with contextlib.redirect_stdout(sys.stderr):  # only the JSON goes to stdout
        report = run(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
