"""JSON documents from registries and files, parsed defensively, and text made fit for one line.

Manifests, token answers and docker configs all arrive as bytes someone else wrote. Anything
``json.loads`` can choke on (bad UTF-8, garbage, nesting deep enough to recurse out, integers too
long to convert) becomes one ``ValueError`` whose message completes "... is <reason>".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["config_object", "is_text", "json_object"]


def json_object(data: bytes | str) -> Mapping[str, Any]:
    """The JSON object in ``data``; ``ValueError("not valid JSON" | "not a JSON object")`` otherwise."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, ints over 4300 digits
        raise ValueError("not valid JSON") from None
    if not isinstance(document, Mapping):
        raise ValueError("not a JSON object")
    return document


def is_text(text: str) -> bool:
    """False when ``text`` holds a lone surrogate (a ``\\ud800`` escape): no file name, host or
    password can, and it would fail later, when the string is encoded for a request or a log."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def config_object(data: bytes | str) -> Mapping[str, Any]:
    """A JSON object from a configuration file: as `json_object`, and every string in it text.

    A manifest keeps `json_object`'s leniency (Go's decoder accepts lone surrogates, so Flux does);
    a config file's strings become credentials, host names and program names, so they must encode.
    """
    document = json_object(data)
    pending: list[Any] = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, Mapping):
            pending += value.keys()
            pending += value.values()
        elif isinstance(value, list):
            pending += value
        elif isinstance(value, str) and not is_text(value):
            raise ValueError("not valid JSON (a \\u escape that is no character)")
    return document
