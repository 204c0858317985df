"""kopf registrations: thin shells that hand everything to the ``OperatorService``.

Nothing here is a timer, daemon or change-detecting handler on OCIRepository: those would put
kopf's finalizer and annotations on Flux's objects. OCIRepositories are only watched (silent
event handlers feeding an in-memory index); the one scheduler task starts at startup. The event
handlers are async so kopf runs them on the event loop, never in its thread pool: the service's
state is then only ever touched by one thread, between awaits. Each
ProxyChain has a daemon whose only job is to say "this replica is active for this chain": kopf
stops daemons when peering pauses the operator, so a standby replica checks and writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from layerwatch.kube.api import FLUX_GROUP, GROUP, VERSION, KubeApi
from layerwatch.kube.service import OperatorOptions, OperatorService
from layerwatch.web import WebServer

logger = logging.getLogger("layerwatch.operator")


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Explicit login: the pod's service account, else ``$KUBECONFIG``; never piggy-backed guesses."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    options: OperatorOptions = memo.options
    # Our own prefixes for whatever kopf stores on our own ProxyChains; none of it touches Flux's objects.
    settings.persistence.finalizer = "layerwatch.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="layerwatch.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="layerwatch.io")
    settings.posting.level = logging.WARNING  # kopf's own k8s events only for real trouble
    settings.peering.lifetime = options.peering_lifetime
    settings.watching.server_timeout = 300  # re-open watches every 5 min, well within kopf's client timeout
    settings.watching.chunk_size = 500  # list 10,000 OCIRepositories in pieces: a lower memory peak at start
    if options.watch_label_selector:
        # Server-side: a shard paired with a source-controller shard never even receives the others.
        settings.watching.label_selectors[FLUX_GROUP, "ocirepositories"] = options.watch_label_selector
    service = OperatorService(KubeApi(), options)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    web = WebServer(service.metrics, lambda: service.chains, healthy=lambda: _alive(task, service))
    await web.start(options.metrics_address, options.metrics_port)
    memo.service, memo.web, memo.stop, memo.task = service, web, stop, task


def _alive(task: asyncio.Task[None], service: OperatorService) -> bool:
    """The scheduler task still runs and its loop turned recently."""
    return not task.done() and service.scheduler.alive()


@kopf.on.probe(id="scheduler")
def scheduler_probe(memo: kopf.Memo, **_: Any) -> str:
    """kopf's liveness endpoint fails (so the pod restarts) when the scheduler has stopped turning."""
    if not _alive(memo.task, memo.service):
        raise RuntimeError("the scheduler loop is not running")
    return "turning"


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.stop.set()
    await asyncio.gather(memo.task, return_exceptions=True)
    await memo.web.stop()
    memo.service.api.close()


@kopf.on.event(FLUX_GROUP, "ocirepositories")
async def ocirepository_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.service.source_event(type, body)


@kopf.on.event(GROUP, VERSION, "proxychains")
async def proxychain_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.service.chain_event(type, body)


@kopf.on.event("", "v1", "namespaces")
async def namespace_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.service.namespace_event(type, body)


@kopf.daemon(GROUP, VERSION, "proxychains", cancellation_timeout=5.0)
async def proxychain_active(name: str, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any) -> None:
    memo.service.set_active(name, True)
    try:
        await stopped.wait()
    finally:
        memo.service.set_active(name, False)
