"""Fixtures for the PostgreSQL plugin tests: throw-away schemas on the shared server.

Server tests skip when 127.0.0.1:5432 is unreachable, and fail instead under ``CI=true``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bgcoor_core import Settings, TaskManager
from bgcoor_core.testing import make_test_codec

try:
    import asyncpg
    from bgcoor_postgres import PostgresBackend, parse_postgres_url
    from bgcoor_postgres._testing import SERVER_URL, make_test_url
except ImportError:  # a separate distribution: `pip install -e plugins/bgcoor-postgres`
    if os.environ.get("CI", "").lower() == "true":
        raise
    collect_ignore_glob = ["test_pg_*.py"]

#: Settings that keep worker tests fast.
FAST: dict[str, Any] = {
    "lease_seconds": 5.0,
    "retry_backoff": 0.01,
    "retry_backoff_max": 0.05,
    "poll_seconds": 0.5,
    "shutdown_grace": 5.0,
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("BGCOOR_"):
            monkeypatch.delenv(key)


@pytest.fixture
def pg_url() -> Callable[..., str]:
    """Factory: ``pg_url(poll_interval=30)`` is a URL for a new schema, dropped on close."""
    return make_test_url


@pytest.fixture
async def backend(pg_url: Callable[..., str]) -> AsyncIterator[PostgresBackend]:
    backend = PostgresBackend(parse_postgres_url(pg_url()), make_test_codec())
    yield backend
    await backend.close()


@pytest.fixture
async def manager(pg_url: Callable[..., str]) -> AsyncIterator[TaskManager]:
    url = pg_url()
    manager = TaskManager(Settings(broker_url=url, storage_url=url, **FAST))
    yield manager
    await manager.close()


@pytest.fixture
async def raw() -> AsyncIterator[asyncpg.Connection[Any]]:
    """A plain connection to the server, as an operator or another program has one."""
    conn = await asyncpg.connect(SERVER_URL)
    yield conn
    await conn.close()
