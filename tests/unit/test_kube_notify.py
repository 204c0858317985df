"""Flux notifications: the event notification-controller receives, and delivery when it misbehaves.

A fake receiver (an aiohttp server on loopback) records what it is sent, and answers what each
test tells it to: 202 as notification-controller does, 429 for a duplicate, 5xx, or nothing at
all (a closed port).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from layerwatch.chain import Target
from layerwatch.kube.api import KubeApi
from layerwatch.kube.conditions import Transition, desired_condition, transition
from layerwatch.kube.main import _parser
from layerwatch.kube.notify import FluxNotifier, flux_event
from layerwatch.kube.service import OperatorOptions, OperatorService
from layerwatch.kube.targets import FluxSource
from layerwatch.observation import BlobStatus
from layerwatch.store import ResultStore, TargetStatus

from .builders import CHAIN, REFERENCE, check_result, healthy_chain, observe, oci_repository

REVISION = "v1@sha256:" + "ab" * 32
SOURCE = FluxSource.from_body(oci_repository(revision=REVISION))
MISSING = {0: (BlobStatus.MISSING, "missing (404)")}


def lost_at_core() -> TargetStatus:
    target = Target(name="app", reference=REFERENCE, chain=CHAIN.name, namespace="team-a")
    store = ResultStore()
    store.put(
        TargetStatus(
            target,
            CHAIN.name,
            check_result([observe(0, blobs=MISSING), observe(1, blobs=MISSING), observe(2)]),
        )
    )
    status = store.get(target.key)
    assert status is not None
    return status


def warning(status: TargetStatus) -> Transition:
    assert status.result is not None
    desired = desired_condition(status.result.judgement, 3)
    event = transition(SOURCE.namespace, SOURCE.name, SOURCE.uid, [], desired)
    assert event is not None
    return event


@dataclasses.dataclass
class Receiver:
    url: str
    events: list[dict[str, Any]]
    headers: list[dict[str, str]]
    answers: list[int]
    """Status codes to answer, in order; 202 once they run out."""


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver("", [], [], [])

    async def handle(request: web.Request) -> web.Response:
        state.events.append(await request.json())
        state.headers.append(dict(request.headers))
        return web.Response(status=state.answers.pop(0) if state.answers else 202)

    app = web.Application()
    app.router.add_post("/", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url("/"))
    yield state
    await server.close()


def notifier(url: str) -> FluxNotifier:
    return FluxNotifier(url, backoff=0.01, instance="layerwatch-0")


def test_the_event_is_what_flux_controllers_post_for_an_ocirepository() -> None:
    status = lost_at_core()
    now = dt.datetime(2026, 12, 1, 9, 30, 0, 123456, tzinfo=dt.UTC)
    event = flux_event(SOURCE, warning(status), status, instance="layerwatch-0", now=now)
    assert event["involvedObject"] == {
        "kind": "OCIRepository",
        "namespace": "team-a",
        "name": "app",
        "uid": "uid-team-a-app",
        "apiVersion": "source.toolkit.fluxcd.io/v1",
    }
    assert event["severity"] == "error"
    assert event["reason"] == "LayerMissing"
    assert event["message"].startswith("hop core (b.example/p-ghcr/org/app): layer 0 sha256:")
    assert event["timestamp"] == "2026-12-01T09:30:00Z"
    assert event["reportingController"] == "layerwatch"
    assert event["reportingInstance"] == "layerwatch-0"
    # notification-controller keeps only keys prefixed with the object's group, and strips it.
    assert event["metadata"] == {
        "source.toolkit.fluxcd.io/revision": REVISION,
        "source.toolkit.fluxcd.io/chain": "corp",
        "source.toolkit.fluxcd.io/verdict": "LayerMissing",
        "source.toolkit.fluxcd.io/hop": "core",
    }
    assert not [key for key in event["metadata"] if key.endswith(("/digest", "/checksum", "/token"))]


def test_a_recovery_is_an_info_event_without_a_blamed_hop() -> None:
    target = Target(name="app", reference=REFERENCE, chain=CHAIN.name, namespace="team-a")
    healthy = TargetStatus(target, CHAIN.name, check_result(healthy_chain()))
    recovered = Transition("Normal", "ProxyRecovered", "hop edge (...): manifest verified", "x")
    event = flux_event(SOURCE, recovered, healthy, instance="i")
    assert (event["severity"], event["reason"]) == ("info", "ProxyRecovered")
    assert "source.toolkit.fluxcd.io/hop" not in event["metadata"]
    assert event["metadata"]["source.toolkit.fluxcd.io/verdict"] == "Healthy"


def test_a_v1beta2_object_keeps_its_api_version() -> None:
    source = FluxSource.from_body(oci_repository(api_version="source.toolkit.fluxcd.io/v1beta2"))
    status = lost_at_core()
    event = flux_event(source, warning(status), None, instance="i")
    assert event["involvedObject"]["apiVersion"] == "source.toolkit.fluxcd.io/v1beta2"
    assert event["metadata"] == {}, "no revision before Flux resolved one, no result: no metadata"


async def test_one_event_is_posted_as_json(receiver: Receiver) -> None:
    sink = notifier(receiver.url)
    status = lost_at_core()
    sink.notify(SOURCE, warning(status), status)
    await sink.aclose()
    (event,) = receiver.events
    assert event["reason"] == "LayerMissing" and event["involvedObject"]["name"] == "app"
    assert receiver.headers[0]["Content-Type"] == "application/json"


async def test_5xx_and_connection_trouble_are_retried(receiver: Receiver) -> None:
    receiver.answers = [503, 500]
    status = lost_at_core()
    assert await notifier(receiver.url).post(flux_event(SOURCE, warning(status), status, instance="i"))
    assert len(receiver.events) == 3


async def test_a_duplicate_refused_with_429_is_not_retried(receiver: Receiver) -> None:
    receiver.answers = [429]
    status = lost_at_core()
    assert not await notifier(receiver.url).post(flux_event(SOURCE, warning(status), status, instance="i"))
    assert len(receiver.events) == 1


async def test_a_4xx_is_given_up_at_once_and_logged(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answers = [400]
    status = lost_at_core()
    with caplog.at_level(logging.WARNING, "layerwatch.notify"):
        assert not await notifier(receiver.url).post(
            flux_event(SOURCE, warning(status), status, instance="i")
        )
    assert len(receiver.events) == 1
    assert "could not post the LayerMissing event for OCIRepository team-a/app" in caplog.text
    assert "HTTP 400" in caplog.text


async def test_an_absent_receiver_costs_a_log_line_never_an_exception(
    unused_tcp_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    sink = notifier(f"http://user:secret@127.0.0.1:{unused_tcp_port}/")
    status = lost_at_core()
    with caplog.at_level(logging.WARNING, "layerwatch.notify"):
        sink.notify(SOURCE, warning(status), status)
        await sink.aclose()
    assert "could not post the LayerMissing event" in caplog.text
    assert "ConnectError" in caplog.text
    assert "secret" not in caplog.text


async def test_notify_does_not_wait_for_a_slow_receiver() -> None:
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(30)
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/", slow)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    sink = notifier(str(server.make_url("/")))
    status = lost_at_core()
    loop = asyncio.get_running_loop()
    before = loop.time()
    sink.notify(SOURCE, warning(status), status)
    assert loop.time() - before < 0.5
    await asyncio.wait_for(started.wait(), 5)
    await sink.client.aclose()
    await server.close()


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, None),
        ([], {"LAYERWATCH_NOTIFICATION_ADDRESS": "http://nc.flux-system/"}, "http://nc.flux-system/"),
        (
            ["--notification-address", "http://flag/"],
            {"LAYERWATCH_NOTIFICATION_ADDRESS": "http://env/"},
            "http://flag/",
        ),
    ],
)
def test_the_operator_flag_wins_over_the_environment(
    argv: list[str], env: dict[str, str], expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LAYERWATCH_NOTIFICATION_ADDRESS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parse: Callable[[list[str]], Any] = _parser().parse_args
    assert parse(argv).notification_address == expected


class EventsOnly:
    """The two KubeApi calls ``OperatorService._write`` makes; the event counts as new or not."""

    def __init__(self, new: bool) -> None:
        self.new = new

    async def write_condition(self, *_: Any, before_write: Any, **__: Any) -> None:
        await before_write([])

    async def post_event(self, *_: Any, **__: Any) -> bool:
        return self.new


@pytest.mark.parametrize("new", [True, False])
async def test_the_operator_forwards_exactly_the_events_it_posts(receiver: Receiver, new: bool) -> None:
    """A restart redoing a transition meets its own Kubernetes Event and forwards nothing either."""
    service = OperatorService(
        cast(KubeApi, EventsOnly(new)), OperatorOptions(notification_address=receiver.url)
    )
    status = lost_at_core()
    service.store.put(status)
    assert status.result is not None
    await service._write(SOURCE, desired_condition(status.result.judgement, 3), 300.0)
    assert service.notifier is not None
    await service.notifier.aclose()
    assert [e["reason"] for e in receiver.events] == (["LayerMissing"] if new else [])
    if new:
        assert receiver.events[0]["metadata"]["source.toolkit.fluxcd.io/hop"] == "core"


def test_without_an_address_the_operator_has_no_notifier() -> None:
    assert OperatorService(cast(KubeApi, EventsOnly(True)), OperatorOptions()).notifier is None
