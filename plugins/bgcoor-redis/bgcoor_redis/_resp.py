"""The Redis protocol (RESP2) for the pipelined command connection, through hiredis.

redis-py connects, authenticates, selects the database and sets up TLS; the pipelined
connection then writes packed batches and parses their replies with hiredis's C reader,
whole chunks of bytes at a time, without redis-py's per-reply machinery (several
microseconds of Python each, a good share of a worker's time at two replies per task).
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.exceptions import NoScriptError, ResponseError

Command = tuple[Any, ...]

#: What :meth:`Replies.next` returns while the buffered bytes hold no complete reply.
INCOMPLETE: Any = object()


def pack(command: Command) -> bytes:
    """One command, ready to write. Arguments: ``str`` (UTF-8), ``bytes``, ``int``,
    ``float``; anything else raises ``TypeError``."""
    try:
        packed: bytes = hiredis.pack_command(command)
    except TypeError:
        raise TypeError(f"cannot send {command!r:.80} to Redis: {_BAD}") from None
    return packed


_BAD = "arguments must be str, bytes, int or float"


class Replies:
    """Replies parsed from bytes as they arrive: ``feed(chunk)``, then ``next()`` until it
    returns :data:`INCOMPLETE`. Error replies come back as exception objects."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=ResponseError, notEnoughData=INCOMPLETE)

    def feed(self, data: bytes) -> None:
        self._reader.feed(data)

    def next(self) -> Any:
        reply = self._reader.gets()
        if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT "):
            return NoScriptError(str(reply).removeprefix("NOSCRIPT "))
        return reply
