"""The optional key check: cosign signatures that verify with a key, and the ones that do not."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from layerwatch.signature_keys import load_public_key, verify_bundle, verify_simple_signing

SUBJECT = "sha256:" + "ab" * 32
PAYLOAD = json.dumps(
    {"critical": {"image": {"docker-manifest-digest": SUBJECT}, "type": "cosign container image signature"}}
).encode()


def keypair() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, pem


def sign(private: ec.EllipticCurvePrivateKey, data: bytes) -> str:
    return base64.b64encode(private.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def bundle(private: ec.EllipticCurvePrivateKey, subject_hex: str) -> bytes:
    statement = json.dumps({"subject": [{"digest": {"sha256": subject_hex}}]}).encode()
    kind = "application/vnd.in-toto+json"
    pae = b"DSSEv1 %d %s %d %s" % (len(kind), kind.encode(), len(statement), statement)
    envelope = {
        "payload": base64.b64encode(statement).decode(),
        "payloadType": kind,
        "signatures": [{"sig": sign(private, pae)}],
    }
    return json.dumps({"dsseEnvelope": envelope}).encode()


def test_a_legacy_signature_verifies_with_its_key_only() -> None:
    private, pem = keypair()
    _, other = keypair()
    signature = sign(private, PAYLOAD)
    assert verify_simple_signing(load_public_key(pem), PAYLOAD, signature, SUBJECT) is None
    assert verify_simple_signing(load_public_key(other), PAYLOAD, signature, SUBJECT) == (
        "does not verify with the given key"
    )


def test_a_legacy_signature_of_another_digest_is_refused() -> None:
    private, pem = keypair()
    why = verify_simple_signing(load_public_key(pem), PAYLOAD, sign(private, PAYLOAD), "sha256:" + "cd" * 32)
    assert why is not None and why.startswith(f"signs '{SUBJECT}'")


def test_a_bundle_verifies_with_its_key_and_names_its_subject() -> None:
    private, pem = keypair()
    _, other = keypair()
    good = bundle(private, SUBJECT.partition(":")[2])
    assert verify_bundle(load_public_key(pem), good, SUBJECT) is None
    assert verify_bundle(load_public_key(other), good, SUBJECT) == "does not verify with the given key"
    assert verify_bundle(load_public_key(pem), bundle(private, "cd" * 32), SUBJECT) == (
        f"its statement does not name {SUBJECT}"
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", "is not a bundle with a DSSE envelope"),
        (json.dumps({"dsseEnvelope": {"payload": "%%%"}}).encode(), "has a malformed DSSE envelope"),
    ],
)
def test_odd_bundles_are_explained(body: bytes, expected: str) -> None:
    _, pem = keypair()
    why = verify_bundle(load_public_key(pem), body, SUBJECT)
    assert why is not None and why.startswith(expected)


def test_ed25519_keys_work_too() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = base64.b64encode(private.sign(PAYLOAD)).decode()
    assert verify_simple_signing(load_public_key(pem), PAYLOAD, signature, SUBJECT) is None


def test_a_file_that_is_not_a_public_key_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"^not a PEM public key") as caught:
        load_public_key(b"-----BEGIN NOTHING-----\n")
    assert "\n" not in str(caught.value)


def test_a_key_of_an_algorithm_nobody_supports_is_one_line_too() -> None:
    """``--cosign-key`` with a key of an unknown algorithm exits 2 with a reason, never a traceback."""
    unknown = b"-----BEGIN PUBLIC KEY-----\nMAswBQYDKgMEAwIAAQ==\n-----END PUBLIC KEY-----\n"  # OID 1.2.3.4
    with pytest.raises(ValueError, match=r"^not a PEM public key: Unknown key type") as caught:
        load_public_key(unknown)
    assert "\n" not in str(caught.value)
