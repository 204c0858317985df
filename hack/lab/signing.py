"""Signing lab artifacts with the real ``cosign`` and ``notation`` CLIs (built by hack/build-tools.sh).

Everything stays on loopback: cosign signs with a generated key pair and uploads nothing to a
transparency log (``--tlog-upload=false`` needs ``--use-signing-config=false`` since cosign 3);
notation signs with a local self-signed test certificate. Both push to the origin registry,
which has no referrers API, so cosign bundles and notation signatures land under the
``sha256-<hex>`` referrers tag and legacy cosign signatures under ``sha256-<hex>.sig``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lab.process import LabError

__all__ = ["Signer", "cosign_path", "notation_path"]

COSIGN_PASSWORD = "lab-cosign-password"
_TIMEOUT = 120.0


def _tool(variable: str, name: str) -> str:
    path = os.environ.get(variable) or str(Path.home() / f".cache/layerwatch/bin/{name}")
    if not os.access(path, os.X_OK):
        raise LabError(f"{name} missing at {path} (hack/build-tools.sh {name})")
    return path


def cosign_path() -> str:
    """``$COSIGN``, else the cosign ``hack/build-tools.sh cosign`` builds."""
    return _tool("COSIGN", "cosign")


def notation_path() -> str:
    """``$NOTATION``, else the notation ``hack/build-tools.sh notation`` builds."""
    return _tool("NOTATION", "notation")


class Signer:
    """Keys in ``directory`` (a cosign key pair, a notation test certificate) and the signing calls."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._env = {
            **os.environ,
            "HOME": str(directory),
            "XDG_CONFIG_HOME": str(directory / "config"),
            "COSIGN_PASSWORD": COSIGN_PASSWORD,
        }
        self._cosign_ready = self._notation_ready = False

    def _run(self, *command: str) -> str:
        done = subprocess.run(
            command,
            cwd=self.directory,
            env=self._env,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise LabError(
                f"{Path(command[0]).name} {command[1]} failed ({done.returncode}): {done.stderr[-2000:]}"
            )
        return done.stdout

    def cosign_keys(self) -> tuple[Path, Path]:
        """(private key, PEM public key), generated once; the public key is what an OCIRepository's
        ``spec.verify.secretRef`` Secret holds as ``cosign.pub``."""
        if not self._cosign_ready:
            self._run(cosign_path(), "generate-key-pair")
            self._cosign_ready = True
        return self.directory / "cosign.key", self.directory / "cosign.pub"

    def cosign_sign(self, reference: str, *, bundle: bool) -> None:
        """Sign ``host/repo@sha256:…``: a cosign 3 bundle (referrer) or a legacy ``.sig`` tag signature."""
        key, _ = self.cosign_keys()
        self._run(
            cosign_path(),
            "sign",
            "--yes",
            "--key",
            str(key),
            "--tlog-upload=false",
            "--use-signing-config=false",
            "--allow-insecure-registry",
            "--allow-http-registry",
            f"--new-bundle-format={'true' if bundle else 'false'}",
            reference,
        )

    def notation_sign(self, reference: str) -> None:
        """Sign ``host/repo@sha256:…`` with notation's default JWS envelope and a local test certificate."""
        if not self._notation_ready:
            self._run(notation_path(), "cert", "generate-test", "--default", "layerwatch.lab")
            self._notation_ready = True
        self._run(notation_path(), "sign", "--insecure-registry", reference)
