"""Periodic tasks on the memory backend: the scheduler's policies, driven pass by pass with
an injected clock, and overlap with real workers and runs lasting three intervals."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import types
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bgcoor_core import (
    CapabilityError,
    Codec,
    FireOutcome,
    MemoryBroker,
    PayloadError,
    TaskManager,
    TaskStatus,
    WorkerPool,
)
from bgcoor_core import _scheduler as scheduler_module
from bgcoor_core._errors import InvalidScheduleError, UnknownScheduleError
from bgcoor_core._scheduler import SCHEDULE_HEADER, TICK_HEADER, Scheduler
from bgcoor_core._timetable import Schedule
from bgcoor_core.backends.sqlite import SQLiteBackend

SECOND = timedelta(seconds=1)


def memory_manager(**settings: Any) -> TaskManager:
    return TaskManager(broker_url="memory://", storage_url="memory://", **settings)


def scheduler_of(manager: TaskManager) -> Scheduler:
    return Scheduler.of(manager)


async def since(manager: TaskManager, schedule_id: str) -> datetime:
    """When the schedule was first stored: its ticks are due after this."""
    (info,) = [i for i in await manager.schedules() if i.id == schedule_id]
    return datetime.fromtimestamp(info.state.since_ms / 1000, UTC)


async def stored(manager: TaskManager, schedule_id: str) -> Any:
    (info,) = [i for i in await manager.schedules() if i.id == schedule_id]
    return info.state


async def tick_headers(manager: TaskManager, name: str) -> list[str]:
    return sorted(t.headers[TICK_HEADER] for t in await manager.storage.list(name=name))


def iso(tick: datetime) -> str:
    return tick.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- firing ----------------------------------------------------------------------------


async def test_a_tick_enqueues_the_task_with_its_tick_and_schedule() -> None:
    manager = memory_manager()
    got: list[datetime] = []

    @manager.periodic(every=SECOND, id="beat")
    async def beat(scheduled_at: datetime) -> None:
        got.append(scheduled_at)

    scheduler = scheduler_of(manager)
    await scheduler.store.put_schedules(scheduler.definitions)
    start = await since(manager, "beat")
    tick = Schedule(every=SECOND).next_after(start)
    done = await scheduler.run_pass(now=tick + timedelta(milliseconds=300))
    assert done.outcomes == {"beat": [FireOutcome.FIRED]}
    (task,) = await manager.storage.list(name=beat.name)
    assert task.headers[SCHEDULE_HEADER] == "beat"
    assert task.headers[TICK_HEADER] == iso(tick)
    assert await manager.drain() == 1
    assert got == [tick]
    assert got[0].utcoffset() is not None  # timezone-aware
    await manager.close()


async def test_a_periodic_function_is_an_ordinary_task_too() -> None:
    manager = memory_manager()
    calls: list[int] = []

    @manager.periodic(cron="0 3 * * *")
    def nightly(size: int = 1) -> None:
        calls.append(size)

    await nightly.enqueue(size=5)
    assert await manager.drain() == 1
    assert calls == [5]
    await manager.close()


async def test_the_same_tick_noticed_twice_fires_once() -> None:
    manager = memory_manager()

    @manager.periodic(every=SECOND)
    async def beat() -> None: ...

    scheduler = scheduler_of(manager)
    await scheduler.store.put_schedules(scheduler.definitions)
    tick = Schedule(every=SECOND).next_after(await since(manager, beat.name))
    first = await scheduler.run_pass(now=tick)
    again = await scheduler.run_pass(now=tick + timedelta(milliseconds=900))
    assert first.outcomes == {beat.name: [FireOutcome.FIRED]}
    assert again.outcomes == {}  # nothing new is due: the ledger moved past the tick
    assert len(await manager.storage.list(name=beat.name)) == 1
    await manager.close()


async def test_schedulers_with_skewed_clocks_neither_double_fire_nor_skip() -> None:
    """Three schedulers, one 3 s ahead and one 2.5 s behind, passing in turn over 20 s:
    every tick in the window fires exactly once (``catchup="all"``, so the clock ahead
    does not legitimately jump over the first ticks)."""
    manager = memory_manager()

    @manager.periodic(every=SECOND, catchup="all")
    async def beat() -> None: ...

    schedulers = [scheduler_of(manager) for _ in range(3)]
    await schedulers[0].store.put_schedules(schedulers[0].definitions)
    start = await since(manager, beat.name)
    skews = [timedelta(seconds=3), timedelta(0), timedelta(seconds=-2.5)]
    for step in range(1, 41):  # every 0.5 s of "real" time
        real = start + step * timedelta(milliseconds=500)
        for scheduler, skew in zip(schedulers, skews, strict=True):
            await scheduler.run_pass(now=real + skew)
    ticks = await tick_headers(manager, beat.name)
    assert len(ticks) == len(set(ticks))  # no tick twice
    expected = [iso(t) for t in Schedule(every=SECOND).ticks(start, start + 23 * SECOND)]
    assert ticks == expected  # none skipped, up to the most advanced clock
    await manager.close()


async def test_a_stalled_scheduler_resuming_fires_nothing_already_fired() -> None:
    """A scheduler that read the schedules, then stalled (SIGSTOP) past ticks another one
    fired, sends stale ticks when it resumes: all refused."""
    manager = memory_manager()

    @manager.periodic(every=SECOND)
    async def beat() -> None: ...

    stalled, live = scheduler_of(manager), scheduler_of(manager)
    await live.store.put_schedules(live.definitions)
    start = await since(manager, beat.name)
    for n in range(1, 6):
        await live.run_pass(now=start + n * SECOND)
    fired = await tick_headers(manager, beat.name)
    resumed = await stalled.run_pass(now=start + 2 * SECOND)  # its clock read before the stall
    assert FireOutcome.FIRED not in resumed.outcomes.get(beat.name, [])
    assert await tick_headers(manager, beat.name) == fired
    await manager.close()


# -- saying why ticks were late ----------------------------------------------------------


class _SlowReads:
    """A schedule store whose reads take ``delay`` seconds (a lock held elsewhere)."""

    def __init__(self, store: Any, delay: float) -> None:
        self._store, self._delay = store, delay

    async def get_schedules(self) -> Any:
        await asyncio.sleep(self._delay)
        return await self._store.get_schedules()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_a_slow_pass_is_logged_with_where_its_time_went(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    manager = memory_manager()

    @manager.periodic(every=SECOND)
    async def beat() -> None: ...

    scheduler = scheduler_of(manager)
    store = scheduler.store
    await store.put_schedules(scheduler.definitions)
    tick = Schedule(every=SECOND).next_after(await since(manager, beat.name))
    monkeypatch.setattr(scheduler_module, "LATE", 0.05)
    scheduler.store = _SlowReads(store, 0.1)
    with caplog.at_level(logging.WARNING, logger="bgcoor.scheduler"):
        done = await scheduler.run_pass(now=tick)
    assert done.outcomes == {beat.name: [FireOutcome.FIRED]}
    (message,) = [r.getMessage() for r in caplog.records]
    number = r"\d+\.\ds"
    assert re.fullmatch(
        rf"scheduler pass took {number}: reading the schedules {number}, "
        rf"firing 1 request\(s\) {number}",
        message,
    )
    caplog.clear()
    monkeypatch.setattr(scheduler_module, "LATE", 5.0)
    scheduler.store = store
    with caplog.at_level(logging.WARNING, logger="bgcoor.scheduler"):
        await scheduler.run_pass(now=tick + SECOND)
    assert caplog.records == []  # a pass under LATE says nothing
    await manager.close()


async def test_a_late_wake_up_and_a_wall_clock_jump_are_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = scheduler_of(memory_manager())
    caplog.set_level(logging.WARNING, logger="bgcoor.scheduler")
    monkeypatch.setattr(scheduler_module, "LATE", 5.0)
    await scheduler._sleep(0.01)
    assert caplog.records == []
    monkeypatch.setattr(scheduler_module, "LATE", 0.1)
    asyncio.get_running_loop().call_soon(time.sleep, 0.3)  # the process does not run
    await scheduler._sleep(0.01)
    (late,) = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(r"scheduler woke \d+\.\ds late \(.*paused or starved of CPU\)", late)
    caplog.clear()
    monkeypatch.setattr(scheduler_module, "LATE", 5.0)
    readings = itertools.count()  # the wall clock is 7 s further on at each reading
    ahead = types.SimpleNamespace(
        monotonic=time.monotonic, time=lambda: time.time() + 7 * next(readings)
    )
    monkeypatch.setattr(scheduler_module, "time", ahead)
    await scheduler._sleep(0.01)
    (jump,) = [r.getMessage() for r in caplog.records]
    assert jump == "the wall clock moved +7.0s while the scheduler slept"


# -- catching up -------------------------------------------------------------------------


JOB = "catchup.job"


async def _down_for_ten_ticks(catchup: str, **extra: Any) -> tuple[TaskManager, list[datetime]]:
    manager = memory_manager()

    @manager.periodic(every=SECOND, id="job", name=JOB, catchup=catchup, **extra)
    async def job() -> None: ...

    scheduler = scheduler_of(manager)
    await scheduler.store.put_schedules(scheduler.definitions)
    start = await since(manager, "job")
    due = list(Schedule(every=SECOND).ticks(start, start + timedelta(seconds=10.5)))
    await scheduler.run_pass(now=start + timedelta(seconds=10.5))
    return manager, due


async def test_catchup_latest_fires_the_newest_missed_tick_once() -> None:
    manager, due = await _down_for_ten_ticks("latest")
    assert await tick_headers(manager, JOB) == [iso(due[-1])]
    state = await stored(manager, "job")
    assert (state.fired, state.missed) == (1, len(due) - 1)
    await manager.close()


async def test_catchup_none_fires_the_newest_tick_only_while_it_is_on_time() -> None:
    manager, due = await _down_for_ten_ticks("none")
    # down 10.5 s: the newest due tick is under a second late, so on time; the rest missed
    assert await tick_headers(manager, JOB) == [iso(due[-1])]
    assert (await stored(manager, "job")).missed == len(due) - 1
    await manager.close()


async def test_catchup_none_gives_up_ticks_noticed_too_late() -> None:
    manager = memory_manager()
    minutely = Schedule(cron="* * * * *")

    @manager.periodic(cron="* * * * *", id="job", name=JOB, catchup="none")
    async def job() -> None: ...

    scheduler = scheduler_of(manager)
    await scheduler.store.put_schedules(scheduler.definitions)
    start = await since(manager, "job")
    missed = minutely.next_times(start, 3)
    late = await scheduler.run_pass(now=missed[-1] + timedelta(seconds=11))
    assert late.outcomes == {"job": [FireOutcome.ADVANCED]}
    assert await tick_headers(manager, JOB) == []
    assert (await stored(manager, "job")).missed == 3
    following = minutely.next_after(missed[-1])
    on_time = await scheduler.run_pass(now=following + timedelta(seconds=2))
    assert on_time.outcomes == {"job": [FireOutcome.FIRED]}
    assert await tick_headers(manager, JOB) == [iso(following)]
    await manager.close()


async def test_catchup_all_fires_every_missed_tick_within_its_window() -> None:
    manager, due = await _down_for_ten_ticks("all")
    assert await tick_headers(manager, JOB) == [iso(t) for t in due]
    assert (await stored(manager, "job")).missed == 0
    await manager.close()


async def test_catchup_all_counts_ticks_outside_the_window_as_missed() -> None:
    manager, due = await _down_for_ten_ticks("all", catchup_window=timedelta(seconds=4))
    fired = await tick_headers(manager, JOB)
    assert 3 <= len(fired) <= 5
    assert fired == [iso(t) for t in due[-len(fired) :]]  # the newest ones
    state = await stored(manager, "job")
    assert state.missed == len(due) - len(fired)
    await manager.close()


# -- schedules as data -------------------------------------------------------------------


async def test_a_hundred_restarts_leave_one_schedule() -> None:
    manager = memory_manager()

    @manager.periodic(cron="*/5 * * * *", tz="Europe/Paris")
    async def report() -> None: ...

    for _ in range(100):
        restarted = scheduler_of(manager)
        await restarted.store.put_schedules(restarted.definitions)
    infos = [i for i in await manager.schedules() if i.definition.task == report.name]
    assert len(infos) == 1
    assert infos[0].expression == "*/5 * * * *"
    assert infos[0].definition.tz == "Europe/Paris"
    assert len(infos[0].next_times) == 3
    await manager.close()


async def test_run_time_schedules_upsert_pause_resume_and_remove() -> None:
    manager = memory_manager()
    exported: list[str] = []

    @manager.task
    async def export(bucket: str) -> None:
        exported.append(bucket)

    await manager.add_schedule("nightly-export", export.s(bucket="b1"), every=SECOND)
    await manager.add_schedule("nightly-export", export.s(bucket="b2"), every=SECOND)
    (info,) = await manager.schedules()
    assert info.definition.payload == {"args": ["b2"], "kwargs": {}}

    scheduler = scheduler_of(manager)
    start = await since(manager, "nightly-export")
    await manager.pause_schedule("nightly-export")
    assert (await scheduler.run_pass(now=start + 2 * SECOND)).outcomes == {}
    await manager.resume_schedule("nightly-export")
    await scheduler.run_pass(now=start + 3 * SECOND)
    assert await manager.drain() == 1
    assert exported == ["b2"]
    await manager.remove_schedule("nightly-export")
    assert await manager.schedules() == []
    with pytest.raises(UnknownScheduleError, match="nightly-export"):
        await manager.pause_schedule("nightly-export")
    with pytest.raises(UnknownScheduleError, match="nope"):
        await manager.remove_schedule("nope")
    await manager.close()


async def test_options_of_a_signature_travel_with_the_schedule() -> None:
    manager = memory_manager()

    @manager.task
    async def export(bucket: str) -> None: ...

    signature = export.options(queue="exports", headers={"tenant": "t-42"}).s(bucket="b")
    await manager.add_schedule("e", signature, every=SECOND)
    scheduler = scheduler_of(manager)
    await scheduler.run_pass(now=await since(manager, "e") + 2 * SECOND)
    (task,) = await manager.storage.list(name=export.name)
    assert task.queue == "exports"
    assert task.headers["tenant"] == "t-42"
    assert task.headers[SCHEDULE_HEADER] == "e"
    with pytest.raises(InvalidScheduleError, match="delay"):
        await manager.add_schedule("d", export.options(delay=5).s(bucket="b"), every=SECOND)
    await manager.close()


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cron": "61 * * * *"}, "'61 \\* \\* \\* \\*'"),
        ({"cron": "* * *"}, "expected 5 fields"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"every": timedelta(milliseconds=10)}, "every must be between"),
        ({}, "exactly one of cron= or every="),
        ({"cron": "* * * * *", "overlap": "queue"}, "overlap must be one of"),
        ({"cron": "* * * * *", "catchup": "some"}, "catchup must be one of"),
        ({"cron": "* * * * *", "id": "has space"}, "invalid schedule id"),
    ],
)
def test_bad_schedules_are_refused_at_decoration(kwargs: dict[str, Any], match: str) -> None:
    manager = memory_manager()
    with pytest.raises(InvalidScheduleError, match=match):

        @manager.periodic(**kwargs)
        def job() -> None: ...


def test_a_periodic_function_cannot_require_arguments() -> None:
    manager = memory_manager()
    with pytest.raises(InvalidScheduleError, match="missing a required argument: 'account'"):

        @manager.periodic(every=SECOND)
        def job(account: str) -> None: ...


def test_two_schedules_may_not_share_an_id() -> None:
    manager = memory_manager()

    @manager.periodic(every=SECOND, id="same")
    def one() -> None: ...

    with pytest.raises(Exception, match="schedule 'same' is already declared"):

        @manager.periodic(every=SECOND, id="same")
        def two() -> None: ...


async def test_a_pool_refuses_schedules_its_backends_cannot_keep(tmp_path: Any) -> None:
    manager = memory_manager()

    @manager.periodic(every=SECOND)
    def job() -> None: ...

    storage = SQLiteBackend(str(tmp_path / "records.db"), Codec.json())  # not the broker's
    pool = WorkerPool(MemoryBroker(), storage, manager.registry, settings=manager.settings)
    with pytest.raises(CapabilityError, match="cannot run periodic tasks"):
        await pool.start()
    await storage.close()


# -- overlap, with workers ---------------------------------------------------------------


async def _run_three_interval_tasks(overlap: str, seconds: float) -> tuple[list[Any], Any]:
    """A 1 s schedule whose runs last 3 s, served by a real pool (and its scheduler)."""
    manager = memory_manager(scheduler_refresh_seconds=0.5)
    runs: list[tuple[float, float]] = []

    @manager.periodic(every=SECOND, id="slow", overlap=overlap)
    async def slow() -> None:
        began = time.monotonic()
        await asyncio.sleep(3.0)
        runs.append((began, time.monotonic()))

    async with manager.worker(concurrency=4):
        await asyncio.sleep(seconds)
        state = await stored(manager, "slow")
    await manager.close()
    return sorted(runs), state


def _most_at_once(runs: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in runs] + [(b, -1) for _, b in runs])
    most = current = 0
    for _, change in events:
        current += change
        most = max(most, current)
    return most


async def test_overlap_policies_with_runs_lasting_three_intervals() -> None:
    """The three policies side by side (each its own manager and pool, run at once to
    keep the suite short): ``skip`` and ``buffer_one`` never run two at once, ``allow``
    does."""
    (skip, skipped), (buffered, buffer_state), (allowed, allow_state) = await asyncio.gather(
        _run_three_interval_tasks("skip", 7.6),
        _run_three_interval_tasks("buffer_one", 7.6),
        _run_three_interval_tasks("allow", 5.6),
    )
    assert len(skip) >= 2
    assert _most_at_once(skip) == 1
    assert skipped.skipped >= 4  # two of every three ticks
    for (_, end), (began, _) in itertools.pairwise(skip):
        assert began - end < 1.5  # the next tick after a run ends fires

    assert len(buffered) >= 2
    assert _most_at_once(buffered) == 1
    assert buffer_state.skipped >= 2
    for (_, end), (began, _) in itertools.pairwise(buffered):
        assert began - end < 1.6  # the buffered one starts once the running one ends

    assert _most_at_once(allowed) >= 2
    assert allow_state.skipped == 0


def test_the_status_names_used_by_overlap_are_task_statuses() -> None:
    from bgcoor_core.kit import SCHEDULE_ACTIVE, SCHEDULE_WAITING

    assert TaskStatus.RUNNING in SCHEDULE_ACTIVE
    assert TaskStatus.RUNNING not in SCHEDULE_WAITING
    assert not any(status.is_final for status in SCHEDULE_ACTIVE)


async def test_a_schedules_signature_must_be_complete() -> None:
    """``export.s()`` may leave arguments out (a workflow fills them in); a schedule's
    task gets nothing else, so ``add_schedule`` refuses it, naming what is missing."""
    manager = memory_manager()

    @manager.task
    async def export(bucket: str, scheduled_at: datetime | None = None) -> None: ...

    with pytest.raises(PayloadError, match="missing a required argument: 'bucket'"):
        await manager.add_schedule("e", export.s(), every=SECOND)
    await manager.add_schedule("e", export.s("b"), every=SECOND)  # scheduled_at: optional
    await manager.close()


async def test_a_schedule_refuses_a_unique_key() -> None:
    manager = TaskManager(broker_url="memory://", storage_url="memory://")

    @manager.task(name="sched.keyed")
    async def keyed() -> None: ...

    with pytest.raises(InvalidScheduleError, match="unique_key cannot be part of a schedule"):
        await manager.add_schedule("keyed", keyed.options(unique_key="k").s(), every=SECOND)
    assert await manager.schedules() == []
    await manager.close()
