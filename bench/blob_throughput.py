"""Big-blob verification beside ``curl -s URL | sha256sum`` on the same hop, in the same run.

``python bench/blob_throughput.py [--sizes-mib 256,1024] [--hop origin] [--rounds 3]``

Starts a `lab.chain.LocalChain` and pushes one single-layer artifact per size (pseudo-random
bytes, `lab.artifacts.push_blob_artifact`). At a proxy hop (edge, core) one untimed layerwatch
check first makes the proxies cache the blob. Then, per size, ``--rounds`` rounds alternate:

- ``layerwatch``: a fresh interpreter (`blob_memory.run_child`) opens its client, pings the hop,
  resets its peak-RSS mark and runs one full check of the hop (manifest, config and the blob,
  downloaded and hashed); the check's own seconds, CPU and peak RSS growth;
- ``curl``: ``curl -s URL | sha256sum`` of the same blob from the same hop (with the edge's
  Bearer token, from a 0600 file, when the hop is the edge), its wall time and the CPU of curl and sha256sum.

Throughput is blob MiB per second; the best round of each is reported (the box is shared).
Prints one JSON object (see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

from benchlib import CLIENT_HOST, host_info, rounded
from blob_memory import GOAL_GROWTH_MB, MIB, TAG, child_spec, run_child
from lab.artifacts import push_blob_artifact
from lab.chain import LocalChain

CURL_TIMEOUT = 900.0


def _bearer(local: LocalChain, hop: str, repository: str, directory: str) -> list[str]:
    """curl's ``-H @FILE`` with ``Authorization: Bearer ...`` for a hop with credentials, else nothing.

    The token goes through a 0600 file in ``directory``, never on curl's command line (``ps`` shows it).
    """
    lab_hop = local.hop(hop)
    if lab_hop.credentials is None:
        return []
    answer = httpx.get(
        f"http://{CLIENT_HOST}:{lab_hop.gateway.port}/service/token",
        params={"service": "harbor-registry", "scope": f"repository:{repository}:pull"},
        auth=lab_hop.credentials,
    )
    answer.raise_for_status()
    path = os.path.join(directory, "headers")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        file.write(f"Authorization: Bearer {answer.json()['token']}\n")
    return ["-H", f"@{path}"]


def curl_sha256(url: str, headers: list[str], digest: str, size: int) -> dict[str, float]:
    """``curl -s URL | sha256sum``: wall seconds and the two processes' CPU; the sum must match."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    curl = subprocess.Popen(["curl", "-sf", *headers, url], stdout=subprocess.PIPE)
    summed = subprocess.run(["sha256sum"], stdin=curl.stdout, capture_output=True, text=True, check=False)
    assert curl.stdout is not None
    curl.stdout.close()
    curl.wait(CURL_TIMEOUT)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if curl.returncode != 0 or "sha256:" + summed.stdout.split()[0] != digest:
        raise SystemExit(f"curl {url}: exit {curl.returncode}, sha256sum {summed.stdout.strip()!r}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": seconds, "cpu_s": cpu, "mib_per_s": size / MIB / seconds}


def layerwatch_check(local: LocalChain, hop: str, repository: str, size: int) -> dict[str, float]:
    """One full check of the hop in a fresh child; every byte of the blob must be verified."""
    result = run_child(child_spec(local, [hop], "aiohttp", repository))
    verified = result["bytes_verified_by_hop"].get(hop, 0)
    if result["verdict"] != "Healthy" or verified < size:
        raise SystemExit(f"layerwatch {hop}: {result['verdict']} {result['message']}, {verified} bytes")
    return {
        "seconds": result["seconds"],
        "cpu_s": result["cpu_seconds"],
        "mib_per_s": size / MIB / result["seconds"],
        "growth_mb": (result["peak_rss_kib"] - result["baseline_rss_kib"]) * 1024 / 1e6,
    }


def best(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """The fastest round (and every round's throughput); growth is the worst round's."""
    top = max(rounds, key=lambda r: r["mib_per_s"])
    out: dict[str, Any] = {k: rounded(v, 2) for k, v in top.items() if k != "growth_mb"}
    out["mib_per_s_rounds"] = [rounded(r["mib_per_s"], 1) for r in rounds]
    if "growth_mb" in top:
        out["growth_mb"] = rounded(max(r["growth_mb"] for r in rounds), 1)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) * MIB for s in args.sizes_mib.split(",")]
    results: dict[str, Any] = {}
    with LocalChain() as local, tempfile.TemporaryDirectory() as secrets:
        for size in sizes:
            repository = f"bench/blob-{size // MIB}m"
            pushed = push_blob_artifact(local.push_address, repository, TAG, size)
            digest = pushed.layers[0].digest
            if args.hop != "origin":  # the proxies cache the blob on a first pull
                layerwatch_check(local, args.hop, repository, size)
            path = local.repository_at(args.hop, repository)
            url = f"http://{CLIENT_HOST}:{local.hop(args.hop).gateway.port}/v2/{path}/blobs/{digest}"
            headers = _bearer(local, args.hop, path, secrets)
            mine: list[dict[str, float]] = []
            theirs: list[dict[str, float]] = []
            load = [os.getloadavg()[0]]
            for _ in range(args.rounds):
                mine.append(layerwatch_check(local, args.hop, repository, size))
                theirs.append(curl_sha256(url, headers, digest, size))
                load.append(os.getloadavg()[0])
            layerwatch, curl = best(mine), best(theirs)
            results[f"{size // MIB}MiB"] = {
                "layerwatch": layerwatch,
                "curl_sha256sum": curl,
                "throughput_ratio": rounded(layerwatch["mib_per_s"] / curl["mib_per_s"]),
                "cpu_ratio": rounded(layerwatch["cpu_s"] / curl["cpu_s"]) if curl["cpu_s"] else None,
                "growth_goal_met": layerwatch["growth_mb"] < GOAL_GROWTH_MB,
                "loadavg_1m": [rounded(v, 2) for v in load],
            }
    return {
        "benchmark": "blob_throughput",
        **host_info(),
        "hop": args.hop,
        "rounds": args.rounds,
        "transport": "aiohttp",
        "goal_growth_mb": GOAL_GROWTH_MB,
        "sizes": results,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes-mib", default="256,1024", help="blob sizes in MiB, comma-separated")
    parser.add_argument("--hop", choices=["edge", "core", "origin"], default="origin")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per size; the best is reported")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be 1..20")
    with contextlib.redirect_stdout(sys.stderr):  # only the JSON goes to stdout
        report = run(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
