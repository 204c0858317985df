"""Talking to the apiserver: OCIRepository status, Events, Secrets, ServiceAccounts, ProxyChain status.

The official ``kubernetes`` client is synchronous, so every call runs in a worker thread. Status
writes are read-modify-write merge patches that carry ``metadata.resourceVersion``: the apiserver
refuses them with 409 when anyone (source-controller, usually) wrote in between, and the write is
redone from a fresh read. Never server-side apply: Flux's conditions list is atomic under SSA.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from layerwatch.chain import ChainError, Credentials, Proxy
from layerwatch.documents import json_object
from layerwatch.kube.conditions import Transition, merge_conditions, now_rfc3339
from layerwatch.registry.auth import credentials_from_docker_config
from layerwatch.registry.proxies import parse_proxy
from layerwatch.registry.tls import check_client_certificate

__all__ = ["KubeApi", "SecretError"]

logger = logging.getLogger("layerwatch.kube")

FLUX_GROUP = "source.toolkit.fluxcd.io"
GROUP, VERSION = "layerwatch.io", "v1alpha1"
_CONFLICT_RETRIES = 8
SECRET_TTL = 60.0
"""Seconds a Secret read is reused: rotation shows within a minute, bursts of re-plans cost one read."""


class SecretError(Exception):
    """A referenced Secret is missing or has no usable keys; the message names it, never its data."""


def load_client_config() -> k8s.ApiClient:
    """In-cluster service account when in a pod, else ``$KUBECONFIG`` (the same identity kopf uses)."""
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    return k8s.ApiClient()


class KubeApi:
    """The operator's apiserver calls; one instance per operator."""

    def __init__(self, api_client: k8s.ApiClient | None = None) -> None:
        self.api_client = api_client or load_client_config()
        self.custom = k8s.CustomObjectsApi(self.api_client)
        self.core = k8s.CoreV1Api(self.api_client)
        self._secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}

    def close(self) -> None:
        self.api_client.close()

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _write(self, harmless: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """A write; False when the apiserver answers ``harmless`` (exists already, or gone)."""
        try:
            await self._call(fn, *args, **kwargs)
        except ApiException as exc:
            if exc.status == harmless:
                return False
            raise
        return True

    # -- OCIRepository condition -----------------------------------------------------------------

    async def write_condition(
        self,
        api_version: str,
        namespace: str,
        name: str,
        desired: Mapping[str, Any],
        known_conditions: Sequence[Mapping[str, Any]] | None = None,
        before_write: Callable[[Sequence[Mapping[str, Any]]], Awaitable[None]] | None = None,
    ) -> bool:
        """Set layerwatch's condition; True when a write happened.

        ``known_conditions`` (from the watch cache) lets an unchanged verdict skip even the read.
        ``before_write`` sees the conditions about to be replaced (to post a transition event
        first: its name is stable, so redoing it after a conflict or a crash cannot duplicate it).
        """
        if (
            known_conditions is not None
            and merge_conditions(known_conditions, desired, now_rfc3339()) is None
        ):
            return False
        version = api_version.rpartition("/")[2]
        for attempt in range(_CONFLICT_RETRIES):
            try:
                body = await self._call(
                    self.custom.get_namespaced_custom_object_status,
                    FLUX_GROUP,
                    version,
                    namespace,
                    "ocirepositories",
                    name,
                )
            except ApiException as exc:
                if exc.status == 404:
                    return False  # deleted meanwhile
                raise
            conditions = (body.get("status") or {}).get("conditions") or []
            merged = merge_conditions(conditions, desired, now_rfc3339())
            if merged is None:
                return False
            if before_write is not None:
                await before_write(conditions)
            patch = {
                "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
                "status": {"conditions": merged},
            }
            try:
                await self._call(
                    self.custom.patch_namespaced_custom_object_status,
                    FLUX_GROUP,
                    version,
                    namespace,
                    "ocirepositories",
                    name,
                    patch,
                    _content_type="application/merge-patch+json",
                )
            except ApiException as exc:
                if exc.status == 409:
                    await asyncio.sleep(random.uniform(0.01, 0.05 * 2**attempt))
                    continue
                if exc.status == 404:
                    return False
                raise
            return True
        logger.warning(
            "gave up writing the condition on %s/%s after %d conflicts", namespace, name, _CONFLICT_RETRIES
        )
        return False

    async def post_event(
        self, api_version: str, namespace: str, name: str, uid: str, event: Transition, *, repeat_after: float
    ) -> bool:
        """Post the transition's Event; False when this very transition was posted already.

        The name is stable per transition, so a restart redoing one meets its own event (409) and
        posts nothing. The same transition can also truly happen again later (an unhealthy reason
        flapping back and forth): when the existing event is older than ``repeat_after`` seconds,
        its ``count`` goes up instead, the way the apiserver aggregates repeated events.
        """
        now = datetime.datetime.now(datetime.UTC)
        body = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(name=event.name, namespace=namespace),
            involved_object=k8s.V1ObjectReference(
                api_version=api_version, kind="OCIRepository", name=name, namespace=namespace, uid=uid
            ),
            type=event.type,
            reason=event.reason,
            message=event.message,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=k8s.V1EventSource(component="layerwatch"),
            reporting_component="layerwatch.io/operator",
            reporting_instance="layerwatch",
        )
        if await self._write(409, self.core.create_namespaced_event, namespace, body):
            return True
        existing = await self._call(self.core.read_namespaced_event, event.name, namespace)
        last = existing.last_timestamp or existing.first_timestamp
        if last is not None and (now - last).total_seconds() < repeat_after:
            return False
        patch = {
            "count": (existing.count or 1) + 1,
            "lastTimestamp": now.isoformat(),
            "message": event.message,
        }
        return await self._write(404, self.core.patch_namespaced_event, event.name, namespace, patch)

    # -- ProxyChain status -------------------------------------------------------------------------

    async def write_chain_status(
        self, name: str, status: Mapping[str, Any], known: Mapping[str, Any] | None
    ) -> bool:
        if known is not None and all(known.get(k) == v for k, v in status.items()):
            return False
        return await self._write(
            404,
            self.custom.patch_cluster_custom_object_status,
            GROUP,
            VERSION,
            "proxychains",
            name,
            {"status": dict(status)},
            _content_type="application/merge-patch+json",
        )

    # -- Secrets -----------------------------------------------------------------------------------

    async def _secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's decoded data, read at most once per SECRET_TTL (re-plans read many)."""
        key = (namespace, name)
        cached = self._secrets.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            secret = await self._call(self.core.read_namespaced_secret, name, namespace)
        except ApiException as exc:
            raise SecretError(f"Secret {namespace}/{name}: HTTP {exc.status}") from None
        data: dict[str, str] = {}
        for key, value in (secret.data or {}).items():
            try:
                data[key] = base64.b64decode(value).decode()
            except (ValueError, UnicodeDecodeError):
                continue
        self._secrets[key] = (time.monotonic() + SECRET_TTL, data)
        return data

    async def credentials(self, namespace: str, name: str, host: str) -> Credentials | None:
        """Credentials for ``host`` from a dockerconfigjson or basic-auth Secret."""
        data = await self._secret_data(namespace, name)
        if ".dockerconfigjson" in data:
            try:
                config = json_object(data[".dockerconfigjson"])
            except ValueError as exc:
                raise SecretError(f"Secret {namespace}/{name}: .dockerconfigjson is {exc}") from None
            return credentials_from_docker_config(config, host)
        if "username" in data and "password" in data:
            return Credentials(data["username"], data["password"])
        raise SecretError(f"Secret {namespace}/{name}: neither .dockerconfigjson nor username/password")

    async def service_account_credentials(self, namespace: str, name: str, host: str) -> Credentials | None:
        """Credentials for ``host`` from a ServiceAccount's imagePullSecrets, in order (as Flux does)."""
        try:
            account = await self._call(self.core.read_namespaced_service_account, name, namespace)
        except ApiException as exc:
            raise SecretError(f"ServiceAccount {namespace}/{name}: HTTP {exc.status}") from None
        for ref in account.image_pull_secrets or ():
            try:
                found = await self.credentials(namespace, ref.name, host)
            except SecretError as exc:
                logger.debug("ServiceAccount %s/%s: %s", namespace, name, exc)
                continue
            if found is not None:
                return found
        return None

    async def proxy(self, namespace: str, name: str, address: str | None = None) -> Proxy:
        """A proxy from a Secret: ``address`` (unless the chain gives it), ``username``, ``password``."""
        data = await self._secret_data(namespace, name)
        where = f"Secret {namespace}/{name}"
        try:
            return parse_proxy(
                address or data.get("address"), where, data.get("username"), data.get("password")
            )
        except ChainError as exc:
            raise SecretError(str(exc)) from None

    async def client_certificate(self, namespace: str, name: str) -> dict[str, str]:
        """Hop options from a TLS Secret: ``tls.crt``/``tls.key`` (checked) and ``ca.crt`` when present."""
        data = await self._secret_data(namespace, name)
        where = f"Secret {namespace}/{name}"
        options: dict[str, str] = {}
        if "ca.crt" in data:
            options["ca_pem"] = data["ca.crt"]
        if "tls.crt" in data or "tls.key" in data:
            try:
                check_client_certificate(data.get("tls.crt"), data.get("tls.key"), where)
            except ChainError as exc:
                raise SecretError(str(exc)) from None
            options["client_cert_pem"], options["client_key_pem"] = data["tls.crt"], data["tls.key"]
        if not options:
            raise SecretError(f"{where}: none of tls.crt, tls.key, ca.crt")
        return options

    async def ca_pem(self, namespace: str, name: str) -> str:
        data = await self._secret_data(namespace, name)
        for key in ("ca.crt", "caFile"):
            if key in data:
                return data[key]
        raise SecretError(f"Secret {namespace}/{name}: no ca.crt key")
