"""layerwatch: watch Flux OCI artifacts through every hop of their registry proxy chain."""

from importlib import metadata

try:
    __version__ = metadata.version("layerwatch")
except metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
