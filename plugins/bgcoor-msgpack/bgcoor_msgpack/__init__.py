"""MessagePack message format for bg-coor: ``BGCOOR_SERIALIZER=msgpack``.

Installed as its own distribution (``pip install bgcoor-msgpack``); bg-coor finds it
through the ``bgcoor`` entry-point group (``bgcoor_msgpack._plugin``). The extension
types rich values travel as are listed in :mod:`bgcoor_msgpack._codes` and the README.
Importing this package imports no msgpack; the first ``dumps`` or ``loads`` does.
"""

from __future__ import annotations

from ._codes import (
    BIGINT,
    DATE,
    DATETIME,
    DECIMAL,
    FROZENSET,
    MAX_NESTING,
    OPAQUE,
    SET,
    TIME,
    TIMEDELTA,
    UUID,
)
from ._serializer import CONTENT_TYPE, MsgpackSerializer, dumps, loads

__all__ = [
    "BIGINT",
    "CONTENT_TYPE",
    "DATE",
    "DATETIME",
    "DECIMAL",
    "FROZENSET",
    "MAX_NESTING",
    "OPAQUE",
    "SET",
    "TIME",
    "TIMEDELTA",
    "UUID",
    "MsgpackSerializer",
    "dumps",
    "loads",
]
