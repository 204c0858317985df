"""HTTP proxies for hops: the hop's own (``proxySecretRef``, a chain's ``proxy``) or the environment's.

Flux reaches a registry through ``spec.proxySecretRef`` when it is set and through
``HTTPS_PROXY``/``HTTP_PROXY`` (minus ``NO_PROXY``) otherwise; layerwatch picks the same way, so a
hop behind a corporate proxy is checked as Flux pulls from it. Pure functions: the transport gets
an ``httpx.Proxy`` and does the CONNECT (https hops) or absolute-URI forwarding (http hops).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from layerwatch.chain import ChainError, Hop, Proxy

__all__ = [
    "bypassed",
    "environment_proxy",
    "hop_proxy",
    "parse_proxy",
    "proxy_from_document",
    "transport_proxy",
]


def _masked(address: str) -> str:
    """The address with any password replaced, for error messages."""
    parts = urlsplit(address)
    if parts.password is None:
        return address
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def parse_proxy(address: Any, where: str, username: Any = None, password: Any = None) -> Proxy:
    """A proxy from its address (``http://host:port``) and optional credentials, checked.

    Credentials belong in their own fields (or Secret keys), never in the address: a password in a
    URL ends up in logs, so it is refused, and the message masks it.
    """
    if not isinstance(address, str) or not address.strip():
        raise ChainError(f"{where}: proxy address must be a URL such as http://proxy.example.com:3128")
    address = address.strip()
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        raise ChainError(f"{where}: proxy address {_masked(address)!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ChainError(f"{where}: proxy address {_masked(address)!r} must be http://host[:port]")
    if parts.username is not None or parts.password is not None:
        raise ChainError(
            f"{where}: proxy address {_masked(address)!r} must not carry credentials; "
            "use username and password"
        )
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ChainError(f"{where}: proxy address {address!r} must not have a path, query or fragment")
    for field, value in (("username", username), ("password", password)):
        if value is not None and not isinstance(value, str):
            raise ChainError(f"{where}: proxy {field} must be a string")
    if (username is None) != (password is None):
        raise ChainError(f"{where}: proxy username and password go together")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Proxy(f"{parts.scheme}://{host}" + (f":{port}" if port else ""), username or None, password)


def proxy_from_document(raw: Any, where: str) -> Proxy | None:
    """A chain file hop's ``proxy: {address, username, password}`` (None when absent)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ChainError(f"{where}: proxy must be a mapping with an address")
    return parse_proxy(raw.get("address"), where, raw.get("username"), raw.get("password"))


def bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` exempts a host: ``*``, an IP or CIDR block, or a domain (with its
    subdomains; a leading dot means subdomains only), each optionally with ``:port``."""
    host = host.lower().strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if entry == "*":
            return True
        if not entry:
            continue
        try:
            network = ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            network = None
        if network is not None:
            if address is not None and address in network:
                return True
            continue
        name, colon, entry_port = entry.rpartition(":")
        if not colon or "]" in entry_port or not entry_port.isdigit():
            name, entry_port = entry, ""
        if entry_port and str(port) != entry_port:
            continue
        name = name.strip("[]")
        if name.startswith("."):
            if host.endswith(name):
                return True
        elif host == name or host.endswith("." + name):
            return True
    return False


def environment_proxy(hop: Hop, environ: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy the environment names for this hop: ``HTTPS_PROXY`` or ``HTTP_PROXY`` by the hop's
    scheme (lower-case names win, as curl and Go do), unless ``NO_PROXY`` lists its host.

    An address in the environment may carry ``user:password@``; it is split into the fields.
    Unlike Go programs, loopback hosts are proxied too unless ``NO_PROXY`` lists them (as curl does).
    """
    env = os.environ if environ is None else environ

    def variable(name: str) -> str:
        return env.get(name.lower()) or env.get(name.upper()) or ""

    address = variable(f"{hop.scheme}_proxy")
    if not address:
        return None
    target = urlsplit(f"//{hop.api_host}")
    if bypassed(
        target.hostname or "", target.port or (443 if hop.scheme == "https" else 80), variable("no_proxy")
    ):
        return None
    where = f"{hop.scheme.upper()}_PROXY"
    try:
        parts = urlsplit(address if "://" in address else f"http://{address}")
        hostname, port = parts.hostname or "", parts.port
    except ValueError:
        raise ChainError(f"{where} {_masked(address)!r} is not a valid URL") from None
    plain = (
        f"{parts.scheme}://"
        + (f"[{hostname}]" if ":" in hostname else hostname)
        + (f":{port}" if port else "")
    )
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if username is not None and password is None:
        password = ""
    return parse_proxy(plain, where, username, password)


def hop_proxy(hop: Hop, environ: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy a hop is reached through: its own, else the environment's (None: direct)."""
    return hop.proxy or environment_proxy(hop, environ)


def transport_proxy(proxy: Proxy | None) -> httpx.Proxy | None:
    """What the HTTP transport is given for a proxy."""
    if proxy is None:
        return None
    auth = (proxy.username, proxy.password or "") if proxy.username is not None else None
    return httpx.Proxy(proxy.address, auth=auth)
