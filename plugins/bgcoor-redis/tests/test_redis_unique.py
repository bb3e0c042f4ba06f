"""Unique keys on Redis beyond the shared contract: one script call per batch, the Lua rule
against the core's, 32 producers on separate clients, key entries expiring with their
holder's records, damaged entries, a worker SIGKILLed while its task holds its key, and
``fn.options(unique_key=...)`` end to end."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis
from bgcoor_redis import RedisBackend
from bgcoor_redis._scripts import _functions, _needed, common_source
from bgcoor_redis._uniques import RedisUniques

from bgcoor_core import DuplicateTaskError, MemoryStorage, Task, TaskManager, TaskStatus
from bgcoor_core.kit import UNIQUE_HEADER, UNIQUE_UNTIL_HEADER, holds
from bgcoor_core.testing import WorkerFleet, ledger_task, make_task, make_test_codec

pytestmark = pytest.mark.server

Q = "default"


def _task(key: str | None, window: float | None = None) -> Task:
    task = make_task("unique.test")
    if key is not None:
        task.headers[UNIQUE_HEADER] = key
        if window is not None:
            task.headers[UNIQUE_UNTIL_HEADER] = repr(time.time() + window)
    return task


def _store(backend: RedisBackend) -> RedisUniques:
    store = backend.unique_store(backend)
    assert store is not None
    return store


async def _enqueue(backend: RedisBackend, *tasks: Task) -> list[str | None]:
    return await _store(backend).enqueue_unique(tasks, [backend.to_message(t) for t in tasks])


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis.from_url(redis_url.split("?", 1)[0])
    yield client
    await client.aclose()


async def _finish(backend: RedisBackend, task: Task, ttl: float | None) -> None:
    """Store ``task`` succeeded (with ``ttl``), as a worker would, and drop its message."""
    task.status = TaskStatus.RUNNING
    await backend.save(task)
    task.status, task.finished_at = TaskStatus.SUCCEEDED, datetime.now(UTC)
    await backend.save(task, ttl=ttl)
    await backend.purge(Q)


# -- where the store is --------------------------------------------------------------------


async def test_the_backend_is_the_unique_store_of_its_own_keys(
    backend: RedisBackend, redis_url: str
) -> None:
    assert isinstance(backend.unique_store(backend), RedisUniques)
    same = RedisBackend(redis_url)
    assert isinstance(backend.unique_store(same), RedisUniques)  # same database and prefix
    other = RedisBackend(redis_url.split("?", 1)[0] + "?prefix=elsewhere")
    assert backend.unique_store(other) is None
    assert backend.unique_store(MemoryStorage()) is None


# -- one script call per batch -------------------------------------------------------------


@pytest.mark.parametrize("size", [2, 300])
async def test_an_enqueue_batch_is_one_script_call(backend: RedisBackend, size: int) -> None:
    prefix = uuid.uuid4().hex
    first = [_task(f"{prefix}-{i}") for i in range(size)]
    await _enqueue(backend, _task(None))  # connected, policy checked, the script loaded
    link = backend.link()
    trips, commands = link.round_trips, link.commands
    assert await _enqueue(backend, *first) == [None] * size
    assert (link.round_trips - trips, link.commands - commands) == (1, 1)
    # half of them held (by the first batch), the rest new, one key twice
    again = [_task(f"{prefix}-{i}") for i in range(size // 2, size + size // 2)]
    again.append(_task(again[-1].headers[UNIQUE_HEADER]))
    trips, commands = link.round_trips, link.commands
    holders = await _enqueue(backend, *again)
    assert (link.round_trips - trips, link.commands - commands) == (1, 1)
    held = size - size // 2
    assert holders[:held] == [t.id for t in first[size // 2 :]]
    assert holders[held:-1] == [None] * (len(again) - held - 1)
    assert holders[-1] == again[-2].id  # taken earlier in the same batch
    assert (await backend.stats(Q)).ready == 1 + size + len(again) - held - 1


async def test_a_task_manager_enqueue_with_a_key_is_one_round_trip(redis_url: str) -> None:
    manager = TaskManager(broker_url=redis_url, storage_url=redis_url, result_ttl=60)

    @manager.task(name="unique.noop")
    async def noop() -> None:
        pass

    backend = manager.broker
    assert isinstance(backend, RedisBackend)
    await noop.options(unique_key="warm-up").enqueue()  # connected, the script loaded
    link = backend.link()
    trips = link.round_trips
    first = await noop.options(unique_key="one").enqueue()
    assert link.round_trips - trips == 1
    trips = link.round_trips
    second = await noop.options(unique_key="one").enqueue()
    assert link.round_trips - trips == 1
    assert (first.deduplicated, second.deduplicated, second.id) == (False, True, first.id)
    await manager.close()


# -- the rule ------------------------------------------------------------------------------

STATUSES: list[TaskStatus | None] = [None, *TaskStatus]
WINDOWS: list[float | None] = [None, -5.0, -0.001, 0.001, 5.0]  # window end - now


async def test_the_lua_rule_is_the_cores(backend: RedisBackend) -> None:
    """``unique_holds`` in ``lua/common.lua``, run on the server for every status (and no
    record) and window, answers as :func:`bgcoor_core.kit.holds`."""
    head, blocks = _functions(common_source())
    body = (
        "local s = ARGV[2] ~= '' and ARGV[2] or nil\n"
        "return unique_holds(s, tonumber(ARGV[3]), tonumber(ARGV[4])) and 1 or 0\n"
    )
    source = head + "".join(blocks[f] for f in _needed(body, blocks)) + body
    now = 1_700_000_000.0
    for status, window in itertools.product(STATUSES, WINDOWS):
        ends = None if window is None else now + window
        args = ["" if status is None else status.value, "" if ends is None else repr(ends)]
        got = await backend.command("EVAL", source, 0, backend.prefix, *args, repr(now))
        assert bool(got) is holds(status, ends, now), (status, window)


async def test_the_store_applies_the_rule_to_every_stored_status(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    """A key entry naming a holder whose record has each status (or none, or one that is
    no status: read as none), with each window: deduplicated exactly when ``holds``."""
    for status, window in itertools.product([*STATUSES, "bogus"], [None, -5.0, 5.0]):
        key, holder = f"k-{uuid.uuid4().hex}", str(uuid.uuid4())
        now = time.time()
        ends = None if window is None else now + window
        if status is not None:
            value = status if isinstance(status, str) else status.value
            await raw.hset(backend.key("t", holder), mapping={"s": value, "n": "x", "q": Q})
        await raw.set(backend.key("uniq", key), f"{'' if ends is None else repr(ends)} {holder}")
        known = status if isinstance(status, TaskStatus) else None
        expected = holder if holds(known, ends, time.time()) else None
        assert await _enqueue(backend, _task(key)) == [expected], (status, window)


async def test_the_same_task_again_raises_and_writes_nothing(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    task, fresh = _task(f"k-{uuid.uuid4().hex}"), _task(f"k-{uuid.uuid4().hex}")
    await _enqueue(backend, task)
    with pytest.raises(DuplicateTaskError, match="already holds its unique key"):
        await _enqueue(backend, fresh, task)
    assert await backend.get(fresh.id) is None
    assert not await raw.exists(backend.key("uniq", fresh.headers[UNIQUE_HEADER]))
    other = _task(None)
    other.id = task.id  # a new task reusing a stored id, without a key: the atomic refusal
    with pytest.raises(DuplicateTaskError, match=task.id):
        await _enqueue(backend, other)


async def test_a_damaged_key_entry_is_free_and_replaced(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    for damage in ("list", "garbage", "gone holder"):
        key = f"k-{uuid.uuid4().hex}"
        entry = backend.key("uniq", key)
        if damage == "list":
            await raw.rpush(entry, "x")
        elif damage == "garbage":
            await raw.set(entry, "no-space-here")
        else:
            await raw.set(entry, f" {uuid.uuid4()}")
        task = _task(key)
        assert await _enqueue(backend, task) == [None], damage
        assert await raw.get(entry) == f" {task.id}".encode()
        assert await _enqueue(backend, _task(key)) == [task.id]


async def test_a_damaged_unique_field_in_a_record_costs_nothing(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    """A record's ``u`` naming no entry, or an entry of the wrong type: its outcome is
    stored with its TTL all the same, and the key it really took is left as it was."""
    for damage in ("no entry", "wrong type"):
        key = f"k-{uuid.uuid4().hex}"
        task = _task(key)
        await _enqueue(backend, task)
        await raw.hset(backend.key("t", task.id), "u", b"\xff junk")
        if damage == "wrong type":
            await raw.hset(backend.key("uniq").encode() + b":\xff junk", "a", "b")
        await _finish(backend, task, ttl=30)
        stored = await backend.get(task.id)
        assert stored is not None
        assert stored.status is TaskStatus.SUCCEEDED
        assert await raw.pttl(backend.key("uniq", key)) == -1
        assert await _enqueue(backend, _task(key)) == [None]  # final, no window: free


# -- 32 producers --------------------------------------------------------------------------


async def test_32_producers_on_separate_clients_enqueue_500_keys_once(
    redis_url: str, raw: aredis.Redis
) -> None:
    keys = [f"key-{k}" for k in range(500)]
    producers = [RedisBackend(redis_url, make_test_codec()) for _ in range(32)]

    async def produce(seed: int, backend: RedisBackend) -> list[tuple[Task, str | None]]:
        order = keys[seed * 13 % 500 :] + keys[: seed * 13 % 500]
        tasks = [_task(key) for key in order]
        if seed % 2:  # half of them one task per call, the others in batches of 50
            holders = [h for t in tasks for h in await _enqueue(backend, t)]
        else:
            holders = []
            for start in range(0, 500, 50):
                holders += await _enqueue(backend, *tasks[start : start + 50])
        return list(zip(tasks, holders, strict=True))

    results = await asyncio.gather(*(produce(s, b) for s, b in enumerate(producers)))
    enqueued = {t.id: t for pairs in results for t, holder in pairs if holder is None}
    assert len(enqueued) == 500
    assert sorted(t.headers[UNIQUE_HEADER] for t in enqueued.values()) == sorted(keys)
    reader = producers[0]
    assert (await reader.stats(Q)).ready == 500
    assert (await reader.counts())[TaskStatus.PENDING] == 500
    for pairs in results:  # each deduplicated task names the one enqueued for its key
        for task, holder in pairs:
            if holder is not None:
                assert enqueued[holder].headers[UNIQUE_HEADER] == task.headers[UNIQUE_HEADER]
    for key in keys:
        _, holder = (await raw.get(reader.key("uniq", key))).decode().split(" ")
        assert enqueued[holder].headers[UNIQUE_HEADER] == key
    for producer in producers:
        await producer.close()


# -- key entries do not outlive their use --------------------------------------------------


async def test_an_entry_expires_with_its_holders_record(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    key = f"k-{uuid.uuid4().hex}"
    entry = backend.key("uniq", key)
    task = _task(key)
    await _enqueue(backend, task)
    assert await raw.pttl(entry) == -1  # pending: held for as long as it takes
    await _finish(backend, task, ttl=0.4)
    record_ttl, entry_ttl = await raw.pttl(backend.key("t", task.id)), await raw.pttl(entry)
    assert 0 < entry_ttl <= 401  # the entry's expiry is rounded up to a millisecond
    assert abs(entry_ttl - record_ttl) <= 5  # the same expiry (rounded to milliseconds)
    await asyncio.sleep(0.6)
    assert not await raw.exists(entry)
    assert not await raw.exists(backend.key("t", task.id))
    assert await _enqueue(backend, _task(key)) == [None]


async def test_an_entry_outlives_its_holders_record_until_its_window_ends(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    key = f"k-{uuid.uuid4().hex}"
    entry = backend.key("uniq", key)
    task = _task(key, window=1.0)
    await _enqueue(backend, task)
    await _finish(backend, task, ttl=0.2)
    assert 600 < await raw.pttl(entry) <= 1000
    await asyncio.sleep(0.4)  # the record is gone, the window is not over: still held
    assert not await raw.exists(backend.key("t", task.id))
    assert await _enqueue(backend, _task(key)) == [task.id]
    await asyncio.sleep(0.8)
    assert not await raw.exists(entry)
    assert await _enqueue(backend, _task(key)) == [None]


async def test_an_entry_lasts_again_when_its_holders_record_does(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    """A dead holder with a TTL requeued (stored pending, no TTL) holds its key again,
    for as long as it takes; an entry taken over is not touched by its old holder."""
    key = f"k-{uuid.uuid4().hex}"
    entry = backend.key("uniq", key)
    task = _task(key)
    await _enqueue(backend, task)
    task.status, task.finished_at = TaskStatus.DEAD, datetime.now(UTC)
    await backend.save(task, ttl=60)
    assert 0 < await raw.pttl(entry) <= 60_000
    task.status, task.finished_at = TaskStatus.PENDING, None
    await backend.save(task)
    assert await raw.pttl(entry) == -1
    assert await _enqueue(backend, _task(key)) == [task.id]
    # final for good, no TTL: the next one takes the key over...
    task.status, task.finished_at = TaskStatus.DEAD, datetime.now(UTC)
    await backend.save(task)
    successor = _task(key)
    assert await _enqueue(backend, successor) == [None]
    # ...and its old holder's record getting a TTL leaves the successor's entry alone
    task.status = TaskStatus.PENDING
    await backend.save(task)
    task.status = TaskStatus.DEAD
    await backend.save(task, ttl=60)
    assert await raw.pttl(entry) == -1
    assert await raw.get(entry) == f" {successor.id}".encode()


# -- end to end ----------------------------------------------------------------------------


async def test_options_unique_key_end_to_end(redis_url: str) -> None:
    manager = TaskManager(broker_url=redis_url, storage_url=redis_url, result_ttl=60)
    runs: list[int] = []

    @manager.task(name="unique.invoice")
    async def send_invoice(order: int) -> int:
        runs.append(order)
        return order

    first = await send_invoice.options(unique_key="invoice-7").enqueue(7)
    second = await send_invoice.options(unique_key="invoice-7").enqueue(8)
    assert (first.deduplicated, second.deduplicated, second.id) == (False, True, first.id)
    async with manager.worker(concurrency=2):
        assert await second.result(timeout=5) == 7
    third = await send_invoice.options(unique_key="invoice-7").enqueue(9)
    assert not third.deduplicated
    assert third.id != first.id
    async with manager.worker(concurrency=2):
        assert await third.result(timeout=5) == 9
    assert runs == [7, 9]
    await manager.close()


@pytest.mark.slow
async def test_a_key_stays_held_across_a_sigkilled_worker(redis_url: str, tmp_path: Path) -> None:
    """The holder's worker is SIGKILLed mid-task: the task, redelivered to another worker
    once its lease runs out, still holds the key until it succeeds."""
    manager = TaskManager(broker_url=redis_url, storage_url=redis_url)
    record: Any = ledger_task(manager)
    holder = await record.options(unique_key="export").enqueue(1, 1.5)
    with WorkerFleet(redis_url, tmp_path, concurrency=2, lease_seconds=2) as fleet:
        (first,) = fleet.start(1)
        started = await _wait_started(manager, holder.id, None)
        first.kill()
        first.wait(timeout=10)
        again = await record.options(unique_key="export").enqueue(2, 0)
        assert (again.deduplicated, again.id) == (True, holder.id)
        fleet.start(1)
        await _wait_started(manager, holder.id, started)  # redelivered, running for 1.5 s
        during = await record.options(unique_key="export").enqueue(3, 0)
        assert (during.deduplicated, during.id) == (True, holder.id)
        await _wait_status(manager, holder.id, TaskStatus.SUCCEEDED)
        after = await record.options(unique_key="export").enqueue(4, 0)
        assert not after.deduplicated
        await _wait_status(manager, after.id, TaskStatus.SUCCEEDED)
        assert fleet.stop()[1:] == [0], fleet.logs()
    assert sorted(run.i for run in fleet.runs()) == [1, 4]  # 2 and 3 never ran
    await manager.close()


async def _wait_started(
    manager: TaskManager, task_id: str, before: datetime | None, limit: float = 30
) -> datetime:
    """The start time of the task's delivery after the one that started at ``before``."""
    deadline = time.monotonic() + limit
    while True:
        task = await manager.get(task_id)
        if task.status is TaskStatus.RUNNING and task.started_at not in (None, before):
            assert task.started_at is not None
            return task.started_at
        assert time.monotonic() < deadline, task
        await asyncio.sleep(0.05)


async def _wait_status(
    manager: TaskManager, task_id: str, *statuses: TaskStatus, limit: float = 30
) -> None:
    deadline = time.monotonic() + limit
    while (task := await manager.get(task_id)).status not in statuses:
        assert time.monotonic() < deadline, task.status
        await asyncio.sleep(0.05)
