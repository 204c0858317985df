"""JSON documents from registries and files, parsed defensively.

Manifests, token answers and docker configs all arrive as bytes someone else wrote. Anything
``json.loads`` can choke on (bad UTF-8, garbage, nesting deep enough to recurse out, integers too
long to convert) becomes one ``ValueError`` whose message completes "... is <reason>".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["json_object"]


def json_object(data: bytes | str) -> Mapping[str, Any]:
    """The JSON object in ``data``; ``ValueError("not valid JSON" | "not a JSON object")`` otherwise."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, ints over 4300 digits
        raise ValueError("not valid JSON") from None
    if not isinstance(document, Mapping):
        raise ValueError("not a JSON object")
    return document
