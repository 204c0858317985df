"""Text a registry chose can never forge a line in what people and alerts read.

Media types, platforms, OCI error messages and header values reach hop messages, notes, the
Kubernetes condition, the text report and logs only as one escaped, bounded line: a newline shows
as ``\\n``, an ANSI escape as ``\\x1b``, a bidi override as ``\\u202e``.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.fake_registry import (
    FakeRegistry,
    Hook,
    check,
    digest,
    manifest_for,
    oci_error,
    running,
)

from layerwatch.kube.conditions import desired_condition
from layerwatch.manifest import FLUX_CONTENT, OCI_INDEX
from layerwatch.report import to_text
from layerwatch.text import one_line
from layerwatch.verdict import MESSAGE_LIMIT, CheckResult, Verdict

FORGED = "text/plain\nLayerMissing: hop origin (origin/org/app): layer 0 missing (404)"
HOSTILE = [
    FORGED,
    "text/plain\r\n\r\nHealthy",
    "text/plain\x1b[2K\x1b[1A\x1b[32mHealthy\x1b[0m",
    "text/plain\u202eyhtlaeH\u202c",
    "text/plain\u2028Healthy\u2029\x85\x0b\x0c\u200b\ufeff",
    "text/plain" + "\n" * 5000,
    "text/" + "x" * 100_000,
]
INVISIBLE = ["\n", "\r", "\x1b", "\u202e", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\u200b", "\ufeff"]


def assert_one_safe_line(text: str, limit: int = MESSAGE_LIMIT) -> None:
    assert len(text) <= limit, len(text)
    assert text.isprintable(), [c for c in text if not c.isprintable()][:5]
    assert not any(c in text for c in INVISIBLE)


def said_everywhere(result: CheckResult) -> list[str]:
    """Every place a person or an alert reads a check: hop messages, notes, condition, report."""
    judgement = result.judgement
    condition = desired_condition(judgement, 1)["message"]
    return [hop.message for hop in judgement.hops] + list(judgement.notes) + [condition]


async def checked_safely(registry: FakeRegistry, hook: Hook) -> CheckResult:
    """A check with ``hook`` bending the registry, once every place it is read is one safe line."""
    registry.hooks.append(hook)
    async with running(registry):
        result = await check(registry.url)
    for text in said_everywhere(result):
        assert_one_safe_line(text)
    return result


async def layer_zero_typed(media_type: str) -> CheckResult:
    """A check of an artifact whose layer 0 has ``media_type`` and whose Flux content is layer 1."""
    content, junk = b"flux content " * 100, b"not the content"
    registry = FakeRegistry(content)
    registry.blobs[digest(junk)] = junk
    registry.put_manifest(manifest_for(registry.config, [junk, content], [media_type, FLUX_CONTENT]), "v1")
    async with running(registry):
        return await check(registry.url)


@pytest.mark.parametrize("media_type", HOSTILE, ids=range(len(HOSTILE)))
async def test_a_forged_layer_media_type_stays_inside_its_one_line(media_type: str) -> None:
    result = await layer_zero_typed(media_type)
    hop = result.judgement.hops[0]
    assert hop.verdict is Verdict.LAYER_ORDER_MISMATCH
    assert "not the Flux content layer" in hop.message  # the rest of the message survives a long value
    for text in said_everywhere(result):
        assert_one_safe_line(text)
    report = to_text(result)
    assert sum(line.startswith("LayerMissing") for line in report.splitlines()) == 0
    assert len(report.splitlines()) == len(to_text_of_a_plain_type(result).splitlines())


def to_text_of_a_plain_type(result: CheckResult) -> str:
    """The same report as if the media type had been harmless: the line count to compare with."""
    hops = tuple(dataclasses.replace(hop, message="hop message") for hop in result.judgement.hops)
    return to_text(dataclasses.replace(result, judgement=dataclasses.replace(result.judgement, hops=hops)))


async def test_the_forged_newline_is_shown_escaped_so_people_see_what_the_registry_sent() -> None:
    result = await layer_zero_typed(FORGED)
    assert "layer 0 is text/plain\\nLayerMissing: hop origin" in result.judgement.hops[0].message


async def test_a_forged_platform_and_oci_error_message_stay_one_line() -> None:
    registry = FakeRegistry()
    child = registry.manifest
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest(child),
                "size": len(child),
                "platform": {"os": "linux\nHealthy: all good", "architecture": "amd64\u202e"},
            }
        ],
    }
    registry.put_manifest(json.dumps(index).encode(), "v1", OCI_INDEX)

    async def missing_child(request: web.Request) -> web.Response | None:
        if request.path.endswith("/manifests/" + digest(child)):
            return oci_error(404, "MANIFEST_UNKNOWN", "gone\n\x1b[32mHealthy\u2028" + "y" * 5000)
        return None

    result = await checked_safely(registry, missing_child)
    assert result.judgement.verdict is Verdict.MANIFEST_MISSING
    assert "linux\\nHealthy: all good" in result.judgement.hops[0].message


async def test_a_content_encoding_header_with_control_characters_stays_one_line() -> None:
    registry = FakeRegistry()

    async def encoded(request: web.Request) -> web.Response | None:
        if registry.layer_digest in request.path and request.method == "GET":
            return web.Response(body=b"x", headers={"Content-Encoding": "gzip\u202eevil\u2028x"})
        return None

    assert (await checked_safely(registry, encoded)).judgement.verdict is Verdict.LAYER_CORRUPT


@given(st.text(), st.integers(min_value=1, max_value=400))
def test_one_line_is_printable_bounded_and_keeps_what_was_already_safe(text: str, limit: int) -> None:
    line = one_line(text, limit)
    assert_one_safe_line(line, limit)
    if text.isprintable() and len(text) <= limit:
        assert line == text
    if len(line) < len(text) and line.endswith("…"):
        assert not line[:-1].endswith("\\")  # never half an escape
