"""``result()`` on Redis is told when a task finishes (issue 16): the final record's write
publishes it, the waiter subscribed first. The safety-net look at the record is set to a
minute here, so a waiter that was not told would time out instead of passing."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aredis
from bgcoor_redis import RedisBackend
from redis.exceptions import ConnectionError as RedisConnectionError

from bgcoor_core import (
    Executor,
    ResultTimeoutError,
    TaskCancelledError,
    TaskManager,
    TaskStatus,
)

pytestmark = pytest.mark.server

Q = "default"


def _manager(redis_url: str) -> TaskManager:
    url = f"{redis_url}&result_safety_poll=60"
    return TaskManager(broker_url=url, storage_url=url, result_ttl=60)


def _backend(manager: TaskManager) -> RedisBackend:
    backend = manager.storage
    assert isinstance(backend, RedisBackend)
    return backend


async def _subscribed(raw: aredis.Redis, channel: str, count: int) -> None:
    """Until ``channel`` has ``count`` subscribers (the waiter is listening)."""
    for _ in range(500):
        [(_, subscribers)] = await raw.pubsub_numsub(channel)
        if subscribers == count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{channel} never had {count} subscribers")


async def _run_one(manager: TaskManager) -> None:
    backend = _backend(manager)
    [reservation] = await backend.reserve([Q], lease=30, timeout=5)
    await Executor(backend, backend, manager.registry, manager.settings).execute(reservation)


async def test_a_waiter_is_told_the_outcome_without_polling(
    redis_url: str, raw: aredis.Redis
) -> None:
    manager = _manager(redis_url)

    @manager.task(name="double")
    async def double(x: int) -> int:
        return 2 * x

    handle = await double.enqueue(21)
    waiter = asyncio.ensure_future(handle.result(timeout=20))
    backend = _backend(manager)
    channel = backend.key("done", handle.id)
    await _subscribed(raw, channel, 1)
    looks = backend.link().commands
    await _run_one(manager)
    assert await asyncio.wait_for(waiter, 10) == 42
    assert backend.link().subscriber.notices == 1
    # nothing more than the reserve and the outcome + ack scripts: the waiter, which had
    # read the record before the task ran, did not look again
    assert backend.link().commands - looks == 2
    await _subscribed(raw, channel, 0)  # unsubscribed once it had its answer
    await manager.close()


async def test_an_already_finished_task_is_read_at_once(redis_url: str) -> None:
    manager = _manager(redis_url)

    @manager.task(name="hello")
    async def hello() -> str:
        return "hi"

    handle = await hello.enqueue()
    await _run_one(manager)
    assert await asyncio.wait_for(handle.result(timeout=20), 5) == "hi"
    assert _backend(manager).link().subscriber.notices == 0
    await manager.close()


async def test_several_waiters_of_one_task_and_a_cancel(redis_url: str, raw: aredis.Redis) -> None:
    manager = _manager(redis_url)

    @manager.task(name="never")
    async def never() -> None:
        return None

    handle = await never.enqueue()
    waiters = [asyncio.ensure_future(handle.result(timeout=20)) for _ in range(3)]
    channel = _backend(manager).key("done", handle.id)
    await _subscribed(raw, channel, 1)  # one subscription carries all three
    assert await manager.cancel(handle.id)  # a final write too: cancelled
    for waiter in waiters:
        with pytest.raises(TaskCancelledError):
            await asyncio.wait_for(waiter, 10)
    await _subscribed(raw, channel, 0)
    await manager.close()


async def test_a_timeout_still_raises_and_unsubscribes(redis_url: str, raw: aredis.Redis) -> None:
    manager = _manager(redis_url)

    @manager.task(name="slow")
    async def slow() -> None:
        return None

    handle = await slow.enqueue()
    with pytest.raises(ResultTimeoutError):
        await handle.result(timeout=0.2)
    await _subscribed(raw, _backend(manager).key("done", handle.id), 0)
    await manager.close()


async def test_a_lost_notice_connection_is_made_again(redis_url: str, raw: aredis.Redis) -> None:
    manager = _manager(redis_url)

    @manager.task(name="double")
    async def double(x: int) -> int:
        return 2 * x

    handle = await double.enqueue(4)
    waiter = asyncio.ensure_future(handle.result(timeout=20))
    channel = _backend(manager).key("done", handle.id)
    await _subscribed(raw, channel, 1)
    await raw.client_kill_filter(_type="pubsub")  # the server drops the subscription
    await _subscribed(raw, channel, 1)  # the waiter subscribed again on a new connection
    await _run_one(manager)
    assert await asyncio.wait_for(waiter, 10) == 8
    await manager.close()


async def test_without_notices_the_waiter_polls(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = TaskManager(broker_url=redis_url, storage_url=redis_url, result_ttl=60)

    @manager.task(name="double")
    async def double(x: int) -> int:
        return 2 * x

    async def refused(channel: bytes) -> asyncio.Future[bytes]:
        raise RedisConnectionError("no subscriptions here")

    subscriber = _backend(manager).link().subscriber
    monkeypatch.setattr(subscriber, "watch", refused)
    handle = await double.enqueue(5)
    waiter = asyncio.ensure_future(handle.result(timeout=20))
    await asyncio.sleep(0.05)
    await _run_one(manager)
    assert await asyncio.wait_for(waiter, 10) == 10
    record = await manager.get(handle.id)
    assert record.status is TaskStatus.SUCCEEDED
    assert subscriber.notices == 0
    await manager.close()
