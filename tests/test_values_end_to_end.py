"""Issue 15: rich arguments and results round-trip through every installed format on every
backend, with a worker running the tasks: type hints rebuild the declared types, and
unannotated values come back as the value table says (``docs/serialization.md``).

The formats and backends are whatever plugins are installed (like ``test_conformance``):
the msgpack and CBOR plugins are covered here once installed, on every backend.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from bgcoor_core import TaskManager, TaskStatus, build_plugin_host
from bgcoor_core.testing.values import Colour, Order, Point, rich_values, same

HOST = build_plugin_host()
SCHEMES = sorted(s for s, e in HOST.brokers.entries.items() if e.test_url is not None)
FORMATS = sorted(getattr(s, "name", ct) for ct, s in HOST.serializers.serializers.items())
FAST: dict[str, Any] = {"lease_seconds": 5.0, "poll_seconds": 0.05, "retry_backoff": 0.01}


class Receipt(BaseModel):
    order: Order
    colour: Colour
    point: Point
    span: dt.timedelta
    tags: frozenset[str]


@pytest.fixture(params=SCHEMES, ids=str)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    entry = HOST.brokers.entries[request.param]
    assert entry.test_url is not None
    return entry.test_url(tmp_path)


@pytest.fixture(params=FORMATS, ids=str)
def serializer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def manager(url: str, serializer: str) -> AsyncIterator[TaskManager]:
    manager = TaskManager(broker_url=url, storage_url=url, serializer=serializer, **FAST)
    yield manager
    await manager.close()


def _register(manager: TaskManager) -> tuple[Any, Any]:
    @manager.task(name="values.echo")
    def echo(value):  # type: ignore[no-untyped-def]  # unannotated on purpose
        return value

    @manager.task(name="values.typed")
    def typed(
        order: Order,
        colour: Colour,
        point: Point,
        span: dt.timedelta,
        tags: frozenset[str],
        day: dt.date,
        at: dt.time,
    ) -> Receipt:
        assert isinstance(order, Order)
        assert isinstance(order.lines[0], bytes)
        assert isinstance(colour, Colour)
        assert isinstance(point, Point)
        assert isinstance(span, dt.timedelta)
        assert isinstance(tags, frozenset)
        assert type(day) is dt.date
        assert isinstance(at, dt.time)
        return Receipt(order=order, colour=colour, point=point, span=span, tags=tags)

    return echo, typed


_orders = st.builds(
    Order,
    id=st.uuids(),
    total=st.decimals(allow_nan=False, allow_infinity=False, places=2),
    placed=st.datetimes(timezones=st.just(dt.UTC)),
    lines=st.lists(st.binary(min_size=1, max_size=16), min_size=1, max_size=3),
)
_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@settings(max_examples=3, deadline=None, suppress_health_check=_HEALTH)
@given(values=st.lists(rich_values(), min_size=15, max_size=15))
async def test_unannotated_values_round_trip(manager: TaskManager, values: list[Any]) -> None:
    echo, _ = _register_once(manager)
    handles = await echo.enqueue_many([(v,) for v in values])
    await manager.drain(raise_errors=True)
    for value, handle in zip(values, handles, strict=True):
        assert same(await handle.result(timeout=10), value), value


@settings(max_examples=3, deadline=None, suppress_health_check=_HEALTH)
@given(
    order=_orders,
    colour=st.sampled_from(Colour),
    point=st.builds(Point, x=st.integers(), at=st.dates()),
    span=st.timedeltas(),
    tags=st.frozensets(st.text(max_size=5), max_size=3),
    day=st.dates(),
    at=st.times(),
)
async def test_type_hints_rebuild_arguments_and_results(
    manager: TaskManager,
    order: Order,
    colour: Colour,
    point: Point,
    span: dt.timedelta,
    tags: frozenset[str],
    day: dt.date,
    at: dt.time,
) -> None:
    _, typed = _register_once(manager)
    handle = await typed.enqueue(order, colour, point, span, tags, day, at)
    await manager.drain(raise_errors=True)
    receipt = await handle.result(timeout=10)
    assert isinstance(receipt, Receipt)
    assert receipt == Receipt(order=order, colour=colour, point=point, span=span, tags=tags)
    record = await handle.info()
    assert record.status is TaskStatus.SUCCEEDED


def _register_once(manager: TaskManager) -> tuple[Any, Any]:
    """Hypothesis runs the test body several times with one fixture: register once."""
    found = getattr(manager, "_values_tasks", None)
    if found is None:
        found = _register(manager)
        manager._values_tasks = found  # type: ignore[attr-defined]
    return found


class Gadget:
    """A class of its own: only pickle carries it."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Gadget) and other.parts == self.parts

    __hash__ = None  # type: ignore[assignment]


# Two managers with their own codecs on one backend: memory backends are private to their
# manager (the codec-level refusal is tested in test_plugins.py).
@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s != "memory"])
async def test_pickle_carries_any_object_and_only_when_enabled(scheme: str, tmp_path: Path) -> None:
    entry = HOST.brokers.entries[scheme]
    assert entry.test_url is not None
    url = entry.test_url(tmp_path)
    producer = TaskManager(broker_url=url, storage_url=url, serializer="pickle", **FAST)
    json_worker = TaskManager(broker_url=url, storage_url=url, **FAST)
    try:
        for manager in (producer, json_worker):

            @manager.task(name="values.rebuild")
            def rebuild(gadget):  # type: ignore[no-untyped-def]
                assert isinstance(gadget, Gadget)
                return Gadget([*gadget.parts, b"!"])

        refused = await producer.enqueue("values.rebuild", Gadget([b"a"]))
        # A worker that does not accept pickle dead-letters it unread, naming the type.
        await json_worker.drain()
        record = await json_worker.get(refused.id)
        assert record.status is TaskStatus.DEAD
        assert "application/x-python-pickle" in (record.error or "")
        letters = await json_worker.broker.dead_letters("default")
        assert any("x-python-pickle" in (d.reason or "") for d in letters)
        # The record stays readable there: the sealed value is shown, not loaded.
        assert "x-python-pickle value" in repr(record.payload)

        handle = await producer.enqueue("values.rebuild", Gadget([b"a"]))
        await producer.drain(raise_errors=True)
        assert await handle.result(timeout=10) == Gadget([b"a", b"!"])
        with pytest.raises(Exception, match="x-python-pickle"):
            await json_worker.handle(handle.id).result(timeout=10)
    finally:
        await producer.close()
        await json_worker.close()
