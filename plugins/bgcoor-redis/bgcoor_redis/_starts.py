"""Early starts: marking a task running without waiting for the reply.

A worker stores ``running`` before it runs a task's handler, which costs a round trip on
the path of every task. When this object reserved the task and the reserve script found
its record free to move to ``running`` (or found none), that write can only be refused by a
change in the instants between (a cancel, say): so it is queued on the pipelined
connection, ahead of every later command for the task, and the handler starts at once.

Should the write fail anyway, because the server had lost its scripts or the connection
dropped, the next record write under the same lease finds itself refused, replays the
start and tries again. A refused start (the record was cancelled meanwhile) is logged; the
task's outcome is then refused the same way, as for a cancel that lands while it runs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from bgcoor_core import TaskStatus

from ._encoding import text

log = logging.getLogger("bgcoor.redis")


@dataclass(slots=True)
class Start:
    """A running mark sent without waiting: its save script arguments, and its reply."""

    task_id: str
    args: list[Any]
    reply: asyncio.Future[Any]


class EarlyStarts:
    """Which reservations may start early, and the starts still unconfirmed."""

    def __init__(self) -> None:
        self._allowed: dict[str, str] = {}  # lease token -> task id
        self._sent: dict[str, Start] = {}  # lease token -> start

    def allow(self, token: str, task_id: str) -> None:
        self._allowed[token] = task_id

    def claim(self, token: str | None, task_id: str, status: TaskStatus, ttl: float | None) -> bool:
        """True once for the running mark of a task allowed to start early."""
        if token is None or status is not TaskStatus.RUNNING or ttl is not None:
            return False
        return self._allowed.pop(token, None) == task_id

    def sent(self, token: str, start: Start) -> None:
        self._sent[token] = start
        start.reply.add_done_callback(lambda reply: _report(start, reply))

    def failed(self, token: str | None) -> Start | None:
        """The start under ``token`` if it never took effect (to replay), else ``None``."""
        start = self._sent.pop(token, None) if token is not None else None
        if start is None or not start.reply.done() or start.reply.cancelled():
            return start
        return start if start.reply.exception() is not None else None

    def forget(self, token: str | None) -> None:
        if token is not None:
            self._allowed.pop(token, None)
            self._sent.pop(token, None)


def _report(start: Start, reply: asyncio.Future[Any]) -> None:
    if reply.cancelled() or reply.exception() is not None:
        return  # replayed by the next write under the lease
    if reply.result() != 0:
        log.warning(
            "task %s: its running mark was refused: %s", start.task_id, text(reply.result())
        )
