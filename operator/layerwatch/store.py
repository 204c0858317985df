"""The latest result per target: what metrics, the status page and the API all read.

The scheduler writes, readers take snapshots. Everything runs on one event loop except the
Prometheus exposition, which may read from another thread, hence the lock.
"""

from __future__ import annotations

import dataclasses
import threading
import time

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
    updated: float = dataclasses.field(default_factory=time.time)


class ResultStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._statuses: dict[tuple[str, str], TargetStatus] = {}

    def put(self, status: TargetStatus) -> None:
        with self._lock:
            self._statuses[status.target.key] = status

    def get(self, key: tuple[str, str]) -> TargetStatus | None:
        with self._lock:
            return self._statuses.get(key)

    def remove(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._statuses.pop(key, None)

    def snapshot(self) -> list[TargetStatus]:
        with self._lock:
            return sorted(self._statuses.values(), key=lambda s: (s.chain, s.target.namespace, s.target.name))
