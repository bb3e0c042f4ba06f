"""A task with rich annotated arguments round-trips in CBOR through each backend: SQLite
(a file in ``tmp_path``), Redis and PostgreSQL (the local test servers, through the URL
factories of their plugins)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest
from bgcoor_cbor import CONTENT_TYPE
from cbor_support import FAST, check_typed_round_trip

from bgcoor_core import TaskManager


def plugin_testing(name: str) -> ModuleType:
    """A backend plugin's ``_testing`` module; a plugin not installed skips (fails in CI)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            raise
        pytest.skip(f"{name.split('.')[0]} is not installed")


async def check_backend(url: str) -> None:
    manager = TaskManager(broker_url=url, storage_url=url, serializer="cbor", **FAST)
    try:
        assert manager.broker.codec.content_type == CONTENT_TYPE
        await check_typed_round_trip(manager)
    finally:
        await manager.close()


async def test_sqlite(tmp_path: Path) -> None:
    await check_backend(f"sqlite:///{tmp_path / 'cbor.db'}")


@pytest.mark.server
async def test_redis(tmp_path: Path) -> None:
    await check_backend(plugin_testing("bgcoor_redis._testing").test_url(tmp_path))


@pytest.mark.server
async def test_postgres() -> None:
    await check_backend(plugin_testing("bgcoor_postgres._testing").make_test_url())
