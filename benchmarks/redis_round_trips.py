"""Redis commands and round trips per task, counted on the backend's own connections.

    python benchmarks/redis_round_trips.py [--n 20000] [--concurrency 100] [--url URL]

Prints numbers (and checks every task succeeded). ``n`` no-op tasks are enqueued with
``enqueue_many``, then one in-process worker pool drains them; the counts come from the
pipelined command connection (commands sent, batches = round trips) and the blocking
connections (exchanges: ``BLPOP`` plus a reserve in one write). The default URL is the
test Redis database 15 under a throw-away key prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from bgcoor_redis import RedisBackend

from bgcoor_core import TaskManager, TaskStatus


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
    await backend.command("EVAL", _DELETE_PREFIX, 0, f"{backend.prefix}:*")
    await manager.close()


_DELETE_PREFIX = """
local cursor, n = "0", 0
repeat
  local page = redis.call("SCAN", cursor, "MATCH", ARGV[1], "COUNT", 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do redis.call("DEL", key); n = n + 1 end
until cursor == "0"
return n
"""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument(
        "--url", default=f"redis://127.0.0.1:6379/15?prefix=bench-{uuid.uuid4().hex[:8]}"
    )
    args = parser.parse_args()
    asyncio.run(main(args.n, args.concurrency, args.url))
