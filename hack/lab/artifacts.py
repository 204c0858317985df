"""Push Flux-format OCI artifacts to a lab registry with the real ``oras`` CLI.

``flux push artifact`` (fluxcd/pkg ``oci/push.go``)
builds: an OCI image manifest, config ``application/vnd.cncf.flux.config.v1+json``, exactly one
``application/vnd.cncf.flux.content.v1.tar+gzip`` layer (a normalised tar.gz: uid/gid 0, no names,
zero mtimes) and the manifest annotations ``org.opencontainers.image.created``/``source``/``revision``.
``oras push`` would add ``org.opencontainers.image.title`` to every layer, so we build the manifest
ourselves and push blobs and manifest with ``oras blob push`` / ``oras manifest push``; oras then
reports the pushed manifest's descriptor, which must match what we computed.
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from lab.process import LabError

__all__ = [
    "FLUX_CONFIG_MEDIA_TYPE",
    "FLUX_CONTENT_MEDIA_TYPE",
    "OCI_INDEX_MEDIA_TYPE",
    "OCI_MANIFEST_MEDIA_TYPE",
    "OCTET_STREAM",
    "Descriptor",
    "PushedArtifact",
    "flux_tarball",
    "oras_path",
    "push_blob_artifact",
    "push_flux_artifact",
    "push_index",
    "push_multilayer_artifact",
]

OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
FLUX_CONFIG_MEDIA_TYPE = "application/vnd.cncf.flux.config.v1+json"
FLUX_CONTENT_MEDIA_TYPE = "application/vnd.cncf.flux.content.v1.tar+gzip"
OCTET_STREAM = "application/octet-stream"
FLUX_CONFIG = b"{}"
ORAS_TIMEOUT = 600.0
_WRITE_CHUNK = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """An OCI descriptor as it appears in the manifest."""

    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, object]:
        """Field order as go-containerregistry marshals it (mediaType, size, digest)."""
        return {"mediaType": self.media_type, "size": self.size, "digest": self.digest}


@dataclasses.dataclass(frozen=True)
class PushedArtifact:
    """What was pushed, byte-exact, so tests can compare hops against it."""

    registry: str
    repository: str
    tag: str
    manifest: bytes
    manifest_digest: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    manifest_media_type: str = OCI_MANIFEST_MEDIA_TYPE

    @property
    def config_digest(self) -> str:
        return self.config.digest

    @property
    def layer_digests(self) -> list[str]:
        return [layer.digest for layer in self.layers]

    @property
    def content_layer(self) -> Descriptor:
        """The layer Flux means to extract (the tar+gzip one), wherever it sits."""
        return next(layer for layer in self.layers if layer.media_type == FLUX_CONTENT_MEDIA_TYPE)

    @property
    def reference(self) -> str:
        """``127.0.0.1:N/repo:tag`` at the registry it was pushed to."""
        return f"{self.registry}/{self.repository}:{self.tag}"


def oras_path() -> str:
    """The oras binary: ``$ORAS``, else the one ``hack/build-tools.sh oras`` builds."""
    path = os.environ.get("ORAS") or str(Path.home() / ".cache/layerwatch/bin/oras")
    if not os.access(path, os.X_OK):
        raise LabError(f"oras not found at {path}: run hack/build-tools.sh oras or set ORAS")
    return path


def _oras(*args: str) -> str:
    command = [oras_path(), *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=ORAS_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"oras {args[0]} {args[1]} timed out after {ORAS_TIMEOUT:.0f}s") from exc
    if done.returncode != 0:
        raise LabError(f"oras {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def flux_tarball(files: Mapping[str, bytes]) -> bytes:
    """A tar.gz normalised as fluxcd/pkg ``tar`` does: root-owned, unnamed, zero times, no gzip mtime."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(raw.getvalue(), mtime=0)


def _default_files(repository: str, tag: str) -> dict[str, bytes]:
    """Small Kubernetes manifests, made unique per repository and tag so blobs never collide across tests."""
    name = repository.rsplit("/", 1)[-1]
    return {
        "kustomization.yaml": b"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        b"resources: [configmap.yaml]\n",
        "configmap.yaml": f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n"
        f"data:\n  repository: {repository}\n  tag: {tag}\n".encode(),
    }


def _write_blob(directory: Path, data: bytes, media_type: str) -> tuple[Path, Descriptor]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = directory / digest.replace(":", "-")
    path.write_bytes(data)
    return path, Descriptor(media_type, digest, len(data))


def _push(
    registry: str,
    repository: str,
    tag: str,
    config: tuple[Path, Descriptor],
    layer_blobs: Sequence[tuple[Path, Descriptor]],
    annotations: Mapping[str, str],
    plain_http: bool = True,
) -> PushedArtifact:
    """Push config and layer blobs, then the manifest; check oras's descriptor against our digest."""
    for path, descriptor in [config, *layer_blobs]:
        target = f"{registry}/{repository}@{descriptor.digest}"
        _oras("blob", "push", *_http(plain_http), "--no-tty", target, str(path))
    layers = tuple(descriptor for _, descriptor in layer_blobs)
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_MEDIA_TYPE,
        "config": config[1].to_json(),
        "layers": [layer.to_json() for layer in layers],
        "annotations": dict(sorted(annotations.items())),
    }
    target = f"{registry}/{repository}:{tag}"
    manifest, digest = _push_manifest(target, document, OCI_MANIFEST_MEDIA_TYPE, plain_http)
    return PushedArtifact(registry, repository, tag, manifest, digest, config[1], layers)


def _http(plain_http: bool) -> list[str]:
    """oras's flag for a registry that speaks HTTP (every lab registry; not a real release target)."""
    return ["--plain-http"] if plain_http else []


def _push_manifest(
    target: str, document: Mapping[str, object], media_type: str, plain_http: bool = True
) -> tuple[bytes, str]:
    """Push a manifest or index document as compact JSON; its bytes and digest (checked against oras)."""
    manifest = json.dumps(document, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    with tempfile.NamedTemporaryFile(suffix=".json") as file:
        file.write(manifest)
        file.flush()
        out = _oras(
            "manifest",
            "push",
            *_http(plain_http),
            "--descriptor",
            "--media-type",
            media_type,
            target,
            file.name,
        )
    pushed = json.loads(out)["digest"]
    if pushed != digest:
        raise LabError(f"oras pushed manifest {pushed}, expected {digest}")
    return manifest, digest


def push_index(registry: str, repository: str, tag: str, children: Mapping[str, PushedArtifact]) -> str:
    """An OCI index of already pushed manifests (same repository), keyed by ``os/arch``; its digest."""
    manifests = []
    for platform, child in children.items():
        os_name, _, architecture = platform.partition("/")
        manifests.append(
            {
                "mediaType": child.manifest_media_type,
                "size": len(child.manifest),
                "digest": child.manifest_digest,
                "platform": {"architecture": architecture, "os": os_name},
            }
        )
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": manifests}
    return _push_manifest(f"{registry}/{repository}:{tag}", document, OCI_INDEX_MEDIA_TYPE)[1]


def _flux_annotations(
    repository: str, tag: str, created: datetime.datetime | None, source: str | None, revision: str | None
) -> dict[str, str]:
    when = (created or datetime.datetime.now(datetime.UTC)).astimezone(datetime.UTC)
    commit = hashlib.sha1(f"{repository}:{tag}".encode()).hexdigest()
    return {
        "org.opencontainers.image.created": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "org.opencontainers.image.source": source or f"https://git.example.invalid/{repository}.git",
        "org.opencontainers.image.revision": revision or f"{tag}@sha1:{commit}",
    }


def push_flux_artifact(
    registry: str,
    repository: str,
    tag: str,
    files: Mapping[str, bytes] | None = None,
    *,
    created: datetime.datetime | None = None,
    source: str | None = None,
    revision: str | None = None,
    plain_http: bool = True,
) -> PushedArtifact:
    """Push what ``flux push artifact`` pushes: one config ``{}`` and one tar+gzip content layer."""
    return push_multilayer_artifact(
        registry,
        repository,
        tag,
        files,
        extra_layers=(),
        created=created,
        source=source,
        revision=revision,
        plain_http=plain_http,
    )


def push_multilayer_artifact(
    registry: str,
    repository: str,
    tag: str,
    files: Mapping[str, bytes] | None = None,
    *,
    extra_layers: Sequence[tuple[str, bytes]] = ((OCTET_STREAM, b"lab: layer that is not Flux content\n"),),
    content_last: bool = True,
    created: datetime.datetime | None = None,
    source: str | None = None,
    revision: str | None = None,
    plain_http: bool = True,
) -> PushedArtifact:
    """A Flux artifact with extra layers, by default ``[application/octet-stream, flux content]``.

    That order is the one reported in fluxcd/flux2#4955, where Flux without a ``layerSelector``
    extracts ``layers[0]`` and fails; ``content_last=False`` puts the content layer first.
    """
    content = flux_tarball(files if files is not None else _default_files(repository, tag))
    with tempfile.TemporaryDirectory(prefix="lab-push-") as tmp:
        directory = Path(tmp)
        config = _write_blob(directory, FLUX_CONFIG, FLUX_CONFIG_MEDIA_TYPE)
        flux_layer = _write_blob(directory, content, FLUX_CONTENT_MEDIA_TYPE)
        extras = [_write_blob(directory, data, media_type) for media_type, data in extra_layers]
        layers = [*extras, flux_layer] if content_last else [flux_layer, *extras]
        annotations = _flux_annotations(repository, tag, created, source, revision)
        return _push(registry, repository, tag, config, layers, annotations, plain_http)


def push_blob_artifact(
    registry: str,
    repository: str,
    tag: str,
    size: int,
    *,
    media_type: str = OCTET_STREAM,
    seed: int = 0,
) -> PushedArtifact:
    """A single-layer artifact whose layer is ``size`` pseudo-random bytes (e.g. 1 GiB).

    The blob is generated into a temp file in 1 MiB pieces and hashed on the way, so memory stays
    flat whatever ``size`` is; oras streams it from disk.
    """
    generator = random.Random(seed)
    sha = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="lab-push-") as tmp:
        directory = Path(tmp)
        path = directory / "blob"
        with path.open("wb") as out:
            remaining = size
            while remaining > 0:
                piece = generator.randbytes(min(_WRITE_CHUNK, remaining))
                sha.update(piece)
                out.write(piece)
                remaining -= len(piece)
        layer = (path, Descriptor(media_type, "sha256:" + sha.hexdigest(), size))
        config = _write_blob(directory, FLUX_CONFIG, FLUX_CONFIG_MEDIA_TYPE)
        annotations = _flux_annotations(repository, tag, None, None, None)
        return _push(registry, repository, tag, config, [layer], annotations)
