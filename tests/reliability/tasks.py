"""The tasks the reliability scenarios run, and the ledger each execution appends to.

``declare(manager)`` registers them on a manager: the worker app does it for real, and the
producer (test or driver) does it to enqueue with the same names and signatures. Every
execution that reaches its end appends one line to ``$REL_LEDGER_DIR/<pid>.log``::

    <outcome> <key> <pid> <start> <end>

``outcome`` is ``ok`` (returned), ``fail`` (raised on purpose) or ``exit`` (about to kill
its own process). One file per process and one ``write`` per line, so lines from
different processes never interleave, and a process killed mid-task leaves no line.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from bgcoor_core import TaskFunction, TaskManager

FAIL_RETRIES = 5


def record(outcome: str, key: str, start: float) -> None:
    """Append one execution to this process's ledger file."""
    line = f"{outcome} {key} {os.getpid()} {start:.6f} {time.time():.6f}\n"
    path = os.path.join(os.environ["REL_LEDGER_DIR"], f"{os.getpid()}.log")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def work(key: str, ms: int = 0, pad: str = "") -> dict[str, Any]:
    """Sleep ``ms`` milliseconds in a worker thread. ``pad`` only makes the payload big."""
    start = time.time()
    if ms:
        time.sleep(ms / 1000)
    record("ok", key, start)
    return {"key": key, "pid": os.getpid()}


async def work_async(key: str, ms: int = 0) -> dict[str, Any]:
    """Sleep ``ms`` milliseconds on the worker's event loop."""
    start = time.time()
    await asyncio.sleep(ms / 1000)
    record("ok", key, start)
    return {"key": key, "pid": os.getpid()}


def spin(key: str, ms: int = 0) -> dict[str, Any]:
    """Keep a CPU busy for ``ms`` milliseconds (pure Python, holding the GIL)."""
    start = time.time()
    count = 0
    while time.time() - start < ms / 1000:
        count += 1
    record("ok", key, start)
    return {"key": key, "pid": os.getpid(), "loops": count}


def charge(key: str, *, crash: bool = False) -> str:
    """A side effect made idempotent by its key: one row in ``effects`` per key, however
    often the task runs. ``crash`` is read by the fault plugin (see ``faults.py``)."""
    start = time.time()
    conn = sqlite3.connect(os.environ["REL_SIDE_EFFECTS"], timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        done = conn.execute("SELECT 1 FROM effects WHERE key = ?", (key,)).fetchone()
        if done is None:
            conn.execute(
                "INSERT INTO effects (key, pid, at) VALUES (?, ?, ?)", (key, os.getpid(), start)
            )
        conn.execute("COMMIT")
    finally:
        conn.close()
    record("ok", key, start)
    return key


def poison(key: str) -> None:
    """Kill the worker process running it, every time."""
    record("exit", key, time.time())
    os._exit(1)


def fail(key: str, pad: str = "") -> None:
    """Fail every attempt (retried ``FAIL_RETRIES`` times, then dead-lettered). ``pad``
    only makes the payload big."""
    record("fail", key, time.time())
    raise RuntimeError(f"task {key} always fails")


def create_side_effects_table(path: str) -> None:
    """The table ``charge`` writes to; deliberately without a unique key on ``key``, so
    only the task's own check keeps it to one row per key."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT NOT NULL, pid INTEGER, at REAL)")
    conn.close()


@dataclass(frozen=True)
class Tasks:
    work: TaskFunction[Any, dict[str, Any]]
    work_async: TaskFunction[Any, dict[str, Any]]
    spin: TaskFunction[Any, dict[str, Any]]
    charge: TaskFunction[Any, str]
    poison: TaskFunction[Any, None]
    fail: TaskFunction[Any, None]


def declare(manager: TaskManager) -> Tasks:
    """Register every reliability task on ``manager``."""
    return Tasks(
        work=manager.task(name="rel.work")(work),
        work_async=manager.task(name="rel.work_async")(work_async),
        spin=manager.task(name="rel.spin")(spin),
        charge=manager.task(name="rel.charge")(charge),
        poison=manager.task(name="rel.poison")(poison),
        fail=manager.task(name="rel.fail", max_retries=FAIL_RETRIES)(fail),
    )
