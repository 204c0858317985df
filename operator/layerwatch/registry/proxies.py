"""HTTP proxies for hops: the hop's own (``proxySecretRef``, a chain's ``proxy``) or the environment's.

Flux reaches a registry through ``spec.proxySecretRef`` when it is set and through
``HTTPS_PROXY``/``HTTP_PROXY`` (minus ``NO_PROXY``) otherwise; layerwatch picks the same way, so a
hop behind a corporate proxy is checked as Flux pulls from it. Pure functions: the transport gets
an ``httpx.Proxy`` and does the CONNECT (https hops) or absolute-URI forwarding (http hops).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from layerwatch.chain import ChainError, Hop, Proxy

__all__ = [
    "bypassed",
    "check_environment_proxies",
    "environment_proxy",
    "hop_proxy",
    "parse_proxy",
    "proxy_from_document",
    "transport_proxy",
]


MAX_PROXY_ADDRESS = 2048
"""A proxy address longer than this many characters is refused (a URL, not a document)."""

_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_PROXY_HOST = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?\Z")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _shown(address: str) -> str:
    """The address as messages show it: everything before the last ``@`` masked, quoted, bounded.

    Pure string work, so it cannot fail on the very addresses a message is about; masking up to
    the last ``@`` also hides a password with a ``/`` or ``?`` in it.
    """
    scheme = _SCHEME.match(address)
    prefix = scheme.group() if scheme else ""
    _, at, host = address.rpartition("@")
    if at:
        address = f"{prefix}***@{host}"  # a user name alone may be the token
    shown = repr(address)
    return shown if len(shown) <= 120 else shown[:100] + "...'"


def _host_and_port(netloc: str) -> tuple[str, int | None]:
    """``host[:port]`` of a proxy address, checked; ``ValueError`` says which half is wrong."""
    if netloc.startswith("["):
        inside, bracket, rest = netloc[1:].partition("]")
        try:
            ipaddress.IPv6Address(inside)
        except ValueError:
            raise ValueError("has an invalid IPv6 host") from None
        host = f"[{inside.lower()}]"
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("has an invalid IPv6 host")
        colon, port = rest[:1], rest[1:]
    else:
        host, colon, port = netloc.partition(":")
        if not _PROXY_HOST.match(host):
            raise ValueError("has an invalid host (letters, digits, '-', '_' and '.', or an [IPv6] address)")
        host = host.lower()
    if not colon or not port:
        return host, None
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
        raise ValueError("has an invalid port (a number from 1 to 65535)")
    return host, int(port)


def parse_proxy(address: Any, where: str, username: Any = None, password: Any = None) -> Proxy:
    """A proxy from its address (``http://host:port``) and optional credentials, checked.

    Total: any input is a ``Proxy`` a transport can use or one ``ChainError`` line that names
    ``where`` and never holds the password. Credentials belong in their own fields (or Secret
    keys), never in the address: a password in a URL ends up in logs, so it is refused, masked.
    """
    if not isinstance(address, str) or not address.strip():
        raise ChainError(f"{where}: proxy address must be a URL such as http://proxy.example.com:3128")
    address = address.strip()
    if len(address) > MAX_PROXY_ADDRESS:
        raise ChainError(f"{where}: proxy address is longer than {MAX_PROXY_ADDRESS} characters")
    shown = _shown(address)
    if "@" in address:
        raise ChainError(
            f"{where}: proxy address {shown} must not carry credentials; use username and password"
        )
    if any(not c.isprintable() or c.isspace() for c in address):
        raise ChainError(f"{where}: proxy address {shown} must not contain spaces or control characters")
    try:
        parts = urlsplit(address)
    except ValueError:
        raise ChainError(f"{where}: proxy address {shown} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ChainError(f"{where}: proxy address {shown} must be http://host[:port]")
    if parts.path.strip("/") or parts.query or parts.fragment or "?" in address or "#" in address:
        raise ChainError(f"{where}: proxy address {shown} must not have a path, query or fragment")
    try:
        host, port = _host_and_port(parts.netloc)
    except ValueError as exc:
        raise ChainError(f"{where}: proxy address {shown} {exc}") from None
    for field, value in (("username", username), ("password", password)):
        if value is not None and not isinstance(value, str):
            raise ChainError(f"{where}: proxy {field} must be a string")
    if (username is None) != (password is None):
        raise ChainError(f"{where}: proxy username and password go together")
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
    scheme, sep, rest = address.strip().partition("://")
    if not sep:
        scheme, rest = "http", address.strip()
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, host = authority.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = unquote(user), unquote(secret) if colon else ""
    return parse_proxy(f"{scheme}://{host}{tail}", where, username, password)


def check_environment_proxies(environ: Mapping[str, str] | None = None) -> None:
    """ChainError when ``HTTPS_PROXY`` or ``HTTP_PROXY`` cannot be used: a long-running process reads
    them once at start, so a typo stops it with one line rather than failing every check."""
    for scheme in ("https", "http"):
        environment_proxy(Hop.from_url("environment", f"{scheme}://layerwatch.invalid"), environ)


def hop_proxy(hop: Hop, environ: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy a hop is reached through: its own, else the environment's (None: direct)."""
    return hop.proxy or environment_proxy(hop, environ)


def transport_proxy(proxy: Proxy | None) -> httpx.Proxy | None:
    """What the HTTP transport is given for a proxy."""
    if proxy is None:
        return None
    auth = (proxy.username, proxy.password or "") if proxy.username is not None else None
    return httpx.Proxy(proxy.address, auth=auth)
