"""layerwatch: watch Flux OCI artifacts through every hop of their registry proxy chain."""

from __future__ import annotations

import functools

__all__ = ["__version__"]


@functools.cache
def _version() -> str:
    """The one version, ``project.version`` in pyproject.toml.

    Read from the source tree when running from a checkout (editable installs and ``PYTHONPATH``
    runs see the file itself, never a stale copy), else from the installed package's metadata,
    which pip took from the same file. Looked up on first use, so ``import layerwatch`` stays cheap.
    """
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        with pyproject.open("rb") as file:
            project = tomllib.load(file).get("project", {})
        if project.get("name") == "layerwatch":
            return str(project["version"])
    from importlib import metadata

    try:
        return metadata.version("layerwatch")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'layerwatch' has no attribute {name!r}")
