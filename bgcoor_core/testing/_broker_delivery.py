"""Broker contract, part 1: producing, ordering, waiting and inspecting."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from .._broker import Broker, Capability, Message, QueueStats
from .._errors import CapabilityError, DuplicateTaskError, InvalidNameError, PayloadTooLargeError
from ._helpers import (
    ASYNC,
    DEFAULT,
    EARLY,
    LONG_LEASE,
    SLACK,
    Stopwatch,
    background,
    drain,
    make_task,
    require,
    reserve_one,
)

BAD_QUEUE_NAMES = ["a b", "", "x" * 100, "q'; DROP TABLE tasks; --", "-leading-dash", "tab\t"]


def _in(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


class BrokerDeliveryTests:
    pytestmark = [ASYNC]

    async def test_push_reserve_round_trip(self, broker: Broker) -> None:
        task = make_task(
            payload={"args": [1, "two", [3.5, None]], "kwargs": {"ü": True, "n": -7}},
            max_retries=7,
            attempts=2,
            timeout=12.5,
            error="ValueError: an earlier attempt",
        )
        await broker.push(task)
        reservation = await reserve_one(broker)
        assert reservation.task == task
        assert reservation.defect is None
        assert (reservation.deliveries, reservation.lost) == (1, 0)
        assert isinstance(reservation.token, str)
        assert reservation.token
        assert reservation.queue == DEFAULT
        await broker.ack(reservation)

    async def test_push_many(self, broker: Broker) -> None:
        await broker.push_many([])
        tasks = [make_task(payload=i) for i in range(6)]
        await broker.push_many(tasks)
        assert (await broker.stats(DEFAULT)).ready == 6
        assert await broker.queue_length(DEFAULT) == 6
        assert await drain(broker) == [t.id for t in tasks]

    async def test_reserve_timeout_returns_empty_after_waiting(self, broker: Broker) -> None:
        start = time.monotonic()
        assert await broker.reserve([DEFAULT], lease=LONG_LEASE, timeout=0) == []
        assert time.monotonic() - start < SLACK
        start = time.monotonic()
        assert await broker.reserve([DEFAULT], lease=LONG_LEASE, timeout=0.3) == []
        waited = time.monotonic() - start
        assert 0.3 - EARLY <= waited <= 0.3 + SLACK

    async def test_blocked_reserve_wakes_when_a_task_is_pushed(self, broker: Broker) -> None:
        pending = broker.reserve(["other", DEFAULT], lease=LONG_LEASE, timeout=10.0)
        async with background(pending) as waiter:
            await _settle()
            assert not waiter.done(), "reserve returned before anything was pushed"
            task = make_task()
            pushed_at = time.monotonic()
            await broker.push(task)
            got = await waiter
            assert time.monotonic() - pushed_at < SLACK, "reserve did not wake up on push"
        assert [r.task.id for r in got] == [task.id]

    async def test_fifo_within_equal_priority(self, broker: Broker) -> None:
        singles = [make_task(payload=i) for i in range(8)]
        for task in singles:
            await broker.push(task)
        batch = [make_task(payload=i) for i in range(8)]
        await broker.push_many(batch)
        assert await drain(broker) == [t.id for t in singles + batch]

    async def test_higher_priority_first(self, broker: Broker) -> None:
        require(broker, Capability.PRIORITIES)
        pushed = [make_task(priority=p) for p in (0, 5, 2, 5, 9, 0)]
        await broker.push_many(pushed)
        expected = [pushed[i] for i in (4, 1, 3, 2, 0, 5)]  # by priority, FIFO among equals
        assert await drain(broker) == [t.id for t in expected]

    async def test_queue_order_beats_priority(self, broker: Broker) -> None:
        require(broker, Capability.PRIORITIES)
        urgent = make_task(queue="later", priority=9)
        routine = make_task(queue="earlier")
        await broker.push_many([urgent, routine])
        assert await drain(broker, ["earlier", "later"]) == [routine.id, urgent.id]

    async def test_earlier_queue_served_first(self, broker: Broker) -> None:
        late = [make_task(queue="q-b") for _ in range(2)]
        early = [make_task(queue="q-a") for _ in range(2)]
        await broker.push_many(late)
        await broker.push_many(early)
        assert await drain(broker, ["q-a", "q-b"]) == [t.id for t in early + late]

    async def test_queues_are_isolated(self, broker: Broker) -> None:
        a, b = make_task(queue="q-a"), make_task(queue="q-b")
        await broker.push_many([a, b])
        assert await broker.reserve(["q-c"], lease=LONG_LEASE, timeout=0) == []
        assert (await broker.stats("q-a")).ready == 1
        assert await drain(broker, ["q-b"]) == [b.id]
        assert await broker.queue_length("q-a") == 1
        assert await drain(broker, ["q-a"]) == [a.id]

    async def test_limit_is_an_upper_bound(self, broker: Broker) -> None:
        tasks = [make_task() for _ in range(3)]
        await broker.push_many(tasks)
        got = await broker.reserve([DEFAULT], lease=LONG_LEASE, limit=2, timeout=SLACK)
        assert 1 <= len(got) <= 2
        assert [r.task.id for r in got] == [t.id for t in tasks[: len(got)]]

    async def test_batch_reserve(self, broker: Broker) -> None:
        require(broker, Capability.BATCH_RESERVE)
        tasks = [make_task(payload=i) for i in range(7)]
        await broker.push_many(tasks)
        first = await broker.reserve([DEFAULT], lease=LONG_LEASE, limit=5, timeout=SLACK)
        assert [r.task.id for r in first] == [t.id for t in tasks[:5]]
        second = await broker.reserve([DEFAULT], lease=LONG_LEASE, limit=5, timeout=SLACK)
        assert [r.task.id for r in second] == [t.id for t in tasks[5:]]
        assert await broker.reserve([DEFAULT], lease=LONG_LEASE, limit=5) == []
        assert (await broker.stats(DEFAULT)).reserved == 7
        for reservation in first + second:
            await broker.ack(reservation)

    async def test_delayed_task_waits_for_its_eta(self, broker: Broker) -> None:
        require(broker, Capability.DELAYS)
        delay = 0.3
        clock = Stopwatch()
        task = make_task(eta=_in(delay))
        await broker.push(task)
        early = await broker.reserve([DEFAULT], lease=LONG_LEASE, timeout=0)
        stats = await broker.stats(DEFAULT)
        if clock.elapsed < delay:
            assert early == [], "delivered before its eta"
            assert (stats.ready, stats.scheduled) == (0, 1)
        assert await broker.queue_length(DEFAULT) == 1
        reservation = await reserve_one(broker, timeout=delay + SLACK)
        assert clock.elapsed >= delay - EARLY, "delivered before its eta"
        assert reservation.task.id == task.id

    async def test_delayed_task_does_not_block_ready_ones(self, broker: Broker) -> None:
        require(broker, Capability.DELAYS)
        later, overdue, now = make_task(eta=_in(60)), make_task(eta=_in(-60)), make_task()
        await broker.push_many([later, overdue, now])
        assert await drain(broker) == [overdue.id, now.id]
        assert (await broker.stats(DEFAULT)).scheduled == 1

    async def test_undeclared_capabilities_refused_at_push(self, broker: Broker) -> None:
        missing = {Capability.PRIORITIES, Capability.DELAYS} - broker.capabilities
        if not missing:
            pytest.skip(f"{type(broker).__name__} declares both PRIORITIES and DELAYS")
        if Capability.PRIORITIES in missing:
            with pytest.raises(CapabilityError):
                await broker.push(make_task(priority=3))
        if Capability.DELAYS in missing:
            with pytest.raises(CapabilityError):
                await broker.push(make_task(eta=_in(60)))
        assert await broker.queue_length(DEFAULT) == 0

    @pytest.mark.parametrize("name", BAD_QUEUE_NAMES, ids=repr)
    async def test_invalid_queue_name_refused(self, broker: Broker, name: str) -> None:
        bad = make_task().model_copy(update={"queue": name})  # model_copy skips validation
        with pytest.raises(InvalidNameError):
            await broker.push(bad)
        with pytest.raises(InvalidNameError):
            await broker.push_many([make_task(), bad])
        with pytest.raises(InvalidNameError):
            await broker.push_messages([Message(bad.id, name, broker.codec.encode(make_task()))])
        with pytest.raises(InvalidNameError):
            await broker.reserve([name], lease=LONG_LEASE)
        with pytest.raises(InvalidNameError):
            await broker.reserve([DEFAULT, name], lease=LONG_LEASE)
        assert name not in await broker.queues()

    async def test_payload_over_the_limit_refused(self, broker: Broker) -> None:
        limit = broker.codec.max_payload_bytes
        fits = make_task(payload="x" * (limit // 2))
        assert len(broker.codec.encode(fits)) <= limit
        too_big = make_task(payload="x" * limit)
        with pytest.raises(PayloadTooLargeError):
            await broker.push(too_big)
        with pytest.raises(PayloadTooLargeError):
            await broker.push_many([make_task(), too_big])
        await broker.push(fits)
        assert await broker.queue_length(DEFAULT) == 1
        assert (await reserve_one(broker)).task == fits

    async def test_duplicate_task_id_refused(self, broker: Broker) -> None:
        task = make_task()
        await broker.push(task)
        with pytest.raises(DuplicateTaskError):
            await broker.push(task)
        assert await broker.queue_length(DEFAULT) == 1
        reservation = await reserve_one(broker)
        with pytest.raises(DuplicateTaskError):
            await broker.push(task)  # reserved counts as present
        await broker.ack(reservation)
        await broker.push(task)  # gone for good, so the id is free again
        assert await drain(broker) == [task.id]
        twin = make_task()
        with pytest.raises(DuplicateTaskError):
            await broker.push_many([twin, twin])

    @pytest.mark.parametrize(
        "call",
        [
            pytest.param(lambda b: b.reserve([DEFAULT], lease=LONG_LEASE, limit=0), id="limit-0"),
            pytest.param(lambda b: b.reserve([DEFAULT], lease=LONG_LEASE, limit=-3), id="limit<0"),
            pytest.param(lambda b: b.reserve([DEFAULT], lease=0.0), id="lease-0"),
            pytest.param(lambda b: b.reserve([DEFAULT], lease=math.inf), id="lease-inf"),
            pytest.param(lambda b: b.reserve([DEFAULT], lease=1e13), id="lease-1e13"),
            pytest.param(lambda b: b.reserve([DEFAULT], lease=math.nan), id="lease-nan"),
            pytest.param(lambda b: b.reserve([DEFAULT], lease=1.0, timeout=-1), id="timeout<0"),
            pytest.param(lambda b: b.reserve([], lease=1.0), id="no-queues"),
            pytest.param(lambda b: b.reserve(["bad name"], lease=1.0), id="bad-queue"),
            pytest.param(lambda b: b.stats("bad name"), id="stats-bad-queue"),
            pytest.param(lambda b: b.stats(""), id="stats-empty-queue"),
            pytest.param(lambda b: b.purge("a/b"), id="purge-bad-queue"),
            pytest.param(lambda b: b.dead_letters("bad name"), id="dead_letters-bad-queue"),
            pytest.param(lambda b: b.dead_letters(DEFAULT, offset=-1), id="dead_letters-offset"),
            pytest.param(lambda b: b.dead_letters(DEFAULT, limit=0), id="dead_letters-limit-0"),
        ],
    )
    async def test_bad_arguments_are_refused_alike(
        self,
        broker: Broker,
        call: Callable[[Broker], Awaitable[object]],
        request: pytest.FixtureRequest,
    ) -> None:
        """Every backend refuses the same bad call with a ValueError naming the problem
        (the base class checks them), instead of waiting, clamping or reserving anyway."""
        await broker.push(make_task())
        if "dead_letters" in request.node.name:
            require(broker, Capability.DEAD_LETTER)
        with pytest.raises(ValueError, match=r"limit|lease|timeout|queue|offset"):
            await call(broker)
        assert (await broker.stats(DEFAULT)).ready == 1  # nothing was reserved or purged

    async def test_stats_and_queue_length(self, broker: Broker) -> None:
        assert await broker.stats("unused") == _stats(0, 0, 0, 0)
        await broker.push_many([make_task() for _ in range(3)])
        await broker.push(make_task(queue="elsewhere"))
        held = await reserve_one(broker)
        scheduled = dead = 0
        if Capability.DELAYS in broker.capabilities:
            await broker.push(make_task(eta=_in(60)))
            scheduled = 1
        if Capability.DEAD_LETTER in broker.capabilities:
            await broker.dead_letter(await reserve_one(broker), "for the stats")
            dead = 1
        assert await broker.stats(DEFAULT) == _stats(2 - dead, scheduled, 1, dead)
        assert await broker.queue_length(DEFAULT) == 2 - dead + scheduled
        await broker.ack(held)
        assert (await broker.stats(DEFAULT)).reserved == 0
        assert await broker.stats("elsewhere") == _stats(1, 0, 0, 0)

    async def test_purge_removes_waiting_not_reserved(self, broker: Broker) -> None:
        await broker.push_many([make_task() for _ in range(3)])
        other = make_task(queue="kept")
        await broker.push(other)
        held = await reserve_one(broker)
        waiting = 2
        if Capability.DELAYS in broker.capabilities:
            await broker.push(make_task(eta=_in(60)))
            waiting += 1
        assert await broker.purge(DEFAULT) == waiting
        assert await broker.stats(DEFAULT) == _stats(0, 0, 1, 0)
        assert await broker.reserve([DEFAULT], lease=LONG_LEASE, timeout=0) == []
        await broker.ack(held)  # the reserved message survived the purge
        assert await broker.purge(DEFAULT) == 0
        assert await drain(broker, ["kept"]) == [other.id]

    async def test_queues_lists_used_queues(self, broker: Broker) -> None:
        await broker.push(make_task(queue="alpha"))
        await broker.push(make_task(queue="beta"))
        await broker.reserve(["gamma"], lease=LONG_LEASE, timeout=0)
        names = await broker.queues()
        assert {"alpha", "beta"} <= set(names)
        assert "never-used" not in names
        await broker.purge("alpha")  # "hold or held": an emptied queue is still known
        assert "alpha" in await broker.queues()


def _stats(ready: int, scheduled: int, reserved: int, dead: int) -> QueueStats:
    return QueueStats(ready=ready, scheduled=scheduled, reserved=reserved, dead=dead)


async def _settle() -> None:
    """Give a coroutine started just now time to block inside ``reserve``."""
    await asyncio.sleep(0.1)
