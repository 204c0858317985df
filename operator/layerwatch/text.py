"""Text from outside made safe to print: one line, every invisible character visible, bounded.

A registry chooses its media types, error messages and header values; a tenant its layer
selector; an exception quotes whatever it met. Before any of it reaches a message, report, log,
event or status page it goes through ``one_line``, so nobody can start a new line (``\\n``),
recolour or hide text (ANSI escapes, bidi overrides, zero-width characters) or drown the message.
"""

from __future__ import annotations

__all__ = ["ERROR_LIMIT", "one_line"]

_ELLIPSIS = "…"
ERROR_LIMIT = 2000
"""Characters of a configuration error line: long enough for a path and the text it quotes."""


def _visible(character: str) -> str:
    """``\\n``, ``\\x1b``, ``\\u202e``: how a person can read an invisible character."""
    return character.encode("unicode_escape").decode("ascii")


def one_line(text: str, limit: int | None = 160) -> str:
    """``text`` with every non-printable character (controls, line and paragraph separators, format
    characters) escaped, and at most ``limit`` characters long (an ellipsis says it was cut)."""
    if text.isprintable() and (limit is None or len(text) <= limit):
        return text  # the common case (a digest, an ETag, a media type), without the loop below
    pieces: list[str] = []
    size = 0
    for character in text if limit is None else text[: limit + 1]:
        piece = character if character.isprintable() else _visible(character)
        if limit is not None and size + len(piece) > limit:
            while pieces and size + len(_ELLIPSIS) > limit:
                size -= len(pieces.pop())  # never half an escape
            return "".join(pieces) + _ELLIPSIS
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)
