"""One SQLite connection owned by one thread; async callers hop onto that thread."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from ._schema import migrate

T = TypeVar("T")


class Connection:
    """Serialises every call on a private thread, so the connection never changes threads
    and the backend can be awaited from any event loop."""

    def __init__(self, path: str, *, busy_timeout: float, synchronous: str) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="bgcoor-sqlite")
        self._conn: sqlite3.Connection | None = None
        self.found_version: int | None = None  # schema version the file had when opened

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            create_private(self.path)
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            self.found_version = migrate(conn)
            self._conn = conn
        return self._conn

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the connection's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._call, fn, args)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Fire and forget (used to undo work whose awaiting caller was cancelled)."""
        self._thread.submit(self._call, fn, args)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        return fn(self._open(), *args)

    async def close(self) -> None:
        def _close(_: sqlite3.Connection) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        if self._conn is not None:
            await self.run(_close)
        self._thread.shutdown(wait=True)


def create_private(path: str) -> None:
    """Create the database file readable by its owner only (0600) if it does not exist:
    it holds every task's arguments and results. SQLite gives the ``-wal`` and ``-shm``
    files it creates the mode of the database file. A file that exists is left as it is
    (its owner chose its mode)."""
    if path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)  # an empty file is an empty database


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` (take the write lock up front, so reads inside it are current)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
