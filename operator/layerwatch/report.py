"""Rendering a check result for people (a per-hop table) and for machines (JSON).

The JSON field names are a contract (camelCase; fields are only ever added, never renamed).
Nothing here can leak a secret: observations never hold credentials, and hop URLs are rebuilt
from scheme, host and prefix.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from layerwatch.manifest import (
    FLUX_CONTENT,
    FLUX_PLATFORM,
    Descriptor,
    Index,
    Manifest,
    flux_child,
    flux_layer,
)
from layerwatch.observation import Answer, BlobCheck, HopObservation, ManifestCheck
from layerwatch.reference import short_digest
from layerwatch.signatures import signatures_json
from layerwatch.text import one_line
from layerwatch.verdict import CheckResult, Health, HopVerdict, diagnosis_json

__all__ = [
    "Children",
    "combined_exit_code",
    "combined_json",
    "combined_text",
    "describe_artifact",
    "exit_code",
    "from_upstream",
    "inspect_json",
    "passed_on",
    "to_json",
    "to_text",
]


def passed_on(answer: Answer) -> bool:
    """Whether a hop's answer came from its upstream rather than its own cache, by its headers.

    Measured on Harbor v2.15.2: from its own storage a hop sends ``ETag: "<digest>"`` (quoted, as
    the distribution registry does). Passing its upstream's answer on, it sends an empty ETag (a
    manifest by tag, with an empty Docker-Content-Digest), an unquoted digest (a manifest by digest,
    or the empty body of a cold chain), or neither header (a blob streamed through, chunked).
    """
    if answer.etag is not None:
        return not answer.etag.startswith(('"', 'W/"'))
    return not answer.digest_header


def from_upstream(observation: HopObservation) -> tuple[int, int]:
    """(manifests, blobs) this hop passed on from its upstream: its GETs' answers, each blob once."""
    blobs = {
        blob.descriptor.digest
        for check in observation.manifests
        for blob in check.blobs
        if blob.facts.answer is not None and passed_on(blob.facts.answer)
    }
    return sum(1 for answer in observation.manifest_answers if passed_on(answer)), len(blobs)


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


def _hop_json(observation: HopObservation, verdict: HopVerdict, *, origin: bool) -> dict[str, Any]:
    manifests, blobs = (0, 0) if origin else from_upstream(observation)
    data: dict[str, Any] = {
        "name": observation.hop,
        "url": observation.url,
        "repository": observation.repository,
        "verdict": verdict.verdict.value,
        "message": verdict.message,
        "inheritedFrom": verdict.inherited_from,
        "diagnosis": diagnosis_json(verdict.diagnosis),
        "manifestDigest": observation.digest,
        "tagDigest": observation.tag_digest,
        "durationSeconds": round(observation.duration, 3),
        "bytesVerified": observation.bytes_verified,
        "signatures": signatures_json(observation.signatures),
        "fromUpstream": {"manifests": manifests, "blobs": blobs},
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
    """The report object of one check (its field names never change)."""
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
        "hops": [
            _hop_json(o, v, origin=position == len(judgement.hops) - 1)
            for position, (o, v) in enumerate(zip(result.observations, judgement.hops, strict=True))
        ],
    }


_EXIT = {Health.HEALTHY: 0, Health.UNHEALTHY: 1, Health.UNKNOWN: 3}


def exit_code(result: CheckResult) -> int:
    """0 healthy, 1 some hop unhealthy, 3 none unhealthy but some unknown."""
    return _EXIT[result.judgement.health]


_MARK = {Health.HEALTHY: "ok", Health.UNKNOWN: "??", Health.UNHEALTHY: "!!"}


def _lines(lines: Iterable[str]) -> str:
    """Lines for a terminal: registry-supplied text in them can start no line of its own."""
    return "\n".join(one_line(line, None) for line in lines)


def _table(rows: Iterable[tuple[str, ...]]) -> list[str]:
    rows = list(rows)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _passed_on_lines(observations: Sequence[HopObservation]) -> list[str]:
    """One line per hop (the origin has no upstream) that passed objects on from its upstream."""
    lines = []
    for observation in observations[:-1]:
        manifests, blobs = from_upstream(observation)
        counts = [_count(n, noun) for n, noun in ((manifests, "manifest"), (blobs, "blob")) if n]
        if counts:
            hop = observation.hop
            lines.append(f"{hop} passed {' and '.join(counts)} on from its upstream (not cached at {hop})")
    return lines


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
    lines += _passed_on_lines(result.observations)
    lines.append("")
    if judgement.blame:
        cause = judgement.blamed_verdict
        passed_on = (
            f" ({cause.value} there; hops in front of it pass it on)"
            if cause is not judgement.verdict
            else ""
        )
        lines.append(f"verdict {judgement.verdict.value}, blame: hop {judgement.blame}{passed_on}")
    else:
        lines.append("verdict Healthy: every hop serves the artifact intact")
    return _lines(lines)


Children = Mapping[str, "Manifest | str"]
"""An index's child manifests by digest, as fetched; a string says why one could not be read."""


def _flux_choice(manifest: Manifest, layer_media_type: str | None) -> dict[str, Any]:
    without = flux_layer(manifest, None)
    selector = layer_media_type or FLUX_CONTENT
    return {
        "withoutSelector": without,
        "withoutSelectorIsContent": without is not None
        and manifest.layers[without].media_type == FLUX_CONTENT,
        "selectorMediaType": selector,
        "withSelector": flux_layer(manifest, selector),
    }


def _descriptor_json(descriptor: Descriptor) -> dict[str, Any]:
    data: dict[str, Any] = {
        "digest": descriptor.digest,
        "mediaType": descriptor.media_type,
        "size": descriptor.size,
    }
    if descriptor.annotations:
        data["annotations"] = dict(descriptor.annotations)
    return data


def _manifest_inspection(manifest: Manifest, layer_media_type: str | None) -> dict[str, Any]:
    return {
        "mediaType": manifest.media_type,
        "artifactType": manifest.artifact_type,
        "annotations": dict(manifest.annotations),
        "config": _descriptor_json(manifest.config),
        "layers": [{"index": i, **_descriptor_json(layer)} for i, layer in enumerate(manifest.layers)],
        "fluxLayer": _flux_choice(manifest, layer_media_type),
    }


def inspect_json(
    reference: str,
    digest: str,
    parsed: Manifest | Index,
    layer_media_type: str | None,
    children: Children | None = None,
) -> dict[str, Any]:
    """``layerwatch inspect -o json``: the structure and Flux's choices, as data."""
    data: dict[str, Any] = {"reference": f"oci://{reference}", "digest": digest}
    if isinstance(parsed, Manifest):
        return {**data, **_manifest_inspection(parsed, layer_media_type)}
    chosen = flux_child(parsed)
    entries = []
    for child in parsed.manifests:
        entry: dict[str, Any] = {"platform": child.platform, **_descriptor_json(child)}
        fetched = (children or {}).get(child.digest)
        if isinstance(fetched, Manifest):
            entry["manifest"] = _manifest_inspection(fetched, layer_media_type)
        elif isinstance(fetched, str):
            entry["error"] = fetched
        entries.append(entry)
    return {
        **data,
        "mediaType": parsed.media_type,
        "annotations": dict(parsed.annotations),
        "manifests": entries,
        "fluxPlatform": FLUX_PLATFORM,
        "fluxManifest": parsed.manifests[chosen].digest if chosen is not None else None,
    }


def _manifest_lines(data: Mapping[str, Any], indent: str) -> list[str]:
    lines = [f"{indent}artifactType  {data['artifactType']}"] if data["artifactType"] else []
    config = data["config"]
    lines.append(
        f"{indent}config (not a layer)  {config['digest']}  {config['size']} B  {config['mediaType']}"
    )
    lines.append(f"{indent}layers ({len(data['layers'])}):")
    for layer in data["layers"]:
        lines.append(
            f"{indent}  [{layer['index']}] {layer['digest']}  {layer['size']} B  {layer['mediaType']}"
        )
        for key, value in sorted((layer.get("annotations") or {}).items()):
            lines.append(f"{indent}        annotation {key}={value}")
    choice = data["fluxLayer"]
    without = choice["withoutSelector"]
    lines.append(f"{indent}Flux extracts:")
    if without is None:
        lines.append(f"{indent}  without layerSelector: nothing (no layers)")
    else:
        media_type = data["layers"][without]["mediaType"]
        note = "" if choice["withoutSelectorIsContent"] else f" ({media_type}, NOT the Flux content layer)"
        lines.append(f"{indent}  without layerSelector: layer {without}{note}")
    chosen = choice["withSelector"]
    lines.append(
        f"{indent}  with layerSelector.mediaType={choice['selectorMediaType']}: "
        + (f"layer {chosen}" if chosen is not None else "nothing (no layer matches; Flux fails)")
    )
    return lines


def describe_artifact(data: Mapping[str, Any]) -> str:
    """``layerwatch inspect``: an artifact's structure as a person reads it (from `inspect_json`)."""
    lines = [data["reference"].removeprefix("oci://"), f"manifest  {data['digest']}  {data['mediaType']}"]
    for key, value in sorted(data["annotations"].items()):
        lines.append(f"  annotation {key}={value}")
    if "manifests" not in data:
        return _lines(lines + _manifest_lines(data, ""))
    lines.append(f"index of {len(data['manifests'])} manifests:")
    for child in data["manifests"]:
        mark = "  <- Flux pulls this one" if child["digest"] == data["fluxManifest"] else ""
        lines.append(
            f"  {child['platform'] or '-'}  {child['digest']}  {child['size']} B  {child['mediaType']}{mark}"
        )
        if "manifest" in child:
            lines += _manifest_lines(child["manifest"], "    ")
        elif "error" in child:
            lines.append(f"    cannot read it: {child['error']}")
    if data["fluxManifest"] is None:
        lines.append(f"Flux pulls: nothing (no {data['fluxPlatform']} manifest; Flux fails)")
    else:
        lines.append(f"Flux pulls: the {data['fluxPlatform']} manifest {data['fluxManifest']}")
    return _lines(lines)


# -- several references in one run ------------------------------------------------------------------


def combined_exit_code(results: Sequence[CheckResult]) -> int:
    """The worst of the runs: unhealthy (1) before unknown (3) before healthy (0)."""
    return _EXIT[max((r.judgement.health for r in results), default=Health.HEALTHY)]


def combined_json(results: Sequence[CheckResult]) -> dict[str, Any]:
    """Several checks: ``{"verdict", "counts", "checks": [one report per reference]}``.

    One reference keeps the single report object (``to_json``), so scripts written for it still work.
    """
    worst = max(results, key=lambda r: r.judgement.health)
    counts = {health.name.lower(): 0 for health in Health}
    for result in results:
        counts[result.judgement.health.name.lower()] += 1
    return {
        "verdict": worst.judgement.verdict.value,
        "counts": counts,
        "checks": [to_json(r) for r in results],
    }


def combined_text(results: Sequence[CheckResult]) -> str:
    """Each table, then one summary line per reference that is not healthy."""
    parts = [to_text(r) for r in results]
    summary = [f"{len(results)} artifacts checked:"]
    for result in results:
        verdict = result.judgement.verdict.value
        blame = f" (blame: hop {result.judgement.blame})" if result.judgement.blame else ""
        summary.append(f"  {_MARK[result.judgement.health]}  {verdict}{blame}  {result.reference}")
    return "\n\n".join([*parts, _lines(summary)])
