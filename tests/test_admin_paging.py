"""Admin operations page through the backend in bounded batches (issue 11, defect 7)."""

from __future__ import annotations

from typing import Any

import pytest

from bgcoor_core import MemoryBroker, TaskManager, TaskStatus
from bgcoor_core import _admin as admin_module


async def test_requeue_dead_pages_through_the_dead_letters(
    monkeypatch: pytest.MonkeyPatch, fast: dict[str, Any]
) -> None:
    monkeypatch.setattr(admin_module, "ADMIN_PAGE", 3)
    manager = TaskManager(**fast, max_retries=0)

    @manager.task(name="jobs.boom")
    def boom(n: int) -> None:
        raise ValueError(n)

    handles = await boom.enqueue_many([(n,) for n in range(10)])
    await manager.drain()
    assert len(await manager.broker.dead_letters("default")) == 10
    pages: list[int] = []
    original = MemoryBroker.dead_letters

    async def spy(self: MemoryBroker, queue: str, *, limit: int = 100, offset: int = 0) -> Any:
        pages.append(limit)
        return await original(self, queue, limit=limit, offset=offset)

    monkeypatch.setattr(MemoryBroker, "dead_letters", spy)
    every_other = [h.id for h in handles[::2]]
    moved = await manager.requeue_dead("default", every_other)
    assert sorted(moved) == sorted(every_other)
    assert max(pages) == 3
    rest = await manager.requeue_dead("default")
    assert sorted(rest) == sorted(h.id for h in handles[1::2])
    for handle in handles:
        assert (await manager.get(handle.id)).status is TaskStatus.PENDING
    assert await manager.broker.queue_length("default") == 10
    await manager.close()
