"""Transition events: a restart never duplicates one; a transition that truly recurs is counted."""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from layerwatch.kube.api import KubeApi
from layerwatch.kube.conditions import Transition

EVENT = Transition(
    "Warning", "LayerCorrupt", "hop core (h/p): layer 0 sha256:abc corrupt", "app.layerwatch.0123"
)


class FakeCore:
    """The three CoreV1Api calls post_event makes, over one stored event."""

    def __init__(self, existing: k8s.CoreV1Event | None = None) -> None:
        self.existing = existing
        self.patches: list[dict[str, Any]] = []

    def create_namespaced_event(self, namespace: str, body: k8s.CoreV1Event, **_: Any) -> None:
        if self.existing is not None:
            raise ApiException(status=409)
        self.existing = body

    def read_namespaced_event(self, name: str, namespace: str, **_: Any) -> k8s.CoreV1Event:
        assert self.existing is not None
        return self.existing

    def patch_namespaced_event(self, name: str, namespace: str, patch: dict[str, Any], **_: Any) -> None:
        self.patches.append(patch)


def _api(core: FakeCore) -> KubeApi:
    api = KubeApi.__new__(KubeApi)  # no kubeconfig needed: only the core API is used
    api.core = core  # type: ignore[assignment]
    return api


def _existing(age: float, count: int = 1) -> k8s.CoreV1Event:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age)
    return k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(name=EVENT.name),
        involved_object=k8s.V1ObjectReference(),
        first_timestamp=when,
        last_timestamp=when,
        count=count,
    )


async def _post(api: KubeApi) -> bool:
    return await api.post_event("source.toolkit.fluxcd.io/v1", "ns", "app", "uid", EVENT, repeat_after=450)


async def test_a_new_transition_creates_its_event() -> None:
    core = FakeCore()
    assert await _post(_api(core))
    assert core.existing is not None and core.existing.reason == "LayerCorrupt" and core.existing.count == 1


async def test_a_restart_redoing_a_recent_transition_posts_nothing() -> None:
    core = FakeCore(_existing(age=30))
    assert not await _post(_api(core))
    assert core.patches == []


async def test_a_transition_that_recurs_later_bumps_the_count_of_its_event() -> None:
    core = FakeCore(_existing(age=900, count=2))
    assert await _post(_api(core))
    assert core.patches and core.patches[0]["count"] == 3
    assert core.patches[0]["message"] == EVENT.message
