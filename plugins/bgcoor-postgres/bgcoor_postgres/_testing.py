"""Throw-away schemas on the shared test server, for the conformance suite and our tests.

Every call names a new schema ``bgcoor_t_<unix time>_<random>`` with ``temporary=true``:
the backend drops it when it closes. Schemas of runs that crashed before closing are
swept by the next run once they are an hour old (the time in the name says when).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import threading
import time
from typing import Any

import asyncpg

HOST, PORT, DATABASE = "127.0.0.1", 5432, "test"
SERVER_URL = f"postgresql://root@{HOST}:{PORT}/{DATABASE}"
PREFIX = "bgcoor_t_"
STALE_AFTER = 3600.0

_swept = threading.Event()


def require_server(host: str = HOST, port: int = PORT) -> None:
    """Skip the calling test when the server is down, or fail it under ``CI=true``."""
    import pytest

    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        message = f"PostgreSQL not reachable at {host}:{port}: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def new_schema_name() -> str:
    return f"{PREFIX}{int(time.time())}_{secrets.token_hex(4)}"


def make_test_url(tmp_path: object = None, **options: Any) -> str:
    """A URL for a fresh schema on the shared server, dropped when its backend closes."""
    require_server()
    if not _swept.is_set():
        _swept.set()
        threading.Thread(target=_sweep_quietly, daemon=True).start()
    query = "&".join(f"{k}={v}" for k, v in {"temporary": "true", **options}.items())
    return f"{SERVER_URL}?schema={new_schema_name()}&{query}"


async def sweep_stale_schemas(dsn: str = SERVER_URL, older_than: float = STALE_AFTER) -> int:
    """Drop test schemas left behind by crashed runs; return how many."""
    conn = await asyncpg.connect(dsn)
    dropped = 0
    try:
        names = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
            PREFIX.replace("_", r"\_") + "%",
        )
        for (name,) in names:
            stamp = name[len(PREFIX) :].split("_", 1)[0]
            if stamp.isdigit() and int(stamp) < time.time() - older_than:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
                dropped += 1
    finally:
        await conn.close()
    return dropped


def _sweep_quietly() -> None:
    with contextlib.suppress(Exception):  # best effort: a test run must not fail on it
        asyncio.run(sweep_stale_schemas())


def is_type_lookup(query: str) -> bool:
    """Whether a statement is asyncpg's own: it looks up a statement's array types once
    per new connection (tests counting a backend's statements leave these out)."""
    return "typeinfo_tree" in query or "set_config('jit'" in query
