"""Manifests as hops serve them: OCI and Docker, images and indexes, and garbage."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerwatch.manifest import (
    ACCEPT,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    FLUX_CONFIG,
    FLUX_CONTENT,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    Index,
    Manifest,
    ManifestError,
    flux_layer,
    parse,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
YAML = "application/x-yaml"


def descriptor(digest: str, media_type: str, size: int = 10, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def flux_document(media_type: str | None = OCI_MANIFEST, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "config": descriptor(D1, FLUX_CONFIG, 233),
        "layers": [descriptor(D2, FLUX_CONTENT, 151, annotations={"org.opencontainers.image.title": "x"})],
        "annotations": {"org.opencontainers.image.revision": "main@sha1:abc"},
        **extra,
    }
    if media_type is not None:
        document["mediaType"] = media_type
    return document


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


def test_a_flux_oci_artifact_parses_into_config_and_layers() -> None:
    parsed = parse(encode(flux_document(artifactType="application/vnd.cncf.flux.config.v1+json")))
    assert isinstance(parsed, Manifest)
    assert parsed.media_type == OCI_MANIFEST
    assert parsed.config.digest == D1 and parsed.config.size == 233
    assert [(layer.digest, layer.media_type, layer.size) for layer in parsed.layers] == [
        (D2, FLUX_CONTENT, 151)
    ]
    assert parsed.layers[0].annotations == {"org.opencontainers.image.title": "x"}
    assert parsed.annotations == {"org.opencontainers.image.revision": "main@sha1:abc"}
    assert parsed.is_flux_artifact
    assert parsed.artifact_type == FLUX_CONFIG
    assert parsed.blobs == (parsed.config, *parsed.layers)


def test_a_docker_schema2_image_manifest_parses() -> None:
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor(D1, "application/vnd.docker.container.image.v1+json"),
        "layers": [
            descriptor(D2, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
            descriptor(D3, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ],
    }
    parsed = parse(encode(document))
    assert isinstance(parsed, Manifest) and parsed.media_type == DOCKER_MANIFEST
    assert len(parsed.layers) == 2 and not parsed.is_flux_artifact


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_LIST])
def test_an_index_or_manifest_list_parses_into_its_platform_manifests(media_type: str) -> None:
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            descriptor(D1, OCI_MANIFEST, platform={"os": "linux", "architecture": "amd64"}),
            descriptor(D2, OCI_MANIFEST, platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
        ],
    }
    parsed = parse(encode(document))
    assert isinstance(parsed, Index) and parsed.media_type == media_type
    assert [child.platform for child in parsed.manifests] == ["linux/amd64", "linux/arm64/v8"]


@pytest.mark.parametrize(
    ("document", "content_type", "expected"),
    [
        (flux_document(media_type=None), None, OCI_MANIFEST),
        (flux_document(media_type=None), DOCKER_MANIFEST + "; charset=utf-8", DOCKER_MANIFEST),
        ({"schemaVersion": 2, "manifests": [descriptor(D1, OCI_MANIFEST)]}, None, OCI_INDEX),
        ({"schemaVersion": 2, "manifests": []}, DOCKER_LIST, DOCKER_LIST),
        (flux_document(media_type=None), "application/octet-stream", OCI_MANIFEST),
    ],
)
def test_a_missing_media_type_is_inferred_from_the_content_type_or_the_shape(
    document: dict[str, Any], content_type: str | None, expected: str
) -> None:
    assert parse(encode(document), content_type).media_type == expected


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"<html>502 Bad Gateway</html>", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"manifest"', "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"[" * 100_000, "not valid JSON"),
        (b"1" * 5000, "not valid JSON"),
        (b'{"schemaVersion": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (encode({**flux_document(), "schemaVersion": 1}), "unsupported schemaVersion 1"),
        (encode({k: v for k, v in flux_document().items() if k != "schemaVersion"}), "schemaVersion None"),
        (
            encode(flux_document(media_type="application/vnd.oci.image.config.v1+json")),
            "unsupported manifest media type",
        ),
        (encode({**flux_document(), "layers": None}), "no layers list"),
        (encode({**flux_document(), "layers": "abc"}), "no layers list"),
        (encode({**flux_document(), "config": None}), "config is not an object"),
        (
            encode({**flux_document(), "config": descriptor("sha256:abc", FLUX_CONFIG)}),
            "config has an invalid digest",
        ),
        (
            encode({**flux_document(), "layers": [descriptor(D2, FLUX_CONTENT, -1)]}),
            r"layers\[0\] has an invalid size",
        ),
        (
            encode({**flux_document(), "layers": [descriptor(D2, FLUX_CONTENT, 1.5)]}),
            r"layers\[0\] has an invalid size",
        ),
        (
            encode({**flux_document(), "layers": [descriptor(D2, FLUX_CONTENT, True)]}),
            r"layers\[0\] has an invalid size",
        ),
        (encode({**flux_document(), "layers": [descriptor(D2, 7)]}), r"layers\[0\] has an invalid mediaType"),
        (
            encode({**flux_document(), "layers": [descriptor(D2, FLUX_CONTENT), "x"]}),
            r"layers\[1\] is not an object",
        ),
        (
            encode({**flux_document(), "layers": [descriptor(D2, FLUX_CONTENT, annotations=["a"])]}),
            r"layers\[0\] has invalid annotations",
        ),
        (encode({**flux_document(), "annotations": "x"}), "annotations is not an object"),
        (
            encode({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": {}}),
            "index has no manifests list",
        ),
        (
            encode(
                {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor("md5:1", OCI_MANIFEST)]}
            ),
            r"manifests\[0\] has an invalid digest",
        ),
    ],
)
def test_a_manifest_layerwatch_cannot_use_is_refused_in_one_line(body: bytes, complaint: str) -> None:
    with pytest.raises(ManifestError, match=complaint) as caught:
        parse(body)
    assert "\n" not in str(caught.value)


def test_a_manifest_over_four_mebibytes_is_refused_before_parsing() -> None:
    padding = " " * (MAX_MANIFEST_BYTES + 1 - len(encode(flux_document())))
    body = encode(flux_document())[:-1] + padding.encode() + b"}"
    assert len(body) == MAX_MANIFEST_BYTES + 1
    with pytest.raises(ManifestError, match="over the 4194304 byte limit"):
        parse(body)
    at_limit = (
        encode(flux_document())[:-1] + b" " * (MAX_MANIFEST_BYTES - len(encode(flux_document()))) + b"}"
    )
    assert isinstance(parse(at_limit), Manifest)


def test_layerwatch_asks_for_every_manifest_type_a_flux_client_accepts() -> None:
    for media_type in (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST):
        assert media_type in ACCEPT


def manifest_with(*media_types: str) -> Manifest:
    digests = [f"sha256:{i:064x}" for i in range(len(media_types))]
    parsed = parse(
        encode(
            {
                **flux_document(),
                "layers": [descriptor(d, m) for d, m in zip(digests, media_types, strict=True)],
            }
        )
    )
    assert isinstance(parsed, Manifest)
    return parsed


@pytest.mark.parametrize(
    ("layers", "selector", "extracted"),
    [
        ((FLUX_CONTENT,), None, 0),
        ((YAML, FLUX_CONTENT), None, 0),
        ((), None, None),
        ((FLUX_CONTENT,), FLUX_CONTENT, 0),
        ((YAML, FLUX_CONTENT), FLUX_CONTENT, 1),
        ((YAML, FLUX_CONTENT, YAML), YAML, 0),
        ((FLUX_CONTENT, YAML, YAML), YAML, 1),
        ((FLUX_CONTENT,), YAML, None),
        ((), FLUX_CONTENT, None),
    ],
)
def test_flux_extracts_layer_zero_without_a_selector_and_the_first_match_with_one(
    layers: tuple[str, ...], selector: str | None, extracted: int | None
) -> None:
    assert flux_layer(manifest_with(*layers), selector) == extracted


# -- properties ---------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parsing_arbitrary_bytes_yields_a_manifest_or_a_manifest_error(body: bytes) -> None:
    try:
        parse(body)
    except ManifestError as exc:
        assert "\n" not in str(exc)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
_near_descriptor = st.fixed_dictionaries(
    {},
    optional={
        "mediaType": st.one_of(st.sampled_from([FLUX_CONTENT, OCI_MANIFEST, ""]), _json),
        "digest": st.one_of(st.sampled_from([D1, D2, "sha256:x"]), _json),
        "size": st.one_of(st.integers(-2, 10**20), _json),
        "annotations": _json,
        "platform": _json,
    },
)
_near_manifest = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.one_of(st.just(2), _json),
        "mediaType": st.one_of(
            st.sampled_from([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST]), _json
        ),
        "config": st.one_of(_near_descriptor, _json),
        "layers": st.one_of(st.lists(st.one_of(_near_descriptor, _json), max_size=3), _json),
        "manifests": st.one_of(st.lists(st.one_of(_near_descriptor, _json), max_size=3), _json),
        "annotations": _json,
        "artifactType": _json,
    },
)


@settings(max_examples=300, deadline=None)
@given(_near_manifest, st.one_of(st.none(), st.sampled_from([OCI_INDEX, DOCKER_MANIFEST, "text/plain"])))
def test_parsing_almost_valid_manifests_yields_a_manifest_or_a_manifest_error(
    document: dict[str, Any], content_type: str | None
) -> None:
    try:
        parsed = parse(encode(document), content_type)
    except ManifestError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(parsed, Manifest | Index)
