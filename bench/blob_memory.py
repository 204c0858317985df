"""Peak memory of verifying one big blob (default 1 GiB) in full mode through the lab chain.

``python bench/blob_memory.py [--size-mib 1024] [--hops edge,core,origin] [--transport aiohttp|httpx|both]``

Starts a `lab.chain.LocalChain`, pushes a single-layer artifact whose layer is ``--size-mib`` MiB of
pseudo-random bytes (generated in 1 MiB pieces into a temp file that is deleted after the push, see
`lab.artifacts.push_blob_artifact`), then, per transport, runs one full check of the chosen hops in a
fresh child process (this same script with ``--child``). The child opens its clients and pings every
hop, resets its peak-RSS mark (``/proc/self/clear_refs``), runs `check_target`, and reports its
``VmHWM``: growth = peak RSS during the check - RSS before it. The product goal is growth < 50 MB
for 1 GiB. Prints one JSON object. Storage of every registry is deleted when the chain stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import CLIENT_HOST, bench_chain, edge_reference, host_info, rounded
from lab.artifacts import push_blob_artifact
from lab.chain import LocalChain
from layerwatch.chain import Chain, Credentials, Hop, Mode
from layerwatch.check import check_target
from layerwatch.reference import Reference
from layerwatch.registry import RegistryClient
from layerwatch.settings import EngineSettings

REPOSITORY = "bench/big"
TAG = "v1"
MIB = 1024 * 1024
GOAL_GROWTH_MB = 50.0
CHILD_TIMEOUT = 1800.0
"""Seconds one child may take (1 GiB through three hops takes well under a minute on 2 cores)."""
SAMPLE_INTERVAL = 0.05


def _status_kib(field: str, pid: int | str = "self") -> int:
    """A ``/proc/<pid>/status`` field in KiB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _reset_peak() -> None:
    """Set this process's VmHWM (and ``ru_maxrss``) to its current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


# -- child: one check, measured from inside ------------------------------------------------------


async def _child_check(spec: dict[str, Any]) -> dict[str, Any]:
    """Open clients, ping, reset the peak mark, check, and report memory and timing."""
    hops = []
    for raw in spec["hops"]:
        credentials = Credentials(*raw["credentials"]) if raw.get("credentials") else None
        hops.append(Hop.from_url(raw["name"], raw["url"], credentials=credentials))
    chain = Chain(name="bench", hops=tuple(hops))
    reference = Reference.parse(spec["reference"])
    path = [t for t in chain.pull_path(reference) if t.hop.name in spec["check_hops"]]
    settings = EngineSettings(transport=spec["transport"])
    clients = {hop.name: RegistryClient.for_hop(hop, settings) for hop in chain.hops}
    try:
        await asyncio.gather(*(clients[t.hop.name].ping() for t in path))
        _reset_peak()
        baseline = _status_kib("VmRSS")
        started, cpu = time.perf_counter(), time.process_time()
        result = await check_target(reference, path, clients, mode=Mode.FULL)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        peak = _status_kib("VmHWM")
        after = _status_kib("VmRSS")
    finally:
        await asyncio.gather(*(client.aclose() for client in clients.values()))
    verified = {
        o.hop: sum(b.bytes_verified for m in o.manifests for b in m.blobs) for o in result.observations
    }
    return {
        "verdict": str(result.judgement.verdict),
        "message": result.judgement.message,
        "bytes_verified_by_hop": verified,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "baseline_rss_kib": baseline,
        "peak_rss_kib": peak,
        "rss_after_kib": after,
    }


def child_main() -> None:
    """``--child``: read the spec (with credentials) from stdin, print the result JSON."""
    spec = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(_child_check(spec))))


# -- parent ----------------------------------------------------------------------------------------


def child_spec(
    local: LocalChain, hops: list[str], transport: str, repository: str = REPOSITORY
) -> dict[str, Any]:
    """What `run_child` checks: ``repository:v1`` at ``hops`` of the lab chain."""
    chain = bench_chain(local)
    return {
        "hops": [
            {
                "name": hop.name,
                "url": hop.url,
                "credentials": [hop.credentials.username, hop.credentials.password]
                if hop.credentials
                else None,
            }
            for hop in chain.hops
        ],
        "reference": str(edge_reference(local, repository, TAG)),
        "check_hops": hops,
        "transport": transport,
    }


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measured check in a fresh interpreter; the parent samples its RSS as a cross-check."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child"]
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_INTERVAL):
            samples.append(_status_kib("VmRSS", proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(json.dumps(spec), timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise SystemExit(f"the check did not finish within {CHILD_TIMEOUT:.0f}s") from None
    finally:
        done.set()
        sampler.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{err[-3000:]}")
    result: dict[str, Any] = json.loads(out)
    result["sampled_max_rss_kib"] = max(samples, default=0)
    return result


def _report(size: int, expected: int, result: dict[str, Any], hops: list[str]) -> dict[str, Any]:
    """``expected``: bytes a hop must verify (blob plus config)."""
    growth_mb = (result["peak_rss_kib"] - result["baseline_rss_kib"]) * 1024 / 1e6
    total = sum(result["bytes_verified_by_hop"].values())
    return {
        "verdict": result["verdict"],
        "bytes_verified_by_hop": result["bytes_verified_by_hop"],
        "all_bytes_verified": all(result["bytes_verified_by_hop"].get(h) == expected for h in hops),
        "seconds": rounded(result["seconds"], 2),
        "mib_per_s": rounded(total / MIB / result["seconds"], 1),
        "client_cpu_s": rounded(result["cpu_seconds"], 2),
        "client_cpu_s_per_gib": rounded(result["cpu_seconds"] / (total / 1024**3), 2),
        "baseline_rss_mb": rounded(result["baseline_rss_kib"] * 1024 / 1e6, 1),
        "peak_rss_mb": rounded(result["peak_rss_kib"] * 1024 / 1e6, 1),
        "rss_after_mb": rounded(result["rss_after_kib"] * 1024 / 1e6, 1),
        "sampled_max_rss_mb": rounded(result["sampled_max_rss_kib"] * 1024 / 1e6, 1),
        "growth_mb": rounded(growth_mb, 1),
        "goal_met": growth_mb < GOAL_GROWTH_MB,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib * MIB
    hops = [h.strip() for h in args.hops.split(",") if h.strip()]
    transports = ["aiohttp", "httpx"] if args.transport == "both" else [args.transport]
    # origin, edge and core proxies each keep the blob, and the push needs a temp copy
    need = size * 4 + 512 * MIB
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < need:
        raise SystemExit(f"needs {need // MIB} MiB free in {tempfile.gettempdir()}, has {free // MIB} MiB")
    with LocalChain() as local:
        started = time.perf_counter()
        pushed = push_blob_artifact(local.push_address, REPOSITORY, TAG, size)
        push_seconds = time.perf_counter() - started
        # Untimed: one edge pull makes the edge and core proxies cache the blob, so every measured
        # check below sees the same warm chain (a cold proxy streams while caching upstream).
        cold = run_child(child_spec(local, ["edge"], transports[0]))
        expected = size + pushed.config.size
        results = {
            t: _report(size, expected, run_child(child_spec(local, hops, t)), hops) for t in transports
        }
    return {
        "benchmark": "blob_memory",
        **host_info(),
        "blob_bytes": size,
        "blob_digest": pushed.layers[0].digest,
        "hops": hops,
        "client_host": CLIENT_HOST,
        "push_seconds": rounded(push_seconds, 1),
        "cold_edge_pull_seconds": rounded(cold["seconds"], 2),
        "goal_growth_mb": GOAL_GROWTH_MB,
        "transport": transports[0],
        **{k: results[transports[0]][k] for k in ("seconds", "mib_per_s", "growth_mb", "goal_met")},
        "transports": results,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="blob size in MiB (default 1024)")
    parser.add_argument("--hops", default="edge,core,origin", help="hops to check, comma-separated")
    parser.add_argument("--transport", choices=["aiohttp", "httpx", "both"], default="both")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main()
        return
    if not 1 <= args.size_mib <= 16 * 1024:
        parser.error("--size-mib must be 1..16384")
    if not set(args.hops.split(",")) <= {"edge", "core", "origin"}:
        parser.error("--hops takes edge, core and origin")
    with contextlib.redirect_stdout(sys.stderr):
        report = run(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
