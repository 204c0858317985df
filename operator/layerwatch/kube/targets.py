"""From OCIRepository and ProxyChain objects to what the scheduler watches (pure).

Which chain an OCIRepository belongs to, which ref Flux resolved, whose credentials go to its entry
hop over which transport, and whether this replica's shard owns it: decided here from plain
dictionaries, so the rules are tested without an apiserver.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from layerwatch.chain import (
    DEFAULT_INTERVAL,
    Chain,
    ChainError,
    Credentials,
    Hop,
    Mode,
    Proxy,
    Target,
    check_provider_host,
    parse_duration,
)
from layerwatch.reference import Reference, ReferenceError, is_digest
from layerwatch.signatures import Provider, parse_verify

__all__ = [
    "ANNOTATION_CHAIN",
    "ANNOTATION_IGNORE",
    "ANNOTATION_INCLUDE_SUSPENDED",
    "CHAIN_NOT_READY",
    "FluxSource",
    "Selection",
    "TenantAccess",
    "in_shard",
    "pod_ordinal",
    "resolve_entry_hop",
    "select",
    "selector_matches",
    "skeleton_chain",
]

ANNOTATION_PREFIX = "layerwatch.io/"
ANNOTATION_IGNORE = "layerwatch.io/ignore"
ANNOTATION_CHAIN = "layerwatch.io/chain"
ANNOTATION_INCLUDE_SUSPENDED = "layerwatch.io/include-suspended"
CHAIN_NOT_READY = "ChainNotReady"
_HEX64 = re.compile(r"^[a-f0-9]{64}$")
_ORDINAL = re.compile(r"-(\d+)\Z")


def _mapping(value: Any) -> Mapping[str, Any]:
    """A section of the body, or an empty one when it is absent or not a mapping at all."""
    return value if isinstance(value, Mapping) else {}


def _verify(value: Any) -> Provider | None:
    """``spec.verify``'s provider; Flux's CRD admits only cosign and notation, so anything else is None."""
    try:
        return parse_verify(value, "spec")
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class FluxSource:
    """The parts of an OCIRepository layerwatch reads."""

    namespace: str
    name: str
    api_version: str
    uid: str
    generation: int
    url: str
    tag: str | None
    digest: str | None
    semver: str | None
    revision: str | None
    layer_media_type: str | None
    verify: Provider | None
    """``spec.verify.provider`` (cosign when ``spec.verify`` names none); None without ``spec.verify``."""
    secret_ref: str | None
    cert_secret_ref: str | None
    insecure: bool
    suspend: bool
    annotations: Mapping[str, str]
    conditions: tuple[Mapping[str, Any], ...]
    provider: str | None = None
    """``spec.provider`` (aws, azure, gcp) for the entry hop; None for generic."""
    service_account: str | None = None
    """``spec.serviceAccountName``: its imagePullSecrets are the entry hop's credentials."""
    proxy_secret_ref: str | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> FluxSource:
        metadata = _mapping(body.get("metadata"))
        spec = _mapping(body.get("spec"))
        status = _mapping(body.get("status"))
        ref = _mapping(spec.get("ref"))
        artifact = _mapping(status.get("artifact"))
        selector = _mapping(spec.get("layerSelector"))

        def name_of(field: str) -> str | None:
            value = spec.get(field)
            return value.get("name") if isinstance(value, Mapping) else None

        return cls(
            namespace=str(metadata.get("namespace", "")),
            name=str(metadata.get("name", "")),
            api_version=str(body.get("apiVersion", "source.toolkit.fluxcd.io/v1")),
            uid=str(metadata.get("uid", "")),
            generation=int(metadata.get("generation") or 0),
            url=str(spec.get("url", "")),
            tag=ref.get("tag"),
            digest=ref.get("digest"),
            semver=ref.get("semver"),
            revision=revision if isinstance(revision := artifact.get("revision"), str) else None,
            layer_media_type=selector.get("mediaType"),
            verify=_verify(spec.get("verify")),
            secret_ref=name_of("secretRef"),
            cert_secret_ref=name_of("certSecretRef"),
            insecure=bool(spec.get("insecure", False)),
            suspend=bool(spec.get("suspend", False)),
            # Only our own annotations steer the plan; others (reconcile.fluxcd.io/requestedAt, set
            # by every `flux reconcile` and webhook Receiver) must not make every event re-plan.
            annotations={
                key: value
                for key, value in _mapping(metadata.get("annotations")).items()
                if key.startswith(ANNOTATION_PREFIX)
            },
            conditions=tuple(c for c in status.get("conditions") or () if isinstance(c, Mapping)),
            provider=provider if (provider := spec.get("provider")) in ("aws", "azure", "gcp") else None,
            service_account=account if isinstance(account := spec.get("serviceAccountName"), str) else None,
            proxy_secret_ref=name_of("proxySecretRef"),
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def resolved(self) -> tuple[str | None, str | None] | str:
        """(tag, pinned digest) Flux resolved, or a reason string when nothing can be checked yet.

        ``status.artifact.revision`` is ``<tag>@sha256:<hex>`` or ``sha256:<hex>`` (older Flux wrote
        ``<tag>/<hex>``). Note ``status.artifact.digest`` hashes Flux's own tarball: never used.
        """
        revision = self.revision or ""
        if "@" in revision:
            tag, _, digest = revision.rpartition("@")
            if is_digest(digest):
                return (tag or None, digest)
        if is_digest(revision):
            return (None, revision)
        tag, _, hexpart = revision.rpartition("/")
        if tag and _HEX64.match(hexpart):
            return (tag, f"sha256:{hexpart}")
        if self.digest:
            return (None, self.digest)
        if self.semver:
            return "semver ref not resolved by Flux yet"
        return (self.tag or "latest", None)


@dataclasses.dataclass(frozen=True)
class Selection:
    """What to do with one OCIRepository: watch it on a chain, or skip it (with why)."""

    target: Target | None
    chain: Chain | None
    pinned_digest: str | None = None
    pending: str | None = None
    pending_reason: str = "Pending"
    skipped: str | None = None
    in_scope: bool = True
    """False when the chain's namespaceSelector excludes the namespace: checked at its own URL only."""


def in_shard(namespace: str, name: str, index: int, count: int) -> bool:
    """Stable assignment of an object to one of ``count`` replicas (same on every replica)."""
    if count <= 1:
        return True
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % count == index


def pod_ordinal(pod_name: str) -> int | None:
    """A StatefulSet pod's ordinal from its name (``layerwatch-2`` is 2), None for other names."""
    match = _ORDINAL.search(pod_name)
    return int(match.group(1)) if match else None


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels and matchExpressions) against a label set."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or ():
        key, operator = expression.get("key"), expression.get("operator")
        values = set(expression.get("values") or ())
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _prefix_length(chain: Chain, reference: Reference) -> int:
    """Length of the path prefix of the hop ``reference`` enters ``chain`` at (-1: none)."""
    index = chain.entry(reference.registry, reference.repository)
    return -1 if index is None else len(chain.hops[index].prefix)


def select(
    source: FluxSource,
    chains: Sequence[Chain],
    namespace_labels: Mapping[str, str] | None,
    not_ready: Mapping[str, str] | None = None,
) -> Selection:
    """Decide whether and how to watch an OCIRepository (the selection rules, in order).

    ``not_ready`` maps chains that could not be planned to why: their OCIRepositories are still
    selected, but pending with reason ``ChainNotReady``, so they stay visible as unknown.
    """
    if source.annotations.get(ANNOTATION_IGNORE) == "true":
        return Selection(None, None, skipped="annotated layerwatch.io/ignore")
    if source.suspend and source.annotations.get(ANNOTATION_INCLUDE_SUSPENDED) != "true":
        return Selection(None, None, skipped="suspended")
    try:
        base = Reference.parse(source.url, default_tag=None)
    except ReferenceError as exc:
        return Selection(None, None, skipped=f"spec.url: {exc}")
    wanted = source.annotations.get(ANNOTATION_CHAIN)
    broken = not_ready or {}
    # A chain that cannot be planned may have lost the very hop the URL names: the annotation alone
    # then says the object is its, so it shows as ChainNotReady rather than as not watched.
    candidates = [
        c
        for c in chains
        if (c.matches(base) or (c.name == wanted and c.name in broken)) and (c.name == wanted or not wanted)
    ]
    if not candidates:
        if wanted and all(c.name != wanted for c in chains):
            return Selection(None, None, skipped=f"no active ProxyChain named {wanted}")
        return Selection(None, None, skipped="no chain has a hop for this URL")
    serving = [c for c in candidates if selector_matches(c.namespace_selector, namespace_labels or {})]
    # Outside every candidate's scope the chain only says where the URL's hop is: the object is
    # checked there with its own settings alone, so a chain never serves a namespace it excludes.
    in_scope = bool(serving)
    candidates = serving or [c for c in candidates if c.matches(base)]
    if not candidates:
        return Selection(None, None, skipped="the chain's namespaceSelector excludes this namespace")
    # The most specific hop wins (a plain mirror of a whole host must not take the objects of a
    # proxy project on it); between equally specific chains, the first by name.
    chain = min(candidates, key=lambda c: (-_prefix_length(c, base), c.name))
    if chain.suspend:
        return Selection(None, chain, skipped=f"chain {chain.name} is suspended")
    resolved = source.resolved()
    pending = resolved if isinstance(resolved, str) else None
    tag, pinned = (None, None) if isinstance(resolved, str) else resolved
    reference = dataclasses.replace(
        base, tag=tag or (None if pinned else "latest"), digest=None if tag else pinned
    )
    if pending:
        reference = dataclasses.replace(base, tag=source.semver)
    target = Target(
        name=source.name,
        namespace=source.namespace,
        reference=reference,
        chain=chain.name,
        layer_media_type=source.layer_media_type,
        verify=source.verify,
    )
    pinned_digest = pinned if tag else None
    if not in_scope:
        return Selection(target, chain, pinned_digest, pending=pending, in_scope=False)
    why = broken.get(chain.name)
    if why is not None:
        # The same target as once the chain is ready, so it then keeps its place in the interval.
        pending = f"ProxyChain {chain.name} is not ready: {why}"
        return Selection(target, chain, pinned_digest, pending=pending, pending_reason=CHAIN_NOT_READY)
    try:
        chain.pull_path(reference)
    except ChainError as exc:
        return Selection(None, chain, skipped=str(exc))
    return Selection(target, chain, pinned_digest=pinned_digest, pending=pending)


@dataclasses.dataclass(frozen=True)
class TenantAccess:
    """An OCIRepository's own settings for its entry hop, its Secrets already read."""

    names_credentials: bool = False
    """``secretRef``, ``serviceAccountName`` or ``provider`` is set (even if they gave none for the host)."""
    credentials: Credentials | None = None
    provider: str | None = None
    """The cloud provider, only when no Secret gave credentials (as Flux)."""
    insecure: bool = False
    tls: Mapping[str, str] | None = None
    """What ``certSecretRef`` holds: ``ca_pem``, ``client_cert_pem`` and ``client_key_pem``, those present."""
    proxy: Proxy | None = None


def resolve_entry_hop(hop: Hop, tenant: TenantAccess, *, in_scope: bool = True) -> Hop:
    """The hop an OCIRepository's URL points at, as it is checked for that OCIRepository.

    The chain's credentials (its robot account, client certificate, cloud provider) go only to the
    chain's hop over the chain's own transport. A field that changes that transport (``insecure``
    on an https hop, ``certSecretRef``, ``proxySecretRef``), or a namespace outside the chain's
    scope, gets a hop made of the OCIRepository's own settings alone, as source-controller pulls:
    its own credentials or none, its own CA and proxy (else the environment's). Fields that only
    name credentials keep the chain's transport. ChainError when the fields cannot go together.
    """
    own_transport = (
        not in_scope
        or (tenant.insecure and hop.scheme == "https")
        or tenant.tls is not None
        or tenant.proxy is not None
    )
    if not own_transport:
        resolved = (
            dataclasses.replace(hop, credentials=tenant.credentials, provider=tenant.provider)
            if tenant.names_credentials
            else hop
        )
    else:
        tls = tenant.tls or {}
        resolved = Hop(
            name=hop.name,
            scheme="http" if tenant.insecure else "https",
            host=hop.host,
            prefix=hop.prefix,
            credentials=tenant.credentials,
            provider=tenant.provider,
            proxy=tenant.proxy,
            ca_pem=tls.get("ca_pem"),
            client_cert_pem=tls.get("client_cert_pem"),
            client_key_pem=tls.get("client_key_pem"),
        )
    if tenant.provider and resolved.scheme == "http":
        raise ChainError(
            f"spec.provider {tenant.provider}: the pod's cloud token is never sent over plain HTTP"
            f" ({'spec.insecure' if tenant.insecure else 'the hop is http://'})"
        )
    if tenant.provider and resolved.provider == tenant.provider:
        try:  # as Flux 2.6+: a cloud logs in only to its own registries, and nothing is asked first
            check_provider_host(tenant.provider, resolved.host)
        except ChainError as exc:
            raise ChainError(f"spec.{exc}") from None
    return resolved


def skeleton_chain(name: str, spec: Mapping[str, Any]) -> Chain | None:
    """The shape of a chain that cannot be planned: its hops without credentials or CA.

    Enough to match OCIRepositories to it and to show it (status page, metrics) as not ready; it is
    never checked. A hop URL the parser refuses is kept as written (lower-cased host), so its
    OCIRepositories still find the chain; None when not even that makes a chain.
    """
    hops = []
    for raw in spec.get("hops") or ():
        if (
            not isinstance(raw, Mapping)
            or not isinstance(raw.get("name"), str)
            or not isinstance(raw.get("url"), str)
        ):
            continue
        try:
            hops.append(Hop.from_url(raw["name"], raw["url"]))
        except ChainError:
            parts = urlsplit(raw["url"].strip())
            hops.append(
                Hop(
                    name=raw["name"],
                    scheme=parts.scheme,
                    host=parts.netloc.lower(),
                    prefix=parts.path.strip("/"),
                )
            )
    try:
        interval = parse_duration(spec.get("interval", "5m"))
    except ChainError:
        interval = DEFAULT_INTERVAL
    mode = spec.get("mode")
    try:
        return Chain(
            name=name,
            hops=tuple(hops),
            interval=interval,
            mode=Mode(mode) if mode in {m.value for m in Mode} else Mode.FULL,
            namespace_selector=spec.get("namespaceSelector") or None,
            suspend=bool(spec.get("suspend", False)),
        )
    except ChainError:
        return None
