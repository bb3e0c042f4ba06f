"""Shared fixtures for the core behaviour tests.

Every fixture builds real objects on the memory backend with short leases and backoffs,
and closes what it creates.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bgcoor_core import (
    Codec,
    MemoryBroker,
    MemoryStorage,
    Settings,
    TaskManager,
    TaskRegistry,
    load_settings,
)
from bgcoor_core._codec import JsonSerializer

#: Settings that keep the suite fast: short leases, near-instant retries, short grace.
FAST: dict[str, Any] = {
    "broker_url": "memory://",
    "storage_url": "memory://",
    "lease_seconds": 2.0,
    "retry_backoff": 0.01,
    "retry_backoff_max": 0.05,
    "poll_seconds": 0.2,
    "shutdown_grace": 2.0,
}

Condition = Callable[[], bool | Awaitable[bool]]
WaitUntil = Callable[..., Awaitable[None]]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own BGCOOR_* variables must not leak into the tests."""
    for key in list(os.environ):
        if key.upper().startswith("BGCOOR_"):
            monkeypatch.delenv(key)


def make_settings(**overrides: Any) -> Settings:
    """Settings with the fast defaults, plus ``overrides``."""
    return load_settings(**{**FAST, **overrides})


@pytest.fixture
def fast() -> dict[str, Any]:
    """The fast settings as keyword arguments, e.g. ``TaskManager(plugins=[...], **fast)``."""
    return dict(FAST)


@pytest.fixture
def fast_settings() -> Callable[..., Settings]:
    """Factory: ``fast_settings(lease_seconds=0.3)`` gives fast settings with changes."""
    return make_settings


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def codec() -> Codec:
    return Codec({"application/json": JsonSerializer()})


@pytest.fixture
async def broker(codec: Codec) -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker(codec)
    yield broker
    await broker.close()


@pytest.fixture
async def storage(codec: Codec) -> AsyncIterator[MemoryStorage]:
    storage = MemoryStorage(codec)
    yield storage
    await storage.close()


@pytest.fixture
def registry() -> TaskRegistry:
    return TaskRegistry()


@pytest.fixture
async def manager() -> AsyncIterator[TaskManager]:
    """A manager on memory:// with short lease, backoff and grace; closed afterwards."""
    manager = TaskManager(**FAST)
    yield manager
    await manager.close()


async def _wait_until(condition: Condition, timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or condition}")
        await asyncio.sleep(0.005)


@pytest.fixture
def wait_until() -> WaitUntil:
    """``await wait_until(lambda: ..., timeout=5)``: poll a (sync or async) condition.

    Only for states no event announces (e.g. broker counters); fails loudly on timeout.
    """
    return _wait_until
