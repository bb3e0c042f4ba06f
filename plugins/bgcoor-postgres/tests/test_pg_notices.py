"""``result()`` on PostgreSQL is told when a task finishes (issue 16): the statement that
writes a record final sends ``pg_notify(<schema>_done, id)``, which the listener routes to
the waiters of that id. The safety-net read is set to a minute here, so a waiter that was
not told would time out instead of passing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from bgcoor_postgres import PostgresBackend

from bgcoor_core import (
    Executor,
    ResultTimeoutError,
    TaskCancelledError,
    TaskFailedError,
    TaskManager,
    chain,
)

pytestmark = pytest.mark.server

Q = "default"


def _manager(pg_url: Callable[..., str]) -> TaskManager:
    url = pg_url(result_safety_poll="60")
    return TaskManager(broker_url=url, storage_url=url)


def _backend(manager: TaskManager) -> PostgresBackend:
    backend = manager.storage
    assert isinstance(backend, PostgresBackend)
    return backend


async def _watched(backend: PostgresBackend, task_id: str, count: int) -> None:
    listener = backend._state().listener
    for _ in range(500):
        if len(listener._watchers.get(task_id, ())) == count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"task {task_id} never had {count} watchers")


async def _run_one(manager: TaskManager) -> None:
    backend = _backend(manager)
    [reservation] = await backend.reserve([Q], lease=30, timeout=5)
    await Executor(backend, backend, manager.registry, manager.settings).execute(reservation)


async def test_a_waiter_is_told_the_outcome_without_polling(pg_url: Callable[..., str]) -> None:
    manager = _manager(pg_url)

    @manager.task(name="double")
    async def double(x: int) -> int:
        return 2 * x

    handle = await double.enqueue(21)
    reads: list[str] = []
    backend = _backend(manager)
    get = backend.get

    async def counted(task_id: str) -> Any:
        reads.append(task_id)
        return await get(task_id)

    backend.get = counted  # type: ignore[method-assign]
    waiter = asyncio.ensure_future(handle.result(timeout=20))
    await _watched(backend, handle.id, 1)
    await _run_one(manager)
    assert await asyncio.wait_for(waiter, 10) == 42
    assert reads == [handle.id, handle.id]  # before the task ran, and once told
    await _watched(backend, handle.id, 0)
    await manager.close()


async def test_several_waiters_and_a_cancel(pg_url: Callable[..., str]) -> None:
    manager = _manager(pg_url)

    @manager.task(name="never")
    async def never() -> None:
        return None

    handle = await never.enqueue()
    waiters = [asyncio.ensure_future(handle.result(timeout=20)) for _ in range(3)]
    await _watched(_backend(manager), handle.id, 3)
    assert await manager.cancel(handle.id)  # a final write too: cancelled
    for waiter in waiters:
        with pytest.raises(TaskCancelledError):
            await asyncio.wait_for(waiter, 10)
    await _watched(_backend(manager), handle.id, 0)
    await manager.close()


async def test_a_timeout_still_raises_and_stops_watching(pg_url: Callable[..., str]) -> None:
    manager = _manager(pg_url)

    @manager.task(name="slow")
    async def slow() -> None:
        return None

    handle = await slow.enqueue()
    with pytest.raises(ResultTimeoutError):
        await handle.result(timeout=0.3)
    await _watched(_backend(manager), handle.id, 0)
    await manager.close()


async def test_a_lost_listen_connection_is_made_again(pg_url: Callable[..., str], raw: Any) -> None:
    manager = _manager(pg_url)

    @manager.task(name="double")
    async def double(x: int) -> int:
        return 2 * x

    handle = await double.enqueue(4)
    backend = _backend(manager)
    reads: list[str] = []
    get = backend.get

    async def counted(task_id: str) -> Any:
        reads.append(task_id)
        return await get(task_id)

    backend.get = counted  # type: ignore[method-assign]
    waiter = asyncio.ensure_future(handle.result(timeout=20))
    await _watched(backend, handle.id, 1)
    assert len(reads) == 1
    channel = backend.sql.done_channel
    killed = await raw.fetchval(  # the listening connection: its last query was LISTEN
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE query LIKE $1 AND pid <> pg_backend_pid()",
        f"LISTEN%{channel}%",
    )
    assert killed >= 1
    for _ in range(400):  # the waiter is told to look again, and watches on the new one
        if len(reads) >= 2 and backend._state().listener.connected:
            break
        await asyncio.sleep(0.01)
    assert len(reads) >= 2
    await _watched(backend, handle.id, 1)
    await _run_one(manager)
    assert await asyncio.wait_for(waiter, 10) == 8
    await manager.close()


async def test_members_a_failure_cancels_are_announced(pg_url: Callable[..., str]) -> None:
    """The workflow step rewrites the members a failure cancels (``_workflow_sql``): their
    waiters are told too, so the workflow's result (which waits for every member) comes
    at once rather than after the safety-net read."""
    manager = _manager(pg_url)

    @manager.task(name="boom", max_retries=0)
    async def boom() -> None:
        raise ValueError("no")

    @manager.task(name="after")
    async def after() -> str:
        return "never"

    flow = await chain(boom.s(), after.si(), after.si()).enqueue()
    async with manager.worker(4):
        with pytest.raises(TaskFailedError, match="no"):
            await asyncio.wait_for(flow.result(timeout=20), 10)
    await manager.close()
