"""Redis commands and round trips per task, counted on the backend's own connections.

    python benchmarks/redis_round_trips.py [--n 20000] [--concurrency 100] [--url URL]
        [--workflow]

Prints numbers (and checks every task succeeded). ``n`` no-op tasks are enqueued with
``enqueue_many``, then one in-process worker pool drains them; the counts come from the
pipelined command connection (commands sent, batches = round trips) and the blocking
connections (exchanges: ``BLPOP`` plus a reserve in one write). The default URL is the
test Redis database 15 under a throw-away key prefix, deleted afterwards.

``--workflow`` compares a lone task with a chord member instead: ``n`` tasks enqueued one
``enqueue`` at a time and drained by the pool (enqueue, reserve, complete), then a chord
of ``n`` members of the same task and a callback, submitted in one call and drained by
the same pool. It prints round trips per task and per member (command batches plus
blocking exchanges, the idle worker's included, the callback's spread over the members)
and their difference. At ``--concurrency 1`` nothing is batched across tasks, so the
figures are each task's own; at 100 the pool shares batches between slots.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from bgcoor_redis import RedisBackend
from redis_cleanup import drop_prefix

from bgcoor_core import TaskManager, TaskStatus, chord, group


async def main(n: int, concurrency: int, url: str) -> None:
    manager = TaskManager(broker_url=url, storage_url=url, result_ttl=600)
    done = asyncio.Event()
    count = 0

    @manager.task(name="bench.noop")
    async def noop() -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    backend = manager.broker
    assert isinstance(backend, RedisBackend)
    await backend.queues()  # connect (and check the eviction policy) before counting
    link = backend.link()
    trips, commands = link.round_trips, link.commands
    await noop.enqueue_many([() for _ in range(n)])
    enqueue_trips = link.round_trips - trips
    trips, commands, exchanges = link.round_trips, link.commands, link.blocking.exchanges
    started = time.perf_counter()
    async with manager.worker(concurrency=concurrency):
        await done.wait()
    # the pool has stopped: every outcome is stored
    elapsed = time.perf_counter() - started
    trips, commands = link.round_trips - trips, link.commands - commands
    exchanges = link.blocking.exchanges - exchanges
    assert (await manager.storage.counts())[TaskStatus.SUCCEEDED] == n
    print(f"bg-coor Redis backend, {n:,} no-op tasks, one pool of {concurrency} slots in-process")
    per_trip = n / max(enqueue_trips, 1)
    print(f"  enqueue_many: {enqueue_trips} round trips ({per_trip:.0f} tasks each)")
    print(
        f"  worker: {commands / n:.3f} commands and {trips / n:.4f} round trips per task "
        f"({commands / max(trips, 1):.0f} commands per round trip), "
        f"{exchanges} blocking exchanges; {n / elapsed:,.0f} tasks/s"
    )
    await drop_prefix(backend)
    await manager.close()


class Counts:
    """Round trips of a backend's connections on this event loop, from a starting point."""

    def __init__(self, backend: RedisBackend) -> None:
        self.link = backend.link()
        self.start = self._now()

    def _now(self) -> tuple[int, int, int]:
        link = self.link
        return link.round_trips, link.blocking.exchanges, link.commands

    def since(self) -> tuple[int, int, int]:
        """(batches, blocking exchanges, commands) since the start; then restart."""
        now = self._now()
        trips, exchanges, commands = (a - b for a, b in zip(now, self.start, strict=True))
        self.start = now
        return trips, exchanges, commands


async def workflow(n: int, concurrency: int, url: str) -> None:
    """A lone task's round trips beside a chord member's (see the module docstring)."""
    manager = TaskManager(broker_url=url, storage_url=url, result_ttl=600, scheduler=False)
    lone_done, chord_done = asyncio.Event(), asyncio.Event()
    count = 0

    @manager.task(name="bench.one")
    async def one(i: int) -> int:
        nonlocal count
        count += 1
        if count == n:
            lone_done.set()
        return i

    @manager.task(name="bench.total")
    async def total(values: list[int]) -> int:
        chord_done.set()
        return sum(values)

    backend = manager.broker
    assert isinstance(backend, RedisBackend)
    await backend.queues()  # connect (and check the eviction policy) before counting
    counts = Counts(backend)
    for i in range(n):
        await one.enqueue(i)
    enqueue = counts.since()
    async with manager.worker(concurrency=concurrency):
        await lone_done.wait()
    lone = counts.since()
    await chord(group(one.s(i) for i in range(n)), total.s()).enqueue()
    submit = counts.since()
    async with manager.worker(concurrency=concurrency):
        await chord_done.wait()
    member = counts.since()
    assert (await manager.storage.counts())[TaskStatus.SUCCEEDED] == 2 * n + 1
    lone_total = (sum(enqueue[:2]) + sum(lone[:2])) / n
    member_total = (sum(submit[:2]) + sum(member[:2])) / n
    print(f"bg-coor Redis, lone tasks against chord members: n = {n:,}, {concurrency} slots")
    print(
        f"  lone task: enqueue {sum(enqueue[:2]) / n:.3f} + worker {lone[0] / n:.3f} "
        f"batches and {lone[1] / n:.3f} blocking exchanges = {lone_total:.3f} round trips "
        f"({(enqueue[2] + lone[2]) / n:.2f} commands) a task"
    )
    print(
        f"  chord member: submit {sum(submit[:2]) / n:.4f} + worker {member[0] / n:.3f} "
        f"batches and {member[1] / n:.3f} blocking exchanges = {member_total:.3f} round trips "
        f"({(submit[2] + member[2]) / n:.2f} commands) a member"
    )
    worker = (sum(member[:2]) - sum(lone[:2])) / n
    print(
        f"  a member costs {member_total - lone_total:+.3f} round trips beside a lone task "
        f"({worker:+.3f} in the worker: reserve and complete)"
    )
    await drop_prefix(backend)
    await manager.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument(
        "--url", default=f"redis://127.0.0.1:6379/15?prefix=bench-{uuid.uuid4().hex[:8]}"
    )
    parser.add_argument("--workflow", action="store_true", help="lone task against chord member")
    args = parser.parse_args()
    asyncio.run((workflow if args.workflow else main)(args.n, args.concurrency, args.url))
