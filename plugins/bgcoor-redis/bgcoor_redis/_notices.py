"""Notices that a task's record became final, so ``result()`` waits without polling.

Every script that writes a final record (``write_record`` in ``lua/common.lua``) publishes
the record's JSON on the channel ``<prefix>:done:<id>``, in the same script: the notice
leaves only once the record is stored, and the waiter needs no read after it. A waiter
subscribes first, waits for the server to confirm, then reads the record; whatever
finishes after that read is announced to it. Publishing to a channel nobody listens on
costs the server one hash lookup.

One subscribed connection per event loop carries every waiter's channel. A notice lost
with that connection only delays a waiter until its next safety-net look at the record
(``result_safety_poll``); the connection is made again for the next waiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from ._resp import INCOMPLETE, Replies, pack

log = logging.getLogger("bgcoor.redis")


class Subscriber:
    """The subscribed connection of one event loop, shared by every waiter."""

    def __init__(self, connect: Any, *, where: str, timeout: float) -> None:
        self._connect = connect
        self._where = where
        self._timeout = timeout
        self._conn: AbstractConnection | None = None
        self._connecting: asyncio.Future[AbstractConnection] | None = None
        self._reader: asyncio.Task[None] | None = None
        #: Per channel: the futures of its waiters, set by the first notice.
        self._watchers: dict[bytes, set[asyncio.Future[bytes]]] = {}
        #: Per channel: SUBSCRIBE commands sent and not yet confirmed, and who waits for
        #: the last confirmation.
        self._unconfirmed: dict[bytes, int] = {}
        self._confirmed: dict[bytes, asyncio.Future[None]] = {}
        self._closed = False
        self._chores: set[asyncio.Task[None]] = set()
        #: Notices received (for tests).
        self.notices = 0

    async def watch(self, channel: bytes) -> asyncio.Future[bytes]:
        """A future set to the next notice's data on ``channel``, returned once the server has
        confirmed the subscription (so nothing published from now on is missed). It fails
        with ``RedisConnectionError`` if the connection is lost meanwhile. Raises if the
        subscription cannot be made; pair every call with :meth:`unwatch`."""
        loop = asyncio.get_running_loop()
        notice: asyncio.Future[bytes] = loop.create_future()
        watchers = self._watchers.setdefault(channel, set())
        watchers.add(notice)
        try:
            if len(watchers) == 1:
                conn = await self._connected()
                self._unconfirmed[channel] = self._unconfirmed.get(channel, 0) + 1
                confirmed = self._confirmed.get(channel)
                if confirmed is None or confirmed.done():
                    confirmed = self._confirmed[channel] = loop.create_future()
                await conn.send_packed_command(pack(("SUBSCRIBE", channel)), check_health=False)
            confirmed = self._confirmed.get(channel)
            if confirmed is not None:
                async with asyncio.timeout(self._timeout):
                    await asyncio.shield(confirmed)
        except BaseException:
            self.unwatch(channel, notice)
            raise
        return notice

    def unwatch(self, channel: bytes, notice: asyncio.Future[bytes]) -> None:
        """Stop waiting on ``channel``; the last waiter's leaving unsubscribes it."""
        watchers = self._watchers.get(channel)
        if watchers is None:
            return
        watchers.discard(notice)
        if watchers:
            return
        del self._watchers[channel]
        conn = self._conn
        if conn is not None and conn.is_connected:
            self._unsubscribe(conn, channel)

    def _unsubscribe(self, conn: AbstractConnection, channel: bytes) -> None:
        async def send() -> None:
            with contextlib.suppress(Exception):
                await conn.send_packed_command(pack(("UNSUBSCRIBE", channel)), check_health=False)

        self._spawn(send(), "bgcoor-redis-unsubscribe")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        chore = asyncio.get_running_loop().create_task(work, name=name)
        self._chores.add(chore)
        chore.add_done_callback(self._chores.discard)

    async def _connected(self) -> AbstractConnection:
        if self._closed:
            raise RedisConnectionError(f"connection to {self._where} is closed")
        if self._conn is not None and self._reader is not None and not self._reader.done():
            return self._conn
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._opened)
        return await asyncio.shield(self._connecting)

    def _opened(self, job: asyncio.Future[AbstractConnection]) -> None:
        self._connecting = None
        if not job.cancelled():
            job.exception()  # retrieved here; the callers see it too

    async def _open(self) -> AbstractConnection:
        conn: AbstractConnection = self._connect()
        async with asyncio.timeout(self._timeout):
            await conn.connect()  # type: ignore[no-untyped-call]
        reader = getattr(conn, "_reader", None)
        if not isinstance(reader, asyncio.StreamReader):  # not the redis-py we know
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            raise RedisConnectionError("this redis-py's connections cannot be read directly")
        self._conn = conn
        self._reader = asyncio.get_running_loop().create_task(
            self._read(conn, reader), name="bgcoor-redis-notices"
        )
        return conn

    async def _read(self, conn: AbstractConnection, reader: asyncio.StreamReader) -> None:
        replies = Replies()
        try:
            while True:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    break
                replies.feed(chunk)
                reply = replies.next()
                while reply is not INCOMPLETE:
                    self._dispatch(reply)
                    reply = replies.next()
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("notice connection to %s lost: %s", self._where, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("notice connection to %s: unreadable reply", self._where)
        finally:
            self._lost(conn)

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return  # an error reply or something unexpected: nothing to route
        kind, channel = reply[0], reply[1]
        if kind == b"message":
            self.notices += 1
            for notice in self._watchers.get(channel, ()):
                if not notice.done():
                    notice.set_result(reply[2])
        elif kind == b"subscribe":
            left = self._unconfirmed.get(channel, 1) - 1
            if left > 0:
                self._unconfirmed[channel] = left
                return
            self._unconfirmed.pop(channel, None)
            confirmed = self._confirmed.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)

    def _lost(self, conn: AbstractConnection) -> None:
        """The connection is gone: every waiter and pending confirmation learns it (they
        look at the record themselves, and subscribe again on a new connection)."""
        if self._conn is conn:
            self._conn = None
        error = RedisConnectionError(f"notice connection to {self._where} lost")
        for confirmed in self._confirmed.values():
            if not confirmed.done():
                confirmed.set_exception(error)
        self._confirmed.clear()
        self._unconfirmed.clear()
        watchers, self._watchers = self._watchers, {}
        for notices in watchers.values():
            for notice in notices:
                if not notice.done():
                    notice.set_exception(error)
        if not self._closed:  # else close() disconnects it
            self._spawn(_disconnect(conn), "bgcoor-redis-notices-close")

    async def close(self) -> None:
        self._closed = True
        conn, reader, self._reader = self._conn, self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        self._conn = None
        if conn is not None:
            await _disconnect(conn)
        for chore in list(self._chores):
            with contextlib.suppress(BaseException):
                await chore


async def _disconnect(conn: AbstractConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.disconnect(nowait=True)
