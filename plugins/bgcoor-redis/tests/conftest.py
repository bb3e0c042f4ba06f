"""Fixtures for the Redis plugin's own tests.

``redis_url`` is a fresh key namespace on the local test Redis (127.0.0.1:6379, db 15),
skipped when that server is down (failed under CI=true); ``raw`` is a plain client on that
database, for reading and damaging keys the way another program would; ``private_server``
starts redis-servers of the test's own, for tests that stop or reconfigure a server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis
from bgcoor_redis import RedisBackend
from bgcoor_redis._testing import test_url
from redis_servers import RedisServer

from bgcoor_core.testing import make_test_codec


@pytest.fixture
def redis_url(tmp_path: Path) -> str:
    return test_url(tmp_path)


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_url, make_test_codec())
    yield backend
    await backend.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aredis.Redis]:
    """A client on ``redis_url``'s database, without the backend's options (the prefix)."""
    client = aredis.Redis.from_url(redis_url.split("?", 1)[0])
    yield client
    await client.aclose()


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Factory: ``private_server(persistent=True)`` starts a server, stopped afterwards."""
    started: list[RedisServer] = []

    def start(**options: Any) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(started)}", **options)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop(kill=True)
