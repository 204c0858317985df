"""Chains and targets from files: the CLI's ``--chain``/``--hop``/``--targets`` and ``serve --config``.

In a cluster, hop credentials come from Secrets; outside one they come from files: a hop in a
chain file may carry ``dockerConfig: PATH`` or ``username``/``password`` (and ``caFile``,
``certFile``/``keyFile``, ``proxy``, ``provider``), and any hop without its own credentials gets
them from the docker config (``--docker-config``, else ``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``), looked up by the hop's host, helpers and identity tokens included.

Files are read strictly: a key nobody reads is an error with a did-you-mean, because a typo such
as ``usrname:`` would otherwise drop a credential without a word. (In a cluster the apiserver
prunes unknown fields against the CRD schema before layerwatch sees them.)

And totally: whatever a file holds (any bytes, any size, any nesting, any number), reading it ends
in a value or in one ``ChainError`` line, never in another exception. Files are at most
``MAX_FILE_BYTES``, UTF-8, and YAML at most ``MAX_DEPTH`` deep, without aliases (which could expand
a small file into a huge tree) and with integers that fit in 64 bits, as Kubernetes reads them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from layerwatch.chain import (
    Chain,
    ChainError,
    Credentials,
    Hop,
    Target,
    chain_from_spec,
    check_keys,
    split_documents,
    strict_boolean,
    target_from_document,
)
from layerwatch.documents import config_object, is_text
from layerwatch.registry.auth import default_docker_config_path
from layerwatch.registry.credhelpers import docker_credentials
from layerwatch.registry.proxies import hop_proxy, proxy_from_document
from layerwatch.registry.tls import check_client_certificate, is_pem_bundle

__all__ = [
    "HOP_KEYS",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "FileSettings",
    "ServeConfig",
    "chain_from_hop_flags",
    "check_proxies",
    "direct_hop_options",
    "load_chain_file",
    "load_serve_config",
    "load_targets_file",
    "read_file",
]

MAX_FILE_BYTES = 4 * 1024 * 1024
"""Largest file read: a serve config of 30,000 targets, or twenty system CA bundles."""
MAX_DEPTH = 64
"""Deepest YAML nesting read; the documents themselves nest five levels at most."""
MAX_NAME = 253
"""Longest chain or target name (a Kubernetes object name's limit)."""
_INT_DIGITS = 32
"""An integer scalar longer than this is refused before Python converts it (and can take long)."""

DOCUMENT_KEYS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
SPEC_KEYS = frozenset({"hops", "interval", "mode", "namespaceSelector", "suspend", "verify", "canary"})
CANARY_FILE_KEYS = frozenset({"username", "password", "dockerConfig"})
"""A chain file's canary may carry its push credentials inline, as a hop does."""
HOP_KEYS = frozenset(
    {
        "name",
        "url",
        "insecureSkipTLSVerify",
        "username",
        "password",
        "dockerConfig",
        "caFile",
        "certFile",
        "keyFile",
        "proxy",
        "provider",
        "secretRef",
        "caSecretRef",
        "certSecretRef",
    }
)
"""What a chain file's hop may say: the ProxyChain fields plus the file-only credentials and CA."""
_FILE_FIELDS = ("dockerConfig", "caFile", "certFile", "keyFile")
_CLUSTER_ONLY = {
    "secretRef": "dockerConfig or username/password",
    "caSecretRef": "caFile",
    "certSecretRef": "certFile/keyFile",
}


@dataclasses.dataclass(frozen=True)
class FileSettings:
    """Defaults every hop gets unless its own document says otherwise."""

    docker_config: Path | None = None
    ca_file: Path | None = None
    insecure: bool = False


def read_file(path: Path, what: str) -> bytes:
    """The bytes of ``path``, or one ``ChainError`` line: unreadable, or over ``MAX_FILE_BYTES``."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ChainError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the path
        raise ChainError(f"cannot read {what} {path}: {exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ChainError(f"{what} {path} is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB")
    return data


def _read_text(path: Path, what: str) -> str:
    data = read_file(path, what)
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise ChainError(f"{what} {path} is not UTF-8 text (invalid byte at offset {exc.start})") from None


def _docker_config(path: Path | None, *, required: bool) -> Mapping[str, Any]:
    path = path or default_docker_config_path()
    if not required:
        with contextlib.suppress(OSError):  # a path we may not even stat: reading it says why
            if not path.exists():
                return {}
    text = _read_text(path, "docker config")
    try:
        return config_object(text)
    except ValueError as exc:
        raise ChainError(f"docker config {path} is {exc}") from None


def _ca_bundle(path: Path) -> str:
    """A CA file's text, refused unless TLS can trust what it holds (never silently no CA)."""
    text = _read_text(path, "CA file")
    if not is_pem_bundle(text):
        raise ChainError(f"CA file {path} holds no PEM certificate")
    return text


@contextlib.contextmanager
def _as_config_error(where: str) -> Iterator[None]:
    """A ``ValueError`` from a parser of the registry package is a configuration error here too."""
    try:
        yield
    except ChainError:
        raise
    except ValueError as exc:
        raise ChainError(f"{where}: {exc}") from None


def _file_path(raw: Mapping[str, Any], field: str, base_dir: Path, where: str) -> Path | None:
    """A hop's ``dockerConfig``/``caFile``/``certFile``/``keyFile``, relative to its file."""
    value = raw.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value or not value.isprintable():
        raise ChainError(f"{where}: {field} must be a file path")
    return base_dir / value


def _hop_options(raw: Mapping[str, Any], base_dir: Path, settings: FileSettings, host: str) -> dict[str, Any]:
    """Credentials and TLS for one hop from its document, falling back to the settings."""
    where = f"hop {raw.get('name')}"
    options: dict[str, Any] = {}
    for field, instead in _CLUSTER_ONLY.items():
        if raw.get(field):
            raise ChainError(f"{where}: {field} needs a cluster; use {instead} here")
    paths = {field: _file_path(raw, field, base_dir, where) for field in _FILE_FIELDS}
    if "username" in raw or "password" in raw:
        username, password = raw.get("username"), raw.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise ChainError(f"{where}: username and password must both be strings")
        options["credentials"] = Credentials(username, password)
    elif paths["dockerConfig"] is not None:
        config = _docker_config(paths["dockerConfig"], required=True)
        with _as_config_error(where):
            options["credentials"] = docker_credentials(config, host)
    elif raw.get("provider") in (None, "generic"):
        config = _docker_config(settings.docker_config, required=settings.docker_config is not None)
        with _as_config_error(where):
            options["credentials"] = docker_credentials(config, host)
    with _as_config_error(where):
        options["proxy"] = proxy_from_document(raw.get("proxy"), where)
    if paths["certFile"] is not None or paths["keyFile"] is not None:
        cert, key = (
            _read_text(path, what) if path is not None else None
            for path, what in ((paths["certFile"], "client certificate"), (paths["keyFile"], "client key"))
        )
        with _as_config_error(where):
            check_client_certificate(cert, key, where)
        options["client_cert_pem"], options["client_key_pem"] = cert, key
    ca_file = paths["caFile"] or settings.ca_file
    if ca_file is not None:
        options["ca_pem"] = _ca_bundle(ca_file)
    options["insecure"] = strict_boolean(raw, "insecureSkipTLSVerify", where) or settings.insecure
    return options


def check_proxies(chain: Chain) -> None:
    """Refuse a chain whose hops the environment sends through a proxy that cannot be used.

    ``HTTPS_PROXY``/``HTTP_PROXY`` are read when a hop is first contacted; read here too, a typo in
    them is a configuration error before any check, never a traceback half-way through one.
    """
    for hop in chain.hops:
        with _as_config_error(f"hop {hop.name}: the environment's {hop.scheme} proxy"):
            hop_proxy(hop)


def _name(value: Any, what: str) -> str:
    """A chain's or target's name: it labels metrics and starts messages, so it must be one word."""
    if not isinstance(value, str) or not value:
        raise ChainError(f"{what} needs metadata.name")
    if len(value) > MAX_NAME or not value.isprintable() or any(c.isspace() for c in value):
        raise ChainError(
            f"{what} name {value[:60]!r} must be at most {MAX_NAME} characters, "
            "without spaces or control characters"
        )
    return value


def _chain(document: Mapping[str, Any], base_dir: Path, settings: FileSettings) -> Chain:
    metadata = document.get("metadata") or {}
    name = _name(metadata.get("name") if isinstance(metadata, Mapping) else None, "ProxyChain")
    spec = document.get("spec")
    if not isinstance(spec, Mapping):
        raise ChainError(f"chain {name}: spec is missing")
    check_keys(document, DOCUMENT_KEYS, f"chain {name}")
    check_keys(spec, SPEC_KEYS, f"chain {name}: spec")
    hops = spec.get("hops")
    options: dict[str, dict[str, Any]] = {}
    if isinstance(hops, Sequence) and not isinstance(hops, str):
        for position, raw in enumerate(hops):
            if isinstance(raw, Mapping):
                check_keys(raw, HOP_KEYS, f"chain {name}: spec.hops[{position}]")
            if (
                isinstance(raw, Mapping)
                and isinstance(raw.get("url"), str)
                and isinstance(raw.get("name"), str)
            ):
                host = Hop.from_url(raw["name"], raw["url"]).host
                options[raw["name"]] = _hop_options(raw, base_dir, settings, host)
    canary = spec.get("canary")
    canary_credentials = None
    if isinstance(canary, Mapping) and isinstance(hops, Sequence) and hops and isinstance(hops[-1], Mapping):
        origin = hops[-1]
        if isinstance(origin.get("url"), str) and isinstance(origin.get("name"), str):
            host = Hop.from_url(origin["name"], origin["url"]).host
            canary_credentials = _canary_credentials(canary, base_dir, host, f"chain {name}: spec.canary")
    chain = chain_from_spec(
        name, spec, hop_options=options, canary_credentials=canary_credentials, canary_keys=CANARY_FILE_KEYS
    )
    check_proxies(chain)
    return chain


def _canary_credentials(raw: Mapping[str, Any], base_dir: Path, host: str, where: str) -> Credentials | None:
    """The canary's push credentials in a chain file: ``username``/``password`` or ``dockerConfig``
    (looked up for the origin's host); none means an anonymous push. Never the hop's own."""
    if raw.get("secretRef"):
        raise ChainError(f"{where}: secretRef needs a cluster; use dockerConfig or username/password here")
    if "username" in raw or "password" in raw:
        username, password = raw.get("username"), raw.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise ChainError(f"{where}: username and password must both be strings")
        return Credentials(username, password)
    path = _file_path(raw, "dockerConfig", base_dir, where)
    if path is None:
        return None
    config = _docker_config(path, required=True)
    with _as_config_error(where):
        return docker_credentials(config, host)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader made total; each refusal is a YAML error naming the line.

    Composing recurses once per level, so depth is bounded before Python's recursion limit is;
    aliases are refused (the documents never need them, and nested aliases can expand a small file
    into billions of nodes); scalar constructors raise whatever ``int()``, ``float()`` and
    ``datetime()`` raise on a tagged or odd scalar, which becomes a YAML error here.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]  # the stubs leave it untyped
        if self.check_event(yaml.AliasEvent):
            raise ComposerError(None, None, "aliases (*name) are not supported", mark)
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if isinstance(node, yaml.ScalarNode):
            if not is_text(node.value):
                raise ConstructorError(None, None, "a \\u escape that is no character", node.start_mark)
            if node.tag == "tag:yaml.org,2002:int" and len(node.value) > _INT_DIGITS:
                raise ConstructorError(None, None, "integer out of range", node.start_mark)
        try:
            value = super().construct_object(node, deep)
        except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as exc:
            raise ConstructorError(None, None, f"cannot read this value ({exc})", node.start_mark) from None
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise ConstructorError(None, None, "integer out of range", node.start_mark)
        return value


def _documents(path: Path) -> list[Any]:
    text = _read_text(path, "file")
    try:
        return list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        raise ChainError(f"{path} is not valid YAML{where}" + (f": {problem}" if problem else "")) from None


def load_chain_file(path: Path, settings: FileSettings) -> Chain:
    """The one ProxyChain document of a ``--chain`` file."""
    chains, targets = split_documents(_documents(path))
    if len(chains) != 1 or targets:
        raise ChainError(f"{path} must hold exactly one ProxyChain document")
    return _chain(chains[0], path.parent, settings)


def chain_from_hop_flags(flags: Sequence[str], settings: FileSettings) -> Chain:
    """A chain from repeated ``--hop NAME=URL`` (edge first, origin last)."""
    hops = []
    for flag in flags:
        name, sep, url = flag.partition("=")
        if not sep:
            raise ChainError(f"--hop {flag!r}: want NAME=URL")
        hops.append({"name": name, "url": url})
    spec = {"hops": hops}
    return _chain({"metadata": {"name": "cli"}, "spec": spec}, Path.cwd(), settings)


def direct_hop_options(host: str, settings: FileSettings) -> dict[str, Any]:
    """Options for the single hop used when no chain is given."""
    return _hop_options({"name": "registry"}, Path.cwd(), settings, host)


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """``layerwatch serve``: chains by name and the targets to watch."""

    chains: Mapping[str, Chain]
    targets: tuple[Target, ...]


def load_targets_file(path: Path, settings: FileSettings) -> ServeConfig:
    """ProxyChain and Target documents as written; a target may still name no chain.

    A target that names no chain gets the first chain whose hops its URL is under, if any.
    """
    chain_docs, target_docs = split_documents(_documents(path))
    chains: dict[str, Chain] = {}
    for document in chain_docs:
        chain = _chain(document, path.parent, settings)
        if chain.name in chains:
            raise ChainError(f"{path}: two ProxyChains named {chain.name}")
        chains[chain.name] = chain
    targets = []
    for document in target_docs:
        target = target_from_document(document)
        _name(target.name, "Target")
        if target.chain is None:
            matching = [c.name for c in chains.values() if c.matches(target.reference)]
            target = dataclasses.replace(target, chain=matching[0] if matching else None)
        elif target.chain not in chains:
            raise ChainError(f"target {target.name}: no ProxyChain named {target.chain}")
        if target.chain is not None:
            chains[target.chain].pull_path(target.reference)  # fail early on a path that cannot map
        targets.append(target)
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ChainError(f"{path}: target names must be unique")
    return ServeConfig(chains, tuple(targets))


def load_serve_config(path: Path, settings: FileSettings) -> ServeConfig:
    """ProxyChain and Target documents; every target must name (or URL-match) a chain."""
    config = load_targets_file(path, settings)
    for target in config.targets:
        if target.chain is None:
            raise ChainError(f"target {target.name}: its URL is under no chain's hop")
    return config
