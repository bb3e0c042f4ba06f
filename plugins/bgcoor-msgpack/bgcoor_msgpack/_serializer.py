"""The msgpack serializer bg-coor registers (see :mod:`bgcoor_msgpack._wire` for the format).

bg-coor loads every installed plugin's hooks when a process starts, so registering imports
no msgpack: the codec is imported the first time a task is encoded or decoded.
"""

from __future__ import annotations

import functools
from typing import Any, Final, Protocol

CONTENT_TYPE: Final = "application/msgpack"


class _Format(Protocol):
    def dumps(self, data: Any) -> bytes: ...

    def loads(self, raw: bytes) -> Any: ...


@functools.cache
def _format() -> _Format:
    from . import _wire

    return _wire


def dumps(data: Any) -> bytes:
    """``data`` in bg-coor's msgpack format, rich values as its extension types; raises
    ``TypeError`` naming a type it cannot carry."""
    return _format().dumps(data)


def loads(raw: bytes) -> Any:
    """A body :func:`dumps` wrote, rebuilt; ``ValueError`` for anything else."""
    return _format().loads(raw)


class MsgpackSerializer:
    """MessagePack: smaller bodies than JSON, every rich value as an extension type.

    ``dumps`` takes a task's fields as Python values (the ``Serializer`` protocol) and
    raises ``TypeError`` naming a type it cannot carry; ``loads`` raises ``ValueError``
    for a body that is not this format, never building a type beyond bg-coor's value
    table.
    """

    content_type = CONTENT_TYPE
    name = "msgpack"

    def dumps(self, data: Any) -> bytes:
        return _format().dumps(data)

    def loads(self, raw: bytes) -> Any:
        return _format().loads(raw)
