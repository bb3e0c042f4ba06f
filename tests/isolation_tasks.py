"""Tasks for tests/test_isolation.py, in a module a child process can import.

Each test registers the ones it needs on its own manager (the child imports the plain
function by name and runs it through a handler of its own). Each task that is
killed writes its start time and pid to a file first, so a test can tell when it began
and check that it, and whatever it spawned, is gone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _mark(marks: str, what: str, **fields: Any) -> None:
    """Append ``what pid time key=value...`` to the file ``marks`` (one write per line)."""
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    line = f"{what} {os.getpid()} {time.time():.6f} {extra}\n"
    fd = os.open(marks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def pid(marks: str = "") -> int:
    if marks:
        _mark(marks, "ran")
    return os.getpid()


def double(x: int) -> int:
    return x * 2


def sleeper(marks: str, seconds: float = 3600.0) -> str:
    _mark(marks, "start")
    time.sleep(seconds)
    _mark(marks, "woke")  # only a child that was not killed gets here
    return "woke"


def blocked_recv(marks: str) -> bytes:
    left, _right = socket.socketpair()
    _mark(marks, "start")
    return left.recv(1)  # nobody ever writes to ``_right``


def c_loop(marks: str) -> int:
    _mark(marks, "start")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL can stop it now
    return sum(range(10**13))  # one C call, hours long, which never checks for signals


def python_loop(marks: str) -> None:
    _mark(marks, "start")
    while True:
        pass


def grandchild(marks: str) -> None:
    """Start a process that ignores SIGTERM and records its pid, then sleep."""
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
    spawned = subprocess.Popen([sys.executable, "-c", code])
    _mark(marks, "start", grandchild=spawned.pid)
    time.sleep(3600)


def hog(mb: int) -> int:
    """Allocate ``mb`` megabytes and touch them."""
    block = bytearray(mb * 1024 * 1024)
    return len(block)


def segfault(marks: str) -> None:
    _mark(marks, "start")
    ctypes.string_at(0)


def suicide(marks: str) -> None:
    _mark(marks, "start")
    os.kill(os.getpid(), signal.SIGKILL)


def late_writer(marks: str, result_file: str) -> str:
    """Sleep past its timeout, then try to leave a trace of finishing."""
    _mark(marks, "start")
    time.sleep(2.0)
    Path(result_file).write_text("written after the timeout")
    return "late result"


def failing(kind: str) -> None:
    if kind == "value":
        raise ValueError("bad value 42")
    if kind == "unpicklable":
        raise UnpicklableError("cannot travel", lock=object())
    if kind == "exit":
        sys.exit(3)
    raise KeyError(kind)


class UnpicklableError(Exception):
    """Needs a keyword argument to be built: pickle cannot rebuild it."""

    def __init__(self, message: str, *, lock: object) -> None:
        super().__init__(message)
        self.lock = lock


def barrier(marks: str, parties: int, seconds: float = 20.0) -> int:
    """Wait until ``parties`` tasks have arrived (each marks ``marks``): only as many
    tasks running at once as ``parties`` ever get through."""
    _mark(marks, "arrived")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if Path(marks).read_text().count("arrived") >= parties:
            return os.getpid()
        time.sleep(0.01)
    raise TimeoutError(f"only {Path(marks).read_text().count('arrived')} of {parties} arrived")


def current(marks: str) -> dict[str, Any]:
    from bgcoor_core import current_task

    task = current_task()
    return {"id": task.id, "name": task.name, "attempt": task.attempt, "pid": os.getpid()}


def returns_object() -> object:
    return object()
