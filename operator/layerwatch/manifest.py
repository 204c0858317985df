"""Manifests and indexes as layerwatch reads them, and which layer Flux would extract.

Registries serve OCI image manifests, OCI indexes and their Docker schema2 twins. Parsing is
strict about what layerwatch relies on (descriptors with digest, size and media type) and lenient
about everything else, so a hop serving something odd yields ``ManifestCorrupt``, never a crash.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from layerwatch.documents import json_object
from layerwatch.reference import is_digest

__all__ = [
    "ACCEPT",
    "FLUX_CONFIG",
    "FLUX_CONTENT",
    "FLUX_PLATFORM",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "MAX_MANIFEST_BYTES",
    "Descriptor",
    "Index",
    "Manifest",
    "ManifestError",
    "flux_child",
    "flux_layer",
    "parse",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
"""What layerwatch asks for: everything a Flux or image client accepts."""

FLUX_CONFIG = "application/vnd.cncf.flux.config.v1+json"
FLUX_CONTENT = "application/vnd.cncf.flux.content.v1.tar+gzip"
FLUX_PLATFORM = "linux/amd64"
"""The platform an index resolves to for Flux: source-controller sets none, go-containerregistry's
default applies."""
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""Manifests larger than this are refused as corrupt (distribution's own limit is 4 MiB)."""


class ManifestError(ValueError):
    """The bytes are not a manifest layerwatch can read; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """A content-addressed pointer: media type, digest and size (what a manifest lists)."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    platform: str | None = None

    @classmethod
    def parse(cls, raw: Any, where: str) -> Descriptor:
        if not isinstance(raw, Mapping):
            raise ManifestError(f"{where} is not an object")
        digest, size, media_type = raw.get("digest"), raw.get("size"), raw.get("mediaType", "")
        if not isinstance(digest, str) or not is_digest(digest):
            raise ManifestError(f"{where} has an invalid digest")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{where} has an invalid size")
        if not isinstance(media_type, str):
            raise ManifestError(f"{where} has an invalid mediaType")
        annotations = raw.get("annotations") or {}
        if not isinstance(annotations, Mapping):
            raise ManifestError(f"{where} has invalid annotations")
        platform = raw.get("platform")
        platform_text = None
        if isinstance(platform, Mapping):
            platform_text = "/".join(
                str(platform[k])
                for k in ("os", "architecture", "variant")
                if isinstance(platform.get(k), str)
            )
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations={str(k): str(v) for k, v in annotations.items()},
            platform=platform_text,
        )


@dataclasses.dataclass(frozen=True)
class Manifest:
    """An image or artifact manifest: one config blob and an ordered list of layers."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    artifact_type: str | None = None

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        return (self.config, *self.layers)

    @property
    def is_flux_artifact(self) -> bool:
        return self.config.media_type == FLUX_CONFIG or any(
            layer.media_type == FLUX_CONTENT for layer in self.layers
        )


@dataclasses.dataclass(frozen=True)
class Index:
    """A list of manifests (multi-platform images); every child is checked."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _media_type(document: Mapping[str, Any], content_type: str | None) -> str:
    declared = document.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    content_type = (content_type or "").split(";")[0].strip()
    if content_type in MANIFEST_TYPES | INDEX_TYPES:
        return content_type
    # OCI allows mediaType to be absent: infer from the shape.
    return OCI_INDEX if "manifests" in document else OCI_MANIFEST


def _annotations(document: Mapping[str, Any]) -> dict[str, str]:
    raw = document.get("annotations") or {}
    if not isinstance(raw, Mapping):
        raise ManifestError("annotations is not an object")
    return {str(k): str(v) for k, v in raw.items()}


def parse(body: bytes, content_type: str | None = None) -> Manifest | Index:
    """Parse manifest bytes; raises ``ManifestError`` with a one-line reason for anything unusable."""
    if len(body) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest is {len(body)} bytes, over the {MAX_MANIFEST_BYTES} byte limit")
    try:
        document = json_object(body)
    except ValueError as exc:
        raise ManifestError(f"manifest is {exc}") from None
    if document.get("schemaVersion") != 2:
        raise ManifestError(f"unsupported schemaVersion {document.get('schemaVersion')!r}")
    media_type = _media_type(document, content_type)
    if media_type in INDEX_TYPES:
        children = document.get("manifests")
        if not isinstance(children, Sequence) or isinstance(children, str | bytes):
            raise ManifestError("index has no manifests list")
        return Index(
            media_type=media_type,
            manifests=tuple(Descriptor.parse(c, f"manifests[{i}]") for i, c in enumerate(children)),
            annotations=_annotations(document),
        )
    if media_type not in MANIFEST_TYPES:
        raise ManifestError(f"unsupported manifest media type {media_type!r}")
    layers = document.get("layers")
    if not isinstance(layers, Sequence) or isinstance(layers, str | bytes):
        raise ManifestError("manifest has no layers list")
    artifact_type = document.get("artifactType")
    return Manifest(
        media_type=media_type,
        config=Descriptor.parse(document.get("config"), "config"),
        layers=tuple(Descriptor.parse(layer, f"layers[{i}]") for i, layer in enumerate(layers)),
        annotations=_annotations(document),
        artifact_type=artifact_type if isinstance(artifact_type, str) else None,
    )


def flux_layer(manifest: Manifest, media_type: str | None) -> int | None:
    """Index of the layer source-controller extracts, or None when it would find none.

    With ``layerSelector.mediaType`` set, Flux takes the first layer of that type; without it, it
    takes ``layers[0]`` whatever it is (fluxcd/flux2#4955 is what happens when that is the wrong one).
    """
    if media_type is None:
        return 0 if manifest.layers else None
    for position, layer in enumerate(manifest.layers):
        if layer.media_type == media_type:
            return position
    return None


def flux_child(index: Index) -> int | None:
    """Position of the index child Flux pulls: the first ``linux/amd64`` one (any variant), or None.

    go-containerregistry matches OS and architecture, and a variant only when one is asked for.
    """
    for position, child in enumerate(index.manifests):
        if child.platform is not None and child.platform.split("/")[:2] == FLUX_PLATFORM.split("/"):
            return position
    return None
