"""Cancelling a task that runs in another process (issue 14, item 5), and children killed by
a signal counting as lost workers (item 6), with real ``bgcoor worker`` processes.

On every backend, a producer in this process cancels tasks a worker process is running:

* an async task gets ``CancelledError`` within 1 s of ``cancel()`` (Redis: PUBLISH, PostgreSQL:
  NOTIFY, SQLite: the pool reads its running tasks' records every 0.5 s);
* a sync task in a thread sees ``current_task().cancel_requested`` become True as soon;
* a process-isolated task sleeping for an hour is killed (its child pid gone), its record is
  ``cancelled`` and it never runs again.

A process-isolated task whose child dies of SIGSEGV every time (``max_retries=0``) is run
again without using retry attempts until ``max_worker_lost`` (2 here), then is dead with the
signal named. The measured latencies are printed (``-s`` shows them).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bgcoor_core import TaskStatus

from .backends import Backend
from .cancel_app import declare, marked
from .harness import open_rig, wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]

APP = "reliability.cancel_app:manager"
#: The bound the issue sets, from ``cancel()`` to the task being told.
BOUND = 1.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not reaped yet) is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _has(marks: str, what: str) -> Callable[[], bool]:
    return lambda: bool(marked(marks, what))


def _gone(pid: int) -> Callable[[], bool]:
    return lambda: not _alive(pid)


async def test_a_running_task_is_cancelled_from_another_process(
    backend: Backend, tmp_path: Path
) -> None:
    async with open_rig(backend, tmp_path, app=APP) as rig:
        tasks = declare(rig.producer)
        files = {kind: str(tmp_path / f"{kind}.marks") for kind in ("async", "sync", "process")}
        worker = rig.workers.start(concurrency=3)
        await worker.ready()
        handles = {
            "async": await tasks.waits.enqueue(files["async"]),
            "sync": await tasks.polls.enqueue(files["sync"]),
            "process": await tasks.sleeps.enqueue(files["process"]),
        }
        for kind, marks in files.items():
            await wait_until(_has(marks, "start"), 30, f"{kind} started")
        await asyncio.sleep(0.3)  # all three well into their run
        latency: dict[str, float] = {}
        for kind, handle in handles.items():
            began = time.time()
            assert await rig.producer.cancel(handle.id)
            if kind == "process":
                [(child, _)] = marked(files[kind], "start")
                await wait_until(_gone(child), 10, "the child killed")
                latency[kind] = time.time() - began
            else:
                what = "cancelled" if kind == "async" else "requested"
                await wait_until(_has(files[kind], what), 10, what)
                [(_, told)] = marked(files[kind], what)
                latency[kind] = told - began
        records = {
            kind: await rig.producer.storage.wait(h.id, timeout=10) for kind, h in handles.items()
        }
        await asyncio.sleep(1.0)  # a retry, were there one, would have started by now
        again = {kind: await h.info() for kind, h in handles.items()}
        starts = {kind: len(marked(marks, "start")) for kind, marks in files.items()}
        output = worker.output()
    figures = ", ".join(f"{kind} {seconds * 1000:.0f} ms" for kind, seconds in latency.items())
    print(f"\n{backend.name}: cancel latency {figures}")
    assert latency["async"] < BOUND, output[-3000:]
    assert latency["sync"] < BOUND, output[-3000:]
    # SIGTERM ends a sleeping child at once; the grace before SIGKILL is not needed.
    assert latency["process"] < BOUND + 0.5, output[-3000:]
    assert all(r.status is TaskStatus.CANCELLED for r in records.values()), records
    assert all(r.status is TaskStatus.CANCELLED for r in again.values()), again
    assert starts == {"async": 1, "sync": 1, "process": 1}  # final: never run again
    assert marked(files["process"], "woke") == []


async def test_a_child_killed_by_sigsegv_counts_as_a_lost_worker(
    backend: Backend, tmp_path: Path
) -> None:
    async with open_rig(backend, tmp_path, app=APP, max_worker_lost=2) as rig:
        tasks = declare(rig.producer)
        marks = str(tmp_path / "segfault.marks")
        async with rig.workers.supervised(1, 2):
            handle = await tasks.segfaults.enqueue(marks)
            record = await rig.producer.storage.wait(handle.id, timeout=60)
            broker = rig.producer.broker

            async def dead_lettered() -> bool:  # the message moves just after the record
                return any(d.id == handle.id for d in await broker.dead_letters("default"))

            await wait_until(dead_lettered, 10, "the dead letter")
            letters = await broker.dead_letters("default")
        await rig.workers.stop()
        rig.workers.check()
    runs = marked(marks, "start")
    assert record.status is TaskStatus.DEAD
    assert len(runs) == 3  # max_worker_lost + 1, though max_retries is 0
    assert len({pid for pid, _ in runs}) == 3  # a new child each time
    assert record.error is not None
    assert record.error.startswith("WorkerLostError: ")
    assert "killed by SIGSEGV" in record.error
    [letter] = [d for d in letters if d.id == handle.id]
    assert letter.reason.startswith("worker_lost: ")
    assert "SIGSEGV" in letter.reason
