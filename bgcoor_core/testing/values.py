"""Hypothesis strategies for the values tasks carry, and the serializer contract.

``rich_values()`` draws what :mod:`bgcoor_core._values` promises every format carries
losslessly without type hints: ``datetime`` (aware and naive), ``date``, ``time``,
``timedelta``, ``UUID``, ``Decimal`` (NaN aside: it equals nothing), ``bytes``, ``set``,
``frozenset``, non-finite floats and dicts with non-text keys, nested in lists and dicts.
A serializer plugin passes :class:`SerializerContract` by providing a ``serializer``
fixture; the contract round-trips a task holding such values through ``Codec``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import math
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from .._codec import Codec, Serializer
from .._task import Task

#: Fixed offsets, whole minutes or not (a ZoneInfo zone is carried as its UTC offset).
_ZONES = st.one_of(
    st.none(),
    st.just(dt.UTC),
    st.integers(min_value=-14 * 60, max_value=14 * 60).map(
        lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
    ),
    st.integers(min_value=-86_399_999_999, max_value=86_399_999_999).map(
        lambda micros: dt.timezone(dt.timedelta(microseconds=micros))
    ),
)


def _decimals() -> st.SearchStrategy[decimal.Decimal]:
    return st.one_of(
        st.decimals(allow_nan=False, allow_infinity=True, places=None),
        st.sampled_from(["1.10", "-0", "1E+3", "0.000001"]).map(decimal.Decimal),
    )


def rich_leaves() -> st.SearchStrategy[Any]:
    """One rich value of any kind the value table lists as lossless unannotated."""
    hashable = st.one_of(
        st.integers(), st.text(max_size=8), st.uuids(), st.dates(), st.binary(max_size=8)
    )
    return st.one_of(
        st.datetimes(timezones=_ZONES),
        st.dates(),
        st.times(timezones=_ZONES),
        st.timedeltas(),
        st.uuids(),
        _decimals(),
        st.binary(max_size=64),
        st.sets(hashable, max_size=4),
        st.frozensets(hashable, max_size=4),
        st.sampled_from([math.inf, -math.inf]),
        st.dictionaries(st.integers(), st.text(max_size=8), max_size=3),
    )


def rich_values() -> st.SearchStrategy[Any]:
    """Rich leaves and plain JSON values, nested in lists and text-keyed dicts (a key
    ``"$type"`` included: a user's dict is never taken for a tag)."""
    plain = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),  # any size: past 64 bits too
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=16),
    )
    keys = st.one_of(st.text(max_size=8), st.just("$type"), st.just("value"))
    return st.recursive(
        st.one_of(plain, rich_leaves()),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)
        ),
        max_leaves=12,
    )


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (``1 == 1.0 == True`` is not
    enough; an aware and a naive datetime must not be confused, nor ``-0`` and ``0``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dt.datetime | dt.time):
        return bool(a == b and a.utcoffset() == b.utcoffset())
    if isinstance(a, decimal.Decimal):
        return bool(a.as_tuple() == b.as_tuple())  # "1.10" stays "1.10", "-0" stays "-0"
    if isinstance(a, float) and math.isnan(a):
        return bool(math.isnan(b))
    return bool(a == b)


# Sample types for tests of rich arguments (the contract below, and formats' own tests).
class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Point:
    x: int
    at: dt.date


class Order(BaseModel):
    id: uuid.UUID
    total: decimal.Decimal
    placed: dt.datetime
    lines: list[bytes]


PLACED = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


class SerializerContract:
    """Round-trips through a :class:`Codec` using the ``serializer`` fixture."""

    @pytest.fixture
    def serializer(self) -> Serializer:
        raise NotImplementedError("provide a serializer fixture")

    @pytest.fixture
    def codec(self, serializer: Serializer) -> Codec:
        return Codec({serializer.content_type: serializer}, content_type=serializer.content_type)

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(value=rich_values())
    def test_payload_and_result_round_trip(self, codec: Codec, value: Any) -> None:
        task = Task.new("rich", {"args": [value], "kwargs": {"v": value}})
        task.result = value
        back = codec.decode(codec.encode(task))
        assert same(back.payload, task.payload), (back.payload, task.payload)
        assert same(back.result, value)

    def test_the_envelope_round_trips(self, codec: Codec) -> None:
        eta = dt.datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
        task = Task.new("t", None, 2, queue="q", priority=3, eta=eta, headers={"k": "v"})
        back = codec.decode(codec.encode(task))
        assert back == task
        assert back.eta == eta
        assert back.created_at.tzinfo is not None

    def test_a_field_from_a_newer_version_rides_along(self, codec: Codec) -> None:
        task = Task.model_validate({"name": "t", "added_later": [1, "x"]})
        back = codec.decode(codec.encode(task))
        assert back.model_extra == {"added_later": [1, "x"]}

    def test_enums_dataclasses_and_models_travel_as_their_values(self, codec: Codec) -> None:
        oid = uuid.uuid4()
        payload = [
            Colour.RED,
            Point(1, dt.date(2024, 1, 2)),
            Order(id=oid, total=decimal.Decimal("9.50"), placed=PLACED, lines=[b"\xff"]),
        ]
        back = codec.decode(codec.encode(Task.new("t", payload))).payload
        if getattr(codec.serializer, "carries_objects", False):
            assert back == payload  # pickle: the objects themselves
            return
        assert same(back[0], "red")
        assert same(back[1], {"x": 1, "at": dt.date(2024, 1, 2)})
        wanted = {"id": oid, "total": decimal.Decimal("9.50"), "placed": PLACED, "lines": [b"\xff"]}
        assert same(back[2], wanted)

    def test_an_object_it_cannot_carry_is_refused_by_name(self, codec: Codec) -> None:
        class Mystery:
            pass

        if getattr(codec.serializer, "carries_objects", False):
            pytest.skip("this format carries any object")
        from .._errors import PayloadError

        with pytest.raises(PayloadError, match="Mystery"):
            codec.encode(Task.new("t", {"args": [Mystery()], "kwargs": {}}))

    def test_a_corrupt_body_is_a_decode_error(self, codec: Codec) -> None:
        from .._errors import DecodeError

        body = codec.encode(Task.new("t", {"args": [b"\x00" * 40], "kwargs": {}}))
        head, _, rest = body.partition(b"\n")
        for damaged in (rest[: len(rest) // 2], rest[::-1], b"\xff" * 9):
            with pytest.raises(DecodeError):
                codec.decode(head + b"\n" + damaged)
