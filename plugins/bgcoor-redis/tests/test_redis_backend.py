"""Redis specifics beyond the shared conformance suite (which tests/test_conformance.py runs
for the ``redis`` scheme): one object for both roles, namespaces, blocking and cancelled
reserves, round trips per task, TTL index cleanup, migrations, TLS and secrets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aredis
from bgcoor_redis import RedisBackend
from redis.exceptions import ConnectionError as RedisConnectionError
from redis_servers import RedisServer, free_port, make_tls_files

from bgcoor_core import (
    AtomicCompletion,
    AtomicEnqueue,
    CapabilityError,
    ConfigurationError,
    Executor,
    MemoryStorage,
    Migratable,
    QueueStats,
    Task,
    TaskManager,
    TaskRegistry,
    TaskStatus,
    load_settings,
)
from bgcoor_core.testing import make_task, make_test_codec

pytestmark = pytest.mark.server

Q = "default"


def _with_prefix(url: str, prefix: str) -> str:
    return url.split("?", 1)[0] + f"?prefix={prefix}"


def _spy(backend: RedisBackend) -> list[str]:
    """Record the name of every script and command the backend sends."""
    sent: list[str] = []
    run, command = backend.run, backend.command

    async def spy_run(name: str, *args: Any) -> Any:
        sent.append(name)
        return await run(name, *args)

    async def spy_command(*args: Any) -> Any:
        sent.append(" ".join(map(str, args[:2])))
        return await command(*args)

    backend.run = spy_run  # type: ignore[method-assign]
    backend.command = spy_command  # type: ignore[method-assign]
    return sent


async def test_one_object_is_broker_and_storage(redis_url: str) -> None:
    manager = TaskManager(broker_url=redis_url, storage_url=redis_url)
    backend = manager.broker
    assert backend is manager.storage
    assert isinstance(backend, RedisBackend)
    for protocol in (AtomicCompletion, AtomicEnqueue, Migratable):
        assert isinstance(backend, protocol)
    same_namespace = RedisBackend(redis_url)
    assert backend.shares_store_with(backend)
    assert backend.shares_store_with(same_namespace)  # another object on the same keys
    assert not backend.shares_store_with(RedisBackend(_with_prefix(redis_url, "elsewhere")))
    assert not backend.shares_store_with(MemoryStorage())
    await manager.close()


async def test_prefixes_are_separate_namespaces(redis_url: str, backend: RedisBackend) -> None:
    other = RedisBackend(_with_prefix(redis_url, backend.prefix + "-other"), make_test_codec())
    task = make_task()
    await backend.enqueue_atomically([task], [backend.to_message(task)])
    assert await other.reserve([Q], lease=30) == []
    assert await other.stats(Q) == QueueStats()
    assert await other.get(task.id) is None
    assert sum((await other.counts()).values()) == 0
    client = aredis.Redis.from_url(redis_url.split("?")[0])
    keys = [key.decode() async for key in client.scan_iter(match=f"{backend.prefix}:*")]
    assert keys
    assert all(key.startswith(backend.prefix + ":") for key in keys)
    await client.aclose()
    await other.close()


async def test_priority_outside_the_supported_range_is_refused(backend: RedisBackend) -> None:
    with pytest.raises(CapabilityError, match="from -1000 to 1000"):
        await backend.push_many([make_task(), make_task(priority=1001)])
    assert await backend.queue_length(Q) == 0
    await backend.push(make_task(priority=-1000))
    assert await backend.queue_length(Q) == 1


async def test_idle_reserve_blocks_on_the_server_without_polling(backend: RedisBackend) -> None:
    await backend.queues()  # connected, and the server's eviction policy checked
    link = backend.link()
    commands, exchanges = link.commands, link.blocking.exchanges
    started = time.monotonic()
    assert await backend.reserve([Q, "other"], lease=30, timeout=1.0) == []
    assert time.monotonic() - started >= 0.95
    # One look, then one blocking wait on the server for the whole second.
    assert link.commands - commands == 1
    assert link.blocking.exchanges - exchanges == 1
    # Knowing the queues empty, the next reserve blocks at once: a short first wait (which
    # learns that nothing falls due), then one for the rest.
    assert await backend.reserve([Q, "other"], lease=30, timeout=0.3) == []
    assert link.commands - commands == 1
    assert link.blocking.exchanges - exchanges == 3


async def test_idle_consumer_wakes_within_milliseconds(
    redis_url: str, backend: RedisBackend, wait_blocked: Callable[..., Any]
) -> None:
    producer = RedisBackend(redis_url, make_test_codec())  # its own connections
    waiter = asyncio.create_task(backend.reserve(["other", Q], lease=30, timeout=10))
    await wait_blocked(backend)
    task = make_task()
    pushed = time.monotonic()
    await producer.push(task)
    [reservation] = await waiter
    assert time.monotonic() - pushed < 0.25
    assert reservation.task == task
    await producer.close()


@pytest.fixture
def wait_blocked() -> Callable[..., Any]:
    async def wait(backend: RedisBackend, count: int = 1) -> None:
        async with asyncio.timeout(5):
            while backend.link().blocking.waiting < count:  # noqa: ASYNC110 - no event
                await asyncio.sleep(0.001)  # says "the server blocked us"

    return wait


async def test_cancelled_reserve_hands_back_what_it_reserved(redis_url: str) -> None:
    backend = RedisBackend(redis_url, make_test_codec())
    task = make_task()
    await backend.push(task)
    sent = _spy(backend)
    reserving = asyncio.create_task(backend.reserve([Q], lease=30, timeout=0))
    await asyncio.sleep(0)  # the reserve script is on its way...
    reserving.cancel()  # ...and its caller goes away
    with pytest.raises(asyncio.CancelledError):
        await reserving
    await backend.close()  # waits for the hand-back
    assert sent == ["reserve", "release"]
    await _assert_ready_as_new(redis_url, task)


@pytest.mark.parametrize("ticks", [0, 1, 2, 3, 5, 8, 13])
async def test_reserve_cancelled_at_any_point_loses_nothing(redis_url: str, ticks: int) -> None:
    backend = RedisBackend(redis_url, make_test_codec())
    task = make_task()
    await backend.push(task)
    reserving = asyncio.create_task(backend.reserve([Q], lease=30, timeout=5))
    for _ in range(ticks):
        await asyncio.sleep(0)
    reserving.cancel()
    got = None
    with contextlib.suppress(asyncio.CancelledError):
        got = await reserving  # it completed before the cancel landed: the caller has it
    await backend.close()
    if got is None:
        await _assert_ready_as_new(redis_url, task)
    else:
        assert [r.task for r in got] == [task]


async def _assert_ready_as_new(redis_url: str, task: Task) -> None:
    fresh = RedisBackend(redis_url, make_test_codec())
    assert await fresh.stats(Q) == QueueStats(ready=1)
    [again] = await fresh.reserve([Q], lease=30)
    assert (again.task, again.deliveries, again.lost) == (task, 1, 0)
    await fresh.close()


async def test_cancelled_blocking_reserve_is_cut_short(
    redis_url: str, wait_blocked: Callable[..., Any]
) -> None:
    backend = RedisBackend(redis_url, make_test_codec())
    sent = _spy(backend)
    reserving = asyncio.create_task(backend.reserve([Q], lease=30, timeout=30))
    await wait_blocked(backend)
    reserving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reserving
    started = time.monotonic()
    await backend.close()
    assert time.monotonic() - started < 1.0, "close waited out the blocking call"
    assert any(s.startswith("CLIENT UNBLOCK") for s in sent)
    producer = RedisBackend(redis_url, make_test_codec())
    task = make_task()
    await producer.push(task)
    [got] = await producer.reserve([Q], lease=30, timeout=2)
    assert (got.task, got.deliveries) == (task, 1)
    await producer.close()


async def test_round_trips_in_one_tasks_life(redis_url: str) -> None:
    manager = TaskManager(broker_url=redis_url, storage_url=redis_url, result_ttl=60)

    @manager.task(name="double")
    async def double(x: int) -> int:
        return 2 * x

    backend = manager.broker
    assert isinstance(backend, RedisBackend)
    await backend.queues()  # connected, and the server's eviction policy checked
    link = backend.link()

    def trips() -> int:
        return link.round_trips

    before = trips()
    handle = await double.enqueue(21)
    assert trips() - before == 1  # records + message: one script
    executor = Executor(backend, manager.storage, manager.registry, manager.settings)
    before = trips()
    [reservation] = await backend.reserve([Q], lease=30)
    assert trips() - before == 1
    before, commands = trips(), link.commands
    assert reservation.started  # the reserve script marked the record running
    await executor.execute(reservation)  # run, store outcome + ack
    assert (trips() - before, link.commands - commands) == (1, 1)
    assert await handle.result(timeout=1) == 42
    await manager.close()


async def test_concurrent_tasks_share_round_trips(redis_url: str) -> None:
    manager = TaskManager(broker_url=redis_url, storage_url=redis_url, result_ttl=60)
    done = asyncio.Event()
    count = 0

    @manager.task(name="tick")
    async def tick() -> None:
        nonlocal count
        count += 1
        if count == 200:
            done.set()

    await tick.enqueue_many([() for _ in range(200)])
    backend = manager.broker
    assert isinstance(backend, RedisBackend)
    link = backend.link()
    before = link.round_trips, link.commands
    async with manager.worker(concurrency=100):
        await asyncio.wait_for(done.wait(), 10)
        await _wait_for_counts(manager, TaskStatus.SUCCEEDED, 200)
    batches, commands = link.round_trips - before[0], link.commands - before[1]
    # 1 command per task (outcome + ack) plus a few batch reserves, sent together: far
    # fewer round trips than tasks.
    assert commands < 200 + 60
    assert batches < 200 / 2
    await manager.close()


def _runner(manager: TaskManager, ran: list[int]) -> Executor:
    @manager.task(name="note")
    async def note(x: int) -> int:
        ran.append(x)
        return x

    return Executor(manager.broker, manager.storage, manager.registry, manager.settings)


async def test_a_started_task_completes_after_the_server_lost_its_scripts(
    private_server: Callable[..., RedisServer],
) -> None:
    url = private_server().url
    manager = TaskManager(broker_url=url, storage_url=url)
    ran: list[int] = []
    executor = _runner(manager, ran)
    handle = await manager.enqueue("note", 1)
    [reservation] = await manager.broker.reserve([Q], lease=30)
    await manager.broker.command("SCRIPT", "FLUSH")  # as after a restart
    await executor.execute(reservation)
    assert ran == [1]
    assert await handle.result(timeout=1) == 1
    assert await manager.broker.stats(Q) == QueueStats()
    await manager.close()


async def test_task_settled_before_its_delivery_does_not_run(redis_url: str) -> None:
    manager = TaskManager(broker_url=redis_url, storage_url=redis_url)
    ran: list[int] = []
    executor = _runner(manager, ran)
    handle = await manager.enqueue("note", 1)
    await manager.cancel(handle.id)  # before a worker reserves it: not started
    [reservation] = await manager.broker.reserve([Q], lease=30)
    await executor.execute(reservation)
    assert ran == []
    assert (await manager.get(handle.id)).status is TaskStatus.CANCELLED
    assert await manager.broker.stats(Q) == QueueStats()
    await manager.close()


async def test_cancel_after_the_reserve_started_it_drops_the_outcome(redis_url: str) -> None:
    manager = TaskManager(broker_url=redis_url, storage_url=redis_url)
    ran: list[int] = []
    executor = _runner(manager, ran)
    handle = await manager.enqueue("note", 1)
    [reservation] = await manager.broker.reserve([Q], lease=30)
    assert reservation.started
    await manager.cancel(handle.id)  # after the reserve marked it running
    await executor.execute(reservation)
    assert ran == [1]  # as for a cancel while it runs: it ran, its outcome is refused
    assert (await manager.get(handle.id)).status is TaskStatus.CANCELLED
    assert await manager.broker.stats(Q) == QueueStats()
    await manager.close()


async def test_records_a_reserve_started_read_as_running(redis_url: str) -> None:
    backend = RedisBackend(redis_url, make_test_codec())
    task = make_task(payload={"big": 2**70, "x": 0.1}, attempts=1)
    other = make_task()
    await backend.enqueue_atomically([task, other], [backend.to_message(task)])
    [reservation] = await backend.reserve([Q], lease=30)
    assert reservation.started
    stored = await backend.get(task.id)
    assert stored is not None
    assert (stored.status, stored.attempts, stored.lease_token, stored.payload) == (
        TaskStatus.RUNNING,
        2,
        reservation.token,
        task.payload,  # the JSON is never rewritten by Lua: big integers stay exact
    )
    assert stored.started_at is not None
    assert await backend.list(status=TaskStatus.RUNNING) == [stored]
    assert await backend.list() == sorted([stored, other], key=lambda t: t.id)
    assert (await backend.counts())[TaskStatus.RUNNING] == 1
    await backend.close()


@pytest.mark.parametrize("how", ["nack", "release"])
async def test_a_hand_back_undoes_the_running_mark(redis_url: str, how: str) -> None:
    backend = RedisBackend(redis_url, make_test_codec())
    task = make_task()
    await backend.enqueue_atomically([task], [backend.to_message(task)])
    [reservation] = await backend.reserve([Q], lease=30)
    assert reservation.started
    if how == "nack":  # the executor's hand-back, e.g. at a forced shutdown
        await backend.nack(reservation)
    else:  # what a reserve cancelled while its script ran hands back
        await backend.run("release", task.id, reservation.token)
    assert await backend.get(task.id) == task  # pending again, as enqueued
    assert (await backend.counts())[TaskStatus.RUNNING] == 0
    [again] = await backend.reserve([Q], lease=30)
    assert again.started
    assert again.deliveries == 1 + (how == "nack")
    await backend.close()


async def test_a_server_that_evicts_any_key_is_refused(
    private_server: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    evicting = private_server(config=("--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"))
    backend = RedisBackend(evicting.url, make_test_codec())
    for _ in range(2):  # every call, not only the first
        with pytest.raises(ConfigurationError, match="maxmemory-policy allkeys-lru"):
            await backend.push(make_task())
    await backend.close()
    volatile = private_server(config=("--maxmemory-policy", "volatile-lru"))
    backend = RedisBackend(volatile.url, make_test_codec())
    await backend.push(make_task())
    assert await backend.queue_length(Q) == 1
    assert "may evict finished tasks' records" in caplog.text
    await backend.close()


async def test_several_pipelines_share_the_load(redis_url: str) -> None:
    backend = RedisBackend(redis_url + "&pipelines=3", make_test_codec())
    tasks = [make_task() for _ in range(30)]
    await asyncio.gather(*(backend.save(task) for task in tasks))
    assert [channel.batches > 0 for channel in backend.link().channels] == [True] * 3
    assert (await backend.counts())[TaskStatus.PENDING] == 30
    assert [t.id for t in await backend.list()] == sorted(t.id for t in tasks)
    await backend.close()


async def _wait_for_counts(manager: TaskManager, status: TaskStatus, count: int) -> None:
    async with asyncio.timeout(10):
        while (await manager.storage.counts())[status] < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # no event: outcomes are stored after the handlers ran


async def test_retry_dead_letter_and_requeue_end_to_end(redis_url: str) -> None:
    manager = TaskManager(
        broker_url=redis_url, storage_url=redis_url, retry_backoff=0.01, retry_backoff_max=0.02
    )
    calls: list[int] = []

    @manager.task(name="flaky", max_retries=1)
    async def flaky(n: int) -> int:
        calls.append(n)
        if len(calls) <= 2:
            raise ValueError(f"attempt {len(calls)}")
        return n

    handle = await flaky.enqueue(7)
    async with manager.worker(concurrency=2):
        with pytest.raises(Exception, match="attempt 2"):
            await handle.result(timeout=5)
    record = await manager.get(handle.id)
    assert (record.status, record.attempts) == (TaskStatus.DEAD, 2)
    [letter] = await manager.broker.dead_letters(Q)
    assert letter.id == handle.id
    assert "max_retries" in letter.reason
    assert await manager.requeue_dead(Q) == [handle.id]
    async with manager.worker(concurrency=2):
        assert await handle.result(timeout=5) == 7
    assert calls == [7, 7, 7]
    await manager.close()


async def test_expired_record_leaves_no_index_entries(backend: RedisBackend) -> None:
    task = make_task(status=TaskStatus.SUCCEEDED)
    await backend.save(task, ttl=0.05)
    await asyncio.sleep(0.15)  # Redis drops the hash; no cleanup has run yet
    reborn = task.model_copy(update={"status": TaskStatus.PENDING})
    await backend.save(reborn)  # the same id again, without a TTL
    counts = await backend.counts()
    assert (counts[TaskStatus.PENDING], counts[TaskStatus.SUCCEEDED]) == (1, 0)
    assert await backend.list() == [reborn]
    assert await backend.list(status=TaskStatus.SUCCEEDED) == []
    assert await backend.delete_expired() == 0
    assert await backend.get(task.id) == reborn


async def test_migrate_records_the_layout_and_refuses_a_newer_one(backend: RedisBackend) -> None:
    [line] = await backend.migrate()
    assert "key layout version 1" in line
    assert await backend.migrate() == []
    await backend.command("SET", backend.key("layout"), 2)
    with pytest.raises(ConfigurationError, match="newer"):
        await backend.migrate()


async def test_unreachable_server_error_hides_the_password() -> None:
    backend = RedisBackend(f"redis://user:hunter2@127.0.0.1:{free_port()}/0")
    with pytest.raises(RedisConnectionError) as caught:
        await backend.push(make_task())
    assert "hunter2" not in str(caught.value)
    await backend.close()


async def test_sync_and_async_callers_share_one_backend(redis_url: str) -> None:
    manager = TaskManager(broker_url=redis_url, storage_url=redis_url)

    @manager.task(name="echo")
    async def echo(x: int) -> int:
        return x

    handle = await asyncio.to_thread(echo.enqueue_sync, 5)  # the sync API's own loop
    async with manager.worker(concurrency=1):
        assert await handle.result(timeout=5) == 5
    await manager.close()
    manager.close_sync()


async def test_tls(private_server: Callable[..., RedisServer], tmp_path: Any) -> None:
    tls = make_tls_files(tmp_path / "tls")
    server = private_server(tls=tls)
    backend = RedisBackend(f"{server.url}?ssl_ca_certs={tls.ca}", make_test_codec())
    task = make_task()
    await backend.push(task)
    [reservation] = await backend.reserve([Q], lease=30)
    await backend.complete(
        reservation, task.model_copy(update={"status": TaskStatus.RUNNING}), ttl=None
    )
    assert await backend.get(task.id) is not None
    await backend.close()
    untrusted = RedisBackend(server.url)  # the test CA is not trusted
    with pytest.raises(RedisConnectionError):
        await untrusted.push(make_task())
    await untrusted.close()


def test_settings_accept_redis_urls(redis_url: str) -> None:
    settings = load_settings(broker_url=redis_url, storage_url=redis_url)
    assert settings.broker_url == redis_url
    assert TaskRegistry().names() == []
