"""The scheduler's cost per pass with many schedules, on each backend.

    python benchmarks/scheduler_bench.py [--schedules 1000] [--passes 10]

Prints numbers; asserts nothing. For each backend (memory, SQLite, Redis, PostgreSQL; a
server that does not answer is skipped with the reason), ``--schedules`` schedules
``every=1s`` of a no-op task are stored, then one in-process scheduler runs ``--passes``
passes, each at the next second (``run_pass(now=...)``, so every pass fires one tick of
every schedule: the worst case of a 1-second schedule), and one more pass at the same
second as the last (nothing due: the cost of reading the schedules alone).

Per pass: CPU of this process (``time.process_time``: the scheduler, the client library
and, for SQLite, the database engine; not the Redis or PostgreSQL server), wall time, and
the backend's round trips, counted on its own connections:

* Redis: batches sent on the pipelined command connections (one round trip each) and the
  commands in them (``Link.round_trips``, ``Link.commands``);
* PostgreSQL: statements run on the pooled connections (asyncpg's query logger, without
  its one-off type lookups), a transaction's ``BEGIN`` and ``COMMIT`` included; each is
  one round trip once prepared (preparing a new one costs one more, on first use only);
* SQLite: in-process, no network: calls onto the connection's thread and the SQL
  statements the engine ran (``sqlite3`` trace callback);
* memory: in-process, nothing to count.

Throw-away namespaces: a temporary SQLite file, a Redis key prefix in database 15
(deleted after), a PostgreSQL schema with ``temporary=true`` (dropped on close).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bgcoor_core import ScheduleStore, TaskManager
from bgcoor_core._scheduler import Scheduler
from bgcoor_core._timetable import Schedule

TASK = "bench.noop"
STEP = timedelta(seconds=1)
REDIS = ("127.0.0.1", 6379)
POSTGRES = ("127.0.0.1", 5432)

#: A counter of the backend's round trips so far: ``{"round trips": n, ...}``.
Probe = Callable[[], dict[str, int]]


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True


async def _memory_probe(manager: TaskManager) -> Probe:
    return dict  # in-process: no round trips to count


async def _redis_probe(manager: TaskManager) -> Probe:
    from bgcoor_redis import RedisBackend

    backend = manager.broker
    assert isinstance(backend, RedisBackend)
    await backend.queues()  # connect before counting
    link = backend.link()
    return lambda: {"round trips": link.round_trips, "commands": link.commands}


async def _postgres_probe(manager: TaskManager) -> Probe:
    from bgcoor_postgres import PostgresBackend

    backend = manager.broker
    assert isinstance(backend, PostgresBackend)
    seen: Counter[str] = Counter()

    def observe(query: str) -> None:
        if "typeinfo_tree" not in query and "set_config('jit'" not in query:
            seen["statements"] += 1

    backend._db.observer = observe  # before the pool opens: its connections get the logger
    return lambda: dict(seen)


async def _sqlite_probe(manager: TaskManager) -> Probe:
    from bgcoor_core.backends.sqlite import SQLiteBackend

    backend = manager.broker
    assert isinstance(backend, SQLiteBackend)
    db = backend.db
    seen: Counter[str] = Counter()

    def trace(conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(lambda _sql: seen.update(["statements"]))

    await db.run(trace)
    run = db.run

    async def counted(fn: Callable[..., Any], *args: Any) -> Any:
        seen["thread calls"] += 1
        return await run(fn, *args)

    db.run = counted  # type: ignore[method-assign]  # this process's instance only
    return lambda: dict(seen)


def _definitions(count: int) -> list[Any]:
    schedule = Schedule(every=STEP)
    payload: dict[str, list[object] | dict[str, object]] = {"args": [], "kwargs": {}}
    return [schedule.definition(f"bench-{n:05d}", TASK, payload, {}) for n in range(count)]


async def _measure(
    scheduler: Scheduler, probe: Probe, now: datetime
) -> tuple[float, float, dict[str, int], int]:
    before = probe()
    cpu, wall = time.process_time(), time.perf_counter()
    done = await scheduler.run_pass(now=now)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    after = probe()
    trips = {k: v - before.get(k, 0) for k, v in after.items()}
    return cpu, wall, trips, sum(len(v) for v in done.outcomes.values())


async def bench(
    name: str,
    url: str,
    probe_of: Callable[[TaskManager], Awaitable[Probe]],
    schedules: int,
    passes: int,
) -> None:
    manager = TaskManager(broker_url=url, storage_url=url)

    @manager.task(name=TASK)
    async def noop() -> None:
        """Never runs: no worker."""

    try:
        probe = await probe_of(manager)
        store = manager.backends.schedules
        assert isinstance(store, ScheduleStore)
        scheduler = Scheduler(store, manager.broker, manager.registry, manager.settings)
        started = time.perf_counter()
        await store.put_schedules(_definitions(schedules))
        stored = time.perf_counter() - started
        since = max(e.state.since_ms for e in await store.get_schedules())
        first = datetime.fromtimestamp(since / 1000, UTC).replace(microsecond=0) + STEP
        rows = [await _measure(scheduler, probe, first + n * STEP) for n in range(passes)]
        idle = await _measure(scheduler, probe, first + (passes - 1) * STEP)
        _report(name, schedules, stored, rows, idle)
    finally:
        await manager.close()


def _report(
    name: str,
    schedules: int,
    stored: float,
    rows: list[tuple[float, float, dict[str, int], int]],
    idle: tuple[float, float, dict[str, int], int],
) -> None:
    fired = {r[3] for r in rows}
    print(f"{name}: {schedules:,} schedules stored in {stored * 1000:.0f} ms")
    cpu = [r[0] * 1000 for r in rows]
    wall = [r[1] * 1000 for r in rows]
    print(
        f"  firing pass ({'/'.join(map(str, sorted(fired)))} ticks each, {len(rows)} passes): "
        f"CPU median {statistics.median(cpu):.1f} ms (min {min(cpu):.1f}, max {max(cpu):.1f}), "
        f"wall median {statistics.median(wall):.1f} ms (min {min(wall):.1f}, max {max(wall):.1f})"
    )
    print(f"    {_trips(rows)}")
    print(
        f"  idle pass (nothing due, {idle[3]} requests): CPU {idle[0] * 1000:.1f} ms, "
        f"wall {idle[1] * 1000:.1f} ms; {_trips([idle])}"
    )


def _trips(rows: list[tuple[float, float, dict[str, int], int]]) -> str:
    keys = sorted({k for r in rows for k in r[2]})
    if not keys:
        return "round trips: not counted (in-process memory backend: none to count)"
    parts = []
    for key in keys:
        values = [r[2].get(key, 0) for r in rows]
        low, high = min(values), max(values)
        parts.append(f"{key} per pass {low}" + (f"-{high}" if high != low else ""))
    return ", ".join(parts)


async def _drop_redis_prefix(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url.partition("?")[0])
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


async def main(schedules: int, passes: int) -> None:
    print(f"scheduler passes, {schedules:,} schedules every=1s, no-op task, no worker\n")
    await bench("memory", "memory://", _memory_probe, schedules, passes)
    with tempfile.TemporaryDirectory() as folder:
        await bench("sqlite", f"sqlite:///{folder}/bench.db", _sqlite_probe, schedules, passes)
    if not _reachable(*REDIS):
        print(f"redis: skipped, no server accepts connections on {REDIS[0]}:{REDIS[1]}")
    else:
        prefix = f"bench-sched-{uuid.uuid4().hex[:8]}"
        url = f"redis://{REDIS[0]}:{REDIS[1]}/15?prefix={prefix}"
        try:
            await bench("redis", url, _redis_probe, schedules, passes)
        finally:
            await _drop_redis_prefix(url, prefix)
    if not _reachable(*POSTGRES):
        print(f"postgres: skipped, no server accepts connections on {POSTGRES[0]}:{POSTGRES[1]}")
    else:
        schema = f"bench_sched_{uuid.uuid4().hex[:8]}"
        url = f"postgresql://root@{POSTGRES[0]}:{POSTGRES[1]}/test?schema={schema}&temporary=true"
        await bench("postgres", url, _postgres_probe, schedules, passes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.schedules, args.passes))
