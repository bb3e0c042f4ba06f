"""Helpers for testing a backend's cancel channel (:class:`~bgcoor_core.kit.CancelSignals`).

The Redis and PostgreSQL plugins test theirs the same way: a subscription records what it
hears (:class:`Heard`, entered with :func:`listening`), a published id must reach the
channel's listeners in other processes and nobody else's
(:func:`check_a_signal_reaches_its_channel_only`), and a worker pool must interrupt a task
that another manager cancels (:func:`check_a_pool_interrupts_a_task_cancelled_elsewhere`).
What differs (how the channel is built, how its connection is cut) stays in each plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from .._cancels import CancelSignals
from .._manager import TaskManager
from .._task import TaskStatus


class Heard:
    """What one subscription reported."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.gaps = 0

    def cancel(self, task_id: str) -> None:
        self.ids.append(task_id)

    def gap(self) -> None:
        self.gaps += 1

    async def until(self, what: str, count: int, timeout: float = 5.0) -> None:
        """Wait until ``count`` ids (``what="ids"``) or gaps (``"gaps"``) were heard."""
        deadline = time.monotonic() + timeout
        while len(self.ids) < count if what == "ids" else self.gaps < count:
            assert time.monotonic() < deadline, f"{what} never reached {count}"
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def listening(signals: CancelSignals) -> AsyncIterator[Heard]:
    """Subscribe to ``signals`` for the block, once the subscription is established (its
    first ``on_gap``)."""
    heard = Heard()
    async with signals.subscribe(heard.cancel, heard.gap):
        await heard.until("gaps", 1)  # subscribed
        yield heard


async def check_a_signal_reaches_its_channel_only(
    publisher: CancelSignals, same_channel: CancelSignals, other_channel: CancelSignals
) -> None:
    """An id published on ``publisher`` reaches a listener of the same channel (another
    process's, for all it knows), and not one of ``other_channel``."""
    async with listening(same_channel) as there, listening(other_channel) as unrelated:
        await publisher.publish("task-1")
        await there.until("ids", 1)
        await asyncio.sleep(0.1)
    assert there.ids == ["task-1"]
    assert unrelated.ids == []


async def check_a_pool_interrupts_a_task_cancelled_elsewhere(url: str) -> None:
    """A task running in a pool of one manager is interrupted within half a second when
    another manager on the backend at ``url`` (one with no pool: only the signal can reach
    it) cancels it, and ends ``cancelled``."""
    settings: dict[str, Any] = {"broker_url": url, "storage_url": url, "shutdown_grace": 2.0}
    worker, other = TaskManager(**settings), TaskManager(**settings)
    told: list[float] = []
    started, interrupted = asyncio.Event(), asyncio.Event()

    async def waits() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            told.append(time.monotonic())
            interrupted.set()
            raise

    task = worker.task(name="waits")(waits)
    try:
        async with worker.worker(2):
            handle = await task.enqueue()
            await asyncio.wait_for(started.wait(), 10)
            began = time.monotonic()
            assert await other.cancel(handle.id)  # not one of its pools: only the signal
            await asyncio.wait_for(interrupted.wait(), 5)
            record = await worker.storage.wait(handle.id, timeout=5)
    finally:
        await other.close()
        await worker.close()
    assert record.status is TaskStatus.CANCELLED
    assert len(told) == 1
    assert told[0] - began < 0.5
