"""layerwatch beside crane and skopeo: wall and CPU for the same full verification on the lab chain.

``python bench/peers.py [--artifacts 20] [--rounds 3] [--parallel 4]``

Starts a `lab.chain.LocalChain` (edge -> core -> origin), pushes N small Flux artifacts with oras,
warms the proxies (two layerwatch checks of every artifact), then runs R rounds, each runner once
per round, interleaved, and reports each runner's best round:

- ``layerwatch``: one ``layerwatch check REF... --hop edge=... --hop core=... --hop origin=...``
  process for all N references (full mode; its default ``--parallel-checks`` 4 checks at once);
- ``crane``: ``crane validate --remote REF`` for every artifact at every hop (N x 3 processes,
  ``--parallel`` at once); crane downloads the manifest, config and every layer and checks each
  digest and size (and the layers' uncompressed digests);
- ``skopeo``: ``skopeo copy docker://REF dir:...`` likewise (N x 3, ``--parallel`` at once).

layerwatch runs from this checkout's ``operator/`` under ``--python`` (default: this interpreter; a
virtualenv's python measures what an installed layerwatch costs without whatever the system
interpreter's ``site`` loads). Every runner authenticates at the edge with the lab's robot from one
docker ``config.json``. CPU is that of the child processes (``getrusage(RUSAGE_CHILDREN)``
deltas, user + system); the lab's own processes are not counted. Prints one JSON object (see bench/README.md).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchlib import CLIENT_HOST, REPO, RequestTally, clear_logs, host_info, rounded
from lab.artifacts import push_flux_artifact
from lab.chain import LocalChain

TAG = "v1"
TIMEOUT = 300.0
CRANE_VERSION = "0.22.1"
"""hack/build-tools.sh's default ``CRANE_VERSION``."""
LAYERWATCH = "import sys; from layerwatch.cli import main; sys.exit(main())"

Job = list[str]


def crane_path() -> Path:
    """Where ``hack/build-tools.sh crane`` caches crane."""
    cache = Path(os.environ.get("LAYERWATCH_CACHE", Path.home() / ".cache" / "layerwatch"))
    return cache / "crane" / f"v{os.environ.get('CRANE_VERSION', CRANE_VERSION)}" / "crane"


def write_docker_config(local: LocalChain, directory: Path) -> Path:
    """A docker ``config.json`` holding the edge robot, for every runner alike."""
    auths = {}
    for hop in local.hops:
        if hop.credentials is not None:
            token = base64.b64encode(":".join(hop.credentials).encode()).decode()
            auths[f"{CLIENT_HOST}:{hop.gateway.port}"] = {"auth": token}
    path = directory / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    return path


def hop_reference(local: LocalChain, hop: str, repository: str) -> str:
    """``localhost:PORT/<path at hop>:v1``."""
    return f"{CLIENT_HOST}:{local.hop(hop).gateway.port}/{local.repository_at(hop, repository)}:{TAG}"


class Runner:
    """Jobs (commands) run ``parallel`` at once; totals of each round."""

    def __init__(self, name: str, jobs: Sequence[Job], parallel: int, env: dict[str, str]) -> None:
        self.name = name
        self.jobs = list(jobs)
        self.parallel = parallel
        self.env = env
        self.rounds: list[dict[str, float]] = []
        self.requests: list[int] = []

    def run_job(self, job: Job) -> str | None:
        """Run one command; a failure as a line, None when it succeeded."""
        try:
            done = subprocess.run(
                job, env=self.env, capture_output=True, text=True, timeout=TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            return f"{job[-1]}: timed out after {TIMEOUT:.0f}s"
        if done.returncode != 0:
            return f"{' '.join(job[:3])} ... {job[-1]}: exit {done.returncode}: {done.stderr.strip()[-300:]}"
        return None

    def round(self, local: LocalChain) -> None:
        clear_logs(local)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.parallel) as pool:
            failures = [f for f in pool.map(self.run_job, self.jobs) if f is not None]
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if failures:
            raise SystemExit(
                f"{self.name}: {len(failures)} of {len(self.jobs)} runs failed, e.g. {failures[0]}"
            )
        user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
        self.rounds.append({"wall_s": wall, "cpu_s": user + system, "user_s": user, "sys_s": system})
        tally = RequestTally()
        tally.collect(local)
        self.requests.append(tally.client_total)

    def report(self) -> dict[str, Any]:
        best_wall = min(r["wall_s"] for r in self.rounds)
        best_cpu = min(self.rounds, key=lambda r: r["cpu_s"])
        return {
            "processes": len(self.jobs),
            "parallel": self.parallel,
            "wall_s": rounded(best_wall),
            "cpu_s": rounded(best_cpu["cpu_s"]),
            "user_s": rounded(best_cpu["user_s"]),
            "sys_s": rounded(best_cpu["sys_s"]),
            "rounds": [{k: rounded(v) for k, v in r.items()} for r in self.rounds],
            "requests_per_round": self.requests,
        }


class SkopeoRunner(Runner):
    """skopeo copies into ``dir:`` destinations, each deleted after its copy (outside the timing)."""

    def run_job(self, job: Job) -> str | None:
        try:
            return super().run_job(job)
        finally:
            shutil.rmtree(job[-1].removeprefix("dir:"), ignore_errors=True)


def make_runners(
    local: LocalChain, repositories: list[str], parallel: int, scratch: Path, python: str
) -> tuple[list[Runner], dict[str, str]]:
    """The runners that can run here, and why any peer was skipped. ``python`` runs layerwatch."""
    config = write_docker_config(local, scratch)
    env = dict(os.environ, DOCKER_CONFIG=str(scratch), PYTHONPATH=str(REPO / "operator"))
    # An installed layerwatch runs from .pyc files (pip compiles them): the warm-up writes them.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    hops = [
        f"--hop={hop.name}=http://{CLIENT_HOST}:{hop.gateway.port}" + (f"/{hop.prefix}" if hop.prefix else "")
        for hop in local.hops
    ]
    every = [hop_reference(local, hop.name, r) for r in repositories for hop in local.hops]
    check = [python, "-c", LAYERWATCH, "check", "--mode=full", f"--docker-config={config}"]
    check += [f"--parallel-checks={parallel}", "-o", "json", *hops]
    result = [
        Runner("layerwatch", [[*check, *(hop_reference(local, "edge", r) for r in repositories)]], 1, env)
    ]
    skipped: dict[str, str] = {}
    crane = crane_path()
    if crane.exists():
        jobs = [[str(crane), "validate", "--insecure", "--remote", ref] for ref in every]
        result.append(Runner("crane", jobs, parallel, env))
    else:
        skipped["crane"] = f"{crane} missing: run hack/build-tools.sh crane"
    skopeo = shutil.which("skopeo")
    if skopeo is not None:
        copies = scratch / "copies"
        copies.mkdir()
        copy = [skopeo, "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false"]
        skopeo_jobs = [
            [*copy, f"--src-authfile={config}", f"docker://{ref}", f"dir:{copies / str(n)}"]
            for n, ref in enumerate(every)
        ]
        result.append(SkopeoRunner("skopeo", skopeo_jobs, parallel, env))
    else:
        skipped["skopeo"] = "skopeo not on PATH: hack/install-deps.sh skopeo (Debian package)"
    return result, skipped


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; every lab process is stopped whatever happens."""
    repositories = [f"bench/peer-{i:03d}" for i in range(args.artifacts)]
    with LocalChain() as local, tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        for repository in repositories:
            push_flux_artifact(local.push_address, repository, TAG)
        all_runners, skipped = make_runners(local, repositories, args.parallel, Path(tmp), args.python)
        layerwatch = all_runners[0]
        for _ in range(2):  # warm: the proxies cache every blob (in the background, hence twice)
            layerwatch.round(local)
            time.sleep(0.5)
        layerwatch.rounds.clear()
        layerwatch.requests.clear()
        load = [os.getloadavg()[0]]
        for _ in range(args.rounds):
            for runner in all_runners:
                runner.round(local)
            load.append(os.getloadavg()[0])
    results = {runner.name: runner.report() for runner in all_runners}
    mine = results["layerwatch"]
    return {
        "benchmark": "peers",
        **host_info(),
        "loadavg_1m": [rounded(v, 2) for v in load],
        "artifacts": args.artifacts,
        "hops": 3,
        "rounds": args.rounds,
        "parallel": args.parallel,
        "layerwatch_python": args.python,
        "runners": results,
        "skipped": skipped,
        "layerwatch_vs": {
            name: {
                "wall_ratio": rounded(mine["wall_s"] / result["wall_s"]),
                "cpu_ratio": rounded(mine["cpu_s"] / result["cpu_s"]) if result["cpu_s"] else None,
            }
            for name, result in results.items()
            if name != "layerwatch"
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--artifacts", type=int, default=20, help="distinct artifacts (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per runner; the best is reported")
    parser.add_argument("--parallel", type=int, default=4, help="checks (or processes) at once")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter that runs layerwatch (e.g. a virtualenv's)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.artifacts <= 200 or not 1 <= args.rounds <= 20 or args.parallel < 1:
        parser.error("--artifacts must be 1..200, --rounds 1..20, --parallel at least 1")
    with contextlib.redirect_stdout(sys.stderr):  # only the JSON goes to stdout
        report = run(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
