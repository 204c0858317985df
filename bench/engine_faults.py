"""``layerwatch serve`` against a hostile lab chain: a 429 storm, a black-holed hop, a lost layer.

``python bench/engine_faults.py [--interval 6] [--trials 20] [--storm-seconds 30] [--fair-seconds 36]``

One `lab.chain.LocalChain` (plus one extra gateway, ``dead``, in front of the origin registry)
serves three measurements, each with its own ``layerwatch serve`` child (default flags, so the
default 30 s timeout) and every chain at ``interval: <--interval>s``:

- **storm**: 5 targets via the edge while the edge gateway answers every request (``/v2/``
  included) 429 with ``Retry-After: 0``; the edge gateway's request counter over ``--storm-seconds``
  (only layerwatch talks to the edge gateway, so every request counted is ours).
- **starvation**: chain ``healthy`` (the lab chain, 5 targets) and chain ``dead`` (``dead`` ->
  origin, 40 targets). Checks per ``healthy`` target over ``--fair-seconds`` with ``dead`` answering,
  then over the same time with ``dead`` black-holed (TCP accepted, nothing answered); the ratio.
- **detection**: 10 targets, each its own artifact, on the lab chain. Per round, once every target
  is Healthy at core, a random pause within one interval, then every content layer is dropped at
  core; for each target the seconds until ``/api/v1/status`` shows core ``LayerMissing`` (polled
  every 0.1 s) is one trial. The faults are cleared and the next round waits for Healthy again.

Prints one JSON object (see bench/README.md); every process is stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from benchlib import REPO, host_info, rounded
from lab.artifacts import PushedArtifact, push_flux_artifact
from lab.chain import LocalChain
from lab.control import GatewayProcess
from lab.process import LOOPBACK, free_port, log_tail, stop_process

TAG = "v1"
STORM_TARGETS = 5
HEALTHY_TARGETS = 5
DEAD_TARGETS = 40
DETECTION_TARGETS = 10
STORM_LIMIT = 300
RATIO_LIMIT = 0.9
POLL_S = 0.1
READY_TIMEOUT_S = 60.0


class ServeChild:
    """``layerwatch serve --config FILE`` of this checkout as a child process on a free port."""

    def __init__(self, config: Path, log: Path) -> None:
        self.url = f"http://{LOOPBACK}:{free_port()}"
        self.log = log
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "operator"), env.get("PYTHONPATH")]))
        port = self.url.rsplit(":", 1)[1]
        command = [sys.executable, "-c", "import sys; from layerwatch.cli import main; sys.exit(main())"]
        command += ["serve", "--config", str(config), "--metrics-address", LOOPBACK, "--metrics-port", port]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.http = httpx.Client(timeout=30.0)

    def get(self, path: str) -> httpx.Response:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"layerwatch serve exited with {self.process.returncode}:\n{log_tail(self.log)}"
            )
        response = self.http.get(f"{self.url}{path}")
        response.raise_for_status()
        return response

    def until(self, ready: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll ``ready`` every `POLL_S` until true; the time it became true (``time.monotonic``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if ready():
                    return time.monotonic()
            time.sleep(POLL_S)
        raise RuntimeError(f"{what}: not within {timeout:.0f}s\n{log_tail(self.log)}")

    def core_verdicts(self) -> dict[str, str | None]:
        """Target name -> its core hop verdict (None before the first check)."""
        verdicts: dict[str, str | None] = {}
        for artifact in self.get("/api/v1/status").json()["artifacts"]:
            hops = {h["name"]: h["verdict"] for h in artifact["hops"]}
            verdicts[artifact["name"]] = hops.get("core")
        return verdicts

    def metric(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Samples of one metric family from ``/metrics``, by sorted label pairs."""
        samples: dict[tuple[tuple[str, str], ...], float] = {}
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name:
                    samples[tuple(sorted(sample.labels.items()))] = sample.value
        return samples

    def checks(self, chain: str, hop: str) -> float:
        """``layerwatch_checks_total`` of one chain and hop, all verdicts."""
        return sum(
            value
            for labels, value in self.metric("layerwatch_checks_total").items()
            if ("chain", chain) in labels and ("hop", hop) in labels
        )

    def check_seconds(self, chain: str) -> float:
        """Mean seconds of one hop check on ``chain``, the slowest hop's (a whole check's length)."""
        sums, counts = (
            self.metric("layerwatch_check_duration_seconds_sum"),
            self.metric("layerwatch_check_duration_seconds_count"),
        )
        means = [sums[k] / counts[k] for k in sums if ("chain", chain) in k and counts.get(k)]
        return max(means, default=0.0)

    def stop(self) -> None:
        self.http.close()
        stop_process(self.process)


def chain_doc(
    local: LocalChain, name: str, interval: float, hops: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    document = local.chain_document(name)
    spec = document["spec"]
    assert isinstance(spec, dict)
    spec["interval"] = f"{interval:g}s"
    if hops is not None:
        spec["hops"] = hops
    return document


def target(name: str, chain: str, url: str) -> dict[str, Any]:
    return {"kind": "Target", "name": name, "url": url, "ref": {"tag": TAG}, "chain": chain}


def edge_url(local: LocalChain, pushed: PushedArtifact) -> str:
    return "oci://" + local.reference(pushed.repository, TAG).rsplit(":", 1)[0]


@contextlib.contextmanager
def serving(directory: Path, name: str, documents: list[dict[str, Any]], ready: int) -> Iterator[ServeChild]:
    """A serve child over ``documents``, yielded once ``ready`` targets have a first check."""
    config = directory / f"{name}.yaml"
    config.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    serve = ServeChild(config, directory / f"{name}.log")
    try:
        serve.until(
            lambda: (
                sum(bool(a["checkedAt"]) for a in serve.get("/api/v1/status").json()["artifacts"]) >= ready
            ),
            READY_TIMEOUT_S,
            f"{name}: first checks",
        )
        yield serve
    finally:
        serve.stop()


def storm(
    local: LocalChain, directory: Path, artifacts: list[PushedArtifact], interval: float, seconds: float
) -> dict[str, Any]:
    """Requests the edge gateway received in ``seconds`` while answering everything 429, Retry-After 0."""
    documents = [chain_doc(local, "storm", interval)]
    documents += [target(f"storm-{i}", "storm", edge_url(local, a)) for i, a in enumerate(artifacts)]
    edge = local.faults("edge")
    edge.set([{"kind": "ratelimit", "retry_after": "0"}])
    try:
        # ready=0: the storm starts with the first requests; the window starts once serve answers.
        with serving(directory, "storm", documents, 0) as serve:
            start = edge.total_requests()
            time.sleep(seconds)
            requests = edge.total_requests() - start
            rate_limited = sum(
                v
                for k, v in serve.metric("layerwatch_checks_total").items()
                if ("verdict", "RateLimited") in k
            )
    finally:
        edge.clear()
        edge.clear_requests()
    return {"seconds": seconds, "requests": requests, "rate_limited_hop_checks": rate_limited}


def starvation(
    local: LocalChain, directory: Path, healthy: list[PushedArtifact], interval: float, seconds: float
) -> dict[str, Any]:
    """Checks per healthy-chain target with the other chain's 40-target hop answering, then black-holed."""
    origin = local.hop("origin")
    with contextlib.ExitStack() as stack:
        dead = GatewayProcess("dead", origin.registry.url).start()
        stack.callback(dead.stop)
        shared = push_flux_artifact(local.push_address, "bench/dead-shared", TAG)
        dead_hops = [{"name": "dead", "url": dead.url}, {"name": "origin", "url": origin.url}]
        documents = [chain_doc(local, "healthy", interval), chain_doc(local, "dead", interval, dead_hops)]
        documents += [target(f"healthy-{i}", "healthy", edge_url(local, a)) for i, a in enumerate(healthy)]
        dead_url = f"oci://{dead.address}/{shared.repository}"
        documents += [target(f"dead-{i:02d}", "dead", dead_url) for i in range(DEAD_TARGETS)]
        with serving(directory, "starvation", documents, HEALTHY_TARGETS + DEAD_TARGETS) as serve:
            rates = []
            for fault in (None, "blackhole"):
                dead.faults.set([{"kind": fault}] if fault else [])
                before = serve.checks("healthy", "edge")
                time.sleep(seconds)
                rates.append((serve.checks("healthy", "edge") - before) / len(healthy))
            dead_verdicts = serve.metric("layerwatch_checks_total")
    without, with_fault = rates
    dead_unreachable = sum(
        v for k, v in dead_verdicts.items() if ("chain", "dead") in k and ("verdict", "Unreachable") in k
    )
    return {
        "seconds_per_phase": seconds,
        "checks_per_target_without_fault": rounded(without, 2),
        "checks_per_target_with_black_hole": rounded(with_fault, 2),
        "ratio": rounded(with_fault / without, 3) if without else None,
        "dead_chain_unreachable_hop_checks": dead_unreachable,
    }


def detection(local: LocalChain, directory: Path, interval: float, trials: int) -> dict[str, Any]:
    """Seconds from dropping each target's layer at core to core ``LayerMissing`` in ``/api/v1/status``."""
    artifacts = [
        push_flux_artifact(local.push_address, f"bench/detect-{i:02d}", TAG) for i in range(DETECTION_TARGETS)
    ]
    names = [f"detect-{i:02d}" for i in range(DETECTION_TARGETS)]
    documents = [chain_doc(local, "detect", interval)]
    documents += [target(n, "detect", edge_url(local, a)) for n, a in zip(names, artifacts, strict=True)]
    core = local.faults("core")
    drops = [
        {
            "kind": "drop",
            "repository": local.repository_at("core", a.repository),
            "digest": a.content_layer.digest,
        }
        for a in artifacts
    ]
    seconds: list[float] = []
    with serving(directory, "detection", documents, DETECTION_TARGETS) as serve:
        for _ in range(math.ceil(trials / DETECTION_TARGETS)):
            serve.until(
                lambda: all(v == "Healthy" for v in serve.core_verdicts().values()),
                3 * interval + 30,
                "Healthy at core",
            )
            time.sleep(random.uniform(0, interval))
            core.set(drops)
            dropped = time.monotonic()
            pending = set(names)
            while pending:
                if time.monotonic() - dropped > 5 * interval + 60:
                    raise RuntimeError(
                        f"never LayerMissing at core: {sorted(pending)}\n{log_tail(serve.log)}"
                    )
                verdicts = serve.core_verdicts()
                now = time.monotonic()
                for name in [n for n in pending if verdicts.get(n) == "LayerMissing"]:
                    seconds.append(now - dropped)
                    pending.discard(name)
                time.sleep(POLL_S)
            core.clear()
        check_s = serve.check_seconds("detect")
    bound = 1.1 * interval + check_s
    return {
        "trials": len(seconds),
        "max": rounded(max(seconds), 2),
        "mean": rounded(statistics.mean(seconds), 2),
        "median": rounded(statistics.median(seconds), 2),
        "values": [rounded(s, 2) for s in sorted(seconds)],
        "one_check_s": rounded(check_s, 3),
        "bound_s": rounded(bound, 2),
        "within_bound": max(seconds) <= bound,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    interval = float(args.interval)
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-faults-")))
        local = stack.enter_context(LocalChain())
        healthy = [
            push_flux_artifact(local.push_address, f"bench/faults-{i}", TAG) for i in range(HEALTHY_TARGETS)
        ]
        print("storm ...", file=sys.stderr)
        stormed = storm(local, directory, healthy[:STORM_TARGETS], interval, args.storm_seconds)
        print(f"storm: {stormed}; starvation ...", file=sys.stderr)
        starved = starvation(local, directory, healthy, interval, args.fair_seconds)
        print(f"starvation: {starved}; detection ...", file=sys.stderr)
        detected = detection(local, directory, interval, args.trials)
    return {
        "benchmark": "engine_faults",
        **host_info(),
        "interval_s": interval,
        "storm_requests_30s": round(stormed["requests"] * 30 / args.storm_seconds),
        "starvation_ratio": starved["ratio"],
        "detection_s": detected,
        "limits": {
            "storm_requests_30s": f"<= {STORM_LIMIT}",
            "starvation_ratio": f">= {RATIO_LIMIT}",
            "detection_s.max": f"<= 1.1 x interval + one check = {detected['bound_s']}",
        },
        "storm": stormed,
        "starvation": starved,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--interval", type=float, default=6.0, help="every chain's interval, seconds (default 6)"
    )
    parser.add_argument("--trials", type=int, default=20, help="detection trials, >= 10 (default 20)")
    parser.add_argument("--storm-seconds", type=float, default=30.0, help="storm window (default 30)")
    parser.add_argument("--fair-seconds", type=float, default=36.0, help="each starvation phase (default 36)")
    args = parser.parse_args(argv)
    if (
        not 1 <= args.interval <= 60
        or args.trials < 10
        or args.storm_seconds < 5
        or args.fair_seconds < 2 * args.interval
    ):
        parser.error("--interval 1..60, --trials >= 10, --storm-seconds >= 5, --fair-seconds >= 2 intervals")
    with contextlib.redirect_stdout(sys.stderr):  # only the JSON goes to stdout
        report = run(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
