"""The threads sync handlers run in (``TaskThreads``): outcomes land on the right
futures in batches, cancelled jobs never run, shutdown stops what is queued."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bgcoor_core._threads import TaskThreads


async def test_every_result_and_error_lands_on_its_own_future() -> None:
    threads = TaskThreads(8)

    def work(n: int) -> int:
        if n % 7 == 0:
            raise ValueError(f"bad {n}")
        return n * n

    futures = [threads.run(work, n) for n in range(2000)]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    for n, outcome in enumerate(outcomes):
        if n % 7 == 0:
            assert isinstance(outcome, ValueError)
            assert str(outcome) == f"bad {n}"
        else:
            assert outcome == n * n
    assert len(threads._threads) <= 8
    threads.shutdown()


async def test_a_job_cancelled_before_a_thread_takes_it_never_runs() -> None:
    threads = TaskThreads(1)
    release = threading.Event()
    ran: list[str] = []
    blocker = threads.run(release.wait, 5)
    queued = threads.run(ran.append, "queued")
    await asyncio.sleep(0.05)
    assert threads.busy == 1  # the blocker holds the one thread
    queued.cancel()
    release.set()
    assert await blocker is True
    after = threads.run(ran.append, "after")
    await after
    assert ran == ["after"]
    assert threads.busy == 0
    threads.shutdown()


async def test_shutdown_cancels_queued_jobs_and_joins_the_threads() -> None:
    threads = TaskThreads(1)
    release = threading.Event()
    blocker = threads.run(release.wait, 5)
    queued = threads.run(lambda: "never")
    await asyncio.sleep(0.05)
    threads.shutdown(wait=False, cancel_futures=True)
    await asyncio.sleep(0.01)  # the cancel is delivered through the loop
    assert queued.cancelled()
    release.set()
    assert await blocker is True
    await asyncio.to_thread(threads.shutdown, wait=True)
    assert not any(t.is_alive() for t in threads._threads)
    with pytest.raises(RuntimeError, match="shut down"):
        threads.run(lambda: None)


async def test_stop_iteration_reaches_the_caller_as_a_runtime_error() -> None:
    threads = TaskThreads(1)

    def stop() -> None:
        raise StopIteration

    with pytest.raises(RuntimeError, match="StopIteration"):
        await threads.run(stop)
    threads.shutdown()


def test_submit_serves_callers_outside_an_event_loop() -> None:
    threads = TaskThreads(2)
    assert threads.submit(pow, 2, 10).result(timeout=5) == 1024
    failed = threads.submit(int, "x")
    with pytest.raises(ValueError, match="invalid literal"):
        failed.result(timeout=5)
    threads.shutdown()
