"""The Redis protocol (RESP2) for the pipelined command connection: commands out, replies in.

redis-py connects, authenticates, selects the database and sets up TLS; the pipelined
connection then writes packed batches and parses their replies here, from whole chunks of
bytes at a time. redis-py's general-purpose parser costs several microseconds of Python per
reply, which at two or three replies per task is a good share of a worker's time.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import NoScriptError, ResponseError

Command = tuple[Any, ...]

#: What :meth:`Replies.next` returns while the buffered bytes hold no complete reply.
INCOMPLETE: Any = object()


def pack(command: Command) -> bytes:
    """One command, ready to write. Arguments: ``str`` (UTF-8), ``bytes``, ``int``, ``float``."""
    out = [b"*%d\r\n" % len(command)]
    add = out.append
    for arg in command:
        kind = type(arg)
        if kind is str:
            data = arg.encode()
        elif kind is bytes:
            data = arg
        elif kind is int:
            data = b"%d" % arg
        elif isinstance(arg, str):  # e.g. a StrEnum
            data = arg.encode()
        elif isinstance(arg, float | int) and kind is not bool:
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {kind.__name__} to Redis: {arg!r:.60}")
        add(b"$%d\r\n" % len(data))
        add(data)
        add(b"\r\n")
    return b"".join(out)


class Replies:
    """Replies parsed from bytes as they arrive: ``feed(chunk)``, then ``next()`` until it
    returns :data:`INCOMPLETE`. Error replies come back as exception objects."""

    def __init__(self) -> None:
        self._buffer = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        self._buffer = self._buffer[self._pos :] + data
        self._pos = 0

    def next(self) -> Any:
        value, pos = _parse(self._buffer, self._pos)
        if value is not INCOMPLETE:
            self._pos = pos
        return value


def _parse(buffer: bytes, pos: int) -> tuple[Any, int]:
    """The reply starting at ``pos`` and the position after it, or ``INCOMPLETE``."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        return INCOMPLETE, pos
    kind, line, after = buffer[pos], buffer[pos + 1 : end], end + 2
    if kind == 36:  # $ bulk string
        return _bulk(buffer, pos, int(line), after)
    if kind == 58:  # : integer
        return int(line), after
    if kind == 42:  # * array
        return _array(buffer, pos, int(line), after)
    if kind == 43:  # + simple string
        return line, after
    if kind == 45:  # - error
        return _error(line.decode(errors="replace")), after
    raise ResponseError(f"unexpected reply type {chr(kind)!r} from Redis")


def _bulk(buffer: bytes, pos: int, size: int, after: int) -> tuple[Any, int]:
    if size < 0:
        return None, after
    if len(buffer) < after + size + 2:
        return INCOMPLETE, pos
    return buffer[after : after + size], after + size + 2


def _array(buffer: bytes, pos: int, count: int, after: int) -> tuple[Any, int]:
    if count < 0:
        return None, after
    items = []
    for _ in range(count):
        item, after = _parse(buffer, after)
        if item is INCOMPLETE:
            return INCOMPLETE, pos
        items.append(item)
    return items, after


def _error(message: str) -> ResponseError:
    code, _, detail = message.partition(" ")
    if code == "NOSCRIPT":
        return NoScriptError(detail)
    return ResponseError(message)
