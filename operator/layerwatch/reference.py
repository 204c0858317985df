"""OCI references: parse, normalise and format, with no I/O.

A reference names one artifact: registry host, repository path and a tag and/or digest. Flux writes
``oci://host/path`` URLs with the tag kept apart in ``spec.ref``; people paste ``host/path:tag``.
Both forms land here, so the rest of layerwatch sees one value type.
"""

from __future__ import annotations

import dataclasses
import re

__all__ = [
    "DOCKER_HUB",
    "Reference",
    "ReferenceError",
    "is_digest",
    "short_digest",
    "without_default_port",
]

DOCKER_HUB = "index.docker.io"
"""Canonical name of Docker Hub; ``docker.io`` and ``registry-1.docker.io`` normalise to it."""

_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# \Z, not $: "$" also matches before a trailing newline, which would let "tag\n" through.
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z"
)
_MAX_REPOSITORY = 255


class ReferenceError(ValueError):
    """The text is not an OCI reference; the message says which part is wrong."""


def is_digest(text: str) -> bool:
    """True for a well-formed ``sha256:<64 hex>`` or ``sha512:<128 hex>`` digest."""
    return bool(_DIGEST.match(text))


def short_digest(digest: str | None) -> str:
    """``sha256:`` plus 12 hex digits: how digests are shown to people."""
    if not digest:
        return "-"
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}:{hexpart[:12]}"


def _is_host(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost" or component.startswith("[")


def check_host(host: str) -> str:
    """Validate ``host[:port]`` and return it lower-cased; Docker Hub aliases collapse to one name."""
    if not _HOST.match(host):
        raise ReferenceError(f"invalid registry host {host!r}")
    if ":" in host.rpartition("]")[2]:
        port = int(host.rsplit(":", 1)[1])
        if not 0 < port < 65536:
            raise ReferenceError(f"invalid port in registry host {host!r}")
    host = host.lower()
    return DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


def without_default_port(host: str, scheme: str) -> str:
    """``host:443`` under https (``host:80`` under http) is ``host``: one registry, one name.

    Hop URLs are compared and shown in this form, so ``https://harbor:443/p`` and
    ``oci://harbor/p/app`` name the same place.
    """
    default = {"https": "443", "http": "80"}.get(scheme)
    name, colon, port = host.rpartition(":")
    return name if colon and port == default else host


def check_repository(repository: str) -> str:
    """Validate a repository path (lower-case components separated by ``/``)."""
    if not repository:
        raise ReferenceError("empty repository path")
    if len(repository) > _MAX_REPOSITORY:
        raise ReferenceError(f"repository path longer than {_MAX_REPOSITORY} characters")
    if not _REPOSITORY.match(repository):
        raise ReferenceError(f"invalid repository path {repository!r}")
    return repository


def check_tag(tag: str) -> str:
    """Validate a tag (what distribution accepts: up to 128 word characters, dots and dashes)."""
    if not _TAG.match(tag):
        raise ReferenceError(f"invalid tag {tag!r}")
    return tag


@dataclasses.dataclass(frozen=True)
class Reference:
    """One artifact: ``registry/repository`` plus a tag, a digest, or both (the digest wins)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str, *, default_tag: str | None = "latest") -> Reference:
        """Parse ``oci://host/path:tag``, ``host/path@sha256:...`` or a bare Docker Hub name.

        A name with no registry (``alpine``, ``org/app``) is a Docker Hub name, and a single-component
        Docker Hub name gets ``library/``, as docker does. With neither tag nor digest the tag is
        ``default_tag``.
        """
        original = text
        text = text.strip()
        if not text:
            raise ReferenceError("empty reference")
        if any(ch.isspace() for ch in text):
            raise ReferenceError(f"reference {original!r} contains white space")
        scheme, sep, rest = text.partition("://")
        if sep:
            if scheme.lower() != "oci":
                raise ReferenceError(f"unsupported scheme {scheme!r} in {original!r} (want oci://)")
            text = rest
        name, at, digest = text.partition("@")
        if at and not is_digest(digest):
            raise ReferenceError(f"invalid digest {digest!r}")
        tag: str | None = None
        last_slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > last_slash:
            name, tag = name[:colon], name[colon + 1 :]
            check_tag(tag)
        first, slash, remainder = name.partition("/")
        if slash and _is_host(first):
            registry, repository = check_host(first), remainder
        else:
            registry, repository = DOCKER_HUB, name
        if registry == DOCKER_HUB and "/" not in repository:
            repository = f"library/{repository}"
        check_repository(repository)
        if tag is None and not at:
            tag = default_tag
        return cls(registry=registry, repository=repository, tag=tag, digest=digest if at else None)

    @property
    def ref(self) -> str:
        """What goes into ``/v2/<repo>/manifests/<ref>``: the digest when known, else the tag."""
        ref = self.digest or self.tag
        if ref is None:
            raise ReferenceError(f"{self.name} has neither tag nor digest")
        return ref

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def with_repository(self, registry: str, repository: str) -> Reference:
        return dataclasses.replace(self, registry=registry, repository=repository)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text
