"""Registry authentication: challenges, tokens and where credentials come from.

Registries answer an unauthenticated request with ``401`` and ``WWW-Authenticate``. For ``Basic``
the client resends with credentials; for ``Bearer`` it asks the realm for a token scoped to the
repository and resends with it. Tokens are cached per realm, service and scope until they expire,
so a check costs one token request per repository per token lifetime, not one per request.
Challenge headers come from the network and are parsed defensively: a hostile header is an
``AuthFailed`` verdict, never an exception escaping the check.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from layerwatch.chain import ChainError, Credentials
from layerwatch.documents import json_object
from layerwatch.reference import DOCKER_HUB

__all__ = [
    "Challenge",
    "ChallengeError",
    "TokenCache",
    "credentials_from_docker_config",
    "default_docker_config_path",
    "parse_challenge",
]

MAX_CHALLENGE_LENGTH = 8192
"""Longer ``WWW-Authenticate`` headers are refused instead of parsed."""

MAX_TOKEN_LIFETIME = 86400.0
"""A token is trusted for at most a day, whatever ``expires_in`` claims."""

_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)')


_BEARER_START = re.compile(r"(?:^|,)\s*bearer(?:\s+|$)", re.IGNORECASE)
_BASIC_START = re.compile(r"(?:^|,)\s*basic(?:\s|,|$)", re.IGNORECASE)
_NEXT_SCHEME = re.compile(r"[\s,]*[A-Za-z][A-Za-z0-9_-]*\s+[A-Za-z][A-Za-z0-9_-]*\s*=")


class ChallengeError(ValueError):
    """The ``WWW-Authenticate`` header cannot be answered."""


@dataclasses.dataclass(frozen=True)
class Challenge:
    """One parsed challenge: ``Basic`` or ``Bearer`` with realm, service and scope."""

    scheme: str
    realm: str = ""
    service: str = ""
    scope: str = ""


def parse_challenge(header: str) -> Challenge:
    """Parse a ``WWW-Authenticate`` header; Bearer wins when it offers several challenges.

    A header may list several challenges (``Bearer realm=..., Basic realm=...``), and proxies
    join several header lines with commas; only Basic and Bearer are answerable.
    """
    if len(header) > MAX_CHALLENGE_LENGTH:
        raise ChallengeError(f"WWW-Authenticate header of {len(header)} characters refused")
    bearer = _BEARER_START.search(header)
    if bearer is None:
        scheme = header.strip().partition(" ")[0].lower()
        if scheme == "basic" or _BASIC_START.search(header):
            return Challenge(scheme="basic")
        raise ChallengeError(f"unsupported auth scheme {scheme[:20]!r}")
    params: dict[str, str] = {}
    rest = header[bearer.end() :]
    pos = 0
    while True:
        while pos < len(rest) and rest[pos] in " \t,":
            pos += 1  # empty list elements are allowed (RFC 9110 #rule)
        if pos >= len(rest):
            break
        match = _PARAM.match(rest, pos)
        if not match or match.end() == pos:
            if _NEXT_SCHEME.match(rest, pos):
                break  # the next challenge starts here
            raise ChallengeError("malformed Bearer challenge")
        value = match.group(2) if match.group(2) is not None else match.group(3)
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = match.end()
    realm = params.get("realm", "")
    if not realm.startswith(("https://", "http://")):
        raise ChallengeError("Bearer challenge without an http(s) realm")
    try:
        parts = urlsplit(realm)
        _ = parts.port  # raises for a port out of range
    except ValueError:
        raise ChallengeError("Bearer realm is not a usable URL") from None
    if not parts.hostname:
        raise ChallengeError("Bearer realm is not a usable URL")
    return Challenge(
        scheme="bearer", realm=realm, service=params.get("service", ""), scope=params.get("scope", "")
    )


@dataclasses.dataclass
class _Token:
    value: str = dataclasses.field(repr=False)
    expires: float


class TokenCache:
    """Bearer tokens by (realm, service, scope), dropped a little before they expire."""

    MARGIN = 10.0
    """Seconds before expiry at which a token is no longer handed out."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._clock = clock

    def get(self, key: tuple[str, str, str]) -> str | None:
        token = self._tokens.get(key)
        if token is None or token.expires - self.MARGIN <= self._clock():
            self._tokens.pop(key, None)
            return None
        return token.value

    def put(self, key: tuple[str, str, str], value: str, expires_in: float) -> None:
        self._tokens[key] = _Token(value, self._clock() + max(expires_in, self.MARGIN + 1))

    def forget(self, key: tuple[str, str, str]) -> None:
        self._tokens.pop(key, None)


def token_from_response(body: bytes) -> tuple[str, float]:
    """Token and lifetime from a token endpoint's JSON (``token`` or ``access_token``; 60 s default)."""
    try:
        document = json_object(body)
    except ValueError as exc:
        raise ChallengeError(f"token endpoint answer is {exc}") from None
    token = document.get("token") or document.get("access_token")
    if not isinstance(token, str) or not token:
        raise ChallengeError("token endpoint answered without a token")
    expires_in = document.get("expires_in", 60)
    lifetime = 60.0
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        try:
            lifetime = float(expires_in)
        except OverflowError:  # an integer too large for a float
            lifetime = 60.0
    if not math.isfinite(lifetime) or lifetime <= 0:
        lifetime = 60.0  # NaN would never expire from the cache; nonsense gets the default
    return token, min(lifetime, MAX_TOKEN_LIFETIME)


def basic_header(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def default_docker_config_path() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` (docker's own order)."""
    directory = os.environ.get("DOCKER_CONFIG")
    return Path(directory) / "config.json" if directory else Path.home() / ".docker" / "config.json"


def _host_keys(host: str) -> list[str]:
    keys = [host, f"https://{host}", f"http://{host}"]
    if host == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "docker.io", "registry-1.docker.io"]
    return keys


def _entry_credentials(entry: Mapping[str, Any], where: str) -> Credentials | None:
    """Credentials from one ``auths`` entry, checked as docker checks them when it loads a config."""
    for field in ("identitytoken", "auth", "username", "password"):
        if field in entry and not isinstance(entry[field], str | None):
            raise ChainError(f"{where}: {field} must be a string")
    if entry.get("identitytoken"):
        return Credentials(str(entry.get("username") or ""), "", identity_token=entry["identitytoken"])
    if entry.get("auth"):
        try:
            username, colon, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
            colon = ""
        if not colon:
            raise ChainError(f"{where}: auth is not the base64 of UTF-8 user:password")
        return Credentials(username, password)
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credentials(entry["username"], entry["password"])
    return None


def credentials_from_docker_config(
    config: Mapping[str, Any], host: str, where: str = "docker config"
) -> Credentials | None:
    """Credentials for ``host`` from a parsed docker ``config.json`` (``auths`` entries only).

    Entries hold ``auth`` (base64 ``user:password``), ``username``/``password`` or an
    ``identitytoken`` (traded at the token endpoint); credential helpers are `credhelpers`' job.
    An entry for ``host`` that is not usable is a one-line ``ChainError`` naming ``where`` and the
    entry, never its data: it is not skipped, which would check anonymously what Flux cannot pull.
    """
    auths = config.get("auths")
    if not isinstance(auths, Mapping):
        return None
    normalised = {
        str(k).rstrip("/").removeprefix("https://").removeprefix("http://"): (k, v) for k, v in auths.items()
    }
    for key in _host_keys(host):
        found = (
            (key, auths[key])
            if key in auths
            else normalised.get(key.rstrip("/").removeprefix("https://").removeprefix("http://"))
        )
        if found is None:
            continue
        name, entry = found
        entry_where = f"{where} auths[{str(name)[:100]!r}]"
        if not isinstance(entry, Mapping):
            raise ChainError(f"{entry_where}: must be an object with auth or username and password")
        credentials = _entry_credentials(entry, entry_where)
        if credentials is not None:
            return credentials
    return None
