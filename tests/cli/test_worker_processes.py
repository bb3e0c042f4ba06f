"""``bgcoor worker --processes N``: N worker processes under one supervisor, in real
processes on one SQLite file. The supervisor restarts a child that dies (with a backoff
when one fails at start-up), passes signals on for a graceful stop, and its children stop
when it is gone."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cli_support import Subprocess, fails, sqlite_env, write_module

from bgcoor_core import TaskManager
from bgcoor_core._supervisor import Backoff, describe_exit

pytestmark = pytest.mark.timeout(60)

APP = """
import os
import pathlib
import time

from bgcoor_core import TaskManager

HERE = pathlib.Path(__file__).parent
with open(HERE / "starts.txt", "a") as starts:  # one line per process that imports the app
    starts.write(f"{os.getpid()}\\n")
if os.environ.get("CRASH_IN_CHILDREN") and len((HERE / "starts.txt").read_text().split()) > 1:
    raise RuntimeError("this child cannot start")  # the supervisor imported the app first

manager = TaskManager()


@manager.task(name="whoami")
def whoami(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@manager.task(name="slow")
def slow(seconds: float) -> int:
    (HERE / "slow-started").write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()
"""

READY = re.compile(r"^worker (\d+) \(pid (\d+)\) ready$", re.MULTILINE)


@pytest.fixture
def app_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    sqlite_env(monkeypatch, tmp_path)
    write_module(tmp_path, "procs_app", APP)
    return tmp_path


def start(app_dir: Path, *options: str, env: dict[str, str] | None = None) -> Subprocess:
    return Subprocess("worker", "procs_app", *options, cwd=app_dir, env=env)


def wait_ready(worker: Subprocess) -> None:
    """Wait for the supervisor's ``ready:`` (every child started: slow on a busy machine)."""
    if not worker.ready.wait(45):
        worker.proc.kill()
        raise AssertionError(f"the workers never got ready: {worker.finish()}")


def children(worker: Subprocess) -> dict[int, int]:
    """The children that said they were ready so far: index -> latest pid."""
    return {int(index): int(pid) for index, pid in READY.findall("".join(worker.out))}


def producer() -> TaskManager:
    """A manager that enqueues the app's tasks by name without running or importing them."""
    manager = TaskManager()

    def whoami(seconds: float) -> int:
        raise NotImplementedError  # the workers run the app's own

    manager.task(name="whoami")(whoami)
    manager.task(name="slow")(whoami)
    return manager


def run_tasks(name: str, *args: Any, count: int = 1, timeout: float = 20) -> list[Any]:
    """Enqueue ``count`` calls from this process and wait for every result."""

    async def go() -> list[Any]:
        manager = producer()
        try:
            handles = [await manager.enqueue(name, *args) for _ in range(count)]
            return [await handle.result(timeout=timeout) for handle in handles]
        finally:
            await manager.close()

    return asyncio.run(go())


def status_of(task_id: str) -> Any:
    async def go() -> Any:
        manager = producer()
        try:
            return await manager.get(task_id)
        finally:
            await manager.close()

    return asyncio.run(go())


def alive(pid: int) -> bool:
    """Running (a zombie not yet reaped by whoever adopted it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def stop(worker: Subprocess, timeout: float = 20) -> tuple[int, str, str]:
    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGTERM)
    return worker.finish(timeout=timeout)


# -- tests -----------------------------------------------------------------------------


def test_two_processes_share_the_work_and_the_banner_says_so(app_dir: Path) -> None:
    worker = start(app_dir, "--processes", "2", "--concurrency", "1")
    try:
        wait_ready(worker)
        pids = run_tasks("whoami", 0.2, count=12)
        started = children(worker)
    finally:
        code, out, err = stop(worker)
    assert code == 0, err
    assert sorted(started) == [1, 2]
    assert set(pids) <= set(started.values())  # only the children ran tasks
    assert len(set(pids)) == 2, pids  # and both did
    assert worker.proc.pid not in pids
    assert re.search(r"^processes +2\s*$", out, re.MULTILINE), out
    assert re.search(r"^concurrency +1 per process \(2 in all\)\s*$", out, re.MULTILINE)
    assert out.count("bg-coor ") == 1  # one banner, the supervisor's
    assert "ready: 2 worker processes; press Ctrl+C to stop (twice to force)" in out
    done = [int(n) for n in re.findall(r"^worker \d \(pid \d+\) stopped after (\d+)", out, re.M)]
    assert sum(done) == 12, out
    assert "supervisor stopped: 2 worker processes, 0 restart(s)" in out
    assert re.search(r"INFO bgcoor\.executor: \[worker [12]\] task .* succeeded", err), err


def test_a_killed_child_is_restarted_and_sigterm_stops_every_child_gracefully(
    app_dir: Path,
) -> None:
    worker = start(app_dir, "--processes", "2")
    try:
        wait_ready(worker)
        victim = children(worker)[1]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: children(worker).get(1, victim) != victim, 30, "a new worker 1")
        pids = set(children(worker).values())
        assert victim not in pids
        assert all(alive(pid) for pid in pids)
        assert set(run_tasks("whoami", 0.05, count=6)) <= pids  # tasks keep flowing
        task_id = asyncio.run(_enqueue("slow", 2.5))
        wait_until((app_dir / "slow-started").exists, 30, "the slow task to start")
    finally:
        code, out, err = stop(worker)  # while the slow task runs
    assert code == 0, err
    assert f"worker 1 (pid {victim}) was killed by SIGKILL after" in err
    assert "restarting it in 1 s" in err
    assert "supervisor stopped: 2 worker processes, 1 restart(s)" in out
    record = status_of(task_id)  # it finished, and its outcome is stored
    assert record.status == "succeeded", record
    assert record.result == int((app_dir / "slow-started").read_text())
    assert "SIGTERM received: stopping 2 worker process(es)" in err
    assert err.count("SIGTERM received: shutting down") == 2  # each child once, forwarded
    assert "waiting for 1 running task(s)" in err
    assert not [pid for pid in pids if alive(pid)]


async def _enqueue(name: str, *args: Any) -> str:
    manager = producer()
    try:
        return (await manager.enqueue(name, *args)).id
    finally:
        await manager.close()


@pytest.mark.slow  # two failed start-ups of each child, with a backoff between (~15 s)
def test_a_child_failing_at_start_up_is_restarted_with_a_backoff(app_dir: Path) -> None:
    worker = start(app_dir, "--processes", "2", env={"CRASH_IN_CHILDREN": "1"})
    try:
        wait_until(lambda: len(exits(worker)) >= 2, 40, "worker 1 to fail twice")
    finally:
        code, out, err = stop(worker)
    assert code == 0, err  # no child ever served, so none had anything to stop
    assert "this child cannot start" in err
    assert "ready:" not in out
    (first, delay), (second, doubled) = exits(worker)[:2]
    assert (delay, doubled) == (1, 2)
    # Between two exits the supervisor waited out the backoff (then the child's start-up):
    # it does not spin.
    assert second - first >= 1.0
    starts = len((app_dir / "starts.txt").read_text().split()) - 1  # minus the supervisor
    failed = err.count("exited with status 1 after")
    assert failed <= starts <= failed + 2  # every start was logged when it failed


def exits(worker: Subprocess) -> list[tuple[float, int]]:
    """Worker 1's logged exits: (time logged, backoff announced in seconds)."""
    pattern = r"^(\S+) WARNING bgcoor\.supervisor: worker 1 \(pid \d+\) exited .* in (\d+) s$"
    return [
        (datetime.fromisoformat(when).timestamp(), int(delay))
        for when, delay in re.findall(pattern, "".join(worker.err), re.MULTILINE)
    ]


def test_children_stop_when_the_supervisor_is_killed(app_dir: Path) -> None:
    worker = start(app_dir, "--processes", "2")
    try:
        wait_ready(worker)
        pids = list(children(worker).values())
        worker.proc.kill()
        wait_until(lambda: not any(alive(pid) for pid in pids), 30, "the children to stop")
    finally:
        _, _, err = worker.finish()
    assert err.count("the supervisor is gone; stopping") == 2


def test_burst_with_processes_exits_0_once_the_queue_is_empty(app_dir: Path) -> None:
    asyncio.run(_enqueue_many("whoami", 0.05, count=6))
    code, out, err = start(app_dir, "--processes", "2", "--burst").finish(timeout=30)
    assert code == 0, err
    done = [int(n) for n in re.findall(r"^worker \d \(pid \d+\) stopped after (\d+)", out, re.M)]
    assert len(done) == 2, out
    assert sum(done) == 6
    assert "0 restart(s)" in out


async def _enqueue_many(name: str, *args: Any, count: int) -> None:
    manager = producer()
    try:
        for _ in range(count):
            await manager.enqueue(name, *args)
    finally:
        await manager.close()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_processes_below_1_is_a_usage_error(value: str) -> None:
    line = fails("worker", "cli_app", "--processes", value, code=2)
    assert line.startswith("error: Invalid value for '--processes' / '-p'")
    assert "greater than or equal to 1" in line


def test_backoff_doubles_up_to_its_maximum() -> None:
    backoff = Backoff(initial=1, maximum=30)
    assert [backoff.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_describe_exit() -> None:
    assert describe_exit(1) == "exited with status 1"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
