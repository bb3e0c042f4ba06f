"""Cancel signals between processes (issue 14, item 5), on the memory backend: a channel a
plugin offers through ``bgcoor_cancel_signals`` (here an in-memory bus standing for Redis or
PostgreSQL), and the fallback for a backend without one, reading the running tasks'
records every half second. A second manager sharing the backends stands for another
process: its ``cancel()`` never reaches the first manager's pools directly.

The real thing, across OS processes on SQLite, Redis and PostgreSQL, is in
``tests/reliability/test_cancel_across_processes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from bgcoor_core import (
    Broker,
    Storage,
    Task,
    TaskManager,
    TaskStatus,
    current_task,
    hookimpl,
)
from bgcoor_core._cancels import CANCEL_POLL, CancelSignals, OnCancel, OnGap

#: The bound the issue sets, from ``cancel()`` to the task being told.
BOUND = 1.0


class Bus:
    """An in-memory cancel channel, the shape of Redis's PUBLISH/SUBSCRIBE."""

    def __init__(self, storage: Storage | None = None) -> None:
        self.storage = storage
        self.subscribers: list[tuple[OnCancel, OnGap]] = []
        self.published: list[str] = []
        self.status_when_published: list[TaskStatus | None] = []
        self.fail_publish = False
        self.fail_subscribe = 0  # how many subscribe attempts fail before one works
        self.subscribe_attempts = 0

    async def publish(self, task_id: str) -> None:
        if self.storage is not None:
            record = await self.storage.get(task_id)
            self.status_when_published.append(None if record is None else record.status)
        if self.fail_publish:
            raise ConnectionError("the channel is down")
        self.published.append(task_id)
        for on_cancel, _ in list(self.subscribers):
            on_cancel(task_id)

    @contextlib.asynccontextmanager
    async def subscribe(self, on_cancel: OnCancel, on_gap: OnGap) -> AsyncIterator[None]:
        self.subscribe_attempts += 1
        if self.fail_subscribe:
            self.fail_subscribe -= 1
            raise ConnectionError("cannot subscribe")
        entry = (on_cancel, on_gap)
        self.subscribers.append(entry)
        on_gap()
        try:
            yield
        finally:
            self.subscribers.remove(entry)

    def gap(self) -> None:
        """As if every subscription had just reconnected."""
        for _, on_gap in list(self.subscribers):
            on_gap()


class BusPlugin:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.asked: list[tuple[Broker, Storage]] = []

    @hookimpl
    def bgcoor_cancel_signals(self, broker: Broker, storage: Storage) -> CancelSignals | None:
        self.asked.append((broker, storage))
        return self.bus


class BrokenPlugin:
    @hookimpl
    def bgcoor_cancel_signals(self, broker: Broker, storage: Storage) -> CancelSignals | None:
        raise RuntimeError("a plugin's bug")


@pytest.fixture
def bus() -> Bus:
    return Bus()


@contextlib.asynccontextmanager
async def pair(
    fast: dict[str, Any], *plugins: object
) -> AsyncIterator[tuple[TaskManager, TaskManager]]:
    """A worker-side manager, and another one on the same backends (another process)."""
    worker = TaskManager(plugins=plugins, **fast)
    other = TaskManager(plugins=plugins, **fast)
    other.use_backends(worker.backends)
    try:
        yield worker, other
    finally:
        other.use_backends(None)
        await worker.close()


class Marks:
    """What the tasks below report, with the time of each report."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def __call__(self, what: str) -> None:
        self.at[what] = time.monotonic()

    async def wait(self, what: str, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        while what not in self.at:
            assert time.monotonic() < deadline, f"no {what!r} within {timeout}s"
            await asyncio.sleep(0.005)
        return self.at[what]


@pytest.fixture
def marks() -> Marks:
    return Marks()


def register(manager: TaskManager, marks: Marks) -> tuple[Any, Any]:
    async def waits() -> str:
        marks("start")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            marks("cancelled")
            raise
        return "woke"

    def polls() -> str:
        marks("sync start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if current_task().cancel_requested:
                marks("requested")
                return "stopped"
            time.sleep(0.005)
        return "never told"

    return manager.task(name="waits")(waits), manager.task(name="polls")(polls)


#: What each task of :func:`register` reports on starting, and on being told to stop.
MARKS = {"waits": ("start", "cancelled"), "polls": ("sync start", "requested")}


@dataclass
class Told:
    """A running task cancelled from elsewhere: seconds from ``cancel()`` until the task
    was told, and its record once final."""

    after: float
    record: Task


async def cancel_while_running(
    worker: TaskManager, other: TaskManager, marks: Marks, task: Any, *, timeout: float = 5.0
) -> Told:
    """Enqueue ``task`` (``waits`` or ``polls`` of :func:`register`) into ``worker``'s running
    pool, cancel it through ``other`` once it started, wait up to ``timeout`` seconds for
    it to be told, then for its final record."""
    started, told = MARKS[task.name]
    handle = await task.enqueue()
    await marks.wait(started)
    began = time.monotonic()
    assert await other.cancel(handle.id)
    after = await marks.wait(told, timeout=timeout) - began
    return Told(after, await worker.storage.wait(handle.id, timeout=5))


# -- a channel ------------------------------------------------------------------------


async def test_a_pool_subscribes_while_it_runs_and_unsubscribes_at_shutdown(
    bus: Bus, fast: dict[str, Any]
) -> None:
    plugin = BusPlugin(bus)
    async with pair(fast, plugin) as (worker, _):
        assert bus.subscribers == []
        async with worker.worker(2) as pool:
            await asyncio.sleep(0.05)
            assert len(bus.subscribers) == 1
            assert plugin.asked == [(pool.broker, pool.storage)]
        assert bus.subscribers == []


async def test_a_signal_interrupts_a_running_async_task_at_once(
    bus: Bus, fast: dict[str, Any], marks: Marks
) -> None:
    async with pair(fast, BusPlugin(bus)) as (worker, other):
        bus.storage = other.storage
        waits, _ = register(worker, marks)
        async with worker.worker(2):
            told = await cancel_while_running(worker, other, marks, waits)
    assert told.after < 0.2  # the signal, not a poll
    assert bus.published == [told.record.id]
    assert bus.status_when_published == [TaskStatus.CANCELLED]  # stored first, then told
    assert told.record.status is TaskStatus.CANCELLED


async def test_a_signal_sets_cancel_requested_for_a_sync_task(
    bus: Bus, fast: dict[str, Any], marks: Marks
) -> None:
    async with pair(fast, BusPlugin(bus)) as (worker, other):
        _, polls = register(worker, marks)
        async with worker.worker(2):
            told = await cancel_while_running(worker, other, marks, polls)
            await asyncio.sleep(0.1)  # the thread returns "stopped": dropped
            again = await worker.storage.get(told.record.id)
    assert told.after < 0.2
    assert told.record.status is TaskStatus.CANCELLED
    assert again is not None
    assert (again.status, again.result) == (TaskStatus.CANCELLED, None)


async def test_a_signal_for_a_task_on_its_way_cancels_it_when_it_arrives(
    bus: Bus, fast: dict[str, Any], marks: Marks
) -> None:
    """The signal came while the reservation was on the wire: the pool did not hold the
    task yet, remembers the id, and cancels the task as the reservation arrives."""
    async with pair(fast, BusPlugin(bus)) as (worker, _):
        register(worker, marks)
        async with worker.worker(2):
            await asyncio.sleep(0.05)
            task = worker.build_task("waits")
            await bus.publish(task.id)  # before anyone holds it
            await worker.submit(task)
            record = await worker.storage.wait(task.id, timeout=5)
    assert record.status is TaskStatus.CANCELLED
    assert record.error == "cancelled before it started"
    assert "start" not in marks.at


async def test_a_gap_in_the_subscription_makes_the_pool_read_its_tasks_records(
    bus: Bus, fast: dict[str, Any], marks: Marks
) -> None:
    """A signal lost while the subscription was down: on reconnecting (``on_gap``) the pool
    reads its running tasks' records and finds the cancel there."""
    async with pair(fast, BusPlugin(bus)) as (worker, _):
        waits, _ = register(worker, marks)
        async with worker.worker(2):
            handle = await waits.enqueue()
            await marks.wait("start")
            record = await worker.storage.get(handle.id)
            assert record is not None
            record.status = TaskStatus.CANCELLED  # as another process's cancel() stores it
            await worker.storage.save(record)
            await asyncio.sleep(CANCEL_POLL + 0.3)
            assert "cancelled" not in marks.at  # no poll beside a channel: it waits
            bus.gap()
            await marks.wait("cancelled", timeout=1.0)


async def test_a_failed_publish_still_cancels(
    bus: Bus, fast: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    bus.fail_publish = True
    async with pair(fast, BusPlugin(bus)) as (worker, other):
        marks = Marks()
        waits, _ = register(worker, marks)
        handle = await waits.enqueue()
        with caplog.at_level(logging.WARNING, "bgcoor.manager"):
            assert await other.cancel(handle.id)
        record = await other.get(handle.id)
    assert record.status is TaskStatus.CANCELLED
    assert "the cancel signal was not sent (ConnectionError: the channel is down)" in caplog.text


async def test_a_subscription_that_fails_is_tried_again(
    bus: Bus, fast: dict[str, Any], marks: Marks, caplog: pytest.LogCaptureFixture
) -> None:
    bus.fail_subscribe = 2
    async with pair(fast, BusPlugin(bus)) as (worker, other):
        waits, _ = register(worker, marks)
        with caplog.at_level(logging.WARNING, "bgcoor.cancels"):
            async with worker.worker(2):
                handle = await waits.enqueue()
                await marks.wait("start")
                for _ in range(200):
                    if bus.subscribers:
                        break
                    await asyncio.sleep(0.01)
                assert bus.subscribe_attempts == 3
                await other.cancel(handle.id)
                await marks.wait("cancelled", timeout=1.0)
    assert "cancel signal subscription failed (ConnectionError: cannot subscribe)" in caplog.text


# -- no channel: the pool reads its running tasks' records --------------------------------


@pytest.mark.parametrize("task_name", ["waits", "polls"])
async def test_without_a_channel_a_running_task_is_told_within_a_second(
    fast: dict[str, Any], marks: Marks, task_name: str
) -> None:
    """An async task is interrupted, a sync one sees ``cancel_requested``."""
    async with pair(fast) as (worker, other):
        assert worker.host.cancel_signals(worker.broker, worker.storage) is None  # memory
        waits, polls = register(worker, marks)
        task = waits if task_name == "waits" else polls
        async with worker.worker(2):
            told = await cancel_while_running(worker, other, marks, task, timeout=2.0)
    assert told.after < BOUND
    assert told.record.status is TaskStatus.CANCELLED


class CountedGets:
    """Counts the storage reads of a running pool."""

    def __init__(self, storage: Storage) -> None:
        self.count = 0
        self._get = storage.get

    async def __call__(self, task_id: str) -> Task | None:
        self.count += 1
        return await self._get(task_id)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(storage: Storage) -> CountedGets:
        gets = CountedGets(storage)
        monkeypatch.setattr(storage, "get", gets)
        return gets

    return install


async def test_polling_costs_nothing_while_the_pool_runs_nothing(
    fast: dict[str, Any], marks: Marks, counted: Any
) -> None:
    async with pair(fast) as (worker, _):
        waits, _ = register(worker, marks)
        gets = counted(worker.storage)
        async with worker.worker(2):
            await asyncio.sleep(3 * CANCEL_POLL)
            idle = gets.count
            handle = await waits.enqueue()
            await marks.wait("start")
            before = gets.count
            await asyncio.sleep(4 * CANCEL_POLL + 0.1)
            running = gets.count - before
            await worker.cancel(handle.id)
    assert idle == 0
    assert 3 <= running <= 5  # one read of its one running task per poll


async def test_a_plugin_whose_hook_raises_leaves_the_pool_polling(
    fast: dict[str, Any], marks: Marks, caplog: pytest.LogCaptureFixture
) -> None:
    async with pair(fast, BrokenPlugin()) as (worker, other):
        waits, _ = register(worker, marks)
        with caplog.at_level(logging.ERROR, "bgcoor.plugins"):
            async with worker.worker(2):
                told = await cancel_while_running(worker, other, marks, waits, timeout=2.0)
    assert told.after < BOUND
    assert "hook bgcoor_cancel_signals raised; cancels are found by polling" in caplog.text
