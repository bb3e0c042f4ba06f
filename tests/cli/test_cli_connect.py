"""One-off commands fail within a few seconds when a server is unreachable, naming the
setting, instead of riding out the backend's reconnect retries (60 s for PostgreSQL).
No server is needed: port 1 on loopback refuses every connection."""

from __future__ import annotations

import asyncio
import time

import pytest
from cli_support import Subprocess, fails

from bgcoor_core import load_settings
from bgcoor_core.cli._reach import Endpoint, check_reachable, endpoints

REDIS = "redis://127.0.0.1:1/0"
POSTGRES = "postgresql://root:hunter2@127.0.0.1:1/test"
ONE_OFF = [
    ["status"],
    ["inspect", "some-id"],
    ["dlq", "list"],
    ["dlq", "purge", "--yes"],
    ["tasks", "--status", "failed"],
    ["cancel", "some-id"],
    ["purge", "--queue", "default", "--yes"],
    ["enqueue", "cli_app", "add", "--args", "[1, 2]"],
    ["migrate"],
]


@pytest.mark.parametrize("url", [REDIS, POSTGRES], ids=["redis", "postgres"])
@pytest.mark.parametrize("command", ONE_OFF, ids=[" ".join(c[:2]) for c in ONE_OFF])
def test_unreachable_server_fails_fast_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, url: str, command: list[str]
) -> None:
    pytest.importorskip("bgcoor_redis" if url.startswith("redis") else "bgcoor_postgres")
    monkeypatch.setenv("BGCOOR_BROKER_URL", url)
    monkeypatch.setenv("BGCOOR_STORAGE_URL", url)
    started = time.monotonic()
    line = fails(*command)
    assert time.monotonic() - started < 5
    assert (
        line == "error: BGCOOR_BROKER_URL: cannot connect to 127.0.0.1:1 (ConnectionRefusedError)"
    )


def test_unreachable_storage_is_named_in_a_real_process(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("bgcoor_postgres")
    monkeypatch.setenv("BGCOOR_STORAGE_URL", POSTGRES)  # broker: memory
    started = time.monotonic()
    code, out, err = Subprocess("status").finish()
    assert time.monotonic() - started < 10  # a fresh interpreter, then at most 3 s
    assert code == 1
    assert err == (
        "error: BGCOOR_STORAGE_URL: cannot connect to 127.0.0.1:1 (ConnectionRefusedError)\n"
    )
    assert "hunter2" not in out + err


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6380/0", [("127.0.0.1", 6380)]),
        ("redis://:pw@cache.internal/0", [("cache.internal", 6379)]),
        ("rediss://[::1]/0", [("::1", 6379)]),
        ("postgresql://u@db1:5433,db2/app", [("db1", 5433), ("db2", 5432)]),
        ("postgres://u@/app?host=/var/run/postgresql", []),  # a Unix socket
        ("memory://user:pw@localhost:1234", []),
        ("sqlite:///bgcoor.db", []),
        ("amqp://rabbit/vhost", []),  # no port we can tell
        ("amqp://rabbit:5672/vhost", [("rabbit", 5672)]),
        ("redis://host:notaport/0", []),
    ],
)
def test_endpoints_of_urls(url: str, expected: list[tuple[str, int]]) -> None:
    assert [(e.host, e.port) for e in endpoints("X", url)] == expected


def test_ipv6_endpoint_is_shown_in_brackets() -> None:
    assert str(Endpoint("X", "::1", 6379)) == "[::1]:6379"


async def test_a_listening_server_passes_the_check() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        url = f"redis://127.0.0.1:{port}/0"
        await check_reachable(load_settings(broker_url=url, storage_url=url))
    finally:
        server.close()
        await server.wait_closed()
