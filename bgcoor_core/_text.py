"""Text safe to show: in logs, stored reasons, terminals."""

from __future__ import annotations


def escape_unprintable(text: str, *, keep: str = "") -> str:
    """``text`` with every unprintable character (controls such as ESC and CR, format
    characters such as a right-to-left override, separators other than the space) escaped
    as ``repr`` would write it: ``\\x1b``, ``\\r``, ``\\u202e``. Characters in ``keep``
    (say ``"\\n"`` for a traceback) stay as they are. Printable text is returned unchanged
    at the cost of one C-level check."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in keep else repr(ch)[1:-1] for ch in text)


def printable(text: str, limit: int) -> str:
    """``text`` safe to log and store as a reason: control and other unprintable
    characters escaped as ``repr`` would (a field name in a hostile body can hold a NUL,
    which PostgreSQL text refuses), clipped to ``limit`` characters."""
    text = escape_unprintable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
