"""The status page as a browser renders it: headless Debian chromium against ``layerwatch serve``.

Chromium's ``--dump-dom`` gives the DOM after rendering, ``--screenshot`` a PNG. The lab chain
(tests/serve_harness.py) has healthy artifacts and one whose content layer is dropped at core.
Set ``UPDATE_SCREENSHOT=1`` to write the screenshot to docs/status-page.png.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from tests.serve_harness import BROKEN, BROKEN_HOP, HEALTHY, ROOT, ServeLab

from layerwatch.web import RUNBOOKS

pytestmark = pytest.mark.browser

CHROMIUM_TIMEOUT = 60.0
WINDOW = (1400, 900)
SCREENSHOT = ROOT / "docs" / "status-page.png"
_CHECKED = re.compile(r"checked (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")


def run_chromium(chromium: str, user_data: Path, *args: str) -> str:
    """Run headless chromium with networking extras off; its whole process group is always ended."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={user_data}",
        *args,
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT:.0f}s: {args}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # renderer/zygote children, if any are left
        process.wait(timeout=10)
    assert process.returncode == 0, f"chromium exited {process.returncode}:\n{err[-3000:]}"
    return out


class Cell:
    """A table cell or row header: its attributes, the row's ``data-artifact`` and its text."""

    def __init__(self, tag: str, attrs: dict[str, str], artifact: str | None) -> None:
        self.tag, self.attrs, self.artifact = tag, attrs, artifact
        self.text = ""


class PageParser(HTMLParser):
    """Collects table cells per row, and every URL the page refers to (src, href, CSS url())."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[Cell] = []
        self.urls: list[tuple[str, str, str]] = []
        self._artifact: str | None = None
        self._open: Cell | None = None
        self._in_style = False

    def handle_starttag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        attrs = {k: v or "" for k, v in attributes}
        for name in ("src", "href", "srcset", "poster", "data", "action", "background"):
            if name in attrs:
                self.urls.append((tag, name, attrs[name]))
        if "style" in attrs:
            self.urls += [(tag, "style", url) for url in re.findall(r"url\(([^)]*)\)", attrs["style"])]
        if tag == "style":
            self._in_style = True
        elif tag == "tr":
            self._artifact = attrs.get("data-artifact")
        elif tag in ("td", "th"):
            self._open = Cell(tag, attrs, self._artifact)
            self.cells.append(self._open)

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False
        elif tag in ("td", "th"):
            self._open = None
        elif tag == "tr":
            self._artifact = None

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.urls += [("style", "url()", url) for url in re.findall(r"url\(([^)]*)\)", data)]
            self.urls += [("style", "@import", url) for url in re.findall(r"@import\s+([^;]+)", data)]
        if self._open is not None:
            self._open.text += data + " "


@pytest.fixture(scope="module")
def page(chromium: str, serve_lab: ServeLab, tmp_path_factory: pytest.TempPathFactory) -> PageParser:
    """The status page's DOM after chromium rendered it."""
    dom = run_chromium(chromium, tmp_path_factory.mktemp("chromium"), "--dump-dom", f"{serve_lab.url}/")
    assert "<table" in dom, dom[:2000]
    parser = PageParser()
    parser.feed(dom)
    return parser


def _data_cells(page: PageParser, artifact: str) -> dict[str, Cell]:
    return {c.attrs["data-hop"]: c for c in page.cells if c.artifact == artifact and "data-hop" in c.attrs}


def _assert_recent(text: str) -> None:
    match = _CHECKED.search(text)
    assert match, f"no 'checked <time>' in {text!r}"
    checked = dt.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    age = dt.datetime.now(dt.UTC) - checked
    assert dt.timedelta(seconds=-5) < age < dt.timedelta(minutes=10), (checked, text)


def test_failing_cell_names_hop_repository_layer_and_time(page: PageParser, serve_lab: ServeLab) -> None:
    cells = _data_cells(page, BROKEN)
    assert set(cells) == {"edge", "core", "origin"}, cells.keys()
    failing = cells[BROKEN_HOP]
    assert failing.attrs["data-verdict"] == "LayerMissing"
    assert failing.attrs.get("class") == "unhealthy blamed"
    assert failing.attrs.get("data-blamed") == "true", "the broken hop is the one blamed"
    text = " ".join(failing.text.split())
    assert f"hop {BROKEN_HOP}" in text
    assert serve_lab.repository_at(BROKEN_HOP, BROKEN) in text
    layer = serve_lab.broken.content_layer.digest
    assert layer[: len("sha256:") + 12] in text, f"layer {layer} not named in {text!r}"
    assert "missing" in text
    _assert_recent(text)
    assert re.search(r"since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(for \d+[smh]", text), text
    assert "runbook" in text
    # The edge pulls through core, so it lacks the layer too, but is not the one blamed.
    assert cells["edge"].attrs["data-verdict"] == "LayerMissing"
    assert "data-blamed" not in cells["edge"].attrs
    assert cells["edge"].attrs.get("class") == "unhealthy passed"
    assert f"passes on the fault of hop {BROKEN_HOP}" in cells["edge"].text
    assert cells["origin"].attrs["data-verdict"] == "Healthy"


def test_healthy_artifacts_are_healthy_at_every_hop(page: PageParser) -> None:
    for name in HEALTHY:
        cells = _data_cells(page, name)
        assert set(cells) == {"edge", "core", "origin"}, (name, cells.keys())
        for hop, cell in cells.items():
            assert cell.attrs["data-verdict"] == "Healthy", (name, hop, cell.text)
            assert cell.attrs.get("class") == "healthy"
            _assert_recent(cell.text)


def test_page_loads_no_external_assets(page: PageParser) -> None:
    assert page.urls, "expected at least the JSON and metrics links"
    for tag, attribute, url in page.urls:
        value = url.strip().strip("'\"").lower()
        if tag == "a" and value.startswith(RUNBOOKS.lower() + "#"):
            continue  # a link to read, not something the page loads
        assert not value.startswith(("http:", "https:", "//")), (tag, attribute, url)
    assert not [(tag, attr) for tag, attr, _ in page.urls if tag in ("script", "img", "link", "iframe")]
    assert {url for tag, _, url in page.urls if tag == "a"} >= {"api/v1/status", "metrics"}


def test_the_broken_artifact_is_the_first_row_with_its_runbook(page: PageParser) -> None:
    rows = [c.artifact for c in page.cells if c.tag == "th" and c.artifact]
    assert rows[0] == BROKEN, rows
    header = next(c for c in page.cells if c.tag == "th" and c.artifact == BROKEN)
    assert f"LayerMissing at {BROKEN_HOP} since" in " ".join(header.text.split())
    runbooks = [url for tag, _, url in page.urls if tag == "a" and url.startswith(RUNBOOKS)]
    assert f"{RUNBOOKS}#layerwatchlayermissing" in runbooks


def test_the_page_refreshes_itself_in_place(chromium: str, serve_lab: ServeLab, tmp_path: Path) -> None:
    """With ``?refresh=1`` and 5 s of virtual time the inline script swaps fresh content in."""
    dom = run_chromium(
        chromium,
        tmp_path / "profile",
        "--virtual-time-budget=5000",
        "--dump-dom",
        f"{serve_lab.url}/?refresh=1",
    )
    refreshes = re.search(r'<body[^>]*data-refreshes="(\d+)"', dom)
    assert refreshes and int(refreshes.group(1)) >= 1, dom[-1500:]
    assert 'data-hop="core" data-verdict="LayerMissing" data-blamed="true"' in dom


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_screenshot(chromium: str, serve_lab: ServeLab, tmp_path: Path) -> None:
    """Renders a PNG of the page; with UPDATE_SCREENSHOT=1 it replaces docs/status-page.png."""
    shot = tmp_path / "status-page.png"
    run_chromium(
        chromium,
        tmp_path / "profile",
        f"--screenshot={shot}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"{serve_lab.url}/",
    )
    data = shot.read_bytes()
    assert _png_size(data) == WINDOW
    assert len(data) > 20_000, "a page with a coloured table compresses to more than this"
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)
