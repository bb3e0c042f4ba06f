"""The values tasks carry: the tagged JSON form, the built-in formats' contract, and
rich arguments and results end to end (issue 15)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from pydantic import ValidationError

from bgcoor_core import Task, TaskStatus
from bgcoor_core._values import TYPE, VALUE, Opaque, UnrepresentableError, pack, unpack
from bgcoor_core.serializers import JsonSerializer, PickleSerializer
from bgcoor_core.testing.values import SerializerContract, rich_values, same


class TestJson(SerializerContract):
    @pytest.fixture
    def serializer(self) -> JsonSerializer:
        return JsonSerializer()


class TestPickle(SerializerContract):
    @pytest.fixture
    def serializer(self) -> PickleSerializer:
        return PickleSerializer()


@settings(max_examples=300, deadline=None)
@given(value=rich_values())
def test_pack_then_unpack_is_the_identity(value: Any) -> None:
    assert same(unpack(pack(value)), value)


@settings(max_examples=100, deadline=None)
@given(value=rich_values())
def test_a_record_keeps_rich_values_through_its_json(value: Any) -> None:
    task = Task.new("t", {"args": [value], "kwargs": {}})
    task.result = value
    back = Task.model_validate_json(task.model_dump_json())
    assert same(back.payload, task.payload)
    assert same(back.result, value)


def test_unpacking_leaves_the_data_read_unchanged() -> None:
    data = {"args": [{TYPE: "uuid", VALUE: "31abdb25-9e3e-4330-9675-563e708ca831"}, [1]]}
    before = repr(data)
    back = unpack(data)
    assert back["args"][0] == uuid.UUID("31abdb25-9e3e-4330-9675-563e708ca831")
    assert repr(data) == before  # copied where a tag was read, never changed in place
    assert back["args"][1] is data["args"][1]  # what holds no tag is shared, not copied
    plain = {"args": [1, "a", {"k": [2]}], "kwargs": {}}
    assert unpack(plain) is plain


def test_a_task_read_from_json_is_written_back_without_packing_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker writes the record of a task it read (running, then its outcome): the
    payload's tags are the data it was read from, not packed anew."""
    payload = {"args": [dt.date(2024, 1, 2), decimal.Decimal("1.50")], "kwargs": {}}
    body = Task.new("t", payload).model_dump_json()
    loaded = Task.model_validate_json(body)
    assert loaded.payload == payload

    def refuse(value: Any) -> Any:
        raise AssertionError("packed again")

    monkeypatch.setattr("bgcoor_core._values.pack", refuse)
    running = loaded.model_copy(update={"status": TaskStatus.RUNNING})
    assert Task.model_validate_json(running.model_dump_json()).payload == payload
    # a payload replaced is packed anew (here: refused, as pack is patched)
    running.payload = {"args": [dt.date(2025, 1, 1)], "kwargs": {}}
    with pytest.raises(Exception, match="packed again"):
        running.model_dump_json()


def test_tags_are_readable_json() -> None:
    when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert pack([b"\x00\xff", when, {1: "a"}]) == [
        {TYPE: "bytes", VALUE: "AP8="},
        {TYPE: "datetime", VALUE: "2024-01-02T03:04:05+00:00"},
        {TYPE: "map", VALUE: [[1, "a"]]},
    ]
    # A user's dict that looks like a tag is wrapped, so it never becomes one.
    assert unpack(pack({TYPE: "bytes", VALUE: "AP8="})) == {TYPE: "bytes", VALUE: "AP8="}


def test_plain_values_are_left_as_they_are() -> None:
    plain = {"a": [1, 2.5, "x", None, True], "b": {"c": []}}
    assert pack(plain) == plain
    assert pack(plain) is not plain  # a copy: the caller's value is never changed


@pytest.mark.parametrize(
    "bad",
    [
        {TYPE: "nonsense", VALUE: 1},
        {TYPE: "bytes", VALUE: "not base64!"},
        {TYPE: "datetime", VALUE: "yesterday"},
        {TYPE: "timedelta", VALUE: [1]},
        {TYPE: "float", VALUE: "1.5"},  # a finite float is never tagged
        {TYPE: "uuid", VALUE: "x", "extra": 1},
    ],
)
def test_a_bad_tag_is_a_malformed_record(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="malformed"):
        unpack(dict(bad))
    body = Task.new("t", {"ok": 1}).model_dump_json().replace('{"ok":1}', _json(bad))
    with pytest.raises(ValidationError, match="malformed"):
        Task.model_validate_json(body)


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def test_an_object_no_tag_describes_is_refused_by_its_type() -> None:
    class Mystery:
        pass

    with pytest.raises(UnrepresentableError, match=r"test_values\..*Mystery"):
        pack({"x": [Mystery()]})


def test_an_opaque_value_survives_a_record_unopened() -> None:
    sealed = Opaque("application/x-python-pickle", b"\x80\x05K\x01.")
    task = Task.new("t", sealed)
    back = Task.model_validate_json(task.model_dump_json())
    assert back.payload == sealed
    assert repr(back.payload) == "<application/x-python-pickle value, 5 bytes>"


def test_rich_leaves_keep_their_exact_kind() -> None:
    values = [
        dt.datetime(2024, 1, 2, 3, 4, 5, 6),  # naive stays naive
        dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.date(2024, 1, 2),
        dt.time(3, 4, 5, 6, tzinfo=dt.UTC),
        # Offsets ISO text cannot hold (fromisoformat would read them as UTC).
        dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(microseconds=1))),
        dt.time(1, 2, tzinfo=dt.timezone(-dt.timedelta(seconds=30))),
        dt.timedelta(days=-1, microseconds=5),
        uuid.UUID(int=7),
        decimal.Decimal("1.10"),
        decimal.Decimal("-Infinity"),
        frozenset({1, "a"}),
        {(1, 2): "tuple key"},
        float("-inf"),
        2**100,
    ]
    for value in values:
        back = unpack(pack(value))
        assert same(back, value), value


class Widget:
    """A class of its own: pydantic has no schema for it."""

    def __init__(self, size: int) -> None:
        self.size = size


async def test_a_parameter_of_a_class_of_its_own_is_checked_by_isinstance() -> None:
    from typing import NoReturn

    from bgcoor_core import PayloadError, TaskManager

    for serializer in ("json", "pickle"):
        manager = TaskManager(
            broker_url="memory://", storage_url="memory://", serializer=serializer
        )

        @manager.task(name="grow")
        def grow(widget: Widget) -> Widget:
            return Widget(widget.size + 1)

        @manager.task(name="never")
        def never() -> NoReturn:  # registers: no result to decode
            raise ValueError("no")

        try:
            with pytest.raises(PayloadError, match="argument 'widget'"):
                await grow.enqueue(3)  # type: ignore[arg-type]  # not a Widget
            if serializer == "json":
                with pytest.raises(PayloadError, match=r"test_values\.Widget has no repr"):
                    await grow.enqueue(Widget(1))
                continue
            handle = await grow.enqueue(Widget(1))
            await manager.drain()
            assert (await handle.result(timeout=5)).size == 2
        finally:
            await manager.close()
