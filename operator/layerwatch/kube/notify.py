"""Flux notifications: layerwatch's transitions posted to notification-controller's event receiver.

Flux users route alerts through notification-controller: an ``Alert`` selects events by the
involved object (``OCIRepository``, a name or ``*``) and severity and hands them to a
``Provider`` (Slack, Teams, PagerDuty, a generic webhook). notification-controller never reads
Kubernetes Events; the Flux controllers POST each event to its receiver as well. This module does
the same for the events layerwatch posts on an OCIRepository, so an existing ``Alert`` on
OCIRepository sources forwards "layer lost at core" and "recovered" too.

The payload is what Flux's own recorder (fluxcd/pkg ``runtime/events``) sends, an
``event.toolkit.fluxcd.io/v1beta1`` Event: the OCIRepository as ``involvedObject``, ``severity``
``error`` for a Warning and ``info`` for a Normal event, the verdict as ``reason``, the one-line
message, and ``metadata`` keys prefixed with the object's API group (notification-controller drops
every other key and strips the prefix before a Provider sees them). Delivery follows the
recorder too: a 5 s timeout, a few retries with backoff on connection errors and 5xx, and a 429
taken as notification-controller discarding a duplicate. Posting runs in the background: a slow
or absent receiver never delays a condition write, and a failure is logged, never raised.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

import httpx

from layerwatch.kube.conditions import Transition
from layerwatch.kube.targets import FluxSource
from layerwatch.store import TargetStatus

__all__ = ["FluxNotifier", "add_arguments", "flux_event"]

logger = logging.getLogger("layerwatch.notify")

ENV = "LAYERWATCH_NOTIFICATION_ADDRESS"
REPORTING_CONTROLLER = "layerwatch"
TIMEOUT = 5.0
"""Seconds per POST, as Flux's recorder."""
RETRIES = 4
"""Extra attempts on connection errors and 5xx (Flux's recorder: retryablehttp's default of 4)."""
BACKOFF = 1.0
"""Seconds before the first retry; doubles each time."""
_SEVERITY = {"Warning": "error", "Normal": "info"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--notification-address",
        default=os.environ.get(ENV) or None,
        metavar="URL",
        help="Flux notification-controller's event receiver, e.g. "
        "http://notification-controller.flux-system.svc.cluster.local./ (default: off)",
    )


def flux_event(
    source: FluxSource,
    transition: Transition,
    status: TargetStatus | None,
    *,
    instance: str,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The event.toolkit.fluxcd.io/v1beta1 Event for one transition of an OCIRepository."""
    group = source.api_version.partition("/")[0]
    metadata: dict[str, str] = {}
    if source.revision:
        metadata["revision"] = source.revision
    if status is not None:
        metadata["chain"] = status.chain
        judgement = status.result.judgement if status.result is not None else None
        if judgement is not None:
            metadata["verdict"] = judgement.verdict.value
            if judgement.blame:
                metadata["hop"] = judgement.blame
    timestamp = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    return {
        "involvedObject": {
            "kind": "OCIRepository",
            "namespace": source.namespace,
            "name": source.name,
            "uid": source.uid,
            "apiVersion": source.api_version,
        },
        "severity": _SEVERITY.get(transition.type, "info"),
        "timestamp": timestamp.isoformat().replace("+00:00", "Z"),
        "message": transition.message,
        "reason": transition.reason,
        "metadata": {f"{group}/{key}": value for key, value in metadata.items()},
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": instance,
    }


@dataclasses.dataclass
class FluxNotifier:
    """Posts events to one receiver address in background tasks; ``aclose`` waits for them."""

    address: str
    client: httpx.AsyncClient = dataclasses.field(
        default_factory=lambda: httpx.AsyncClient(timeout=TIMEOUT, trust_env=False)
    )
    backoff: float = BACKOFF
    instance: str = dataclasses.field(
        default_factory=lambda: os.environ.get("POD_NAME") or socket.gethostname()
    )
    _tasks: set[asyncio.Task[bool]] = dataclasses.field(default_factory=set)

    def notify(self, source: FluxSource, transition: Transition, status: TargetStatus | None) -> None:
        """Post the transition's event without waiting for it."""
        task = asyncio.get_running_loop().create_task(
            self.post(flux_event(source, transition, status, instance=self.instance))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def post(self, event: Mapping[str, Any]) -> bool:
        """True when the receiver accepted the event; False when it was a duplicate or never got it."""
        involved = event["involvedObject"]
        who = f"OCIRepository {involved['namespace']}/{involved['name']}"
        problem = ""
        for attempt in range(RETRIES + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = await self.client.post(self.address, json=dict(event))
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if response.status_code == 429:
                logger.debug("notification-controller discarded a duplicate event for %s", who)
                return False
            if response.is_success:
                return True
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500:
                break
        where = httpx.URL(self.address).copy_with(userinfo=b"")
        logger.warning("could not post the %s event for %s to %s: %s", event["reason"], who, where, problem)
        return False

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2 * TIMEOUT)
        await self.client.aclose()
