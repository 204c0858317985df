"""Chains of registry hops and how a repository path maps across them.

A chain lists hops edge first, origin last. Each Harbor proxy-cache project strips its own project
name before asking upstream, so the path at hop i is ``prefix_i/<path at hop i+1>``; a plain mirror
has an empty prefix. This module owns that arithmetic and reading ProxyChain/Target documents.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from layerwatch.reference import (
    DOCKER_HUB,
    Reference,
    ReferenceError,
    check_host,
    check_repository,
    check_tag,
    is_digest,
    without_default_port,
)
from layerwatch.signatures import Provider, parse_verify

__all__ = [
    "CANARY_KEEP",
    "DEFAULT_INTERVAL",
    "MIN_INTERVAL",
    "PROVIDERS",
    "Canary",
    "Chain",
    "ChainError",
    "Credentials",
    "Hop",
    "HopTarget",
    "Mode",
    "Proxy",
    "Target",
    "check_keys",
    "check_provider_host",
    "mask_userinfo",
    "parse_duration",
    "provider_host",
    "provider_of",
    "strict_boolean",
]

DEFAULT_INTERVAL = 300.0
"""Seconds between checks of one target: the ProxyChain default of 5m."""
MIN_INTERVAL = 1.0
"""Shorter intervals would make the monitor the registry's busiest client; labs use 5-10 s."""
TARGET_KEYS = frozenset({"name", "url", "ref", "layerSelector", "chain", "verify"})

_HOP_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


class ChainError(ValueError):
    """A chain or target document is wrong; the message names the field."""


class Mode(enum.StrEnum):
    """How blobs are checked: ``full`` downloads and hashes them, ``head`` only asks for them."""

    FULL = "full"
    HEAD = "head"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Username and password (or robot token) for one registry. Never printed."""

    username: str
    password: str = dataclasses.field(repr=False)
    identity_token: str | None = dataclasses.field(default=None, repr=False)
    """A docker ``identitytoken``: an OAuth2 refresh token traded at the token endpoint."""
    helper: tuple[str, str] | None = None
    """(helper, registry host) when a ``docker-credential-<helper>`` gave them: they can be asked again."""

    def __str__(self) -> str:
        return f"Credentials({self.username}, ***)"


PROVIDERS = ("generic", "aws", "azure", "gcp")
"""Values of a hop's ``provider`` (Flux's ``spec.provider``); ``generic`` means the hop's own credentials."""

_ECR_DOMAINS = r"amazonaws\.com(?:\.cn)?|sc2s\.sgov\.gov|c2s\.ic\.gov|cloud\.adc-e\.uk|csp\.hci\.ic\.gov"
_PROVIDER_HOSTS = {
    "aws": re.compile(
        r"public\.ecr\.aws|(?P<account>[0-9]+)\.dkr[.-]ecr(?:-fips)?\.(?P<region>[^./:]+)"
        rf"\.(?:{_ECR_DOMAINS})(?::[0-9]+)?"
    ),
    "azure": re.compile(r".+\.azurecr\.(?:io|cn|de|us)"),
    "gcp": re.compile(r"(?:.+\.)?gcr\.io|.+-docker\.pkg\.dev"),
}
"""The registry hosts Flux (2.6 and later) lets each cloud provider log in to, matched whole: the
ECR credential helper's partitions (public, China, FIPS, the isolated ones) and Public ECR; ACR's
four clouds; Container Registry and Artifact Registry. Flux finds its ECR pattern anywhere in the
host; here it must be the whole host (an optional port aside), so ``….amazonaws.com.evil.example``
gets no token."""
_PROVIDER_EXAMPLES = {
    "aws": "ACCOUNT.dkr.ecr.REGION.amazonaws.com[.cn] and the other ECR partitions, or public.ecr.aws",
    "azure": "NAME.azurecr.io, .azurecr.cn, .azurecr.de or .azurecr.us",
    "gcp": "gcr.io, NAME.gcr.io or REGION-docker.pkg.dev",
}


@dataclasses.dataclass(frozen=True)
class Proxy:
    """An HTTP proxy a hop is reached through (CONNECT for https hops). The password is never printed."""

    address: str
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True)
class Hop:
    """One registry on the chain: where it is, how to reach it, and its proxy project prefix."""

    name: str
    scheme: str
    host: str
    prefix: str = ""
    credentials: Credentials | None = None
    ca_pem: str | None = dataclasses.field(default=None, repr=False)
    insecure: bool = False
    provider: str | None = None
    """``aws``, ``azure`` or ``gcp``: credentials come from the cloud's workload identity."""
    proxy: Proxy | None = None
    client_cert_pem: str | None = dataclasses.field(default=None, repr=False)
    client_key_pem: str | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_url(cls, name: str, url: str, **options: Any) -> Hop:
        """Build a hop from ``https://host[:port][/prefix]``; ``http://`` means plain HTTP.

        The URL is normalised: host lower-cased, the scheme's default port dropped, slashes around
        the prefix stripped, so equal places compare equal and print the same.
        """
        if not _HOP_NAME.match(name):
            raise ChainError(f"hop name {name!r} must be a DNS label (lower-case letters, digits, '-')")
        try:
            parts = urlsplit(url.strip())
        except ValueError as exc:  # e.g. unbalanced brackets of an IPv6 host
            raise ChainError(f"hop {name}: url {mask_userinfo(url)!r} is not a URL: {exc}") from None
        if parts.username is not None or parts.password is not None:
            raise ChainError(
                f"hop {name}: url {mask_userinfo(url)!r} must not carry credentials "
                "(give them as a Secret, username/password or a docker config)"
            )
        if parts.scheme not in ("http", "https"):
            raise ChainError(f"hop {name}: url {url!r} must start with https:// or http://")
        if parts.query or parts.fragment:
            raise ChainError(f"hop {name}: url {url!r} must not carry a query or a fragment")
        try:
            host = without_default_port(check_host(parts.netloc), parts.scheme)
        except ReferenceError as exc:
            raise ChainError(f"hop {name}: {exc}") from None
        prefix = parts.path.strip("/")
        if prefix:
            try:
                check_repository(prefix)
            except ReferenceError as exc:
                raise ChainError(f"hop {name}: path prefix: {exc}") from None
        return cls(name=name, scheme=parts.scheme, host=host, prefix=prefix, **options)

    @property
    def url(self) -> str:
        """The hop as the user wrote it (scheme, host, prefix); never carries credentials."""
        base = f"{self.scheme}://{self.host}"
        return f"{base}/{self.prefix}" if self.prefix else base

    @property
    def api_host(self) -> str:
        """Host that serves the registry API (Docker Hub's API lives on another name)."""
        return "registry-1.docker.io" if self.host == DOCKER_HUB else self.host

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.api_host}"

    def owns(self, host: str, repository: str) -> bool:
        """True when ``host/repository`` is served by this hop (same host, path under the prefix)."""
        if without_default_port(host, self.scheme) != self.host:
            return False
        return not self.prefix or repository.startswith(self.prefix + "/")


@dataclasses.dataclass(frozen=True)
class HopTarget:
    """A hop together with the repository path the artifact has there."""

    hop: Hop
    repository: str

    @property
    def location(self) -> str:
        """``host/repository``, how messages name a place."""
        return f"{self.hop.host}/{self.repository}"


CANARY_KEEP = 3
"""Canary tags kept at the origin by default (the newest); older ones are deleted."""
MAX_CANARY_KEEP = 50
CANARY_KEYS = frozenset({"repository", "secretRef", "keep"})
"""What a ProxyChain's ``spec.canary`` may say (a chain file adds its file-only credentials)."""


@dataclasses.dataclass(frozen=True)
class Canary:
    """A chain's cold-path canary: the repository at the origin it pushes to, and with what.

    The credentials are for that push only (and the clean-up of old canary tags): they go to the
    origin hop's URL over the origin hop's transport, nowhere else.
    """

    repository: str
    credentials: Credentials | None = dataclasses.field(default=None, repr=False)
    keep: int = CANARY_KEEP


@dataclasses.dataclass(frozen=True)
class Chain:
    """Ordered hops, edge first and origin last, with the schedule settings of a ProxyChain."""

    name: str
    hops: tuple[Hop, ...]
    interval: float = DEFAULT_INTERVAL
    mode: Mode = Mode.FULL
    namespace_selector: Mapping[str, Any] | None = None
    suspend: bool = False
    verify: Provider | None = None
    """``spec.verify.provider``: check signatures for every target of the chain (opt-in)."""
    canary: Canary | None = None
    """``spec.canary``: push a fresh artifact at the origin each interval and pull it through (opt-in)."""

    def __post_init__(self) -> None:
        if not self.hops:
            raise ChainError(f"chain {self.name}: needs at least one hop")
        if not self.interval >= MIN_INTERVAL:  # also refuses NaN
            raise ChainError(f"chain {self.name}: interval must be at least 1s, not {self.interval:g}s")
        names = [hop.name for hop in self.hops]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ChainError(f"chain {self.name}: duplicate hop names: {', '.join(duplicates)}")

    @property
    def origin(self) -> Hop:
        return self.hops[-1]

    def canary_reference(self, tag: str) -> Reference:
        """The canary's ``tag`` as the edge serves it: every proxy prefix, then the origin path."""
        if self.canary is None:
            raise ChainError(f"chain {self.name} has no canary")
        edge = self.hops[0]
        prefixes = [hop.prefix for hop in self.hops[:-1] if hop.prefix]
        return Reference(edge.host, "/".join([*prefixes, self.canary.repository]), tag=tag)

    def canary_push_hop(self) -> Hop:
        """The origin hop with the canary's credentials instead of its own: same URL, same transport."""
        if self.canary is None:
            raise ChainError(f"chain {self.name} has no canary")
        return dataclasses.replace(self.origin, credentials=self.canary.credentials, provider=None)

    def hop(self, name: str) -> Hop:
        for hop in self.hops:
            if hop.name == name:
                return hop
        raise KeyError(name)

    def entry(self, host: str, repository: str) -> int | None:
        """Index of the hop a URL points at: the one with this host and the longest matching prefix."""
        best: tuple[int, int] | None = None
        for index, hop in enumerate(self.hops):
            if hop.owns(host, repository) and (best is None or len(hop.prefix) > best[1]):
                best = (index, len(hop.prefix))
        return None if best is None else best[0]

    def matches(self, reference: Reference) -> bool:
        return self.entry(reference.registry, reference.repository) is not None

    def pull_path(self, reference: Reference) -> list[HopTarget]:
        """Hops from the one the reference points at down to the origin, with each hop's path.

        Each hop strips its own prefix before asking the next; a path that does not carry the next
        hop's prefix cannot pass through it, which is a configuration error worth saying plainly.
        """
        start = self.entry(reference.registry, reference.repository)
        if start is None:
            raise ChainError(
                f"{reference.name} is not under any hop of chain {self.name} "
                f"({', '.join(h.url for h in self.hops)})"
            )
        path: list[HopTarget] = []
        repository = reference.repository
        for position, hop in enumerate(self.hops[start:], start=start):
            if hop.prefix and position != len(self.hops) - 1:
                if not repository.startswith(hop.prefix + "/"):
                    raise ChainError(
                        f"{reference.name}: path {repository!r} at hop {hop.name} "
                        f"lacks its prefix {hop.prefix!r}"
                    )
                path.append(HopTarget(hop, repository))
                repository = repository[len(hop.prefix) + 1 :]
            else:
                if hop.host == DOCKER_HUB and "/" not in repository:
                    repository = f"library/{repository}"
                path.append(HopTarget(hop, repository))
        return path

    def reference_at(self, reference: Reference, hop_name: str) -> Reference:
        """The same artifact as seen at another hop of the chain (used to map origin refs to edges)."""
        for target in self.pull_path(reference):
            if target.hop.name == hop_name:
                return reference.with_repository(target.hop.host, target.repository)
        raise ChainError(f"hop {hop_name} is not on the pull path of {reference.name}")

    @classmethod
    def single(cls, reference: Reference, *, scheme: str = "https", **options: Any) -> Chain:
        """A chain of one hop: the reference's own registry (the CLI default)."""
        return cls(
            name="direct", hops=(Hop(name="registry", scheme=scheme, host=reference.registry, **options),)
        )


@dataclasses.dataclass(frozen=True)
class Target:
    """One artifact to watch: where it is, which ref, which layer Flux takes, which chain."""

    name: str
    reference: Reference
    chain: str | None = None
    layer_media_type: str | None = None
    namespace: str = ""
    verify: Provider | None = None
    """Signatures to check at every hop (an OCIRepository's ``spec.verify``, or a Target's ``verify``)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def mask_userinfo(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages about a URL that carries one)."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        scheme, rest = "", url.strip()
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{host}{slash}{path}"


def check_keys(mapping: Mapping[str, Any], allowed: Collection[str], where: str) -> None:
    """Refuse keys nobody reads: a typo (``usrname``) must not silently drop a setting."""
    for key in mapping:
        if key in allowed:
            continue
        close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(allowed))})"
        raise ChainError(f"{where}: unknown key {key!r}{hint}")


def _verify_of(body: Mapping[str, Any], where: str) -> Provider | None:
    """A chain's or Target's ``verify: {provider}``; a key other than ``provider`` is refused."""
    raw = body.get("verify")
    if isinstance(raw, Mapping):
        check_keys(raw, {"provider"}, f"{where}: verify")
    return parse_verify(raw, where)


def strict_boolean(mapping: Mapping[str, Any], key: str, where: str) -> bool:
    """A YAML boolean; a quoted ``'false'`` is truthy in Python, so anything but a real bool is refused."""
    value = mapping.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        quoted = " (write it without quotes)" if isinstance(value, str) else ""
        raise ChainError(f"{where}.{key} must be true or false, not {value!r}{quoted}")
    return value


def parse_duration(value: str | float | int) -> float:
    """Seconds from a Go/Kubernetes duration (``5m``, ``1h30m``, ``90s``) or a plain number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip()
        pos, seconds = 0, 0.0
        for match in _DURATION.finditer(text):
            if match.start() != pos:
                break
            pos = match.end()
            amount, unit = float(match.group(1)), match.group(2)
            seconds += amount * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
        if pos != len(text) or not text:
            raise ChainError(f"invalid duration {value!r} (want e.g. 30s, 5m, 1h)")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ChainError(f"duration {value!r} must be positive and finite")
    return seconds


def provider_of(value: Any, where: str) -> str | None:
    """A ``provider`` field as a Hop holds it: None for absent or ``generic``, else the cloud's name."""
    if value is None or value == "generic":
        return None
    if not isinstance(value, str) or value not in PROVIDERS:
        raise ChainError(f"{where}: provider must be one of {', '.join(PROVIDERS)}, not {value!r}")
    return value


def provider_host(provider: str, host: str) -> re.Match[str]:
    """How ``host`` matches ``provider``'s registry pattern (ECR's names its account and region).

    Raises ChainError when the cloud would never issue a login for that host: its token must not
    go there (a tenant could otherwise name its own server and receive the platform's identity).
    """
    pattern = _PROVIDER_HOSTS.get(provider)
    if pattern is None:
        raise ChainError(f"provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
    match = pattern.fullmatch(host.lower())
    if match is None:
        raise ChainError(
            f"provider {provider} logs in only to its cloud's registries ({_PROVIDER_EXAMPLES[provider]}),"
            f" not {host}"
        )
    return match


def check_provider_host(provider: str | None, host: str) -> None:
    """ChainError when ``provider`` (None: the hop's own credentials) cannot log in to ``host``."""
    if provider is not None:
        provider_host(provider, host)


def canary_from_spec(
    raw: Any, where: str, credentials: Credentials | None = None, extra_keys: Collection[str] = ()
) -> Canary | None:
    """A ProxyChain's ``spec.canary`` (None when absent); its push credentials come from the caller."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ChainError(f"{where}: canary must be a mapping with a repository")
    check_keys(raw, CANARY_KEYS | set(extra_keys), f"{where}: canary")
    repository = raw.get("repository")
    if not isinstance(repository, str):
        raise ChainError(f"{where}: canary.repository is required (a repository path at the origin)")
    try:
        check_repository(repository)
    except ReferenceError as exc:
        raise ChainError(f"{where}: canary.repository: {exc}") from None
    keep = raw.get("keep", CANARY_KEEP)
    if not isinstance(keep, int) or isinstance(keep, bool) or not 1 <= keep <= MAX_CANARY_KEEP:
        raise ChainError(f"{where}: canary.keep must be a whole number from 1 to {MAX_CANARY_KEEP}")
    return Canary(repository, credentials, keep)


def chain_from_spec(
    name: str,
    spec: Mapping[str, Any],
    *,
    hop_options: Mapping[str, Mapping[str, Any]] | None = None,
    canary_credentials: Credentials | None = None,
    canary_keys: Collection[str] = (),
) -> Chain:
    """Build a chain from a ProxyChain ``spec``; ``hop_options`` adds per-hop credentials and TLS.

    Secrets are resolved by the caller (files for the CLI, Secrets in a cluster) and handed in as
    ``hop_options[hop_name]`` and ``canary_credentials``, so this stays pure.
    """
    raw_hops = spec.get("hops")
    if not isinstance(raw_hops, Sequence) or isinstance(raw_hops, str) or not raw_hops:
        raise ChainError(f"chain {name}: spec.hops must be a non-empty list")
    hops = []
    for position, raw in enumerate(raw_hops):
        if (
            not isinstance(raw, Mapping)
            or not isinstance(raw.get("name"), str)
            or not isinstance(raw.get("url"), str)
        ):
            raise ChainError(f"chain {name}: spec.hops[{position}] needs a name and a url")
        options = dict((hop_options or {}).get(raw["name"], {}))
        insecure = strict_boolean(raw, "insecureSkipTLSVerify", f"chain {name}: spec.hops[{position}]")
        options.setdefault("insecure", insecure)
        options.setdefault("provider", provider_of(raw.get("provider"), f"chain {name}: hop {raw['name']}"))
        hop = Hop.from_url(raw["name"], raw["url"], **options)
        try:
            check_provider_host(hop.provider, hop.host)
        except ChainError as exc:
            raise ChainError(f"chain {name}: hop {hop.name}: {exc}") from None
        hops.append(hop)
    mode = spec.get("mode", Mode.FULL.value)
    if not isinstance(mode, str) or mode not in {m.value for m in Mode}:
        raise ChainError(f"chain {name}: spec.mode must be full or head, not {mode!r}")
    selector = spec.get("namespaceSelector")
    if selector is not None and not isinstance(selector, Mapping):
        raise ChainError(f"chain {name}: spec.namespaceSelector must be a label selector mapping")
    try:
        interval = parse_duration(spec.get("interval", "5m"))
    except ChainError as exc:
        raise ChainError(f"chain {name}: spec.interval: {exc}") from None
    try:
        verify = _verify_of(spec, f"chain {name}")
    except ValueError as exc:
        raise ChainError(str(exc)) from None
    return Chain(
        name=name,
        hops=tuple(hops),
        interval=interval,
        mode=Mode(mode),
        namespace_selector=selector if selector else None,
        suspend=strict_boolean(spec, "suspend", f"chain {name}: spec"),
        verify=verify,
        canary=canary_from_spec(spec.get("canary"), f"chain {name}: spec", canary_credentials, canary_keys),
    )


def target_from_document(document: Mapping[str, Any]) -> Target:
    """A ``Target`` document of ``layerwatch serve`` (name, url, ref, layerSelector, chain)."""
    body = document.get("spec", document)
    metadata = document.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise ChainError("a Target's metadata must be a mapping")
    name = metadata.get("name") or (body.get("name") if isinstance(body, Mapping) else None)
    if not isinstance(name, str) or not name:
        raise ChainError("a Target needs a name")
    if not isinstance(body, Mapping):
        raise ChainError(f"target {name}: spec must be a mapping")
    if "spec" in document:
        check_keys(document, {"apiVersion", "kind", "metadata", "spec"}, f"target {name}")
        check_keys(body, TARGET_KEYS - {"name"}, f"target {name}: spec")
    else:
        check_keys(document, TARGET_KEYS | {"apiVersion", "kind", "metadata"}, f"target {name}")
    url = body.get("url")
    if not isinstance(url, str):
        raise ChainError(f"target {name}: url is required")
    if mask_userinfo(url) != url:
        raise ChainError(f"target {name}: url {mask_userinfo(url)!r} must not carry credentials")
    ref = body.get("ref") or {}
    if isinstance(ref, str):
        # Tags cannot hold ':', digests always do: "sha-1a2b3c4" is a (common) tag, not a digest.
        ref = {"digest": ref} if ":" in ref else {"tag": ref}
    if not isinstance(ref, Mapping):
        raise ChainError(f"target {name}: ref must be a tag, a digest or a mapping with tag/digest")
    check_keys(ref, {"tag", "digest"}, f"target {name}: ref")
    tag, digest = ref.get("tag"), ref.get("digest")
    if not isinstance(tag, str | None) or not isinstance(digest, str | None):
        raise ChainError(f"target {name}: ref.tag and ref.digest must be strings")
    try:
        reference = Reference.parse(url, default_tag=None)
        if digest or tag:
            reference = dataclasses.replace(reference, tag=tag or None, digest=digest or None)
        elif reference.tag is None and reference.digest is None:
            reference = dataclasses.replace(reference, tag="latest")
        if reference.tag is not None:
            check_tag(reference.tag)
        if reference.digest is not None and not is_digest(reference.digest):
            raise ReferenceError(f"invalid digest {reference.digest!r}")
    except ReferenceError as exc:
        raise ChainError(f"target {name}: {exc}") from None
    selector = body.get("layerSelector") or {}
    if not isinstance(selector, Mapping) or not isinstance(selector.get("mediaType"), str | None):
        raise ChainError(f"target {name}: layerSelector must be a mapping with a mediaType string")
    check_keys(selector, {"mediaType", "operation"}, f"target {name}: layerSelector")
    chain = body.get("chain")
    if not isinstance(chain, str | None):
        raise ChainError(f"target {name}: chain must be a ProxyChain name")
    try:
        verify = _verify_of(body, f"target {name}")
    except ValueError as exc:
        raise ChainError(str(exc)) from None
    return Target(
        name=name,
        reference=reference,
        chain=chain,
        layer_media_type=selector.get("mediaType"),
        verify=verify,
    )


def split_documents(documents: Iterable[Any]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """Sort YAML documents into ProxyChains and Targets; anything else is an error worth naming."""
    chains, targets = [], []
    for position, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, Mapping):
            raise ChainError(f"document {position + 1}: not a mapping")
        kind = document.get("kind")
        if kind == "ProxyChain":
            chains.append(document)
        elif kind == "Target":
            targets.append(document)
        else:
            raise ChainError(f"document {position + 1}: kind must be ProxyChain or Target, not {kind!r}")
    return chains, targets
