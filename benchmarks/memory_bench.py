"""Throughput and latency of the memory backend, end to end through TaskManager.

    python benchmarks/memory_bench.py [--n 20000] [--concurrency 100] [--latency-n 2000]
                                      [--serializer json]

Prints numbers; asserts nothing. Throughput: ``n`` no-op tasks are enqueued with
``enqueue_many`` (timed alone), then an in-process worker pool drains them (timed from its
start until the last task is settled); "rich args" is an async task taking a ``datetime``,
a ``UUID`` and a small pydantic model (issue 15's cost of rich values). Latency:
``latency-n`` sequential round trips of enqueue-then-await-result against an idle worker.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from bgcoor_core import TaskFunction, TaskManager, TaskStatus

SERIALIZER = "json"


class Order(BaseModel):
    id: int
    customer: str
    total: Decimal


RICH_ARGS = (
    datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
    uuid.uuid4(),
    Order(id=7, customer="ada", total=Decimal("19.90")),
)


def new_manager(concurrency: int) -> TaskManager:
    return TaskManager(
        broker_url="memory://",
        storage_url="memory://",
        concurrency=concurrency,
        serializer=SERIALIZER,
    )


def register_rich(manager: TaskManager) -> TaskFunction[..., None]:
    @manager.task(name="bench.rich")
    async def rich(when: datetime, key: uuid.UUID, order: Order) -> None:
        return None

    return rich


def register_noop(manager: TaskManager, *, sync: bool) -> TaskFunction[..., None]:
    if sync:

        @manager.task(name="bench.noop_sync")
        def noop_sync() -> None:
            return None

        return noop_sync

    @manager.task(name="bench.noop")
    async def noop() -> None:
        return None

    return noop


async def throughput(
    n: int, concurrency: int, *, sync: bool, rich: bool = False
) -> tuple[float, float]:
    """Tasks per second enqueued, and processed by a pool with ``concurrency`` slots."""
    manager = new_manager(concurrency)
    task = register_rich(manager) if rich else register_noop(manager, sync=sync)
    args: Sequence[Any] = RICH_ARGS if rich else ()
    gc.collect()
    started = time.perf_counter()
    await task.enqueue_many([args] * n)
    enqueue_s = time.perf_counter() - started

    started = time.perf_counter()
    async with manager.worker(concurrency) as pool:
        # Polling a counter leaves the measured path untouched (no observer hook).
        while pool.processed < n:  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        process_s = time.perf_counter() - started
    counts = await manager.storage.counts()
    await manager.close()
    if counts[TaskStatus.SUCCEEDED] != n:  # a benchmark of lost tasks would be meaningless
        sys.exit(f"expected {n} succeeded tasks, storage counts {counts}")
    return n / enqueue_s, n / process_s


async def latency(n: int, *, sync: bool) -> list[float]:
    """Seconds per round trip: enqueue one task, await its result; the worker is idle."""
    manager = new_manager(4)
    noop = register_noop(manager, sync=sync)
    samples = []
    async with manager.worker(4):
        for _ in range(n):
            started = time.perf_counter()
            handle = await noop.enqueue()
            await handle.result(timeout=10)
            samples.append(time.perf_counter() - started)
    await manager.close()
    return samples


def percentiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}


def report_latency(label: str, samples: list[float], fmt: Callable[[float], str]) -> None:
    p = percentiles(samples)
    print(
        f"{label:<28} p50 {fmt(p['p50'])}  p95 {fmt(p['p95'])}  p99 {fmt(p['p99'])}"
        f"  ({len(samples)} round trips)"
    )


async def main(args: argparse.Namespace) -> None:
    global SERIALIZER
    SERIALIZER = args.serializer
    print(f"bg-coor memory backend, Python {sys.version.split()[0]}, serializer {SERIALIZER}")
    for kind, sync, rich in (
        ("async no-op", False, False),
        ("sync no-op", True, False),
        ("async rich args", False, True),
    ):
        enq, proc = await throughput(args.n, args.concurrency, sync=sync, rich=rich)
        print(
            f"{'throughput (' + kind + ')':<28} enqueue {enq:>9,.0f} tasks/s  "
            f"processed {proc:>9,.0f} tasks/s  (n={args.n}, concurrency={args.concurrency})"
        )
    for sync in (False, True):
        kind = "sync" if sync else "async"
        samples = await latency(args.latency_n, sync=sync)
        report_latency(f"latency ({kind} no-op)", samples, lambda s: f"{s * 1e3:6.3f} ms")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20_000, help="tasks for throughput")
    parser.add_argument("--concurrency", type=int, default=100, help="worker pool slots")
    parser.add_argument("--latency-n", type=int, default=2_000, help="sequential round trips")
    parser.add_argument("--serializer", default="json", help="BGCOOR_SERIALIZER for the run")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
