"""A hostile or unlucky registry, made for real by the lab gateway, against ``layerwatch`` as users run it.

Every test drives the CLI (``layerwatch check --output json``) or ``layerwatch serve`` as a black
box over the real edge -> core -> origin chain and asserts what a user sees: the verdict per hop,
the blame, a fragment of the message, the exit status, how many requests a hop received, that no
traceback was printed and that the run ended in a bounded time. Faults sit at the edge unless the
case needs a proxy behind it: only layerwatch talks to the edge gateway, so the distribution
proxies never see them. The knobs beyond ``--timeout`` are given as ``LAYERWATCH_*`` environment.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tests.registry.helpers import (
    HOPS,
    CliRun,
    chain_file,
    cli_environment,
    closed_port_url,
    hop_verdicts,
    layerwatch_command,
    run_cli,
)
from tests.registry.test_tls import _certificates as certificates

from lab.artifacts import (
    PushedArtifact,
    push_blob_artifact,
    push_flux_artifact,
    push_index,
    push_multilayer_artifact,
)
from lab.chain import LocalChain
from lab.control import GatewayProcess
from lab.process import LOOPBACK, LabError, free_port, log_tail, stop_process
from lab.registry import RegistryProcess
from layerwatch.reference import short_digest

pytestmark = [pytest.mark.registry, pytest.mark.timeout(180)]

UNKNOWN = frozenset({"Unreachable", "AuthFailed", "RateLimited"})
PAST = "Thu, 01 Jan 2015 00:00:00 GMT"
MIB = 1024 * 1024


def check(
    chain: LocalChain,
    directory: Path,
    repository: str,
    *,
    timeout: float = 5.0,
    mode: str | None = None,
    env: Mapping[str, str] | None = None,
    within: float = 60.0,
    urls: Mapping[str, str] | None = None,
) -> tuple[CliRun, float]:
    """``layerwatch check`` of ``repository:v1`` via the edge: the run and its wall time.

    Fails (rather than hangs) when the check is still running after ``within`` seconds, and when
    it printed a traceback or exited with a status outside 0, 1 and 3.
    """
    args = ["check", "--chain", str(chain_file(chain, directory, urls=urls)), "--output", "json"]
    args += ["--timeout", str(timeout), *(["--mode", mode] if mode else [])]
    started = time.monotonic()
    try:
        run = run_cli(*args, f"oci://{chain.reference(repository, 'v1')}", env=env, timeout=within)
    except subprocess.TimeoutExpired:
        pytest.fail(f"layerwatch check still running after {within:.0f}s", pytrace=False)
    elapsed = time.monotonic() - started
    assert "Traceback" not in run.output, run
    assert run.status in (0, 1, 3), run
    return run, elapsed


def why(run: CliRun) -> str:
    """The exit status and every hop's verdict and message: what an assertion failure should show."""
    try:
        report = run.report
    except ValueError:
        return repr(run)
    hops = " | ".join(f"{h['name']}={h['verdict']}: {h['message']}" for h in report["hops"])
    return f"exit {run.status}, {report['verdict']} blame {report['blame']}; {hops}"


def hop(report: Mapping[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(h for h in report["hops"] if h["name"] == name)
    return found


def ours(chain: LocalChain, name: str) -> list[dict[str, Any]]:
    """What layerwatch (not a distribution proxy) asked hop ``name``, from its gateway's log."""
    return [e for e in chain.faults(name).requests() if "layerwatch" in str(e.get("agent", "")).lower()]


def only_at(
    faulted: str, verdict: str, report: Mapping[str, Any], before: frozenset[str] | None = None
) -> None:
    """``verdict`` at ``faulted`` and the report's top verdict and blame; Healthy behind it, one of
    ``before`` (default: the same verdict) at hops in front of it."""
    verdicts = hop_verdicts(report)
    position = HOPS.index(faulted)
    for i, name in enumerate(HOPS):
        if i < position:
            assert verdicts[name] in (before or {verdict}), verdicts
        else:
            assert verdicts[name] == (verdict if i == position else "Healthy"), verdicts
    assert report["verdict"] == verdict and report["blame"] == faulted, report


def at_edge(chain: LocalChain, repository: str, *faults: dict[str, Any]) -> str:
    """Set ``faults`` at the edge gateway for ``repository`` only; the repository's edge path."""
    path = chain.repository_at("edge", repository)
    chain.faults("edge").set([{"repository": path, **fault} for fault in faults])
    return path


# -- 429 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", ["0", PAST], ids=["retry-after-0", "retry-after-date-in-the-past"])
def test_a_429_storm_is_waited_out_with_a_floor_and_ends_rate_limited_after_a_few_requests(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path, retry_after: str
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    path = at_edge(local_chain, fresh_repo, {"kind": "ratelimit", "retry_after": retry_after})

    run, elapsed = check(local_chain, tmp_path, fresh_repo, env={"LAYERWATCH_RETRY_BUDGET": "5"})

    assert run.status == 3, why(run)
    only_at("edge", "RateLimited", run.report)
    assert "HTTP 429" in hop(run.report, "edge")["message"]
    limited = [e for e in ours(local_chain, "edge") if e["status"] == 429 and path in e["path"]]
    assert 1 <= len(limited) <= 10, f"{len(limited)} requests answered 429"
    assert elapsed >= 1.0, "Retry-After is floored at 1 s"
    assert elapsed < 30.0


def test_a_429_on_a_get_quotes_the_registrys_error_code(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    """A HEAD cannot carry an error body; a GET's 429 says TOOMANYREQUESTS, and the message quotes it."""
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    at_edge(local_chain, fresh_repo, {"kind": "ratelimit", "retry_after": "0", "method": "GET"})

    run, _ = check(local_chain, tmp_path, fresh_repo, env={"LAYERWATCH_RETRY_BUDGET": "5"})

    assert run.status == 3, why(run)
    only_at("edge", "RateLimited", run.report)
    message = hop(run.report, "edge")["message"]
    assert "HTTP 429" in message and "TOOMANYREQUESTS" in message, message


def test_a_retry_after_that_is_not_a_number_is_floored_and_waited_out(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    at_edge(local_chain, fresh_repo, {"kind": "ratelimit", "retry_after": "²", "count": 1})

    run, elapsed = check(local_chain, tmp_path, fresh_repo)

    assert run.status == 0, why(run)
    assert hop_verdicts(run.report) == dict.fromkeys(HOPS, "Healthy")
    assert local_chain.faults("edge").active()[0]["count"] == 0, "the 429 was served"
    assert elapsed >= 1.0, "an unreadable Retry-After still waits the 1 s floor"


# -- deadlines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["trickle", "blackhole"])
def test_a_hop_that_never_finishes_its_headers_is_unreachable_within_the_timeout_bounds(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path, kind: str
) -> None:
    """trickle: a status line, then one header byte every 0.5 s; blackhole: no answer at all."""
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    at_edge(local_chain, fresh_repo, {"kind": kind})

    run, elapsed = check(local_chain, tmp_path, fresh_repo, timeout=2.0)

    assert run.status == 3, why(run)
    only_at("edge", "Unreachable", run.report)
    assert "timed out waiting for response headers" in hop(run.report, "edge")["message"]
    assert elapsed < 3 * 2.0 + 10, "at most three attempts of one timeout each, plus start-up"


# -- values the registry supplies --------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["../../etc/passwd", "sha256:{hex}?n=1", "md5"],
    ids=["path-traversal", "query-string", "md5"],
)
def test_a_digest_header_that_is_not_a_digest_is_ignored_and_never_becomes_part_of_a_url(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path, value: str
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    header = value.format(hex=pushed.manifest_digest.partition(":")[2])
    path = at_edge(local_chain, fresh_repo, {"kind": "digest-header", "value": header, "tag": "v1"})

    run, _ = check(local_chain, tmp_path, fresh_repo)

    assert run.status == 0, why(run)
    assert hop_verdicts(run.report) == dict.fromkeys(HOPS, "Healthy")
    assert hop(run.report, "edge")["manifestDigest"] == pushed.manifest_digest, "hashed, not taken on trust"
    asked = [(e["path"], e["raw_path"]) for e in ours(local_chain, "edge")]
    assert asked
    for decoded, raw in asked:
        for text in (decoded, raw):
            assert "passwd" not in text and "md5" not in text and ".." not in text, asked
            assert text == "/v2/" or text.startswith(f"/v2/{path}/") or text.startswith("/service/token"), (
                asked
            )
            assert "?" not in text or text.startswith("/service/token"), asked


@pytest.mark.parametrize("status", [405, 501])
@pytest.mark.parametrize("mode", ["full", "head"])
def test_head_refused_falls_back_to_get_and_is_healthy(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path, status: int, mode: str
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    path = at_edge(local_chain, fresh_repo, {"kind": "error", "status": status, "method": "HEAD"})

    run, _ = check(local_chain, tmp_path, fresh_repo, mode=mode)

    assert run.status == 0, why(run)
    assert hop_verdicts(run.report) == dict.fromkeys(HOPS, "Healthy")
    edge = ours(local_chain, "edge")
    assert any(e["method"] == "HEAD" and e["status"] == status for e in edge), "HEAD was tried"
    assert any(e["method"] == "GET" and e["path"] == f"/v2/{path}/manifests/v1" for e in edge)
    if mode == "head":
        layer = pushed.content_layer.digest
        assert any(e["method"] == "GET" and e["path"].endswith(f"/blobs/{layer}") for e in edge)


def test_head_mode_says_blobs_are_present_not_verified(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")

    run, _ = check(local_chain, tmp_path, fresh_repo, mode="head")

    assert run.status == 0, why(run)
    for report_hop in run.report["hops"]:
        assert "present" in report_hop["message"] and "blobs verified" not in report_hop["message"], (
            report_hop
        )


def test_full_mode_says_every_blob_was_fetched_by_this_check(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")

    run, _ = check(local_chain, tmp_path, fresh_repo)

    assert run.status == 0, why(run)
    for report_hop in run.report["hops"]:
        assert f"manifest {short_digest(pushed.manifest_digest)}" in report_hop["message"], report_hop
        assert [b["cached"] for b in [report_hop["config"], *report_hop["layers"]]] == [False, False]


# -- slow is not corrupt -----------------------------------------------------------------------


def test_an_intact_layer_served_slowly_but_above_the_minimum_rate_is_healthy(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    pushed = push_blob_artifact(local_chain.push_address, fresh_repo, "v1", MIB)
    layer = pushed.layers[0].digest
    at_edge(local_chain, fresh_repo, {"kind": "slow", "rate": 96 * 1024, "digest": layer})

    run, elapsed = check(local_chain, tmp_path, fresh_repo)

    assert run.status == 0, why(run)
    assert hop_verdicts(run.report) == dict.fromkeys(HOPS, "Healthy")
    assert hop(run.report, "edge")["bytesVerified"] >= MIB
    assert elapsed >= MIB / (96 * 1024), "the layer really arrived at 96 KiB/s"


def test_a_layer_below_the_minimum_rate_is_stalled_and_unreachable_never_corrupt(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    pushed = push_blob_artifact(local_chain.push_address, fresh_repo, "v1", MIB)
    layer = pushed.layers[0].digest
    at_edge(local_chain, fresh_repo, {"kind": "slow", "rate": 16 * 1024, "digest": layer})

    run, elapsed = check(local_chain, tmp_path, fresh_repo, env={"LAYERWATCH_MIN_BLOB_RATE": "65536"})

    assert run.status == 3, why(run)
    only_at("edge", "Unreachable", run.report)
    message = hop(run.report, "edge")["message"]
    assert "stalled" in message and f"of {MIB} bytes" in message, message
    assert elapsed < 5 + MIB / 65536 + 15, "the body deadline is timeout + size / min_blob_rate"


# -- what the bytes say --------------------------------------------------------------------------


def test_a_compression_bomb_manifest_is_corrupt_and_never_decompressed(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    at_edge(local_chain, fresh_repo, {"kind": "gzip-bomb", "bomb_bytes": 512 * MIB})

    run, _ = check(local_chain, tmp_path, fresh_repo)

    assert run.status == 1, why(run)
    only_at("edge", "ManifestCorrupt", run.report)
    assert "served with Content-Encoding gzip" in hop(run.report, "edge")["message"]
    # The same check once more, measuring that one process's own peak (the session's children,
    # apiservers and image builds included, would blur RUSAGE_CHILDREN).
    args = ["check", "--chain", str(chain_file(local_chain, tmp_path)), "--output", "json"]
    command = [*layerwatch_command(), *args, f"oci://{local_chain.reference(fresh_repo, 'v1')}"]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_environment(None)
    )
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0  # reaped by wait4
    peak_mib = usage.ru_maxrss / 1024
    assert peak_mib < 250, f"the check peaked at {peak_mib:.0f} MiB on a 512 MiB bomb"


@pytest.mark.parametrize("what", ["manifest", "layer"])
def test_a_content_encoding_label_on_plain_bytes_is_corrupt_at_that_hop(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path, what: str
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    label = {"kind": "content-encoding", "value": "gzip"}
    if what == "manifest":
        at_edge(local_chain, fresh_repo, {**label, "tag": "v1"}, {**label, "digest": pushed.manifest_digest})
    else:
        at_edge(local_chain, fresh_repo, {**label, "digest": pushed.content_layer.digest})

    run, _ = check(local_chain, tmp_path, fresh_repo)

    assert run.status == 1, why(run)
    only_at("edge", "ManifestCorrupt" if what == "manifest" else "LayerCorrupt", run.report)
    assert "served with Content-Encoding gzip" in hop(run.report, "edge")["message"]


def test_a_missing_child_of_an_index_is_manifest_missing_blamed_on_the_hop_that_lost_it(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    amd = push_flux_artifact(local_chain.push_address, fresh_repo, "amd")
    arm = push_flux_artifact(local_chain.push_address, fresh_repo, "arm")
    push_index(local_chain.push_address, fresh_repo, "v1", {"linux/amd64": amd, "linux/arm64": arm})
    child = amd.manifest_digest
    repository = local_chain.repository_at("core", fresh_repo)
    local_chain.faults("core").set([{"kind": "drop", "repository": repository, "digest": child}])

    run, _ = check(local_chain, tmp_path, fresh_repo)

    assert run.status == 1, why(run)
    # the edge proxy answers core's 404 for the uncached child with a 500 (see lab.registry)
    only_at("core", "ManifestMissing", run.report, before=frozenset({"ManifestMissing", "Unreachable"}))
    message = hop(run.report, "core")["message"]
    assert f"child manifest {short_digest(child)}" in message and "(linux/amd64) missing" in message, message
    assert "MANIFEST_UNKNOWN" in message, message


def test_a_503_on_a_blob_names_the_blob_and_quotes_the_registrys_error(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    layer = pushed.content_layer.digest
    error = {"kind": "error", "status": 503, "code": "UNAVAILABLE", "message": "core could not reach origin"}
    at_edge(local_chain, fresh_repo, {**error, "digest": layer})

    run, _ = check(local_chain, tmp_path, fresh_repo)

    assert run.status == 3, why(run)
    only_at("edge", "Unreachable", run.report)
    message = hop(run.report, "edge")["message"]
    assert f"layer 0 {short_digest(layer)}" in message and "HTTP 503" in message, message
    assert "UNAVAILABLE: core could not reach origin" in message, message
    gets = [e for e in ours(local_chain, "edge") if e["method"] == "GET" and e["path"].endswith(layer)]
    assert len(gets) == 3, "the first attempt and two retries (LAYERWATCH_RETRIES defaults to 2)"


def test_a_cut_body_says_how_many_bytes_really_arrived(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    pushed = push_blob_artifact(local_chain.push_address, fresh_repo, "v1", MIB)
    layer = pushed.layers[0]
    at_edge(local_chain, fresh_repo, {"kind": "cut", "digest": layer.digest, "keep": MIB // 2})

    run, _ = check(local_chain, tmp_path, fresh_repo)

    assert run.status == 1, why(run)
    only_at("edge", "LayerCorrupt", run.report)
    assert f"truncated: {MIB // 2} of {MIB} bytes" in hop(run.report, "edge")["message"]


# -- work the registry sets ----------------------------------------------------------------------


def test_a_manifest_with_40000_layers_is_corrupt_by_the_layer_cap_after_a_few_requests(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    at_edge(local_chain, fresh_repo, {"kind": "many-layers", "layers": 40_000})

    run, elapsed = check(local_chain, tmp_path, fresh_repo)

    assert run.status == 1, why(run)
    only_at("edge", "ManifestCorrupt", run.report)
    assert "1024" in hop(run.report, "edge")["message"], "the message names the cap"
    assert len(ours(local_chain, "edge")) < 20
    assert elapsed < 30


@pytest.mark.parametrize(
    ("size", "cap"),
    [("1000000000000000", f"over the {64 << 30} byte limit"), ("1e400", None)],
    ids=["10^15", "1e400"],
)
def test_a_declared_layer_size_beyond_the_caps_is_corrupt_and_nothing_is_streamed(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path, size: str, cap: str | None
) -> None:
    """The 10^15 layer's body never ends either: only refusing the size up front bounds the check."""
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    at_edge(
        local_chain,
        fresh_repo,
        {"kind": "layer-size", "size": size},
        {"kind": "endless", "digest": pushed.content_layer.digest},
    )

    run, elapsed = check(local_chain, tmp_path, fresh_repo)

    assert run.status == 1, why(run)
    only_at("edge", "ManifestCorrupt", run.report)
    if cap is not None:
        assert cap in hop(run.report, "edge")["message"], why(run)
    assert hop(run.report, "edge")["bytesVerified"] == 0
    assert elapsed < 30


# -- where the registry points us ----------------------------------------------------------------


@pytest.mark.parametrize(
    "location",
    ["http://127.0.0.1:99999/blob", "http://[::1:bad/blob", "http://[1.2.3.4]/blob"],
    ids=["port-99999", "broken-ipv6-literal", "ipv4-in-brackets"],
)
def test_a_redirect_to_a_location_that_is_not_a_url_is_unreachable_not_a_traceback(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path, location: str
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    at_edge(
        local_chain,
        fresh_repo,
        {"kind": "redirect", "location": location, "digest": pushed.content_layer.digest},
    )

    run, _ = check(local_chain, tmp_path, fresh_repo)

    assert run.status == 3, why(run)
    only_at("edge", "Unreachable", run.report)
    assert "\n" not in hop(run.report, "edge")["message"]


def test_a_token_realm_that_is_not_a_url_is_an_unknown_verdict_not_a_traceback(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    at_edge(local_chain, fresh_repo, {"kind": "hostile-auth", "variant": "bad-realm"})

    run, _ = check(local_chain, tmp_path, fresh_repo)

    assert run.status == 3, why(run)
    verdicts = hop_verdicts(run.report)
    assert verdicts["edge"] in UNKNOWN and verdicts["core"] == verdicts["origin"] == "Healthy", verdicts
    assert run.report["blame"] == "edge"
    assert "\n" not in hop(run.report, "edge")["message"]


def test_a_refused_connection_is_told_apart_from_tls(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")

    run, _ = check(local_chain, tmp_path, fresh_repo, urls={"origin": closed_port_url()})

    assert run.status == 3, why(run)
    message = hop(run.report, "origin")["message"]
    assert "connection refused" in message and "TLS" not in message, message


def test_a_token_body_dripped_a_byte_at_a_time_ends_within_the_body_deadline(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    drip = {"kind": "slow", "drip": True, "chunk": 1, "seconds": 0.5, "token": True}
    local_chain.faults("edge").set([drip])

    run, elapsed = check(local_chain, tmp_path, fresh_repo, timeout=2.0)

    assert run.status == 3, why(run)
    verdicts = hop_verdicts(run.report)
    assert verdicts["edge"] in UNKNOWN and verdicts["core"] == verdicts["origin"] == "Healthy", why(run)
    assert "token" in hop(run.report, "edge")["message"], why(run)
    assert elapsed < 30, "a ~160-byte token at 2 bytes/s would take 80 s"


def test_registry_text_with_newlines_and_escapes_is_printed_escaped(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    """The origin serves layer 0 with a hostile mediaType; every hop passes it on, and the text
    report quotes it (LayerOrderMismatch: layer 0 is not the Flux content layer)."""
    push_multilayer_artifact(local_chain.push_address, fresh_repo, "v1")
    hostile = "application/x\n\x1b[31mEVIL\x1b[0m"
    local_chain.faults("origin").set(
        [{"kind": "media-type", "repository": fresh_repo, "tag": "v1", "offset": 0, "value": hostile}]
    )
    path = chain_file(local_chain, tmp_path)

    run = run_cli(
        "check", "--chain", str(path), "--timeout", "5", f"oci://{local_chain.reference(fresh_repo, 'v1')}"
    )

    assert run.status == 1, run
    assert "\x1b" not in run.stdout, run
    quoted = [line for line in run.stdout.splitlines() if "EVIL" in line]
    assert quoted and all("layer 0 is application/x\\n\\x1b[31mEVIL" in line for line in quoted), run


# -- layerwatch serve ------------------------------------------------------------------------------


class Serve:
    """``layerwatch serve`` over the lab chain with the given chains and targets, on a free port."""

    def __init__(self, config: Path, log: Path, *options: str) -> None:
        port = free_port()
        self.url = f"http://{LOOPBACK}:{port}"
        self.log = log
        command = [*layerwatch_command(), "serve", "--config", str(config), "--timeout", "5", *options]
        command += ["--metrics-address", LOOPBACK, "--metrics-port", str(port)]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=cli_environment(), start_new_session=True
            )

    def get(self, path: str) -> httpx.Response:
        if self.process.poll() is not None:
            raise LabError(
                f"layerwatch serve exited with {self.process.returncode}:\n{log_tail(self.log, 40)}"
            )
        return httpx.get(f"{self.url}{path}", timeout=10.0)

    def artifacts(self) -> dict[str, dict[str, Any]]:
        """``/api/v1/status`` artifacts by target name."""
        return {a["name"]: a for a in self.get("/api/v1/status").json()["artifacts"]}

    def checks(self) -> Counter[tuple[str, str]]:
        """``layerwatch_checks_total`` by (chain, hop), all verdicts."""
        counts: Counter[tuple[str, str]] = Counter()
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name == "layerwatch_checks_total":
                    counts[(sample.labels["chain"], sample.labels["hop"])] += int(sample.value)
        return counts

    def wait(self, ready: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if ready():
                    return
            time.sleep(0.2)
        raise AssertionError(f"{what} not within {timeout:.0f}s:\n{log_tail(self.log, 40)}")


def own_chains(
    chain: LocalChain, targets: Mapping[str, dict[str, Any]], interval: str = "5s"
) -> list[dict[str, Any]]:
    """Serve documents for ``targets`` (name -> Target fields), each on its own copy of the lab
    ProxyChain named like the target, so per-target check counts can be read from ``/metrics``."""
    documents: list[dict[str, Any]] = []
    for name, fields in targets.items():
        document = chain.chain_document(name)
        document["spec"]["interval"] = interval  # type: ignore[index]
        documents += [document, {"kind": "Target", "name": name, "chain": name, **fields}]
    return documents


@contextlib.contextmanager
def serving(directory: Path, documents: list[dict[str, Any]], *options: str) -> Iterator[Serve]:
    """``layerwatch serve [OPTIONS]`` over ``documents``, yielded once every target has had a check."""
    config = directory / "serve.yaml"
    config.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    serve = Serve(config, directory / "serve.log", *options)
    try:
        serve.wait(lambda: all(a["checkedAt"] for a in serve.artifacts().values()), 60, "first checks")
        yield serve
    finally:
        stop_process(serve.process)


def oci(chain: LocalChain, pushed: PushedArtifact) -> str:
    return "oci://" + chain.reference(pushed.repository, "v1").rsplit(":", 1)[0]


def test_serve_survives_a_registry_ping_redirected_to_port_99999_and_reports_the_hop_unreachable(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    with serving(
        tmp_path, own_chains(local_chain, {"app": {"url": oci(local_chain, pushed), "ref": {"tag": "v1"}}})
    ) as serve:
        local_chain.faults("edge").set([{"kind": "redirect", "location": "http://127.0.0.1:99999/v2/"}])
        serve.wait(
            lambda: serve.artifacts()["app"]["hops"][0]["verdict"] == "Unreachable", 30, "edge Unreachable"
        )
        time.sleep(6)  # one more interval: the ping and the checks go on
        assert serve.get("/healthz").status_code == 200
        hops = {h["name"]: h["verdict"] for h in serve.artifacts()["app"]["hops"]}
        assert hops == {"edge": "Unreachable", "core": "Healthy", "origin": "Healthy"}, hops
    assert "Traceback" not in serve.log.read_text()


def test_every_check_in_serve_fetches_its_manifest_and_layer_at_every_hop_again(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    """The honest cache: a target's next check never trusts what its own previous check verified,
    also for a digest reference (which once could send zero requests)."""
    by_tag = push_flux_artifact(local_chain.push_address, f"{fresh_repo}-tag", "v1")
    by_digest = push_flux_artifact(local_chain.push_address, f"{fresh_repo}-digest", "v1")
    targets = {
        "tag": {"url": oci(local_chain, by_tag), "ref": {"tag": "v1"}},
        "digest": {"url": oci(local_chain, by_digest), "ref": {"digest": by_digest.manifest_digest}},
    }
    with serving(tmp_path, own_chains(local_chain, targets)) as serve:
        for name in HOPS:
            local_chain.faults(name).clear_requests()
        before = serve.checks()
        time.sleep(31)
        after = serve.checks()
        for name in HOPS:
            asked = ours(local_chain, name)
            for target, pushed in (("tag", by_tag), ("digest", by_digest)):
                checks = after[(target, name)] - before[(target, name)]
                repository = local_chain.repository_at(name, pushed.repository)
                manifests = [
                    e
                    for e in asked
                    if e["method"] == "GET"
                    and e["path"] == f"/v2/{repository}/manifests/{pushed.manifest_digest}"
                ]
                layers = [
                    e
                    for e in asked
                    if e["method"] == "GET"
                    and e["path"] == f"/v2/{repository}/blobs/{pushed.content_layer.digest}"
                ]
                assert checks >= 5, (target, name, checks)
                assert len(manifests) >= checks - 1, (target, name, checks, len(manifests))
                assert len(layers) >= checks - 1, (target, name, checks, len(layers))


def test_a_black_holed_hop_with_20_targets_leaves_another_chains_checks_on_schedule(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path
) -> None:
    pushed = push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    origin = local_chain.hop("origin")
    dead = GatewayProcess("dead", origin.registry.url).start()
    try:
        documents = own_chains(
            local_chain, {"healthy": {"url": oci(local_chain, pushed), "ref": {"tag": "v1"}}}
        )
        dead_chain = local_chain.chain_document("dead")
        dead_chain["spec"] = {
            "interval": "5s",
            "hops": [{"name": "dead", "url": dead.url}, {"name": "origin", "url": origin.url}],
        }
        documents.append(dead_chain)
        url = f"oci://{dead.address}/{pushed.repository}"
        documents += [
            {"kind": "Target", "name": f"dead-{i:02d}", "chain": "dead", "url": url, "ref": {"tag": "v1"}}
            for i in range(20)
        ]
        dead.faults.set([{"kind": "blackhole"}])
        with serving(tmp_path, documents) as serve:
            before = serve.checks()[("healthy", "edge")]
            time.sleep(20)
            checks = serve.checks()[("healthy", "edge")] - before
            assert checks >= 3, f"{checks} checks of the healthy chain in 20 s at a 5 s interval"
            dead_verdicts = {
                a["name"]: a["verdict"] for a in serve.artifacts().values() if a["chain"] == "dead"
            }
            assert set(dead_verdicts.values()) == {"Unreachable"}, dead_verdicts
    finally:
        dead.stop()


def test_an_interval_below_one_second_is_refused(local_chain: LocalChain, tmp_path: Path) -> None:
    document = local_chain.chain_document("fast")
    document["spec"]["interval"] = "1ms"  # type: ignore[index]
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(document))
    try:
        run = run_cli("serve", "--config", str(config), "--metrics-port", "0", timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("serve accepted an interval of 1ms and ran", pytrace=False)
    assert run.status == 2, run
    assert "interval" in run.stderr and "Traceback" not in run.output, run


# -- a CA bundle that is not PEM -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_proxy(local_chain: LocalChain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``127.0.0.1:PORT`` of an HTTPS pull-through proxy (private CA) of the lab's origin gateway."""
    _, cert, key = certificates(tmp_path_factory.mktemp("tls"))
    with RegistryProcess(
        "tls-proxy", remote_url=local_chain.hop("origin").gateway.url, tls=(cert, key)
    ) as proxy:
        yield proxy.address


def not_pem(directory: Path) -> Path:
    path = directory / "ca.pem"
    path.write_text("this is not a PEM bundle\n")
    return path


def test_check_with_a_ca_file_that_is_not_pem_says_so_in_one_line(
    local_chain: LocalChain, fresh_repo: str, tmp_path: Path, tls_proxy: str
) -> None:
    push_flux_artifact(local_chain.push_address, fresh_repo, "v1")
    args = ["check", "--output", "json", "--ca-file", str(not_pem(tmp_path)), f"{tls_proxy}/{fresh_repo}:v1"]

    run = run_cli(*args, timeout=60)

    assert "Traceback" not in run.output, run
    if run.status == 2:  # refused as configuration
        assert run.report["error"]["message"] and "\n" not in run.report["error"]["message"], run
    else:  # or checked and found unverifiable
        assert run.status == 3 and set(hop_verdicts(run.report).values()) == {"Unreachable"}, why(run)


def test_serve_with_a_ca_file_that_is_not_pem_refuses_to_start_with_one_line(
    tmp_path: Path, tls_proxy: str
) -> None:
    """A CA that TLS cannot trust is a typo to fix (exit 2), never a quiet check with no CA at all."""
    chain = {
        "apiVersion": "layerwatch.io/v1alpha1",
        "kind": "ProxyChain",
        "metadata": {"name": "tls"},
        "spec": {"interval": "5s", "hops": [{"name": "proxy", "url": f"https://{tls_proxy}"}]},
    }
    app = {"kind": "Target", "name": "app", "chain": "tls", "url": f"oci://{tls_proxy}/org/app"}
    documents = [chain, {**app, "ref": {"tag": "v1"}}]

    with (
        pytest.raises(LabError, match=r"exited with 2") as refused,
        serving(tmp_path, documents, "--ca-file", str(not_pem(tmp_path))),
    ):
        pass
    assert "holds no PEM certificate" in str(refused.value) and "Traceback" not in str(refused.value)
