"""Logs carry no Secret data at any level, and every message is one line.

People turn on ``--log-level debug`` exactly when something is wrong, and logs are shipped off the
cluster. The Kubernetes client prints every response body at DEBUG, a Secret's too: read a Secret
through layerwatch's own apiserver code at debug level (against a fake apiserver on loopback) and
neither its password nor its base64 may appear in what was logged.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import logging
import threading
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from layerwatch.kube.api import KubeApi
from layerwatch.logs import OWN_LOGGER, configure_logging

PASSWORD = "Harbor-robot-s3cret-pw"
USERNAME = "robot$platform"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "robot", "namespace": "layerwatch"},
    "type": "kubernetes.io/basic-auth",
    "data": {"username": b64(USERNAME), "password": b64(PASSWORD)},
}


class FakeApiserver(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the Secret, as ``get secrets`` would."""

    def do_GET(self) -> None:
        body = json.dumps(SECRET).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads what layerwatch logs, not what this server would."""


@contextlib.contextmanager
def fake_apiserver() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeApiserver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, own = logging.getLogger(), logging.getLogger(OWN_LOGGER)
    saved = root.handlers[:], root.level, own.level
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    own.setLevel(saved[2])


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_reading_a_secret_at_debug_level_logs_neither_its_password_nor_its_base64(
    fmt: str, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging(fmt, logging.DEBUG)
    with fake_apiserver() as url:
        configuration = k8s.Configuration(host=url)
        api = KubeApi(k8s.ApiClient(configuration))
        try:
            credentials = await api.credentials("layerwatch", "robot", "harbor.example")
        finally:
            api.close()
    logging.getLogger(f"{OWN_LOGGER}.test").debug("layerwatch's own debug lines still show")
    captured = capfd.readouterr()
    logged = captured.out + captured.err
    assert credentials is not None and credentials.password == PASSWORD  # the Secret was read
    assert "layerwatch's own debug lines still show" in logged
    for secret in (PASSWORD, b64(PASSWORD), b64(f"{USERNAME}:{PASSWORD}"), b64(USERNAME)):
        assert secret not in logged


@pytest.mark.usefixtures("restore_logging")
def test_a_library_logger_set_to_debug_by_hand_still_prints_nothing_below_info(
    capfd: pytest.CaptureFixture[str],
) -> None:
    configure_logging("text", logging.DEBUG)
    library = logging.getLogger("kubernetes.client.rest")
    level = library.level
    library.setLevel(logging.DEBUG)
    try:
        library.debug("response body: %s", json.dumps(SECRET))
        library.info("a library's info line")
    finally:
        library.setLevel(level)
    logged = capfd.readouterr().err
    assert b64(PASSWORD) not in logged
    assert "a library's info line" in logged


@pytest.mark.usefixtures("restore_logging")
def test_a_message_carrying_registry_text_is_one_log_line(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("text", logging.INFO)
    logging.getLogger(f"{OWN_LOGGER}.test").warning(
        "hop said %s", "text/plain\nWARNING layerwatch: forged line\x1b[2K\u202e"
    )
    logged = capfd.readouterr().err
    assert len(logged.splitlines()) == 1
    assert "\\nWARNING layerwatch: forged line\\x1b[2K\\u202e" in logged
