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


async def test_memory_fixture_after_the_app_touched_its_real_backend(
    bgcoor_memory: object, tmp_path: object
) -> None:
    """Regression: the swap left the atomic-enqueue decision of the old backend behind,
    so enqueues kept going to SQLite while drain() read memory (``drained: 0``)."""
    url = f"sqlite:///{tmp_path}/app.db"
    real = TaskManager(broker_url=url, storage_url=url)

    @real.task(name="jobs.triple")
    def triple(x: int) -> int:
        return 3 * x

    await triple.enqueue(1)  # the app has used SQLite: atomic enqueue decided for it
    sqlite_broker = real.broker
    bgcoor_memory(real)  # type: ignore[operator]
    handle = await triple.enqueue(2)
    assert await real.drain(raise_errors=True) == 1
    assert await handle.result(timeout=1) == 6
    assert await sqlite_broker.queue_length("default") == 1  # only the first enqueue
    assert real.broker is not sqlite_broker
