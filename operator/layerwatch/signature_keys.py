"""Optional, off by default: does a cosign signature verify with a given public key?

Flux's verifier checks the key on every new revision; layerwatch only checks that signatures are
there and intact, unless it is given the key (``layerwatch check --cosign-key cosign.pub``), to
tell "signed" from "signed by the key Flux trusts". Keyed cosign only: a legacy ``.sig``
signature (the annotation signs the simple-signing payload) or a cosign 3 bundle holding a DSSE
envelope. Needs the ``cryptography`` package (the ``keys`` extra). Functions return None when the
signature verifies, else one line saying why not.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

__all__ = ["PublicKey", "load_public_key", "verify_bundle", "verify_simple_signing"]

PublicKey = Any
"""A ``cryptography`` public key (EC, RSA or Ed25519)."""


def load_public_key(pem: bytes) -> PublicKey:
    """The key of a PEM ``PUBLIC KEY`` (what ``cosign generate-key-pair`` writes to cosign.pub)."""
    try:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError:  # pragma: no cover - the extra is installed wherever the tests run
        raise ValueError(
            "checking a key needs the cryptography package: pip install 'layerwatch[keys]'"
        ) from None
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        return load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key: {str(exc).splitlines()[0][:80]}") from None


def _verify(key: PublicKey, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _b64(text: Any) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def verify_simple_signing(key: PublicKey, payload: bytes, signature: str, subject: str) -> str | None:
    """A legacy ``.sig`` layer: ``signature`` (base64) over ``payload``, which must name ``subject``."""
    raw = _b64(signature)
    if raw is None:
        return "its signature annotation is not base64"
    if not _verify(key, raw, payload):
        return "does not verify with the given key"
    document = _json(payload)
    critical = document.get("critical") if isinstance(document, dict) else None
    image = critical.get("image") if isinstance(critical, dict) else None
    named = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    return None if named == subject else f"signs {named!r}, not {subject}"


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the envelope's signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def verify_bundle(key: PublicKey, bundle: bytes, subject: str) -> str | None:
    """A cosign 3 bundle: its DSSE envelope verifies with ``key`` and its statement names ``subject``."""
    document = _json(bundle)
    envelope = document.get("dsseEnvelope") if isinstance(document, dict) else None
    if not isinstance(envelope, dict):
        return "is not a bundle with a DSSE envelope (not checked against the key)"
    payload = _b64(envelope.get("payload"))
    signatures = envelope.get("signatures")
    payload_type = envelope.get("payloadType")
    if payload is None or not isinstance(signatures, list) or not isinstance(payload_type, str):
        return "has a malformed DSSE envelope"
    message = _pae(payload_type, payload)
    raws = [_b64(s.get("sig")) for s in signatures if isinstance(s, dict)]
    if not any(raw is not None and _verify(key, raw, message) for raw in raws):
        return "does not verify with the given key"
    statement = _json(payload)
    digests = [
        item.get("digest", {}).get("sha256")
        for item in (statement.get("subject") if isinstance(statement, dict) else None) or []
        if isinstance(item, dict)
    ]
    return None if subject.partition(":")[2] in digests else f"its statement does not name {subject}"
