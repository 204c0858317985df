"""Chains and targets from files: the CLI's ``--chain``/``--hop``/``--targets`` and ``serve --config``.

In a cluster, hop credentials come from Secrets; outside one they come from files: a hop in a
chain file may carry ``dockerConfig: PATH`` or ``username``/``password`` (and ``caFile``,
``certFile``/``keyFile``, ``proxy``, ``provider``), and any hop without its own credentials gets
them from the docker config (``--docker-config``, else ``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``), looked up by the hop's host, helpers and identity tokens included.

Files are read strictly: a key nobody reads is an error with a did-you-mean, because a typo such
as ``usrname:`` would otherwise drop a credential without a word. (In a cluster the apiserver
prunes unknown fields against the CRD schema before layerwatch sees them.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

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
from layerwatch.documents import json_object
from layerwatch.registry.auth import default_docker_config_path
from layerwatch.registry.credhelpers import docker_credentials
from layerwatch.registry.proxies import proxy_from_document
from layerwatch.registry.tls import check_client_certificate

__all__ = [
    "HOP_KEYS",
    "FileSettings",
    "ServeConfig",
    "chain_from_hop_flags",
    "direct_hop_options",
    "load_chain_file",
    "load_serve_config",
    "load_targets_file",
]

DOCUMENT_KEYS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
SPEC_KEYS = frozenset({"hops", "interval", "mode", "namespaceSelector", "suspend", "verify"})
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


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ChainError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _docker_config(path: Path | None, *, required: bool) -> Mapping[str, Any]:
    path = path or default_docker_config_path()
    if not path.exists() and not required:
        return {}
    text = _read_text(path, "docker config")
    try:
        return json_object(text)
    except ValueError as exc:
        raise ChainError(f"docker config {path} is {exc}") from None


def _hop_options(raw: Mapping[str, Any], base_dir: Path, settings: FileSettings, host: str) -> dict[str, Any]:
    """Credentials and TLS for one hop from its document, falling back to the settings."""
    name = raw.get("name")
    options: dict[str, Any] = {}
    for field, instead in _CLUSTER_ONLY.items():
        if raw.get(field):
            raise ChainError(f"hop {name}: {field} needs a cluster; use {instead} here")
    if "username" in raw or "password" in raw:
        username, password = raw.get("username"), raw.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise ChainError(f"hop {name}: username and password must both be strings")
        options["credentials"] = Credentials(username, password)
    elif raw.get("dockerConfig"):
        path = base_dir / str(raw["dockerConfig"])
        options["credentials"] = docker_credentials(_docker_config(path, required=True), host)
    elif raw.get("provider") in (None, "generic"):
        options["credentials"] = docker_credentials(
            _docker_config(settings.docker_config, required=settings.docker_config is not None), host
        )
    options["proxy"] = proxy_from_document(raw.get("proxy"), f"hop {name}")
    if raw.get("certFile") or raw.get("keyFile"):
        cert, key = (
            _read_text(base_dir / str(raw[field]), what) if raw.get(field) else None
            for field, what in (("certFile", "client certificate"), ("keyFile", "client key"))
        )
        check_client_certificate(cert, key, f"hop {name}")
        options["client_cert_pem"], options["client_key_pem"] = cert, key
    ca_file = base_dir / str(raw["caFile"]) if raw.get("caFile") else settings.ca_file
    if ca_file is not None:
        options["ca_pem"] = _read_text(ca_file, "CA file")
    options["insecure"] = strict_boolean(raw, "insecureSkipTLSVerify", f"hop {name}") or settings.insecure
    return options


def _chain(document: Mapping[str, Any], base_dir: Path, settings: FileSettings) -> Chain:
    metadata = document.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        raise ChainError("ProxyChain needs metadata.name")
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
    return chain_from_spec(name, spec, hop_options=options)


def _documents(path: Path) -> list[Any]:
    try:
        return list(yaml.safe_load_all(_read_text(path, "file")))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ChainError(f"{path} is not valid YAML{where}") from None


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
