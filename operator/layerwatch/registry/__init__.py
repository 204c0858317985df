"""The registry client: one async client per hop (auth, retries, limits, streaming verification)."""

from layerwatch.registry.client import BlobResult, ClientSettings, FetchedManifest, RegistryClient
from layerwatch.registry.errors import (
    RegistryAuthFailed,
    RegistryError,
    RegistryNotFound,
    RegistryRateLimited,
    RegistryUnavailable,
)

__all__ = [
    "BlobResult",
    "ClientSettings",
    "FetchedManifest",
    "RegistryAuthFailed",
    "RegistryClient",
    "RegistryError",
    "RegistryNotFound",
    "RegistryRateLimited",
    "RegistryUnavailable",
]
