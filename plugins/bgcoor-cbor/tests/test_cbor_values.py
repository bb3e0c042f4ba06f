"""CBOR round trips: the serializer contract, and each rich value the brief names exactly
(naive stays naive, offsets kept, Decimal exponents, -0, infinities, set vs frozenset,
tuple keys, integers past 64 bits, sealed values)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import ipaddress
import math
import pathlib
import re
import uuid
from typing import Any

import cbor2
import pytest
from bgcoor_cbor import CborSerializer
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from bgcoor_core import Codec, PayloadError, Task, TaskStatus
from bgcoor_core.kit import Opaque
from bgcoor_core.testing.values import SerializerContract, same

D = decimal.Decimal


class TestCborContract(SerializerContract):
    @pytest.fixture
    def serializer(self) -> CborSerializer:
        return CborSerializer()


def round_trip(cbor: CborSerializer, value: Any) -> Any:
    return cbor.loads(cbor.dumps(value))


def offset(**delta: float) -> dt.timezone:
    return dt.timezone(dt.timedelta(**delta))


DATETIMES = [
    dt.datetime(2024, 1, 2, 3, 4, 5),  # naive
    dt.datetime(2024, 1, 2, 3, 4, 5, 678901),  # naive, microseconds
    dt.datetime(1, 1, 1),
    dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
    dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=offset(hours=5, minutes=30)),
    dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=offset(hours=-3, minutes=-30)),
    dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=offset(seconds=30)),  # RFC 3339 cannot
    dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=offset(seconds=-1, microseconds=5)),
    dt.datetime(2024, 1, 2, tzinfo=offset(microseconds=500000)),  # fromisoformat reads UTC
    dt.datetime(2024, 1, 2, tzinfo=offset(hours=23, minutes=59, seconds=59, microseconds=9)),
]


@pytest.mark.parametrize("value", DATETIMES, ids=str)
def test_datetimes_keep_naivety_and_offset(cbor: CborSerializer, value: dt.datetime) -> None:
    back = round_trip(cbor, value)
    assert type(back) is dt.datetime
    assert back == value
    assert back.utcoffset() == value.utcoffset()
    assert (back.tzinfo is None) is (value.tzinfo is None)


TIMES = [
    dt.time(0, 0),
    dt.time(1, 2, 3, 4),
    dt.time(23, 59, 59, 999999, tzinfo=dt.UTC),
    dt.time(12, 0, tzinfo=offset(hours=-14)),
    dt.time(12, 0, tzinfo=offset(seconds=30, microseconds=7)),
    dt.time(12, 0, tzinfo=offset(microseconds=-1)),
]


@pytest.mark.parametrize("value", TIMES, ids=str)
def test_times_with_and_without_offset(cbor: CborSerializer, value: dt.time) -> None:
    back = round_trip(cbor, value)
    assert type(back) is dt.time
    assert back == value
    assert back.utcoffset() == value.utcoffset()
    assert (back.tzinfo is None) is (value.tzinfo is None)


@pytest.mark.parametrize(
    "value",
    [
        dt.timedelta(0),
        dt.timedelta(microseconds=1),
        dt.timedelta(microseconds=-1),  # days=-1, seconds=86399, microseconds=999999
        dt.timedelta(days=-3, seconds=5, microseconds=7),
        dt.timedelta.max,
        dt.timedelta.min,
    ],
    ids=repr,
)
def test_timedeltas_are_exact(cbor: CborSerializer, value: dt.timedelta) -> None:
    back = round_trip(cbor, value)
    assert type(back) is dt.timedelta
    assert (back.days, back.seconds, back.microseconds) == (
        value.days,
        value.seconds,
        value.microseconds,
    )


@pytest.mark.parametrize(
    "text",
    [
        "1.10",
        "-1.10",
        "0",
        "-0",
        "0E+5",
        "-0E+5",
        "0.000",
        "-0.000",
        "1E+3",
        "0.000001",
        "Infinity",
        "-Infinity",
        "1E+999999999999999999",
        "-1.5E-999999999999999999",
        "9" * 5000 + "E-77",  # past int's 4300-digit text limit
    ],
    ids=lambda t: t[:24],
)
def test_decimals_keep_sign_digits_and_exponent(cbor: CborSerializer, text: str) -> None:
    value = D(text)
    back = round_trip(cbor, value)
    assert type(back) is D
    assert back.as_tuple() == value.as_tuple()


@pytest.mark.parametrize("text", ["NaN", "-NaN", "NaN123", "sNaN", "-sNaN45"])
def test_decimal_nans_keep_kind_sign_and_payload(cbor: CborSerializer, text: str) -> None:
    back = round_trip(cbor, D(text))
    assert type(back) is D
    assert str(back) == str(D(text))


@given(st.decimals(allow_nan=False, places=None))
def test_any_decimal_round_trips(value: D) -> None:
    assert round_trip(CborSerializer(), value).as_tuple() == value.as_tuple()


@given(st.floats())
def test_any_float_round_trips(value: float) -> None:
    """Exactly, -0.0 included; a NaN comes back a NaN (cbor2 writes every NaN as one
    half-precision NaN: its sign and payload are not kept, as in JSON)."""
    back = round_trip(CborSerializer(), value)
    assert type(back) is float
    if math.isnan(value):
        assert math.isnan(back)
    else:
        assert back == value
        assert math.copysign(1, back) == math.copysign(1, value)


@pytest.mark.parametrize(
    "value",
    [0, -1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**64), -(2**64) - 1, 2**200, -(3**300)],
    ids=str,
)
def test_integers_of_any_size(cbor: CborSerializer, value: int) -> None:
    back = round_trip(cbor, value)
    assert type(back) is int
    assert back == value


def test_sets_and_frozensets_stay_distinct(cbor: CborSerializer) -> None:
    value = {
        "set": {1, "a", b"b", (1, 2)},
        "frozen": frozenset({1, "a", (3, (4, 5))}),
        "empty": [set(), frozenset()],
        frozenset({"k"}): "a frozenset key",
        "nested": frozenset({frozenset({1}), (frozenset({2}),)}),
    }
    back = round_trip(cbor, value)
    assert same(back, value)
    assert type(back["set"]) is set
    assert type(back["frozen"]) is frozenset
    assert [type(s) for s in back["empty"]] == [set, frozenset]


def test_dict_keys_of_any_hashable_type(cbor: CborSerializer) -> None:
    day = dt.date(2024, 1, 2)
    oid = uuid.uuid4()
    value = {
        1: "int",
        -(2**70): "bignum",
        (1, "a", (2, b"x")): "tuple",
        None: "none",
        False: "bool",
        1.5: "float",
        b"raw": "bytes",
        day: "date",
        oid: "uuid",
        D("1.10"): "decimal",
    }
    back = round_trip(cbor, value)
    assert same(back, value)
    assert (1, "a", (2, b"x")) in back  # tuple keys come back as tuples, all the way down


def test_lists_and_tuples_come_back_as_lists(cbor: CborSerializer) -> None:
    assert same(round_trip(cbor, (1, (2, [3, (4,)]))), [1, [2, [3, [4]]]])


def test_user_dicts_with_a_type_key_are_left_alone(cbor: CborSerializer) -> None:
    value = {"$type": "datetime", "value": "2024-01-02T03:04:05"}
    assert same(round_trip(cbor, value), value)


def test_non_finite_floats(cbor: CborSerializer) -> None:
    back = round_trip(cbor, [math.inf, -math.inf, math.nan, -0.0])
    assert back[:2] == [math.inf, -math.inf]
    assert math.isnan(back[2])
    assert math.copysign(1, back[3]) == -1


def test_bytes_like_values_come_back_as_bytes(cbor: CborSerializer) -> None:
    back = round_trip(cbor, [b"\x00\xff", bytearray(b"ba"), memoryview(b"mv")])
    assert same(back, [b"\x00\xff", b"ba", b"mv"])


def test_opaque_values_round_trip_as_opaque(cbor: CborSerializer) -> None:
    sealed = Opaque("application/x-python-pickle", b"\x80\x05N.", "zstd,aesgcm:k2")
    value = [sealed, Opaque("a/b", b"")]
    back = round_trip(cbor, value)
    assert back == value
    assert all(type(v) is Opaque for v in back)


class Moment(dt.datetime):
    pass


class Amount(D):
    pass


class Ident(uuid.UUID):
    pass


class Day(dt.date):
    pass


def test_subclasses_of_rich_types_travel_as_their_base(cbor: CborSerializer) -> None:
    oid = uuid.uuid4()
    value = [
        Moment(2024, 1, 2, 3, 4, 5),
        Amount("-0"),
        Ident(int=oid.int),
        Day(2024, 1, 2),
        Moment(2024, 1, 2, tzinfo=dt.UTC),
    ]
    assert same(
        round_trip(cbor, value),
        [
            dt.datetime(2024, 1, 2, 3, 4, 5),
            D("-0"),
            oid,
            dt.date(2024, 1, 2),
            dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
        ],
    )


class Colour(enum.Enum):
    RED = (1, "red")


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Line:
    sku: str
    price: D
    at: dt.datetime


class Cart(BaseModel):
    id: uuid.UUID
    lines: list[Line]
    tags: frozenset[str]


def test_enums_dataclasses_models_and_paths_are_reduced(cbor: CborSerializer) -> None:
    cid = uuid.uuid4()
    at = dt.datetime(2024, 1, 2, 3, 4, 5)
    cart = Cart(id=cid, lines=[Line("a", D("1.10"), at)], tags=frozenset({"x"}))
    back = round_trip(
        cbor, [Colour.RED, Level.HIGH, TaskStatus.DEAD, cart, pathlib.PurePosixPath("/a/b")]
    )
    assert same(
        back,
        [
            [1, "red"],
            3,
            "dead",
            {
                "id": cid,
                "lines": [{"sku": "a", "price": D("1.10"), "at": at}],
                "tags": frozenset({"x"}),
            },
            "/a/b",
        ],
    )


class Mystery:
    pass


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (Mystery(), "Mystery"),
        (1 + 2j, "complex"),
        (fractions.Fraction(1, 3), "Fraction"),
        (re.compile("a+"), "Pattern"),
        (ipaddress.ip_address("127.0.0.1"), "IPv4Address"),
        (cbor2.CBORTag(30, [1, 3]), "CBORTag"),
        (cbor2.CBORSimpleValue(5), "CBORSimpleValue"),
        (cbor2.undefined, "UndefinedType"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_what_the_format_does_not_carry_is_refused_by_name(
    codec: Codec, value: object, name: str
) -> None:
    """cbor2 writes some of these natively; this format's decoder refuses their tags, so
    the encoder refuses them too, before anything is enqueued."""
    with pytest.raises(PayloadError, match=name):
        codec.encode(Task.new("t", {"args": [[value]], "kwargs": {}}))


def test_a_cycle_is_refused(codec: Codec) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(PayloadError, match="cannot be serialised as application/cbor"):
        codec.encode(Task.new("t", {"args": [loop], "kwargs": {}}))


def test_the_envelope_status_travels_as_text(codec: Codec) -> None:
    task = Task.new("t", None, status=TaskStatus.RETRYING)
    body = codec.encode(task)
    assert b"fstatushretrying" in body  # the key and the text, no tag or enum
    assert codec.decode(body).status is TaskStatus.RETRYING
