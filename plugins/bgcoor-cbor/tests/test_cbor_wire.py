"""The wire format, pinned byte for byte (it is a contract: the README's table), what the
decoder accepts from other producers, and everything it refuses in untrusted bodies."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import cbor2
import pytest
from bgcoor_cbor import CborSerializer, _tags

from bgcoor_core import Codec, DecodeError, Task
from bgcoor_core.kit import Opaque

D = decimal.Decimal
OID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def tag(number: int, content: Any) -> bytes:
    """A tag of ours (4-byte number) around ``content`` as cbor2 writes plain data."""
    return b"\xda" + number.to_bytes(4, "big") + cbor2.dumps(content)


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        # standard tags
        (
            dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=-3.5))),
            b"\xc0" + cbor2.dumps("2024-01-02T03:04:05-03:30"),
        ),
        (
            dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
            b"\xc0" + cbor2.dumps("2024-01-02T03:04:05.000006+00:00"),
        ),
        (dt.date(2024, 1, 2), bytes.fromhex("d903ec") + cbor2.dumps("2024-01-02")),
        (OID, bytes.fromhex("d82550") + OID.bytes),
        (D("1.10"), bytes.fromhex("c48221186e")),  # 4([-2, 110])
        (D("1E+3"), bytes.fromhex("c4820301")),  # 4([3, 1])
        (D("-0.5"), bytes.fromhex("c4822024")),  # 4([-1, -5])
        (2**64, bytes.fromhex("c249010000000000000000")),  # 2(h'010000000000000000')
        (-(2**64) - 1, bytes.fromhex("c349010000000000000000")),
        (2**64 - 1, bytes.fromhex("1bffffffffffffffff")),  # still a plain integer
        ({7}, bytes.fromhex("d9010281") + b"\x07"),  # 258([7])
        (float("inf"), bytes.fromhex("f97c00")),
        (b"\x00", bytes.fromhex("4100")),
        ({(1, 2): None}, bytes.fromhex("a1820102f6")),
        # ours
        (dt.datetime(2024, 1, 2, 3, 4, 5), tag(_tags.PY_DATETIME, "2024-01-02T03:04:05")),
        (
            dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(seconds=-30))),
            tag(_tags.PY_DATETIME, ["2024-01-02T00:00:00", -30_000_000]),
        ),
        (dt.time(1, 2, 3, 4), tag(_tags.TIME, "01:02:03.000004")),
        (
            dt.time(1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            tag(_tags.TIME, ["01:02:00", 7_200_000_000]),
        ),
        (dt.timedelta(days=-3, seconds=5, microseconds=7), bytes.fromhex("da6267000383220507")),
        (frozenset({7}), tag(_tags.FROZENSET, [7])),
        (D("-0"), tag(_tags.DECIMAL_TEXT, "-0")),
        (D("-0E-3"), tag(_tags.DECIMAL_TEXT, "-0.000")),
        (D("Infinity"), tag(_tags.DECIMAL_TEXT, "Infinity")),
        (D("-sNaN7"), tag(_tags.DECIMAL_TEXT, "-sNaN7")),
        (Opaque("a/b", b"\x01", "zstd"), tag(_tags.OPAQUE, ["a/b", b"\x01", "zstd"])),
    ],
    ids=repr,
)
def test_each_value_has_one_fixed_encoding(value: Any, wire: bytes) -> None:
    cbor = CborSerializer()
    assert cbor.dumps(value) == wire
    back = cbor.loads(wire)
    assert type(back) is type(value)
    if isinstance(value, D):
        assert back.as_tuple() == value.as_tuple()  # a NaN equals nothing
    else:
        assert back == value


def test_our_tags_are_one_block_of_distinct_numbers() -> None:
    ours = [_tags.PY_DATETIME, _tags.TIME, _tags.TIMEDELTA, _tags.FROZENSET]
    ours += [_tags.DECIMAL_TEXT, _tags.OPAQUE]
    assert ours == [0x6267_0000 + n for n in range(1, 7)]


UTC_MOMENT = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("wire", "value"),
    [
        (cbor2.dumps(cbor2.CBORTag(0, "2024-01-02T03:04:05Z")), UTC_MOMENT),
        (cbor2.dumps(cbor2.CBORTag(1, 1704164645)), UTC_MOMENT),
        (
            cbor2.dumps(cbor2.CBORTag(1, 1704164645.5)),
            dt.datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=dt.UTC),
        ),
        (cbor2.dumps(cbor2.CBORTag(100, 19724)), dt.date(2024, 1, 2)),
        (cbor2.dumps(cbor2.CBORTag(4, [-2, cbor2.CBORTag(2, b"\x01\x00")])), D("2.56")),
        (cbor2.dumps(cbor2.CBORTag(258, [[1, [2]], "a"])), {(1, (2,)), "a"}),
        (bytes.fromhex("fa3fc00000"), 1.5),  # single precision
    ],
    ids=repr,
)
def test_standard_forms_other_producers_write_are_read(wire: bytes, value: Any) -> None:
    back = CborSerializer().loads(wire)
    assert back == value
    assert type(back) is type(value)
    if isinstance(value, dt.datetime):
        assert back.utcoffset() == value.utcoffset()


#: Every tag number the decoder reads; any other is refused.
READ = {0, 1, 2, 3, 4, 37, 100, 258, 1004, *range(0x6267_0001, 0x6267_0007)}


def test_no_other_tag_number_is_read() -> None:
    cbor = CborSerializer()
    numbers = [*range(70_000), *range(0x6267_0000, 0x6267_0100), 2**32 - 1, 2**64 - 1]
    for number in numbers:
        wire = cbor2.dumps(cbor2.CBORTag(number, None))
        if number in READ:
            continue
        with pytest.raises(ValueError, match=f"CBOR tag {number} is not part of this format"):
            cbor.loads(wire)


def body(payload_wire: bytes) -> bytes:
    """A message whose payload is ``payload_wire`` (the rest a valid task)."""
    head = cbor2.dumps({"name": "t", "id": "i1"})
    return b"application/cbor\n" + bytes([head[0] + 1]) + head[1:] + b"\x67payload" + payload_wire


def test_a_body_built_by_hand_is_a_task(codec: Codec) -> None:
    task = codec.decode(body(cbor2.dumps([1, "x"])))
    assert (task.name, task.id, task.payload) == ("t", "i1", [1, "x"])


SIMPLE_VALUES = ["e0", "f3", "f7", "f820", "f8ff"]  # simple(0), simple(19), undefined, simple(32..)

REFUSED = {
    **{
        f"tag {n}": cbor2.dumps(cbor2.CBORTag(n, content))
        for n, content in [
            (5, [1, 3]),  # bigfloat: 2**exponent
            (25, 0),  # string reference
            (256, ["a"]),  # string namespace
            (28, [1]),  # shareable
            (29, 0),  # shared reference (cycles)
            (30, [1, 3]),  # Fraction
            (35, "a+"),  # compiled regular expression
            (36, "Content-Type: text/plain\n\nhi"),  # MIME message
            (52, b"\x7f\x00\x00\x01"),
            (54, b"\x00" * 16),
            (260, b"\x7f\x00\x00\x01"),
            (261, {b"\x7f\x00\x00\x00": 8}),
            (43000, [1.0, 2.0]),  # complex
            (55799, 1),  # self-described: refused rather than unwrapped
            (12345, 1),
            (0x6267_0000, 1),  # our block, unassigned numbers
            (0x6267_0007, 1),
        ]
    },
    **{f"simple {h}": bytes.fromhex("81" + h) for h in SIMPLE_VALUES},
    "simple value as a key": bytes.fromhex("a1f701"),
    "simple value in a set": bytes.fromhex("d9010281e0"),
    "simple value deep down": bytes.fromhex("81a161618182f4f7"),
    "a map as a key": bytes.fromhex("a1a1010203"),
    "a map in a set": bytes.fromhex("d9010281a10102"),
    "a map in a frozenset": tag(_tags.FROZENSET, [{1: 2}]),
    "indefinite array": bytes.fromhex("9f01ff"),
    "indefinite text": bytes.fromhex("7f6161ff"),
    "indefinite bytes": bytes.fromhex("5f4161ff"),
    "indefinite map": bytes.fromhex("bf0102ff"),
    "duplicate keys": bytes.fromhex("a201010102"),
    "trailing bytes": cbor2.dumps([1]) + b"\x00",
    "nesting past the limit": b"\x81" * 200 + b"\x80",  # in the task map: 201 deep
    "invalid UTF-8": bytes.fromhex("8162fffe"),
    "truncated": bytes.fromhex("83010203")[:-1],
    "a break outside anything": b"\xff",
    "a huge array": bytes.fromhex("9b7fffffffffffffff01"),
    "huge bytes": bytes.fromhex("5b7fffffffffffffff01"),
    "huge text": bytes.fromhex("7b7fffffffffffffff61"),
    "a huge map": bytes.fromhex("bb7fffffffffffffff0102"),
    "bignum of text": cbor2.dumps(cbor2.CBORTag(2, "12")),
    "uuid of 3 bytes": cbor2.dumps(cbor2.CBORTag(37, b"abc")),
    "decimal fraction of text": cbor2.dumps(cbor2.CBORTag(4, "1.5")),
    "tag 0 without offset": cbor2.dumps(cbor2.CBORTag(0, "2024-01-02T03:04:05")),
    "tag 0 not text": cbor2.dumps(cbor2.CBORTag(0, 1704164645)),
    "tag 0 garbage": cbor2.dumps(cbor2.CBORTag(0, "yesterday")),
    "naive datetime with an offset": tag(_tags.PY_DATETIME, "2024-01-02T03:04:05+01:00"),
    "datetime offset not int": tag(_tags.PY_DATETIME, ["2024-01-02T03:04:05", "60"]),
    "datetime offset of a day": tag(_tags.PY_DATETIME, ["2024-01-02T03:04:05", 86_400_000_000]),
    "datetime of three parts": tag(_tags.PY_DATETIME, ["2024-01-02T03:04:05", 0, 0]),
    "time with an offset": tag(_tags.TIME, "01:02:03+01:00"),
    "time not text": tag(_tags.TIME, 3600),
    "timedelta of two": tag(_tags.TIMEDELTA, [1, 2]),
    "timedelta of text": tag(_tags.TIMEDELTA, [1, 2, "3"]),
    "timedelta of bools": tag(_tags.TIMEDELTA, [True, 0, 0]),
    "timedelta too long": tag(_tags.TIMEDELTA, [10**9, 0, 0]),
    "frozenset of text": tag(_tags.FROZENSET, "abc"),
    "set of text": cbor2.dumps(cbor2.CBORTag(258, "abc")),
    "decimal text not text": tag(_tags.DECIMAL_TEXT, 5),
    "decimal text garbage": tag(_tags.DECIMAL_TEXT, "1.2.3"),
    "opaque of two": tag(_tags.OPAQUE, ["a/b", b""]),
    "opaque data as text": tag(_tags.OPAQUE, ["a/b", "data", ""]),
    "opaque codecs not text": tag(_tags.OPAQUE, ["a/b", b"", 1]),
}


@pytest.mark.parametrize("wire", REFUSED.values(), ids=REFUSED.keys())
def test_an_untrusted_payload_is_refused(codec: Codec, wire: bytes) -> None:
    with pytest.raises(DecodeError, match="malformed message"):
        codec.decode(body(wire))


def test_nesting_up_to_the_limit_is_read(codec: Codec) -> None:
    # The task map and 199 arrays of one item are 200 containers open at once.
    task = codec.decode(body(b"\x81" * 199 + b"\x80"))
    depth, value = 0, task.payload
    while value:
        depth, value = depth + 1, value[0]
    assert depth == 199


def test_a_body_that_is_not_a_map_is_refused(codec: Codec) -> None:
    for wire in (cbor2.dumps([1, 2]), cbor2.dumps("t"), b""):
        with pytest.raises(DecodeError, match="malformed message"):
            codec.decode(b"application/cbor\n" + wire)


def test_a_payload_with_a_simple_value_byte_inside_other_data_is_read(codec: Codec) -> None:
    """The walk for simple values runs when such a byte appears anywhere (in a UUID,
    bytes, a float): it finds none and the value is kept."""
    value = [b"\xf7\xe0\xf8", uuid.UUID(bytes=b"\xf7" * 16), "\u00f7", 2**64 + 0xF7]
    task = codec.decode(codec.encode(Task.new("t", value)))
    assert task.payload == value
