"""bg-coor's msgpack wire format: which values are msgpack's own, which are extension types.

msgpack itself carries ``None``, booleans, integers from -2**63 to 2**64-1, floats
(``nan``, ``inf`` and ``-0.0`` included), text, bytes, arrays (lists and tuples) and maps
with keys of any type. Every other value of bg-coor's value table travels as an
extension type whose code (:mod:`._codes`) and data are below; they are a stable wire
format (the README documents them), read by any version of this plugin and writable by
any language.
Enums, dataclasses and pydantic models travel as :func:`bgcoor_core.kit.reduce` makes
them (their values, dicts of their fields).

Encoding is msgpack's C packer with a ``default`` hook, called only for a value msgpack
has no form for; decoding is its C unpacker with an ``ext_hook`` that builds only the
types below and raises ``ValueError`` for anything else. Every length in a body is bounded
by the body's size before anything is allocated (``unpackb`` does so by default).
"""

from __future__ import annotations

import datetime as dt
import decimal
import struct
import uuid
from collections.abc import Callable
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type information

from bgcoor_core.kit import Opaque, reduce

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

_TIMEDELTA = struct.Struct(">iII")
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
_NATIVE = (str, bytes, bytearray, memoryview, float, list, tuple, dict, type(None))
_ExtType = msgpack.ExtType

Default = Callable[[Any], Any]
ExtHook = Callable[[int, bytes], Any]


# -- encoding ---------------------------------------------------------------------------


def _with_offset(naive: str, offset: dt.timedelta | None, text: str) -> bytes:
    """``text``; for an offset that is not whole minutes (ISO text cannot hold it, and
    ``fromisoformat`` reads it as UTC), the naive text then ``@<microseconds>``."""
    if offset is None or (not offset.seconds % 60 and not offset.microseconds):
        return text.encode()
    return f"{naive}@{offset // dt.timedelta(microseconds=1)}".encode()


# The base classes' methods, not a subclass's overrides: the value as it is.
def _datetime_data(value: dt.datetime) -> bytes:
    naive = dt.datetime.isoformat(dt.datetime.replace(value, tzinfo=None))
    return _with_offset(naive, dt.datetime.utcoffset(value), dt.datetime.isoformat(value))


def _time_data(value: dt.time) -> bytes:
    naive = dt.time.isoformat(dt.time.replace(value, tzinfo=None))
    return _with_offset(naive, dt.time.utcoffset(value), dt.time.isoformat(value))


def _from_clock(kind: type[dt.datetime] | type[dt.time], text: str) -> dt.datetime | dt.time:
    clock, at, micros = text.partition("@")
    value = kind.fromisoformat(clock)
    if not at:
        return value
    if value.tzinfo is not None:
        raise ValueError("an offset twice")
    return value.replace(tzinfo=dt.timezone(dt.timedelta(microseconds=int(micros))))


def _bigint(value: int) -> Any:
    size = (value.bit_length() + 8) // 8  # room for the sign bit
    return _ExtType(BIGINT, int.to_bytes(value, size, "big", signed=True))


def _timedelta(value: dt.timedelta) -> Any:
    return _ExtType(TIMEDELTA, _TIMEDELTA.pack(value.days, value.seconds, value.microseconds))


def _opaque(value: Opaque) -> Any:
    items = [value.content_type, value.data, value.codecs]
    return _ExtType(OPAQUE, msgpack.packb(items))


#: Exact types to their encoders, each written with the base class's own methods so that
#: it serves a subclass too (through ``_BASES``).
_ENCODERS: dict[type, Callable[[Any], Any]] = {
    dt.datetime: lambda v: _ExtType(DATETIME, _datetime_data(v)),
    dt.date: lambda v: _ExtType(DATE, dt.date.isoformat(v).encode()),
    dt.time: lambda v: _ExtType(TIME, _time_data(v)),
    dt.timedelta: _timedelta,
    uuid.UUID: lambda v: _ExtType(UUID, v.bytes),
    decimal.Decimal: lambda v: _ExtType(DECIMAL, decimal.Decimal.__str__(v).encode()),
    int: _bigint,  # the packer asks only for integers it cannot carry
    Opaque: _opaque,
}

#: For a type not in ``_ENCODERS``, checked in order (a datetime is also a date).
_BASES: tuple[tuple[type, Callable[[Any], Any]], ...] = tuple(
    (base, _ENCODERS[base])
    for base in (dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID, decimal.Decimal, int)
)

_SETS: dict[type, int] = {set: SET, frozenset: FROZENSET}


def _native(value: Any) -> bool:
    """Whether the packer carries ``value`` itself (the top of what ``default`` returns
    is not handed to ``default`` again)."""
    if isinstance(value, int):
        return _INT_MIN <= value <= _INT_MAX
    return isinstance(value, _NATIVE)


def _default_at(depth: int) -> Default:
    """The packer's ``default`` hook for values inside ``depth`` sets."""

    def elements(code: int, value: set[Any] | frozenset[Any]) -> Any:
        if depth >= MAX_NESTING:
            raise ValueError(f"sets nested more than {MAX_NESTING} deep")
        return _ExtType(code, msgpack.packb(list(value), default=_DEFAULTS[depth + 1]))

    def default(value: Any) -> Any:
        kind = type(value)
        encode = _ENCODERS.get(kind)
        if encode is not None:
            return encode(value)
        code = _SETS.get(kind)
        if code is not None:
            return elements(code, value)
        for base, encode in _BASES:
            if isinstance(value, base):
                return encode(value)
        if isinstance(value, frozenset):
            return elements(FROZENSET, value)
        if isinstance(value, set):
            return elements(SET, value)
        reduced = reduce(value)  # raises UnrepresentableError naming the type
        return reduced if _native(reduced) else default(reduced)

    return default


_DEFAULTS: list[Default] = [_default_at(depth) for depth in range(MAX_NESTING + 1)]


def dumps(data: Any) -> bytes:
    """``data`` as msgpack, rich values as this format's extension types."""
    body: bytes = msgpack.packb(data, default=_DEFAULTS[0])
    return body


# -- decoding ---------------------------------------------------------------------------


def _text(data: bytes) -> str:
    return data.decode("ascii")


def _decode_timedelta(data: bytes) -> dt.timedelta:
    days, seconds, micros = _TIMEDELTA.unpack(data)
    if seconds >= 86_400 or micros >= 1_000_000:
        raise ValueError("timedelta seconds or microseconds out of range")
    return dt.timedelta(days=days, seconds=seconds, microseconds=micros)


def _decode_bigint(data: bytes) -> int:
    if not data:
        raise ValueError("empty integer")
    return int.from_bytes(data, "big", signed=True)


def _hashable(value: Any) -> Any:
    """A decoded key or set element: arrays (tuples when written) as tuples."""
    return tuple(_hashable(item) for item in value) if type(value) is list else value


def _keyed_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    return {_hashable(key): value for key, value in pairs}


def _decode_opaque(data: bytes) -> Opaque:
    items = msgpack.unpackb(data, ext_hook=_no_extension, raw=False)
    if type(items) is not list or len(items) != 3:
        raise ValueError("opaque value is not [content type, data, codecs]")
    content_type, raw, codecs = items
    if type(content_type) is not str or type(raw) is not bytes or type(codecs) is not str:
        raise ValueError("opaque value is not [str, bin, str]")
    return Opaque(content_type, raw, codecs)


def _no_extension(code: int, data: bytes) -> Any:
    raise ValueError(f"an extension type ({code}) where none belongs")


_DECODERS: dict[int, Callable[[bytes], Any]] = {
    DATETIME: lambda data: _from_clock(dt.datetime, _text(data)),
    DATE: lambda data: dt.date.fromisoformat(_text(data)),
    TIME: lambda data: _from_clock(dt.time, _text(data)),
    TIMEDELTA: _decode_timedelta,
    UUID: lambda data: uuid.UUID(bytes=data),
    DECIMAL: lambda data: decimal.Decimal(_text(data)),
    BIGINT: _decode_bigint,
    OPAQUE: _decode_opaque,
}


#: Names of the extension types, for errors.
_KINDS: dict[int, str] = {
    DATETIME: "datetime",
    DATE: "date",
    TIME: "time",
    TIMEDELTA: "timedelta",
    UUID: "uuid",
    DECIMAL: "decimal",
    BIGINT: "integer",
    SET: "set",
    FROZENSET: "frozenset",
    OPAQUE: "opaque",
}

#: What a decoder raises for bad data (a wrong length, a value out of range, bad text).
_BAD_DATA = (ValueError, TypeError, ArithmeticError, struct.error)


def _ext_hook_at(depth: int) -> ExtHook:
    """The unpacker's ``ext_hook`` for values inside ``depth`` sets."""

    def elements(code: int, data: bytes) -> set[Any] | frozenset[Any]:
        if depth >= MAX_NESTING:
            raise ValueError(f"sets nested more than {MAX_NESTING} deep")
        items = msgpack.unpackb(data, ext_hook=_HOOKS[depth + 1], raw=False, timestamp=3)
        if type(items) is not list:
            raise ValueError("not an array")
        hashable = (_hashable(item) for item in items)
        return set(hashable) if code == SET else frozenset(hashable)

    def ext_hook(code: int, data: bytes) -> Any:
        decode = _DECODERS.get(code)
        try:
            if decode is not None:
                return decode(data)
            if code in (SET, FROZENSET):
                return elements(code, data)
        except _BAD_DATA as exc:
            if str(exc).startswith("malformed "):  # from a set inside this one
                raise
            raise ValueError(f"malformed {_KINDS[code]} value: {_describe(exc)}") from None
        raise ValueError(f"malformed value: unknown msgpack extension type {code}")

    return ext_hook


def _describe(exc: BaseException) -> str:
    return str(exc)[:200] or type(exc).__name__


_HOOKS: list[ExtHook] = [_ext_hook_at(depth) for depth in range(MAX_NESTING + 1)]


def _unpack(raw: bytes, pairs_hook: Callable[[list[tuple[Any, Any]]], Any] | None) -> Any:
    try:
        return msgpack.unpackb(
            raw,
            ext_hook=_HOOKS[0],
            raw=False,
            strict_map_key=False,
            timestamp=3,
            object_pairs_hook=pairs_hook,
        )
    except msgpack.StackError:
        raise ValueError("malformed body: nested deeper than msgpack's unpacker allows") from None
    except msgpack.FormatError:
        raise ValueError("malformed body: not msgpack (a byte msgpack never uses)") from None


def loads(raw: bytes) -> Any:
    """What :func:`dumps` wrote, rebuilt; ``ValueError`` for anything else. A map whose key
    is an array (a tuple key) fails the fast path (a list is unhashable) and is decoded
    again, its keys made tuples."""
    try:
        return _unpack(raw, None)
    except TypeError:
        try:
            return _unpack(raw, _keyed_map)
        except TypeError as exc:
            raise ValueError(f"malformed map key: {_describe(exc)}") from None
