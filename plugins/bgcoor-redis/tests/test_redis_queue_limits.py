"""Queue limits on Redis beyond the shared QueueLimitContract: a batch into a limited queue
is one script call however large (all or nothing), unique enqueues count only the tasks
they enqueue, 16 producers on connections of their own never pass a limit together, a
queue without a limit costs the server exactly what it did before limits existed, a set of
the wrong type counts as empty, and the manager's ``wait`` policy end to end."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from bgcoor_redis import RedisBackend
from redis_servers import RedisServer

from bgcoor_core import Backends, QueueFullError, Task, TaskStatus
from bgcoor_core.kit import UNIQUE_HEADER
from bgcoor_core.testing import (
    QueueLimitContract,
    check_a_manager_rejects_or_waits_for_room,
    make_task,
    make_test_codec,
)

pytestmark = pytest.mark.server

Q = "default"
OTHER = "unlimited"


class TestRedisQueueLimitContract(QueueLimitContract):
    """The shared contract, on this plugin's own fixture (also run by tests/test_conformance.py)."""

    @pytest.fixture
    def broker(self, backend: RedisBackend) -> RedisBackend:
        return backend

    @pytest.fixture
    def completion_storage(self, backend: RedisBackend) -> RedisBackend:
        return backend


def limit(backend: RedisBackend, limits: dict[str, int]) -> RedisBackend:
    """``backend`` wired as the manager wires it for ``BGCOOR_QUEUE_LIMITS``."""
    Backends.pair(backend, backend).limit_queues(limits)
    return backend


def tasks(n: int, queue: str = Q, *, keyed: bool = False) -> list[Task]:
    made = [make_task("limits.task", queue=queue) for _ in range(n)]
    if keyed:
        for task in made:
            task.headers[UNIQUE_HEADER] = f"key-{task.id}"
    return made


async def enqueue(backend: RedisBackend, batch: list[Task]) -> None:
    await backend.enqueue_atomically(batch, [backend.to_message(t) for t in batch])


async def unique(backend: RedisBackend, batch: list[Task]) -> list[str | None]:
    store = backend.unique_store(backend)
    assert store is not None
    holders: list[str | None] = await store.enqueue_unique(
        batch, [backend.to_message(t) for t in batch]
    )
    return holders


async def left_behind(raw: aredis.Redis, backend: RedisBackend, batch: list[Task]) -> int:
    """Keys of ``batch`` that exist: records, messages, unique key entries."""
    keys = [backend.key(kind, t.id) for t in batch for kind in ("t", "m")]
    keys += [
        backend.key("uniq", t.headers[UNIQUE_HEADER]) for t in batch if UNIQUE_HEADER in t.headers
    ]
    return int(await raw.exists(*keys))


async def calls(backend: RedisBackend, work: Any) -> tuple[int, Any]:
    """Commands the client sent for ``work`` (each script call is one), and its error."""
    link = backend.link()
    before = link.commands
    try:
        await work
    except QueueFullError as exc:
        return link.commands - before, exc
    return link.commands - before, None


# -- one step, all or nothing --------------------------------------------------------------


async def test_a_batch_into_a_limited_queue_is_one_script_call_however_large(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    """The plain enqueue splits batches into calls of 250 tasks; one that touches a limited
    queue is never split, so past the limit none of it is stored, not its first 250."""
    limit(backend, {Q: 1000})
    await enqueue(backend, tasks(1, OTHER))  # connected, scripts loaded
    assert await calls(backend, enqueue(backend, tasks(600, OTHER))) == (3, None)  # as before
    assert await calls(backend, enqueue(backend, tasks(500))) == (1, None)

    refused = tasks(600)
    sent, error = await calls(backend, enqueue(backend, refused))
    assert sent == 1
    assert isinstance(error, QueueFullError)
    assert str(error) == "queue 'default' is full (limit 1000 waiting tasks)"
    assert await left_behind(raw, backend, refused) == 0
    # a batch that touches a limited queue with one task is one step as a whole
    mixed = [*tasks(599, OTHER), *tasks(1)]
    await enqueue(backend, tasks(500))  # the queue is full now
    sent, error = await calls(backend, enqueue(backend, mixed))
    assert (sent, type(error)) == (1, QueueFullError)
    assert await left_behind(raw, backend, mixed) == 0
    assert (await backend.stats(Q)).ready == 1000
    assert (await backend.stats(OTHER)).ready == 601

    pushed = [backend.to_message(t) for t in tasks(600, "pushed")]
    limit(backend, {"pushed": 600})
    assert await calls(backend, backend.push_messages(pushed)) == (1, None)
    assert (await backend.stats("pushed")).ready == 600


async def test_a_batch_larger_than_the_limit_says_so_and_costs_no_count(
    backend: RedisBackend,
) -> None:
    limit(backend, {Q: 3})
    with pytest.raises(QueueFullError, match="a batch of 4 tasks for queue 'default'") as got:
        await enqueue(backend, tasks(4))
    assert (got.value.queue, got.value.limit, got.value.too_large) == (Q, 3, 4)


async def test_unique_enqueues_count_only_the_tasks_they_enqueue(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    limit(backend, {Q: 3, "small": 3})
    first = tasks(2, keyed=True)
    assert await unique(backend, first) == [None, None]
    again = [make_task("limits.task", queue=Q) for _ in range(3)]
    for task, key_of in zip(again, [*first, None], strict=True):
        task.headers[UNIQUE_HEADER] = f"key-{(key_of or task).id}"
    # two keys held: only the third task is enqueued, and it fits exactly
    assert await unique(backend, again) == [first[0].id, first[1].id, None]
    assert (await backend.stats(Q)).ready == 3
    held, free = again[0].model_copy(update={"id": make_task().id}), tasks(1, keyed=True)
    with pytest.raises(QueueFullError, match="queue 'default' is full"):
        await unique(backend, [held, *free])
    assert await left_behind(raw, backend, free) == 0  # the free key was not taken either
    assert await backend.get(held.id) is None

    # a batch of 5 with 2 keys held enqueues 3: not too large for a limit of 3
    batch = tasks(5, "small", keyed=True)
    for task, holder in zip(batch, first, strict=False):
        task.headers[UNIQUE_HEADER] = f"key-{holder.id}"
    assert await unique(backend, batch) == [first[0].id, first[1].id, None, None, None]
    limit(backend, {"small": 3})
    with pytest.raises(QueueFullError, match="a batch of 4 tasks for queue 'small'"):
        await unique(backend, tasks(4, "small", keyed=True))


async def test_sixteen_producers_on_their_own_connections_never_pass_a_limit(
    redis_url: str, raw: aredis.Redis
) -> None:
    """16 producers at once, each on a connection of its own, enqueue batches of 1 to 3
    (plain and with unique keys) into a queue limited to 50: the count and the write are one
    script, so exactly the accepted batches are stored, never more than 50 tasks, and the
    refused ones left no record, message or key."""
    producers = [limit(RedisBackend(redis_url, make_test_codec()), {Q: 50}) for _ in range(16)]
    accepted: list[Task] = []
    refused: list[Task] = []
    start = asyncio.Event()

    async def produce(backend: RedisBackend, seed: int) -> None:
        rng = random.Random(seed)
        await backend.queues()  # connected before the start
        await start.wait()
        for round_ in range(12):
            batch = tasks(rng.randint(1, 3), keyed=round_ % 2 == 1)
            try:
                if round_ % 2:
                    assert await unique(backend, batch) == [None] * len(batch)
                else:
                    await enqueue(backend, batch)
            except QueueFullError:
                refused.extend(batch)
            else:
                accepted.extend(batch)

    try:
        running = [asyncio.create_task(produce(b, n)) for n, b in enumerate(producers)]
        await asyncio.sleep(0.05)
        start.set()
        await asyncio.gather(*running)
        backend = producers[0]
        waiting = (await backend.stats(Q)).ready
        assert waiting == len(accepted)
        assert 48 <= waiting <= 50  # full, give or take the last batch of up to 3
        assert (await backend.counts())[TaskStatus.PENDING] == len(accepted)
        assert len(refused) > 200
        assert await left_behind(raw, backend, refused) == 0
    finally:
        for backend in producers:
            await backend.close()


async def test_a_set_of_the_wrong_type_counts_as_empty(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    """A queue's scheduled set written over by something else holds nothing of ours: it
    counts as empty, and the enqueue replaces it (see "Corrupt state" in the README)."""
    limit(backend, {Q: 2})
    await raw.set(backend.key("q", Q, "later"), "junk")
    await raw.hset(backend.key("q", Q, "parked"), "x", "junk")
    later = tasks(2)
    for task in later:
        task.eta = task.created_at + timedelta(days=1)
    await enqueue(backend, later)
    assert await raw.zcard(backend.key("q", Q, "later")) == 2
    with pytest.raises(QueueFullError):
        await enqueue(backend, tasks(1))


# -- what no limit costs -------------------------------------------------------------------


def _calls(client: redis.Redis) -> dict[str, int]:
    """Commands the server ran since the last reset (those of scripts included), by name."""
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(stat["calls"])
        for name, stat in stats.items()
        if name not in ("cmdstat_config|resetstat", "cmdstat_script|load")
    }


#: The commands (script calls included) each producer step runs with no queue limit, as
#: before queue limits existed (commit 742a4f5, measured as the test below measures them),
#: since the enqueue script writes a batch's sorted-set members and checks its ids once per
#: script call rather than once per task (a 600-task batch: 3,000 ZADD then, 15 now).
BEFORE_QUEUE_LIMITS: dict[str, dict[str, int]] = {
    "enqueue 1": {
        "evalsha": 1,
        "exists": 2,
        "hmget": 1,
        "hset": 2,
        "incrby": 1,
        "llen": 1,
        "sadd": 1,
        "time": 1,
        "zadd": 5,
    },
    "enqueue 600": {
        "evalsha": 3,
        "exists": 6,
        "hmget": 3,
        "hset": 1200,
        "incrby": 3,
        "llen": 3,
        "sadd": 3,
        "time": 3,
        "zadd": 15,
    },
    "push 3": {
        "evalsha": 1,
        "exists": 1,
        "hset": 3,
        "incrby": 1,
        "llen": 1,
        "sadd": 1,
        "time": 1,
        "zadd": 1,
    },
    "unique 3": {
        "evalsha": 1,
        "exists": 2,
        "get": 3,
        "hmget": 1,
        "hset": 9,
        "incrby": 1,
        "llen": 1,
        "sadd": 1,
        "set": 3,
        "time": 1,
        "zadd": 5,
    },
}


async def _measure_steps(server: RedisServer, limits: dict[str, int]) -> dict[str, dict[str, int]]:
    client = redis.Redis.from_url(server.url)
    backend = limit(RedisBackend(server.url, make_test_codec()), limits)
    seen: dict[str, dict[str, int]] = {}

    async def measure(what: str, work: Any) -> None:
        client.config_resetstat()
        await work
        seen[what] = _calls(client)

    try:
        await enqueue(backend, tasks(1))  # connected, scripts loaded
        await unique(backend, tasks(1, keyed=True))
        await measure("enqueue 1", enqueue(backend, tasks(1)))
        await measure("enqueue 600", enqueue(backend, tasks(600)))
        pushed = [backend.to_message(t) for t in tasks(3)]
        await measure("push 3", backend.push_messages(pushed))
        await measure("unique 3", unique(backend, tasks(3, keyed=True)))
        await backend.purge(Q)
    finally:
        await backend.close()
        client.close()
    return seen


async def test_queues_without_a_limit_cost_the_server_what_they_did_before(
    private_server: Callable[..., RedisServer],
) -> None:
    """Counted by the server (``INFO commandstats``, on a private server so that no one
    else's commands count): with no limits, or limits on other queues only, every producer
    step runs the commands and script calls it ran before; with a limit on its queue, the
    same commands in one script call, and the three ``ZCARD`` of the count."""
    server = private_server()
    assert await _measure_steps(server, {}) == BEFORE_QUEUE_LIMITS
    assert await _measure_steps(server, {"elsewhere": 5}) == BEFORE_QUEUE_LIMITS

    # A batch into a limited queue is one script call, whatever its size (not three).
    one_call = {"evalsha": 1, "exists": 2, "hmget": 1, "incrby": 1, "llen": 1, "sadd": 1}
    one_call |= {"time": 1, "zadd": 10}  # 1,200 ZADD arguments per key: two calls of 1,000
    want = {
        step: {**calls, **(one_call if step == "enqueue 600" else {}), "zcard": 3}
        for step, calls in BEFORE_QUEUE_LIMITS.items()
    }
    assert await _measure_steps(server, {Q: 100_000}) == want


# -- the manager ---------------------------------------------------------------------------


async def test_a_manager_on_redis_rejects_or_waits_for_room(redis_url: str) -> None:
    await check_a_manager_rejects_or_waits_for_room(redis_url)
