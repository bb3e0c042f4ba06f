"""Enqueue throughput of tasks with a unique key against plain tasks, per backend.

    python benchmarks/unique_bench.py [--backends memory,sqlite,redis,postgres] [--n 20000]
        [--batch 500] [--repeats 3] [--redis-url URL] [--postgres-url URL]

Prints numbers; asserts only that every task was enqueued. For each backend, ``n`` tasks
of one no-op task are enqueued four ways into a fresh namespace: plain or each with its
own ``unique_key`` (all distinct, so none is deduplicated), one task per call
(``submit_handles([task])``, awaited one after the other) or ``--batch`` tasks per call.
The clock covers building each task (``build_task``, as ``fn.enqueue`` does) and the
enqueue. Each way runs ``--repeats`` times (after one unmeasured warm-up of 500 tasks per
backend) and the median is shown, the four ways taking turns so that a busy moment of the
machine does not fall on one of them only. Round trips are counted where the backend
counts them (Redis: command batches on its pipelined connection); elsewhere they print
as ``-``.

A backend is one entry of :data:`BACKENDS`: how to make a fresh URL, how to read its
round trips so far, and how to clean up after a run.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis_cleanup import drop_prefix

from bgcoor_core import TaskHandle, TaskManager, TaskStatus


@dataclass(frozen=True)
class Backend:
    """``url(workdir, base)``: a URL of its own for one run (``base`` is the
    ``--<name>-url`` option, if the backend has one); ``round_trips(manager)``: its round
    trips so far, or ``None`` if it counts none; ``clean(manager)``: after a run."""

    url: Callable[[Path, str], str]
    round_trips: Callable[[TaskManager], int] | None = None
    clean: Callable[[TaskManager], Awaitable[None]] | None = None
    default_url: str = ""


def _redis_url(workdir: Path, base: str) -> str:
    return f"{base.split('?', 1)[0]}?prefix=bench-uniq-{uuid.uuid4().hex[:8]}"


def _redis_round_trips(manager: TaskManager) -> int:
    link: Any = manager.broker.link()  # type: ignore[attr-defined]
    return int(link.round_trips)


async def _redis_clean(manager: TaskManager) -> None:
    await drop_prefix(manager.broker)


def _postgres_url(workdir: Path, base: str) -> str:
    # a schema of its own, dropped when the backend closes
    return f"{base.split('?', 1)[0]}?schema=bench_uniq_{uuid.uuid4().hex[:8]}&temporary=true"


BACKENDS: dict[str, Backend] = {
    "memory": Backend(lambda workdir, base: "memory://"),
    "sqlite": Backend(lambda workdir, base: f"sqlite:///{workdir / uuid.uuid4().hex}.db"),
    "redis": Backend(
        _redis_url, _redis_round_trips, _redis_clean, default_url="redis://127.0.0.1:6379/15"
    ),
    "postgres": Backend(_postgres_url, default_url="postgresql://root@127.0.0.1:5432/test"),
}


@dataclass(frozen=True)
class Row:
    backend: str
    per_call: int
    unique: bool
    seconds: float
    round_trips: int | None


async def measure(name: str, base: str, n: int, per_call: int, unique: bool, workdir: Path) -> Row:
    backend = BACKENDS[name]
    url = backend.url(workdir, base)
    manager = TaskManager(broker_url=url, storage_url=url, scheduler=False)

    @manager.task(name="bench.noop")
    async def noop() -> None:
        pass

    await manager.broker.queues()  # connected (and checked) before the clock starts
    prefix = uuid.uuid4().hex[:8]
    options: Callable[[int], dict[str, Any]] = (
        (lambda i: {"unique_key": f"{prefix}-{i}"}) if unique else (lambda i: {})
    )
    count = backend.round_trips
    before = count(manager) if count else 0
    started = time.perf_counter()
    deduplicated = 0
    for first in range(0, n, per_call):
        tasks = [
            manager.build_task("bench.noop", **options(i))
            for i in range(first, min(first + per_call, n))
        ]
        handles: list[TaskHandle[Any]] = await manager.submit_handles(tasks, None)
        deduplicated += sum(h.deduplicated for h in handles)
    seconds = time.perf_counter() - started
    trips = count(manager) - before if count else None
    pending = (await manager.storage.counts())[TaskStatus.PENDING]
    assert (deduplicated, pending) == (0, n), (deduplicated, pending)
    if backend.clean:
        await backend.clean(manager)
    await manager.close()
    return Row(name, per_call, unique, seconds, trips)


def show(rows: list[Row], n: int) -> None:
    print(f"enqueue of {n:,} no-op tasks: plain against a distinct unique_key each (median)")
    print(f"{'backend':8} {'per call':>8} {'tasks':8} {'tasks/s':>10} {'round trips/task':>17}")
    plain = {(r.backend, r.per_call): r for r in rows if not r.unique}
    for row in rows:
        trips = "-" if row.round_trips is None else f"{row.round_trips / n:.4f}"
        kind = "unique" if row.unique else "plain"
        line = f"{row.backend:8} {row.per_call:>8} {kind:8} {n / row.seconds:>10,.0f} {trips:>17}"
        if row.unique:
            base = plain[(row.backend, row.per_call)]
            line += f"   ({base.seconds / row.seconds:.2f}x plain's throughput)"
        print(line)


async def main(names: list[str], urls: dict[str, str], n: int, batch: int, repeats: int) -> None:
    rows = []
    ways = [(per_call, unique) for per_call in (1, batch) for unique in (False, True)]
    with tempfile.TemporaryDirectory(prefix="bgcoor-unique-bench-") as tmp:
        for name in names:
            base, workdir = urls.get(name, ""), Path(tmp)
            for per_call, unique in ways:  # warm-up: imports, connections, script loads
                await measure(name, base, min(n, 500), per_call, unique, workdir)
            runs: dict[tuple[int, bool], list[Row]] = {way: [] for way in ways}
            for _ in range(repeats):
                for per_call, unique in ways:
                    row = await measure(name, base, n, per_call, unique, workdir)
                    runs[per_call, unique].append(row)
            for way in ways:
                rows.append(sorted(runs[way], key=lambda r: r.seconds)[len(runs[way]) // 2])
    show(rows, n)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500, help="tasks per batched call")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each way (median)")
    for name, entry in BACKENDS.items():
        if entry.default_url:
            parser.add_argument(f"--{name}-url", default=entry.default_url)
    args = parser.parse_args()
    chosen = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = sorted(set(chosen) - BACKENDS.keys())
    if unknown:
        parser.error(f"unknown backends {unknown}; known: {sorted(BACKENDS)}")
    given = {name: getattr(args, f"{name}_url") for name in BACKENDS if BACKENDS[name].default_url}
    asyncio.run(main(chosen, given, args.n, args.batch, args.repeats))
