"""Workflows end to end on each backend: a wide chord and a long chain.

    python benchmarks/workflow_bench.py [--members 10000] [--chain 1000] [--concurrency 100]
        [--backends memory,sqlite,redis,postgres] [--timeout 600] [--json]

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

``--json`` prints one JSON line per measurement instead (``lib``, ``backend``,
``workload`` ``chord`` or ``chain``, ``n``, ``submit_s``, ``wall_s``, ``ok``; ``error``
for a skipped backend or a failed measurement), the format of the workflow peers in
``benchmarks/peers/workflow_peers_*.py``, which ``benchmarks/workflow_peers_run.py`` reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from redis_cleanup import drop_prefix

from bgcoor_core import CapabilityError, TaskManager, chain, chord, group

REDIS = ("127.0.0.1", 6379)
POSTGRES = ("127.0.0.1", 5432)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class Report:
    """Prints each figure as a sentence, or (``--json``) as a JSON line."""

    def __init__(self, *, as_json: bool = False, concurrency: int = 100) -> None:
        self.as_json = as_json
        self.worker = f"in-process pool, concurrency {concurrency}"

    def _line(self, backend: str, workload: str, n: int, **fields: Any) -> None:
        line = {"lib": "bgcoor", "version": version("bgcoor"), "backend": backend}
        line.update(workload=workload, n=n, worker=self.worker, **fields)
        print(json.dumps(line), flush=True)

    def skipped(self, name: str, reason: str, workloads: dict[str, int]) -> None:
        if not self.as_json:
            print(f"{name}: skipped, {reason}")
            return
        for workload, n in workloads.items():
            self._line(name, workload, n, ok=False, error=f"skipped, {reason}")

    def chord(self, name: str, members: int, submitted: float, wall: float) -> None:
        if self.as_json:
            self._line(name, "chord", members, submit_s=submitted, wall_s=wall, ok=True)
            return
        print(
            f"{name}: chord of {members:,}: submitted in {submitted * 1000:.0f} ms, "
            f"callback result after {wall:.2f} s ({members / wall:,.0f} members/s)"
        )

    def chain(self, name: str, length: int, submitted: float, wall: float) -> None:
        if self.as_json:
            self._line(name, "chain", length, submit_s=submitted, wall_s=wall, ok=True)
            return
        print(
            f"{name}: chain of {length:,}: last result after {wall:.2f} s "
            f"({wall / length * 1000:.2f} ms a step)"
        )


#: How main() reports; ``--json`` replaces it.
REPORT = Report()


async def _timed(submit: Callable[[], Any], timeout: float) -> tuple[Any, float, float]:
    started = time.perf_counter()
    handle = await submit()
    submitted = time.perf_counter() - started
    result = await handle.result(timeout=timeout)
    return result, submitted, time.perf_counter() - started


async def bench(
    name: str, url: str, members: int, length: int, concurrency: int, timeout: float = 600
) -> None:
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

    workloads = {"chord": members, "chain": length}
    try:
        if manager.backends.workflows is None:
            REPORT.skipped(name, "its backend has no workflow store yet", workloads)
            return
        async with manager.worker(concurrency):
            wide = chord(group(one.s(i) for i in range(members)), total.s())
            result, submitted, wall = await _timed(wide.enqueue, timeout)
            assert result == members * (members - 1) // 2
            REPORT.chord(name, members, submitted, wall)
            long = chain(one.s(0), *(inc.s() for _ in range(length - 1)))
            result, submitted, wall = await _timed(long.enqueue, timeout)
            assert result == length - 1
            REPORT.chain(name, length, submitted, wall)
    except CapabilityError as exc:
        REPORT.skipped(name, str(exc), workloads)
    finally:
        await manager.close()


async def main(
    members: int, length: int, concurrency: int, backends: set[str], timeout: float = 600
) -> None:
    sizes = (members, length, concurrency, timeout)
    workloads = {"chord": members, "chain": length}
    if "memory" in backends:
        await bench("memory", "memory://", *sizes)
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as directory:
            await bench("sqlite", f"sqlite:///{directory}/bench.db", *sizes)
    if "redis" not in backends:
        pass
    elif _reachable(*REDIS):
        prefix = f"bench-wf-{uuid.uuid4().hex[:8]}"
        url = f"redis://{REDIS[0]}:{REDIS[1]}/15?prefix={prefix}"
        try:
            await bench("redis", url, *sizes)
        finally:  # its records are kept for days: leave nothing on the shared server
            cleaner = TaskManager(broker_url=url, storage_url=url)
            await drop_prefix(cleaner.broker)
            await cleaner.close()
    else:
        where = f"no server accepts connections on {REDIS[0]}:{REDIS[1]}"
        REPORT.skipped("redis", where, workloads)
    if "postgres" not in backends:
        pass
    elif _reachable(*POSTGRES):
        schema = f"bench_wf_{uuid.uuid4().hex[:8]}"
        url = f"postgresql://root@{POSTGRES[0]}:{POSTGRES[1]}/test?schema={schema}&temporary=true"
        await bench("postgres", url, *sizes)
    else:
        where = f"no server accepts connections on {POSTGRES[0]}:{POSTGRES[1]}"
        REPORT.skipped("postgres", where, workloads)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--chain", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--backends", default="memory,sqlite,redis,postgres")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per result")
    parser.add_argument("--json", action="store_true", help="one JSON line per measurement")
    args = parser.parse_args()
    chosen = set(args.backends.split(","))
    REPORT = Report(as_json=args.json, concurrency=args.concurrency)
    asyncio.run(main(args.members, args.chain, args.concurrency, chosen, args.timeout))
