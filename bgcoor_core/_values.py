"""Rich Python values as data every format carries: the tagged JSON form.

Task arguments and results may hold ``datetime``, ``date``, ``time``, ``timedelta``,
``UUID``, ``Decimal``, ``bytes``, ``set``/``frozenset``, non-string dict keys and floats
JSON has no literal for (``nan``, ``inf``), beside enums, dataclasses and pydantic models.
Records are JSON whatever the message format, so a record written by any producer stays
readable by any process after a deploy; in them such a value is a *tag*, a two-key object
``{"$type": "<kind>", "value": <data>}`` (after MongoDB's extended JSON), which
:func:`pack` writes and :func:`unpack` reads back into the same Python value.

Enums travel as their values, dataclasses and models as dicts of their fields: the
function's type hints rebuild them (a parameter annotated ``Order`` receives an
``Order``). A user dict that has a ``"$type"`` key is itself tagged (``"dict"``), so no
user value is ever mistaken for a tag.

A value only pickle can carry (an object of a class of its own) is *sealed* into an
:class:`Opaque` by a codec that accepts pickle: its bytes and content type, never loaded
except by a codec that accepts that content type (see :mod:`bgcoor_core._codec`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import decimal
import enum
import math
import pathlib
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, PlainSerializer, ValidationInfo
from pydantic_core import SchemaSerializer, SchemaValidator, ValidationError, core_schema

TYPE: Final = "$type"
VALUE: Final = "value"

_PLAIN = (str, int, bool, type(None))


class UnrepresentableError(TypeError):
    """A value of a type no tag describes (pickle alone could carry it)."""

    def __init__(self, value: object) -> None:
        kind = type(value)
        self.type_name = f"{kind.__module__}.{kind.__qualname__}"
        super().__init__(f"a value of type {self.type_name} has no representation")


@dataclasses.dataclass(frozen=True, slots=True)
class Opaque:
    """A value held as ``data``, serialised in ``content_type`` and then passed through
    the payload codecs ``codecs`` names (``"zstd,aesgcm:k2"``; empty: none), not loaded:
    only a codec that accepts that content type (and holds the keys) opens it
    (:meth:`Codec.open`)."""

    content_type: str
    data: bytes
    codecs: str = ""

    def __repr__(self) -> str:
        through = f" through {self.codecs}" if self.codecs else ""
        return f"<{self.content_type} value{through}, {len(self.data)} bytes>"


def _tag(kind: str, data: Any) -> dict[str, Any]:
    return {TYPE: kind, VALUE: data}


def _float(value: float) -> Any:
    return value if math.isfinite(value) else _tag("float", repr(value))


#: Types left as they are, checked inline by the container packers (most values are these).
_AS_IS = frozenset({str, int, bool, type(None)})


def _list(value: list[Any] | tuple[Any, ...]) -> list[Any]:
    return [item if type(item) in _AS_IS else pack(item) for item in value]


def _dict(value: dict[Any, Any]) -> Any:
    packed = {}
    for key, item in value.items():
        if type(key) is not str:
            return _tag("map", [[pack(k), pack(v)] for k, v in value.items()])
        packed[key] = item if type(item) in _AS_IS else pack(item)
    return _tag("dict", packed) if TYPE in packed else packed


def _irregular(offset: dt.timedelta | None) -> int | None:
    """An offset that is not whole minutes, in microseconds: ISO text cannot hold it (and
    ``fromisoformat`` reads it as UTC), so it travels beside the naive text."""
    if offset is None or (not offset.seconds % 60 and not offset.microseconds):
        return None
    return offset // dt.timedelta(microseconds=1)


# The base classes' methods, not a subclass's overrides: the value as it is.
def _datetime_data(value: dt.datetime) -> Any:
    micros = _irregular(dt.datetime.utcoffset(value))
    if micros is None:
        return dt.datetime.isoformat(value)
    return [dt.datetime.isoformat(dt.datetime.replace(value, tzinfo=None)), micros]


def _time_data(value: dt.time) -> Any:
    micros = _irregular(dt.time.utcoffset(value))
    if micros is None:
        return dt.time.isoformat(value)
    return [dt.time.isoformat(dt.time.replace(value, tzinfo=None)), micros]


def _from_clock(kind: type[dt.datetime] | type[dt.time]) -> Callable[[Any], Any]:
    def read(data: Any) -> Any:
        if isinstance(data, str):
            return kind.fromisoformat(data)
        text, micros = data
        zone = dt.timezone(dt.timedelta(microseconds=micros))
        return kind.fromisoformat(text).replace(tzinfo=zone)

    return read


#: ``str(uuid)``, by pydantic-core (three times faster).
_uuid_text = SchemaSerializer(core_schema.uuid_schema()).to_python


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


#: Exact types to their packers; subclasses are looked up through ``_BY_BASE``.
_PACKERS: dict[type, Callable[[Any], Any]] = {
    float: _float,
    list: _list,
    tuple: _list,
    dict: _dict,
    dt.datetime: lambda v: _tag("datetime", _datetime_data(v)),
    dt.date: lambda v: _tag("date", v.isoformat()),
    dt.time: lambda v: _tag("time", _time_data(v)),
    dt.timedelta: lambda v: _tag("timedelta", [v.days, v.seconds, v.microseconds]),
    uuid.UUID: lambda v: _tag("uuid", _uuid_text(v, mode="json")),
    decimal.Decimal: lambda v: _tag("decimal", str(v)),
    bytes: lambda v: _tag("bytes", _b64(v)),
    bytearray: lambda v: _tag("bytes", _b64(bytes(v))),
    memoryview: lambda v: _tag("bytes", _b64(v.tobytes())),
    set: lambda v: _tag("set", [pack(x) for x in v]),
    frozenset: lambda v: _tag("frozenset", [pack(x) for x in v]),
    Opaque: lambda v: _tag("opaque", [v.content_type, _b64(v.data), v.codecs]),
}

#: Checked in order for a type not in ``_PACKERS`` (a subclass, an enum, a model).
_BY_BASE: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (enum.Enum, lambda v: pack(v.value)),
    (BaseModel, lambda v: pack(v.model_dump(mode="python"))),
    (bool, lambda v: bool(v)),
    (str, lambda v: str(v)),
    (int, lambda v: int(v)),
    (dt.datetime, _PACKERS[dt.datetime]),
    (dt.date, _PACKERS[dt.date]),
    (dt.time, _PACKERS[dt.time]),
    (dt.timedelta, _PACKERS[dt.timedelta]),
    (float, lambda v: _float(float(v))),
    (decimal.Decimal, _PACKERS[decimal.Decimal]),
    (uuid.UUID, _PACKERS[uuid.UUID]),
    (bytes, _PACKERS[bytes]),
    (tuple, _PACKERS[tuple]),  # a NamedTuple
    (list, _PACKERS[list]),
    (dict, _dict),
    (set, _PACKERS[set]),
    (frozenset, _PACKERS[frozenset]),
    (pathlib.PurePath, lambda v: str(v)),
)


def reduce(value: Any) -> Any:
    """What a format without a native form for ``value`` carries instead: an enum's value,
    a model's or dataclass's fields (a dict), a path's text. Raises
    :class:`UnrepresentableError` for anything else. For serializer plugins (``default``
    hooks): ``pack`` and the msgpack and CBOR plugins all reduce the same way."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="python")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, pathlib.PurePath):
        return str(value)
    raise UnrepresentableError(value)


def pack(value: Any) -> Any:
    """``value`` as JSON-ready data, rich values tagged; raises
    :class:`UnrepresentableError` for a value no tag describes."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    packer = _PACKERS.get(kind)
    if packer is not None:
        return packer(value)
    for base, packer in _BY_BASE:
        if isinstance(value, base):
            return packer(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return pack(reduce(value))
    raise UnrepresentableError(value)


# -- reading tags back ----------------------------------------------------------------------


def _bytes(data: Any) -> bytes:
    if not isinstance(data, str):
        raise ValueError("not base64 text")
    return base64.b64decode(data, validate=True)


def _timedelta(data: Any) -> dt.timedelta:
    days, seconds, micros = data
    return dt.timedelta(days=days, seconds=seconds, microseconds=micros)


def _map(data: Any) -> dict[Any, Any]:
    return {_hashable(unpack(k)): unpack(v) for k, v in data}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def _float_tag(data: Any) -> float:
    value = float(data)
    if math.isfinite(value):
        raise ValueError("a finite float is not tagged")
    return value


_read_uuid = SchemaValidator(core_schema.uuid_schema()).validate_python


def _uuid(data: Any) -> uuid.UUID:
    """Text to ``uuid.UUID``, built by pydantic-core (five times faster than
    ``UUID(text)``, a measurable part of reading a task's arguments)."""
    if type(data) is not str:
        raise ValueError("not text")
    try:
        return _read_uuid(data)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise ValueError(exc.errors(include_url=False)[0]["msg"]) from None


def _opaque(data: Any) -> Opaque:
    content_type, encoded, codecs = data
    if not isinstance(content_type, str) or not isinstance(codecs, str):
        raise ValueError("content type or codecs not text")
    return Opaque(content_type, _bytes(encoded), codecs)


_UNPACKERS: dict[str, Callable[[Any], Any]] = {
    "datetime": _from_clock(dt.datetime),
    "date": dt.date.fromisoformat,
    "time": _from_clock(dt.time),
    "timedelta": _timedelta,
    "uuid": _uuid,
    "decimal": decimal.Decimal,
    "bytes": _bytes,
    "set": lambda data: {_hashable(unpack(x)) for x in data},
    "frozenset": lambda data: frozenset(_hashable(unpack(x)) for x in data),
    "float": _float_tag,
    "map": _map,
    "dict": lambda data: {k: unpack(v) for k, v in data.items()},
    "opaque": _opaque,
}


def _untag(value: dict[str, Any]) -> Any:
    kind = value[TYPE]
    unpacker = _UNPACKERS.get(kind) if type(kind) is str else None
    if unpacker is None or len(value) != 2 or VALUE not in value:
        raise ValueError(f"malformed value: unknown tag {str(kind)[:40]!r}")
    try:
        return unpacker(value[VALUE])
    except (TypeError, ValueError, KeyError, AttributeError, binascii.Error) as exc:
        if str(exc).startswith("malformed "):
            raise
        raise ValueError(f"malformed {kind} value: {str(exc)[:120]}") from None


def unpack(value: Any) -> Any:
    """Data written by :func:`pack` as the Python value it was. Containers holding a tag
    are copied, never changed: the data read stays as it was, so a record loaded can be
    written back without packing it again (see :func:`adopt_packed`). Raises
    ``ValueError`` for a bad tag (in a model field: a ``ValidationError``, as for any
    malformed field)."""
    kind = type(value)
    if kind is dict:
        return _untag(value) if TYPE in value else _unpack_dict(value)
    return _unpack_list(value) if kind is list else value


def _unpack_dict(value: dict[str, Any]) -> dict[str, Any]:
    return _rebuilt(value, value.items(), dict)  # type: ignore[no-any-return]


def _unpack_list(value: list[Any]) -> list[Any]:
    return _rebuilt(value, enumerate(value), list)  # type: ignore[no-any-return]


def _rebuilt(value: Any, items: Iterable[tuple[Any, Any]], copy: Callable[[Any], Any]) -> Any:
    """``value`` (a dict or a list, whose ``items`` are given) with its tags read: itself
    when it holds none, else a ``copy`` with the rebuilt items (tags read inline, one call
    per container rather than per item)."""
    copied = None
    for key, item in items:
        inner = type(item)
        if inner is dict:
            if not item:
                continue
            rebuilt = _untag(item) if TYPE in item else _unpack_dict(item)
        elif inner is list and item:
            rebuilt = _unpack_list(item)
        else:
            continue
        if rebuilt is not item:
            if copied is None:
                copied = copy(value)
            copied[key] = rebuilt
    return value if copied is None else copied


def _plain(value: Any) -> bool:
    """Whether ``value`` (a dict or a list) holds only text, integers, booleans, ``None``
    and lists or text-keyed dicts of those, without a ``"$type"`` key: a payload of
    ordinary arguments, decided in plain loops (no call per value)."""
    if type(value) is not dict:
        return _plain_items(value)
    for key in value:
        if type(key) is not str or key == TYPE:
            return False
    return _plain_items(value.values())


def _plain_items(items: Iterable[Any]) -> bool:
    for item in items:
        kind = type(item)
        if kind in _AS_IS:
            continue
        if kind is list:
            for inner in item:
                if type(inner) not in _AS_IS:
                    return False
        elif kind is dict:
            for key, inner in item.items():
                if type(key) is not str or key == TYPE or type(inner) not in _AS_IS:
                    return False
        else:
            return False
    return True


def _pack_field(value: Any) -> Any:
    kind = type(value)
    if kind in _AS_IS or ((kind is dict or kind is list) and _plain(value)):
        return value  # most payloads: pydantic's own encoder writes them
    return pack(value)


#: Where :func:`packed_once` keeps a model's packed value, in its ``__dict__`` (pydantic
#: neither serialises nor compares such a key; ``model_copy`` carries it).
PACKED_SLOT: Final = "_bgcoor_packed"


def packed_once(owner: Any, value: Any) -> Any:
    """:func:`pack` for a value ``owner`` (a model) dumps again and again: a task's payload
    goes into its message and into each record written over its life. Packed (or found
    plain) once and kept beside the value it was made from; a value replaced is packed
    anew. The value is not to be changed in place once dumped."""
    kind = type(value)
    if kind in _AS_IS:
        return value
    slots = owner.__dict__
    kept = slots.get(PACKED_SLOT)
    if kept is not None and kept[0] is value:
        return kept[1]
    packed = value if (kind is dict or kind is list) and _plain(value) else pack(value)
    slots[PACKED_SLOT] = (value, packed)
    return packed


class _Loaded(threading.local):
    """The payload a model field just read from JSON, beside the data it was read from,
    until the model it belongs to adopts it (:func:`adopt_packed`), in the same thread."""

    kept: tuple[Any, Any] | None = None


_loaded = _Loaded()


def adopt_packed(owner: Any, value: Any) -> None:
    """Keep, for ``owner``'s next dumps, the data its field value ``value`` was just read
    from (by an :data:`Unpacked` field): a worker writes the records of a task
    whose payload holds rich values without packing them again. Called by the model
    after validation (``model_post_init``); a value it does not hold is ignored."""
    kept = _loaded.kept
    if kept is not None:
        _loaded.kept = None
        if kept[0] is value:
            owner.__dict__[PACKED_SLOT] = kept


def _unpack_field(value: Any, info: ValidationInfo) -> Any:
    if info.mode != "json":
        return value
    kind = type(value)
    if kind is dict:
        return _untag(value) if TYPE in value else _unpack_dict(value)
    return _unpack_list(value) if kind is list else value


def _unpack_payload(value: Any, info: ValidationInfo) -> Any:
    unpacked = _unpack_field(value, info)
    if unpacked is not value:
        _loaded.kept = (unpacked, value)
    return unpacked


#: A model field holding a value read from JSON tagged (``model_validate_json``), as it
#: is from Python (``model_validate``); the model packs it (see :func:`packed_once`) and
#: adopts the data it was read from (:func:`adopt_packed`).
Unpacked = Annotated[Any, AfterValidator(_unpack_payload)]

#: A model field holding a task's value (payload, result): tagged when dumped to JSON and
#: read back from it (``model_dump_json``, ``model_validate_json``), as it is in Python
#: (``model_dump``, ``model_validate``: the formats that carry rich values natively).
Value = Annotated[
    Any,
    PlainSerializer(_pack_field, when_used="json"),
    AfterValidator(_unpack_field),
]
