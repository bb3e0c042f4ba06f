"""Rate and concurrency limit contract: what a broker declaring ``Capability.LIMITS`` does
with a message's gate (:mod:`bgcoor_core._gates`) in its reserve step.

Messages are pushed with a gate as ``Broker.to_message`` makes them (a task with the gate
header), so the suite needs only a ``broker`` fixture.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from .._broker import Broker, Capability, Reservation
from .._gates import GATE_HEADER, Gate
from .._task import Task
from ._helpers import ASYNC, DEFAULT, EARLY, LEASE, LONG_LEASE, SLACK, make_task, require

NAME = "contract.gated"


def _gated(gate: Gate | None, **fields: object) -> Task:
    task = make_task(NAME, **fields)
    if gate is not None:
        task.headers[GATE_HEADER] = gate.encode()
    return task


async def _push(broker: Broker, gate: Gate | None, n: int, **fields: object) -> list[str]:
    tasks = [_gated(gate, **fields) for _ in range(n)]
    await broker.push_many(tasks)
    return [t.id for t in tasks]


async def _take(
    broker: Broker, *, lease: float = LONG_LEASE, limit: int = 100
) -> list[Reservation]:
    return await broker.reserve([DEFAULT], lease=lease, limit=limit, timeout=0)


async def _next(broker: Broker, within: float, *, lease: float = LONG_LEASE) -> Reservation:
    """The next message to become deliverable, waiting up to ``within`` seconds."""
    give_up = time.monotonic() + within
    while time.monotonic() < give_up:
        got = await broker.reserve(
            [DEFAULT], lease=lease, limit=1, timeout=max(0.0, give_up - time.monotonic())
        )
        if got:
            return got[0]
    raise AssertionError(f"nothing became deliverable within {within}s")


class GateContract:
    """Mixin of the limits tests; skipped for a broker without ``Capability.LIMITS``."""

    @pytest.fixture(autouse=True)
    def _limits(self, broker: Broker) -> None:
        require(broker, Capability.LIMITS)

    # -- rate ----------------------------------------------------------------------------

    @ASYNC
    async def test_rate_delivers_one_slot_at_a_time(self, broker: Broker) -> None:
        interval = 0.25
        ids = await _push(broker, Gate("k", interval), 4)
        first = await _take(broker)
        assert [r.task.id for r in first] == ids[:1]
        stats = await broker.stats(DEFAULT)
        assert (stats.ready, stats.scheduled, stats.reserved) == (0, 3, 1)
        got, times = [], []
        start = time.monotonic()
        for _ in range(3):
            reservation = await _next(broker, interval * 3 + SLACK)
            got.append(reservation)
            times.append(time.monotonic() - start)
        assert [r.task.id for r in got] == ids[1:]
        for n, at in enumerate(times, start=1):  # slot n is n intervals after the first
            assert at >= n * interval - EARLY, (n, times)
        assert all((r.deliveries, r.lost) == (1, 0) for r in got)  # no attempt was used

    @ASYNC
    async def test_deferred_tasks_let_others_pass(self, broker: Broker) -> None:
        gated = await _push(broker, Gate("k", 30.0), 3)
        plain = await _push(broker, None, 2)
        got = {r.task.id for r in await _take(broker)}
        assert got == {gated[0], *plain}
        stats = await broker.stats(DEFAULT)
        assert (stats.ready, stats.scheduled) == (0, 2)  # waiting for their slots, not polled

    @ASYNC
    async def test_rate_keys_are_independent(self, broker: Broker) -> None:
        a = await _push(broker, Gate("a", 30.0), 2)
        b = await _push(broker, Gate("b", 30.0), 2)
        assert {r.task.id for r in await _take(broker)} == {a[0], b[0]}

    @ASYNC
    async def test_burst_admits_that_many_at_once(self, broker: Broker) -> None:
        ids = await _push(broker, Gate("k", 30.0, burst=3), 5)
        assert [r.task.id for r in await _take(broker)] == ids[:3]
        assert await _take(broker) == []

    @ASYNC
    async def test_a_delivery_spends_its_slot_and_a_retry_is_charged_again(
        self, broker: Broker
    ) -> None:
        interval = 0.3
        ids = await _push(broker, Gate("k", interval), 2)
        first = await _take(broker)
        second = await _next(broker, interval + SLACK)
        assert second.task.id == ids[1]
        await broker.nack(second)  # ready at once, but the key's next slot is one interval away
        assert await _take(broker) == []
        assert (await broker.stats(DEFAULT)).scheduled == 1
        again = await _next(broker, interval + SLACK)
        assert again.task.id == ids[1]
        await broker.ack(first[0])
        await broker.ack(again)

    # -- concurrency ---------------------------------------------------------------------

    @ASYNC
    async def test_concurrency_parks_what_would_exceed_the_limit(self, broker: Broker) -> None:
        ids = await _push(broker, Gate("k", concurrency=2), 5)
        held = await _take(broker)
        assert [r.task.id for r in held] == ids[:2]
        assert await _take(broker) == []
        stats = await broker.stats(DEFAULT)
        assert (stats.ready, stats.scheduled, stats.reserved) == (0, 3, 2)
        await broker.ack(held[0])  # frees a slot: the oldest parked message is ready
        third = await _take(broker)
        assert [r.task.id for r in third] == [ids[2]]
        await broker.nack(held[1])  # a hand-back frees its slot too; one of the two runs
        after = await _take(broker)
        assert len(after) == 1
        assert after[0].task.id in {ids[1], ids[3]}
        assert await _take(broker) == []

    @ASYNC
    async def test_a_lost_lease_frees_its_slot(self, broker: Broker) -> None:
        ids = await _push(broker, Gate("k", concurrency=1), 2)
        held = await _take(broker, lease=LEASE)
        assert [r.task.id for r in held] == ids[:1]
        assert await _take(broker) == []
        await asyncio.sleep(LEASE + EARLY)  # the holder "died": its slot must not leak
        got = await _next(broker, SLACK)
        assert got.task.id in ids
        assert await _take(broker) == []  # still one at a time
        await broker.ack(got)
        rest = await _next(broker, SLACK)
        assert {got.task.id, rest.task.id} == set(ids)

    @ASYNC
    async def test_an_extended_lease_keeps_its_slot(self, broker: Broker) -> None:
        require(broker, Capability.LEASE_EXTENSION)
        await _push(broker, Gate("k", concurrency=1), 2)
        held = await _take(broker, lease=LEASE)
        await broker.extend(held[0], LONG_LEASE)
        await asyncio.sleep(LEASE + EARLY)
        assert await _take(broker) == []

    @ASYNC
    async def test_a_dead_letter_frees_its_slot(self, broker: Broker) -> None:
        require(broker, Capability.DEAD_LETTER)
        ids = await _push(broker, Gate("k", concurrency=1), 2)
        held = await _take(broker)
        await broker.dead_letter(held[0], "contract: poisoned")
        assert [r.task.id for r in await _take(broker)] == ids[1:]

    @ASYNC
    async def test_keys_are_fair(self, broker: Broker) -> None:
        a = await _push(broker, Gate("tenant-a", concurrency=1), 10)
        b = await _push(broker, Gate("tenant-b", concurrency=1), 2)
        c = await _push(broker, Gate("tenant-c", concurrency=1), 2)
        first = await _take(broker)
        assert {r.task.id for r in first} == {a[0], b[0], c[0]}
        await broker.ack(next(r for r in first if r.task.id == b[0]))
        assert [r.task.id for r in await _take(broker)] == b[1:]

    @ASYNC
    async def test_purge_removes_parked_messages(self, broker: Broker) -> None:
        await _push(broker, Gate("k", concurrency=1), 3)
        held = await _take(broker)
        assert await broker.purge(DEFAULT) == 2
        stats = await broker.stats(DEFAULT)
        assert (stats.ready, stats.scheduled, stats.reserved) == (0, 0, 1)
        await broker.ack(held[0])
        assert await _take(broker) == []

    @ASYNC
    async def test_the_rate_still_applies_to_a_message_that_was_parked(
        self, broker: Broker
    ) -> None:
        ids = await _push(broker, Gate("k", 30.0, concurrency=1), 2)
        held = await _take(broker)
        assert [r.task.id for r in held] == ids[:1]
        await broker.ack(held[0])
        # the second, parked, is ready again once the slot is free, and then waits for the
        # key's next rate slot, one interval after the first's
        assert await _take(broker) == []
        stats = await broker.stats(DEFAULT)
        assert (stats.ready, stats.scheduled) == (0, 1)

    @ASYNC
    async def test_a_gate_survives_a_nack_with_a_new_body(self, broker: Broker) -> None:
        ids = await _push(broker, Gate("k", concurrency=1), 2)
        held = await _take(broker)
        retried = held[0].task.model_copy(update={"attempts": 1})
        await broker.nack(held[0], task=retried)
        again = await _take(broker)
        assert len(again) == 1
        assert again[0].task.id in ids
        assert await _take(broker) == []  # the rewritten message is still limited
