"""A task with rich arguments round-trips as msgpack through each backend that stores
message bodies: SQLite (a file under ``tmp_path``), Redis and PostgreSQL (the shared test
servers, through the URL helpers of their plugins' own tests)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from msgpack_rich import round_trip

from bgcoor_core import TaskManager


async def _round_trip_on(url: str, fast: dict[str, Any]) -> None:
    manager = TaskManager(broker_url=url, storage_url=url, serializer="msgpack", **fast)
    try:
        await round_trip(manager)
    finally:
        await manager.close()


def _plugin(module: str) -> Any:
    """A backend plugin's test helpers; a plugin not installed skips, except under CI."""
    if os.environ.get("CI", "").lower() == "true":
        return __import__(module, fromlist=["_"])
    return pytest.importorskip(module)


async def test_sqlite(tmp_path: Path, fast: dict[str, Any]) -> None:
    await _round_trip_on(f"sqlite:///{tmp_path}/msgpack.db", fast)


@pytest.mark.server
async def test_redis(tmp_path: Path, fast: dict[str, Any]) -> None:
    testing = _plugin("bgcoor_redis._testing")
    await _round_trip_on(testing.test_url(tmp_path), fast)


@pytest.mark.server
async def test_postgres(fast: dict[str, Any]) -> None:
    testing = _plugin("bgcoor_postgres._testing")
    await _round_trip_on(testing.make_test_url(), fast)
