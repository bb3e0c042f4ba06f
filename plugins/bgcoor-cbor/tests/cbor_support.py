"""Shared by the CBOR plugin's tests (a module of its own: ``conftest`` is not importable
by name when several test directories have one): fast settings, and a task whose
annotated rich arguments must arrive as their types through any backend."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from typing import Any

from bgcoor_core import TaskManager, TaskStatus
from bgcoor_core.testing.values import Colour, Order, Point

D = decimal.Decimal

#: Settings that keep worker tests fast.
FAST: dict[str, Any] = {
    "lease_seconds": 5.0,
    "retry_backoff": 0.01,
    "retry_backoff_max": 0.05,
    "poll_seconds": 0.05,
    "shutdown_grace": 2.0,
}


@dataclasses.dataclass
class Seen:
    """What the task received, as the handler saw it."""

    values: dict[str, Any] = dataclasses.field(default_factory=dict)


def register_typed(manager: TaskManager, seen: Seen) -> Any:
    @manager.task(name="cbor.typed")
    def typed(
        order: Order,
        colour: Colour,
        point: Point,
        span: dt.timedelta,
        tags: frozenset[str],
        day: dt.date,
        at: dt.time,
        when: dt.datetime,
        amount: D,
        big: int,
        blob: bytes,
        ident: uuid.UUID,
    ) -> Order:
        seen.values.update(locals())
        return order.model_copy(update={"total": order.total + amount})

    return typed


ORDER = Order(
    id=uuid.UUID(int=7),
    total=D("9.50"),
    placed=dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    lines=[b"\x00\xff"],
)
ARGS: dict[str, Any] = {
    "order": ORDER,
    "colour": Colour.RED,
    "point": Point(3, dt.date(2024, 1, 2)),
    "span": dt.timedelta(days=-1, microseconds=5),
    "tags": frozenset({"a", "b"}),
    "day": dt.date(2024, 2, 29),
    "at": dt.time(23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(minutes=-90))),
    "when": dt.datetime(2024, 1, 2, 3, 4, 5, 6),  # naive
    "amount": D("0.010"),
    "big": -(2**100),
    "blob": b"\xf7\x00",
    "ident": uuid.UUID(int=2**128 - 1),
}


async def check_typed_round_trip(manager: TaskManager) -> None:
    """Enqueue the typed task with ``ARGS``, run it, and check every argument arrived as
    its annotated type and value, and the result as the annotated return type."""
    seen = Seen()
    typed = register_typed(manager, seen)
    handle = await typed.enqueue(**ARGS)
    assert await manager.drain(raise_errors=True) == 1
    for name, value in ARGS.items():
        assert type(seen.values[name]) is type(value), name
        assert seen.values[name] == value, name
    assert seen.values["when"].tzinfo is None
    assert seen.values["at"].utcoffset() == dt.timedelta(minutes=-90)
    assert seen.values["amount"].as_tuple() == D("0.010").as_tuple()
    result = await handle.result(timeout=10)
    assert result == ORDER.model_copy(update={"total": D("9.510")})
    assert (await handle.info()).status is TaskStatus.SUCCEEDED
