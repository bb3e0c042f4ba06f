"""TaskManager: the front door. Decorate, enqueue, await results, drain, sync API."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from bgcoor_core import (
    InvalidNameError,
    NonRetryableError,
    PayloadError,
    PayloadTooLargeError,
    ResultTimeoutError,
    TaskCancelledError,
    TaskFailedError,
    TaskManager,
    TaskNotFoundError,
    TaskStatus,
    UnknownTaskError,
)

WaitUntil = Callable[..., Awaitable[None]]  # the wait_until fixture


async def nothing_enqueued(manager: TaskManager) -> bool:
    stats = await manager.broker.stats("default")
    counts = await manager.storage.counts()
    return stats == type(stats)() and not any(counts.values())


# -- decorating, enqueueing, results ---------------------------------------------------


async def test_async_task_enqueue_and_result(manager: TaskManager) -> None:
    @manager.task
    async def add(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x + y

    async with manager.worker(concurrency=2):
        handle = await add.enqueue(1, 2)
        assert await handle.result(timeout=5) == 3
    record = await handle.info()
    assert record.status is TaskStatus.SUCCEEDED
    assert record.attempts == 1
    assert record.name == add.name
    assert await handle.status() is TaskStatus.SUCCEEDED


async def test_sync_task_enqueue_and_result(manager: TaskManager) -> None:
    threads: list[str] = []

    @manager.task(max_retries=1, timeout=5)
    def multiply(x: int, y: int = 2) -> int:
        threads.append(threading.current_thread().name)
        return x * y

    async with manager.worker(concurrency=2):
        by_default = await multiply.enqueue(4)
        by_keyword = await multiply.enqueue(4, y=5)
        assert await by_default.result(timeout=5) == 8
        assert await by_keyword.result(timeout=5) == 20
    assert threading.current_thread().name not in threads
    assert (await by_default.info()).max_retries == 1
    assert (await by_default.info()).timeout == 5


async def test_decorated_functions_can_still_be_called_directly(manager: TaskManager) -> None:
    @manager.task
    def add(x: int, y: int) -> int:
        """Add two numbers."""
        return x + y

    @manager.task(name="math.add_async")
    async def add_async(x: int, y: int) -> int:
        return x + y

    assert add(2, 3) == 5
    assert await add_async(2, 3) == 5
    assert add.__doc__ == "Add two numbers."
    assert add_async.name == "math.add_async"
    assert add.name.endswith(".add")
    assert add.name in manager.registry


class Point(BaseModel):
    x: int
    y: int


async def test_results_are_decoded_to_the_annotated_return_type(manager: TaskManager) -> None:
    @manager.task
    async def later(at: datetime, by: timedelta) -> datetime:
        assert isinstance(at, datetime)  # arguments arrive as their annotated types
        assert isinstance(by, timedelta)
        return at + by

    @manager.task
    def flip(p: Point) -> Point:
        assert isinstance(p, Point)
        return Point(x=p.y, y=p.x)

    start = datetime(2024, 1, 31, 22, 30, tzinfo=UTC)
    when = await later.enqueue(start, timedelta(hours=3))
    flipped = await flip.enqueue(Point(x=1, y=2))
    await manager.drain(raise_errors=True)

    result = await when.result(timeout=5)
    assert isinstance(result, datetime)
    assert result == datetime(2024, 2, 1, 1, 30, tzinfo=UTC)
    assert result.tzinfo is not None
    point = await flipped.result(timeout=5)
    assert isinstance(point, Point)
    assert point == Point(x=2, y=1)
    # The record holds the datetime itself (tagged in its JSON), the model as its fields.
    assert (await when.info()).result == datetime(2024, 2, 1, 1, 30, tzinfo=UTC)
    assert (await flipped.info()).result == {"x": 2, "y": 1}


# -- validation in the caller ----------------------------------------------------------


async def test_arguments_are_validated_before_anything_is_enqueued(
    manager: TaskManager,
) -> None:
    calls = 0

    @manager.task
    def add(x: int, y: int) -> int:
        nonlocal calls
        calls += 1
        return x + y

    with pytest.raises(PayloadError, match="missing a required argument: 'y'"):
        await add.enqueue(1)  # type: ignore[call-arg]
    with pytest.raises(PayloadError, match="too many positional arguments"):
        await add.enqueue(1, 2, 3)  # type: ignore[call-arg]
    with pytest.raises(PayloadError, match="unexpected keyword argument 'z'"):
        await add.enqueue(1, 2, z=3)  # type: ignore[call-arg]
    with pytest.raises(PayloadError, match=r"argument 'x': .*valid integer"):
        await add.enqueue("one", 2)  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="argument 'y'"):
        await add.options(priority=1).enqueue(1, [2])  # type: ignore[arg-type]
    with pytest.raises(PayloadError):
        await manager.enqueue(add.name, 1)
    assert await nothing_enqueued(manager)
    assert await manager.drain() == 0
    assert calls == 0


async def test_unserialisable_payload_is_refused_at_enqueue(manager: TaskManager) -> None:
    @manager.task
    def keep(blob):  # type: ignore[no-untyped-def]  # deliberately unannotated: no validation
        return None

    with pytest.raises(PayloadError, match="cannot be serialised"):
        await keep.enqueue(object())
    with pytest.raises(PayloadError, match="cannot be serialised"):
        await keep.enqueue({"callback": print})
    assert await nothing_enqueued(manager)


async def test_payload_above_the_size_limit_is_refused(fast: dict[str, Any]) -> None:
    manager = TaskManager(**{**fast, "max_payload_bytes": 2048})

    @manager.task
    def keep(text: str) -> int:
        return len(text)

    try:
        with pytest.raises(PayloadTooLargeError, match="above the limit of 2048 bytes"):
            await keep.enqueue("x" * 5000)
        assert await nothing_enqueued(manager)
        small = await keep.enqueue("x" * 100)
        await manager.drain(raise_errors=True)
        assert await small.result(timeout=5) == 100
    finally:
        await manager.close()


# -- failure, cancellation, timeouts ---------------------------------------------------


async def test_result_of_a_dead_task_raises_with_the_traceback(manager: TaskManager) -> None:
    @manager.task(max_retries=0)
    async def explode() -> None:
        raise ValueError("kaboom")

    handle = await explode.enqueue()
    await manager.drain()
    with pytest.raises(TaskFailedError, match="ended dead: ValueError: kaboom") as info:
        await handle.result(timeout=5)
    error = info.value
    assert error.task_id == handle.id
    assert error.status == TaskStatus.DEAD
    assert error.error == "ValueError: kaboom"
    assert error.traceback is not None
    assert 'raise ValueError("kaboom")' in error.traceback
    assert "in explode" in error.traceback


async def test_result_of_a_failed_task_raises(manager: TaskManager) -> None:
    @manager.task(max_retries=5)
    def refuse() -> None:
        raise NonRetryableError("invalid card")

    handle = await refuse.enqueue()
    assert await manager.drain() == 1
    with pytest.raises(TaskFailedError, match="ended failed") as info:
        await handle.result(timeout=5)
    assert info.value.error == "NonRetryableError: invalid card"


async def test_result_of_a_cancelled_task_raises(manager: TaskManager) -> None:
    ran = False

    @manager.task
    async def never() -> None:
        nonlocal ran
        ran = True

    handle = await never.enqueue()
    assert await handle.cancel() is True
    assert await handle.cancel() is False  # already final
    with pytest.raises(TaskCancelledError):
        await handle.result(timeout=5)
    assert await manager.drain() == 1  # the message is consumed ...
    assert ran is False  # ... without running the function
    assert await handle.status() is TaskStatus.CANCELLED
    stats = await manager.broker.stats("default")
    assert (stats.ready, stats.reserved) == (0, 0)


async def test_cancelling_a_running_task_drops_its_outcome_and_its_message(
    fast: dict[str, Any], wait_until: WaitUntil
) -> None:
    manager = TaskManager(**{**fast, "lease_seconds": 30.0})
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    @manager.task
    async def slow() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return "done"

    try:
        async with manager.worker(concurrency=2):
            handle = await slow.enqueue()
            await started.wait()
            assert await handle.cancel() is True
            release.set()
            with pytest.raises(TaskCancelledError):
                await handle.result(timeout=5)

            async def message_gone() -> bool:
                stats = await manager.broker.stats("default")
                return (stats.ready, stats.scheduled, stats.reserved) == (0, 0, 0)

            # promptly: not only once the 30 s lease runs out
            await wait_until(message_gone, timeout=3.0, what="cancelled task acked")
        assert calls == 1
        assert await handle.status() is TaskStatus.CANCELLED
    finally:
        await manager.close()


async def test_result_timeout(manager: TaskManager) -> None:
    @manager.task
    def add(x: int, y: int) -> int:
        return x + y

    handle = await add.enqueue(1, 2)  # no worker runs it
    begun = time.monotonic()
    with pytest.raises(ResultTimeoutError):
        await handle.result(timeout=0.1)
    assert 0.05 <= time.monotonic() - begun < 2
    with pytest.raises(TimeoutError):  # a ResultTimeoutError is a TimeoutError
        await handle.result(timeout=0.01)


async def test_unknown_ids_and_names(manager: TaskManager) -> None:
    with pytest.raises(TaskNotFoundError, match="no-such-id"):
        await manager.get("no-such-id")
    with pytest.raises(UnknownTaskError, match=r"'not\.registered'"):
        await manager.enqueue("not.registered", 1)


# -- options ---------------------------------------------------------------------------


async def test_delay_holds_the_task_back(manager: TaskManager) -> None:
    @manager.task
    async def ping() -> str:
        return "pong"

    begun = time.monotonic()
    handle = await ping.options(delay=0.4).enqueue()
    record = await handle.info()
    assert record.status is TaskStatus.SCHEDULED
    assert record.eta is not None
    assert timedelta(seconds=0.3) < record.eta - record.created_at < timedelta(seconds=0.5)
    assert await manager.drain() == 0  # not before its eta
    assert (await manager.broker.stats("default")).scheduled == 1
    async with manager.worker():
        assert await handle.result(timeout=5) == "pong"
    assert time.monotonic() - begun >= 0.35


async def test_priority_runs_higher_first(manager: TaskManager) -> None:
    order: list[str] = []

    @manager.task
    def log(label: str) -> None:
        order.append(label)

    for label in ("low-1", "low-2"):
        await log.enqueue(label)
    await log.options(priority=5).enqueue("high")
    await log.options(priority=-5).enqueue("lowest")
    await log.enqueue("low-3")
    assert await manager.drain(raise_errors=True) == 5
    assert order == ["high", "low-1", "low-2", "low-3", "lowest"]


async def test_queue_option_routes_the_task(manager: TaskManager) -> None:
    @manager.task(queue="reports")
    def report(n: int) -> int:
        return n

    on_default = await report.options(queue="default").enqueue(1)
    on_reports = await report.enqueue(2)
    on_urgent = await report.options(queue="urgent").enqueue(3)
    assert (await on_reports.info()).queue == "reports"
    assert (await on_urgent.info()).queue == "urgent"
    assert await manager.drain() == 1
    assert await on_default.result(timeout=1) == 1
    assert await manager.drain(queues=["urgent", "reports"]) == 2
    assert await on_urgent.result(timeout=1) == 3
    with pytest.raises(InvalidNameError):
        await report.options(queue="bad queue").enqueue(4)


async def test_max_retries_and_timeout_options(manager: TaskManager) -> None:
    calls = 0

    @manager.task(max_retries=5)
    async def flaky() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(1)

    handle = await flaky.options(max_retries=0, timeout=0.05).enqueue()
    await manager.drain()
    with pytest.raises(TaskFailedError, match="TaskTimeoutError") as info:
        await handle.result(timeout=5)
    assert info.value.status == TaskStatus.DEAD
    assert calls == 1


async def test_enqueue_many(manager: TaskManager) -> None:
    @manager.task
    async def square(n: int) -> int:
        return n * n

    handles = await square.enqueue_many([(n,) for n in range(5)])
    assert len({h.id for h in handles}) == 5
    assert await manager.drain(raise_errors=True) == 5
    assert [await h.result(timeout=5) for h in handles] == [0, 1, 4, 9, 16]


async def test_enqueue_many_is_all_or_nothing(manager: TaskManager) -> None:
    @manager.task
    async def square(n: int) -> int:
        return n * n

    with pytest.raises(PayloadError, match="argument 'n'"):
        await square.enqueue_many([(1,), (2,), ("three",)])
    assert await nothing_enqueued(manager)


async def test_enqueue_by_name(manager: TaskManager) -> None:
    @manager.task(name="math.add", max_retries=7)
    def add(x: int, y: int) -> int:
        return x + y

    handle = await manager.enqueue("math.add", 20, y=22)
    assert (await handle.info()).max_retries == 7
    await manager.drain(raise_errors=True)
    assert await handle.result(timeout=5) == 42
    assert await manager.handle(handle.id).result(timeout=1) == 42


async def test_requeue_dead_runs_the_task_once_more(manager: TaskManager) -> None:
    calls = 0

    @manager.task(max_retries=1)
    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError(f"attempt {calls}")
        return f"worked on call {calls}"

    handle = await flaky.enqueue()
    async with manager.worker():
        with pytest.raises(TaskFailedError, match="attempt 2"):
            await handle.result(timeout=5)
    assert calls == 2
    letters = await manager.broker.dead_letters("default")
    assert [letter.id for letter in letters] == [handle.id]

    assert await manager.requeue_dead("default") == [handle.id]
    assert await handle.status() is TaskStatus.PENDING
    assert await manager.broker.dead_letters("default") == []
    async with manager.worker():
        assert await handle.result(timeout=5) == "worked on call 3"
    assert calls == 3
    assert (await handle.info()).error is None


async def test_requeue_dead_of_a_still_failing_task_gives_exactly_one_more_attempt(
    manager: TaskManager,
) -> None:
    calls = 0

    @manager.task(max_retries=2)
    def broken() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("still broken")

    handle = await broken.enqueue()
    async with manager.worker():
        with pytest.raises(TaskFailedError):
            await handle.result(timeout=5)
        assert calls == 3
        assert await manager.requeue_dead("default", [handle.id]) == [handle.id]
        with pytest.raises(TaskFailedError, match="still broken"):
            await handle.result(timeout=5)  # pending again, so this waits for the new end
    assert calls == 4
    assert await handle.status() is TaskStatus.DEAD
    assert [letter.id for letter in await manager.broker.dead_letters("default")] == [handle.id]


# -- drain -----------------------------------------------------------------------------


async def test_drain_runs_everything_enqueued(manager: TaskManager) -> None:
    seen: list[int] = []

    @manager.task
    def note(n: int) -> None:
        seen.append(n)

    @manager.task
    async def note_async(n: int) -> None:
        seen.append(n)

    for n in range(150):  # more than one reserve batch
        await (note if n % 2 else note_async).enqueue(n)
    assert await manager.drain() == 150
    assert sorted(seen) == list(range(150))
    assert await manager.drain() == 0
    counts = await manager.storage.counts()
    assert counts[TaskStatus.SUCCEEDED] == 150


async def test_drain_raise_errors_reraises_a_failure_in_the_test(manager: TaskManager) -> None:
    @manager.task
    def ok() -> int:
        return 1

    @manager.task(max_retries=3)
    def bad(n: int) -> None:
        raise KeyError(f"missing {n}")

    await ok.enqueue()
    await bad.enqueue(7)
    with pytest.raises(TaskFailedError, match="missing 7") as info:
        await manager.drain(raise_errors=True)
    assert info.value.traceback is not None
    assert "KeyError" in info.value.traceback


async def test_drain_without_raise_errors_swallows_failures(manager: TaskManager) -> None:
    @manager.task(max_retries=0)
    def bad() -> None:
        raise KeyError("x")

    handle = await bad.enqueue()
    assert await manager.drain() == 1
    assert await handle.status() is TaskStatus.DEAD


# -- the sync API ----------------------------------------------------------------------


@pytest.fixture
def sync_manager(fast: dict[str, Any]) -> Iterator[TaskManager]:
    manager = TaskManager(**fast)
    yield manager
    manager.close_sync()


def run_worker_in_thread(manager: TaskManager) -> tuple[threading.Thread, threading.Event]:
    """Run ``manager.worker()`` on its own event loop in another thread until told to stop."""
    ready, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        async with manager.worker(concurrency=2):
            ready.set()
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="worker-thread")
    thread.start()
    assert ready.wait(5), "worker did not start"
    return thread, stop


def test_sync_api_from_plain_code_with_a_worker_in_another_thread(
    sync_manager: TaskManager,
) -> None:
    @sync_manager.task
    def add(x: int, y: int) -> int:
        return x + y

    @sync_manager.task
    async def later(days: int) -> datetime:
        return datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=days)

    thread, stop = run_worker_in_thread(sync_manager)
    try:
        handle = add.enqueue_sync(2, 3)
        assert handle.result_sync(timeout=5) == 5
        assert later.enqueue_sync(31).result_sync(timeout=5) == datetime(2024, 2, 1, tzinfo=UTC)
        handles = [add.options(priority=1).enqueue_sync(i, i) for i in range(10)]
        assert [h.result_sync(timeout=5) for h in handles] == [2 * i for i in range(10)]
        with pytest.raises(PayloadError):
            add.enqueue_sync("two", 3)  # type: ignore[arg-type]
        with pytest.raises(ResultTimeoutError):
            add.options(delay=60).enqueue_sync(1, 1).result_sync(timeout=0.05)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_sync_api_from_many_threads(sync_manager: TaskManager) -> None:
    @sync_manager.task
    def double(n: int) -> int:
        return 2 * n

    thread, stop = run_worker_in_thread(sync_manager)
    results: dict[int, int] = {}

    def client(n: int) -> None:
        results[n] = double.enqueue_sync(n).result_sync(timeout=10)

    try:
        clients = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(15)
    finally:
        stop.set()
        thread.join(10)
    assert results == {n: 2 * n for n in range(8)}


async def test_sync_api_inside_a_running_loop_is_a_clear_error(manager: TaskManager) -> None:
    @manager.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(RuntimeError, match=r"running event loop.*await"):
        add.enqueue_sync(1, 2)
    with pytest.raises(RuntimeError, match="running event loop"):
        add.options(priority=1).enqueue_sync(1, 2)
    assert await nothing_enqueued(manager)
    handle = await add.enqueue(1, 2)
    with pytest.raises(RuntimeError, match="running event loop"):
        handle.result_sync(timeout=1)


def test_backends_are_built_once_under_concurrent_first_use(fast: dict[str, Any]) -> None:
    manager = TaskManager(**fast)
    start = threading.Barrier(8)
    seen: list[tuple[int, int]] = []

    def first_use() -> None:
        start.wait()
        seen.append((id(manager.broker), id(manager.storage)))

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(set(seen)) == 1  # one broker and one storage, shared by every thread
    finally:
        manager.close_sync()


async def test_enqueue_by_name_for_a_handler_object_takes_its_payload(
    manager: TaskManager,
) -> None:
    class Greeter:
        async def run(self, payload: dict[str, str]) -> str:
            return f"hello {payload['who']}"

    manager.registry.register("greet", Greeter())
    handle = await manager.enqueue("greet", {"who": "ada"})
    await manager.drain(raise_errors=True)
    assert await handle.result(timeout=1) == "hello ada"
    with pytest.raises(PayloadError, match="exactly one argument"):
        await manager.enqueue("greet", {"who": "ada"}, extra=1)
    assert await manager.broker.queue_length("default") == 0


async def test_cancel_interrupts_a_task_running_in_this_process_pool(
    fast: dict[str, Any], wait_until: WaitUntil
) -> None:
    """TaskManager.cancel reaches the in-process pool: the running coroutine gets
    CancelledError at once, instead of running on until it returns by itself."""
    manager = TaskManager(**{**fast, "lease_seconds": 30.0})
    started = asyncio.Event()
    interrupted = asyncio.Event()

    @manager.task
    async def endless() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            interrupted.set()
            raise

    try:
        async with manager.worker(concurrency=2) as pool:
            handle = await endless.enqueue()
            await started.wait()
            assert await handle.cancel() is True
            await asyncio.wait_for(interrupted.wait(), timeout=2.0)
            await wait_until(lambda: pool.processed == 1, timeout=3.0, what="slot freed")
        assert await handle.status() is TaskStatus.CANCELLED
    finally:
        await manager.close()
