"""The storage conformance suite."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta

import pytest

from .._errors import (
    DuplicateTaskError,
    InvalidTransitionError,
    ResultTimeoutError,
    StaleLeaseError,
)
from .._storage import Storage
from .._task import ALLOWED_TRANSITIONS, Task, TaskStatus
from ._helpers import ASYNC, EARLY, SLACK, Stopwatch, background, make_task

S = TaskStatus
TRANSITIONS = [(old, new) for old in TaskStatus for new in TaskStatus]
TTL = 0.1


async def _list_all(storage: Storage, page: int, status: S | None = None) -> list[Task]:
    """Every matching record, fetched page by page with ``after``."""
    found: list[Task] = []
    after: str | None = None
    while batch := await storage.list(status=status, limit=page, after=after):
        assert len(batch) <= page
        assert after is None or batch[0].id > after, "list(after=...) went backwards"
        found += batch
        after = batch[-1].id
    return found


class StorageContract:
    """Base class of the storage conformance tests.

    Subclass it in a module pytest collects (name the subclass ``Test...``) and provide
    one fixture, ``storage``, yielding a fresh, empty :class:`~bgcoor_core.Storage` and
    closing it afterwards. Build the storage with :func:`make_test_codec`.
    """

    pytestmark = [ASYNC]

    async def test_save_get_round_trip(self, storage: Storage) -> None:
        now = datetime.now(UTC)
        task = make_task(
            payload={"args": [1, [2.5, None]], "kwargs": {"ü": "∑", "flag": True}},
            status=S.FAILED,
            attempts=4,
            max_retries=3,
            queue="mail",
            priority=7,
            eta=now + timedelta(minutes=5),
            timeout=2.5,
            started_at=now - timedelta(seconds=3),
            finished_at=now,
            error="ValueError: nope",
            traceback="Traceback (most recent call last):\n  ...\nValueError: nope\n",
            result={"partial": [1, 2, 3]},
            lease_token="lease-1",
        )
        await storage.save(task)
        assert await storage.get(task.id) == task

    async def test_save_many(self, storage: Storage) -> None:
        tasks = [make_task(payload={"n": n}) for n in range(5)]
        await storage.save_many(tasks)
        for task in tasks:
            assert await storage.get(task.id) == task
        assert (await storage.counts())[TaskStatus.PENDING] == 5

    async def test_save_many_refuses_existing_ids(self, storage: Storage) -> None:
        """``save_many`` stores *new* records: an id that has one already (here a finished
        task's) refuses the whole batch, naming the id and its status."""
        done = make_task()
        await storage.save(done.model_copy(update={"status": TaskStatus.DEAD, "error": "x"}))
        fresh = make_task()
        with pytest.raises(DuplicateTaskError, match=done.id) as refused:
            await storage.save_many([fresh, done])
        assert "dead" in str(refused.value)
        assert await storage.get(fresh.id) is None
        stored = await storage.get(done.id)
        assert stored is not None
        assert stored.status is TaskStatus.DEAD

    async def test_get_unknown_is_none(self, storage: Storage) -> None:
        assert await storage.get(make_task().id) is None

    async def test_save_overwrites(self, storage: Storage) -> None:
        task = make_task(payload=1)
        await storage.save(task)
        updated = task.model_copy(update={"payload": {"n": 2}, "status": S.SCHEDULED})
        await storage.save(updated)
        assert await storage.get(task.id) == updated
        assert [t.id for t in await storage.list()] == [task.id]
        assert (await storage.counts())[S.SCHEDULED] == 1

    async def test_records_are_snapshots(self, storage: Storage) -> None:
        task = make_task(payload={"items": [1]})
        await storage.save(task)
        task.payload["items"].append(2)
        task.status = S.RUNNING
        stored = await storage.get(task.id)
        assert stored is not None
        assert (stored.payload, stored.status) == ({"items": [1]}, S.PENDING)
        stored.payload["items"].append(3)
        assert (await storage.get(task.id)) == stored.model_copy(update={"payload": {"items": [1]}})

    @pytest.mark.parametrize(("old", "new"), TRANSITIONS, ids=[f"{o}->{n}" for o, n in TRANSITIONS])
    async def test_status_transition(self, storage: Storage, old: S, new: S) -> None:
        task = make_task(status=old)
        await storage.save(task)
        moved = task.model_copy(update={"status": new})
        if new in ALLOWED_TRANSITIONS[old]:
            await storage.save(moved)
            assert await storage.get(task.id) == moved
        else:
            with pytest.raises(InvalidTransitionError):
                await storage.save(moved)
            assert await storage.get(task.id) == task

    @pytest.mark.parametrize("outcome", [S.SUCCEEDED, S.FAILED, S.RETRYING, S.DEAD])
    async def test_outcome_from_another_lease_refused(self, storage: Storage, outcome: S) -> None:
        running = make_task(status=S.RUNNING, attempts=1, lease_token="lease-a")
        await storage.save(running)
        zombie = running.model_copy(update={"status": outcome, "lease_token": "lease-b"})
        with pytest.raises(StaleLeaseError):
            await storage.save(zombie)
        assert await storage.get(running.id) == running
        done = running.model_copy(update={"status": outcome, "result": 42})
        await storage.save(done)
        assert await storage.get(running.id) == done

    async def test_new_attempt_takes_over_the_lease(self, storage: Storage) -> None:
        first = make_task(status=S.RUNNING, attempts=1, lease_token="lease-a")
        await storage.save(first)
        second = first.model_copy(update={"attempts": 2, "lease_token": "lease-b"})
        await storage.save(second)  # redelivered after the first lease was lost
        late = first.model_copy(update={"status": S.SUCCEEDED, "result": "late"})
        with pytest.raises(StaleLeaseError):
            await storage.save(late)
        done = second.model_copy(update={"status": S.SUCCEEDED, "result": "on time"})
        await storage.save(done)
        assert await storage.get(first.id) == done

    async def test_write_without_lease_skips_the_lease_check(self, storage: Storage) -> None:
        running = make_task(status=S.RUNNING, lease_token="lease-a")
        await storage.save(running)
        cancelled = running.model_copy(update={"status": S.CANCELLED, "lease_token": None})
        await storage.save(cancelled)  # e.g. a cancel from the manager
        assert await storage.get(running.id) == cancelled

    async def test_ttl_expiry(self, storage: Storage) -> None:
        keep = make_task(status=S.SUCCEEDED)
        await storage.save(keep)
        fleeting = [make_task(), make_task(status=S.SUCCEEDED)]
        clock = Stopwatch()
        for task in fleeting:
            await storage.save(task, ttl=TTL)
        alive = await storage.get(fleeting[0].id)
        if clock.elapsed < TTL:
            assert alive == fleeting[0]
        await asyncio.sleep(TTL + 0.1)
        assert 0 <= await storage.delete_expired() <= len(fleeting)
        for task in fleeting:
            assert await storage.get(task.id) is None
        assert await storage.list() == [keep]
        assert sum((await storage.counts()).values()) == 1
        assert await storage.delete_expired() == 0

    async def test_expired_records_skipped_without_delete(self, storage: Storage) -> None:
        await storage.save(make_task(), ttl=TTL)
        await asyncio.sleep(TTL + 0.1)
        assert await storage.list() == []
        assert sum((await storage.counts()).values()) == 0

    async def test_save_without_ttl_makes_permanent(self, storage: Storage) -> None:
        task = make_task(status=S.DEAD)
        await storage.save(task, ttl=TTL)
        requeued = task.model_copy(update={"status": S.PENDING})
        await storage.save(requeued)
        await asyncio.sleep(TTL + 0.1)
        assert await storage.get(task.id) == requeued

    async def test_list_filters_and_order(self, storage: Storage) -> None:
        statuses, names, queues = [S.PENDING, S.RUNNING, S.SUCCEEDED, S.FAILED], "abc", "xy"
        tasks = [
            make_task(f"job.{names[i % 3]}", status=statuses[i % 4], queue=f"q-{queues[i % 2]}")
            for i in range(24)
        ]
        for task in random.Random(7).sample(tasks, len(tasks)):
            await storage.save(task)
        for status in (None, S.RUNNING, S.DEAD):
            for name in (None, "job.a"):
                for queue in (None, "q-y"):
                    expected = sorted(
                        t.id
                        for t in tasks
                        if status in (None, t.status)
                        and name in (None, t.name)
                        and queue in (None, t.queue)
                    )
                    found = await storage.list(status=status, name=name, queue=queue)
                    assert [t.id for t in found] == expected, (status, name, queue)

    async def test_list_pagination(self, storage: Storage) -> None:
        tasks = [make_task(status=S.RUNNING if i % 3 else S.PENDING) for i in range(25)]
        await asyncio.gather(*(storage.save(t) for t in reversed(tasks)))
        first = await storage.list(limit=7)
        assert [t.id for t in first] == sorted(t.id for t in tasks)[:7]
        everything = await _list_all(storage, page=7)
        assert [t.id for t in everything] == sorted(t.id for t in tasks)
        running = await _list_all(storage, page=3, status=S.RUNNING)
        assert [t.id for t in running] == sorted(t.id for t in tasks if t.status is S.RUNNING)
        assert await storage.list(after=max(t.id for t in tasks)) == []

    @pytest.mark.parametrize("limit", [0, -1])
    async def test_invalid_limit(self, storage: Storage, limit: int) -> None:
        with pytest.raises(ValueError):  # noqa: PT011 - the type is the contract, not the text
            await storage.list(limit=limit)

    async def test_counts(self, storage: Storage) -> None:
        assert await storage.counts() == dict.fromkeys(TaskStatus, 0)
        wanted = {S.PENDING: 2, S.RUNNING: 3, S.DEAD: 1}
        for status, count in wanted.items():
            for _ in range(count):
                await storage.save(make_task(status=status))
        assert await storage.counts() == {s: wanted.get(s, 0) for s in TaskStatus}

    async def test_wait_returns_once_final(self, storage: Storage) -> None:
        task = make_task(status=S.RUNNING)
        await storage.save(task)
        async with background(storage.wait(task.id, timeout=10.0)) as waiter:
            await asyncio.sleep(0.1)
            await storage.save(task.model_copy(update={"attempts": 2}))  # still running
            await asyncio.sleep(0.1)
            assert not waiter.done(), "wait returned for a status that is not final"
            done = task.model_copy(update={"status": S.SUCCEEDED, "result": "ok"})
            saved_at = time.monotonic()
            await storage.save(done)
            assert await waiter == done
            assert time.monotonic() - saved_at < SLACK
        assert await storage.wait(task.id, timeout=0) == done  # already final

    @pytest.mark.parametrize("known", [True, False], ids=["running", "unknown"])
    async def test_wait_times_out(self, storage: Storage, known: bool) -> None:
        task = make_task(status=S.RUNNING)
        if known:
            await storage.save(task)
        start = time.monotonic()
        with pytest.raises(ResultTimeoutError):
            await storage.wait(task.id, timeout=0.2)
        assert 0.2 - EARLY <= time.monotonic() - start <= 0.2 + SLACK

    async def test_concurrent_saves(self, storage: Storage) -> None:
        tasks = [make_task(payload=i) for i in range(200)]

        async def save_twice(task: Task) -> None:
            await storage.save(task)
            await storage.save(task.model_copy(update={"status": S.RUNNING}))

        await asyncio.gather(*(save_twice(t) for t in tasks))
        assert (await storage.counts())[S.RUNNING] == len(tasks)
        stored = await _list_all(storage, page=50)
        assert [t.id for t in stored] == sorted(t.id for t in tasks)
        assert all(t.status is S.RUNNING for t in stored)
