"""The engine's knobs, in one place, shared by ``layerwatch check``, ``serve`` and ``operator``.

Every bound that keeps a check finite and fair lives here: request and body deadlines, the check
deadline, concurrency per registry endpoint, retries and their time budget. Each field is a flag
(``--min-blob-rate``) and an environment variable (``LAYERWATCH_MIN_BLOB_RATE``); a flag wins.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Literal

__all__ = ["EngineSettings", "SettingsError", "TransportKind"]

TransportKind = Literal["aiohttp", "httpx"]


class SettingsError(ValueError):
    """A flag or environment variable holds a value the engine cannot run with."""


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """How registries are talked to. Times are seconds, rates bytes per second."""

    timeout: float = 30.0
    """Per request: connecting, and from sending it to its last response header (a registry that
    trickles headers or never answers is cut off here)."""
    min_blob_rate: float = 65536.0
    """A body slower than this is *stalled* (unknown, never corrupt): a blob of size S gets
    ``timeout + S / min_blob_rate`` seconds. 64 KiB/s lets a 1 GiB layer take 4.5 hours."""
    check_deadline: float = 900.0
    """One hop's part of a check, not counting the time it waits for the hops in front of it (edge
    first, `check.EdgeFirst`); those waits end by this long after the check began, so a whole check
    takes at most twice this."""
    parallel_checks: int = 8
    """Checks in flight at once per chain; a chain whose hop hangs cannot take another's slots."""
    endpoint_concurrency: int = 4
    """Requests in flight at once to one registry endpoint, across every chain and target."""
    retries: int = 2
    """Extra attempts of one request after a network error, a 5xx or a 429."""
    retry_budget: float = 30.0
    """Seconds one hop check may spend waiting on backoffs and ``Retry-After`` in total."""
    backoff: float = 0.25
    """First retry delay; doubles per attempt, with full jitter."""
    transport: TransportKind = "aiohttp"
    """httpx over aiohttp costs about half the client CPU of httpx's own transport."""

    def __post_init__(self) -> None:
        for name in ("timeout", "check_deadline", "min_blob_rate"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise SettingsError(f"{_flag(name)} must be a positive number, not {value!r}")
        for name in ("retry_budget", "backoff"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise SettingsError(f"{_flag(name)} must be zero or a positive number, not {value!r}")
        for name in ("parallel_checks", "endpoint_concurrency"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{_flag(name)} must be at least 1")
        if self.retries < 0:
            raise SettingsError("--retries must be zero or more")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add one flag per tunable field; unset flags fall back to the environment, then defaults."""
        group = parser.add_argument_group("engine limits (also LAYERWATCH_<NAME> environment variables)")
        for field in dataclasses.fields(EngineSettings):
            if field.name in _HELP:
                group.add_argument(
                    _flag(field.name),
                    dest=f"engine_{field.name}",
                    metavar=_METAVAR.get(field.name, "SECONDS"),
                    default=None,
                    help=f"{_HELP[field.name]} (default {field.default})",
                )

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> EngineSettings:
        environ = os.environ if environ is None else environ
        values: dict[str, float | int] = {}
        for field in dataclasses.fields(cls):
            if field.name not in _HELP:
                continue
            raw = getattr(args, f"engine_{field.name}", None)
            source = _flag(field.name)
            if raw is None:
                source = f"LAYERWATCH_{field.name.upper()}"
                raw = environ.get(source)
            if raw is None:
                continue
            number: float | int
            whole = field.type in (int, "int")
            try:
                number = int(raw) if whole else float(raw)
            except ValueError:  # also an integer of more than 4300 digits
                kind = "a whole number" if whole else "a number"
                raise SettingsError(f"{source} must be {kind}, not {str(raw)[:40]!r}") from None
            values[field.name] = number
        return cls(**values)  # type: ignore[arg-type]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_HELP = {
    "timeout": "per request: connect, and send to last response header",
    "min_blob_rate": "bytes per second below which a body counts as stalled",
    "check_deadline": "seconds each hop's part of a check may take, waiting for outer hops aside",
    "parallel_checks": "checks in flight at once per chain",
    "endpoint_concurrency": "requests in flight at once per registry endpoint",
    "retries": "extra attempts after a network error, 5xx or 429",
    "retry_budget": "seconds a hop check may spend waiting to retry",
}
_METAVAR = {
    "min_blob_rate": "BYTES_PER_S",
    "parallel_checks": "N",
    "endpoint_concurrency": "N",
    "retries": "N",
}
