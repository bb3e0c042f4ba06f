"""The worker application and producer of ``test_workflow_crashes.py``, configured by the
environment (``BGCOOR_*`` settings, ``REL_LEDGER_DIR`` for the ledger files):

    python -m bgcoor_core.cli worker reliability.workflow_app:manager
    python -m reliability.workflow_app SIZE    # submits chord(SIZE members, rel.wf.total)

Two tasks. ``rel.wf.member(i, ms)`` sleeps ``ms`` milliseconds, appends ``ok m<i>`` to the
ledger of ``tasks.py`` and returns :func:`value` of ``i``. ``rel.wf.total(values)``, the
chord's callback, appends one line per invocation that reaches its end to
``$REL_LEDGER_DIR/callback-<pid>.json``: ``{"pid", "start", "end", "values"}`` (one
``write`` of a whole line, so a worker killed mid-callback leaves no line, and lines of
different processes never interleave), then returns ``len(values)``.

The producer prints ``submitting`` (the graph is built, ``enqueue()`` starts), ``storing``
and ``stored`` (around the store's ``submit_workflow``, the one step that must be all or
none) and ``submitted <workflow id> <seconds of enqueue()>``, each flushed at once, so
that a test can SIGKILL it at a chosen moment of its enqueue.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bgcoor_core import Task, TaskFunction, TaskManager, chord, group
from bgcoor_core._broker import Message
from bgcoor_core._composition import Chord
from bgcoor_core._workflows import WorkflowState

from .tasks import record

MEMBER = "rel.wf.member"
CALLBACK = "rel.wf.total"


def value(i: int) -> int:
    """What member ``i`` returns: distinct per member, so an order mistake shows."""
    return 7 * i + 3


def member(i: int, ms: int = 0) -> int:
    start = time.time()
    if ms:
        time.sleep(ms / 1000)
    record("ok", f"m{i}", start)
    return value(i)


def total(values: list[int]) -> int:
    start = time.time()
    line = {"pid": os.getpid(), "start": start, "end": time.time(), "values": values}
    path = os.path.join(os.environ["REL_LEDGER_DIR"], f"callback-{os.getpid()}.json")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)
    return len(values)


@dataclass(frozen=True)
class WorkflowTasks:
    member: TaskFunction[Any, int]
    total: TaskFunction[Any, int]

    def chord(self, durations: Sequence[int]) -> Chord:
        """``chord(member(i, durations[i]) for each i, total)``."""
        members = group(self.member.s(i, ms) for i, ms in enumerate(durations))
        return chord(members, self.total.s())


def declare(manager: TaskManager) -> WorkflowTasks:
    """Register both tasks on ``manager`` (the workers' and the test's producer)."""
    return WorkflowTasks(
        member=manager.task(name=MEMBER)(member), total=manager.task(name=CALLBACK)(total)
    )


manager = TaskManager()
tasks = declare(manager)


def _say(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


async def produce(size: int) -> None:
    """Submit a chord of ``size`` instant members, announcing each phase on stdout."""
    store = manager.backends.workflows
    assert store is not None, "this backend runs no workflows"
    submit = store.submit_workflow

    async def announced(
        state: WorkflowState, members: Sequence[Task], messages: Sequence[Message]
    ) -> None:
        _say("storing")
        await submit(state, members, messages)
        _say("stored")

    store.submit_workflow = announced  # type: ignore[method-assign, assignment]
    flow = tasks.chord([0] * size)
    _say("submitting")
    started = time.monotonic()
    handle = await flow.enqueue()
    _say(f"submitted {handle.id} {time.monotonic() - started:.4f}")
    await manager.close()


if __name__ == "__main__":
    asyncio.run(produce(int(sys.argv[1])))
