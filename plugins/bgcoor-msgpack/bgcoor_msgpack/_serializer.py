"""The msgpack serializer bg-coor registers (see :mod:`bgcoor_msgpack._wire` for the format)."""

from __future__ import annotations

from typing import Any, Final

from . import _wire

CONTENT_TYPE: Final = "application/msgpack"


class MsgpackSerializer:
    """MessagePack: smaller bodies than JSON, every rich value as an extension type.

    ``dumps`` takes a task's fields as Python values (the ``Serializer`` protocol) and
    raises ``TypeError`` naming a type it cannot carry; ``loads`` raises ``ValueError``
    (or ``TypeError``) for a body that is not this format, never building a type beyond
    bg-coor's value table.
    """

    content_type = CONTENT_TYPE
    name = "msgpack"

    def dumps(self, data: Any) -> bytes:
        return _wire.dumps(data)

    def loads(self, raw: bytes) -> Any:
        return _wire.loads(raw)
