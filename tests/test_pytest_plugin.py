"""The pytest11 plugin: fixtures that put a task under test in three lines."""

from __future__ import annotations

import pytest

from bgcoor_core import TaskFailedError, TaskManager

# An "application" manager pointing at a backend that cannot even be opened: the
# ``bgcoor_memory`` fixture must swap it for in-memory backends before any use.
app = TaskManager(
    broker_url="sqlite:///no-such-dir/app.db", storage_url="sqlite:///no-such-dir/app.db"
)


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task(max_retries=0)
def explode() -> None:
    raise RuntimeError("kaput")


async def test_app_manager_runs_on_memory(bgcoor_memory: object) -> None:
    bgcoor_memory(app)  # type: ignore[operator]
    handle = await add.enqueue(1, 2)
    assert await app.drain(raise_errors=True) == 1
    assert await handle.result() == 3


async def test_drain_reraises_task_failure(bgcoor_memory: object) -> None:
    bgcoor_memory(app)  # type: ignore[operator]
    await explode.enqueue()
    with pytest.raises(TaskFailedError, match="kaput"):
        await app.drain(raise_errors=True)


def test_app_manager_restored_after_test() -> None:
    assert app.settings.broker_url == "sqlite:///no-such-dir/app.db"
    assert app._backends is None


async def test_fresh_manager_fixture(bgcoor_manager: TaskManager) -> None:
    @bgcoor_manager.task
    def mul(a: int, b: int) -> int:
        return a * b

    handle = await mul.enqueue(3, 4)
    await bgcoor_manager.drain()
    assert await handle.result(timeout=1) == 12
    assert bgcoor_manager.settings.broker_url == "memory://"
