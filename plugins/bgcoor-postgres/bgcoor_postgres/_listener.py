"""Wake-ups for idle consumers and for ``result()``: LISTEN on a dedicated connection,
plus local pushes.

Every statement that makes a message ready sends ``pg_notify(<schema>_wake, queue)`` in
its own transaction, so the notification arrives when (and only if) it commits. The
listener wakes the consumers of this process that wait on that queue. Every statement
that writes a record final sends ``pg_notify(<schema>_done, id)``: the listener wakes
whoever in this process waits for that task's outcome (:meth:`Listener.watch`), who then
reads the record. When its connection drops it reconnects with backoff and, once back,
wakes everyone: what was pushed or finished meanwhile would otherwise wait for the
safety-net poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import asyncpg

from ._database import Database, is_connection_error

log = logging.getLogger("bgcoor.postgres")


class Listener:
    """Consumers waiting for work on one event loop, woken by NOTIFY or by local pushes."""

    def __init__(self, db: Database, channel: str, done_channel: str) -> None:
        self._db = db
        self._channel = channel
        self._done_channel = done_channel
        self._waiters: dict[asyncio.Future[None], frozenset[str]] = {}
        #: Per task id, the futures of those waiting for its outcome.
        self._watchers: dict[str, set[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._up = asyncio.Event()
        self.connected = False
        #: Counts wake-ups: unchanged means nothing was pushed (that we heard of).
        self.generation = 0

    def start(self) -> None:
        """Open the LISTEN connection in the background (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="bgcoor-postgres-listen")

    def add(self, queues: Iterable[str]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[future] = frozenset(queues)
        return future

    def discard(self, future: asyncio.Future[None]) -> None:
        self._waiters.pop(future, None)

    def wake(self, queues: Iterable[str] | None = None) -> None:
        """Wake the waiters of any of ``queues`` (all waiters when ``None``)."""
        self.generation += 1
        wanted = None if queues is None else set(queues)
        for future, waits_on in list(self._waiters.items()):
            if (wanted is None or not wanted.isdisjoint(waits_on)) and not future.done():
                future.set_result(None)

    async def watch(self, task_id: str, timeout: float) -> asyncio.Future[None] | None:
        """A future set when ``task_id``'s record is written final (or when notices may
        have been lost: look at the record again either way), once LISTEN is in place;
        ``None`` if the connection is not up within ``timeout`` seconds (poll instead).
        Pair a future with :meth:`unwatch`."""
        self.start()
        if not self.connected:
            try:
                async with asyncio.timeout(timeout):
                    await self._up.wait()
            except TimeoutError:
                return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watchers.setdefault(task_id, set()).add(future)
        return future

    def unwatch(self, task_id: str, future: asyncio.Future[None]) -> None:
        watchers = self._watchers.get(task_id)
        if watchers is not None:
            watchers.discard(future)
            if not watchers:
                del self._watchers[task_id]

    def _tell(self, task_ids: Iterable[str] | None) -> None:
        """Wake the watchers of ``task_ids`` (all of them when ``None``)."""
        ids = list(self._watchers) if task_ids is None else task_ids
        for task_id in ids:
            for future in self._watchers.get(task_id, ()):
                if not future.done():
                    future.set_result(None)

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self.wake([str(payload)])

    def _on_done(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._tell([str(payload)])

    def _on_terminate(self, conn: object) -> None:
        self._lost.set()

    async def _listen(self) -> None:
        delay = 0.05
        while not self._db.closed:
            conn: asyncpg.Connection[Any] | None = None
            try:
                conn = await self._db.connect()
                conn.add_termination_listener(self._on_terminate)
                await conn.add_listener(self._channel, self._on_notify)
                await conn.add_listener(self._done_channel, self._on_done)
                self._lost.clear()
                self.connected, delay = True, 0.05
                self._up.set()
                self.wake()  # anything pushed while we were not listening
                self._tell(None)  # or finished
                await self._lost.wait()
                log.warning("LISTEN connection lost; reconnecting")
            except Exception as exc:
                if not is_connection_error(exc):
                    log.exception("LISTEN connection failed")
            finally:
                self.connected = False
                self._up.clear()
                self._tell(None)  # what finishes now goes unannounced: look again
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.wake()
        self._tell(None)
