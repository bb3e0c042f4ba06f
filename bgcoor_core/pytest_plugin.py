"""pytest fixtures for testing code that uses bg-coor (entry point ``pytest11``).

* ``bgcoor_manager``: a fresh :class:`TaskManager` on the in-memory backend.
* ``bgcoor_memory``: points an existing manager (your app's) at fresh in-memory backends
  for the duration of one test: ``bgcoor_memory(app.manager)``.

Then ``await manager.drain(raise_errors=True)`` runs everything enqueued so far and
re-raises a task's failure in the test::

    async def test_add(bgcoor_manager):
        add = bgcoor_manager.task(my_module.add)
        handle = await add.enqueue(1, 2)
        await bgcoor_manager.drain(raise_errors=True)
        assert await handle.result() == 3
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ._manager import TaskManager
from ._settings import Settings
from ._wiring import Backends

MEMORY: dict[str, Any] = {
    "broker_url": "memory://",
    "storage_url": "memory://",
    "retry_backoff": 0.0,
}


def memory_settings(base: Settings | None = None, **overrides: Any) -> Settings:
    """``base`` (or defaults) switched to the in-memory backends with instant retries."""
    base = base or Settings(broker_url="memory://", storage_url="memory://")
    return base.model_copy(update={**MEMORY, **overrides})


@pytest.fixture
def bgcoor_manager() -> Iterator[TaskManager]:
    """A TaskManager on fresh in-memory backends, closed after the test."""
    manager = TaskManager(memory_settings())
    yield manager
    manager.close_sync()


@pytest.fixture
def bgcoor_memory() -> Iterator[Callable[[TaskManager], TaskManager]]:
    """Point managers at fresh in-memory backends for this test; restored afterwards."""
    saved: list[tuple[TaskManager, Settings, Backends | None]] = []

    def use_memory(manager: TaskManager) -> TaskManager:
        settings = manager.settings
        manager.settings = memory_settings(settings)
        memory = Backends.open(manager.host, manager.settings)
        saved.append((manager, settings, manager.use_backends(memory)))
        return manager

    yield use_memory
    for manager, settings, backends in reversed(saved):
        manager.close_sync()
        manager.settings = settings
        manager.use_backends(backends)
