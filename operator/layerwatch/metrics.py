"""Every Prometheus metric layerwatch exports, in one place (docs/reference.md lists them).

One collector renders all families at scrape time from plain dictionaries, so a series disappears
the moment its target, hop or chain does (no stale series to remember to remove). Per-artifact
series are bounded: one per artifact x hop, never per layer or per error string.

Blame is in the metrics so that alerts can page once per broken hop: ``layerwatch_artifact_blame``
exists only on the hop an artifact's current verdict is blamed on, and
``layerwatch_hop_blamed_artifacts`` counts those artifacts per chain, hop and verdict. Hops that
only pass an upstream failure on have neither. The ``verdict`` label is the blamed hop's own verdict,
the cause: an edge answering ``404`` because core is down pages as core ``Unreachable`` (which
``LayerwatchHopDown`` covers), not as a ``ManifestMissing`` at core.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from layerwatch import __version__
from layerwatch.canary import CanaryResult
from layerwatch.store import ResultStore, TargetStatus
from layerwatch.verdict import CheckResult, Health

__all__ = ["DURATION_BUCKETS", "Metrics"]

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds; a small artifact checks in well under a second, a large image over a slow hop in minutes."""

_go_float = cast(Callable[[float], str], floatToGoString)
"""A sample value as ``prometheus_client`` writes it (Go's float formatting)."""
_CHUNK = 1 << 16
"""Characters per piece of the exposition handed to the web server."""


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
        self._not_ready: dict[str, str] = {}
        self._hops: dict[str, tuple[str, ...]] = {}
        self._reload: tuple[bool, float] | None = None
        self._reloaded_at: float | None = None

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
        keep = tuple(hops)
        with self._lock:
            self._intervals[chain] = interval
            self._hops[chain] = keep
            self._drop(lambda key: key[0] == chain and key[1] not in keep)

    def set_chains_not_ready(self, reasons: Mapping[str, str]) -> None:
        """Replace the set of chains that cannot be checked (a Secret missing, a bad CA...), with why.

        ``layerwatch_chain_ready`` is 0 for these and 1 for every chain being checked.
        """
        with self._lock:
            self._not_ready = dict(reasons)

    def chains_not_ready(self) -> dict[str, str]:
        with self._lock:
            return dict(self._not_ready)

    def set_config_load(self, successful: bool, at: float) -> None:
        """``serve``: whether the last (re)load of its config file worked; a failed one keeps the old plan."""
        with self._lock:
            self._reload = (successful, at)
            if successful:
                self._reloaded_at = at

    def forget_chain(self, chain: str) -> None:
        with self._lock:
            self._intervals.pop(chain, None)
            self._hops.pop(chain, None)
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

    # -- the exposition ------------------------------------------------------------------------

    def exposition_chunks(self) -> Iterator[bytes]:
        """The text exposition, about 64 KiB at a time, as the web server sends it.

        Per-artifact families are written line by line from one snapshot of the store, never
        built as sample objects: 10,000 targets on a 3-hop chain are 150,000 lines, which
        rendered whole cost a replica more memory at every scrape than all its results.
        """
        statuses = self.store.snapshot()
        with self._lock:
            chain_hops = dict(self._hops)
            counters = list(self._collect_counters())
        blamed: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for status in statuses:
            judgement = status.result.judgement if status.result is not None else None
            if judgement is not None and judgement.blame is not None:
                blamed[(status.chain, judgement.blame, judgement.blamed_verdict.value)] += 1
        small = [
            _family(
                GaugeMetricFamily,
                "layerwatch_hop_blamed_artifacts",
                "Artifacts whose current verdict is blamed on this hop, by verdict",
                ["chain", "hop", "verdict"],
                blamed,
            ),
            *counters,
            *_canary_families(self.store.canaries()),
        ]
        lines = itertools.chain(
            *(family.lines(statuses, chain_hops) for family in _ARTIFACT_FAMILIES),
            [generate_latest(_Fixed(small)).decode()],
        )
        return _chunked(lines)

    def exposition(self) -> bytes:
        return b"".join(self.exposition_chunks())

    def _collect_counters(self) -> Iterator[Metric]:
        yield _family(
            GaugeMetricFamily,
            "layerwatch_hop_up",
            "1 when the hop answers /v2/",
            ["chain", "hop"],
            {key: 1.0 if up else 0.0 for key, up in self._hop_up.items()},
        )
        yield _family(
            CounterMetricFamily,
            "layerwatch_checks",
            "Checks per hop by verdict",
            ["chain", "hop", "verdict"],
            self._checks,
        )
        duration = HistogramMetricFamily(
            "layerwatch_check_duration_seconds",
            "Time to check one artifact at one hop",
            labels=["chain", "hop"],
        )
        for (chain, hop), histogram in sorted(self._durations.items()):
            counts = zip(DURATION_BUCKETS, histogram.buckets, strict=True)
            buckets = [(str(bound), float(n)) for bound, n in counts] + [("+Inf", float(histogram.count))]
            duration.add_metric([chain, hop], buckets, histogram.total)
        yield duration
        yield _family(
            CounterMetricFamily,
            "layerwatch_registry_requests",
            "HTTP requests to registries",
            ["chain", "hop", "method", "code"],
            self._requests,
        )
        yield _family(
            CounterMetricFamily,
            "layerwatch_blob_bytes_verified",
            "Blob bytes downloaded and hash-verified",
            ["chain", "hop"],
            self._bytes,
        )
        yield _family(
            GaugeMetricFamily,
            "layerwatch_chain_interval_seconds",
            "Check interval of a chain",
            ["chain"],
            {(chain,): interval for chain, interval in self._intervals.items()},
        )
        ready = {(chain,): 1.0 for chain in self._intervals}
        ready |= {(chain,): 0.0 for chain in self._not_ready}
        yield _family(
            GaugeMetricFamily,
            "layerwatch_chain_ready",
            "1 while a chain is checked, 0 while it cannot be (see the ProxyChain's Ready condition)",
            ["chain"],
            ready,
        )
        yield _family(
            GaugeMetricFamily,
            "layerwatch_config_last_reload_successful",
            "serve: 1 when the last load of the config file worked, 0 while the previous one runs on",
            [],
            {} if self._reload is None else {(): 1.0 if self._reload[0] else 0.0},
        )
        yield _family(
            GaugeMetricFamily,
            "layerwatch_config_last_reload_success_timestamp_seconds",
            "serve: when the config file last loaded (Unix time)",
            [],
            {} if self._reloaded_at is None else {(): self._reloaded_at},
        )
        yield _family(
            GaugeMetricFamily,
            "layerwatch_build_info",
            "layerwatch version",
            ["version"],
            {(__version__,): 1.0},
        )


def _canary_families(canaries: Mapping[str, CanaryResult]) -> Iterator[Metric]:
    """The cold-path canary's series: per chain, and per hop of the chain (bounded by its hops)."""
    healthy: dict[tuple[str], float] = {}
    verdicts: dict[tuple[str, str, str], float] = {}
    blame: dict[tuple[str, str, str], float] = {}
    last: dict[tuple[str], float] = {}
    for chain, run in canaries.items():
        last[(chain,)] = run.finished
        if run.health is not Health.UNKNOWN:
            healthy[(chain,)] = 1.0 if run.health is Health.HEALTHY else 0.0
        if run.result is None:
            verdicts[(chain, "", run.reason)] = 1.0
            continue
        judgement = run.result.judgement
        verdicts |= {(chain, hop.hop, hop.verdict.value): 1.0 for hop in judgement.hops}
        if judgement.blame is not None:
            blame[(chain, judgement.blame, judgement.verdict.value)] = 1.0
    yield _family(
        GaugeMetricFamily,
        "layerwatch_cold_path_healthy",
        "Canary: 1 when the last fresh artifact came through every hop intact, 0 when not; absent if unknown",
        ["chain"],
        healthy,
    )
    yield _family(
        GaugeMetricFamily,
        "layerwatch_canary_verdict",
        "Canary: 1 for each hop's verdict on the last fresh artifact (hop empty: nothing pulled, and why)",
        ["chain", "hop", "verdict"],
        verdicts,
    )
    yield _family(
        GaugeMetricFamily,
        "layerwatch_canary_blame",
        "Canary: 1 on the hop the last run's (not healthy) verdict is blamed on; absent elsewhere",
        ["chain", "hop", "verdict"],
        blame,
    )
    yield _family(
        GaugeMetricFamily,
        "layerwatch_canary_last_run_timestamp_seconds",
        "Canary: end of the chain's last canary run (Unix time)",
        ["chain"],
        last,
    )


def _family(
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
    name: str,
    documentation: str,
    labels: list[str],
    samples: Mapping[Any, float],
) -> Metric:
    """A gauge or counter family with one sample per label tuple, in a stable order."""
    family = kind(name, documentation, labels=labels)
    for values, value in sorted(samples.items()):
        family.add_metric(list(values), value)
    return family


ChainHops = Mapping[str, tuple[str, ...]]
Row = tuple[str, str | None, float]
"""One per-artifact sample of a target: its hop, its ``verdict`` label (if the family has one), value."""


def _healthy_rows(status: TargetStatus, _: ChainHops) -> Iterator[Row]:
    if status.result is not None:
        for hop in status.result.judgement.hops:
            if hop.verdict.health is not Health.UNKNOWN:
                yield hop.hop, None, 1.0 if hop.verdict.health is Health.HEALTHY else 0.0


def _verdict_rows(status: TargetStatus, chain_hops: ChainHops) -> Iterator[Row]:
    if status.result is not None:
        yield from ((hop.hop, hop.verdict.value, 1.0) for hop in status.result.judgement.hops)
    elif status.pending:  # unknown, not absent: e.g. ChainNotReady stays visible
        yield from ((hop, status.pending_reason, 1.0) for hop in chain_hops.get(status.chain, ()))


def _last_rows(status: TargetStatus, _: ChainHops) -> Iterator[Row]:
    if status.result is not None:
        yield from ((hop.hop, None, status.result.finished) for hop in status.result.judgement.hops)


def _since_rows(status: TargetStatus, _: ChainHops) -> Iterator[Row]:
    if status.result is not None:
        finished = status.result.finished
        for hop in status.result.judgement.hops:
            yield hop.hop, None, status.hop_since.get(hop.hop, finished)


def _blame_rows(status: TargetStatus, _: ChainHops) -> Iterator[Row]:
    if status.result is not None:
        judgement = status.result.judgement
        if judgement.blame is not None:
            yield judgement.blame, judgement.blamed_verdict.value, 1.0


@dataclasses.dataclass(frozen=True)
class _ArtifactFamily:
    """A gauge with a series per target and hop (labels namespace, name, chain, hop [, verdict])."""

    name: str
    documentation: str
    rows: Callable[[TargetStatus, ChainHops], Iterator[Row]]

    def lines(self, statuses: Sequence[TargetStatus], chain_hops: ChainHops) -> Iterator[str]:
        """Prometheus text format, byte for byte what ``prometheus_client`` writes (labels sorted)."""
        yield f"# HELP {self.name} {self.documentation}\n# TYPE {self.name} gauge\n"
        for status in statuses:
            chain = f'{{chain="{_escape(status.chain)}",hop="'
            target = f'",name="{_escape(status.target.name)}",namespace="{_escape(status.target.namespace)}"'
            for hop, verdict, value in self.rows(status, chain_hops):
                extra = "" if verdict is None else f',verdict="{_escape(verdict)}"'
                yield f"{self.name}{chain}{_escape(hop)}{target}{extra}}} {_go_float(value)}\n"


_ARTIFACT_FAMILIES = (
    _ArtifactFamily(
        "layerwatch_artifact_hop_healthy", "1 healthy, 0 unhealthy; absent while unknown", _healthy_rows
    ),
    _ArtifactFamily(
        "layerwatch_artifact_hop_verdict", "1 for the current verdict of an artifact at a hop", _verdict_rows
    ),
    _ArtifactFamily(
        "layerwatch_artifact_hop_last_check_timestamp_seconds",
        "End of the last completed check (Unix time)",
        _last_rows,
    ),
    _ArtifactFamily(
        "layerwatch_artifact_hop_verdict_since_timestamp_seconds",
        "End of the first check that gave the current verdict at this hop (Unix time)",
        _since_rows,
    ),
    _ArtifactFamily(
        "layerwatch_artifact_blame",
        "1 on the hop an artifact's current (not healthy) verdict is blamed on; absent elsewhere",
        _blame_rows,
    ),
)


def _escape(value: str) -> str:
    """A label value as the text format quotes it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Fixed(Collector):
    """Families built beforehand, for ``generate_latest``."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)


def _chunked(lines: Iterable[str]) -> Iterator[bytes]:
    pending: list[str] = []
    size = 0
    for line in lines:
        pending.append(line)
        size += len(line)
        if size >= _CHUNK:
            yield "".join(pending).encode()
            pending, size = [], 0
    if pending:
        yield "".join(pending).encode()
