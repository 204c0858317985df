"""``layerwatch check --kube``: OCIRepositories and their ProxyChain read from the cluster, checked here.

The command a Flux user reaches for while debugging. The same code as the operator decides which
chain, which ref and which credentials apply (``targets.select`` and the operator service's
chain and watch planning), but it runs once, locally, as the user of the current kubeconfig.
A credentials or CA Secret the user may not read is reported and skipped: that hop is then
checked without it. An OCIRepository setting that cannot be used (a proxy or certificate Secret)
stops the check with the reason, as it stops source-controller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import urllib3
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from layerwatch.chain import Chain, ChainError, Credentials
from layerwatch.kube.api import FLUX_GROUP, GROUP, VERSION, KubeApi, SecretError, load_client_config
from layerwatch.kube.service import OUTSIDE_SCOPE, OperatorOptions, OperatorService
from layerwatch.kube.targets import FluxSource, select
from layerwatch.scheduler import Watch

__all__ = ["parse_name", "watches_from_cluster"]

Warn = Callable[[str], None]
_KINDS = frozenset({"ocirepository", "ocirepositories", "ocirepo", "ocirepository.source.toolkit.fluxcd.io"})
_FLUX_VERSIONS = ("v1", "v1beta2")


def parse_name(text: str) -> str:
    """``ocirepository/NAME`` (kubectl's spellings) or a bare ``NAME``: the object's name."""
    kind, slash, name = text.rpartition("/")
    if slash and kind.lower() not in _KINDS:
        raise ChainError(f"{text!r}: --kube checks OCIRepositories; write ocirepository/NAME")
    if not name:
        raise ChainError(f"{text!r}: no name after the slash")
    return name


class _ReadableSecretsOnly(KubeApi):
    """The operator's Secret reading, but a Secret this user cannot use is a warning, not a failure."""

    def __init__(self, api_client: Any, warn: Warn) -> None:
        super().__init__(api_client)
        self._warn = warn

    async def credentials(self, namespace: str, name: str, host: str) -> Credentials | None:
        try:
            return await super().credentials(namespace, name, host)
        except SecretError as exc:
            self._warn(f"{exc}; checking {host} without these credentials")
            return None

    async def ca_pem(self, namespace: str, name: str) -> str:
        try:
            return await super().ca_pem(namespace, name)
        except SecretError as exc:
            self._warn(f"{exc}; checking with the system's CA bundle")
            return ""


def _current_namespace() -> str:
    try:
        _, active = k8s_config.list_kube_config_contexts()
    except (k8s_config.ConfigException, OSError):
        return "default"
    return str((active or {}).get("context", {}).get("namespace") or "default")


def _refused(what: str, exc: ApiException) -> ChainError:
    reason = "not allowed" if exc.status == 403 else f"HTTP {exc.status}"
    return ChainError(f"cannot read {what} from the cluster: {reason}")


async def _ocirepository(api: KubeApi, namespace: str, name: str) -> Mapping[str, Any]:
    read = api.custom.get_namespaced_custom_object
    for version in _FLUX_VERSIONS:
        try:
            body: Any = await asyncio.to_thread(read, FLUX_GROUP, version, namespace, "ocirepositories", name)
        except ApiException as exc:
            if exc.status == 404:
                continue
            raise _refused(f"ocirepository {namespace}/{name}", exc) from None
        return dict(body)
    raise ChainError(f"ocirepository {namespace}/{name} not found")


async def _chains(service: OperatorService, api: KubeApi, warn: Warn) -> list[Chain]:
    try:
        listed: Any = await asyncio.to_thread(
            api.custom.list_cluster_custom_object, GROUP, VERSION, "proxychains"
        )
    except ApiException as exc:
        raise _refused("ProxyChains", exc) from None
    chains = []
    for body in listed.get("items") or ():
        name = str((body.get("metadata") or {}).get("name", ""))
        try:
            chains.append(await service.plan_chain(name, body))
        except (ChainError, SecretError) as exc:
            warn(f"ProxyChain {name} skipped: {exc}")
        except Exception as exc:  # a parser's odd error: the text may quote a Secret, the type does not
            warn(f"ProxyChain {name} skipped: a setting cannot be used ({type(exc).__name__})")
    return sorted(chains, key=lambda c: c.name)


async def _namespace_labels(api: KubeApi, namespace: str, warn: Warn) -> Mapping[str, str] | None:
    try:
        found = await asyncio.to_thread(api.core.read_namespace, namespace)
    except ApiException as exc:
        warn(f"cannot read namespace {namespace} (HTTP {exc.status}): namespaceSelectors see no labels")
        return None
    return dict((found.metadata.labels if found.metadata else None) or {})


async def watches_from_cluster(names: Sequence[str], namespace: str | None, *, warn: Warn) -> list[Watch]:
    """One ``Watch`` per OCIRepository, as the operator would plan it; ChainError says why not."""
    wanted = [parse_name(text) for text in names]
    try:
        api_client = load_client_config()
    except Exception as exc:  # ConfigException, a broken kubeconfig file: both mean "no cluster"
        raise ChainError(f"no usable cluster configuration: {str(exc).splitlines()[0]}") from None
    api = _ReadableSecretsOnly(api_client, warn)
    try:
        return await _watches(api, wanted, namespace or _current_namespace(), warn)
    except urllib3.exceptions.HTTPError as exc:  # refused, DNS, TLS: the apiserver never answered
        reason = str(getattr(exc, "reason", None) or exc).splitlines()[0][:200]
        raise ChainError(f"cannot reach the cluster at {api_client.configuration.host}: {reason}") from None
    finally:
        api.close()


async def _watches(
    api: _ReadableSecretsOnly, wanted: Sequence[str], namespace: str, warn: Warn
) -> list[Watch]:
    """What ``watches_from_cluster`` returns, once the API client exists."""
    service = OperatorService(api, OperatorOptions())
    chains = await _chains(service, api, warn)
    labels = await _namespace_labels(api, namespace, warn)
    watches = []
    for name in wanted:
        source = FluxSource.from_body(await _ocirepository(api, namespace, name))
        selection = select(source, chains, labels)
        where = f"ocirepository {namespace}/{name}"
        if selection.target is None or selection.chain is None:
            raise ChainError(f"{where} is not watched by layerwatch: {selection.skipped}")
        watch = await service.plan_watch(source, selection, ready=True)
        if watch.pending and watch.pending == selection.pending:
            raise ChainError(f"{where}: nothing to check yet: {watch.pending}")
        if watch.pending:
            raise ChainError(f"{where} cannot be checked as source-controller pulls it: {watch.pending}")
        if not selection.in_scope:
            warn(OUTSIDE_SCOPE.format(chain=watch.chain.name))
        watches.append(watch)
    return watches
