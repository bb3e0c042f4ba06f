"""Catch-up after the schedulers were down, on every backend with a schedule store.

No waiting on the wall clock: a schedule ``every=1s`` is stored, one pass fires its first
tick, then the next pass runs with a ``now`` 10 ticks later, as the first pass after 10
ticks without any scheduler. ``catchup="latest"`` fires the newest of them and counts 9
missed; ``catchup="all"`` fires all 10 (those within ``catchup_window``). The ticks are read
back from the task records (``bgcoor-tick``). Redis and PostgreSQL skip when their test
server is down (and fail under ``CI=true``), as in the conformance suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bgcoor_core import FireOutcome, ScheduleStore, TaskManager, build_plugin_host
from bgcoor_core._scheduler import TICK_HEADER, Scheduler

HOST = build_plugin_host()
#: Broker schemes whose conformance URL pairs with a same-URL storage holding schedules.
SCHEMES = [s for s in ("memory", "sqlite", "redis", "postgresql") if s in HOST.brokers.entries]
TASK = "catchup.tick"
STEP = timedelta(seconds=1)
DOWN = 10  # ticks without any scheduler


@pytest.fixture(params=SCHEMES, ids=str)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    test_url = HOST.brokers.entries[request.param].test_url
    assert test_url is not None
    return test_url(tmp_path)  # skips (or fails under CI) when the server is down


def declare(manager: TaskManager, catchup: str, window: timedelta) -> None:
    @manager.periodic(every=STEP, catchup=catchup, catchup_window=window, id=TASK, name=TASK)
    async def tick(scheduled_at: str | None = None) -> None:
        """Never runs: the records are what the test reads."""


@pytest.fixture
async def managers(url: str) -> AsyncIterator[list[TaskManager]]:
    """Two managers on the same URL (the second is the first for memory://, which a
    second manager could not share)."""
    first = TaskManager(broker_url=url, storage_url=url)
    second = first if url.startswith("memory:") else TaskManager(broker_url=url, storage_url=url)
    yield [first, second]
    for manager in {id(m): m for m in (first, second)}.values():
        await manager.close()


def scheduler_of(manager: TaskManager) -> Scheduler:
    store = manager.backends.schedules
    assert isinstance(store, ScheduleStore)
    definitions = manager.registry.schedules()
    return Scheduler(
        store, manager.broker, manager.registry, manager.settings, definitions=definitions
    )


async def started(manager: TaskManager, catchup: str, window: timedelta) -> tuple[datetime, int]:
    """Store the schedule and run the pass of its first tick; that tick, and how many
    records that pass made."""
    declare(manager, catchup, window)
    scheduler = scheduler_of(manager)
    await scheduler.store.put_schedules(scheduler.definitions)
    (entry,) = await scheduler.store.get_schedules()
    since = datetime.fromtimestamp(entry.state.since_ms / 1000, UTC)
    first = since.replace(microsecond=0) + STEP  # the first tick after the upsert
    done = await scheduler.run_pass(now=first)
    assert done.outcomes == {TASK: [FireOutcome.FIRED]}
    return first, len(await recorded_ticks(manager))


async def recorded_ticks(manager: TaskManager) -> list[datetime]:
    """The tick of every record of the task, oldest first (duplicates kept)."""
    ticks: list[datetime] = []
    after = None
    while page := await manager.storage.list(name=TASK, limit=3, after=after):
        ticks += [datetime.fromisoformat(r.headers[TICK_HEADER]) for r in page]
        after = page[-1].id
    return sorted(ticks)


async def state_of(manager: TaskManager) -> tuple[int, int, datetime | None]:
    """The schedule's ``fired`` and ``missed`` counters and its last tick."""
    (info,) = [s for s in await manager.schedules() if s.id == TASK]
    last = info.state.last_tick_ms
    return (
        info.state.fired,
        info.state.missed,
        None if last is None else datetime.fromtimestamp(last / 1000, UTC),
    )


def ticks_after(first: datetime, count: int) -> list[datetime]:
    return [first + n * STEP for n in range(1, count + 1)]


async def test_latest_fires_the_newest_missed_tick_and_counts_the_others(
    managers: list[TaskManager],
) -> None:
    manager = managers[0]
    first, _ = await started(manager, "latest", timedelta(hours=1))
    back = first + DOWN * STEP
    done = await scheduler_of(manager).run_pass(now=back)
    assert done.outcomes == {TASK: [FireOutcome.FIRED]}
    assert await recorded_ticks(manager) == [first, back]
    assert await state_of(manager) == (2, DOWN - 1, back)


async def test_all_fires_every_missed_tick_once(managers: list[TaskManager]) -> None:
    manager = managers[0]
    first, _ = await started(manager, "all", timedelta(hours=1))
    back = first + DOWN * STEP
    scheduler = scheduler_of(manager)
    done = await scheduler.run_pass(now=back)
    assert done.outcomes == {TASK: [FireOutcome.FIRED] * DOWN}
    again = await scheduler.run_pass(now=back)  # a second pass at that time: nothing new
    assert again.outcomes == {}
    assert await recorded_ticks(manager) == [first, *ticks_after(first, DOWN)]
    assert await state_of(manager) == (1 + DOWN, 0, back)


async def test_all_fires_only_the_ticks_inside_the_window(managers: list[TaskManager]) -> None:
    manager = managers[0]
    window = 4 * STEP
    first, _ = await started(manager, "all", window)
    back = first + DOWN * STEP
    done = await scheduler_of(manager).run_pass(now=back)
    assert done.outcomes == {TASK: [FireOutcome.FIRED] * 4}  # (back - 4s, back]
    kept = ticks_after(first, DOWN)[-4:]
    assert await recorded_ticks(manager) == [first, *kept]
    assert await state_of(manager) == (1 + 4, DOWN - 4, back)


@pytest.mark.parametrize("catchup", ["latest", "all"])
async def test_two_schedulers_catching_up_at_once_fire_each_tick_once(
    managers: list[TaskManager], catchup: str
) -> None:
    first_manager, second_manager = managers
    first, _ = await started(first_manager, catchup, timedelta(hours=1))
    if second_manager is not first_manager:
        declare(second_manager, catchup, timedelta(hours=1))
    back = first + DOWN * STEP
    racers = [scheduler_of(first_manager), scheduler_of(second_manager)]
    passes = await asyncio.gather(*(s.run_pass(now=back) for s in racers))
    outcomes = [o for done in passes for o in done.outcomes.get(TASK, [])]
    expected = ticks_after(first, DOWN) if catchup == "all" else [back]
    assert outcomes.count(FireOutcome.FIRED) == len(expected)
    assert set(outcomes) <= {FireOutcome.FIRED, FireOutcome.ALREADY}
    assert await recorded_ticks(first_manager) == [first, *expected]
    missed = 0 if catchup == "all" else DOWN - 1
    assert await state_of(first_manager) == (1 + len(expected), missed, back)
