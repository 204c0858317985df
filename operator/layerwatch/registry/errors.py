"""What can go wrong talking to a registry, split by what it means for a verdict.

``RegistryUnavailable``, ``RegistryAuthFailed`` and ``RegistryRateLimited`` say "could not check"
(unknown verdicts); ``RegistryNotFound`` is a real answer (the hop does not have it). Messages are
one line, carry the HTTP status or the network error, and never carry credentials or tokens.
"""

from __future__ import annotations

__all__ = [
    "RegistryAuthFailed",
    "RegistryError",
    "RegistryNotFound",
    "RegistryRateLimited",
    "RegistryUnavailable",
]


class RegistryError(Exception):
    """Base of every registry failure; ``status`` is the last HTTP status seen, if any."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RegistryUnavailable(RegistryError):
    """Connection refused or reset, TLS failure, timeout, or 5xx after retries."""


class RegistryAuthFailed(RegistryError):
    """401/403 after the auth flow, or a challenge that cannot be answered."""


class RegistryRateLimited(RegistryError):
    """429 that outlasted the Retry-After budget of the check."""


class RegistryNotFound(RegistryError):
    """404: the hop does not know this manifest or blob."""
