"""Log set-up: plain text for people, one JSON object per line for log pipelines.

Logs are shipped off the cluster, so two things hold at every level, ``debug`` included:
libraries that print what they send and receive (the Kubernetes client prints every response
body, Secrets too; httpcore prints headers) never log below INFO, whatever level layerwatch's
own loggers run at; and every message is one line, whatever text a registry put into it.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from layerwatch.text import one_line

__all__ = ["OWN_LOGGER", "configure_logging"]

OWN_LOGGER = "layerwatch"
"""The loggers ``--log-level`` sets; every other logger stays at INFO or above."""
_LIBRARY_FLOOR = logging.INFO
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...extra}``; extras are what callers passed as ``extra=``."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        document.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, the message one line (a traceback still follows it)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message, None)
        return super().formatMessage(record)


def _library_floor(record: logging.LogRecord) -> bool:
    """Below INFO only layerwatch's own records pass, even from a library that set its own level."""
    own = record.name == OWN_LOGGER or record.name.startswith(OWN_LOGGER + ".")
    return own or record.levelno >= _LIBRARY_FLOOR


def configure_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_library_floor)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, _LIBRARY_FLOOR))
    logging.getLogger(OWN_LOGGER).setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
