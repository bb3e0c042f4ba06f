"""CBOR from an untrusted producer back to Python values: the known types and no other.

cbor2 on its own builds far more than bg-coor carries: fractions, compiled regular
expressions, parsed MIME messages, IP addresses, complex numbers, shared and cyclic
references, ``CBORTag`` objects for unknown tags, ``frozendict`` map keys, and the simple
values ``undefined`` and ``CBORSimpleValue``. Here:

* every tag goes through :data:`DECODERS`: ours for the tags this format writes, cbor2's
  own for a short list of standard tags whose decoding builds only an ``int``,
  ``Decimal``, ``UUID``, ``date`` or ``datetime`` (:data:`STANDARD`), and a refusal for
  any other tag number, so a tag a future cbor2 learns is refused too;
* a map in a key or set-element position (cbor2's ``frozendict``) is refused by the
  object hook;
* a simple value or ``undefined`` is refused after decoding, by a walk of the value that
  runs only when the body holds a byte that could start one;
* indefinite-length items, duplicate map keys, nesting deeper than :data:`MAX_DEPTH`
  and bytes after the first item are refused.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import uuid
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import cbor2

from bgcoor_core.kit import Opaque

from . import _tags

#: Containers nested deeper than this are refused (JSON bodies stop near 200 as well).
MAX_DEPTH = 200

#: Standard tags decoded by cbor2 itself (each checks its content and builds one value).
STANDARD = frozenset(
    {
        _tags.EPOCH_DATETIME,  # datetime.fromtimestamp(number, UTC)
        _tags.POSITIVE_BIGNUM,  # int.from_bytes(byte string)
        _tags.NEGATIVE_BIGNUM,
        _tags.DECIMAL_FRACTION,  # Decimal((sign, digits, exponent))
        _tags.UUID,  # UUID(bytes=byte string)
        _tags.EPOCH_DATE,  # date.fromordinal
        _tags.DATE_TEXT,  # date.fromisoformat
    }
)

#: Bytes that may start a simple value (major type 7, values 0-19, 23 ``undefined``, 24).
_SIMPLE_STARTS = bytes([*range(0xE0, 0xF4), 0xF7, 0xF8])


def _text(value: Any, what: str) -> str:
    if type(value) is not str:
        raise ValueError(f"{what} is not text")
    return value


def _aware_datetime(value: Any, immutable: bool) -> dt.datetime:
    moment = dt.datetime.fromisoformat(_text(value, "tag 0 date-time"))
    if moment.tzinfo is None:
        raise ValueError("tag 0 date-time has no offset")
    return moment


def _wall_and_offset(value: Any, what: str) -> tuple[str, dt.timezone | None]:
    """A naive ISO text, or ``[naive ISO text, UTC offset in microseconds]``."""
    if type(value) is str:
        return value, None
    if type(value) not in (list, tuple) or len(value) != 2:
        raise ValueError(f"{what} is not text or [text, offset]")
    wall, micros = value
    if type(micros) is not int:
        raise ValueError(f"{what} offset is not an integer")
    return _text(wall, what), dt.timezone(dt.timedelta(microseconds=micros))


def _py_datetime(value: Any, immutable: bool) -> dt.datetime:
    wall, zone = _wall_and_offset(value, "datetime")
    moment = dt.datetime.fromisoformat(wall)
    if moment.tzinfo is not None:
        raise ValueError("datetime wall-clock text has an offset")
    return moment if zone is None else moment.replace(tzinfo=zone)


def _time(value: Any, immutable: bool) -> dt.time:
    wall, zone = _wall_and_offset(value, "time")
    clock = dt.time.fromisoformat(wall)
    if clock.tzinfo is not None:
        raise ValueError("time wall-clock text has an offset")
    return clock if zone is None else clock.replace(tzinfo=zone)


def _timedelta(value: Any, immutable: bool) -> dt.timedelta:
    if type(value) not in (list, tuple) or len(value) != 3:
        raise ValueError("timedelta is not [days, seconds, microseconds]")
    days, seconds, micros = value
    if type(days) is not int or type(seconds) is not int or type(micros) is not int:
        raise ValueError("timedelta parts are not integers")
    return dt.timedelta(days=days, seconds=seconds, microseconds=micros)


def _decimal_text(value: Any, immutable: bool) -> decimal.Decimal:
    return decimal.Decimal(_text(value, "decimal"))


def _opaque(value: Any, immutable: bool) -> Opaque:
    if type(value) not in (list, tuple) or len(value) != 3:
        raise ValueError("opaque value is not [content type, data, codecs]")
    content_type, data, codecs = value
    if type(content_type) is not str or type(data) is not bytes or type(codecs) is not str:
        raise ValueError("opaque value parts are not text, bytes, text")
    return Opaque(content_type, data, codecs)


def _elements(items: Any) -> tuple[Any, ...]:
    if type(items) is not tuple:  # decoded immutable: an array is a tuple
        raise ValueError("set is not an array")
    return items


def _set_of(items: Any) -> set[Any]:
    return set(_elements(items))


def _frozenset_of(items: Any) -> frozenset[Any]:
    return frozenset(_elements(items))


# Elements must be hashable: decoded immutable (arrays as tuples), as cbor2 does for 258.
@cbor2.shareable_decoder(immutable=True)
def _set(immutable: bool) -> tuple[None, Callable[[Any], set[Any]]]:
    return None, _set_of


@cbor2.shareable_decoder(immutable=True)
def _frozenset(immutable: bool) -> tuple[None, Callable[[Any], frozenset[Any]]]:
    return None, _frozenset_of


class _Decoders(dict[int, Any]):
    """Tag numbers to decoders; a tag in neither this dict nor :data:`STANDARD` is refused
    (``KeyError`` hands a standard tag to cbor2's own decoder)."""

    def __missing__(self, tag: int) -> NoReturn:
        if tag in STANDARD:
            raise KeyError(tag)
        raise ValueError(f"CBOR tag {tag} is not part of this format")


DECODERS: Mapping[int, Any] = _Decoders(
    {
        _tags.DATETIME_TEXT: _aware_datetime,
        _tags.SET: _set,
        _tags.PY_DATETIME: _py_datetime,
        _tags.TIME: _time,
        _tags.TIMEDELTA: _timedelta,
        _tags.FROZENSET: _frozenset,
        _tags.DECIMAL_TEXT: _decimal_text,
        _tags.OPAQUE: _opaque,
    }
)


def _unknown_tag(tag: cbor2.CBORTag, immutable: bool) -> NoReturn:
    raise ValueError(f"CBOR tag {tag.tag} is not part of this format")  # never reached


def _map(value: Mapping[Any, Any], immutable: bool) -> Mapping[Any, Any]:
    if immutable:
        raise ValueError("a map as a map key or set element")
    return value


#: Types that hold no other value (skipped without a call).
_LEAVES = frozenset(
    {
        str,
        int,
        float,
        bool,
        type(None),
        bytes,
        dt.datetime,
        dt.date,
        dt.time,
        dt.timedelta,
        decimal.Decimal,
        uuid.UUID,
        Opaque,
    }
)
_COLLECTIONS = frozenset({list, tuple, set, frozenset})


def _refuse_simple_values(value: Any) -> None:
    """Raise if ``value`` holds a CBOR simple value or ``undefined`` (cbor2's own objects).
    Recursive: the decoder already refused nesting deeper than :data:`MAX_DEPTH`."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) not in _LEAVES:
                _refuse_simple_values(key)
            if type(item) not in _LEAVES:
                _refuse_simple_values(item)
    elif kind in _COLLECTIONS:
        for item in value:
            if type(item) not in _LEAVES:
                _refuse_simple_values(item)
    elif kind is cbor2.CBORSimpleValue or value is cbor2.undefined:
        raise ValueError(f"CBOR simple value {value!r} is not part of this format")


def decode(raw: bytes) -> Any:
    """The one CBOR item ``raw`` holds; ``ValueError`` saying why if it is malformed."""
    stream = io.BytesIO(raw)
    try:
        value = cbor2.CBORDecoder(
            stream,
            semantic_decoders=DECODERS,
            tag_hook=_unknown_tag,
            object_hook=_map,
            max_depth=MAX_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        ).decode()
    except cbor2.CBORDecodeError as exc:
        cause = exc.__cause__  # what a decoder of a tag or the map hook said
        raise ValueError(f"{exc}: {cause}" if cause else str(exc)) from None
    if stream.tell() != len(raw):
        raise ValueError(f"{len(raw) - stream.tell()} bytes after the CBOR item")
    if len(raw.translate(None, _SIMPLE_STARTS)) != len(raw):  # a walk only if one may be there
        _refuse_simple_values(value)
    return value
