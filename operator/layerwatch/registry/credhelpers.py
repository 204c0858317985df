"""Docker config parity for the CLI: ``credHelpers``, ``credsStore`` and ``identitytoken``.

Docker asks a credential helper when the config names one for the registry (``credHelpers``) or
a store for all of them (``credsStore``): it runs ``docker-credential-<name> get``, writes the
server URL to its stdin and reads ``{"ServerURL", "Username", "Secret"}`` from its stdout; a
``Username`` of ``<token>`` means ``Secret`` is an identity token. An identity token (from a
helper or an ``auths`` entry's ``identitytoken``) is an OAuth2 refresh token: the registry's token
endpoint trades it for an access token with ``POST grant_type=refresh_token``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from layerwatch.chain import ChainError, Credentials
from layerwatch.documents import json_object
from layerwatch.reference import DOCKER_HUB
from layerwatch.registry.auth import Challenge, credentials_from_docker_config

__all__ = ["HELPER_TIMEOUT", "docker_credentials", "refresh_token_form", "run_helper"]

HELPER_TIMEOUT = 30.0
"""Seconds a credential helper may take (some prompt a keychain; none should hang a check)."""
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
        return run_helper(helper, host)
    return credentials_from_docker_config(config, host)


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
