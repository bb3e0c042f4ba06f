"""Shared machinery: worker processes, the ledger check, polling waits, and the rig that
ties one backend, one working folder, the workers and a producer together.

Everything here is used by the tests and by ``benchmarks/chaos.py`` alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgcoor_core import TaskManager, TaskStatus

from .backends import Backend
from .tasks import Tasks, create_side_effects_table, declare

TESTS = Path(__file__).resolve().parent.parent
APP = "reliability.app:manager"

#: Settings every scenario starts from (CI-sized: short leases, quick retries). The
#: heartbeat leaves 1.6 s of slack: a loaded CI machine must not make leases lapse.
BASE_SETTINGS: dict[str, Any] = {
    "lease_seconds": 2.0,
    "heartbeat_seconds": 0.4,
    "poll_seconds": 0.2,
    "shutdown_grace": 5.0,
    "retry_backoff": 0.1,
    "retry_backoff_max": 1.0,
    "max_worker_lost": 3,
}

Condition = Callable[[], bool | Awaitable[bool]]


async def wait_until(condition: Condition, timeout: float, what: str) -> float:
    """Poll ``condition`` every 20 ms; return the seconds it took, fail after ``timeout``."""
    start = time.monotonic()
    while True:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(0.02)


def settings_env(settings: dict[str, Any]) -> dict[str, str]:
    """``{"lease_seconds": 1.0}`` as ``{"BGCOOR_LEASE_SECONDS": "1.0"}``."""
    env = {}
    for name, value in settings.items():
        text = ",".join(value) if isinstance(value, list | tuple) else str(value)
        env[f"BGCOOR_{name.upper()}"] = text
    return env


# -- worker processes ---------------------------------------------------------------------


class Worker:
    """One ``bgcoor worker`` process; output (stdout and stderr) goes to ``log``."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, concurrency: int) -> None:
        self.proc = proc
        self.log = log
        self.concurrency = concurrency

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: signal.Signals) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self, timeout: float = 30.0) -> None:
        """Wait for the CLI's ``ready`` line: from then on SIGTERM is a graceful stop."""

        def said_ready() -> bool:
            if not self.alive():
                raise AssertionError(f"worker {self.pid} exited early:\n{self.output()[-3000:]}")
            return "ready:" in self.output()

        await wait_until(said_ready, timeout, f"worker {self.pid} ready")

    async def exited(self, timeout: float) -> int:
        """Wait for the process to end; its exit code (negative: killed by that signal)."""
        await wait_until(lambda: not self.alive(), timeout, f"worker {self.pid} exits")
        return self.proc.wait()

    def peak_rss_mb(self) -> float | None:
        """Peak resident memory so far (``VmHWM``), where ``/proc`` tells it."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None


class Workers:
    """Starts worker processes and stops them by PID; optionally restarts dead ones."""

    def __init__(self, env: dict[str, str], workdir: Path, app: str = APP) -> None:
        self.env = env
        self.workdir = workdir
        self.app = app  # the ``module:manager`` the workers serve
        self.all: list[Worker] = []
        self.deaths = 0  # exits the supervisor saw (and replaced)
        self.failure = ""

    def start(self, concurrency: int = 4, env: dict[str, str] | None = None) -> Worker:
        log = self.workdir / f"worker-{len(self.all)}.log"
        command = [
            sys.executable,
            "-m",
            "bgcoor_core.cli",
            "worker",
            self.app,
            "-c",
            str(concurrency),
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command,
                env={**self.env, **(env or {})},
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = Worker(proc, log, concurrency)
        self.all.append(worker)
        return worker

    @property
    def live(self) -> list[Worker]:
        return [w for w in self.all if w.alive()]

    @contextlib.asynccontextmanager
    async def supervised(
        self, count: int, concurrency: int, env: dict[str, str] | None = None
    ) -> AsyncIterator[list[Worker]]:
        """Keep ``count`` workers running for the block, replacing any that die.

        Yields the current workers (a list updated in place). A worker that exits on its
        own before it was ready (a start-up error, not a scenario's crash) stops the
        supervision and is reported by :meth:`check`.
        """
        current = [self.start(concurrency, env) for _ in range(count)]

        async def supervise() -> None:
            while True:
                for i, worker in enumerate(current):
                    if worker.alive():
                        continue
                    code = worker.proc.wait()
                    if code != -signal.SIGKILL and "ready:" not in worker.output():
                        self.failure = f"worker {worker.pid} failed to start:\n{worker.output()}"
                        return
                    self.deaths += 1
                    current[i] = self.start(concurrency, env)
                await asyncio.sleep(0.02)

        task = asyncio.create_task(supervise())
        try:
            yield current
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def check(self) -> None:
        """Raise if supervision found a worker that cannot start."""
        if self.failure:
            raise AssertionError(self.failure)

    async def stop(self, timeout: float = 30.0) -> list[int]:
        """SIGTERM every live worker (once it is ready) and wait; their exit codes."""
        live = self.live
        for worker in live:
            await worker.ready()
            worker.send(signal.SIGTERM)
        return [await worker.exited(timeout) for worker in live]

    def kill_all(self) -> None:
        """SIGKILL whatever is still running (teardown), by PID."""
        for worker in self.all:
            if worker.alive():
                worker.send(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=10)

    def logs(self, tail: int = 2000) -> str:
        return "\n".join(f"--- worker {w.pid} ---\n{w.output()[-tail:]}" for w in self.all)


# -- the ledger ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Execution:
    outcome: str
    key: str
    pid: int
    start: float
    end: float


class Ledger:
    """The executions the workers appended (see ``tasks.py``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def executions(self) -> list[Execution]:
        runs = []
        for path in sorted(self.directory.glob("*.log")):
            for line in path.read_text().splitlines():
                outcome, key, pid, start, end = line.split(" ")
                runs.append(Execution(outcome, key, int(pid), float(start), float(end)))
        return sorted(runs, key=lambda e: e.start)

    def of(self, key: str) -> list[Execution]:
        return [e for e in self.executions() if e.key == key]

    def completed(self) -> Counter[str]:
        return Counter(e.key for e in self.executions() if e.outcome == "ok")


@dataclass
class LedgerReport:
    """The ledger check: every key enqueued completed at least once; duplicates counted."""

    enqueued: int
    missing: list[str]
    duplicates: int
    duplicated: dict[str, int]
    unexpected: list[str]

    @property
    def lost(self) -> int:
        return len(self.missing)

    def problems(self) -> list[str]:
        found = []
        if self.missing:
            found.append(f"{len(self.missing)} task(s) never completed: {self.missing[:10]}")
        if self.unexpected:
            found.append(f"executions of keys never enqueued: {self.unexpected[:10]}")
        return found


def check_ledger(ledger: Ledger, keys: Iterable[str]) -> LedgerReport:
    expected = list(keys)
    runs = ledger.completed()
    missing = [k for k in expected if runs[k] == 0]
    duplicated = {k: c for k, c in runs.items() if c > 1}
    unexpected = sorted(set(runs) - set(expected))
    return LedgerReport(
        enqueued=len(expected),
        missing=missing,
        duplicates=sum(c - 1 for c in duplicated.values()),
        duplicated=duplicated,
        unexpected=unexpected,
    )


# -- the rig ------------------------------------------------------------------------------


@dataclass
class Rig:
    """One backend URL, a working folder, worker processes and a producer manager.

    ``settings`` (python names) apply to the producer and, as ``BGCOOR_*``, the workers;
    ``app`` is what the workers serve.
    """

    backend: Backend
    url: str
    workdir: Path
    settings: dict[str, Any]
    app: str = APP
    producer: TaskManager = field(init=False)
    tasks: Tasks = field(init=False)
    workers: Workers = field(init=False)
    ledger: Ledger = field(init=False)

    def __post_init__(self) -> None:
        ledger_dir = self.workdir / "ledger"
        fault_dir = self.workdir / "faults"
        ledger_dir.mkdir()
        fault_dir.mkdir()
        self.side_effects = self.workdir / "side-effects.db"
        create_side_effects_table(str(self.side_effects))
        self.ledger = Ledger(ledger_dir)
        self.fault_dir = fault_dir
        self.producer = TaskManager(broker_url=self.url, storage_url=self.url, **self.settings)
        self.tasks = declare(self.producer)
        self.workers = Workers(self._worker_env(ledger_dir, fault_dir), self.workdir, self.app)

    def _worker_env(self, ledger_dir: Path, fault_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BGCOOR_")}
        python_path = [str(TESTS), *filter(None, [env.get("PYTHONPATH")])]
        env.update(
            settings_env({"broker_url": self.url, "storage_url": self.url, **self.settings}),
            PYTHONPATH=os.pathsep.join(python_path),
            REL_LEDGER_DIR=str(ledger_dir),
            REL_FAULT_DIR=str(fault_dir),
            REL_SIDE_EFFECTS=str(self.side_effects),
            COLUMNS="240",  # one log record per line: wide enough for ids and reasons
        )
        return env

    def faulty_env(self) -> dict[str, str]:
        """Worker environment overrides that route the backend through the fault plugin."""
        return settings_env(
            {"broker_url": "faulty+" + self.url, "storage_url": "faulty+" + self.url}
        )

    async def count(self, status: TaskStatus) -> int:
        return (await self.producer.storage.counts())[status]

    async def statuses(self, ids: Iterable[str]) -> dict[str, TaskStatus | None]:
        """The stored status of each id (``None``: no record)."""
        found: dict[str, TaskStatus | None] = {}
        for task_id in ids:
            record = await self.producer.storage.get(task_id)
            found[task_id] = None if record is None else record.status
        return found

    async def wait_final(self, ids: Iterable[str], timeout: float) -> float:
        """Wait until every record in ``ids`` is final (succeeded, failed, dead or
        cancelled: a lost task is then reported by the checks, not as a timeout)."""
        pending = set(ids)

        async def all_final() -> bool:
            self.workers.check()
            for task_id in list(pending):
                record = await self.producer.storage.get(task_id)
                if record is None or not record.status.is_final:
                    return False
                pending.discard(task_id)
            return True

        return await wait_until(all_final, timeout, f"{len(pending)} task(s) finish")

    async def wait_counts(self, status: TaskStatus, count: int, timeout: float) -> float:
        """Wait until ``count`` records are in ``status``; the seconds it took."""

        async def reached() -> bool:
            self.workers.check()
            return await self.count(status) >= count

        return await wait_until(reached, timeout, f"{count} task(s) {status}")


@contextlib.asynccontextmanager
async def open_rig(
    backend: Backend,
    workdir: Path,
    *,
    url: str | None = None,
    app: str = APP,
    **overrides: Any,
) -> AsyncIterator[Rig]:
    """A rig on a fresh URL of ``backend`` (or on ``url``, a private server's, removed by
    its owner) whose workers serve ``app``; workers are killed and the namespace removed
    afterwards."""
    settings = {**BASE_SETTINGS, **overrides}
    rig = Rig(backend, url or backend.make_url(workdir), workdir, settings, app)
    try:
        yield rig
    finally:
        rig.workers.kill_all()
        await rig.producer.close()
        if url is None and backend.cleanup is not None:
            await backend.cleanup(rig.url)
