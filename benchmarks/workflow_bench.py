"""Workflows end to end on each backend: a wide chord and a long chain.

    python benchmarks/workflow_bench.py [--members 10000] [--chain 1000] [--concurrency 100]
        [--backends memory,sqlite,redis,postgres]

Prints numbers; asserts nothing. For each backend (memory, SQLite, Redis, PostgreSQL; one
that cannot run workflows yet, or whose server does not answer, is skipped with the
reason), an in-process worker pool runs:

* a chord of ``--members`` no-op members and a callback summing their results: the time
  to submit it, and the wall time from the start of submission to the callback's result;
* a chain of ``--chain`` tasks each adding one to its parent's result: wall time from
  submission to the last result (members run one after another: it measures the
  per-step latency of release, reserve and the parent-result read).

Throw-away namespaces: a temporary SQLite file, a Redis key prefix in database 15
(deleted after), a PostgreSQL schema with ``temporary=true`` (dropped on close).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import tempfile
import time
import uuid

from bgcoor_core import CapabilityError, TaskManager, chain, chord, group

REDIS = ("127.0.0.1", 6379)
POSTGRES = ("127.0.0.1", 5432)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


async def bench(name: str, url: str, members: int, length: int, concurrency: int) -> None:
    manager = TaskManager(broker_url=url, storage_url=url, scheduler=False)

    @manager.task(name="bench.one")
    async def one(i: int) -> int:
        return i

    @manager.task(name="bench.total")
    async def total(values: list[int]) -> int:
        return sum(values)

    @manager.task(name="bench.inc")
    async def inc(value: int) -> int:
        return value + 1

    try:
        if manager.backends.workflows is None:
            print(f"{name}: skipped, its backend has no workflow store yet")
            return
        async with manager.worker(concurrency):
            started = time.perf_counter()
            handle = await chord(group(one.s(i) for i in range(members)), total.s()).enqueue()
            submitted = time.perf_counter() - started
            result = await handle.result(timeout=600)
            wall = time.perf_counter() - started
            assert result == members * (members - 1) // 2
            print(
                f"{name}: chord of {members:,}: submitted in {submitted * 1000:.0f} ms, "
                f"callback result after {wall:.2f} s ({members / wall:,.0f} members/s)"
            )
            started = time.perf_counter()
            handle = await chain(one.s(0), *(inc.s() for _ in range(length - 1))).enqueue()
            result = await handle.result(timeout=600)
            wall = time.perf_counter() - started
            assert result == length - 1
            print(
                f"{name}: chain of {length:,}: last result after {wall:.2f} s "
                f"({wall / length * 1000:.2f} ms a step)"
            )
    except CapabilityError as exc:
        print(f"{name}: skipped: {exc}")
    finally:
        await manager.close()


async def main(members: int, length: int, concurrency: int, backends: set[str]) -> None:
    if "memory" in backends:
        await bench("memory", "memory://", members, length, concurrency)
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as directory:
            url = f"sqlite:///{directory}/bench.db"
            await bench("sqlite", url, members, length, concurrency)
    if "redis" not in backends:
        pass
    elif _reachable(*REDIS):
        prefix = f"bench-wf-{uuid.uuid4().hex[:8]}"
        await bench(
            "redis",
            f"redis://{REDIS[0]}:{REDIS[1]}/15?prefix={prefix}",
            members,
            length,
            concurrency,
        )
    else:
        print(f"redis: skipped, no server accepts connections on {REDIS[0]}:{REDIS[1]}")
    if "postgres" not in backends:
        pass
    elif _reachable(*POSTGRES):
        schema = f"bench_wf_{uuid.uuid4().hex[:8]}"
        url = f"postgresql://root@{POSTGRES[0]}:{POSTGRES[1]}/test?schema={schema}&temporary=true"
        await bench("postgres", url, members, length, concurrency)
    else:
        print(f"postgres: skipped, no server accepts connections on {POSTGRES[0]}:{POSTGRES[1]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--chain", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--backends", default="memory,sqlite,redis,postgres")
    args = parser.parse_args()
    chosen = set(args.backends.split(","))
    asyncio.run(main(args.members, args.chain, args.concurrency, chosen))
