"""SQLite backend benchmark: throughput and latency with one and two worker processes.

    python benchmarks/sqlite_bench.py [--n 5000] [--latency-n 300] [--concurrency 50]

Prints numbers; asserts nothing. Each run uses a fresh database file in a temporary
directory; workers are real OS processes sharing that file with the producer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def worker_env(url: str, concurrency: int, poll: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BGCOOR_")}
    full = f"{url}?poll_interval={poll}"
    env.update(
        BGCOOR_BROKER_URL=full,
        BGCOOR_STORAGE_URL=full,
        BGCOOR_CONCURRENCY=str(concurrency),
        PYTHONPATH=str(HERE),
    )
    return env


def start_workers(count: int, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen([sys.executable, str(HERE / "bench_app.py")], env=env)
        for _ in range(count)
    ]


def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    for proc in workers:
        proc.wait(timeout=30)


def fresh_app(url: str) -> object:
    """Import bench_app anew so its module-level manager reads ``url``."""
    os.environ.update(BGCOOR_BROKER_URL=url, BGCOOR_STORAGE_URL=url)
    sys.modules.pop("bench_app", None)
    import bench_app

    return bench_app


async def throughput(url: str, n: int, processes: int, concurrency: int) -> None:
    app = fresh_app(url)
    manager, noop = app.manager, app.noop  # type: ignore[attr-defined]

    from bgcoor_core import TaskStatus

    started = time.perf_counter()
    for i in range(0, n, 1000):
        await noop.enqueue_many([() for _ in range(min(1000, n - i))])
    enqueue_s = time.perf_counter() - started
    workers = start_workers(processes, worker_env(url, concurrency, 0.01))
    first: float | None = None
    while True:
        counts = await manager.storage.counts()
        if first is None and counts[TaskStatus.PENDING] < n:
            first = time.perf_counter()
        if counts[TaskStatus.SUCCEEDED] >= n:
            break
        await asyncio.sleep(0.01)
    done = time.perf_counter()
    stop(workers)
    await manager.close()
    assert first is not None
    print(
        f"  {processes} worker process(es) x concurrency {concurrency}: "
        f"enqueue {n / enqueue_s:,.0f}/s, processed {n / (done - first):,.0f}/s"
    )


async def latency(url: str, count: int, poll: float) -> None:
    app = fresh_app(url)
    manager, echo = app.manager, app.echo  # type: ignore[attr-defined]

    workers = start_workers(1, worker_env(url, 10, poll))
    for i in range(5):  # warm up, and wait for the worker to be ready
        await (await echo.enqueue(i)).result(timeout=30)
    samples = []
    for i in range(count):
        t0 = time.perf_counter()
        handle = await echo.enqueue(i)
        assert await handle.result(timeout=10) == i
        samples.append((time.perf_counter() - t0) * 1000)
    stop(workers)
    await manager.close()
    q = statistics.quantiles(samples, n=100)
    print(
        f"  latency, 1 idle worker, poll_interval {poll}s: p50 {q[49]:.2f} ms, "
        f"p95 {q[94]:.2f} ms, p99 {q[98]:.2f} ms ({count} sequential round trips)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--latency-n", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    print("bg-coor SQLite backend")
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (1, 2):
            url = f"sqlite:///{tmp}/tp{processes}.db"
            asyncio.run(throughput(url, args.n, processes, args.concurrency))
        for poll in (0.01, 0.002):
            url = f"sqlite:///{tmp}/lat{poll}.db"
            asyncio.run(latency(url, args.latency_n, poll))


if __name__ == "__main__":
    main()
