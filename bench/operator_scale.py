"""``layerwatch operator`` at scale on a real kube-apiserver: what it costs per replica and what the
apiserver pays.

``python bench/operator_scale.py [--targets 10000] [--shards 1] [--namespaces 100] [--artifacts 100]
[--interval 300] [--mode head]``

Starts the lab registry chain and pushes ``--artifacts`` distinct Flux artifacts (warmed through
the proxies), then etcd + kube-apiserver (``lab.kube.ControlPlane``) with an audit log of the
operators' ServiceAccounts only; installs the Flux OCIRepository CRD, the ProxyChain CRD, the
operator's ClusterRole, one ProxyChain for the lab chain (edge robot in a basic-auth Secret, the
given interval and mode) and ``--targets`` v1 OCIRepositories round-robin over ``--namespaces``
namespaces and the artifacts. Then ``--shards`` operator processes (``--shard-count K``, the
index from ``POD_NAME=layerwatch-<i>`` as in a StatefulSet), each with its own ServiceAccount
token so the audit log tells the replicas apart.

Measured: ``first_cycle_s`` from the operators' start until every OCIRepository has its
condition (the audit log's first ``patch`` of each ``/status``); then one quiet interval in
which every verdict stays the same: per replica CPU (``/proc/<pid>/stat``), checks
(``layerwatch_checks_total``), and the apiserver requests of its ServiceAccount from the audit log
(``watch`` excluded); ``rss_mb`` is the peak (``VmHWM``) per replica over the whole run. Prints
one JSON object (fields in bench/README.md); everything it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchlib import REPO, host_info, rounded
from lab.artifacts import push_flux_artifact
from lab.chain import LocalChain
from lab.kube import ControlPlane, basic_auth_secret, load_docs, load_flux_crds
from lab.process import free_port
from serve_scale import parse_checks, proc_cpu_s, proc_memory_mb, warm

TAG = "v1"
CHAIN = "bench"
NAMESPACE = "layerwatch"
FLUX = ("source.toolkit.fluxcd.io", "v1")
CREATE_PARALLEL = 8
PUSH_PARALLEL = 4
POLL_S = 5.0
SETTLE_S = 10.0
"""Wait after the first cycle, so the last ProxyChain status write and events are behind us."""
READS, WRITES = (
    frozenset({"get", "list"}),
    frozenset({"create", "update", "patch", "delete", "deletecollection"}),
)


def log(message: str) -> None:
    print(f"[operator_scale] {message}", file=sys.stderr, flush=True)


def user_of(shard: int, shards: int) -> tuple[str, str]:
    """(ServiceAccount name, audit user name) of one replica."""
    name = NAMESPACE if shards == 1 else f"{NAMESPACE}-{shard}"
    return name, f"system:serviceaccount:{NAMESPACE}:{name}"


def rbac_for(sa: str) -> list[dict[str, Any]]:
    """The shipped ClusterRole, bound to ``sa`` (one binding per replica's ServiceAccount)."""
    role = load_docs(REPO / "manifests" / "clusterrole.yaml")
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"layerwatch-bench-{sa}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "layerwatch"},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}],
    }
    return [*role, binding]


def proxychain(local: LocalChain, interval: int, mode: str) -> dict[str, Any]:
    hops = []
    for hop in local.hops:
        entry: dict[str, Any] = {"name": hop.name, "url": hop.url}
        if hop.credentials:
            entry["secretRef"] = {"name": "bench-edge", "namespace": NAMESPACE}
        hops.append(entry)
    return {
        "apiVersion": "layerwatch.io/v1alpha1",
        "kind": "ProxyChain",
        "metadata": {"name": CHAIN},
        "spec": {"hops": hops, "interval": f"{interval}s", "mode": mode},
    }


def create_objects(
    cp: ControlPlane, local: LocalChain, args: argparse.Namespace, repositories: list[str]
) -> None:
    from kubernetes import client

    namespaces = [f"bench-{i:03d}" for i in range(args.namespaces)]
    for name in namespaces:
        cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    edge = local.hop("edge")
    custom = client.CustomObjectsApi(cp.api_client())

    def create(index: int) -> None:
        namespace = namespaces[index % len(namespaces)]
        repository = repositories[index % len(repositories)]
        body = {
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "OCIRepository",
            "metadata": {"name": f"app-{index:05d}", "namespace": namespace},
            "spec": {
                "url": f"oci://{edge.address}/{local.repository_at('edge', repository)}",
                "ref": {"tag": TAG},
                "interval": "10m",
                "insecure": True,
            },
        }
        custom.create_namespaced_custom_object(*FLUX, namespace, "ocirepositories", body)

    with concurrent.futures.ThreadPoolExecutor(CREATE_PARALLEL) as pool:
        list(pool.map(create, range(args.targets)))


class AuditLog:
    """The apiserver's audit log, read incrementally (it grows by one line per request)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.events: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        if self.path.exists():
            with self.path.open("rb") as log_file:
                log_file.seek(self.offset)
                chunk = log_file.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self.offset += len(complete)
            self.events.extend(json.loads(line) for line in complete.splitlines() if line.strip())
        return self.events


class Replica:
    """One ``layerwatch operator`` process (a shard), its ServiceAccount and its log."""

    def __init__(self, cp: ControlPlane, index: int, shards: int, directory: Path) -> None:
        self.index, self.shards = index, shards
        self.sa, self.user = user_of(index, shards)
        self.kubeconfig = cp.service_account_kubeconfig(NAMESPACE, self.sa, rbac_for(self.sa))
        self.metrics_port = free_port()
        self.log_path = directory / f"operator-{index}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "POD_NAME": f"layerwatch-{self.index}",
            "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")]),
        }
        command = [
            sys.executable, "-m", "layerwatch.cli", "operator", "--standalone", "--all-namespaces",
            "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
            "--shard-count", str(self.shards), "--log-level", "warning",
        ]  # fmt: skip
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"operator {self.index} exited:\n{self.log_path.read_text()[-3000:]}")
        return self.process.pid

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def edge_checks(text: str) -> int:
    return sum(n for (hop, _), n in parse_checks(text).items() if hop == "edge")


def targets_of(text: str) -> int:
    """OCIRepositories a replica watches: one per-artifact verdict series at the edge each."""
    return sum(
        1
        for line in text.splitlines()
        if line.startswith("layerwatch_artifact_hop_verdict{") and 'hop="edge"' in line
    )


def audit_requests(
    events: Sequence[dict[str, Any]], user: str, start: float, end: float
) -> collections.Counter[str]:
    """Requests of ``user`` finished in [start, end), by ``verb resource[/sub]`` (watches left out)."""
    counts: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("user", {}).get("username") != user or event.get("verb") == "watch":
            continue
        when = _timestamp(event.get("stageTimestamp", ""))
        if start <= when < end:
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", event.get("requestURI", "?")) + (
                f"/{ref['subresource']}" if ref.get("subresource") else ""
            )
            counts[f"{event['verb']} {resource}"] += 1
    return counts


def _timestamp(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else 0.0


def conditioned(events: Sequence[dict[str, Any]], users: set[str]) -> dict[tuple[str, str], float]:
    """When each OCIRepository first got its condition: the first status patch by an operator."""
    first: dict[tuple[str, str], float] = {}
    for event in events:
        ref = event.get("objectRef") or {}
        if (
            event.get("user", {}).get("username") in users
            and event.get("verb") == "patch"
            and ref.get("resource") == "ocirepositories"
            and ref.get("subresource") == "status"
            and event.get("responseStatus", {}).get("code") == 200
        ):
            key = (ref.get("namespace", ""), ref.get("name", ""))
            first.setdefault(key, _timestamp(event["stageTimestamp"]))
    return first


def split(total: Sequence[int]) -> float:
    """Largest deviation of a shard's share from an even split, in % of the even share."""
    even = sum(total) / len(total)
    return rounded(max(abs(n - even) for n in total) / even * 100, 1) if even else 0.0


@contextlib.contextmanager
def replicas(cp: ControlPlane, shards: int, directory: Path) -> Iterator[list[Replica]]:
    started = [Replica(cp, index, shards, directory) for index in range(shards)]
    try:
        yield started
    finally:
        for replica in started:
            replica.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    repositories = [f"bench/op-{i:03d}" for i in range(args.artifacts)]
    loadavg_start = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="lw-opscale-") as tmp, LocalChain() as local:
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(PUSH_PARALLEL) as pool:
            list(pool.map(lambda r: push_flux_artifact(local.push_address, r, TAG), repositories))
        asyncio.run(warm(local, repositories))
        log(f"pushed and warmed {len(repositories)} artifacts in {time.perf_counter() - started:.0f} s")
        users = {user_of(i, args.shards)[1] for i in range(args.shards)}
        with ControlPlane(audit_users=sorted(users)) as cp:
            cp.apply(load_flux_crds(cp.tools))
            cp.apply(REPO / "crds" / "proxychain.yaml")
            cp.apply(REPO / "manifests" / "namespace.yaml")
            cp.apply(basic_auth_secret(NAMESPACE, "bench-edge", local.hop("edge").credentials))
            cp.apply(proxychain(local, args.interval, args.mode))
            created = time.perf_counter()
            create_objects(cp, local, args, repositories)
            create_s = time.perf_counter() - created
            log(f"created {args.targets} OCIRepositories in {create_s:.0f} s")
            with replicas(cp, args.shards, Path(tmp)) as running:
                t0 = time.time()
                for replica in running:
                    replica.start()
                deadline = t0 + args.interval * 3 + 300
                audit = AuditLog(cp.audit_log)
                while True:
                    time.sleep(POLL_S)
                    for replica in running:
                        replica.pid  # noqa: B018 - raises when the process died
                    done = conditioned(audit.read(), users)
                    log(f"{len(done)}/{args.targets} conditions after {time.time() - t0:.0f} s")
                    if len(done) >= args.targets:
                        break
                    if time.time() > deadline:
                        raise SystemExit(f"first cycle incomplete: {len(done)}/{args.targets}")
                first_cycle = max(done.values()) - t0
                time.sleep(SETTLE_S)
                before = [(proc_cpu_s(r.pid), edge_checks(r.metrics())) for r in running]
                quiet_start = time.time()
                time.sleep(args.interval)
                quiet_end = time.time()
                after = [(proc_cpu_s(r.pid), edge_checks(r.metrics())) for r in running]
                texts = [r.metrics() for r in running]
                events = audit.read()
                per_shard = []
                for replica, (cpu0, checks0), (cpu1, checks1), text in zip(
                    running, before, after, texts, strict=True
                ):
                    quiet = audit_requests(events, replica.user, quiet_start, quiet_end)
                    per_shard.append(
                        {
                            "shard": replica.index,
                            "targets": targets_of(text),
                            "rss_mb": proc_memory_mb(replica.pid)["VmHWM"],
                            "cpu_cores_avg": rounded((cpu1 - cpu0) / (quiet_end - quiet_start)),
                            "quiet_cycle_checks": checks1 - checks0,
                            "quiet_cycle_reads": sum(n for k, n in quiet.items() if k.split()[0] in READS),
                            "quiet_cycle_writes": sum(n for k, n in quiet.items() if k.split()[0] in WRITES),
                            "quiet_cycle_requests": dict(sorted(quiet.items())),
                        }
                    )
                whole_run = collections.Counter[str]()
                for user_name in users:
                    whole_run.update(audit_requests(events, user_name, t0, time.time()))
    return {
        "targets": args.targets,
        "shards": args.shards,
        "namespaces": args.namespaces,
        "artifacts": args.artifacts,
        "mode": args.mode,
        "interval_s": args.interval,
        "first_cycle_s": rounded(first_cycle, 1),
        "rss_mb": max(s["rss_mb"] for s in per_shard),
        "cpu_cores_avg": max(s["cpu_cores_avg"] for s in per_shard),
        "quiet_cycle_writes": sum(s["quiet_cycle_writes"] for s in per_shard),
        "quiet_cycle_reads": sum(s["quiet_cycle_reads"] for s in per_shard),
        "quiet_cycle_checks": sum(s["quiet_cycle_checks"] for s in per_shard),
        "events_created": whole_run["create events"],
        "split_deviation_pct": split([s["targets"] for s in per_shard]),
        "per_shard": per_shard,
        "create_objects_s": rounded(create_s, 1),
        "host": {
            **host_info(),
            "loadavg_start": loadavg_start,
            "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000, help="OCIRepositories (default 10000)")
    parser.add_argument("--shards", type=int, default=1, help="operator replicas, --shard-count (default 1)")
    parser.add_argument(
        "--namespaces", type=int, default=100, help="namespaces they spread over (default 100)"
    )
    parser.add_argument("--artifacts", type=int, default=100, help="distinct artifacts (default 100)")
    parser.add_argument(
        "--interval", type=int, default=300, help="ProxyChain interval in seconds (default 300)"
    )
    parser.add_argument(
        "--mode", choices=["head", "full"], default="head", help="ProxyChain mode (default head)"
    )
    args = parser.parse_args(argv)
    if args.targets < 1 or args.shards < 1 or args.namespaces < 1 or args.artifacts < 1 or args.interval < 1:
        parser.error("--targets, --shards, --namespaces, --artifacts and --interval must be at least 1")
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
