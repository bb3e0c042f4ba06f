"""Broker contract, part 4: many consumers at once, and consumers that die."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import pytest

from .._broker import Broker, Capability, QueueStats, Reservation
from .._errors import StaleLeaseError
from ._helpers import ASYNC, DEFAULT, LEASE, LONG_LEASE, SLACK, make_task

#: Upper bound for a whole concurrency test, so a lost task fails it with a message
#: instead of hanging until the per-test timeout.
DEADLINE = 30.0


@dataclass
class _Ledger:
    """What the consumers did, checked once they are done."""

    total: int
    held: set[str] = field(default_factory=set)
    acked: Counter[str] = field(default_factory=Counter)
    double_held: list[str] = field(default_factory=list)
    last: dict[str, Reservation] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return sum(self.acked.values()) >= self.total


async def _consume(broker: Broker, ledger: _Ledger, limit: int) -> None:
    """Reserve with a long lease, check nobody else holds the task, ack, repeat."""
    while not ledger.finished:
        got = await broker.reserve([DEFAULT], lease=LONG_LEASE, limit=limit, timeout=0.05)
        for reservation in got:
            task_id = reservation.task.id
            if task_id in ledger.held:
                ledger.double_held.append(task_id)
            ledger.held.add(task_id)
        await asyncio.sleep(0)  # let other consumers run while these leases are held
        for reservation in got:
            await broker.ack(reservation)
            ledger.held.discard(reservation.task.id)
            ledger.last[reservation.task.id] = reservation
            ledger.acked[reservation.task.id] += 1


async def _run_consumers(broker: Broker, ledger: _Ledger, count: int) -> None:
    batch = Capability.BATCH_RESERVE in broker.capabilities
    consumers = [_consume(broker, ledger, i % 5 + 1 if batch else 1) for i in range(count)]
    try:
        async with asyncio.timeout(DEADLINE):
            await asyncio.gather(*consumers)
    except TimeoutError:
        missing = ledger.total - len(ledger.acked)
        pytest.fail(f"consumers gave up after {DEADLINE}s with {missing} tasks never acked")


class BrokerConcurrencyTests:
    pytestmark = [ASYNC]

    async def test_many_concurrent_consumers(self, broker: Broker) -> None:
        tasks = [make_task(payload=i) for i in range(500)]
        await broker.push_many(tasks)
        ledger = _Ledger(total=len(tasks))
        await _run_consumers(broker, ledger, 20)
        assert ledger.double_held == [], "a task was leased to two consumers at once"
        assert set(ledger.acked) == {t.id for t in tasks}
        assert set(ledger.acked.values()) == {1}, "a task was acknowledged twice"
        assert {(r.deliveries, r.lost) for r in ledger.last.values()} == {(1, 0)}
        assert await broker.stats(DEFAULT) == QueueStats()

    async def test_dead_consumer_tasks_are_redelivered(self, broker: Broker) -> None:
        tasks = [make_task(payload=i) for i in range(40)]
        await broker.push_many(tasks)
        # The dying consumer takes a few tasks under a short lease and never acks them.
        abandoned: list[Reservation] = []
        for _ in range(3):
            abandoned += await broker.reserve([DEFAULT], lease=LEASE, limit=3, timeout=SLACK)
        assert abandoned, "the dying consumer got nothing"
        ledger = _Ledger(total=len(tasks))
        await _run_consumers(broker, ledger, 4)
        assert ledger.double_held == []
        assert set(ledger.acked) == {t.id for t in tasks}
        assert set(ledger.acked.values()) == {1}
        for lost in abandoned:
            redelivered = ledger.last[lost.task.id]
            assert redelivered.token != lost.token
            assert (redelivered.deliveries, redelivered.lost) == (2, 1)
            with pytest.raises(StaleLeaseError):
                await broker.ack(lost)
        assert await broker.stats(DEFAULT) == QueueStats()
