"""The registry client: auth, retries, limits and streaming verification, per registry endpoint."""

from layerwatch.registry.client import FetchedManifest, RegistryClient, endpoint_of
from layerwatch.registry.errors import RegistryError, RegistryNotFound
from layerwatch.registry.network import Endpoint, EndpointState, RetryBudget

__all__ = [
    "Endpoint",
    "EndpointState",
    "FetchedManifest",
    "RegistryClient",
    "RegistryError",
    "RegistryNotFound",
    "RetryBudget",
    "endpoint_of",
]
