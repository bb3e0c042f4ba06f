"""Python values to CBOR: cbor2's own encoders where a standard tag carries a value
exactly, hooks of ours where it does not (the tags are in :mod:`._tags`).

cbor2 looks a value's exact type up in ``encoders`` before anything else, so the table
maps the common types to cbor2's own methods as well (a miss costs an exception inside
cbor2, twice the time of the value's encoding); a subclass misses it and is encoded by
cbor2's own rules (``str``, ``int``, mappings, sequences) or by :func:`default`, which
finds its base class. Enums, dataclasses and pydantic models reach :func:`default` too
and travel as :func:`bgcoor_core.kit.reduce` makes them.
"""

from __future__ import annotations

import datetime as dt
import decimal
import email.mime.text
import fractions
import ipaddress
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import cbor2

from bgcoor_core import TaskStatus
from bgcoor_core.kit import Opaque, UnrepresentableError, reduce

from . import _tags

Hook = Callable[[cbor2.CBOREncoder, Any], None]
_E = cbor2.CBOREncoder


_MICROSECOND = dt.timedelta(microseconds=1)


def _datetime(encoder: cbor2.CBOREncoder, value: dt.datetime) -> None:
    offset = value.utcoffset()
    if offset is None:
        encoder.encode_semantic(_tags.PY_DATETIME, value.isoformat())
    elif offset.microseconds or offset.seconds % 60:  # RFC 3339 offsets are whole minutes
        wall = value.replace(tzinfo=None).isoformat()
        encoder.encode_semantic(_tags.PY_DATETIME, [wall, offset // _MICROSECOND])
    else:
        encoder.encode_semantic(_tags.DATETIME_TEXT, value.isoformat())


def _time(encoder: cbor2.CBOREncoder, value: dt.time) -> None:
    offset = value.utcoffset()
    if offset is None:
        encoder.encode_semantic(_tags.TIME, value.isoformat())
    else:
        wall = value.replace(tzinfo=None).isoformat()
        encoder.encode_semantic(_tags.TIME, [wall, offset // _MICROSECOND])


def _timedelta(encoder: cbor2.CBOREncoder, value: dt.timedelta) -> None:
    encoder.encode_semantic(_tags.TIMEDELTA, [value.days, value.seconds, value.microseconds])


def _decimal(encoder: cbor2.CBOREncoder, value: decimal.Decimal) -> None:
    if value.is_finite() and not (value.is_zero() and value.is_signed()):
        encoder.encode_decimal(value)  # tag 4 [exponent, mantissa]: "1.10" stays 1.10
    else:  # cbor2 writes these as floats, and tag 4 has no -0
        encoder.encode_semantic(_tags.DECIMAL_TEXT, str(value))


def _frozenset(encoder: cbor2.CBOREncoder, value: frozenset[Any]) -> None:
    encoder.encode_semantic(_tags.FROZENSET, list(value))


def _opaque(encoder: cbor2.CBOREncoder, value: Opaque) -> None:
    encoder.encode_semantic(_tags.OPAQUE, [value.content_type, value.data, value.codecs])


def _memoryview(encoder: cbor2.CBOREncoder, value: memoryview) -> None:
    encoder.encode_bytes(value.tobytes())


def _none(encoder: cbor2.CBOREncoder, value: None) -> None:
    encoder.encode_none()


def _refuse(encoder: cbor2.CBOREncoder, value: object) -> NoReturn:
    """cbor2 writes these natively, but they are no value of bg-coor's (and this format's
    decoder refuses their tags): refused like any object no format carries."""
    raise UnrepresentableError(value)


#: Exact types to their encoders (see the module docstring).
ENCODERS: Mapping[type, Hook] = {
    str: _E.encode_string,
    TaskStatus: _E.encode_string,  # the envelope's status, a StrEnum: as its text
    int: _E.encode_int,
    bool: _E.encode_bool,
    float: _E.encode_float,
    type(None): _none,
    bytes: _E.encode_bytes,
    bytearray: _E.encode_bytearray,
    list: _E.encode_array,
    tuple: _E.encode_array,
    dict: _E.encode_map,
    set: _E.encode_set,
    dt.date: _E.encode_date,
    uuid.UUID: _E.encode_uuid,
    dt.datetime: _datetime,
    dt.time: _time,
    dt.timedelta: _timedelta,
    decimal.Decimal: _decimal,
    frozenset: _frozenset,
    Opaque: _opaque,
    memoryview: _memoryview,
    **dict.fromkeys(
        (
            complex,
            fractions.Fraction,
            re.Pattern,
            email.mime.text.MIMEText,
            ipaddress.IPv4Address,
            ipaddress.IPv4Network,
            ipaddress.IPv4Interface,
            ipaddress.IPv6Address,
            ipaddress.IPv6Network,
            ipaddress.IPv6Interface,
            cbor2.CBORTag,
            cbor2.CBORSimpleValue,
            type(cbor2.undefined),
        ),
        _refuse,
    ),
}

#: Subclasses of the rich types, checked in order (``datetime`` before ``date``).
_BASES: tuple[tuple[type, Hook], ...] = (
    (dt.datetime, _datetime),
    (dt.date, _E.encode_date),
    (dt.time, _time),
    (dt.timedelta, _timedelta),
    (decimal.Decimal, _decimal),
    (uuid.UUID, _E.encode_uuid),
    (memoryview, _memoryview),
)


def default(encoder: cbor2.CBOREncoder, value: Any) -> None:
    """What cbor2 calls for a value it has no encoder for: an enum, dataclass, model or
    path (reduced), or a subclass of a rich type; anything else is refused by name."""
    try:
        reduced = reduce(value)
    except UnrepresentableError:
        for base, hook in _BASES:
            if isinstance(value, base):
                hook(encoder, value)
                return
        raise
    encoder.encode(reduced)


def encode(data: Any) -> bytes:
    """``data`` as one CBOR item; ``TypeError`` or ``ValueError`` naming what it cannot carry."""
    try:
        return cbor2.dumps(data, encoders=ENCODERS, default=default)
    except (TypeError, ValueError):
        raise
    except cbor2.CBOREncodeError as exc:  # e.g. "cyclic data structure detected"
        raise ValueError(str(exc)) from None
