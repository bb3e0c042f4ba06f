"""Cancel signals over PostgreSQL NOTIFY/LISTEN, on the channel ``<schema>_cancel``.

``TaskManager.cancel()`` stores the record, then sends ``pg_notify(<schema>_cancel, id)``;
every worker pool on the schema LISTENs on a dedicated connection while it runs, the way
the wake-up listener does (``_listener.py``). A notification is delivered only to
connections listening when it commits, so each (re)connection calls ``on_gap`` and the pool
reads its running tasks' records once (see :class:`bgcoor_core.kit.CancelSignals`: the
record is the truth, the signal only makes it fast).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import asyncpg

from bgcoor_core import kit

from ._database import Conn, Database, is_connection_error

if TYPE_CHECKING:
    from bgcoor_core.kit import OnCancel, OnGap

log = logging.getLogger("bgcoor.postgres")

#: Longest wait between two attempts to LISTEN again after the connection failed.
MAX_BACKOFF = 2.0


class PostgresCancelSignals:
    """Publishes and listens to one schema's cancel channel."""

    def __init__(self, db: Database, schema: str) -> None:
        self._db = db
        self.channel = f"{schema}_cancel"
        #: LISTENs established so far (for tests: a reconnection adds one).
        self.subscriptions = 0

    async def publish(self, task_id: str) -> None:
        async def notify(conn: Conn) -> None:
            await conn.execute("SELECT pg_notify($1, $2)", self.channel, task_id)

        await self._db.run(notify)

    def subscribe(self, on_cancel: OnCancel, on_gap: OnGap) -> AbstractAsyncContextManager[None]:
        return kit.running_in_background(
            functools.partial(self._listen, on_cancel, on_gap), name="bgcoor-postgres-cancels"
        )

    async def _listen(self, on_cancel: OnCancel, on_gap: OnGap) -> None:
        def relay(conn: object, pid: int, channel: str, payload: object) -> None:
            on_cancel(str(payload))

        delay = 0.05
        while not self._db.closed:
            lost = asyncio.Event()
            conn: asyncpg.Connection[Any] | None = None
            try:
                conn = await self._db.connect()
                conn.add_termination_listener(_setter(lost))
                await conn.add_listener(self.channel, relay)
                self.subscriptions += 1
                delay = 0.05
                on_gap()  # whatever was notified while we were not listening
                await lost.wait()
                log.warning("cancel signals: the LISTEN connection was lost; reconnecting")
            except Exception as exc:
                if not is_connection_error(exc):
                    log.exception("cancel signals: LISTEN failed")
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    """A termination listener that sets ``event``."""
    return lambda _: event.set()
