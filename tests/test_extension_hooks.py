"""The extension points of issue 11: wrappers on every hook, headers added at enqueue,
execution wrappers in the task's own context, ``current_task()``, worker services."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Generator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bgcoor_core import (
    CurrentTask,
    Retry,
    ServiceRegistry,
    Task,
    TaskManager,
    TaskRegistry,
    TaskStatus,
    WorkerPool,
    current_task,
    hookimpl,
)

TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="-")


def test_current_task_outside_a_task_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="outside a running bg-coor task"):
        current_task()


async def test_wrapper_implementations_run_on_lifecycle_and_register_hooks(
    fast: dict[str, Any],
) -> None:
    """Regression: wrappers passed check_pending() and were then silently skipped."""
    seen: list[str] = []

    class Wrapping:
        @hookimpl(wrapper=True)
        def bgcoor_task_succeeded(self, task: Task) -> Generator[None, None, None]:
            seen.append(f"before {task.name}")
            yield
            seen.append(f"after {task.name}")

        @hookimpl
        def bgcoor_task_succeeded_plain(self) -> None:  # not a hook: ignored by pluggy
            pass

        @hookimpl(hookwrapper=True)
        def bgcoor_register_tasks(self, tasks: TaskRegistry) -> Generator[None, Any, None]:
            yield
            seen.append(f"registered {sorted(tasks.names())}")

    class Observer:
        @hookimpl
        def bgcoor_task_succeeded(self, task: Task) -> None:
            seen.append("observed")

    del Wrapping.bgcoor_task_succeeded_plain
    manager = TaskManager(plugins=[Wrapping(), Observer()], **fast)

    @manager.task(name="jobs.one")
    def one() -> int:
        return 1

    await one.enqueue()
    await manager.drain(raise_errors=True)
    await manager.close()
    assert seen[0].startswith("registered")
    assert seen[1:] == ["before jobs.one", "observed", "after jobs.one"]


async def test_headers_added_at_enqueue_reach_the_record_and_the_running_task(
    fast: dict[str, Any],
) -> None:
    class Stamp:
        @hookimpl
        def bgcoor_before_enqueue(self, task: Task) -> None:
            task.headers["deploy"] = "v42"

    manager = TaskManager(plugins=[Stamp()], **fast)
    seen: list[tuple[str, dict[str, str], int]] = []

    @manager.task(name="jobs.async_seen")
    async def async_seen() -> None:
        me = current_task()
        seen.append((me.name, dict(me.headers), me.attempt))

    @manager.task(name="jobs.sync_seen")
    def sync_seen() -> None:  # runs in a worker thread
        me = current_task()
        seen.append((me.name, dict(me.headers), me.attempt))

    first = await async_seen.enqueue()
    await sync_seen.enqueue()
    await manager.drain(raise_errors=True)
    assert sorted(seen) == [
        ("jobs.async_seen", {"deploy": "v42"}, 1),
        ("jobs.sync_seen", {"deploy": "v42"}, 1),
    ]
    assert (await manager.get(first.id)).headers == {"deploy": "v42"}
    await manager.close()


async def test_an_enqueue_hook_that_raises_is_logged_and_the_task_still_goes(
    fast: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        @hookimpl
        def bgcoor_before_enqueue(self, task: Task) -> None:
            raise RuntimeError("header plugin bug")

    manager = TaskManager(plugins=[Broken()], **fast)

    @manager.task(name="jobs.two")
    def two() -> int:
        return 2

    handle = await two.enqueue()
    await manager.drain(raise_errors=True)
    assert await handle.result(timeout=1) == 2
    assert "bgcoor_before_enqueue raised" in caplog.text
    await manager.close()


class Timing:
    """An execution wrapper: sets a context variable the task sees, records the outcome."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[str, Any, str | None]] = []

    @hookimpl
    def bgcoor_wrap_execution(
        self, current: CurrentTask
    ) -> contextlib.AbstractContextManager[None]:
        return self._around(current)

    @contextlib.contextmanager
    def _around(self, current: CurrentTask) -> Iterator[None]:
        token = TENANT.set(current.headers.get("tenant", "none"))
        try:
            yield
        finally:
            TENANT.reset(token)
            error = type(current.error).__name__ if current.error else None
            self.outcomes.append((current.name, current.result, error))


class AsyncWrap:
    def __init__(self) -> None:
        self.entered = 0

    @hookimpl
    def bgcoor_wrap_execution(
        self, current: CurrentTask
    ) -> contextlib.AbstractAsyncContextManager[None] | None:
        return None if current.name == "jobs.fails" else self._around()

    @contextlib.asynccontextmanager
    async def _around(self) -> AsyncIterator[None]:
        self.entered += 1
        await asyncio.sleep(0)
        yield


async def test_execution_wrappers_run_in_the_tasks_context_and_see_the_outcome(
    fast: dict[str, Any],
) -> None:
    timing, async_wrap = Timing(), AsyncWrap()
    manager = TaskManager(plugins=[timing, async_wrap], **fast, max_retries=0)

    @manager.task(name="jobs.tenant_async")
    async def tenant_async() -> str:
        return TENANT.get()

    @manager.task(name="jobs.tenant_sync")
    def tenant_sync() -> str:
        return TENANT.get()

    @manager.task(name="jobs.fails")
    def fails() -> None:
        raise ValueError("nope")

    a = await tenant_async.options(headers={"tenant": "t-42"}).enqueue()
    s = await tenant_sync.options(headers={"tenant": "t-7"}).enqueue()
    await fails.enqueue()
    await manager.drain()
    assert await a.result(timeout=1) == "t-42"
    assert await s.result(timeout=1) == "t-7"
    assert sorted(timing.outcomes, key=str) == sorted(
        [
            ("jobs.tenant_async", "t-42", None),
            ("jobs.tenant_sync", "t-7", None),
            ("jobs.fails", None, "ValueError"),
        ],
        key=str,
    )
    assert async_wrap.entered == 2
    assert TENANT.get() == "-"  # reset: nothing leaks out of the task
    await manager.close()


async def test_retry_from_inside_a_task_waits_and_counts_attempts(fast: dict[str, Any]) -> None:
    manager = TaskManager(**fast)
    runs: list[float] = []

    @manager.task(name="jobs.later", max_retries=2)
    async def later() -> str:
        runs.append(asyncio.get_running_loop().time())
        if len(runs) < 3:
            raise Retry("not yet", after=timedelta(seconds=0.2))
        return "done"

    @manager.task(name="jobs.never", max_retries=1)
    async def never() -> None:
        raise Retry(after=0)

    ok = await later.enqueue()
    bad = await never.enqueue()
    async with manager.worker(concurrency=2):
        assert await ok.result(timeout=5) == "done"
        record = await manager.storage.wait(bad.id, timeout=5)
    assert len(runs) == 3
    assert runs[1] - runs[0] >= 0.18
    assert (await manager.get(ok.id)).attempts == 3
    assert record.status is TaskStatus.DEAD
    assert record.attempts == 2
    assert "max_retries exceeded" in (record.error or "") or "retry" in (record.error or "")


def test_retry_refuses_a_delay_out_of_range() -> None:
    with pytest.raises(ValueError, match="Retry"):
        Retry(after=-1)
    with pytest.raises(ValueError, match="Retry"):
        Retry(after=float("inf"))


async def test_a_task_not_started_before_it_expires_is_never_run(fast: dict[str, Any]) -> None:
    manager = TaskManager(**fast)
    runs: list[int] = []

    @manager.task(name="jobs.stale")
    def stale(n: int) -> None:
        runs.append(n)

    expired = stale.build((1,), {}).model_copy(
        update={"expires": datetime.now(UTC) - timedelta(seconds=1)}
    )
    fresh = stale.build((2,), {}).model_copy(
        update={"expires": datetime.now(UTC) + timedelta(hours=1)}
    )
    await manager.submit_many([expired, fresh])
    await manager.drain()
    assert runs == [2]
    record = await manager.get(expired.id)
    assert record.status is TaskStatus.EXPIRED
    assert "expired: not started before" in (record.error or "")
    assert await manager.broker.queue_length("default") == 0
    await manager.close()


async def test_a_tasks_own_result_ttl_outlives_or_undercuts_the_setting(
    fast: dict[str, Any],
) -> None:
    manager = TaskManager(**fast)

    @manager.task(name="jobs.brief")
    def brief() -> int:
        return 1

    short = brief.build((), {}).model_copy(update={"result_ttl": 0.2})
    normal = brief.build((), {})
    await manager.submit_many([short, normal])
    await manager.drain()
    await asyncio.sleep(0.35)
    assert await manager.storage.get(short.id) is None
    assert await manager.storage.get(normal.id) is not None
    await manager.close()


async def test_worker_services_run_with_the_pool_and_are_restarted_on_failure(
    fast: dict[str, Any],
) -> None:
    events: list[str] = []

    async def heartbeat(pool: WorkerPool) -> None:
        events.append("start")
        if events.count("start") == 1:
            raise RuntimeError("first run fails")
        try:
            await asyncio.Event().wait()
        finally:
            events.append("stopped")

    class Services:
        @hookimpl
        def bgcoor_register_services(self, services: ServiceRegistry) -> None:
            services.add("heartbeat", heartbeat)

    manager = TaskManager(plugins=[Services()], **fast)
    async with manager.worker(concurrency=1):
        for _ in range(200):
            if events.count("start") == 2:
                break
            await asyncio.sleep(0.01)
        assert events == ["start", "start"]
    assert events == ["start", "start", "stopped"]
    await manager.close()
