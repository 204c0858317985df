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

__all__ = ["check_client_certificate", "insecure_context", "load_client_certificate"]


def _load(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    with tempfile.TemporaryDirectory(prefix="layerwatch-tls-") as directory:
        cert, key = Path(directory) / "tls.crt", Path(directory) / "tls.key"
        cert.touch(mode=0o600)
        key.touch(mode=0o600)
        cert.write_text(cert_pem)
        key.write_text(key_pem)
        context.load_cert_chain(cert, key)


def check_client_certificate(cert_pem: str | None, key_pem: str | None, where: str) -> None:
    """Raise a one-line ``ChainError`` unless both halves are given and the key matches the cert."""
    if cert_pem is None and key_pem is None:
        return
    if cert_pem is None or key_pem is None:
        missing = "tls.crt (certFile)" if cert_pem is None else "tls.key (keyFile)"
        raise ChainError(f"{where}: a client certificate needs both halves; {missing} is missing")
    try:
        _load(ssl.create_default_context(), cert_pem, key_pem)
    except ssl.SSLError as exc:
        reason = exc.reason or "not a PEM certificate and matching private key"
        raise ChainError(f"{where}: client certificate does not load ({reason})") from None


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
