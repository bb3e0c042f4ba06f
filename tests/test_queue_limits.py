"""Queue limits through the manager (issue 14, item 4): settings from the environment, the
``reject`` and ``wait`` policies, bulk enqueues all or nothing, and pairs that cannot
enforce a limit refused up front. The backends' own step is the QueueLimitContract's."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bgcoor_core import (
    Backends,
    CapabilityError,
    MemoryBroker,
    QueueFullError,
    SettingsError,
    TaskManager,
    TaskStatus,
    load_settings,
)
from bgcoor_core.backends.sqlite import SQLiteBackend
from bgcoor_core.testing import make_test_codec


def _manager(fast: dict[str, Any], **settings: Any) -> TaskManager:
    return TaskManager(**{**fast, "queue_limits": {"emails": 3}, **settings})


def test_limits_and_policy_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BGCOOR_QUEUE_LIMITS", '{"emails": 100000, "sms": 5}')
    monkeypatch.setenv("BGCOOR_QUEUE_FULL", "wait")
    monkeypatch.setenv("BGCOOR_QUEUE_FULL_TIMEOUT", "2.5")
    settings = load_settings()
    assert settings.queue_limits == {"emails": 100000, "sms": 5}
    assert (settings.queue_full, settings.queue_full_timeout) == ("wait", 2.5)


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("BGCOOR_QUEUE_LIMITS", '{"emails": 0}', "queue limit of 'emails'"),
        ("BGCOOR_QUEUE_LIMITS", '{"bad name!": 5}', "bad name!"),
        ("BGCOOR_QUEUE_LIMITS", "emails=5", "BGCOOR_QUEUE_LIMITS"),
        ("BGCOOR_QUEUE_FULL", "block", "BGCOOR_QUEUE_FULL"),
    ],
)
def test_bad_queue_limit_settings_name_the_problem(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=problem.replace("!", "!?")):
        load_settings()


async def test_a_full_queue_rejects_naming_queue_and_limit(fast: dict[str, Any]) -> None:
    manager = _manager(fast)

    @manager.task(name="jobs.mail", queue="emails")
    def mail(n: int) -> None: ...

    @manager.task(name="jobs.other")
    def other(n: int) -> None: ...

    handles = [await mail.enqueue(n) for n in range(3)]
    with pytest.raises(QueueFullError, match=r"queue 'emails' is full \(limit 3 waiting tasks\)"):
        await mail.enqueue(3)
    for n in range(5):  # a queue without a limit is not affected
        await other.enqueue(n)
    counts = await manager.storage.counts()
    assert counts[TaskStatus.PENDING] == 8  # nothing of the refused enqueue was stored
    assert await manager.drain(queues=["emails"]) == 3
    await mail.enqueue(4)  # room again
    statuses = [(await manager.get(h.id)).status for h in handles]
    assert statuses == [TaskStatus.SUCCEEDED] * 3
    await manager.close()


async def test_a_bulk_enqueue_is_all_or_nothing(fast: dict[str, Any]) -> None:
    manager = _manager(fast)

    @manager.task(name="jobs.mail", queue="emails")
    def mail(n: int) -> None: ...

    await mail.enqueue(0)
    with pytest.raises(QueueFullError, match="queue 'emails' is full"):
        await manager.submit_many([mail.build((n,), {}) for n in range(3)])
    assert await manager.broker.queue_length("emails") == 1
    with pytest.raises(QueueFullError, match="a batch of 4 tasks for queue 'emails'"):
        await manager.submit_many([mail.build((n,), {}) for n in range(4)])
    await manager.submit_many([mail.build((n,), {}) for n in range(2)])
    assert await manager.broker.queue_length("emails") == 3
    await manager.close()


async def test_wait_policy_enqueues_once_there_is_room(fast: dict[str, Any]) -> None:
    manager = _manager(fast, queue_full="wait", queue_full_timeout=10.0)

    @manager.task(name="jobs.mail", queue="emails")
    def mail(n: int) -> None: ...

    for n in range(3):
        await mail.enqueue(n)

    async def consume_later() -> None:
        await asyncio.sleep(0.3)
        await manager.drain(queues=["emails"])

    started = time.monotonic()
    consumer = asyncio.create_task(consume_later())
    handle = await mail.enqueue(3)  # waits for the drain to make room
    waited = time.monotonic() - started
    await consumer
    assert 0.25 <= waited < 5.0
    assert (await manager.get(handle.id)).status is TaskStatus.PENDING
    await manager.close()


async def test_wait_policy_gives_up_after_its_timeout(fast: dict[str, Any]) -> None:
    manager = _manager(fast, queue_full="wait", queue_full_timeout=0.3)

    @manager.task(name="jobs.mail", queue="emails")
    def mail(n: int) -> None: ...

    for n in range(3):
        await mail.enqueue(n)
    started = time.monotonic()
    with pytest.raises(QueueFullError, match=r"queue 'emails' is full .* after waiting 0.3s"):
        await mail.enqueue(3)
    assert time.monotonic() - started >= 0.29
    assert await manager.broker.queue_length("emails") == 3
    await manager.close()


async def test_a_unique_enqueue_into_a_full_queue_is_refused(fast: dict[str, Any]) -> None:
    manager = _manager(fast)

    @manager.task(name="jobs.mail", queue="emails")
    def mail(n: int) -> None: ...

    for n in range(3):
        await mail.enqueue(n)
    with pytest.raises(QueueFullError):
        await mail.options(unique_key="mail-9").enqueue(9)
    await manager.drain(queues=["emails"])
    handle = await mail.options(unique_key="mail-9").enqueue(9)  # the key was never taken
    assert not handle.deduplicated
    await manager.close()


async def test_a_pair_that_stores_in_two_steps_cannot_limit_queues(tmp_path: Any) -> None:
    storage = SQLiteBackend(str(tmp_path / "x.db"), make_test_codec())
    backends = Backends.pair(MemoryBroker(), storage)
    with pytest.raises(CapabilityError, match="cannot enforce queue limits"):
        backends.limit_queues({"emails": 3})
    await storage.close()
