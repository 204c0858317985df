"""Docker config parity for the CLI: ``credHelpers``, ``credsStore`` and ``identitytoken``.

Docker asks a credential helper when the config names one for the registry (``credHelpers``) or
a store for all of them (``credsStore``): it runs ``docker-credential-<name> get``, writes the
server URL to its stdin and reads ``{"ServerURL", "Username", "Secret"}`` from its stdout; a
``Username`` of ``<token>`` means ``Secret`` is an identity token. An identity token (from a
helper or an ``auths`` entry's ``identitytoken``) is an OAuth2 refresh token: the registry's token
endpoint trades it for an access token with ``POST grant_type=refresh_token``.

A helper's answer expires (gcloud's after about an hour, ecr-login's after 12) without saying
when, so a hop's credentials are a `CredentialSource`: when a registry refuses what a helper gave,
the helper is asked once more (`HelperCache.renew`), at most once a minute per helper and registry,
one run shared by every check waiting for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Protocol
from urllib.parse import urlencode

from layerwatch.chain import ChainError, Credentials
from layerwatch.documents import json_object
from layerwatch.observation import Fault, FaultKind
from layerwatch.reference import DOCKER_HUB
from layerwatch.registry.auth import Challenge, credentials_from_docker_config
from layerwatch.registry.errors import RegistryError
from layerwatch.registry.network import clean_text

__all__ = [
    "HELPERS",
    "HELPER_TIMEOUT",
    "MIN_RENEW",
    "CredentialSource",
    "HelperCache",
    "StaticSource",
    "docker_credentials",
    "loop_lock",
    "refresh_token_form",
    "run_helper",
    "source_of",
]

HELPER_TIMEOUT = 30.0
"""Seconds a credential helper may take (some prompt a keychain; none should hang a check)."""
MIN_RENEW = 60.0
"""Seconds before refused credentials are asked for again: a registry that refuses every answer
costs one helper run (or one cloud exchange) a minute per registry, not one per request."""
IDENTITY_TOKEN_USER = "<token>"
CLIENT_ID = "layerwatch"


def _server_url(host: str) -> str:
    """What docker writes to a helper's stdin for a registry: Docker Hub keeps its legacy URL."""
    return "https://index.docker.io/v1/" if host == DOCKER_HUB else host


def run_helper(name: str, host: str, *, timeout: float = HELPER_TIMEOUT) -> Credentials | None:
    """``docker-credential-<name> get`` for ``host``: its credentials, or None when it has none.

    Errors are one line naming the helper; the helper's output is quoted only when it failed
    (a failing helper prints an error message, not a secret).
    """
    program = f"docker-credential-{name}"
    path = shutil.which(program)
    if path is None:
        raise ChainError(f"credential helper {program} (from the docker config) is not on PATH")
    try:
        done = subprocess.run(
            [path, "get"],
            input=_server_url(host),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ChainError(f"{program} get {host}: no answer within {timeout:.0f}s") from None
    except OSError as exc:
        raise ChainError(f"{program} get {host}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        said = (done.stdout.strip() or done.stderr.strip()).splitlines()
        message = said[0][:200] if said else f"exit status {done.returncode}"
        if "credentials not found" in message.lower():
            return None
        raise ChainError(f"{program} get {host}: {message}")
    try:
        answer = json_object(done.stdout)
    except ValueError as exc:
        raise ChainError(f"{program} get {host}: answer is {exc}") from None
    username, secret = answer.get("Username"), answer.get("Secret")
    if not isinstance(username, str) or not isinstance(secret, str):
        raise ChainError(f"{program} get {host}: answer lacks Username and Secret strings")
    if username == IDENTITY_TOKEN_USER:
        return Credentials("", "", identity_token=secret)
    return Credentials(username, secret)


def _helper_for(config: Mapping[str, Any], host: str) -> str | None:
    helpers = config.get("credHelpers")
    if isinstance(helpers, Mapping):
        for key in (host, _server_url(host), f"https://{host}"):
            if isinstance(helpers.get(key), str) and helpers[key]:
                return str(helpers[key])
    store = config.get("credsStore")
    return store if isinstance(store, str) and store else None


def docker_credentials(config: Mapping[str, Any], host: str) -> Credentials | None:
    """Credentials for ``host`` the way docker finds them: helper for the host, the store, ``auths``.

    As in docker, a configured helper or store is authoritative: when it has nothing for the host,
    the ``auths`` entries (which then only mark the registry as logged in) are not used.
    """
    helper = _helper_for(config, host)
    if helper is not None:
        return HELPERS.ask(helper, host)
    return credentials_from_docker_config(config, host)


def loop_lock(locks: dict[tuple[Hashable, int], asyncio.Lock], key: Hashable) -> asyncio.Lock:
    """The lock for ``key`` on the running loop (the CLI and tests run several loops in one process)."""
    return locks.setdefault((key, id(asyncio.get_running_loop())), asyncio.Lock())


class CredentialSource(Protocol):
    """Where a hop's credentials come from, asked at each login; ``renew`` once they are refused."""

    @property
    def generation(self) -> int:
        """Grows whenever the source gets new credentials; read it before using them."""
        ...

    async def get(self) -> Credentials | None: ...

    async def renew(self, seen: int) -> bool:
        """Credentials of generation ``seen`` were refused: True when others are to be had now."""
        ...


@dataclasses.dataclass(frozen=True)
class StaticSource:
    """Credentials from a Secret or a file: the same every time, nothing to renew."""

    credentials: Credentials | None
    generation: int = 0

    async def get(self) -> Credentials | None:
        return self.credentials

    async def renew(self, seen: int) -> bool:
        return False


@dataclasses.dataclass(frozen=True)
class _Answer:
    credentials: Credentials | None
    asked_at: float
    generation: int


def _tagged(answer: Credentials | None, key: tuple[str, str]) -> Credentials | None:
    """A helper's answer, marked with the (helper, host) that can be asked for it again."""
    return dataclasses.replace(answer, helper=key) if answer is not None else None


class HelperCache:
    """The newest answer of each (helper, registry host), shared by every hop that uses it."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        run: Callable[[str, str], Credentials | None] = run_helper,
    ) -> None:
        self._clock = clock
        self._run = run
        self._answers: dict[tuple[str, str], _Answer] = {}
        self._locks: dict[tuple[Hashable, int], asyncio.Lock] = {}

    def ask(self, name: str, host: str) -> Credentials | None:
        """Run the helper now (loading a config) and keep its answer for the hops that use it."""
        asked_at = self._clock()
        answer = _tagged(self._run(name, host), (name, host))
        self._keep((name, host), answer, asked_at)
        return answer

    def _keep(self, key: tuple[str, str], answer: Credentials | None, asked_at: float) -> _Answer:
        """Note when the helper was asked; credentials it had not given before start a new generation.

        No answer (it failed, or has nothing for the host) keeps the previous one.
        """
        before = self._answers.get(key, _Answer(None, asked_at, 0))
        credentials = answer or before.credentials
        generation = before.generation + (credentials != before.credentials)
        kept = self._answers[key] = _Answer(credentials, asked_at, generation)
        return kept

    def generation(self, key: tuple[str, str]) -> int:
        answer = self._answers.get(key)
        return answer.generation if answer is not None else 0

    def current(self, key: tuple[str, str]) -> Credentials | None:
        answer = self._answers.get(key)
        return answer.credentials if answer is not None else None

    async def renew(self, key: tuple[str, str], seen: int) -> bool:
        """Ask the helper again unless another check just did; True when its answer is new.

        A helper that fails is reported as the hop's AuthFailed reason (its own one-line error).
        """
        async with loop_lock(self._locks, key):
            before = self._answers.get(key)
            if before is not None and before.generation != seen:
                return True  # renewed while this check waited for the lock
            if before is not None and self._clock() - before.asked_at < MIN_RENEW:
                return False
            asked_at = self._clock()
            self._keep(key, None, asked_at)  # a run cut short (the check's deadline) counts too
            try:
                answer = _tagged(await asyncio.to_thread(self._run, *key), key)
            except ChainError as exc:
                raise RegistryError(
                    Fault(FaultKind.AUTH_REJECTED, clean_text(str(exc), 300), subject="credential helper")
                ) from None
            return self._keep(key, answer, asked_at).generation != seen


HELPERS = HelperCache()


@dataclasses.dataclass(frozen=True)
class _HelperSource:
    """Credentials a helper gave: its newest answer for the host, renewed when they are refused."""

    initial: Credentials
    key: tuple[str, str]
    cache: HelperCache

    @property
    def generation(self) -> int:
        return self.cache.generation(self.key)

    async def get(self) -> Credentials | None:
        return self.cache.current(self.key) or self.initial

    async def renew(self, seen: int) -> bool:
        return await self.cache.renew(self.key, seen)


def source_of(credentials: Credentials | None) -> CredentialSource:
    """The source of a hop's own credentials: renewable when a helper gave them, else static."""
    if credentials is None or credentials.helper is None:
        return StaticSource(credentials)
    return _HelperSource(credentials, credentials.helper, HELPERS)


def refresh_token_form(challenge: Challenge, scope: str, credentials: Credentials) -> bytes:
    """The body of the OAuth2 refresh-token grant an identity token is traded with."""
    fields = {
        "grant_type": "refresh_token",
        "refresh_token": credentials.identity_token or "",
        "service": challenge.service,
        "scope": scope,
        "client_id": CLIENT_ID,
    }
    return urlencode({key: value for key, value in fields.items() if value}).encode()
