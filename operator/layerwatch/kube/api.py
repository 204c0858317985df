"""Talking to the apiserver: OCIRepository status, Events, Secrets, ServiceAccounts, ProxyChain status.

The official ``kubernetes`` client is synchronous, so every call runs in a worker thread. Status
writes are read-modify-write merge patches that carry ``metadata.resourceVersion``: the apiserver
refuses them with 409 when anyone (source-controller, usually) wrote in between, and the write is
redone from a fresh read. Never server-side apply: Flux's conditions list is atomic under SSA.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import logging
import random
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from layerwatch.chain import ChainError, Credentials, Proxy
from layerwatch.documents import json_object
from layerwatch.kube.conditions import Transition, merge_conditions, now_rfc3339
from layerwatch.registry.auth import credentials_from_docker_config
from layerwatch.registry.proxies import parse_proxy
from layerwatch.registry.tls import check_client_certificate, is_pem_bundle

__all__ = ["SECRET_REFRESH", "KubeApi", "SecretError", "is_pem_bundle"]

logger = logging.getLogger("layerwatch.kube")

FLUX_GROUP = "source.toolkit.fluxcd.io"
GROUP, VERSION = "layerwatch.io", "v1alpha1"
_CONFLICT_RETRIES = 8
SECRET_REFRESH = 45.0
"""Seconds between re-reads of the referenced Secrets: a change counts within a minute, and one
Secret costs fewer than 7 reads per default 5 minute interval."""


SECRET_MISSING, SECRET_UNREADABLE, INVALID_SECRET, INVALID_CA = (
    "SecretMissing",
    "SecretUnreadable",
    "InvalidSecret",
    "InvalidCA",
)
"""Why a referenced Secret cannot be used; the ProxyChain's ``Ready=False`` reason says which."""
REQUEST_TIMEOUT = (5.0, 30.0)
"""Seconds to connect and to read an apiserver answer: no call can hold up a re-plan or shutdown."""

_SecretState = dict[str, str | None] | tuple[str, str]
"""A cached Secret: its decoded data (None: a value that is not text), or (reason, message)."""
MAX_SECRET_BYTES = 1024 * 1024
"""A Secret larger than this (the apiserver's own limit) is refused before it is decoded."""
_MAX_ENCODED = 4 * -(-MAX_SECRET_BYTES // 3)
_OBJECT_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?\Z")


class SecretError(Exception):
    """A referenced Secret is missing or has no usable keys; the message names it, never its data."""

    def __init__(self, message: str, *, reason: str = SECRET_MISSING) -> None:
        super().__init__(message)
        self.reason = reason


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
        self._secrets: dict[tuple[str, str], _SecretState] = {}
        self._secrets_used: set[tuple[str, str]] = set()

    def close(self) -> None:
        self.api_client.close()

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
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

    async def _read_secret(self, namespace: str, name: str) -> _SecretState:
        """One ``get`` of a Secret by name: its decoded data, or why it cannot be used.

        A value that is not base64 of UTF-8 text is kept as None (its key exists, its text does
        not), so a parser can say which key is wrong; a Secret over MAX_SECRET_BYTES is refused
        before anything of it is decoded.
        """
        try:
            where = _object_name("Secret", namespace, name)
        except SecretError as exc:
            return (exc.reason, str(exc))
        try:
            secret = await self._call(self.core.read_namespaced_secret, name, namespace)
        except ApiException as exc:
            reason = SECRET_MISSING if exc.status == 404 else SECRET_UNREADABLE
            return (reason, f"{where}: HTTP {exc.status}")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return (SECRET_UNREADABLE, f"{where}: the apiserver did not answer ({type(exc).__name__})")
        raw = secret.data if isinstance(secret.data, Mapping) else {}
        if sum(len(str(k)) + (len(v) if isinstance(v, str) else 0) for k, v in raw.items()) > _MAX_ENCODED:
            return (INVALID_SECRET, f"{where}: larger than {MAX_SECRET_BYTES // 1024} KiB")
        data: dict[str, str | None] = {}
        for field, value in raw.items():
            try:
                data[str(field)] = base64.b64decode(value, validate=True).decode()
            except (TypeError, ValueError):  # not a string, not base64 (binascii.Error), not UTF-8
                data[str(field)] = None
        return data

    async def _secret_data(self, namespace: str, name: str) -> dict[str, str | None]:
        """A Secret's decoded data from the cache, read once on a miss (a plan reads many)."""
        key = (namespace, name)
        self._secrets_used.add(key)
        if key not in self._secrets:
            self._secrets[key] = await self._read_secret(namespace, name)
        state = self._secrets[key]
        if isinstance(state, tuple):
            raise SecretError(state[1], reason=state[0])
        return state

    async def _secret_texts(self, namespace: str, name: str, keys: Sequence[str]) -> dict[str, str]:
        """The Secret's values under ``keys`` that it has; a key whose value is not text is an error."""
        data = await self._secret_data(namespace, name)
        texts: dict[str, str] = {}
        for key in keys:
            if key in data:
                value = data[key]
                if value is None:
                    raise SecretError(
                        f"Secret {namespace}/{name}: {key} is not base64 of UTF-8 text", reason=INVALID_SECRET
                    )
                texts[key] = value
        return texts

    def begin_plan(self) -> None:
        """A plan starts: the Secrets it asks for are the ones ``refresh_secrets`` keeps current."""
        self._secrets_used = set()

    async def refresh_secrets(self) -> bool:
        """Re-read, by name, every Secret the last plan used; True when any of them changed.

        Cheap enough to run every SECRET_REFRESH seconds (one ``get`` per referenced Secret), so a
        fixed password or a rotated robot token counts within a minute; Secrets no plan uses any
        more leave the cache.
        """
        used = set(self._secrets_used)
        for key in [k for k in self._secrets if k not in used]:
            del self._secrets[key]
        changed = False
        for key in used:
            fresh = await self._read_secret(*key)
            if self._secrets.get(key) != fresh:
                self._secrets[key] = fresh
                changed = True
        return changed

    async def credentials(self, namespace: str, name: str, host: str) -> Credentials | None:
        """Credentials for ``host`` from a dockerconfigjson or basic-auth Secret."""
        where = f"Secret {namespace}/{name}"
        data = await self._secret_texts(namespace, name, (".dockerconfigjson", "username", "password"))
        if ".dockerconfigjson" in data:
            try:
                config = json_object(data[".dockerconfigjson"])
            except ValueError as exc:
                raise SecretError(f"{where}: .dockerconfigjson is {exc}", reason=INVALID_SECRET) from None
            with _invalid_secret():
                return credentials_from_docker_config(config, host, f"{where}: .dockerconfigjson")
        if "username" in data and "password" in data:
            return Credentials(data["username"], data["password"])
        raise SecretError(f"{where}: neither .dockerconfigjson nor username/password", reason=INVALID_SECRET)

    async def service_account_credentials(self, namespace: str, name: str, host: str) -> Credentials | None:
        """Credentials for ``host`` from a ServiceAccount's imagePullSecrets, in order (as Flux does).

        A pull Secret that is missing or unreadable is passed over (logged at debug); one that
        exists but cannot be parsed is an error, never a silent anonymous check.
        """
        where = _object_name("ServiceAccount", namespace, name)
        try:
            account = await self._call(self.core.read_namespaced_service_account, name, namespace)
        except ApiException as exc:
            raise SecretError(f"{where}: HTTP {exc.status}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SecretError(
                f"{where}: the apiserver did not answer ({type(exc).__name__})", reason=SECRET_UNREADABLE
            ) from None
        for ref in account.image_pull_secrets or ():
            if not getattr(ref, "name", None):
                continue  # an empty reference names nothing to use
            try:
                found = await self.credentials(namespace, ref.name, host)
            except SecretError as exc:
                if exc.reason == INVALID_SECRET:
                    raise
                logger.debug("%s: %s", where, exc)
                continue
            if found is not None:
                return found
        return None

    async def proxy(self, namespace: str, name: str, address: str | None = None) -> Proxy:
        """A proxy from a Secret: ``address`` (unless the chain gives it), ``username``, ``password``."""
        data = await self._secret_texts(namespace, name, ("address", "username", "password"))
        with _invalid_secret():
            return parse_proxy(
                address or data.get("address"),
                f"Secret {namespace}/{name}",
                data.get("username"),
                data.get("password"),
            )

    async def client_certificate(self, namespace: str, name: str) -> dict[str, str]:
        """Hop options from a TLS Secret: ``tls.crt``/``tls.key`` (checked) and ``ca.crt`` when present."""
        data = await self._secret_texts(namespace, name, ("ca.crt", "tls.crt", "tls.key"))
        where = f"Secret {namespace}/{name}"
        options: dict[str, str] = {}
        if "ca.crt" in data:
            options["ca_pem"] = _checked_ca(data["ca.crt"], where)
        if "tls.crt" in data or "tls.key" in data:
            with _invalid_secret():
                check_client_certificate(data.get("tls.crt"), data.get("tls.key"), where)
            options["client_cert_pem"], options["client_key_pem"] = data["tls.crt"], data["tls.key"]
        if not options:
            raise SecretError(f"{where}: none of tls.crt, tls.key, ca.crt", reason=INVALID_SECRET)
        return options

    async def ca_pem(self, namespace: str, name: str) -> str:
        """The Secret's CA bundle, refused unless it holds at least one PEM certificate."""
        data = await self._secret_texts(namespace, name, ("ca.crt", "caFile"))
        pem = next((data[key] for key in ("ca.crt", "caFile") if key in data), None)
        if pem is None:
            raise SecretError(f"Secret {namespace}/{name}: no ca.crt key", reason=INVALID_SECRET)
        return _checked_ca(pem, f"Secret {namespace}/{name}")


@contextlib.contextmanager
def _invalid_secret() -> Iterator[None]:
    """A parser's ChainError about what a Secret holds is that Secret's ``InvalidSecret``."""
    try:
        yield
    except ChainError as exc:
        raise SecretError(str(exc), reason=INVALID_SECRET) from None


def _checked_ca(pem: str, where: str) -> str:
    if not is_pem_bundle(pem):
        raise SecretError(f"{where}: ca.crt is not a PEM CA bundle", reason=INVALID_CA)
    return pem


def _object_name(kind: str, namespace: object, name: object) -> str:
    """``Kind namespace/name`` for messages, or a SecretError when either is not a valid name.

    Names come from tenants' specs; one that no object can have is refused before any request,
    so it never reaches a URL, and a message shows it quoted, bounded, on one line.
    """

    def valid(value: object) -> bool:
        return isinstance(value, str) and len(value) <= 253 and bool(_OBJECT_NAME.match(value))

    if valid(namespace) and valid(name):
        return f"{kind} {namespace}/{name}"
    shown = "/".join(str(v) if valid(v) else repr(v)[:80] for v in (namespace, name))
    raise SecretError(f"{kind} {shown}: not a valid object name", reason=INVALID_SECRET)
