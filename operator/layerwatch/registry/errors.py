"""What can go wrong talking to a registry, split by what it means for a verdict.

Every error carries a ``Fault``: the typed facts of what happened (``observation.Fault``), which
``verdict`` turns into a verdict and a message. ``RegistryNotFound`` is a real answer (the hop
does not have it); every other error means "could not check". Nothing here ever holds a
credential, a token or a URL query.
"""

from __future__ import annotations

from layerwatch.observation import Fault, FaultKind

__all__ = ["RegistryError", "RegistryNotFound"]


class RegistryError(Exception):
    """Base of every registry failure; ``fault`` says what happened."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(fault.detail or fault.kind.value)
        self.fault = fault

    @property
    def status(self) -> int | None:
        return self.fault.status


class RegistryNotFound(RegistryError):
    """404: the hop does not know this manifest or blob (``fault.code`` says which, when sent)."""

    def __init__(self, status: int = 404, code: str | None = None, message: str | None = None) -> None:
        super().__init__(Fault(FaultKind.HTTP_STATUS, status=status, code=code, registry_message=message))
