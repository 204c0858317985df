"""Every Prometheus metric layerwatch exports, in one place (SPEC 5).

One collector renders all families at scrape time from plain dictionaries, so a series disappears
the moment its target, hop or chain does (no stale series to remember to remove). Per-artifact
series are bounded: one per artifact x hop, never per layer or per error string.
"""

from __future__ import annotations

import bisect
import collections
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from layerwatch import __version__
from layerwatch.check import CheckResult
from layerwatch.store import ResultStore
from layerwatch.verdict import Health

__all__ = ["DURATION_BUCKETS", "Metrics"]

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds; a small artifact checks in well under a second, a large image over a slow hop in minutes."""

_ARTIFACT_LABELS = ["namespace", "name", "chain", "hop"]


class _Histogram:
    def __init__(self) -> None:
        self.buckets = [0] * len(DURATION_BUCKETS)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        position = bisect.bisect_left(DURATION_BUCKETS, value)
        for i in range(position, len(DURATION_BUCKETS)):
            self.buckets[i] += 1
        self.total += value
        self.count += 1


class Metrics:
    """Counters and histograms kept here; per-artifact gauges read from the ``ResultStore``."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._checks: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._durations: dict[tuple[str, str], _Histogram] = {}
        self._requests: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        self._bytes: collections.Counter[tuple[str, str]] = collections.Counter()
        self._hop_up: dict[tuple[str, str], bool] = {}
        self._intervals: dict[str, float] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    # -- writers -------------------------------------------------------------------------------

    def record_check(self, chain: str, result: CheckResult) -> None:
        with self._lock:
            for observation, verdict in zip(result.observations, result.judgement.hops, strict=True):
                self._checks[(chain, observation.hop, verdict.verdict.value)] += 1
                self._durations.setdefault((chain, observation.hop), _Histogram()).observe(
                    observation.duration
                )
                self._bytes[(chain, observation.hop)] += observation.bytes_verified

    def request_hook(self, chain: str, hop: str) -> Callable[[str, str], None]:
        """The registry client's per-request callback, bound to a chain and hop."""

        def count(method: str, code: str) -> None:
            with self._lock:
                self._requests[(chain, hop, method, code)] += 1

        return count

    def set_hop_up(self, chain: str, hop: str, up: bool) -> None:
        with self._lock:
            self._hop_up[(chain, hop)] = up

    def hop_up(self) -> dict[tuple[str, str], bool]:
        with self._lock:
            return dict(self._hop_up)

    def set_chain(self, chain: str, interval: float, hops: Iterable[str]) -> None:
        """Declare a chain's hops; series of hops no longer on it are dropped."""
        keep = set(hops)
        with self._lock:
            self._intervals[chain] = interval
            self._drop(lambda key: key[0] == chain and key[1] not in keep)

    def forget_chain(self, chain: str) -> None:
        with self._lock:
            self._intervals.pop(chain, None)
            self._drop(lambda key: key[0] == chain)

    def _drop(self, doomed: Callable[[tuple[str, ...]], bool]) -> None:
        tables: tuple[dict[Any, Any], ...] = (
            self._checks,
            self._durations,
            self._requests,
            self._bytes,
            self._hop_up,
        )
        for table in tables:
            for key in [k for k in table if doomed(k)]:
                del table[key]

    # -- the collector -------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        healthy = GaugeMetricFamily(
            "layerwatch_artifact_hop_healthy",
            "1 healthy, 0 unhealthy; absent while unknown",
            labels=_ARTIFACT_LABELS,
        )
        verdict = GaugeMetricFamily(
            "layerwatch_artifact_hop_verdict",
            "1 for the current verdict of an artifact at a hop",
            labels=[*_ARTIFACT_LABELS, "verdict"],
        )
        last = GaugeMetricFamily(
            "layerwatch_artifact_hop_last_check_timestamp_seconds",
            "End of the last completed check (Unix time)",
            labels=_ARTIFACT_LABELS,
        )
        for status in self.store.snapshot():
            if status.result is None:
                continue
            for hop_verdict in status.result.judgement.hops:
                labels = [status.target.namespace, status.target.name, status.chain, hop_verdict.hop]
                if hop_verdict.verdict.health is not Health.UNKNOWN:
                    healthy.add_metric(labels, 1.0 if hop_verdict.verdict.health is Health.HEALTHY else 0.0)
                verdict.add_metric([*labels, hop_verdict.verdict.value], 1.0)
                last.add_metric(labels, status.result.finished)
        yield healthy
        yield verdict
        yield last
        with self._lock:
            yield from self._collect_counters()

    def _collect_counters(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("layerwatch_hop_up", "1 when the hop answers /v2/", labels=["chain", "hop"])
        for (chain, hop), value in sorted(self._hop_up.items()):
            up.add_metric([chain, hop], 1.0 if value else 0.0)
        yield up
        checks = CounterMetricFamily(
            "layerwatch_checks", "Checks per hop by verdict", labels=["chain", "hop", "verdict"]
        )
        for check_key, count in sorted(self._checks.items()):
            checks.add_metric(list(check_key), count)
        yield checks
        duration = HistogramMetricFamily(
            "layerwatch_check_duration_seconds",
            "Time to check one artifact at one hop",
            labels=["chain", "hop"],
        )
        for (chain, hop), histogram in sorted(self._durations.items()):
            buckets = [
                (str(bound), float(n)) for bound, n in zip(DURATION_BUCKETS, histogram.buckets, strict=True)
            ]
            buckets.append(("+Inf", float(histogram.count)))
            duration.add_metric([chain, hop], buckets, histogram.total)
        yield duration
        requests = CounterMetricFamily(
            "layerwatch_registry_requests",
            "HTTP requests to registries",
            labels=["chain", "hop", "method", "code"],
        )
        for request_key, count in sorted(self._requests.items()):
            requests.add_metric(list(request_key), count)
        yield requests
        verified = CounterMetricFamily(
            "layerwatch_blob_bytes_verified",
            "Blob bytes downloaded and hash-verified",
            labels=["chain", "hop"],
        )
        for (chain, hop), count in sorted(self._bytes.items()):
            verified.add_metric([chain, hop], count)
        yield verified
        intervals = GaugeMetricFamily(
            "layerwatch_chain_interval_seconds", "Check interval of a chain", labels=["chain"]
        )
        for chain, interval in sorted(self._intervals.items()):
            intervals.add_metric([chain], interval)
        yield intervals
        info = GaugeMetricFamily("layerwatch_build_info", "layerwatch version", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
