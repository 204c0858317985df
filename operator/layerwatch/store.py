"""The latest result per target: what metrics, the status page and the API all read.

The scheduler writes, readers take snapshots. Everything runs on one event loop except the
Prometheus exposition, which may read from another thread, hence the lock.

The store also remembers since when each verdict holds: a new result whose verdict (per hop, and
the artifact's verdict with its blame) is the one the previous result had keeps the previous
start time, so "LayerMissing since 09:12" survives every re-check until the verdict changes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping

from layerwatch.canary import CanaryResult
from layerwatch.chain import Target
from layerwatch.verdict import CheckResult

__all__ = ["ResultStore", "TargetStatus"]


@dataclasses.dataclass(frozen=True)
class TargetStatus:
    """A watched target, its chain, and its last completed check (None before the first one)."""

    target: Target
    chain: str
    result: CheckResult | None = None
    pending: str | None = None
    """Why the target is not checked (yet), e.g. a semver ref Flux has not resolved."""
    pending_reason: str = "Pending"
    """What the pending state is called where a verdict would be (condition reason, metrics)."""
    updated: float = dataclasses.field(default_factory=time.time)
    since: float | None = None
    """Unix time of the first check that gave the current verdict and blame (set by the store)."""
    hop_since: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Per hop: Unix time of the first check that gave that hop its current verdict."""


def _with_since(status: TargetStatus, previous: TargetStatus | None) -> TargetStatus:
    result = status.result
    if result is None:
        return status
    before = previous.result if previous is not None else None
    judgement = result.judgement
    same = (
        before is not None
        and previous is not None
        and previous.since is not None
        and (before.judgement.verdict, before.judgement.blame) == (judgement.verdict, judgement.blame)
    )
    since = previous.since if same and previous is not None else result.finished
    old = {h.hop: h.verdict for h in before.judgement.hops} if before is not None else {}
    old_since = previous.hop_since if previous is not None else {}
    hop_since = {
        h.hop: old_since[h.hop] if old.get(h.hop) == h.verdict and h.hop in old_since else result.finished
        for h in judgement.hops
    }
    return dataclasses.replace(status, since=since, hop_since=hop_since)


class ResultStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._statuses: dict[tuple[str, str], TargetStatus] = {}
        self._canaries: dict[str, CanaryResult] = {}

    def put_canary(self, result: CanaryResult) -> None:
        """Keep a chain's latest canary run (the chain's, not any target's)."""
        with self._lock:
            self._canaries[result.chain] = result

    def remove_canary(self, chain: str) -> None:
        with self._lock:
            self._canaries.pop(chain, None)

    def canaries(self) -> dict[str, CanaryResult]:
        with self._lock:
            return dict(self._canaries)

    def put(self, status: TargetStatus) -> None:
        """Keep ``status`` as the target's latest; a result carries forward unchanged verdicts' start."""
        with self._lock:
            key = status.target.key
            self._statuses[key] = _with_since(status, self._statuses.get(key))

    def get(self, key: tuple[str, str]) -> TargetStatus | None:
        with self._lock:
            return self._statuses.get(key)

    def remove(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._statuses.pop(key, None)

    def snapshot(self) -> list[TargetStatus]:
        with self._lock:
            return sorted(self._statuses.values(), key=lambda s: (s.chain, s.target.namespace, s.target.name))
