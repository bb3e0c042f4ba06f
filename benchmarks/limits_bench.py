"""What a rate limit, a concurrency limit and a unique key cost a task, per backend.

    python benchmarks/limits_bench.py [--backends memory,sqlite,redis,postgres] [--n 5000]
        [--concurrency 50] [--repeats 3] [--saturated-rate 200] [--redis-url URL]
        [--postgres-url URL]

Prints numbers; asserts only that every task succeeded. For each backend, ``n`` no-op
tasks of one kind are enqueued (``enqueue_many`` in batches of 500, timed apart) into a
fresh namespace, then an in-process worker pool of ``--concurrency`` drains them (timed
from its start to the last task settled). The kinds:

* ``plain``: no option;
* ``unique``: a distinct ``unique_key`` each (none deduplicated);
* ``rate``: ``rate_limit="1000000/s"``, a limit that never defers: the price of the check;
* ``concurrency``: ``concurrency_limit=10000``, never full: the price of the slot kept;
* ``rate+key``: ``rate_limit="1000000/s"``, ``concurrency_limit=10000`` and a
  ``limit_key`` giving 100 keys;
* ``saturated``: ``rate_limit=f"{--saturated-rate}/s"`` with the whole backlog queued:
  the achieved rate (it should be the limit) and what the broker sees per task while the
  limit holds every task back (Redis: round trips of the worker's connection).

Each kind runs ``--repeats`` times (``saturated`` once, over ``n / 5`` tasks), the kinds
taking turns; the median is shown with its ratio to ``plain``. Round trips are counted
where the backend counts them (Redis); elsewhere they print as ``-``.
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

from bgcoor_core import TaskManager, TaskStatus

BATCH = 500


@dataclass(frozen=True)
class Backend:
    url: Callable[[Path, str], str]
    round_trips: Callable[[TaskManager], int] | None = None
    clean: Callable[[TaskManager], Awaitable[None]] | None = None
    default_url: str = ""


def _redis_round_trips(manager: TaskManager) -> int:
    link: Any = manager.broker.link()  # type: ignore[attr-defined]
    return int(link.round_trips)


async def _redis_clean(manager: TaskManager) -> None:
    await drop_prefix(manager.broker)


BACKENDS: dict[str, Backend] = {
    "memory": Backend(lambda workdir, base: "memory://"),
    "sqlite": Backend(lambda workdir, base: f"sqlite:///{workdir / uuid.uuid4().hex}.db"),
    "redis": Backend(
        lambda workdir, base: f"{base.split('?', 1)[0]}?prefix=bench-lim-{uuid.uuid4().hex[:8]}",
        _redis_round_trips,
        _redis_clean,
        default_url="redis://127.0.0.1:6379/15",
    ),
    "postgres": Backend(
        lambda workdir, base: (
            f"{base.split('?', 1)[0]}?schema=bench_lim_{uuid.uuid4().hex[:8]}&temporary=true"
        ),
        default_url="postgresql://root@127.0.0.1:5432/test",
    ),
}

KINDS = ["plain", "unique", "rate", "concurrency", "rate+key"]


def _options(kind: str, saturated_rate: int) -> dict[str, Any]:
    if kind == "rate":
        return {"rate_limit": "1000000/s"}
    if kind == "concurrency":
        return {"concurrency_limit": 10_000}
    if kind == "rate+key":
        return {
            "rate_limit": "1000000/s",
            "concurrency_limit": 10_000,
            "limit_key": lambda i: i % 100,
        }
    if kind == "saturated":
        return {"rate_limit": f"{saturated_rate}/s"}
    return {}


@dataclass(frozen=True)
class Row:
    kind: str
    n: int
    enqueue_s: float
    process_s: float
    round_trips: int | None


async def measure(
    name: str, base: str, kind: str, n: int, concurrency: int, rate: int, workdir: Path
) -> Row:
    backend = BACKENDS[name]
    url = backend.url(workdir, base)
    manager = TaskManager(broker_url=url, storage_url=url, scheduler=False, concurrency=concurrency)

    @manager.task(name="bench.limited", **_options(kind, rate))
    async def limited(i: int) -> None:
        pass

    await manager.broker.queues()  # connected (and checked) before the clock starts
    prefix = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    for first in range(0, n, BATCH):
        numbers = range(first, min(first + BATCH, n))
        if kind == "unique":
            tasks = [
                manager.build_task("bench.limited", (i,), unique_key=f"{prefix}-{i}")
                for i in numbers
            ]
        else:
            tasks = [manager.build_task("bench.limited", (i,)) for i in numbers]
        await manager.submit_many(tasks)
    enqueue_s = time.perf_counter() - started
    count = backend.round_trips
    before = count(manager) if count else 0
    started = time.perf_counter()
    async with manager.worker(concurrency) as pool:
        while pool.processed < n:  # noqa: ASYNC110 - a counter leaves the path untouched
            await asyncio.sleep(0.005)
        process_s = time.perf_counter() - started
    trips = count(manager) - before if count else None
    succeeded = (await manager.storage.counts())[TaskStatus.SUCCEEDED]
    assert succeeded == n, (kind, succeeded, n)
    if backend.clean:
        await backend.clean(manager)
    await manager.close()
    return Row(kind, n, enqueue_s, process_s, trips)


def show(name: str, rows: list[Row], rate: int) -> None:
    plain = next(r for r in rows if r.kind == "plain")
    print(f"\n{name}: tasks/s (median), ratio to plain, round trips per task while processing")
    print(f"{'kind':12} {'enqueue/s':>10} {'x':>6} {'process/s':>10} {'x':>6} {'trips/task':>11}")
    for row in rows:
        trips = "-" if row.round_trips is None else f"{row.round_trips / row.n:.3f}"
        enq, proc = row.n / row.enqueue_s, row.n / row.process_s
        if row.kind == "saturated":
            print(
                f"{'saturated':12} {enq:>10,.0f} {'':>6} {proc:>10,.1f} {'':>6} {trips:>11}"
                f"   (limit {rate}/s: {proc / rate:.0%} of it)"
            )
            continue
        print(
            f"{row.kind:12} {enq:>10,.0f} {enq / (plain.n / plain.enqueue_s):>6.2f} "
            f"{proc:>10,.0f} {proc / (plain.n / plain.process_s):>6.2f} {trips:>11}"
        )


async def main(args: argparse.Namespace, names: list[str], urls: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="bgcoor-limits-bench-") as tmp:
        for name in names:
            base, workdir = urls.get(name, ""), Path(tmp)
            for kind in KINDS:  # warm-up: imports, connections, script loads
                await measure(name, base, kind, 200, args.concurrency, args.saturated_rate, workdir)
            runs: dict[str, list[Row]] = {kind: [] for kind in KINDS}
            for _ in range(args.repeats):
                for kind in KINDS:
                    runs[kind].append(
                        await measure(
                            name,
                            base,
                            kind,
                            args.n,
                            args.concurrency,
                            args.saturated_rate,
                            workdir,
                        )
                    )
            rows = [sorted(runs[k], key=lambda r: r.process_s)[len(runs[k]) // 2] for k in KINDS]
            saturated_n = max(args.saturated_rate * 2, args.n // 5)
            rows.append(
                await measure(
                    name,
                    base,
                    "saturated",
                    saturated_n,
                    args.concurrency,
                    args.saturated_rate,
                    workdir,
                )
            )
            show(name, rows, args.saturated_rate)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument("--n", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--saturated-rate", type=int, default=200)
    for name, entry in BACKENDS.items():
        if entry.default_url:
            parser.add_argument(f"--{name}-url", default=entry.default_url)
    args = parser.parse_args()
    chosen = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = sorted(set(chosen) - BACKENDS.keys())
    if unknown:
        parser.error(f"unknown backends {unknown}; known: {sorted(BACKENDS)}")
    given = {name: getattr(args, f"{name}_url") for name in BACKENDS if BACKENDS[name].default_url}
    asyncio.run(main(args, chosen, given))
