"""Connections to Redis: one auto-pipelined command connection, and blocking ones.

Every command goes through :class:`CommandChannel`: commands issued while a batch is on the
wire are sent together as the next batch, in one write, and their replies read in one
pass. A hundred tasks storing their outcomes at once cost one round trip, not a hundred,
and redis-py's per-command machinery (pool checkout, retry wrapper) is paid per batch.
Blocking commands (``BLPOP``) would stall that pipeline, so they get connections of their
own from :class:`BlockingPool`.

Nothing here retries a command: a script whose reply was lost may have run, and only the
caller knows whether running it again is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._resp import INCOMPLETE, Command, Replies, pack

Connect = Callable[[], AbstractConnection]


class CommandChannel:
    """Auto-pipelining over one connection; at most one batch in flight."""

    def __init__(self, connect: Connect, *, reply_timeout: float, where: str) -> None:
        self._connect = connect
        self._conn: AbstractConnection | None = None
        self._replies = Replies()
        self._reply_timeout = reply_timeout
        self._where = where
        self._queue: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._closed = False
        #: Round trips made, and commands sent (for tests and benchmarks).
        self.batches = 0
        self.commands = 0

    @property
    def busy(self) -> bool:
        """A batch is on the wire (what is sent now waits for the next one)."""
        return self._sender is not None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def send(self, *command: Any) -> asyncio.Future[Any]:
        """Queue ``command``; the future resolves to its raw reply (or its error).

        An argument that cannot be sent raises ``TypeError`` here, in the caller.
        """
        data = pack(command)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            future.set_exception(RedisConnectionError(f"connection to {self._where} is closed"))
            return future
        self._queue.append((data, future))
        if self._sender is None:
            self._sender = loop.create_task(self._send_all(), name="bgcoor-redis-pipeline")
        return future

    async def _send_all(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._round_trip([item for item in batch if not item[1].done()])
        except BaseException:
            for _, future in self._queue:
                future.cancel()
            self._queue = []
            raise
        finally:
            self._sender = None

    async def _round_trip(self, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        if not batch:
            return
        try:
            conn = await self._connected()
            await conn.send_packed_command(b"".join(data for data, _ in batch), check_health=False)
            self.batches += 1
            self.commands += len(batch)
            async with asyncio.timeout(self._reply_timeout):
                await self._read_replies(conn, [future for _, future in batch])
        except (RedisError, OSError, TimeoutError) as exc:
            error = _connection_error(exc, self._where)
            await self._drop()
            for _, future in batch:
                _settle(future, error=error)
        except BaseException:
            await self._drop()
            for _, future in batch:
                future.cancel()
            raise

    async def _read_replies(
        self, conn: AbstractConnection, futures: list[asyncio.Future[Any]]
    ) -> None:
        """Read one reply per future, in order; an error reply fails only its future."""
        reader = getattr(conn, "_reader", None)
        if not isinstance(reader, asyncio.StreamReader):  # not the redis-py we know
            for future in futures:
                try:
                    _settle(future, await conn.read_response())
                except ResponseError as exc:
                    _settle(future, error=exc)
            return
        for future in futures:
            reply = self._replies.next()
            while reply is INCOMPLETE:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    raise RedisConnectionError(f"{self._where} closed the connection")
                self._replies.feed(chunk)
                reply = self._replies.next()
            if isinstance(reply, ResponseError):
                _settle(future, error=reply)
            else:
                _settle(future, reply)

    async def _connected(self) -> AbstractConnection:
        if self._conn is None:
            self._conn = self._connect()
        if not self._conn.is_connected:
            await self._conn.connect()  # type: ignore[no-untyped-call]
            self._replies = Replies()
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    async def close(self) -> None:
        self._closed = True
        if self._sender is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._sender), self._reply_timeout)
        await self._drop()


@dataclass(slots=True)
class Ticket:
    """Links a blocking exchange to whoever may need to cut it short."""

    #: The server's id of the connection, once the commands are sent (for CLIENT UNBLOCK).
    client_id: int | None = None
    #: Set by an abandoning caller: if nothing was sent yet, nothing will be.
    abandoned: bool = False


class BlockingPool:
    """Connections for exchanges that block on the server, one per waiting caller."""

    def __init__(self, connect: Connect, *, limit: int, where: str) -> None:
        self._connect = connect
        self._free: list[AbstractConnection] = []
        self._ids: dict[AbstractConnection, int] = {}
        self._slots = asyncio.Semaphore(limit)
        self._where = where
        self._closed = False
        #: Exchanges made, and those waiting on the server right now (for tests).
        self.exchanges = 0
        self.waiting = 0

    async def exchange(
        self, commands: Sequence[Command], timeout: float, ticket: Ticket
    ) -> list[Any] | None:
        """Send ``commands`` in one write and return their replies (error replies as
        exception objects); ``None`` if the ticket was abandoned before anything was sent.

        The first command may block on the server for up to ``timeout`` seconds; the ones
        after it run as soon as it returns, in the same round trip.
        """
        async with self._slots:
            if self._closed:
                raise RedisConnectionError(f"connection to {self._where} is closed")
            conn = self._free.pop() if self._free else self._connect()
            try:
                client_id = await self._client_id(conn)
                if ticket.abandoned:
                    self._free.append(conn)
                    return None
                ticket.client_id = client_id
                await conn.send_packed_command(
                    b"".join(pack(command) for command in commands), check_health=False
                )
                self.exchanges += 1
                self.waiting += 1
                try:
                    replies = await self._replies(conn, len(commands), timeout)
                finally:
                    self.waiting -= 1
            except BaseException as exc:
                # A reply may still be on its way (e.g. we were cancelled): never reuse it.
                self._ids.pop(conn, None)
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
                if isinstance(exc, RedisError | OSError | TimeoutError):
                    raise _connection_error(exc, self._where) from exc
                raise
            self._free.append(conn)
            return replies

    @staticmethod
    async def _replies(conn: AbstractConnection, count: int, timeout: float) -> list[Any]:
        replies: list[Any] = []
        # The server answers by ``timeout``; the margin covers a slow network.
        async with asyncio.timeout(timeout + 5.0):
            for _ in range(count):
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        return replies

    async def _client_id(self, conn: AbstractConnection) -> int:
        if not conn.is_connected or conn not in self._ids:
            await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_packed_command(pack(("CLIENT", "ID")), check_health=False)
            self._ids[conn] = int(await conn.read_response())
        return self._ids[conn]

    async def close(self) -> None:
        self._closed = True
        free, self._free = self._free, []
        self._ids.clear()
        for conn in free:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)


def _settle(
    future: asyncio.Future[Any], reply: Any = None, *, error: Exception | None = None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(reply)


def _connection_error(exc: BaseException, where: str) -> RedisError:
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return exc
    if isinstance(exc, TimeoutError):
        return RedisTimeoutError(f"no reply from {where} in time")
    if isinstance(exc, RedisError):
        return exc
    return RedisConnectionError(f"connection to {where} failed: {exc}")
