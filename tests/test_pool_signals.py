"""WorkerPool.run and signals: graceful on the first, cancel on the second, exit on the third."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from pool_support import WaitUntil, pool_for, statuses_of_started

from bgcoor_core import (
    MemoryBroker,
    MemoryStorage,
    Settings,
    Task,
    TaskManager,
    TaskRegistry,
    TaskStatus,
)


async def test_sigterm_shuts_down_gracefully(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
    wait_until: WaitUntil,
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def work(n: int) -> int:
        started.set()
        await release.wait()
        return n

    registry.register("work", work)
    tasks = [Task.new("work", {"args": [i]}) for i in range(5)]
    await broker.push_many(tasks)
    settings = fast_settings(prefetch=4, lease_seconds=30.0, shutdown_grace=10.0)
    pool = pool_for(broker, storage, registry, settings, 1)
    serving = asyncio.create_task(pool.run())
    await started.wait()  # run() installs its signal handlers before it starts the pool

    os.kill(os.getpid(), signal.SIGTERM)

    async def buffered_handed_back() -> bool:
        stats = await broker.stats("default")
        return (stats.ready, stats.reserved) == (4, 1)

    await wait_until(buffered_handed_back, timeout=2.0, what="buffer handed back on SIGTERM")
    assert not serving.done()  # the running task may finish
    release.set()
    await asyncio.wait_for(serving, 5)
    assert (await statuses_of_started(storage, tasks))[TaskStatus.SUCCEEDED] == 1
    assert (await broker.stats("default")).ready == 4


async def test_a_second_signal_hands_back_running_tasks_at_once(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
    wait_until: WaitUntil,
) -> None:
    started = asyncio.Event()

    async def stuck() -> None:
        started.set()
        await asyncio.sleep(3600)

    registry.register("stuck", stuck)
    task = Task.new("stuck")
    await broker.push(task)
    settings = fast_settings(lease_seconds=30.0, shutdown_grace=30.0)
    pool = pool_for(broker, storage, registry, settings, 2)
    serving = asyncio.create_task(pool.run())
    await started.wait()
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.sleep(0.05)
    assert not serving.done()  # the first signal waits for the running task
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.wait_for(serving, 5)
    stats = await broker.stats("default")
    assert (stats.ready, stats.reserved) == (1, 0)


async def test_a_second_signal_says_what_it_cancels_and_what_it_waits_for(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
    wait_until: WaitUntil,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = threading.Event()
    in_thread = threading.Event()
    started = asyncio.Event()

    def blocking() -> None:  # a thread cannot be interrupted: it runs until the gate opens
        in_thread.set()
        gate.wait(10)

    async def stuck() -> None:
        started.set()
        await asyncio.sleep(3600)

    registry.register("blocking", blocking)
    registry.register("stuck", stuck)
    await broker.push_many([Task.new("blocking"), Task.new("stuck")])
    settings = fast_settings(lease_seconds=30.0, shutdown_grace=30.0)
    serving = asyncio.create_task(pool_for(broker, storage, registry, settings, 3).run())
    try:
        await asyncio.wait_for(started.wait(), 5)
        assert await asyncio.to_thread(in_thread.wait, 5)
        caplog.set_level(logging.INFO, logger="bgcoor.pool")
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(0.05)
        assert not serving.done()
        os.kill(os.getpid(), signal.SIGINT)

        async def both_handed_back() -> bool:
            stats = await broker.stats("default")
            return (stats.ready, stats.reserved) == (2, 0)

        await wait_until(both_handed_back, timeout=5, what="both tasks handed back")
        await wait_until(lambda: "waiting for 1 sync task thread to finish" in caplog.text)
        assert not serving.done()  # the thread still runs, and run() waits for it
    finally:
        gate.set()
    await asyncio.wait_for(serving, 5)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        "second signal: cancelling 2 running task(s), handing them back; waiting for 1 sync "
        "task thread, which cannot be interrupted (a third signal exits at once)"
    ) in warnings


APP = """
import time

from bgcoor_core import TaskManager

manager = TaskManager()


@manager.task(name="block")
def block(seconds: float) -> None:
    time.sleep(seconds)  # a sync task thread: no signal interrupts it
"""


async def test_a_third_signal_exits_at_once_without_a_traceback(tmp_path: Path) -> None:
    """A real ``bgcoor worker``: the first signal waits for the sync task, the second
    hands it back and still waits for its thread, the third exits with 130."""
    (tmp_path / "third_signal_app.py").write_text(APP)
    url = f"sqlite:///{tmp_path}/signals.db"
    env = {
        **os.environ,
        "BGCOOR_BROKER_URL": url,
        "BGCOOR_STORAGE_URL": url,
        "BGCOOR_POLL_SECONDS": "0.05",
        "BGCOOR_SHUTDOWN_GRACE": "30",
    }
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    producer = TaskManager(broker_url=url, storage_url=url)

    @producer.task(name="block")
    def block(seconds: float) -> None:  # the producer's side of the same task
        raise AssertionError("runs in the worker only")

    with out.open("w") as stdout, err.open("w") as stderr:
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bgcoor_core.cli",
            "worker",
            "third_signal_app",
            cwd=tmp_path,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        await _until(lambda: "ready:" in out.read_text(), "the worker is ready")
        handle = await block.enqueue(30.0)

        async def running() -> bool:
            return (await producer.get(handle.id)).status is TaskStatus.RUNNING

        await _until(running, "the task runs")
        worker.send_signal(signal.SIGINT)
        await asyncio.sleep(0.3)
        assert worker.returncode is None  # graceful: waits for the running task
        worker.send_signal(signal.SIGINT)
        await _until(lambda: "which cannot be interrupted" in err.read_text(), "second signal")
        await asyncio.sleep(0.2)
        assert worker.returncode is None  # the sync thread still blocks the exit
        assert (await producer.broker.stats("default")).ready == 1  # handed back already
        worker.send_signal(signal.SIGINT)
        began = time.monotonic()
        code = await asyncio.wait_for(worker.wait(), 5)
        assert time.monotonic() - began < 2.0
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        await producer.close()
    errors = err.read_text()
    assert code == 130, errors
    assert "third signal: exiting now" in errors
    assert "Traceback" not in errors
    assert "KeyboardInterrupt" not in errors


async def _until(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)
