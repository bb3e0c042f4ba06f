"""A task taking every rich kind of argument, annotated and not, for the end-to-end tests."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from typing import Any

from pydantic import BaseModel

from bgcoor_core import TaskFunction, TaskManager


class Colour(enum.Enum):
    RED = "red"


class Order(BaseModel):
    id: uuid.UUID
    total: decimal.Decimal
    placed: dt.datetime


AWARE = dt.datetime(2024, 3, 4, 5, 6, 7, 890123, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
ORDER = Order(id=uuid.UUID(int=42), total=decimal.Decimal("19.90"), placed=AWARE)

#: Passed to an unannotated parameter: each must arrive exactly as it is (same types).
LOOSE: dict[Any, Any] = {
    "naive": dt.datetime(2024, 3, 4, 5, 6, 7),
    "aware": AWARE,
    "time": dt.time(23, 59, 1, 5, tzinfo=dt.UTC),
    "span": dt.timedelta(days=-2, seconds=5, microseconds=7),
    "decimals": [decimal.Decimal("1.10"), decimal.Decimal("-0"), decimal.Decimal("Infinity")],
    "big": -(2**90),
    "sets": [{1, 2}, frozenset({"a"})],
    "floats": [float("inf"), -0.0],
    "$type": {"value": b"\x00\xff"},
    (1, "one"): "a tuple key",
}


def register_rich(manager: TaskManager, seen: list[dict[str, Any]]) -> TaskFunction[..., Any]:
    """A task that records what it received in ``seen`` and returns rich values."""

    @manager.task(name="rich")
    def rich(
        at: dt.datetime,
        day: dt.date,
        key: uuid.UUID,
        amount: decimal.Decimal,
        span: dt.timedelta,
        blob: bytes,
        tags: frozenset[str],
        grid: dict[tuple[int, int], str],
        order: Order,
        colour: Colour,
        loose: Any,
    ) -> tuple[dt.datetime, decimal.Decimal, Order]:
        seen.append(
            {
                "at": at,
                "day": day,
                "key": key,
                "amount": amount,
                "span": span,
                "blob": blob,
                "tags": tags,
                "grid": grid,
                "order": order,
                "colour": colour,
                "loose": loose,
            }
        )
        return at + span, amount * 2, order

    return rich


ARGS: tuple[Any, ...] = (
    AWARE,
    dt.date(2024, 2, 29),
    uuid.UUID(int=7),
    decimal.Decimal("3.140"),
    dt.timedelta(hours=1, microseconds=1),
    b"\x00\x01\xfe",
    frozenset({"x", "y"}),
    {(0, 1): "a", (2, 3): "b"},
    ORDER,
    Colour.RED,
    LOOSE,
)


async def round_trip(manager: TaskManager) -> None:
    """Enqueue the rich task with ``ARGS`` through ``manager`` (serializer msgpack), run
    it, and check what the handler received and what the caller gets back."""
    from bgcoor_core.testing.values import same

    seen: list[dict[str, Any]] = []
    rich = register_rich(manager, seen)
    assert manager.broker.codec.content_type == "application/msgpack"
    handle = await rich.enqueue(*ARGS)
    assert await manager.drain(raise_errors=True) == 1
    [got] = seen
    assert same(got["at"], AWARE)
    assert same(got["day"], dt.date(2024, 2, 29))
    assert same(got["key"], uuid.UUID(int=7))
    assert same(got["amount"], decimal.Decimal("3.140"))
    assert same(got["span"], dt.timedelta(hours=1, microseconds=1))
    assert same(got["blob"], b"\x00\x01\xfe")
    assert same(got["tags"], frozenset({"x", "y"}))
    assert same(got["grid"], {(0, 1): "a", (2, 3): "b"})
    assert type(got["order"]) is Order
    assert got["order"] == ORDER
    assert same(got["order"].placed, AWARE)
    assert got["colour"] is Colour.RED
    assert same(got["loose"], LOOSE), got["loose"]
    at, amount, order = await handle.result(timeout=5)
    assert same(at, AWARE + dt.timedelta(hours=1, microseconds=1))
    assert same(amount, decimal.Decimal("6.280"))
    assert order == ORDER
