"""Client certificates for hops that require mutual TLS (``certSecretRef``'s ``tls.crt``/``tls.key``).

Python's ``ssl`` loads a certificate chain only from files, so the PEM text is written to a
private temporary directory, loaded, and deleted at once. A pair that does not load is a
configuration error caught when the chain is read (`check_client_certificate`), not a failure
deep inside a check.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

from layerwatch.chain import ChainError

__all__ = [
    "check_client_certificate",
    "insecure_context",
    "is_pem_bundle",
    "load_client_certificate",
]


def _no_password() -> bytes:
    """An encrypted key is refused, never prompted for: OpenSSL's default would read the terminal."""
    raise ValueError("encrypted")


def _load(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    with tempfile.TemporaryDirectory(prefix="layerwatch-tls-") as directory:
        cert, key = Path(directory) / "tls.crt", Path(directory) / "tls.key"
        cert.touch(mode=0o600)
        key.touch(mode=0o600)
        cert.write_bytes(cert_pem.encode("utf-8", "surrogateescape"))
        key.write_bytes(key_pem.encode("utf-8", "surrogateescape"))
        context.load_cert_chain(cert, key, password=_no_password)


def check_client_certificate(cert_pem: str | None, key_pem: str | None, where: str) -> None:
    """Raise a one-line ``ChainError`` unless both halves are given and the key matches the cert.

    The message names the halves and OpenSSL's reason code, never a line of the PEM text.
    """
    if cert_pem is None and key_pem is None:
        return
    if cert_pem is None or key_pem is None:
        missing = "tls.crt (certFile)" if cert_pem is None else "tls.key (keyFile)"
        raise ChainError(f"{where}: a client certificate needs both halves; {missing} is missing")
    if "ENCRYPTED" in key_pem:
        raise ChainError(f"{where}: the client key (tls.key) is encrypted; it must be an unencrypted PEM key")
    try:
        _load(ssl.create_default_context(), cert_pem, key_pem)
    except (ssl.SSLError, ValueError) as exc:  # ValueError: an encrypted key the marker missed
        reason = getattr(exc, "reason", None) or "not a PEM certificate and matching private key"
        raise ChainError(f"{where}: client certificate does not load ({reason})") from None


def is_pem_bundle(text: str) -> bool:
    """True when ``text`` holds PEM certificates the TLS stack accepts as trust anchors."""
    if "-----BEGIN CERTIFICATE-----" not in text or not text.isascii():
        return False  # PEM is ASCII; ssl refuses other text with a TypeError, not an SSLError
    try:
        ssl.create_default_context(cadata=text)
    except (ssl.SSLError, ValueError):
        return False
    return True


def load_client_certificate(context: ssl.SSLContext, cert_pem: str | None, key_pem: str | None) -> None:
    """Present the client certificate, when there is one, in every TLS handshake."""
    if cert_pem is not None and key_pem is not None:
        _load(context, cert_pem, key_pem)


def insecure_context(cert_pem: str | None, key_pem: str | None) -> ssl.SSLContext | bool:
    """``insecureSkipTLSVerify``: no verification, but still the client certificate when required."""
    if cert_pem is None or key_pem is None:
        return False
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    load_client_certificate(context, cert_pem, key_pem)
    return context
