"""Redis server time per task, from the server's own command statistics.

    python benchmarks/redis_server_time.py [--n 10000] [--concurrency 100] [--url URL]

Prints numbers (and checks every task succeeded). ``n`` no-op tasks are enqueued with
``enqueue_many``, then one in-process worker pool drains them; for each phase it prints
the tasks per second, the microseconds per task the server spent running scripts (``INFO
commandstats``: a script's time includes the commands it runs) and the script calls per
task, with this process's CPU time per task beside them. The statistics are the whole
server's: run it while nothing else uses that Redis. The default URL is the test Redis
database 15 under a throw-away key prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from bgcoor_redis import RedisBackend
from redis_cleanup import drop_prefix

from bgcoor_core import TaskManager, TaskStatus


async def _server_stats(backend: RedisBackend) -> tuple[int, int]:
    """(microseconds, calls) the server has spent in scripts and run, since its start or
    its last ``CONFIG RESETSTAT``."""
    reply = await backend.command("INFO", "commandstats")
    usec = scripts = 0
    for line in reply.decode().splitlines():
        name, _, fields = line.removeprefix("cmdstat_").partition(":")
        if name in ("evalsha", "eval", "fcall"):
            values = dict(field.split("=") for field in fields.split(","))
            usec += int(values["usec"])
            scripts += int(values["calls"])
    return usec, scripts


class _Phase:
    """Server time, script calls, this process's CPU and wall time over one phase."""

    def __init__(self, backend: RedisBackend, label: str) -> None:
        self.backend, self.label = backend, label

    async def __aenter__(self) -> _Phase:
        self.stats = await _server_stats(self.backend)
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    async def __aexit__(self, *exc: object) -> None:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        usec, scripts = await _server_stats(self.backend)
        self.report = (wall, usec - self.stats[0], scripts - self.stats[1], cpu)

    def line(self, n: int) -> str:
        wall, usec, scripts, cpu = self.report
        return (
            f"  {self.label:<13} {n / wall:>8,.0f} tasks/s; scripts {usec / n:6.1f} us/task, "
            f"{scripts / n:.3f} script calls/task; this process {cpu * 1e6 / n:6.1f} us/task"
        )


async def main(n: int, concurrency: int, url: str) -> None:
    manager = TaskManager(broker_url=url, storage_url=url, result_ttl=600)

    @manager.task(name="bench.noop")
    async def noop() -> None:
        return None

    backend = manager.broker
    assert isinstance(backend, RedisBackend)
    enqueue, drain = _Phase(backend, "enqueue_many"), _Phase(backend, "worker")
    try:
        async with enqueue:
            await noop.enqueue_many([()] * n)
        async with manager.worker(concurrency) as pool, drain:
            while pool.processed < n:  # noqa: ASYNC110 (a counter leaves the path untouched)
                await asyncio.sleep(0.002)
        counts = await manager.storage.counts()
        if counts[TaskStatus.SUCCEEDED] != n:
            raise SystemExit(f"expected {n} succeeded tasks, storage counts {counts}")
    finally:
        await drop_prefix(backend)
        await manager.close()
    print(f"bg-coor Redis backend, {n:,} no-op tasks, one pool of {concurrency} slots in-process")
    print(enqueue.line(n))
    print(drain.line(n))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument(
        "--url", default=f"redis://127.0.0.1:6379/15?prefix=bench-{uuid.uuid4().hex[:8]}"
    )
    args = parser.parse_args()
    asyncio.run(main(args.n, args.concurrency, args.url))
