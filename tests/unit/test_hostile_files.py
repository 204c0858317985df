"""Hostile files: whatever a file holds, layerwatch ends with a value or one line and exit 2.

Every kind of file layerwatch reads is covered: chain files, Target files (``--targets`` and the
serve config, at start and on SIGHUP), docker configs, and CA, client certificate and key files.
Property tests put arbitrary YAML values (deep, huge, mistyped, with escapes that are no
character) into every field, and arbitrary bytes into every file; explicit cases pin each defect
found by hand. A few run ``python3 -m layerwatch`` as a real process, to prove what a CI job sees:
no traceback, exit status 2, and with ``-o json`` one error object on stdout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.certs import TestCA
from layerwatch.chain import ChainError
from layerwatch.cli import main
from layerwatch.config import (
    HOP_KEYS,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    FileSettings,
    load_chain_file,
    load_serve_config,
    load_targets_file,
)
from layerwatch.metrics import Metrics
from layerwatch.scheduler import Scheduler
from layerwatch.serve import ConfigFile
from layerwatch.store import ResultStore
from layerwatch.text import ERROR_LIMIT, one_line

REPO = Path(__file__).resolve().parents[2]
HOP = "{name: edge, url: 'http://127.0.0.1:9'}"
CHAIN = f"kind: ProxyChain\nmetadata: {{name: c}}\nspec:\n  interval: 1h\n  hops: [{HOP}]\n"
TARGET = "kind: Target\nname: t\nurl: oci://127.0.0.1:9/org/app:v1\n"
SERVE = CHAIN + "---\n" + TARGET
REF = "127.0.0.1:9/org/app:v1"
FAST = ("--timeout", "2", "--retries", "0")
"""A check that does get this far fails fast (nothing listens on port 9): exit 3, never 2."""


@pytest.fixture(autouse=True)
def no_personal_docker_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path_factory.mktemp("docker-home")))
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


class Outcome:
    """What ``layerwatch ARGS`` did: exit status, stdout, stderr."""

    def __init__(self, status: int, stdout: str, stderr: str) -> None:
        self.status, self.stdout, self.stderr = status, stdout, stderr

    def __repr__(self) -> str:
        return f"Outcome({self.status}, stdout={self.stdout[:300]!r}, stderr={self.stderr[-600:]!r})"

    def refused(self, *, json_output: bool = False, kind: str = "config") -> str:
        """Assert exit 2 with one line (and one error object with -o json); the message."""
        assert self.status == 2, self
        assert "Traceback" not in self.stdout + self.stderr, self
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("layerwatch: "), self
        message = lines[0].removeprefix("layerwatch: ")
        if json_output:
            assert json.loads(self.stdout) == {"error": {"message": message, "kind": kind}}, self
        else:
            assert self.stdout == "", self
        return message


Run = Callable[..., Outcome]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """``layerwatch ARGS`` in this process (cheap), as the installed command runs it."""

    def run(*args: str) -> Outcome:
        status = main(list(args))
        out = capsys.readouterr()
        return Outcome(status, out.out, out.err)

    return run


def process(*args: str, env: dict[str, str] | None = None) -> Outcome:
    """``python3 -m layerwatch ARGS`` as a real process, with this worktree's code."""
    done = subprocess.run(
        [sys.executable, "-m", "layerwatch", *args],
        capture_output=True,
        text=True,
        env=environment(env),
        timeout=120,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = os.pathsep.join(str(REPO / part) for part in ("operator", "hack", ""))
    env["DOCKER_CONFIG"] = "/nonexistent"
    return env | (extra or {})


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def chain_with_hop(fields: str) -> str:
    hop = f"{{name: edge, url: 'http://127.0.0.1:9', {fields}}}"
    return f"kind: ProxyChain\nmetadata: {{name: c}}\nspec:\n  hops: [{hop}]\n"


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


# -- each defect, explicitly ---------------------------------------------------------------------------

YAML_DEFECTS = {
    "deep YAML": (f"spec: {{hops: {deep(5000)}}}", f"nested deeper than {MAX_DEPTH} levels"),
    "an integer of 5000 digits": ("spec: {interval: " + "9" * 5000 + "}", "integer out of range"),
    "an integer too large for a float": ("spec: {interval: " + "9" * 400 + "}", "integer out of range"),
    "a date that does not exist": ("spec: {interval: 2001-13-01}", "cannot read this value"),
    "an empty tagged integer": ("spec: {interval: !!int ''}", "cannot read this value"),
    "a tagged boolean that is none": ("spec: {suspend: !!bool maybe}", "cannot read this value"),
    "a lone surrogate": ('spec: {mode: "\\ud800"}', "escape that is no character"),
}


@pytest.mark.parametrize("defect", sorted(YAML_DEFECTS))
@pytest.mark.parametrize("kind", ["--chain", "--targets"])
def test_a_yaml_file_that_python_cannot_take_is_one_line_and_exit_2(
    run: Run, tmp_path: Path, defect: str, kind: str
) -> None:
    body, complaint = YAML_DEFECTS[defect]
    path = write(tmp_path / "f.yaml", f"kind: ProxyChain\nmetadata: {{name: c}}\n{body}\n")
    args = ("check", kind, str(path), "-o", "json", *FAST) + ((REF,) if kind == "--chain" else ())
    message = run(*args).refused(json_output=True)
    assert message.startswith(f"{path} is not valid YAML at line 3: ") and complaint in message


@pytest.mark.parametrize(
    ("what", "content", "complaint"),
    [
        ("chain", b"kind: ProxyChain\nmetadata: {name: \xff}\n", "file {} is not UTF-8 text"),
        ("chain", b"# " + b"x" * MAX_FILE_BYTES + b"\n" + CHAIN.encode(), "file {} is larger than 4 MiB"),
        ("targets", b"kind: Target\nname: t\xc3\n", "file {} is not UTF-8 text"),
        ("docker", b'{"auths": {"127.0.0.1:9": {"auth": "\xff"}}}', "docker config {} is not UTF-8 text"),
        (
            "docker",
            b'{"auths": {"127.0.0.1:9": {"username": "\\ud800", "password": "p"}}}',
            "docker config {}",
        ),
        ("ca", b"\xff\xfe", "CA file {} is not UTF-8 text"),
        ("ca", b"this is no certificate\n", "CA file {} holds no PEM certificate"),
        ("ca", b"", "CA file {} holds no PEM certificate"),
        ("ca", CHAIN.encode(), "CA file {} holds no PEM certificate"),
    ],
)
def test_a_file_of_any_kind_that_cannot_be_used_is_one_line_and_exit_2(
    run: Run, tmp_path: Path, what: str, content: bytes, complaint: str
) -> None:
    path = write(tmp_path / "file", content)
    flags = {
        "chain": ("--chain", str(path), REF),
        "targets": ("--targets", str(path)),
        "docker": ("--docker-config", str(path), "--plain-http", REF),
        "ca": ("--ca-file", str(path), REF),
    }[what]
    message = run("check", *flags, *FAST, "-o", "json").refused(json_output=True)
    assert message.startswith(complaint.format(path)), message


def test_a_lone_surrogate_in_a_target_file_is_refused_where_it_stands(tmp_path: Path) -> None:
    """Accepted, it failed later: serve's scheduler encodes target names (UnicodeEncodeError)."""
    path = write(
        tmp_path / "serve.yaml", CHAIN + '---\nkind: Target\nname: "t\\udc80"\nurl: oci://127.0.0.1:9/a/b\n'
    )
    with pytest.raises(ChainError, match=r"serve.yaml is not valid YAML at line \d+: .*no character"):
        load_serve_config(path, FileSettings())


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ("certFile: tls.crt, keyFile: bad.key", "client key {}/bad.key is not UTF-8 text"),
        ("certFile: tls.crt, keyFile: nowhere.key", "cannot read client key {}/nowhere.key: No such file"),
        ("certFile: tls.crt, keyFile: tls.crt", "hop edge: client certificate does not load"),
        ("certFile: bad.key, keyFile: tls.key", "client certificate {}/bad.key is not UTF-8 text"),
        ('caFile: "ca\\0.pem"', "hop edge: caFile must be a file path"),
        ("caFile: [ca.pem]", "hop edge: caFile must be a file path"),
        ("dockerConfig: {path: d.json}", "hop edge: dockerConfig must be a file path"),
    ],
)
def test_unusable_certificate_key_and_ca_fields_are_one_line_and_exit_2(
    run: Run, tmp_path: Path, fields: str, complaint: str
) -> None:
    cert, key = TestCA(tmp_path).issue("client", client=True)
    write(tmp_path / "tls.crt", cert.read_text())
    write(tmp_path / "tls.key", key.read_text())
    write(tmp_path / "bad.key", b"-----BEGIN PRIVATE KEY-----\n\xff\n-----END PRIVATE KEY-----\n")
    chain = write(tmp_path / "chain.yaml", chain_with_hop(fields))
    message = run("check", "--chain", str(chain), REF, *FAST, "-o", "json").refused(json_output=True)
    assert message.startswith(complaint.format(tmp_path)), message


@pytest.mark.parametrize(
    "address",
    ["http://robot:pw@127.0.0.1:3l28", "http://robot:pw@127.0.0.1:99999", "http://[::1", "127.0.0.1:3l28"],
)
def test_a_proxy_in_the_environment_that_cannot_be_used_is_one_line_and_exit_2(
    run: Run, monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", address)
    message = run("check", "127.0.0.1:9/org/app:v1", *FAST, "-o", "json").refused(json_output=True)
    assert "proxy" in message.lower() and "pw" not in message


def test_a_name_with_a_newline_is_refused_and_every_error_stays_one_line(run: Run, tmp_path: Path) -> None:
    path = write(
        tmp_path / "chain.yaml", 'kind: ProxyChain\nmetadata: {name: "c\\nLayerMissing: x"}\nspec: {}\n'
    )
    message = run("check", "--chain", str(path), REF).refused()
    assert message == (
        "ProxyChain name 'c\\nLayerMissing: x' must be at most 253 characters, "
        "without spaces or control characters"
    )


@given(message=st.text())
def test_an_error_message_of_any_text_is_printed_as_one_line(message: str) -> None:
    line = one_line(message, ERROR_LIMIT)
    assert len(line.splitlines()) <= 1 and line.isprintable() and len(line) <= ERROR_LIMIT


def test_aliases_are_refused_so_a_small_file_cannot_expand_into_a_huge_tree(tmp_path: Path) -> None:
    laughs = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
    text = CHAIN.replace("spec:\n", "spec:\n  l0: &l0 [lol]\n" + textwrap.indent(laughs, "  "))
    with pytest.raises(ChainError, match=r"line 5: aliases \(\*name\) are not supported"):
        load_chain_file(write(tmp_path / "chain.yaml", text), FileSettings())


@pytest.mark.parametrize(
    ("flag", "value", "complaint"),
    [
        ("--retries", "9" * 5000, "--retries must be a whole number, not '9999"),
        ("--parallel-checks", "1.5", "--parallel-checks must be a whole number, not '1.5'"),
        ("--timeout", "9" * 5000, "--timeout must be a positive number, not inf"),
    ],
)
def test_a_huge_or_fractional_engine_setting_is_one_line_and_exit_2(
    run: Run, flag: str, value: str, complaint: str
) -> None:
    assert (
        run("check", flag, value, REF, "-o", "json")
        .refused(json_output=True, kind="usage")
        .startswith(complaint)
    )


def test_a_malformed_reference_is_exit_2_and_a_registry_outage_is_exit_3(run: Run) -> None:
    assert run("check", "oci://127.0.0.1:9/Org/App:v1", *FAST).status == 2
    assert run("check", REF, *FAST).status == 3


# -- the same, as a real process ------------------------------------------------------------------------


def test_a_bad_proxy_in_the_environment_is_one_json_error_from_a_real_process() -> None:
    outcome = process("check", "-o", "json", *FAST, REF, env={"HTTPS_PROXY": "http://u:pw@127.0.0.1:3l28"})
    assert "proxy" in outcome.refused(json_output=True).lower()


@pytest.mark.parametrize(
    "content",
    [f"kind: ProxyChain\nmetadata: {{name: c}}\nspec: {deep(900)}\n".encode(), b"\xff" + SERVE.encode()],
)
def test_serve_with_a_bad_file_at_start_is_one_line_and_exit_2_from_a_real_process(
    tmp_path: Path, content: bytes
) -> None:
    config = write(tmp_path / "serve.yaml", content)
    outcome = process(
        "serve", "--config", str(config), "--metrics-address", "127.0.0.1", "--metrics-port", "0"
    )
    assert outcome.refused().startswith(("file ", str(config)))


def test_a_ca_file_that_is_not_pem_is_exit_2_from_a_real_process(tmp_path: Path) -> None:
    ca = write(tmp_path / "ca.pem", "not a certificate\n")
    message = process("check", "--ca-file", str(ca), *FAST, REF).refused()
    assert message == f"CA file {ca} holds no PEM certificate"


class Serving:
    """A ``layerwatch serve`` process, its stderr as a file, and its metrics port."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        args = ("serve", "--config", str(config), "--metrics-address", "127.0.0.1", "--metrics-port", "0")
        with log.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "layerwatch", *args],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=environment(),
            )
        line = self.wait_for("serving /metrics")
        self.url = f"http://127.0.0.1:{line.rsplit(' ', 1)[1]}"

    def wait_for(self, text: str, count: int = 1) -> str:
        """The ``count``-th log line holding ``text``, waiting for it (up to a minute)."""
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            lines = [line for line in self.log.read_text().splitlines() if text in line]
            if len(lines) >= count:
                return lines[count - 1]
            assert self.process.poll() is None, self.log.read_text()
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in {self.log.read_text()}")

    def metric(self, name: str) -> str:
        lines = httpx.get(f"{self.url}/metrics").text.splitlines()
        return next(line.split()[-1] for line in lines if line.startswith(name + " "))

    def targets(self) -> list[str]:
        return [a["name"] for a in httpx.get(f"{self.url}/api/v1/status").json()["artifacts"]]


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Serving]:
    running = Serving(write(tmp_path / "serve.yaml", SERVE), tmp_path / "serve.log")
    try:
        yield running
    finally:
        running.process.terminate()
        running.process.wait(timeout=30)


def test_sighup_with_bad_files_keeps_the_running_plan_and_says_so_once_each(serving: Serving) -> None:
    assert serving.metric("layerwatch_config_last_reload_successful") == "1.0"
    bad_files: list[str | bytes] = [
        f"kind: ProxyChain\nmetadata: {{name: c}}\nspec: {deep(5000)}\n",
        SERVE.replace("1h", "9" * 5000),
        b"\xff" + SERVE.encode(),
        SERVE.replace("name: t", 'name: "t\\ud800"'),
        SERVE + "---\nkind: Target\nname: u\nurl: oci://127.0.0.1:9/a/b\ncaFile: x\n",
    ]
    for count, content in enumerate(bad_files, start=1):
        write(serving.config, content)
        serving.process.send_signal(signal.SIGHUP)
        line = serving.wait_for("keeping the running plan", count)
        assert f"reload of {serving.config} failed, keeping the running plan: " in line
        assert serving.metric("layerwatch_config_last_reload_successful") == "0.0"
        assert serving.targets() == ["t"]
    write(serving.config, SERVE.replace("name: t", "name: t2"))
    serving.process.send_signal(signal.SIGHUP)
    serving.wait_for("reloaded")
    assert serving.metric("layerwatch_config_last_reload_successful") == "1.0"
    assert serving.targets() == ["t2"]
    serving.process.terminate()
    assert serving.process.wait(timeout=30) == 0
    log = serving.log.read_text()
    assert "Traceback" not in log and "Exception in callback" not in log, log
    assert all(" ERROR " not in line or "keeping the running plan" in line for line in log.splitlines())


# -- property tests: arbitrary values in every field, arbitrary bytes in every file ----------------------

TEXT = st.text(st.characters(codec=None), max_size=30)
"""Any code points, lone surrogates and control characters included."""
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**300), max_value=10**300) | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
RAW = st.sampled_from(
    [
        "9" * 5000,
        "-" + "9" * 400,
        "0x" + "f" * 40,
        "190:20:30",
        deep(MAX_DEPTH + 1),
        deep(MAX_DEPTH - 4),
        "*nowhere",
        "&a [1]",
        "!!int ''",
        "!!float x",
        "!!bool maybe",
        "!!timestamp x",
        "2001-02-30",
        "!!binary '!!'",
        "!!python/object/apply:os.system ['true']",
        "!!set {a}",
        "{? [a]: b}",
        "{<<: [1]}",
        '"\\ud800"',
        '"\\0"',
        "~",
        ".nan",
        "-.inf",
        "''",
    ]
)
FRAGMENTS = (
    VALUES.map(lambda value: yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()) | RAW
)
"""YAML for one value, written the way a person or a program might."""

CHAIN_FIELDS = [f"hop.{key}" for key in sorted(HOP_KEYS)] + [
    "name",
    "spec",
    "hops",
    "hop",
    "interval",
    "mode",
    "suspend",
    "verify",
    "namespaceSelector",
    "metadata",
]
TARGET_FIELDS = [
    "name",
    "url",
    "ref",
    "ref.tag",
    "ref.digest",
    "layerSelector",
    "mediaType",
    "chain",
    "verify",
]


def chain_document(field: str, value: str) -> str:
    hop = {"name": "edge", "url": "'http://127.0.0.1:9'", "caFile": "ca.pem"}
    spec = {"interval": "1h", "hops": "[@hop@]"}
    document = {"kind": "ProxyChain", "metadata": "{name: c}", "spec": "@spec@"}
    if field.startswith("hop."):
        hop[field.removeprefix("hop.")] = value
    elif field in ("hop", "hops"):
        spec["hops"] = value if field == "hops" else f"[{value}]"
    elif field == "name":
        document["metadata"] = f"{{name: {value}}}"
    elif field in ("metadata", "spec"):
        document[field] = value
    else:
        spec[field] = value
    flow = ", ".join(f"{k}: {v}" for k, v in hop.items())
    body = ", ".join(f"{k}: {v}" for k, v in spec.items()).replace("@hop@", f"{{{flow}}}")
    return "\n".join(f"{k}: {v}" for k, v in document.items()).replace("@spec@", f"{{{body}}}") + "\n"


def target_document(field: str, value: str) -> str:
    target = {"kind": "Target", "name": "t", "url": "oci://127.0.0.1:9/org/app", "ref": "{tag: v1}"}
    if field.startswith("ref."):
        target["ref"] = f"{{{field.removeprefix('ref.')}: {value}}}"
    elif field == "mediaType":
        target["layerSelector"] = f"{{mediaType: {value}}}"
    else:
        target[field] = value
    return "\n".join(f"{k}: {v}" for k, v in target.items()) + "\n"


def files(directory: Path) -> Path:
    """A directory with the CA file every generated chain names."""
    write(directory / "ca.pem", CA_PEM)
    return directory


with tempfile.TemporaryDirectory() as _directory:
    CA_PEM = TestCA(Path(_directory)).path.read_text()

LOADERS: dict[str, Callable[[Path, FileSettings], Any]] = {
    "chain": load_chain_file,
    "targets": load_targets_file,
    "serve": load_serve_config,
}


def loads_or_says_why(loader: Callable[[Path, FileSettings], Any], path: Path) -> str | None:
    """None when the file loads, else the one error it gives; any other exception fails the test."""
    try:
        loader(path, FileSettings())
    except ChainError as exc:
        assert str(exc), "an error must say something"
        return str(exc)
    return None


HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HYPOTHESIS
@given(field=st.sampled_from(CHAIN_FIELDS), value=FRAGMENTS, loader=st.sampled_from(sorted(LOADERS)))
def test_any_value_in_any_chain_field_loads_or_is_one_chain_error(
    field: str, value: str, loader: str
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = write(files(Path(directory)) / "f.yaml", chain_document(field, value) + "---\n" + TARGET)
        loads_or_says_why(LOADERS[loader], path)


@HYPOTHESIS
@given(field=st.sampled_from(TARGET_FIELDS), value=FRAGMENTS, loader=st.sampled_from(["targets", "serve"]))
def test_any_value_in_any_target_field_loads_or_is_one_chain_error(
    field: str, value: str, loader: str
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = write(files(Path(directory)) / "f.yaml", CHAIN + "---\n" + target_document(field, value))
        loads_or_says_why(LOADERS[loader], path)


PEM_LIKE = st.builds(
    lambda kind, body: f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n",
    st.sampled_from(["CERTIFICATE", "PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY"]),
    st.text("ABCDEFabcdef0123456789+/=\n", max_size=200),
)
CONTENTS = (
    st.binary(max_size=300)
    | TEXT.map(lambda text: text.encode("utf-8", "surrogatepass"))
    | PEM_LIKE.map(str.encode)
)
"""Bytes for a file: random, any code points as (possibly invalid) UTF-8, or PEM-shaped."""
DOCKER_CONFIGS = st.builds(
    lambda entry, top: json.dumps({"auths": {"127.0.0.1:9": entry}, **top}).encode(),
    VALUES,
    st.dictionaries(st.sampled_from(["auths", "credHelpers", "HttpHeaders", "x"]), VALUES, max_size=2),
)


@HYPOTHESIS
@given(
    kind=st.sampled_from(["chain", "targets", "serve", "dockerConfig", "caFile", "certFile", "keyFile"]),
    content=CONTENTS | DOCKER_CONFIGS,
)
def test_any_bytes_in_any_file_load_or_are_one_chain_error(kind: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        here = files(Path(directory))
        write(here / "file", content)
        write(here / "tls.crt", CA_PEM)
        if kind in LOADERS:
            loads_or_says_why(LOADERS[kind], here / "file")
            return
        fields = {"dockerConfig": "dockerConfig: file", "caFile": "caFile: file"}.get(
            kind,
            "certFile: tls.crt, keyFile: file" if kind == "keyFile" else "certFile: file, keyFile: tls.crt",
        )
        said = loads_or_says_why(load_chain_file, write(here / "chain.yaml", chain_with_hop(fields)))
        assert said is not None or kind == "dockerConfig", "no such CA, certificate or key loads"


@HYPOTHESIS
@given(field=st.sampled_from(CHAIN_FIELDS + TARGET_FIELDS), value=FRAGMENTS)
def test_a_reload_of_any_file_keeps_the_running_plan_or_runs_the_new_one(
    caplog: pytest.LogCaptureFixture, field: str, value: str
) -> None:
    """SIGHUP: a bad file leaves the plan and says why in one log line, and the metric shows it."""
    content = (
        chain_document(field, value) + "---\n" + TARGET
        if field in CHAIN_FIELDS
        else CHAIN + "---\n" + target_document(field, value)
    )
    with tempfile.TemporaryDirectory() as directory:
        path = write(files(Path(directory)) / "serve.yaml", SERVE)
        store = ResultStore()
        metrics = Metrics(store)
        running = ConfigFile(
            path,
            FileSettings(),
            load_serve_config(path, FileSettings()),
            Scheduler(store=store, metrics=metrics),
            metrics,
        )
        before = running.config
        write(path, content)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="layerwatch.serve"):
            loaded = asyncio.run(running.reload())
    exposition = metrics.exposition().decode()
    if loaded:
        assert "layerwatch_config_last_reload_successful 1.0" in exposition
        return
    assert running.config is before
    assert "layerwatch_config_last_reload_successful 0.0" in exposition
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is None
    assert "\n" not in record.getMessage() and "keeping the running plan" in record.getMessage()


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "http_proxy"])
def test_the_operator_with_a_proxy_it_cannot_use_stops_at_start_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str
) -> None:
    """A typo in the Deployment's proxy is a crash loop with the reason, not every check failing."""
    from layerwatch.kube.main import run_operator

    monkeypatch.setenv(variable, "http://robot:pw@proxy.corp:3l28")
    assert run_operator([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("layerwatch operator: ") and "invalid port" in err and "pw" not in err
    assert len(err.splitlines()) == 1
