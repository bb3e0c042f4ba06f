"""Cancel signals: how a worker in one process hears that another process cancelled a task.

``TaskManager.cancel()`` stores the record ``cancelled`` first, then publishes the task's id
on the backend's cancel channel (:class:`CancelSignals`, offered by a plugin through the
``bgcoor_cancel_signals`` hook: Redis PUBLISH/SUBSCRIBE, PostgreSQL NOTIFY/LISTEN). Every
worker pool subscribes while it runs, and interrupts the task if it holds it
(:meth:`WorkerPool.cancel`). A backend without a channel (SQLite, a third party's) is
watched by polling instead: while a pool runs tasks it reads their records every
:data:`CANCEL_POLL` seconds and cancels those it finds ``cancelled``.

The signal is best-effort and fast; the record is the truth. A signal lost on the way
(a dropped connection, a pool that was not subscribed yet) loses no cancel: the task's
outcome is refused when it settles, because its record is already final. A subscription
that (re)connects says so (``on_gap``), and the pool then reads its running tasks'
records once, to catch what it may have missed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from ._storage import Storage
from ._task import Task, TaskStatus

log = logging.getLogger("bgcoor.cancels")

#: Seconds between two reads of the running tasks' records, on a backend without a
#: cancel channel: a cancel reaches a running task within about this much (plus a read).
CANCEL_POLL = 0.5
#: Seconds a signal for a task the pool does not hold is remembered: it may be reserving
#: that very task right now (the reply of its reserve on the wire), and cancels it when
#: the reservation arrives instead of running it to the end.
SIGNAL_MEMORY = 10.0

#: Seconds a pool starting waits for its subscription before it reserves anything: then
#: the first subscription holds no task whose records it would have to read. Past it, the
#: pool starts anyway and reads what it holds once the subscription is up.
SUBSCRIBE_WAIT = 1.0

#: Called with the id of each task cancelled anywhere (on the subscriber's event loop).
OnCancel = Callable[[str], None]
#: Called when the subscription (re)connects: signals sent before may have been missed.
OnGap = Callable[[], None]


class CancelSignals(Protocol):
    """A backend's channel for cancel signals, shared by every process using it.

    ``publish`` reaches every subscriber of any process (including the publisher's own);
    a subscriber hears only what is published while it is subscribed. Neither needs to
    be reliable: the ``cancelled`` record is the truth, and the pool reads it whenever the
    subscription says it may have missed something (``on_gap``).
    """

    async def publish(self, task_id: str) -> None:
        """Tell every subscriber that ``task_id`` was cancelled (its record is stored)."""
        ...

    def subscribe(self, on_cancel: OnCancel, on_gap: OnGap) -> AbstractAsyncContextManager[None]:
        """Listen for the duration of the ``async with``: ``on_cancel(task_id)`` for each
        signal, ``on_gap()`` each time the subscription is (re)established. It keeps
        reconnecting by itself while the connection fails; leaving the block stops it."""
        ...


class Holder(Protocol):
    """What a :class:`CancelWatch` asks of the worker pool it watches for."""

    def cancel(self, task_id: str) -> bool:
        """Cancel ``task_id`` if held; False if not held."""
        ...

    def running_ids(self) -> list[str]:
        """The ids of the tasks started and not being cancelled already."""
        ...


class CancelWatch:
    """Cancels the tasks a pool holds when another process cancels them: through the
    backend's channel when ``signals`` is given, else by polling their records."""

    def __init__(
        self,
        pool: Holder,
        storage: Storage,
        signals: CancelSignals | None,
        *,
        poll: float = CANCEL_POLL,
    ) -> None:
        self._pool = pool
        self._storage = storage
        self.signals = signals
        self.poll = poll
        self._task: asyncio.Task[None] | None = None
        self._launched = asyncio.Event()  # a task was started since the poll last slept
        self._recent: dict[str, float] = {}  # signalled ids not held, by arrival time
        self._checks: set[asyncio.Task[None]] = set()
        self._listening = asyncio.Event()  # subscribed (or polling) at least once

    async def start(self, *, wait: float = SUBSCRIBE_WAIT) -> None:
        """Start watching; with a channel, wait up to ``wait`` seconds for the first
        subscription, so that the pool holds nothing yet whose records it must read."""
        watch = self._subscribed() if self.signals is not None else self._polling()
        self._task = asyncio.create_task(watch, name="bgcoor-cancel-watch")
        if self.signals is None:
            return
        try:
            await asyncio.wait_for(self._listening.wait(), wait)
        except TimeoutError:
            log.warning("cancel signals: not subscribed within %.1fs; starting anyway", wait)

    async def stop(self) -> None:
        for task in (self._task, *self._checks):
            if task is not None:
                task.cancel()
        await asyncio.gather(*filter(None, (self._task, *self._checks)), return_exceptions=True)
        self._task = None

    def launched(self) -> None:
        """The pool started a task: the poll (if polling) has something to watch."""
        self._launched.set()

    def accepted(self, task_ids: Iterable[str]) -> None:
        """The pool now holds these tasks: cancel any signalled while they were on the
        way (the reservation was in flight when the signal came)."""
        if not self._recent:
            return
        for task_id in task_ids:
            if self._recent.pop(task_id, None) is not None:
                self._pool.cancel(task_id)

    # -- a channel -----------------------------------------------------------------------

    def _signalled(self, task_id: str) -> None:
        if self._pool.cancel(task_id):
            return
        now = time.monotonic()
        self._recent.pop(task_id, None)  # re-inserted last: the dict stays in time order
        self._recent[task_id] = now
        while (oldest := next(iter(self._recent.items()))) and now - oldest[1] > SIGNAL_MEMORY:
            del self._recent[oldest[0]]

    def _gap(self) -> None:
        """Signals may have been missed: read the running tasks' records once (none
        when the pool holds nothing, as at its start)."""
        self._listening.set()
        if not self._pool.running_ids():
            return
        check = asyncio.get_running_loop().create_task(self._check_quietly())
        self._checks.add(check)
        check.add_done_callback(self._checks.discard)

    async def _subscribed(self) -> None:
        assert self.signals is not None
        failures = 0
        while True:
            try:
                async with self.signals.subscribe(self._signalled, self._gap):
                    await asyncio.Event().wait()  # until the pool stops
            except Exception as exc:  # a plugin's bug: never let it stop the pool
                failures += 1
                delay = min(0.1 * 2**failures, 5.0)
                log.warning(
                    "cancel signal subscription failed (%s: %s); again in %.1fs",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await self._check_quietly()
                await asyncio.sleep(delay)

    # -- polling -------------------------------------------------------------------------

    async def _polling(self) -> None:
        while True:
            if not self._pool.running_ids():  # nothing to watch: no reads at all
                self._launched.clear()
                await self._launched.wait()
            await asyncio.sleep(self.poll)
            await self._check_quietly()

    async def _check_quietly(self) -> None:
        try:
            await self.check()
        except Exception as exc:
            log.warning("reading running tasks' records for cancels failed: %s", exc)

    async def check(self) -> int:
        """Read the record of every running task and cancel those found ``cancelled``;
        how many were."""
        ids = self._pool.running_ids()
        if not ids:
            return 0
        records = await asyncio.gather(*(self._storage.get(i) for i in ids), return_exceptions=True)
        found = 0
        for task_id, record in zip(ids, records, strict=True):
            if isinstance(record, Task) and record.status is TaskStatus.CANCELLED:
                found += self._pool.cancel(task_id)
        return found
