"""Rate and concurrency limits on Redis beyond the shared GateContract: the Lua rules against
the core's (GCRA admission, reading a gate), reservers racing in threads of their own, what
an ungated task costs (the same server commands as before limits existed), records left
pending while held back, every path that stores a message keeping its gate, unreadable
gates and gate keys, the hand-back of a cancelled reserve, and nothing left behind by an
idle key."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from bgcoor_redis import RedisBackend
from bgcoor_redis._scripts import _functions, _needed, common_source
from redis_servers import RedisServer

from bgcoor_core import (
    CapabilityError,
    Fire,
    QueueStats,
    Reservation,
    ScheduleDefinition,
    StaleLeaseError,
    Task,
    TaskManager,
    TaskStatus,
)
from bgcoor_core._gates import GATE_HEADER, Gate, admit
from bgcoor_core.kit import UNIQUE_HEADER
from bgcoor_core.testing import EARLY, GateContract, make_task, make_test_codec

pytestmark = pytest.mark.server

Q = "default"
LEASE = 30.0


class TestRedisGateContract(GateContract):
    """The shared contract, on this plugin's own fixture (also run by tests/test_conformance.py)."""

    @pytest.fixture
    def broker(self, backend: RedisBackend) -> RedisBackend:
        return backend


def gated(gate: Gate | None, **fields: Any) -> Task:
    task = make_task("gates.task", **fields)
    if gate is not None:
        task.headers[GATE_HEADER] = gate.encode()
    return task


async def push(backend: RedisBackend, gate: Gate | None, n: int) -> list[Task]:
    """``n`` tasks with ``gate``, records and messages stored together."""
    tasks = [gated(gate) for _ in range(n)]
    await backend.enqueue_atomically(tasks, [backend.to_message(t) for t in tasks])
    return tasks


async def take(backend: RedisBackend, *, lease: float = LEASE) -> list[Reservation]:
    return await backend.reserve([Q], lease=lease, limit=100)


def ids(reservations: list[Reservation]) -> list[str]:
    return [r.task.id for r in reservations]


async def gate_keys(raw: aredis.Redis, backend: RedisBackend) -> dict[str, Any]:
    """Every key of the backend's limits (``gate:*`` and the queues' parked sets) by type."""
    found: dict[str, Any] = {}
    for pattern in (backend.key("gate", "*"), backend.key("q", "*", "parked")):
        async for k in raw.scan_iter(pattern):
            found[k.decode()] = await raw.type(k)
    return found


# -- the Lua rules against the core's --------------------------------------------------------


def _lua(body: str) -> str:
    """``body`` after the constants of common.lua and the functions it calls."""
    head, blocks = _functions(common_source())
    return head + "".join(blocks[f] for f in _needed(body, blocks)) + body


ADMIT = _lua(
    """
local name, t = "rule", tonumber(ARGV[2])
local k = gkey(name, "tat")
redis.call("DEL", k)
if ARGV[3] ~= "" then redis.call("SET", k, ARGV[3]) end
local start = admit(name, tonumber(ARGV[4]), tonumber(ARGV[5]), t)
return {string.format("%.17g", start), redis.call("GET", k), redis.call("PTTL", k)}
"""
)


async def test_the_lua_admission_is_the_core_rule(backend: RedisBackend) -> None:
    """``admit`` in common.lua against ``bgcoor_core._gates.admit`` for stored times before,
    at and after now (and unreadable ones, read as none), steady rates and bursts."""
    now = 1_790_000_000.123456  # a server clock reading: microseconds
    tats: list[float | str | None] = [None, now - 10, now - 1e-6, now, now + 1e-3, now + 5]
    tats += ["soon", "inf", "nan"]
    intervals = [1e-6, 0.25, 1 / 3, 60.0, 3600.0]
    for tat, interval, burst in itertools.product(tats, intervals, [1, 2, 5]):
        stored = "" if tat is None else tat if isinstance(tat, str) else repr(tat)
        args = [repr(now), stored, repr(interval), burst]
        start, new_tat, pttl = await backend.command("EVAL", ADMIT, 0, backend.prefix, *args)
        core_tat = tat if isinstance(tat, float) else None
        want_tat, want_start = admit(core_tat, now, interval, burst)
        case = (tat, interval, burst)
        assert float(new_tat) == want_tat, case
        assert max(float(start), now) == want_start, case
        assert (float(start) > now) is (want_start > now), case
        # it expires once it is past (PX from the script's clock, so at most this long);
        # PTTL rounds down, so a 1 ms expiry already under way reads 0 (-1: none, -2: gone)
        assert 0 <= pttl <= max(1, math.ceil((want_tat - now) * 1000)), case


GATE_OF = _lua(
    """
local gate = gate_of(ARGV[2])
if not gate then return 0 end
return {gate.key, gate.interval and string.format("%.17g", gate.interval) or "-",
  gate.burst, gate.concurrency or "-"}
"""
)

READABLE = [
    Gate("k", 0.25),
    Gate("k", 1e-6, 3, 2),
    Gate("send:a b  c", None, 1, 3),  # a key may hold spaces
    Gate("ключ", 3600.0, 1, 1),
    Gate("k", 60 / 7, 2),
    Gate("k"),  # no limit at all: delivered as if ungated
]
UNREADABLE = [
    "",
    "junk",
    "- 1 -",
    "- 1 - ",
    "x 1 - k",
    "0 1 - k",
    "-1 1 - k",
    "nan 1 - k",
    "inf 1 - k",
    "1e999 1 - k",
    "0.5 0 - k",
    "0.5 1.5 - k",
    "0.5 x - k",
    "- 1 0 k",
    "- 1 2.5 k",
    "- 1 99999999999 k",
    "0.5  1 - k",
]


async def test_a_gate_is_read_as_the_core_writes_it(backend: RedisBackend) -> None:
    for gate in READABLE:
        got = await backend.command("EVAL", GATE_OF, 0, backend.prefix, gate.encode())
        key, interval, burst, concurrency = got
        read = Gate(
            key.decode(),
            None if interval == b"-" else float(interval),
            int(burst),
            None if concurrency == b"-" else int(concurrency),
        )
        assert read == Gate.decode(gate.encode()) == gate
    for text in UNREADABLE:
        assert await backend.command("EVAL", GATE_OF, 0, backend.prefix, text) == 0, text


# -- atomicity ---------------------------------------------------------------------------------


class _Race:
    """What racing consumers (threads) share: the tasks they hold, those acked, the most
    held at once."""

    def __init__(self, redis_url: str, limit: int) -> None:
        self.redis_url, self.limit = redis_url, limit
        self.lock = threading.Lock()
        self.holding: set[str] = set()
        self.acked: list[str] = []
        self.most = 0
        self.failures: list[BaseException] = []

    def run(self, seed: int, want: set[str], start: threading.Barrier) -> None:
        start.wait()
        try:
            asyncio.run(self.consume(seed, want))
        except BaseException as exc:  # reported by the test's own thread
            self.failures.append(exc)

    async def consume(self, seed: int, want: set[str]) -> None:
        rng = random.Random(seed)
        backend = RedisBackend(self.redis_url, make_test_codec())
        leased = backend.key("q", Q, "leased")
        try:
            while not self.done(want):
                got = await backend.reserve([Q], lease=LEASE, limit=rng.randint(1, 3), timeout=0.05)
                with self.lock:
                    self.holding.update(ids(got))
                    self.most = max(self.most, len(self.holding))
                    assert len(self.holding) <= self.limit, self.holding
                if got:
                    assert await backend.command("ZCARD", leased) <= self.limit
                await asyncio.sleep(rng.random() * 0.004)
                for reservation in got:
                    await self.settle(backend, reservation, rng.random() < 0.15)
        finally:
            await backend.close()

    def done(self, want: set[str]) -> bool:
        with self.lock:
            return want <= set(self.acked)

    async def settle(self, backend: RedisBackend, reservation: Reservation, back: bool) -> None:
        with self.lock:
            self.holding.discard(reservation.task.id)
        if back:  # a hand-back frees its slot too
            await backend.nack(reservation)
            return
        await backend.ack(reservation)
        with self.lock:
            self.acked.append(reservation.task.id)


def test_racing_reservers_never_exceed_the_limit(redis_url: str) -> None:
    """Eight consumers, each in a thread with its own event loop and connections, race for
    the tasks of one key with ``concurrency_limit`` 2, in rounds of eight tasks: never more
    than two are held at once, as the consumers see it and as the server's leased set says
    right after each reserve; every task is acked once."""
    limit, rounds, racers = 2, 25, 8
    gate = Gate("race", concurrency=limit)
    race = _Race(redis_url, limit)
    start = threading.Barrier(racers + 1)
    producer = RedisBackend(redis_url, make_test_codec())
    for round_ in range(rounds):
        want = {t.id for t in asyncio.run(_push_round(producer, gate, racers))}
        threads = [
            threading.Thread(target=race.run, args=(round_ * racers + n, want, start))
            for n in range(racers)
        ]
        for thread in threads:
            thread.start()
        start.wait()  # all of them start reserving at once
        for thread in threads:
            thread.join(20)
        assert not [t for t in threads if t.is_alive()], "a consumer hung"
        if race.failures:
            raise race.failures[0]
    assert race.most == limit  # the race was real: the limit was reached
    assert sorted(race.acked) == sorted(set(race.acked))  # each acked once
    assert len(race.acked) == rounds * racers
    assert asyncio.run(_stats_and_close(producer)) == QueueStats()
    client = redis.Redis.from_url(redis_url.split("?", 1)[0])
    assert list(client.scan_iter(producer.key("gate", "*"))) == []  # nothing left
    client.close()


async def _push_round(backend: RedisBackend, gate: Gate, n: int) -> list[Task]:
    tasks = await push(backend, gate, n)
    await backend.close()  # its connections belong to this event loop
    return tasks


async def _stats_and_close(backend: RedisBackend) -> QueueStats:
    stats: QueueStats = await backend.stats(Q)
    await backend.close()
    return stats


# -- what an ungated task costs --------------------------------------------------------------


def _calls(client: redis.Redis) -> dict[str, int]:
    """Commands the server ran since the last reset (those of scripts included), by name."""
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(stat["calls"])
        for name, stat in stats.items()
        if name not in ("cmdstat_config|resetstat", "cmdstat_evalsha", "cmdstat_script|load")
    }


#: The commands each step of an ungated task ran inside its script before limits existed
#: (commit 10519a7, measured as the test below measures them).
BEFORE_LIMITS = {
    "ack": {"del": 1, "hmget": 1, "time": 1, "zrem": 1, "zscore": 1},
    "complete": {
        "del": 1,
        "hdel": 1,
        "hmget": 2,
        "hset": 1,
        "time": 1,
        "zadd": 1,
        "zrangebyscore": 1,
        "zrem": 2,
        "zscore": 1,
    },
    "dead letter": {"hdel": 1, "hmget": 1, "hset": 1, "time": 1, "zadd": 1, "zrem": 1, "zscore": 1},
    "extend": {"hmget": 1, "time": 1, "zadd": 1, "zscore": 1},
    "lost": {
        "hdel": 2,
        "hget": 2,
        "hincrby": 2,
        "hmget": 2,
        "hset": 4,
        "incrby": 2,
        "llen": 1,
        "time": 1,
        "zadd": 3,
        "zcard": 1,
        "zpopmin": 1,
        "zrangebyscore": 2,
        "zrem": 2,
    },
    "nack": {
        "hdel": 2,
        "hget": 1,
        "hmget": 2,
        "hset": 2,
        "incrby": 1,
        "llen": 1,
        "time": 1,
        "zadd": 2,
        "zrem": 2,
        "zscore": 1,
    },
    "purge": {"del": 3, "zrange": 2},
    "requeue": {
        "hdel": 1,
        "hget": 1,
        "hset": 2,
        "incrby": 1,
        "llen": 1,
        "type": 1,
        "zadd": 1,
        "zrange": 1,
        "zrem": 1,
    },
    "reserve 5": {
        "hmget": 10,
        "hset": 10,
        "time": 1,
        "zadd": 10,
        "zcard": 1,
        "zpopmin": 1,
        "zrangebyscore": 2,
        "zrem": 5,
    },
    "stats": {"time": 1, "zcard": 2, "zcount": 4},
}


async def test_ungated_tasks_cost_the_server_what_they_did_before_limits(
    private_server: Callable[..., RedisServer],
) -> None:
    """The commands an ungated task's reserve and settles run inside their scripts, counted
    by the server (``INFO commandstats``, on a private server so that no one else's count
    in): those of :data:`BEFORE_LIMITS`, except that a nack, a lost lease and a requeue now
    read the priority and the gate with one HMGET where an HGET read the priority (as many
    commands), and that ``stats`` and ``purge`` (not steps of a task) also count and delete
    a queue's parked set, and that a reserve that leaves nothing ready reads when the
    first scheduled task falls due (one ZRANGE a queue), so that its consumer's next wait
    ends then (the server ends a blocking wait only on its 10-a-second ticks), and that a
    completion publishes the final record to whoever waits for it (one PUBLISH, issue 16)."""
    server = private_server()
    client = redis.Redis.from_url(server.url)
    backend = RedisBackend(server.url, make_test_codec())
    seen: dict[str, dict[str, int]] = {}

    async def measure(what: str, work: Any) -> Any:
        client.config_resetstat()
        result = await work
        seen[what] = _calls(client)
        return result

    try:
        await backend.queues()  # connected, and the server's eviction policy checked
        tasks = await push(backend, None, 5)
        got = await measure("reserve 5", backend.reserve([Q], lease=LEASE, limit=10))
        assert ids(got) == [t.id for t in tasks]
        await measure("ack", backend.ack(got[0]))
        await measure("extend", backend.extend(got[1], LEASE))
        await measure("nack", backend.nack(got[2]))
        await measure("dead letter", backend.dead_letter(got[3], "x"))
        done = got[4].task.model_copy(update={"status": TaskStatus.SUCCEEDED})
        await measure("complete", backend.complete(got[4], done, ttl=None))
        await measure("requeue", backend.requeue_dead(Q))
        assert len(await backend.reserve([Q], lease=0.01, limit=10)) == 2
        await asyncio.sleep(0.03)
        await measure("lost", backend.reserve([Q], lease=LEASE, limit=1))
        await measure("stats", backend.stats(Q))
        await measure("purge", backend.purge(Q))
    finally:
        await backend.close()
        client.close()
    want = {step: dict(calls) for step, calls in BEFORE_LIMITS.items()}
    for step in ("nack", "requeue", "lost"):
        want[step]["hmget"] = want[step].get("hmget", 0) + want[step].pop("hget")
    want["reserve 5"]["zrange"] = 1
    want["complete"]["publish"] = 1
    want["stats"]["zcard"] += 1
    want["purge"]["zrange"] += 1
    want["purge"]["del"] += 1
    assert seen == want


async def test_a_gated_task_still_costs_one_call_from_the_client(redis_url: str) -> None:
    backend = RedisBackend(redis_url, make_test_codec())
    await push(backend, Gate("k", 30.0, concurrency=1), 1)  # connected, scripts loaded
    link = backend.link()
    trips, commands = link.round_trips, link.commands
    await push(backend, Gate("k", 30.0, concurrency=1), 2)
    [held] = await take(backend)  # one delivered, one parked: the same single script call
    await backend.ack(held)
    assert (link.round_trips - trips, link.commands - commands) == (3, 3)
    await backend.close()


# -- the record while held back --------------------------------------------------------------


async def test_a_held_back_task_stays_pending_with_its_attempts(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    """The reserve marks the records it delivers running; one it parks or defers keeps its
    record as enqueued (pending, attempts unchanged, no start mark) and its message's
    delivery count, until it is delivered."""
    [a, parked] = await push(backend, Gate("c", concurrency=1), 2)
    [b, deferred] = await push(backend, Gate("r", 30.0), 2)
    got = await take(backend)
    assert sorted(ids(got)) == sorted([a.id, b.id])
    assert all(r.started for r in got)
    for task in (parked, deferred):
        assert await backend.get(task.id) == task  # pending, attempts 0, as enqueued
        assert await raw.hget(backend.key("t", task.id), "r") is None
        assert await raw.hget(backend.key("m", task.id), "d") == b"0"
    counts = await backend.counts()
    assert (counts[TaskStatus.RUNNING], counts[TaskStatus.PENDING]) == (2, 2)
    holder = next(r for r in got if r.task.id == a.id)
    await backend.ack(holder)
    [now] = await take(backend)
    assert (now.task.id, now.started, now.deliveries) == (parked.id, True, 1)
    stored = await backend.get(parked.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (TaskStatus.RUNNING, 1)


# -- every path that stores a message keeps its gate ---------------------------------------

GATE = Gate("paths", concurrency=1)


async def _enqueue_atomically(backend: RedisBackend, tasks: list[Task]) -> None:
    await backend.enqueue_atomically(tasks, [backend.to_message(t) for t in tasks])


async def _push(backend: RedisBackend, tasks: list[Task]) -> None:
    await backend.push_many(tasks)


async def _unique(backend: RedisBackend, tasks: list[Task]) -> None:
    for n, task in enumerate(tasks):
        task.headers[UNIQUE_HEADER] = f"paths-{n}-{task.id}"
    store = backend.unique_store(backend)
    assert store is not None
    assert await store.enqueue_unique(tasks, [backend.to_message(t) for t in tasks]) == [
        None
    ] * len(tasks)


async def _fire(backend: RedisBackend, tasks: list[Task]) -> None:
    ids_ = [f"paths-{n}" for n in range(len(tasks))]
    await backend.put_schedules(
        [ScheduleDefinition(id=i, task="gates.task", every_ms=1000) for i in ids_]
    )
    requests = [
        Fire(i, 1_790_000_000_000, t, backend.to_message(t))
        for i, t in zip(ids_, tasks, strict=True)
    ]
    assert [o.value for o in await backend.fire(requests)] == ["fired"] * len(tasks)


PATHS = {"enqueue_atomically": _enqueue_atomically, "push": _push, "unique": _unique, "fire": _fire}


@pytest.mark.parametrize("path", PATHS)
async def test_each_way_in_keeps_the_gate(
    backend: RedisBackend, raw: aredis.Redis, path: str
) -> None:
    tasks = [gated(GATE) for _ in range(2)]
    await PATHS[path](backend, tasks)
    for task in tasks:
        assert await raw.hget(backend.key("m", task.id), "g") == GATE.encode().encode()
    [held] = await take(backend)  # the other is parked: the limit applies
    assert (await backend.stats(Q)).scheduled == 1
    await backend.ack(held)
    assert len(await take(backend)) == 1


async def test_a_dead_letter_keeps_its_gate_when_requeued(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    """Dead-lettered with a new body, requeued: limited as before (and charged again)."""
    [first, second] = await push(backend, Gate("dead", 30.0, concurrency=1), 2)
    [held] = await take(backend)
    assert held.task.id == first.id
    await backend.dead_letter(held, "poisoned", held.task.model_copy(update={"attempts": 3}))
    assert await take(backend) == []  # second: a slot free now, but its rate slot is later
    assert await backend.requeue_dead(Q) == [first.id]
    assert (
        await raw.hget(backend.key("m", first.id), "g")
        == Gate("dead", 30.0, concurrency=1).encode().encode()
    )
    assert await take(backend) == []  # and the requeued one waits for a slot of its own
    stats = await backend.stats(Q)
    assert (stats.ready, stats.scheduled, stats.reserved, stats.dead) == (0, 2, 0, 0)
    later = await raw.zrange(backend.key("q", Q, "later"), 0, -1)
    assert sorted(later) == sorted([first.id.encode(), second.id.encode()])


async def test_a_workflow_member_with_limits_is_refused_by_the_store(redis_url: str) -> None:
    """The core refuses such a member; the store does not drop its gate silently either."""
    from bgcoor_redis._workflows import _member_args

    backend = RedisBackend(redis_url, make_test_codec())
    task = gated(GATE)
    with pytest.raises(CapabilityError, match="workflow member"):
        _member_args(backend.to_message(task))
    assert len(_member_args(backend.to_message(gated(None)))) == 5
    await backend.close()


# -- settles, hand-backs and leases ----------------------------------------------------------


async def test_a_cancelled_reserve_gives_back_its_slot_and_keeps_its_rate_slot(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    """``release`` (a reserve whose caller was cancelled): as if it had not been delivered."""
    [a, b] = await push(backend, Gate("cancel", concurrency=1), 2)
    [held] = await take(backend)
    await backend.run("release", held.task.id, held.token)
    assert await raw.exists(backend.key("gate", "cancel", "held")) == 0
    assert (await backend.stats(Q)).ready == 2  # itself and the one it let out
    assert ids(await take(backend)) == [a.id]  # in their old order: b parks again
    assert (await backend.stats(Q)).scheduled == 1
    [c] = await push(backend, Gate("cancel-rate", 30.0), 1)
    [held] = await take(backend)
    assert held.task.id == c.id
    await backend.run("release", held.task.id, held.token)
    [again] = await take(backend)  # its slot was spent on it: not charged twice
    assert (again.task.id, again.deliveries) == (c.id, 1)
    await backend.nack(again)  # a retry is charged again
    assert await take(backend) == []
    stats = await backend.stats(Q)
    assert (stats.scheduled, stats.reserved) == (2, 1)  # b parked, c deferred; a held
    parked = await raw.zrange(backend.key("gate", "cancel", "parked"), 0, -1)
    assert parked == [b.id.encode()]


async def test_a_waiting_consumer_wakes_when_a_slot_frees(
    redis_url: str, backend: RedisBackend
) -> None:
    """No polling: the settle that frees a slot wakes an idle consumer of the parked task's
    queue, which gets it at once."""
    other = RedisBackend(redis_url, make_test_codec())
    [first, second] = await push(backend, Gate("wake", concurrency=1), 2)
    [held] = await take(backend)
    waiting = asyncio.create_task(other.reserve([Q], lease=LEASE, timeout=10))
    await asyncio.sleep(0.2)  # blocked on the server: everything is parked or held
    assert not waiting.done()
    settled = time.monotonic()
    await backend.ack(held)
    [got] = await asyncio.wait_for(waiting, 5)
    assert got.task.id == second.id
    assert time.monotonic() - settled < 0.5
    assert held.task.id == first.id
    await other.close()


async def test_a_lost_lease_in_a_batch_frees_its_slot_once(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    """A lease running out frees its slot when the reserve finds it lost; a settle that
    comes too late (refused as stale) frees nothing a second time."""
    tasks = await push(backend, Gate("lost", concurrency=2), 4)
    held = await take(backend, lease=0.05)
    assert ids(held) == [t.id for t in tasks[:2]]
    await asyncio.sleep(0.1)
    again = await take(backend)  # both lost: the two parked ones run
    assert sorted(ids(again)) == sorted(t.id for t in tasks[2:])
    assert await raw.zcard(backend.key("gate", "lost", "held")) == 2
    for reservation in held:
        with pytest.raises(StaleLeaseError):
            await backend.ack(reservation)
    assert await raw.zcard(backend.key("gate", "lost", "held")) == 2
    assert await take(backend) == []  # the lost two wait for slots again
    assert (await backend.stats(Q)).scheduled == 2


# -- unreadable state ------------------------------------------------------------------------


async def test_an_unreadable_gate_is_a_defect_and_dead_letters_only_its_task(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    """A gate field no core wrote (an operator's edit) never fails a script: the reserve
    hands the message out as a defect naming the field, rewritten without limits (so a
    requeue from the dead letters runs it), and the tasks beside it flow."""
    tasks = await push(backend, Gate("bad", concurrency=1), 4)
    victim = tasks[1]
    await raw.hset(backend.key("m", victim.id), mapping={"g": "1 2 3", "a": "1"})
    got = await take(backend)
    good = [r for r in got if r.defect is None]
    [bad] = [r for r in got if r.defect is not None]
    assert ids(good) == [tasks[0].id]  # the others are parked behind it as ever
    assert bad.task.id == victim.id
    assert bad.defect == (
        f'corrupt message: {backend.key("m", victim.id)} has gate g "1 2 3", which is no '
        "rate or concurrency limit"
    )
    assert await raw.hmget(backend.key("m", victim.id), "g", "a") == [None, None]
    await backend.dead_letter(bad, bad.defect)
    assert [d.reason for d in await backend.dead_letters(Q)] == [bad.defect]
    assert await backend.requeue_dead(Q) == [victim.id]
    assert ids(await take(backend)) == [victim.id]  # without limits now


@pytest.mark.parametrize("which", ["tat", "held", "parked", "queue-parked"])
@pytest.mark.parametrize("value", ["junk-string", "list", "not-a-time"])
async def test_gate_keys_of_the_wrong_type_or_value(
    backend: RedisBackend, raw: aredis.Redis, which: str, value: str
) -> None:
    """A gate key holding something else is read as empty and replaced by the next write:
    its key's tasks still flow, and the rules hold from then on."""
    gate = Gate("broken", 30.0, concurrency=1)
    name = (
        backend.key("q", Q, "parked")
        if which == "queue-parked"
        else backend.key("gate", "broken", which)
    )
    if value == "list":
        await raw.rpush(name, "junk")
    elif value == "not-a-time" and which == "tat":
        await raw.set(name, "9e999")
    else:
        await raw.set(name, "junk")
    tasks = await push(backend, gate, 3)
    [held] = await take(backend)
    assert held.task.id == tasks[0].id
    assert await take(backend) == []  # the others parked
    await backend.extend(held, LEASE)
    await backend.ack(held)
    assert await take(backend) == []  # the next: out of the parked set, then deferred (rate)
    stats = await backend.stats(Q)
    assert stats.scheduled == 2
    assert await raw.type(backend.key("gate", "broken", "tat")) == b"string"


# -- nothing accumulates ---------------------------------------------------------------------


async def test_an_idle_key_leaves_nothing_behind(backend: RedisBackend, raw: aredis.Redis) -> None:
    """Once every task of a key is settled its slot and parked sets are gone, and its rate
    state expires when its theoretical arrival time has passed."""
    interval = 0.05
    await push(backend, Gate("idle", interval, concurrency=2), 6)
    done = 0
    give_up = time.monotonic() + 10
    while done < 6 and time.monotonic() < give_up:
        for reservation in await backend.reserve([Q], lease=LEASE, limit=10, timeout=1):
            await backend.ack(reservation)
            done += 1
    assert done == 6
    tat = backend.key("gate", "idle", "tat")
    ttl = await raw.pttl(tat)  # (-2: it expired already)
    assert ttl == -2 or 0 < ttl <= 1000 * interval * 2
    assert set(await gate_keys(raw, backend)) <= {tat}
    await asyncio.sleep(interval * 3)
    assert await gate_keys(raw, backend) == {}
    assert await backend.stats(Q) == QueueStats()


async def test_purge_removes_parked_messages_from_their_key(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    await push(backend, Gate("purged", concurrency=1), 3)
    [held] = await take(backend)
    assert await backend.purge(Q) == 2
    assert set(await gate_keys(raw, backend)) == {backend.key("gate", "purged", "held")}
    await backend.ack(held)
    assert await gate_keys(raw, backend) == {}
    assert await take(backend) == []


# -- end to end ------------------------------------------------------------------------------


async def test_limits_end_to_end_with_a_worker(redis_url: str) -> None:
    """``concurrency_limit`` per ``limit_key`` and ``rate_limit`` through a TaskManager and a
    worker pool of eight slots."""
    manager = TaskManager(broker_url=redis_url, storage_url=redis_url)
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    starts: list[float] = []

    @manager.task(name="gates.e2e", concurrency_limit=2, limit_key=lambda account, **_: account)
    async def per_account(account: str) -> None:
        running[account] = running.get(account, 0) + 1
        most[account] = max(most.get(account, 0), running[account])
        await asyncio.sleep(0.03)
        running[account] -= 1

    @manager.task(name="gates.rated", rate_limit="20/s")
    async def rated() -> None:
        starts.append(time.monotonic())

    handles = [await per_account.enqueue(a) for a in ["a", "b"] * 6]
    handles += [await rated.enqueue() for _ in range(5)]
    async with manager.worker(concurrency=8):
        for handle in handles:
            await handle.result(timeout=10)
    assert set(most) == {"a", "b"}
    assert max(most.values()) == 2  # reached, never passed
    starts.sort()
    assert starts[-1] - starts[0] >= 4 * 0.05 - EARLY, starts
    await manager.close()
