"""Round trips are the cost: count the statements one task's life sends to PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from bgcoor_postgres import PostgresBackend, backend_of

from bgcoor_core import TaskManager, TaskStatus

pytestmark = pytest.mark.server


#: asyncpg looks up the array types of a statement once per new connection.
TYPE_LOOKUP = ("typeinfo_tree", "set_config('jit'")


def count_statements(backend: PostgresBackend) -> Counter[str]:
    """Count the statements the backend's pooled connections run, by their role."""
    names = {sql: name for name, sql in vars(backend.sql).items() if isinstance(sql, str)}
    seen: Counter[str] = Counter()

    def observe(query: str) -> None:
        if not any(marker in query for marker in TYPE_LOOKUP):
            seen[names.get(query, query[:200])] += 1

    backend._db.observer = observe
    return seen


async def test_one_task_costs_three_statements(manager: TaskManager) -> None:
    backend = backend_of(manager)
    seen = count_statements(backend)

    @manager.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    handle = await add.enqueue(2, 3)
    assert seen == Counter(enqueue=1)
    seen.clear()
    assert await manager.drain() == 1
    # reserve (which marks the record running), outcome + ack; then one more reserve
    # that finds nothing
    assert seen == Counter(reserve=2, complete=1)
    assert (await handle.info()).result == 5


async def test_a_batch_shares_its_statements(manager: TaskManager) -> None:
    backend = backend_of(manager)
    n = 200
    seen = count_statements(backend)
    done = asyncio.Event()
    finished: list[int] = []

    @manager.task(name="noop")
    async def noop(i: int) -> None:
        finished.append(i)
        if len(finished) == n:
            done.set()

    await noop.enqueue_many([(i,) for i in range(n)])
    assert seen == Counter(enqueue=1)  # the whole batch: records and messages
    seen.clear()
    async with manager.worker(concurrency=n):
        await asyncio.wait_for(done.wait(), 20)
        await asyncio.sleep(0.2)  # the last outcomes are stored
    assert (await backend.counts())[TaskStatus.SUCCEEDED] == n
    per_task = (seen["reserve"] + seen["save"] + seen["complete"]) / n
    assert per_task < 0.5, seen  # three round trips per task without batching
    assert seen["save"] == 0, seen  # reserve marked them running
    assert seen["complete"] < n / 4, seen
