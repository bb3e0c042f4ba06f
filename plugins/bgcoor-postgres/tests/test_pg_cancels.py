"""Cancel signals over PostgreSQL NOTIFY/LISTEN (issue 14, item 5): the plugin's
``bgcoor_cancel_signals`` hook, delivery to every listener of the schema (and nobody
else's), a LISTEN that comes back after its connection is terminated, and a worker pool
interrupting a task that another manager (another process, for all it knows) cancels.
Across real OS processes: ``tests/reliability/test_cancel_across_processes.py``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from bgcoor_postgres import PostgresBackend, parse_postgres_url
from bgcoor_postgres._cancels import PostgresCancelSignals

from bgcoor_core import MemoryBroker, MemoryStorage, TaskManager, TaskStatus, build_plugin_host
from bgcoor_core.testing import make_test_codec

pytestmark = pytest.mark.server


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
        deadline = time.monotonic() + timeout
        while len(self.ids) < count if what == "ids" else self.gaps < count:
            assert time.monotonic() < deadline, f"{what} never reached {count}"
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def listening(signals: PostgresCancelSignals) -> AsyncIterator[Heard]:
    heard = Heard()
    async with signals.subscribe(heard.cancel, heard.gap):
        await heard.until("gaps", 1)  # listening
        yield heard


def signals_of(backend: PostgresBackend) -> PostgresCancelSignals:
    signals = build_plugin_host().cancel_signals(backend, backend)
    assert isinstance(signals, PostgresCancelSignals)
    return signals


async def test_the_plugin_offers_notify_for_its_own_brokers_only(
    backend: PostgresBackend,
) -> None:
    signals = signals_of(backend)  # the bgcoor_cancel_signals hook
    assert signals.channel == f"{backend.target.schema}_cancel"
    codec = make_test_codec()
    assert build_plugin_host().cancel_signals(MemoryBroker(codec), MemoryStorage(codec)) is None


async def test_a_notified_id_reaches_every_listener_of_the_schema_only(
    backend: PostgresBackend, pg_url: Callable[..., str]
) -> None:
    elsewhere = PostgresBackend(backend.target, make_test_codec())  # another process's
    other_schema = PostgresBackend(parse_postgres_url(pg_url()), make_test_codec())
    try:
        async with (
            listening(signals_of(elsewhere)) as there,
            listening(signals_of(other_schema)) as unrelated,
        ):
            await signals_of(backend).publish("task-1")
            await there.until("ids", 1)
            await asyncio.sleep(0.1)
        assert there.ids == ["task-1"]
        assert unrelated.ids == []
    finally:
        await elsewhere.close()
        await other_schema.close()


async def test_a_listen_comes_back_after_its_connection_is_terminated(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    signals = signals_of(backend)
    async with listening(signals) as heard:
        statement = f'LISTEN "{signals.channel}"'
        killed = await raw.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = $1",
            statement,
        )
        assert killed == 1
        await heard.until("gaps", 2)  # listening again, and told the pool to look
        assert signals.subscriptions == 2
        await signals.publish("after")
        await heard.until("ids", 1)
    assert heard.ids == ["after"]


async def test_a_pool_interrupts_a_task_cancelled_by_another_manager(
    pg_url: Callable[..., str],
) -> None:
    url = pg_url()
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
