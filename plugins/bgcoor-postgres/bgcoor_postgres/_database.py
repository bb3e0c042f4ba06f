"""The connection pool, opened lazily, and retries that ride out a server restart.

An operation is a coroutine function taking a connection. :meth:`Database.run` acquires a
connection, runs it and, when the connection fails (server restarting, network blip),
retries with exponential backoff for up to ``reconnect_timeout`` seconds. Statements
that fail for any other reason are not retried.

asyncpg pools belong to one event loop; a backend used from several loops (the manager's
sync API runs its own) gets one pool per loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg

from ._options import PostgresTarget
from ._schema import CREATED, check_temporary, check_version, migrate, schema_exists

log = logging.getLogger("bgcoor.postgres")

T = TypeVar("T")
if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    #: A connection of ours or the caller's (plain or from an asyncpg pool).
    Conn: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
else:
    Conn = Any
Operation = Callable[[Conn], Awaitable[T]]
StatementObserver = Callable[[str], None]

#: Errors that mean "the connection, not the statement, failed": worth a retry.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` says the connection broke (asyncpg raises ``InterfaceError``
    "connection is closed" for a connection the server dropped while it was idle)."""
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    if isinstance(exc, asyncpg.InternalClientError):  # protocol state broken by a drop
        return True
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


RETRY_CANDIDATES: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
#: Errors of concurrent statements that succeed when simply run again.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


class DatabaseClosedError(RuntimeError):
    """The backend was closed; it must not be used any more."""


class Database:
    """Pools (one per event loop) for one :class:`PostgresTarget`."""

    def __init__(self, target: PostgresTarget) -> None:
        self.target = target
        self.observer: StatementObserver | None = None  # tests count round trips with it
        self._pools: dict[asyncio.AbstractEventLoop, asyncpg.Pool[Any]] = {}
        self._opening: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._ready = False  # schema migrated (or checked) by this process
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def run(self, operation: Operation[T]) -> T:
        """Run ``operation`` on a pooled connection, retrying on connection failures."""
        loop = asyncio.get_running_loop()
        give_up: float | None = None
        delay = 0.05
        while True:
            try:
                pool = await self._pool()
                async with pool.acquire() as conn:
                    try:
                        return await operation(conn)
                    except RETRY_CANDIDATES as exc:
                        if is_connection_error(exc):
                            # never hand a broken connection back (unless asyncpg has
                            # already dropped it)
                            with contextlib.suppress(asyncpg.InterfaceError):
                                conn.terminate()
                        raise
            except TRANSIENT_ERRORS:
                await asyncio.sleep(0.001)
            except RETRY_CANDIDATES as exc:
                if not is_connection_error(exc):
                    raise
                if self._closed:
                    raise DatabaseClosedError("the PostgreSQL backend is closed") from None
                now = loop.time()
                if give_up is None:
                    give_up = now + self.target.options.reconnect_timeout
                    log.warning(
                        "PostgreSQL at %s unreachable (%s: %s); retrying for up to %.0fs",
                        self.target.safe_dsn,
                        type(exc).__name__,
                        exc,
                        self.target.options.reconnect_timeout,
                    )
                if now + delay > give_up:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def connect(self) -> asyncpg.Connection[Any]:
        """A dedicated connection outside the pool (the LISTEN connection)."""
        return await asyncpg.connect(self.target.dsn)

    async def _pool(self) -> asyncpg.Pool[Any]:
        if self._closed:
            raise DatabaseClosedError("the PostgreSQL backend is closed")
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is not None:
            return pool
        lock = self._opening.setdefault(loop, asyncio.Lock())
        async with lock:
            pool = self._pools.get(loop)
            if pool is None:
                pool = await self._open()
                self._pools[loop] = pool
        return pool

    async def _open(self) -> asyncpg.Pool[Any]:
        options = self.target.options
        conn = await asyncpg.connect(self.target.dsn)
        try:
            if not self._ready:
                if options.auto_migrate:
                    for line in await self._migrate(conn):
                        log.info("applied %s", line)
                else:
                    if options.temporary and await schema_exists(conn, options.schema_name):
                        check_temporary(self.target.dsn, options.schema_name, True)
                    await check_version(conn, options.schema_name)
                self._ready = True
        finally:
            await conn.close()
        return await asyncpg.create_pool(
            self.target.dsn,
            min_size=options.pool_min_size,
            max_size=options.pool_size,
            init=self._init_connection if self.observer is not None else None,
            reset=_keep_session,
        )

    async def _init_connection(self, conn: asyncpg.Connection[Any]) -> None:
        observer = self.observer
        if observer is not None:
            conn.add_query_logger(lambda query: observer(query.query))

    async def migrate(self) -> list[str]:
        """Apply pending migrations now (``bgcoor migrate``)."""
        conn = await asyncpg.connect(self.target.dsn)
        try:
            applied = await self._migrate(conn)
        finally:
            await conn.close()
        self._ready = True
        return applied

    async def _migrate(self, conn: asyncpg.Connection[Any]) -> list[str]:
        options = self.target.options
        return await migrate(
            conn, options.schema_name, dsn=self.target.dsn, temporary=options.temporary
        )

    async def close(self, *, drop_schema: str | None = None) -> None:
        """Close every pool (after dropping ``drop_schema`` if given, and only if this
        process created the schema: see ``_schema.CREATED``)."""
        if self._closed:
            return
        key = (self.target.dsn, self.target.options.schema_name)
        if drop_schema is not None and self._ready and key in CREATED:
            conn = await asyncpg.connect(self.target.dsn)
            try:
                await conn.execute(drop_schema)
                CREATED.discard(key)
            finally:
                await conn.close()
        self._closed = True
        current = asyncio.get_running_loop()
        for loop, pool in list(self._pools.items()):
            if loop is current:
                await pool.close()
            else:
                pool.terminate()  # its loop is not ours to await on
        self._pools.clear()


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """Our statements leave no session state behind (no SET, LISTEN, cursors or session
    locks; an open transaction is rolled back by the pool itself), so the default reset
    query, a round trip per release, is skipped."""
