"""Real worker processes for a backend's multi-process tests.

:class:`WorkerFleet` starts ``bgcoor worker`` processes serving
:mod:`bgcoor_core.testing.ledger_worker` against one broker and storage URL. Every run of
their task ``record(i, sleep=0.0)`` appends a line to a ledger file, so a test can check
that each task ran, how often and in which process. The producer declares the same task
with :func:`ledger_task`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .._manager import TaskFunction, TaskManager

#: The command of one worker process (its settings come from the environment).
WORKER = [sys.executable, "-m", "bgcoor_core.cli", "worker", "bgcoor_core.testing.ledger_worker"]


@dataclass(frozen=True, slots=True)
class Run:
    """One run of ``record``: its argument, the process and when it started and ended."""

    i: int
    pid: int
    start: float
    end: float


def ledger_task(manager: TaskManager) -> TaskFunction[Any, int]:
    """The producer's declaration of the workers' ``record`` task (same name and
    signature, as a separate service would declare it; it never runs here)."""

    async def record(i: int, sleep: float = 0.0) -> int:
        raise AssertionError("runs in the worker processes only")

    return manager.task(name="record")(record)


class WorkerFleet:
    """Worker processes sharing ``url`` as broker and storage; ``settings`` become
    ``BGCOOR_*`` variables (``concurrency=4`` is ``BGCOOR_CONCURRENCY=4``). Use it as a
    context manager: processes still running at the end are killed."""

    def __init__(self, url: str, directory: Path, **settings: object) -> None:
        self.directory = directory
        self.ledger = directory / "ledger.txt"
        self.ledger.touch()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BGCOOR_")}
        self.env.update(BGCOOR_BROKER_URL=url, BGCOOR_STORAGE_URL=url, LEDGER=str(self.ledger))
        self.env.update({f"BGCOOR_{key.upper()}": str(v) for key, v in settings.items()})
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int = 1) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(count):
            with (self.directory / f"worker-{len(self.processes)}.log").open("wb") as log:
                process = subprocess.Popen(WORKER, env=self.env, stderr=log)
            self.processes.append(process)
            started.append(process)
        return started

    def stop(self, timeout: float = 20.0) -> list[int]:
        """SIGTERM every running worker; the exit codes of all workers ever started."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        return [process.wait(timeout=timeout) for process in self.processes]

    def runs(self) -> list[Run]:
        lines = self.ledger.read_text().splitlines()
        return [Run(int(i), int(pid), float(a), float(b)) for i, pid, a, b in map(str.split, lines)]

    def logs(self) -> str:
        return "\n".join(
            f"--- worker {n} (pid {p.pid}) ---\n"
            + (self.directory / f"worker-{n}.log").read_text(errors="replace")
            for n, p in enumerate(self.processes)
        )

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
