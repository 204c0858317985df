"""The operator between checks: Secrets that change, events that keep coming, chains that cannot
be planned, recoveries after unknown spells, shutdown, chain edits and shards.

Real kube-apiserver, real lab registry chain, ``layerwatch operator`` as its ServiceAccount (a
process, so shutdown is measured as a user sees it).
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.k8s.operator_harness import (
    CONDITION,
    FLUX,
    LW,
    Operator,
    condition,
    events,
    metric_value,
    ocirepository,
    proxychain_document,
    push_artifact,
    wait_for,
)

from lab.chain import LocalChain
from lab.kube import ControlPlane, basic_auth_secret, secret_document
from layerwatch.kube.targets import in_shard

OPERATOR_NAMESPACE = "layerwatch"


@pytest.fixture
def operator(operator_kubeconfig: Path, proxychain: str, tmp_path: Path) -> Iterator[Operator]:
    process = Operator(operator_kubeconfig, tmp_path).start()
    try:
        yield process
    finally:
        process.stop()


@dataclasses.dataclass
class Churn:
    """What most tests here use: the lab chain, the apiserver, a running operator, a namespace.

    ProxyChains made with ``new_chain`` are deleted after the test.
    """

    chain: LocalChain
    control_plane: ControlPlane
    operator: Operator
    custom: client.CustomObjectsApi
    namespace: str
    chains: list[str] = dataclasses.field(default_factory=list)

    def new_chain(self, interval: str = "3s", **options: Any) -> str:
        name = f"c-{secrets.token_hex(3)}"
        self.chains.append(name)
        self.control_plane.apply(proxychain_document(self.chain, name, interval, **options))
        return name

    def robot_secret(self, name: str, password: str | None = None, namespace: str = "") -> None:
        _robot_secret(self.control_plane, self.chain, name, password, namespace)

    def create(self, names: list[str], url: str, **options: Any) -> None:
        _create(self.custom, self.namespace, names, url, **options)

    def status_is(self, name: str, status: str) -> Any:
        return _status_is(self.custom, self.namespace, name, status)


@pytest.fixture
def lab(
    chain: LocalChain,
    control_plane: ControlPlane,
    operator: Operator,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> Iterator[Churn]:
    churn = Churn(chain, control_plane, operator, custom, namespace)
    yield churn
    for name in churn.chains:
        custom.delete_cluster_custom_object(*LW, "proxychains", name)


def _ready(custom: client.CustomObjectsApi, name: str) -> dict[str, Any] | None:
    status = custom.get_cluster_custom_object(*LW, "proxychains", name).get("status") or {}
    return next((c for c in status.get("conditions") or () if c["type"] == "Ready"), None)


def _status_is(custom: client.CustomObjectsApi, namespace: str, name: str, status: str) -> Any:
    return lambda: (c := condition(custom, namespace, name)) and c["status"] == status and c


def _robot(chain: LocalChain, password: str | None = None) -> tuple[str, str]:
    """The edge robot's user, and its real password unless given."""
    user, real = chain.hop("edge").credentials or ("", "")
    return user, password or real


def _robot_secret(
    control_plane: ControlPlane,
    chain: LocalChain,
    name: str,
    password: str | None = None,
    namespace: str = "",
) -> None:
    """A basic-auth Secret with the edge robot's user (and its real password unless given)."""
    control_plane.apply(basic_auth_secret(namespace or OPERATOR_NAMESPACE, name, _robot(chain, password)))


def _create(
    custom: client.CustomObjectsApi, namespace: str, names: list[str], url: str, **options: Any
) -> None:
    for item in names:
        body = ocirepository(namespace, item, url, **options)
        custom.create_namespaced_custom_object(*FLUX, namespace, "ocirepositories", body)


# -- Secrets -------------------------------------------------------------------------------------


def test_a_fixed_robot_password_turns_the_condition_true_within_90_seconds(
    lab: Churn,
) -> None:
    robot = f"robot-{secrets.token_hex(3)}"
    lab.robot_secret(robot, "expired")
    name = lab.new_chain(secret=robot)
    _, url, _ = push_artifact(lab.chain)
    lab.create(["app"], url, chain=name)
    denied = wait_for("AuthFailed", lab.status_is("app", "Unknown"))
    assert denied["reason"] == "AuthFailed", denied

    fixed_at = time.monotonic()
    lab.robot_secret(robot)
    wait_for("ProxyHealthy=True after the fix", lab.status_is("app", "True"), timeout=90)
    print(f"\n[churn] the fixed password counted after {time.monotonic() - fixed_at:.0f} s")
    assert "expired" not in lab.operator.text() and _robot(lab.chain)[1] not in lab.operator.text()


def test_many_ocirepositories_arriving_during_re_plans_are_all_planned_and_no_re_plan_is_lost(
    lab: Churn,
) -> None:
    name = lab.new_chain(interval="20s")
    lab.robot_secret("pull", namespace=lab.namespace)
    _, url, _ = push_artifact(lab.chain)
    names = [f"app-{index:03d}" for index in range(240)]

    def create(part: list[str]) -> None:  # a steady stream, so events land while re-plans read Secrets
        lab.create(part, url, chain=name, secretRef={"name": "pull"})

    writers = [threading.Thread(target=create, args=(names[i::4],)) for i in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()

    def all_have_a_condition() -> bool:
        items = lab.custom.list_namespaced_custom_object(*FLUX, lab.namespace, "ocirepositories")["items"]
        done = [
            i
            for i in items
            if any(c["type"] == CONDITION for c in (i.get("status") or {}).get("conditions") or ())
        ]
        return len(done) == len(names)

    wait_for("every OCIRepository checked", all_have_a_condition, timeout=120, interval=2)
    log = lab.operator.text()
    assert "re-planning failed" not in log, log[-4000:]
    assert "changed size during iteration" not in log


# -- a chain that cannot be planned --------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        pytest.param("missing", "SecretMissing", id="secret-missing"),
        pytest.param("bad-ca", "InvalidCA", id="ca-not-pem"),
        pytest.param("bad-url", "InvalidSpec", id="url-the-crd-accepts"),
    ],
)
def test_a_chain_that_cannot_be_planned_says_why_and_its_targets_stay_visible_as_unknown(
    setup: str,
    reason: str,
    lab: Churn,
) -> None:
    robot = f"robot-{secrets.token_hex(3)}"
    options: dict[str, Any] = {"secret": robot}
    if setup != "missing":
        lab.robot_secret(robot)
    if setup == "bad-ca":
        lab.control_plane.apply(
            secret_document(OPERATOR_NAMESPACE, f"{robot}-ca", {"ca.crt": "not a certificate"})
        )
        options["edge"] = {"caSecretRef": {"name": f"{robot}-ca", "namespace": OPERATOR_NAMESPACE}}
    if setup == "bad-url":
        options["origin_url"] = "http://127.0.0.1:99999"  # the CRD allows any 5 digits
    name = lab.new_chain(**options)
    _, url, _ = push_artifact(lab.chain)
    lab.create(["app"], url, chain=name)

    ready = wait_for(
        "ProxyChain Ready=False", lambda: (c := _ready(lab.custom, name)) and c["status"] == "False" and c
    )
    assert ready["reason"] == reason, ready
    assert ready["message"]
    unknown = wait_for("ChainNotReady", lab.status_is("app", "Unknown"))
    assert unknown["reason"] == "ChainNotReady", unknown
    assert f"ProxyChain {name} is not ready" in unknown["message"]
    assert ready["message"] in unknown["message"]
    series = {"namespace": lab.namespace, "name": "app", "chain": name, "verdict": "ChainNotReady"}
    assert wait_for(
        "an unknown series",
        lambda: metric_value(lab.operator.metrics(), "layerwatch_artifact_hop_verdict", **series),
    )
    page = json.loads(_get(f"http://127.0.0.1:{lab.operator.metrics_port}/api/v1/status"))
    shown = [a for a in page["artifacts"] if a["namespace"] == lab.namespace and a["name"] == "app"]
    assert shown and shown[0]["health"] == "unknown" and name in shown[0]["message"]

    if setup == "missing":  # the Secret appears: the chain and its target recover on their own
        lab.robot_secret(robot)
        wait_for("the target checked", lab.status_is("app", "True"), timeout=90)
        wait_for("Ready=True", lambda: (c := _ready(lab.custom, name)) and c["status"] == "True", timeout=30)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


# -- events, shutdown, herds ---------------------------------------------------------------------


def test_a_recovery_after_an_unknown_spell_that_followed_a_warning_is_announced(
    chain: LocalChain,
    operator: Operator,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    repository, url, _ = push_artifact(chain, drop_at="core")
    _create(custom, namespace, ["app"], url)
    wait_for("ProxyHealthy=False", _status_is(custom, namespace, "app", "False"))
    wait_for("Warning", lambda: [e for e in events(core, namespace, "app") if e.type == "Warning"])
    broken = {"kind": "error", "status": 503, "repository": chain.repository_at("core", repository)}
    chain.faults("core").set([broken])
    wait_for("Unknown", _status_is(custom, namespace, "app", "Unknown"))
    chain.faults("core").clear()
    wait_for("ProxyHealthy=True", _status_is(custom, namespace, "app", "True"))
    recovered = wait_for(
        "ProxyRecovered", lambda: [e for e in events(core, namespace, "app") if e.reason == "ProxyRecovered"]
    )
    assert recovered[0].type == "Normal"


@pytest.mark.parametrize("quiet", [False, True], ids=["checking", "quiet"])
def test_the_operator_shuts_down_within_5_seconds(lab: Churn, quiet: bool) -> None:
    """Busy with checks every 3 s, or quiet: the chain edited to 10 minutes, every loop asleep."""
    name = lab.new_chain(interval="3s")
    _, url, _ = push_artifact(lab.chain)
    lab.create(["app"], url, chain=name)
    wait_for("a verdict", lab.status_is("app", "True"))
    if quiet:
        lab.control_plane.apply(proxychain_document(lab.chain, name, "10m"))

        def planned() -> bool:
            text = lab.operator.metrics()
            return metric_value(text, "layerwatch_chain_interval_seconds", chain=name) == 600.0

        wait_for("the edit planned", planned, timeout=30, interval=0.2)
    time.sleep(4)  # past the ProxyChain status write that follows a result: in the middle of its loops
    process = lab.operator.process
    assert process is not None
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    took = time.monotonic() - started
    print(f"\n[churn] SIGTERM to exit ({'quiet' if quiet else 'checking'}): {took:.1f} s")
    assert took < 5.0, f"shutdown took {took:.1f} s"


def test_a_chain_edit_keeps_the_checks_spread_over_the_interval(
    lab: Churn,
) -> None:
    name = lab.new_chain(interval="30s")
    _, url, _ = push_artifact(lab.chain)
    names = [f"app-{index:02d}" for index in range(30)]
    lab.create(names, url, chain=name)
    wait_for(
        "all checked",
        lambda: all(condition(lab.custom, lab.namespace, n) for n in names),
        timeout=120,
        interval=2,
    )
    edited = proxychain_document(lab.chain, name, "30s")
    edited["spec"]["mode"] = "head"
    plans = _plans(lab.operator)
    lab.control_plane.apply(edited)
    wait_for("the re-plan after the edit", lambda: _plans(lab.operator) > plans, timeout=30, interval=0.2)
    planned_at = time.time()
    time.sleep(6)
    text = lab.operator.metrics()
    rechecked = [
        n
        for n in names
        if (
            when := metric_value(
                text,
                "layerwatch_artifact_hop_last_check_timestamp_seconds",
                namespace=lab.namespace,
                name=n,
                hop="origin",
            )
        )
        and when > planned_at
    ]
    print(f"\n[churn] {len(rechecked)} of {len(names)} re-checked in the 6 s after the edit's re-plan")
    # Spread over 30 s, about 6 s worth (a fifth) fall due in the 6 s after the edit; a herd is all.
    assert len(rechecked) < len(names) / 2, f"{len(rechecked)} of {len(names)} re-checked at once"


def test_a_hop_url_written_with_other_host_case_and_a_trailing_slash_still_matches(lab: Churn) -> None:
    """``http://LocalHost:PORT/prefix/`` in a ProxyChain: where ``oci://localhost:PORT/prefix/..`` pulls."""
    edge = lab.chain.hop("edge")
    port = edge.address.rpartition(":")[2]
    name = lab.new_chain(edge={"url": f"http://LocalHost:{port}/{edge.prefix}/"})
    _, url, _ = push_artifact(lab.chain)
    lab.create(["app"], url.replace(f"oci://{edge.address}", f"oci://localhost:{port}"), chain=name)
    checked = wait_for("the target checked", lab.status_is("app", "True"), timeout=90)
    assert f"localhost:{port}/" in checked["message"] and "LocalHost" not in checked["message"], checked


def test_a_hop_url_with_its_schemes_default_port_is_the_place_a_url_without_a_port_names(lab: Churn) -> None:
    """``http://127.0.0.1:80/prefix`` is where ``oci://127.0.0.1/prefix/..`` pulls, shown without the port.

    Nothing listens on port 80 here: the check ends Unreachable, which says the target was matched
    to the hop and checked there (unmatched, it would get no condition at all).
    """
    edge = lab.chain.hop("edge")
    name = lab.new_chain(edge={"url": f"http://127.0.0.1:80/{edge.prefix}"})
    _, url, _ = push_artifact(lab.chain)
    lab.create(["app"], url.replace(f"oci://{edge.address}", "oci://127.0.0.1"), chain=name)
    checked = wait_for("the target checked", lambda: condition(lab.custom, lab.namespace, "app"), timeout=90)
    assert checked["reason"] == "Unreachable", checked
    assert f"hop edge (127.0.0.1/{edge.prefix}/" in checked["message"], checked


# -- shards ---------------------------------------------------------------------------------------


def _plans(operator: Operator) -> int:
    return len(re.findall(r"planned \d+ targets", operator.text()))


def test_shards_ignore_the_other_shards_events_and_take_their_index_from_the_pod_name(
    chain: LocalChain,
    operator_kubeconfig: Path,
    proxychain: str,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
) -> None:
    _, url, _ = push_artifact(chain)
    names = [f"app-{index:02d}" for index in range(12)]
    _create(custom, namespace, names, url)
    mine = {n for n in names if in_shard(namespace, n, 1, 2)}
    theirs = sorted(set(names) - mine)
    assert mine and theirs
    shard = Operator(operator_kubeconfig, tmp_path, "--shard-count", "2", env={"POD_NAME": "layerwatch-1"})
    try:
        shard.start()
        wait_for("shard 1's verdicts", lambda: all(condition(custom, namespace, n) for n in mine), timeout=60)
        time.sleep(3)
        assert all(condition(custom, namespace, n) is None for n in theirs), (
            "shard 1 checked shard 0's objects"
        )
        before = _plans(shard)
        for round_ in range(5):  # what source-controller does all day: status updates
            for item in theirs:
                patch = {"status": {"conditions": [_flux_ready(round_)]}}
                custom.patch_namespaced_custom_object_status(*FLUX, namespace, "ocirepositories", item, patch)
        time.sleep(3)
        assert _plans(shard) == before, "another shard's status updates re-planned this one"
    finally:
        shard.stop()


def _flux_ready(round_: int) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": "True",
        "reason": "Succeeded",
        "message": f"round {round_}",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 1,
    }


def test_a_watch_label_selector_pairs_a_layerwatch_shard_with_a_flux_shard(
    chain: LocalChain,
    operator_kubeconfig: Path,
    proxychain: str,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
) -> None:
    _, url, _ = push_artifact(chain)
    for item, key in (("in-shard1", "shard1"), ("in-shard2", "shard2"), ("unsharded", None)):
        body = ocirepository(namespace, item, url)
        if key:
            body["metadata"]["labels"] = {"sharding.fluxcd.io/key": key}
        custom.create_namespaced_custom_object(*FLUX, namespace, "ocirepositories", body)
    shard = Operator(operator_kubeconfig, tmp_path, "--watch-label-selector", "sharding.fluxcd.io/key=shard1")
    try:
        shard.start()
        wait_for("shard1's verdict", _status_is(custom, namespace, "in-shard1", "True"), timeout=60)
        time.sleep(4)  # more than one 3 s cycle
        assert condition(custom, namespace, "in-shard2") is None
        assert condition(custom, namespace, "unsharded") is None
    finally:
        shard.stop()
