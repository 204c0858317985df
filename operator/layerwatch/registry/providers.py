"""Cloud registry credentials from workload identity: ``provider: aws | azure | gcp`` on a hop.

What Flux's ``spec.provider`` does, done the same way from layerwatch's own pod identity:

- ``aws``: botocore's credential chain (IRSA's web identity token file through STS
  ``AssumeRoleWithWebIdentity``, EKS Pod Identity, instance profiles), then ECR
  ``GetAuthorizationToken``; user ``AWS``. botocore is synchronous, so it runs in a worker thread.
- ``azure``: the federated token file (``AZURE_FEDERATED_TOKEN_FILE``) as a client assertion at
  Microsoft Entra ID's token endpoint, then the registry's ``/oauth2/exchange`` for an ACR
  refresh token; user ``00000000-0000-0000-0000-000000000000``.
- ``gcp``: the metadata server's access token for the pod's service account; user
  ``oauth2accesstoken``.

A provider logs in only to its own cloud's registries, matched as Flux 2.6+ matches them
(`layerwatch.chain.provider_host`): planning refuses any other host, and the cache refuses it
again before asking the cloud, so no token is ever requested for (or sent to) another host.

Credentials are cached per (provider, registry host) until a little before they expire, and
fetched again when a registry refuses them (at most once a minute, `renew`). Every cloud endpoint
can be moved (sovereign clouds, tests): ``AWS_ENDPOINT_URL[_STS|_ECR]``, ``AZURE_AUTHORITY_HOST``,
``LAYERWATCH_AZURE_SCOPE``, ``GCE_METADATA_HOST``; the registry host cannot. Failures are
AuthFailed faults naming the provider and the step, never a token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import math
import os
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import httpx

from layerwatch.chain import ChainError, Credentials, provider_host
from layerwatch.documents import json_object
from layerwatch.observation import Fault, FaultKind
from layerwatch.registry.credhelpers import MIN_RENEW, CredentialSource, loop_lock, source_of
from layerwatch.registry.errors import RegistryError

__all__ = ["ACR_USERNAME", "GCP_USERNAME", "ProviderCache", "azure_scope", "credential_source"]

ACR_USERNAME = "00000000-0000-0000-0000-000000000000"
GCP_USERNAME = "oauth2accesstoken"
AZURE_DEFAULT_AUTHORITY = "https://login.microsoftonline.com/"
AZURE_SCOPES = {
    ".azurecr.cn": "https://management.chinacloudapi.cn/.default",
    ".azurecr.us": "https://management.usgovcloudapi.net/.default",
}
"""The Entra ID scope by the registry's cloud, as Flux picks it (Azure China, US Government)."""
AZURE_DEFAULT_SCOPE = "https://management.azure.com/.default"
GCP_DEFAULT_METADATA_HOST = "metadata.google.internal"
REQUEST_TIMEOUT = 30.0
_MAX_ANSWER = 256 * 1024

Transport = Callable[[], Awaitable[httpx.AsyncBaseTransport]]
"""The hop endpoint's transport, built on first use."""


@dataclasses.dataclass(frozen=True)
class _Cached:
    credentials: Credentials
    refresh_at: float
    fetched_at: float


def _refresh_at(now: float, expires_at: float | None) -> float:
    """When to fetch again: 5 minutes (at most half the lifetime) before expiry; now if unknown."""
    if expires_at is None or not math.isfinite(expires_at) or expires_at <= now:
        return now
    lifetime = expires_at - now
    return expires_at - min(300.0, lifetime / 2)


class ProviderCache:
    """Cloud credentials by (provider, host), each kept until shortly before it expires."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._entries: dict[tuple[str, str], _Cached] = {}
        self._generations: dict[tuple[str, str], int] = {}
        self._locks: dict[tuple[Hashable, int], asyncio.Lock] = {}
        self.fetches = 0
        """How many times a cloud was asked (the rest were answered from the cache)."""

    async def get(
        self, provider: str, base_url: str, transport: Transport, environ: Mapping[str, str] | None = None
    ) -> Credentials:
        """The cached credentials, or the cloud's new ones; never asks for a host not the cloud's.

        ``transport`` is the hop's own way to the registry, for what is asked there (ACR's exchange).
        """
        registry = _Registry(base_url, transport)
        try:
            provider_host(provider, registry.host)
        except ChainError as exc:
            raise _failed(
                provider, "configuration", f"{exc}; no token requested", unanswerable=True
            ) from None
        key = (provider, base_url)
        async with loop_lock(self._locks, key):
            cached = self._entries.get(key)
            if cached is not None and cached.refresh_at > self._clock():
                return cached.credentials
            env = os.environ if environ is None else environ
            credentials, expires_at = await _FETCHERS[provider](registry, env)
            self.fetches += 1
            self._generations[key] = self.generation(provider, base_url) + 1
            now = self._clock()
            self._entries[key] = _Cached(credentials, _refresh_at(now, expires_at), now)
            return credentials

    def generation(self, provider: str, base_url: str) -> int:
        """How many times credentials for the registry were fetched."""
        return self._generations.get((provider, base_url), 0)

    async def renew(self, provider: str, base_url: str, seen: int) -> bool:
        """Credentials of generation ``seen`` were refused: fetch anew at the next `get`, unless
        they are under a minute old (then the cloud would only repeat them) or already replaced."""
        key = (provider, base_url)
        async with loop_lock(self._locks, key):
            if self.generation(provider, base_url) != seen:
                return True
            cached = self._entries.get(key)
            now = self._clock()
            if cached is None or now - cached.fetched_at < MIN_RENEW:
                return False
            self._entries[key] = dataclasses.replace(cached, refresh_at=now)
            return True


_CACHE = ProviderCache()


@dataclasses.dataclass(frozen=True)
class _ProviderSource:
    """A hop's cloud credentials: from the cache, renewed when a registry refuses them."""

    provider: str
    base_url: str
    transport: Transport
    cache: ProviderCache

    @property
    def generation(self) -> int:
        return self.cache.generation(self.provider, self.base_url)

    async def get(self) -> Credentials | None:
        return await self.cache.get(self.provider, self.base_url, self.transport)

    async def renew(self, seen: int) -> bool:
        return await self.cache.renew(self.provider, self.base_url, seen)


def credential_source(
    provider: str | None,
    base_url: str,
    static: Credentials | None,
    transport: Transport,
    cache: ProviderCache | None = None,
) -> CredentialSource:
    """Where a hop logs in from: the cloud's credentials (cached) or its own (a helper's renewable)."""
    if provider is None:
        return source_of(static)
    return _ProviderSource(provider, base_url, transport, cache or _CACHE)


@dataclasses.dataclass(frozen=True)
class _Registry:
    """The registry a cloud token is for: ``scheme://host[:port]``, and the hop's way there."""

    base_url: str
    transport: Transport

    @property
    def host(self) -> str:
        return self.base_url.partition("://")[2]


def _failed(provider: str, step: str, detail: str, *, unanswerable: bool = False) -> RegistryError:
    """AuthFailed, naming provider and step; ``detail`` is the cloud's error, never a token.

    ``unanswerable``: layerwatch would not ask (a configuration error), rather than the cloud refused.
    """
    kind = FaultKind.AUTH_UNANSWERABLE if unanswerable else FaultKind.AUTH_REJECTED
    return RegistryError(Fault(kind, f"{step}: {detail[:300]}", subject=f"{provider} provider"))


# -- aws ---------------------------------------------------------------------------------------------


def _aws_token(host: str) -> tuple[Credentials, float | None]:
    """ECR GetAuthorizationToken with botocore's default credential chain (blocking: a thread)."""
    import botocore.exceptions  # type: ignore[import-untyped]
    import botocore.session  # type: ignore[import-untyped]

    # The cache checked the host: ECR's region and account come from it, Public ECR's are fixed.
    account, region = provider_host("aws", host).group("account", "region")
    public = account is None
    try:
        session = botocore.session.get_session()
        client = session.create_client("ecr-public" if public else "ecr", region_name=region or "us-east-1")
        if public:
            data = client.get_authorization_token()["authorizationData"]
        else:
            data = client.get_authorization_token(registryIds=[account])["authorizationData"][0]
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        raise _failed(
            "aws", exc.operation_name, f"{error.get('Code', 'error')}: {error.get('Message', '')}"
        ) from None
    except botocore.exceptions.NoCredentialsError:
        raise _failed(
            "aws", "credentials", "no AWS identity (no web identity token file, pod identity or profile)"
        ) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise _failed("aws", "GetAuthorizationToken", str(exc)) from None
    try:
        username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    except (KeyError, ValueError, UnicodeDecodeError):
        raise _failed("aws", "GetAuthorizationToken", "answer without a usable authorizationToken") from None
    expires = data.get("expiresAt")
    return Credentials(username, password), expires.timestamp() if expires is not None else None


async def _aws(registry: _Registry, _env: Mapping[str, str]) -> tuple[Credentials, float | None]:
    return await asyncio.to_thread(_aws_token, registry.host)


# -- azure and gcp: plain HTTPS exchanges ------------------------------------------------------------


async def _json(
    client: httpx.AsyncClient, provider: str, step: str, method: str, url: str, **kwargs: Any
) -> Mapping[str, Any]:
    """One exchange with a cloud endpoint; its OAuth2 ``error`` is quoted, its tokens never."""
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise _failed(provider, step, f"{type(exc).__name__} {str(exc)[:120]}") from None
    try:
        document = json_object(response.content[:_MAX_ANSWER])
    except ValueError:
        document = {}
    if response.status_code != 200:
        error = document.get("error")
        if isinstance(error, Mapping):  # Google-style nested errors
            error = error.get("status") or error.get("message")
        description = document.get("error_description")
        first_line = description.splitlines()[0] if isinstance(description, str) and description else ""
        raise _failed(provider, step, f"HTTP {response.status_code} {error or ''} {first_line}".strip())
    return document


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying it (only to know when to refresh)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _lifetime(document: Mapping[str, Any]) -> float | None:
    value = document.get("expires_in")
    try:
        return time.time() + float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def azure_scope(host: str) -> str:
    """The Entra ID scope whose token an ACR host exchanges: its cloud's resource manager."""
    return next(
        (scope for suffix, scope in AZURE_SCOPES.items() if host.endswith(suffix)), AZURE_DEFAULT_SCOPE
    )


async def _azure(registry: _Registry, env: Mapping[str, str]) -> tuple[Credentials, float | None]:
    missing = [
        k for k in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE") if not env.get(k)
    ]
    if missing:
        raise _failed("azure", "workload identity", f"{', '.join(missing)} not set")
    tenant = env["AZURE_TENANT_ID"]
    try:
        assertion = (await asyncio.to_thread(Path(env["AZURE_FEDERATED_TOKEN_FILE"]).read_text)).strip()
    except OSError as exc:
        raise _failed("azure", "federated token file", exc.strerror or str(exc)) from None
    authority = (env.get("AZURE_AUTHORITY_HOST") or AZURE_DEFAULT_AUTHORITY).rstrip("/")
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, trust_env=True) as client:
        entra = await _json(
            client,
            "azure",
            "Entra ID token",
            "POST",
            f"{authority}/{tenant}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": env["AZURE_CLIENT_ID"],
                "scope": env.get("LAYERWATCH_AZURE_SCOPE") or azure_scope(registry.host),
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            },
        )
    access = entra.get("access_token")
    if not isinstance(access, str) or not access:
        raise _failed("azure", "Entra ID token", "answer without an access_token")
    # The exchange is the registry's own endpoint: reached as the hop is (its proxy, CA, client
    # certificate). The transport belongs to the hop's endpoint, so this client is never closed.
    at_registry = httpx.AsyncClient(transport=await registry.transport(), trust_env=False)
    exchange = await _json(
        at_registry,
        "azure",
        "ACR /oauth2/exchange",
        "POST",
        f"{registry.base_url}/oauth2/exchange",
        timeout=REQUEST_TIMEOUT,
        data={
            "grant_type": "access_token",
            "service": registry.host,
            "tenant": tenant,
            "access_token": access,
        },
    )
    refresh = exchange.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        raise _failed("azure", "ACR /oauth2/exchange", "answer without a refresh_token")
    return Credentials(ACR_USERNAME, refresh), _jwt_expiry(refresh) or _lifetime(entra)


async def _gcp(_registry: _Registry, env: Mapping[str, str]) -> tuple[Credentials, float | None]:
    host = env.get("GCE_METADATA_HOST") or GCP_DEFAULT_METADATA_HOST
    url = f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
    # The metadata server is link-local: never through a proxy.
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, trust_env=False) as client:
        answer = await _json(
            client, "gcp", "metadata server token", "GET", url, headers={"Metadata-Flavor": "Google"}
        )
    token = answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise _failed("gcp", "metadata server token", "answer without an access_token")
    return Credentials(GCP_USERNAME, token), _lifetime(answer)


_FETCHERS: dict[
    str, Callable[[_Registry, Mapping[str, str]], Awaitable[tuple[Credentials, float | None]]]
] = {
    "aws": _aws,
    "azure": _azure,
    "gcp": _gcp,
}
