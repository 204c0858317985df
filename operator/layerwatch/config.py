"""Chains and targets from files: the CLI's ``--chain``/``--hop`` and ``layerwatch serve --config``.

In a cluster, hop credentials come from Secrets; outside one they come from files: a hop in a
chain file may carry ``dockerConfig: PATH`` or ``username``/``password`` (and ``caFile``,
``certFile``/``keyFile``, ``proxy``, ``provider``), and any hop without its own credentials gets
them from the docker config (``--docker-config``, else ``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``), looked up by the hop's host, helpers and identity tokens included.
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
    split_documents,
    target_from_document,
)
from layerwatch.documents import json_object
from layerwatch.registry.auth import default_docker_config_path
from layerwatch.registry.credhelpers import docker_credentials
from layerwatch.registry.proxies import proxy_from_document
from layerwatch.registry.tls import check_client_certificate

__all__ = [
    "FileSettings",
    "ServeConfig",
    "chain_from_hop_flags",
    "direct_hop_options",
    "load_chain_file",
    "load_serve_config",
]


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
    try:
        return json_object(_read_text(path, "docker config"))
    except ValueError as exc:
        raise ChainError(f"docker config {path} is {exc}") from None


def _hop_options(raw: Mapping[str, Any], base_dir: Path, settings: FileSettings, host: str) -> dict[str, Any]:
    """Credentials and TLS for one hop from its document, falling back to the settings."""
    name = raw.get("name")
    options: dict[str, Any] = {}
    if raw.get("secretRef"):
        raise ChainError(f"hop {name}: secretRef needs a cluster; use dockerConfig or username/password here")
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
    options["insecure"] = bool(raw.get("insecureSkipTLSVerify", False)) or settings.insecure
    return options


def _chain(document: Mapping[str, Any], base_dir: Path, settings: FileSettings) -> Chain:
    metadata = document.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        raise ChainError("ProxyChain needs metadata.name")
    spec = document.get("spec")
    if not isinstance(spec, Mapping):
        raise ChainError(f"chain {name}: spec is missing")
    hops = spec.get("hops")
    options: dict[str, dict[str, Any]] = {}
    if isinstance(hops, Sequence) and not isinstance(hops, str):
        for raw in hops:
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


def load_serve_config(path: Path, settings: FileSettings) -> ServeConfig:
    """ProxyChain and Target documents; every target must name (or URL-match) a chain."""
    chain_docs, target_docs = split_documents(_documents(path))
    chains = {}
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
            if not matching:
                raise ChainError(f"target {target.name}: its URL is under no chain's hop")
            target = dataclasses.replace(target, chain=matching[0])
        if target.chain not in chains:
            raise ChainError(f"target {target.name}: no ProxyChain named {target.chain}")
        chains[target.chain].pull_path(target.reference)  # fail early on a path that cannot map
        targets.append(target)
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ChainError(f"{path}: target names must be unique")
    return ServeConfig(chains, tuple(targets))
