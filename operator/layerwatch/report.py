"""Rendering a check result for people (a per-hop table) and for machines (SPEC 6 JSON).

The JSON field names are a contract (camelCase, fixed by SPEC 6; fields are only ever added).
Nothing here can leak a secret: observations never hold credentials, and hop URLs are rebuilt
from scheme, host and prefix.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from layerwatch.manifest import FLUX_CONTENT, Index, Manifest, flux_layer
from layerwatch.observation import BlobCheck, HopObservation, ManifestCheck
from layerwatch.reference import short_digest
from layerwatch.verdict import CheckResult, Health, HopVerdict

__all__ = ["describe_artifact", "exit_code", "to_json", "to_text"]


def _blob_json(blob: BlobCheck) -> dict[str, Any]:
    data: dict[str, Any] = {
        "digest": blob.descriptor.digest,
        "mediaType": blob.descriptor.media_type,
        "size": blob.descriptor.size,
        "status": blob.status.value,
        "cached": blob.facts.cached,
    }
    if blob.index is not None:
        data = {"index": blob.index, **data}
    if blob.detail:
        data["detail"] = blob.detail
    return data


def _manifest_json(check: ManifestCheck) -> dict[str, Any]:
    return {
        "digest": check.digest,
        "platform": check.platform,
        "config": _blob_json(check.config),
        "layers": [_blob_json(layer) for layer in check.layers],
    }


def _hop_json(observation: HopObservation, verdict: HopVerdict) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": observation.hop,
        "url": observation.url,
        "repository": observation.repository,
        "verdict": verdict.verdict.value,
        "message": verdict.message,
        "manifestDigest": observation.digest,
        "tagDigest": observation.tag_digest,
        "durationSeconds": round(observation.duration, 3),
        "bytesVerified": observation.bytes_verified,
    }
    if observation.index is None and observation.manifests:
        data.update(
            config=_blob_json(observation.manifests[0].config),
            layers=[_blob_json(layer) for layer in observation.manifests[0].layers],
        )
    else:
        data.update(config=None, layers=[])
        if observation.manifests:
            data["manifests"] = [_manifest_json(m) for m in observation.manifests]
    return data


def to_json(result: CheckResult) -> dict[str, Any]:
    """The SPEC 6 report object."""
    judgement = result.judgement
    return {
        "reference": f"oci://{result.reference}",
        "verdict": judgement.verdict.value,
        "blame": judgement.blame,
        "message": judgement.message,
        "originDigest": judgement.origin_digest,
        "mode": result.mode.value,
        "layerMediaType": result.layer_media_type,
        "checkedAt": dt.datetime.fromtimestamp(result.finished, dt.UTC).isoformat().replace("+00:00", "Z"),
        "notes": list(judgement.notes),
        "hops": [_hop_json(o, v) for o, v in zip(result.observations, judgement.hops, strict=True)],
    }


def exit_code(result: CheckResult) -> int:
    """SPEC 6: 0 healthy, 1 some hop unhealthy, 3 none unhealthy but some unknown."""
    return {Health.HEALTHY: 0, Health.UNHEALTHY: 1, Health.UNKNOWN: 3}[result.judgement.health]


_MARK = {Health.HEALTHY: "ok", Health.UNKNOWN: "??", Health.UNHEALTHY: "!!"}


def _printable(text: str) -> str:
    """Registry-supplied text for a terminal: control characters (newlines, ANSI escapes) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _lines(lines: Iterable[str]) -> str:
    return "\n".join(_printable(line) for line in lines)


def _table(rows: Iterable[tuple[str, ...]]) -> list[str]:
    rows = list(rows)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def to_text(result: CheckResult) -> str:
    """A per-hop table, then one line per problem, then the blame: what a person reads first."""
    judgement = result.judgement
    lines = [f"{result.reference}  ({result.mode.value} check)"]
    rows = [("", "HOP", "VERDICT", "MANIFEST", "BLOBS", "REPOSITORY")]
    for observation, verdict in zip(result.observations, judgement.hops, strict=True):
        blobs = [b for m in observation.manifests for b in m.blobs]
        ok = sum(1 for b in blobs if b.status.value == "ok")
        rows.append(
            (
                _MARK[verdict.verdict.health],
                observation.hop,
                verdict.verdict.value,
                short_digest(observation.digest),
                f"{ok}/{len(blobs)} ok" if blobs else "-",
                observation.location,
            )
        )
    lines += _table(rows)
    problems = [v for v in judgement.hops if v.verdict.health is not Health.HEALTHY]
    if problems:
        lines.append("")
        lines += [f"{v.verdict.value}: {v.message}" for v in problems]
    lines += [f"note: {note}" for note in judgement.notes]
    lines.append("")
    if judgement.blame:
        lines.append(f"verdict {judgement.verdict.value}, blame: hop {judgement.blame}")
    else:
        lines.append("verdict Healthy: every hop serves the artifact intact")
    return _lines(lines)


def describe_artifact(
    location: str, digest: str, parsed: Manifest | Index, layer_media_type: str | None
) -> str:
    """``layerwatch inspect``: an artifact's structure as a person reads it."""
    lines = [f"{location}", f"manifest  {digest}  {parsed.media_type}"]
    for key, value in sorted(parsed.annotations.items()):
        lines.append(f"  annotation {key}={value}")
    if isinstance(parsed, Index):
        lines.append(f"index of {len(parsed.manifests)} manifests:")
        for child in parsed.manifests:
            lines.append(f"  {child.platform or '-'}  {child.digest}  {child.size} B  {child.media_type}")
        return _lines(lines)
    if parsed.artifact_type:
        lines.append(f"artifactType  {parsed.artifact_type}")
    config = parsed.config
    lines.append(f"config (not a layer)  {config.digest}  {config.size} B  {config.media_type}")
    lines.append(f"layers ({len(parsed.layers)}):")
    for position, layer in enumerate(parsed.layers):
        lines.append(f"  [{position}] {layer.digest}  {layer.size} B  {layer.media_type}")
        for key, value in sorted(layer.annotations.items()):
            lines.append(f"        annotation {key}={value}")
    without = flux_layer(parsed, None)
    lines.append("Flux extracts:")
    lines.append(
        f"  without layerSelector: layer {without}"
        + (
            ""
            if without is None or parsed.layers[without].media_type == FLUX_CONTENT
            else f" ({parsed.layers[without].media_type}, NOT the Flux content layer)"
        )
        if without is not None
        else "  without layerSelector: nothing (no layers)"
    )
    selector = layer_media_type or FLUX_CONTENT
    chosen = flux_layer(parsed, selector)
    lines.append(
        f"  with layerSelector.mediaType={selector}: "
        + (f"layer {chosen}" if chosen is not None else "nothing (no layer matches; Flux fails)")
    )
    return _lines(lines)
