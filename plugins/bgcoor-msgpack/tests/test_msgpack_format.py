"""The msgpack format: bg-coor's serializer contract, the documented wire format, and
bodies from an untrusted producer."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import pathlib
import struct
import uuid
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from bgcoor_msgpack import (
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
    MsgpackSerializer,
    dumps,
    loads,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from bgcoor_core import Codec, DecodeError, PayloadError, Task, TaskStatus
from bgcoor_core.kit import Opaque
from bgcoor_core.testing.values import SerializerContract, same


class TestMsgpack(SerializerContract):
    @pytest.fixture
    def serializer(self) -> MsgpackSerializer:
        return MsgpackSerializer()


@pytest.fixture
def codec() -> Codec:
    serializer = MsgpackSerializer()
    return Codec({serializer.content_type: serializer}, content_type="application/msgpack")


def ext(code: int, data: bytes) -> bytes:
    """A msgpack body holding one extension value."""
    body: bytes = msgpack.packb(msgpack.ExtType(code, data))
    return body


# -- what comes back ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2024, 1, 2, 3, 4, 5, 6),  # naive stays naive
        dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(seconds=-61, microseconds=1))),
        dt.time(3, 4, 5, 6, tzinfo=dt.UTC),
        dt.time(0, 0),
        dt.timedelta(days=-999_999_999),
        dt.timedelta(days=999_999_999, seconds=86_399, microseconds=999_999),
        decimal.Decimal("1.10"),
        decimal.Decimal("-0"),
        decimal.Decimal("-Infinity"),
        decimal.Decimal("1E+999999"),
        2**64 - 1,  # msgpack's own, from here on an extension
        2**64,
        -(2**63),
        -(2**63) - 1,
        -(2**71),
        10**400,
        -0.0,
        float("-inf"),
        b"",
        {(1, (2, 3)): "a nested tuple key", frozenset({4}): "a frozenset key"},
        {dt.date(2024, 1, 1): 1, uuid.UUID(int=1): 2, b"k": 3, None: 4, 1.5: 5},
        {"$type": "bytes", "value": "AP8="},  # a user's dict is never taken for anything
        [set(), frozenset(), {(1, "a")}, frozenset({frozenset({1}), (2, frozenset())})],
        Opaque("application/x-python-pickle", b"\x80\x05K\x01.", "zstd,aesgcm:k2"),
    ],
    ids=repr,
)
def test_each_kind_comes_back_exactly(value: Any) -> None:
    assert same(loads(dumps(value)), value)


def _hashables() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.integers(),
        st.text(max_size=4),
        st.binary(max_size=4),
        st.floats(allow_nan=False),
        st.datetimes(timezones=st.none() | st.just(dt.UTC)),
        st.uuids(),
        st.none(),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.tuples(inner, inner), st.frozensets(inner, max_size=3), st.tuples()
        ),
        max_leaves=8,
    )


@settings(max_examples=150, deadline=None)
@given(value=st.dictionaries(_hashables(), _hashables(), max_size=4), members=st.sets(_hashables()))
def test_keys_and_members_of_any_hashable_kind_come_back_as_they_were(
    value: dict[Any, Any], members: set[Any]
) -> None:
    """Tuples among keys and set members stay tuples (they are hashed); tuples among the
    values become lists, as everywhere."""
    back = loads(dumps({"map": value, "set": members}))
    assert back["map"].keys() == value.keys()
    assert all(same(a, b) for a, b in zip(back["map"], value, strict=True))
    assert same(back["set"], members)


def test_lists_and_tuples_both_come_back_as_lists() -> None:
    assert same(loads(dumps((1, [2, (3,)]))), [1, [2, [3]]])


def test_subclasses_travel_as_their_base_type() -> None:
    class Stamp(dt.datetime):
        def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
            return "not what the format writes"

    class Id(uuid.UUID):
        pass

    class Big(int):
        pass

    class Tags(set[int]):
        pass

    class Frozen(frozenset[int]):
        pass

    sent = [Stamp(2024, 1, 2, tzinfo=dt.UTC), Id(int=3), Big(2**70), Tags({1}), Frozen({2})]
    expected: list[Any] = [dt.datetime(2024, 1, 2, tzinfo=dt.UTC), uuid.UUID(int=3), 2**70]
    expected += [{1}, frozenset({2})]
    assert same(loads(dumps(sent)), expected)


class Level(enum.IntEnum):
    HIGH = 2**70


class Price(enum.Enum):
    LOW = decimal.Decimal("0.50")


class Mode(enum.StrEnum):
    FAST = "fast"


@dataclasses.dataclass
class Point:
    x: int
    seen: frozenset[dt.date]


def test_enums_dataclasses_and_paths_are_reduced_to_what_they_hold() -> None:
    day = dt.date(2024, 5, 6)
    values = [Level.HIGH, Price.LOW, Mode.FAST, Point(1, frozenset({day})), pathlib.Path("/a")]
    expected = [2**70, decimal.Decimal("0.50"), "fast", {"x": 1, "seen": frozenset({day})}, "/a"]
    assert same(loads(dumps(values)), expected)


def test_the_envelope_keeps_its_types(codec: Codec) -> None:
    task = Task.new("t", {"args": [1]}, headers={"trace": "abc"})
    task.status = TaskStatus.RUNNING
    body = codec.encode(task)
    assert body.startswith(b"application/msgpack\n")
    fields = loads(body.partition(b"\n")[2])
    assert type(fields["status"]) is str  # a StrEnum travels as its text
    assert same(fields["created_at"], task.created_at)
    back = codec.decode(body)
    assert back == task
    assert back.status is TaskStatus.RUNNING


def test_a_body_is_smaller_than_json(codec: Codec) -> None:
    task = Task.new("t", {"args": [uuid.uuid4(), dt.datetime.now(dt.UTC), b"\x00" * 64]})
    assert len(codec.encode(task)) < len(Codec.json().encode(task))


def test_what_cannot_be_carried_is_refused_naming_its_type() -> None:
    class Mystery:
        pass

    with pytest.raises(TypeError, match=r"test_msgpack_format\..*Mystery"):
        dumps({"deep": [{1: Mystery()}]})
    with pytest.raises(TypeError, match="Mystery"):
        dumps({Mystery()})


def test_sets_nested_too_deep_are_refused_when_written() -> None:
    value: Any = frozenset()  # one set
    for _ in range(MAX_NESTING - 1):
        value = frozenset({value})
    assert same(loads(dumps(value)), value)
    with pytest.raises(ValueError, match=f"nested more than {MAX_NESTING} deep"):
        dumps(frozenset({value}))


# -- the wire format (documented in the README: these bytes must never change) -----------


def test_the_extension_codes_are_the_documented_ones() -> None:
    codes = [DATETIME, DATE, TIME, TIMEDELTA, UUID, DECIMAL, BIGINT, SET, FROZENSET, OPAQUE]
    assert codes == list(range(1, 11))


@pytest.mark.parametrize(
    ("value", "body"),
    [
        (
            dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
            ext(DATETIME, b"2024-01-02T03:04:05.000006-05:00"),
        ),
        (dt.datetime(2024, 1, 2, 3, 4, 5), ext(DATETIME, b"2024-01-02T03:04:05")),
        (dt.date(2024, 1, 2), ext(DATE, b"2024-01-02")),
        (dt.time(3, 4, tzinfo=dt.UTC), ext(TIME, b"03:04:00+00:00")),
        (
            dt.timedelta(days=-1, seconds=2, microseconds=3),
            ext(TIMEDELTA, struct.pack(">iII", -1, 2, 3)),
        ),
        (uuid.UUID(int=7), ext(UUID, bytes(15) + b"\x07")),
        (decimal.Decimal("1.10"), ext(DECIMAL, b"1.10")),
        (2**64, ext(BIGINT, b"\x01" + bytes(8))),
        (-(2**63) - 1, ext(BIGINT, b"\xff\x7f" + b"\xff" * 7)),
        ({3}, ext(SET, b"\x91\x03")),
        (frozenset({"a"}), ext(FROZENSET, b"\x91\xa1a")),
        (Opaque("a/b", b"\x00", "z"), ext(OPAQUE, b"\x93\xa3a/b\xc4\x01\x00\xa1z")),
    ],
    ids=repr,
)
def test_the_wire_format_is_stable(value: Any, body: bytes) -> None:
    assert dumps(value) == body
    assert same(loads(body), value)


def test_native_values_are_plain_msgpack() -> None:
    value = {"a": [1, -1.5, None, True, "x", b"y"], 1: {"$type": "map"}}
    assert dumps(value) == msgpack.packb(value)


def test_a_msgpack_timestamp_from_another_writer_reads_as_an_aware_utc_datetime() -> None:
    body = msgpack.packb(msgpack.Timestamp(seconds=1_700_000_000, nanoseconds=5_000))
    assert same(loads(body), dt.datetime(2023, 11, 14, 22, 13, 20, 5, tzinfo=dt.UTC))


# -- untrusted bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (ext(99, b"x"), "malformed value: unknown msgpack extension type 99"),
        (ext(0, b""), "unknown msgpack extension type 0"),
        (ext(UUID, bytes(15)), "malformed uuid value: bytes is not a 16-char string"),
        (ext(TIMEDELTA, bytes(11)), "malformed timedelta value: unpack requires a buffer of 12"),
        (ext(TIMEDELTA, struct.pack(">iII", 0, 86_400, 0)), "out of range"),
        (ext(TIMEDELTA, struct.pack(">iII", 0, 0, 10**6)), "out of range"),
        (ext(TIMEDELTA, struct.pack(">iII", 10**9, 0, 0)), "days=1000000000; must have"),
        (ext(DATETIME, b"yesterday"), "Invalid isoformat"),
        (ext(DATETIME, "2024-01-02T03:04:05+01:00".encode("utf-16")), "ascii"),
        (ext(DATE, b"2024-02-30"), "day is out of range"),
        (ext(TIME, b"25:00"), "hour must be in"),
        (ext(DECIMAL, b"1.1.1"), "malformed decimal value: .*ConversionSyntax"),
        (ext(DECIMAL, "١٢".encode()), "ascii"),  # digits Decimal() would accept in text
        (ext(BIGINT, b""), "empty integer"),
        (ext(SET, b"\x05"), "not an array"),
        (ext(SET, b"\x91\x80"), "malformed set value: unhashable type"),  # a dict in a set
        (ext(SET, b"\x92"), "malformed set value: 2 exceeds max_array_len\\(1\\)"),
        (ext(OPAQUE, b"\x92\xa1a\xc4\x00"), "not \\[content type, data, codecs\\]"),
        (ext(OPAQUE, b"\x93\xa1a\xa1b\xa1c"), "not \\[str, bin, str\\]"),
        (ext(OPAQUE, b"\x93\xa1a" + ext(UUID, bytes(16)) + b"\xa1c"), "where none belongs"),
        (b"\xdd\x7f\xff\xff\xff\xc0", "exceeds max_array_len"),  # 2**31 items claimed
        (b"\xdb\x7f\xff\xff\xff", "incomplete input"),  # text: checked against the body
        (b"\xc9\x7f\xff\xff\xff\x05", "incomplete input"),
        (b"\x91" * 5000 + b"\xc0", "nested deeper than msgpack's unpacker allows"),
        (b"\xc1", "not msgpack"),
        (b"\xa2\xff\xfe", "utf-8"),
        (b"\x90\x90", "extra data"),  # trailing bytes
        (b"\x81\x80\x01", "malformed map key: unhashable type: 'dict'"),
        (b"\xd5\xff\x00\x00", "(?i)timestamp"),
    ],
)
def test_a_malformed_body_raises(body: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        loads(body)


def test_sets_nested_too_deep_are_refused_when_read() -> None:
    inner, value = ext(FROZENSET, b"\x90"), frozenset[Any]()
    for _ in range(MAX_NESTING - 1):
        inner, value = ext(FROZENSET, b"\x91" + inner), frozenset({value})
    assert same(loads(inner), value)
    inner = ext(FROZENSET, b"\x91" + inner)
    with pytest.raises(ValueError, match=f"nested more than {MAX_NESTING} deep"):
        loads(inner)


def test_a_malformed_body_is_a_decode_error_naming_the_problem(codec: Codec) -> None:
    good = codec.encode(Task.new("t", {"args": [uuid.uuid4()]}))
    bad = good.replace(b"\xd8\x05", b"\xd8\x63")  # the UUID's extension code made 99
    with pytest.raises(
        DecodeError, match="malformed message: ValueError: malformed value: unknown msgpack"
    ):
        codec.decode(bad)
    not_a_task = b"application/msgpack\n" + msgpack.packb({"name": 5})
    with pytest.raises(DecodeError, match="malformed message: name"):
        codec.decode(not_a_task)


def test_an_unencodable_payload_is_a_payload_error_naming_its_type(codec: Codec) -> None:
    class Mystery:
        pass

    with pytest.raises(PayloadError, match=r"as application/msgpack: .*Mystery"):
        codec.encode(Task.new("t", {"args": [Mystery()]}))
