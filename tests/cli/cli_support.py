"""Helpers of the ``bgcoor`` command-line tests (``tests/cli/``), driven as users drive it.

Most commands run through Typer's ``CliRunner`` (the real ``app``, in this process); the
worker and some error paths run as real subprocesses (``python -m bgcoor_core.cli``).
State shared between a test and the command line in one process lives in ``sharedmem://``
(a plugin of ``tests/cli/cli_app.py``); state shared across processes lives in a SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from bgcoor_core import TaskManager
from bgcoor_core.cli import app

TESTS_DIR = Path(__file__).resolve().parent
TASKS = "add, echo, explode, greet, sleepy"
runner = CliRunner()


def cli(*args: str, input: str | None = None) -> Result:
    result = runner.invoke(app, list(args), input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a bug in the CLI, not an error it reports
    return result


def ok(*args: str) -> str:
    result = cli(*args)
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    return result.stdout


def fails(*args: str, code: int = 1, input: str | None = None) -> str:
    """Run a command that must fail: exit ``code``, exactly one ``error:`` line, no traceback."""
    result = cli(*args, input=input)
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def row(output: str, label: str) -> list[str]:
    """The cells after ``label`` in the table row that starts with it."""
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if cells and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in:\n{output}")


def field(output: str, name: str) -> str:
    """The value of ``name`` in ``inspect``'s two-column listing."""
    match = re.search(rf"^{name} +(.+?)\s*$", output, re.MULTILINE)
    assert match, f"no field {name!r} in:\n{output}"
    return match.group(1)


def settle(manager: TaskManager, *calls: tuple[Any, ...], drain: bool = True) -> list[str]:
    """Enqueue ``(name, *args)`` calls, run them to completion unless ``drain`` is off."""

    async def go() -> list[str]:
        ids = [(await manager.enqueue(name, *args)).id for name, *args in calls]
        if drain:
            await manager.drain()
        return ids

    return asyncio.run(go())


def record(manager: TaskManager, task_id: str) -> Any:
    return asyncio.run(manager.get(task_id))


def stats(manager: TaskManager, queue: str = "default") -> Any:
    return asyncio.run(manager.broker.stats(queue))


@contextlib.contextmanager
def worker_thread(module: ModuleType) -> Iterator[None]:
    """A worker for ``cli_app``'s tasks on ``sharedmem://``, in a thread of this process."""
    stop, started = threading.Event(), threading.Event()

    async def serve() -> None:
        manager = TaskManager(
            registry=module.manager.registry, plugins=[module.SHARED], poll_seconds=0.05
        )
        async with manager.worker(concurrency=2, queues=["default", "mail"]):
            started.set()
            await asyncio.to_thread(stop.wait)
        await manager.close()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(5), "worker thread did not start"
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def sqlite_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("bgcoor_core.backends.sqlite")
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("BGCOOR_BROKER_URL", url)
    monkeypatch.setenv("BGCOOR_STORAGE_URL", url)
    monkeypatch.setenv("BGCOOR_POLL_SECONDS", "0.05")


class Subprocess:
    """``python -m bgcoor_core.cli ARGS`` in the tests directory, both streams collected."""

    def __init__(
        self, *args: str, cwd: Path = TESTS_DIR, env: dict[str, str] | None = None
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bgcoor_core.cli", *args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.ready = threading.Event()
        self.readies = 0  # "ready:" lines so far (a reloading worker prints one per start)
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)
            if line.startswith("ready:"):
                self.readies += 1
                self.ready.set()

    def wait_ready(self) -> None:
        if not self.ready.wait(15):
            self.proc.kill()
            raise AssertionError(f"worker never got ready: {self.finish()}")

    def finish(self, timeout: float = 15) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code, "".join(self.out), "".join(self.err)


def write_module(directory: Path, name: str, source: str) -> str:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name
