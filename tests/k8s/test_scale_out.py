"""Scale-out: sharding across standalone replicas, and HA through kopf peering.

Every operator here is a real ``layerwatch operator`` process authenticated as ServiceAccount
layerwatch/layerwatch (manifests/clusterrole.yaml only), against the lab registry chain.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

from kubernetes import client
from tests.k8s.operator_harness import (
    FLUX,
    Operator,
    condition,
    ocirepository,
    push_artifact,
    wait_for,
)

from lab.chain import LocalChain
from lab.kube import REPO, ControlPlane
from layerwatch.kube.targets import in_shard

PEERING = ("kopf.dev", "v1", "clusterkopfpeerings", "layerwatch")
PEERING_LIFETIME = 20
"""Seconds; kopf's default is 60. A standby takes over at most this long after a crash."""
TAKEOVER_LIMIT = PEERING_LIFETIME + 25.0
"""kopf's default peering lifetime is 60 s: a standby resumes at most 60 s after the last keep-alive
of the dead peer; the rest is margin for the re-list, the daemon start and one check cycle."""


def _dir(base: Path, name: str) -> Path:
    path = base / name
    path.mkdir(exist_ok=True)
    return path


def series_names(text: str, namespace: str) -> set[str]:
    """Names of the OCIRepositories in ``namespace`` that have a per-hop health series."""
    pattern = re.compile(r'^layerwatch_artifact_hop_healthy\{[^}]*\bnamespace="' + re.escape(namespace) + '"')
    return {
        match.group(1)
        for line in text.splitlines()
        if pattern.match(line) and (match := re.search(r'\bname="([^"]*)"', line))
    }


def checks_total(text: str) -> float:
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("layerwatch_checks_total{")
    )


def _stop_all(*operators: Operator) -> None:
    for operator in operators:
        operator.stop()
        if operator.process is not None and operator.process.returncode not in (
            0,
            -signal.SIGTERM,
            -signal.SIGKILL,
        ):
            print(operator.logs())


def test_two_shards_split_the_ocirepositories_by_the_stable_hash_and_each_is_checked_once(
    chain: LocalChain,
    operator_kubeconfig: Path,
    proxychain: str,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
) -> None:
    _, url, _ = push_artifact(chain)
    names = [f"app-{index:02d}" for index in range(20)]
    for name in names:
        custom.create_namespaced_custom_object(
            *FLUX, namespace, "ocirepositories", ocirepository(namespace, name, url)
        )
    shards = [
        Operator(
            operator_kubeconfig,
            _dir(tmp_path, f"shard-{index}"),
            "--shard-count",
            "2",
            "--shard-index",
            str(index),
        )
        for index in range(2)
    ]
    try:
        for shard in shards:
            shard.start()

        def all_healthy() -> bool:
            return all(
                (c := condition(custom, namespace, name)) is not None and c["status"] == "True"
                for name in names
            )

        wait_for("20 healthy conditions", all_healthy, timeout=120, interval=1)
        expected = [{n for n in names if in_shard(namespace, n, index, 2)} for index in range(2)]
        assert expected[0] and expected[1], f"a shard got nothing: {expected}"
        wait_for(
            "each shard's series",
            lambda: all(
                series_names(s.metrics(), namespace) == e for s, e in zip(shards, expected, strict=True)
            ),
            timeout=60,
        )
        time.sleep(7)  # two more 3 s cycles: still nobody checks the other shard's objects
        seen = [series_names(s.metrics(), namespace) for s in shards]
        assert seen == expected
        assert not seen[0] & seen[1]
        assert seen[0] | seen[1] == set(names)
    finally:
        _stop_all(*shards)


def _peers(custom: client.CustomObjectsApi) -> dict[str, dict[str, Any]]:
    return dict(custom.get_cluster_custom_object(*PEERING).get("status") or {})


def test_with_peering_only_the_higher_priority_replica_checks_and_the_standby_takes_over_when_it_dies(
    chain: LocalChain,
    control_plane: ControlPlane,
    operator_kubeconfig: Path,
    proxychain: str,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
) -> None:
    control_plane.apply(REPO / "manifests" / "peering.yaml")
    active = Operator(
        operator_kubeconfig,
        _dir(tmp_path, "a"),
        "--peering",
        "layerwatch",
        "--priority",
        "100",
        "--peering-lifetime",
        str(PEERING_LIFETIME),
        standalone=False,
    )
    standby = Operator(
        operator_kubeconfig,
        _dir(tmp_path, "b"),
        "--peering",
        "layerwatch",
        "--priority",
        "50",
        "--peering-lifetime",
        str(PEERING_LIFETIME),
        standalone=False,
    )
    try:
        active.start()
        assert active.process is not None
        wait_for("A's keep-alive", lambda: any(k.endswith(f"/{active.process.pid}") for k in _peers(custom)))
        standby.start()
        assert standby.process is not None
        standby_id = wait_for(
            "B's keep-alive",
            lambda: next((k for k in _peers(custom) if k.endswith(f"/{standby.process.pid}")), None),
        )
        assert _peers(custom)[standby_id]["priority"] == 50

        _, url, _ = push_artifact(chain)
        custom.create_namespaced_custom_object(
            *FLUX, namespace, "ocirepositories", ocirepository(namespace, "app", url)
        )
        wait_for("A's verdict", lambda: (c := condition(custom, namespace, "app")) and c["status"] == "True")
        wait_for("A's series", lambda: series_names(active.metrics(), namespace) == {"app"}, timeout=30)
        time.sleep(7)  # two more 3 s cycles of A
        assert checks_total(active.metrics()) > 0
        assert series_names(standby.metrics(), namespace) == set(), "the standby checked while A was alive"
        assert checks_total(standby.metrics()) == 0, "the standby checked while A was alive"
        # --peering makes peering mandatory: the standby starts paused, so it never even plans.
        assert "layerwatch.scheduler: checked" not in standby.text()

        lastseen = _peers(custom)
        killed_at = time.monotonic()
        active.stop(signal.SIGKILL)
        wait_for(
            "B's takeover (series for app)",
            lambda: series_names(standby.metrics(), namespace) == {"app"},
            timeout=TAKEOVER_LIMIT + 50,
            interval=1,
        )
        takeover = time.monotonic() - killed_at
        print(f"\n[scale-out] standby took over {takeover:.1f} s after SIGKILL (peers before: {lastseen})")
        assert takeover < TAKEOVER_LIMIT, f"takeover took {takeover:.0f} s"
        assert checks_total(standby.metrics()) > 0
        assert "Resuming operations after the pause" in standby.text()

        # B really writes: a fresh artifact whose layer is missing at core turns False under B.
        _, late_url, _ = push_artifact(chain, drop_at="core")
        custom.create_namespaced_custom_object(
            *FLUX, namespace, "ocirepositories", ocirepository(namespace, "late", late_url)
        )
        late = wait_for(
            "B's verdict on a new object",
            lambda: (c := condition(custom, namespace, "late")) and c["status"] == "False" and c,
            timeout=60,
        )
        assert late["reason"] == "LayerMissing"
        assert "hop core (" in late["message"]
        assert series_names(standby.metrics(), namespace) == {"app", "late"}
        assert not any(k.endswith(f"/{active.process.pid}") for k in _peers(custom)), "A's dead entry stayed"
        for operator in (active, standby):
            assert "Forbidden" not in operator.text(), operator.logs()
    finally:
        _stop_all(active, standby)
