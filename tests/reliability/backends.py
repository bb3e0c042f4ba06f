"""The backends the reliability scenarios run on, and whether each can run here.

SQLite always runs. Redis and PostgreSQL join automatically once their plugin registers
its URL scheme; each test then gets a throw-away namespace (a unique key prefix in a
dedicated Redis database, a unique PostgreSQL schema) and removes it afterwards. Without
the plugin the entry is skipped; with the plugin but no reachable server it is skipped
locally and fails under ``CI=true``.

The URL templates can be overridden with ``RELIABILITY_REDIS_URL`` and
``RELIABILITY_POSTGRES_URL`` (``{hex}`` is replaced by a unique suffix).
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from bgcoor_core import build_plugin_host

REDIS_URL = "redis://127.0.0.1:6379/14?prefix=rel-{hex}"
POSTGRES_URL = "postgresql://root@127.0.0.1:5432/test?schema=rel_{hex}"


@cache
def installed_schemes() -> frozenset[str]:
    """Broker URL schemes registered by the installed plugins."""
    return frozenset(build_plugin_host().brokers.schemes())


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@dataclass(frozen=True)
class Backend:
    """One backend the scenarios run on.

    ``make_url(tmp_path)`` gives a URL private to one test (or one driver run);
    ``cleanup(url)`` removes what that URL created on a server.
    """

    name: str
    scheme: str
    make_url: Callable[[Path], str]
    cleanup: Callable[[str], Awaitable[None]] | None = None
    server: tuple[str, int] | None = None  # (host, port) that must accept connections

    def unavailable(self) -> str | None:
        """Why this backend cannot run here, or ``None`` when it can."""
        if self.scheme not in installed_schemes():
            return f"{self.name}: no plugin provides the {self.scheme}:// scheme (not installed)"
        if self.server is not None and not _reachable(*self.server):
            host, port = self.server
            return f"{self.name}: no server accepts connections on {host}:{port}"
        return None

    def must_run(self) -> bool:
        """Under CI an installed plugin's backend must run: a missing server is a failure."""
        return in_ci() and self.scheme in installed_schemes()


def _reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
        return True
    return False


def _unique() -> str:
    return uuid.uuid4().hex[:12]


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path.resolve()}/reliability.db"


def _redis_url(tmp_path: Path) -> str:
    return os.environ.get("RELIABILITY_REDIS_URL", REDIS_URL).replace("{hex}", _unique())


def _postgres_url(tmp_path: Path) -> str:
    return os.environ.get("RELIABILITY_POSTGRES_URL", POSTGRES_URL).replace("{hex}", _unique())


async def _drop_redis_prefix(url: str) -> None:
    """Delete every key under the URL's ``prefix`` in its database."""
    import redis.asyncio as aioredis

    prefix = parse_qs(urlsplit(url).query).get("prefix", [""])[0]
    if not prefix:
        return  # never wipe a whole database
    client = aioredis.Redis.from_url(url.partition("?")[0])
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


async def _drop_postgres_schema(url: str) -> None:
    import asyncpg

    schema = parse_qs(urlsplit(url).query).get("schema", [""])[0]
    if not schema.startswith("rel_"):
        return  # only ever drop the throw-away schemas this module names
    conn = await asyncpg.connect(url.partition("?")[0])
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def _server(template_env: str, default: str) -> tuple[str, int]:
    parts = urlsplit(os.environ.get(template_env, default))
    return parts.hostname or "127.0.0.1", parts.port or 0


SQLITE = Backend("sqlite", "sqlite", _sqlite_url)
REDIS = Backend(
    "redis",
    "redis",
    _redis_url,
    _drop_redis_prefix,
    _server("RELIABILITY_REDIS_URL", REDIS_URL),
)
POSTGRES = Backend(
    "postgres",
    "postgresql",
    _postgres_url,
    _drop_postgres_schema,
    _server("RELIABILITY_POSTGRES_URL", POSTGRES_URL),
)

BACKENDS: dict[str, Backend] = {b.name: b for b in (SQLITE, REDIS, POSTGRES)}
