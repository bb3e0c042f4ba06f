"""Schedule store contract: upserts keep state, and each tick fires at most once.

A backend passes it by providing ``broker`` and ``completion_storage`` fixtures (as
:class:`BrokerContract` does); the store under test is
``Backends.pair(broker, completion_storage).schedules``. A pair without one skips.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest

from .._broker import Broker, Reservation
from .._schedules import (
    Fire,
    FireOutcome,
    Overlap,
    ScheduleDefinition,
    ScheduleStore,
)
from .._storage import Storage
from .._task import Task, TaskStatus
from .._wiring import Backends
from ._helpers import ASYNC, DEFAULT, LONG_LEASE, make_task

#: A tick (epoch ms) in the past, and the ones after it.
T0 = 1_790_000_000_000
STEP = 1000


def _definition(schedule_id: str, **fields: object) -> ScheduleDefinition:
    values: dict[str, object] = {"task": "contract.periodic", "every_ms": STEP}
    values.update(fields)
    return ScheduleDefinition(id=schedule_id, **values)  # type: ignore[arg-type]


async def _take_all(broker: Broker) -> list[Reservation]:
    """Reserve (without acking) everything ready in the default queue."""
    taken: list[Reservation] = []
    while got := await broker.reserve([DEFAULT], lease=LONG_LEASE, limit=100, timeout=0):
        taken.extend(got)
    return taken


def _new_id() -> str:
    return f"contract-{uuid.uuid4().hex[:12]}"


class ScheduleContract:
    """Mixin of the schedule store's tests; see the module docstring."""

    @pytest.fixture
    def schedules(self, broker: Broker, completion_storage: Storage | None) -> ScheduleStore:
        store = (
            None
            if completion_storage is None
            else Backends.pair(broker, completion_storage).schedules
        )
        if store is None:
            pytest.skip(f"{type(broker).__name__} has no schedule store")
        return store

    def _fire(
        self,
        broker: Broker,
        schedule_id: str,
        tick_ms: int,
        *,
        overlap: Overlap = Overlap.ALLOW,
        missed: int = 0,
        release: bool = False,
        empty: bool = False,
    ) -> tuple[Fire, Task | None]:
        if empty:
            return Fire(schedule_id, tick_ms, None, None, overlap, missed, release), None
        task = make_task(
            "contract.periodic",
            headers={"bgcoor-schedule": schedule_id, "bgcoor-tick": str(tick_ms)},
        )
        message = broker.to_message(task)
        return Fire(schedule_id, tick_ms, task, message, overlap, missed, release), task

    # -- definitions ---------------------------------------------------------------------

    @ASYNC
    async def test_put_then_get_round_trips_the_definition(self, schedules: ScheduleStore) -> None:
        sid = _new_id()
        definition = _definition(
            sid,
            cron="30 2 * * *",
            every_ms=None,
            tz="Europe/Paris",
            payload={"args": [1], "kwargs": {"b": "x"}},
            options={"queue": "reports", "priority": 3},
            overlap="skip",
            catchup="all",
            catchup_window_ms=60_000,
        )
        before = round(time.time() * 1000)
        await schedules.put_schedules([definition])
        found = {e.id: e for e in await schedules.get_schedules()}
        assert found[sid].definition == definition
        state = found[sid].state
        assert before - 1000 <= state.since_ms <= round(time.time() * 1000) + 1000
        assert (state.paused, state.last_tick_ms, state.last_task_id) == (False, None, None)
        assert (state.fired, state.skipped, state.missed) == (0, 0, 0)

    @ASYNC
    async def test_upserting_again_keeps_one_entry_and_its_state(
        self, broker: Broker, schedules: ScheduleStore
    ) -> None:
        sid = _new_id()
        await schedules.put_schedules([_definition(sid)])
        first = {e.id: e for e in await schedules.get_schedules()}[sid].state
        request, task = self._fire(broker, sid, T0)
        assert await schedules.fire([request]) == [FireOutcome.FIRED]
        assert await schedules.set_schedule_paused(sid, True) is True
        for _ in range(3):  # restarts and redeploys
            await schedules.put_schedules([_definition(sid, every_ms=2 * STEP)])
        entries = [e for e in await schedules.get_schedules() if e.id == sid]
        assert len(entries) == 1
        entry = entries[0]
        assert entry.definition.every_ms == 2 * STEP  # the new definition ...
        assert entry.state.since_ms == first.since_ms  # ... the old state
        assert entry.state.paused is True
        assert entry.state.last_tick_ms == T0
        assert task is not None
        assert entry.state.last_task_id == task.id
        assert entry.state.fired == 1

    @ASYNC
    async def test_delete_and_pause_report_whether_the_schedule_exists(
        self, schedules: ScheduleStore
    ) -> None:
        sid = _new_id()
        assert await schedules.delete_schedule(sid) is False
        assert await schedules.set_schedule_paused(sid, True) is False
        await schedules.put_schedules([_definition(sid)])
        assert await schedules.set_schedule_paused(sid, True) is True
        assert {e.id: e for e in await schedules.get_schedules()}[sid].state.paused is True
        assert await schedules.set_schedule_paused(sid, False) is True
        assert {e.id: e for e in await schedules.get_schedules()}[sid].state.paused is False
        assert await schedules.delete_schedule(sid) is True
        assert sid not in {e.id for e in await schedules.get_schedules()}
        assert await schedules.delete_schedule(sid) is False

    # -- firing --------------------------------------------------------------------------

    @ASYNC
    async def test_a_fired_tick_stores_the_record_and_pushes_the_message(
        self, broker: Broker, completion_storage: Storage, schedules: ScheduleStore
    ) -> None:
        sid = _new_id()
        await schedules.put_schedules([_definition(sid)])
        request, task = self._fire(broker, sid, T0)
        assert task is not None
        assert await schedules.fire([request]) == [FireOutcome.FIRED]
        record = await completion_storage.get(task.id)
        assert record is not None
        assert record.status is TaskStatus.PENDING
        assert record.headers == {"bgcoor-schedule": sid, "bgcoor-tick": str(T0)}
        reservations = await _take_all(broker)
        assert [r.task.id for r in reservations] == [task.id]
        state = {e.id: e for e in await schedules.get_schedules()}[sid].state
        assert (state.last_tick_ms, state.last_task_id, state.fired) == (T0, task.id, 1)

    @ASYNC
    async def test_a_tick_fires_once_and_an_older_one_never(
        self, broker: Broker, completion_storage: Storage, schedules: ScheduleStore
    ) -> None:
        sid = _new_id()
        await schedules.put_schedules([_definition(sid)])
        first, _ = self._fire(broker, sid, T0 + STEP)
        again, again_task = self._fire(broker, sid, T0 + STEP)
        older, older_task = self._fire(broker, sid, T0)
        assert await schedules.fire([first]) == [FireOutcome.FIRED]
        assert await schedules.fire([again, older]) == [FireOutcome.ALREADY] * 2
        assert again_task is not None
        assert older_task is not None
        assert await completion_storage.get(again_task.id) is None
        assert await completion_storage.get(older_task.id) is None
        assert len(await _take_all(broker)) == 1

    @ASYNC
    async def test_concurrent_fires_of_one_tick_enqueue_one_task(
        self, broker: Broker, schedules: ScheduleStore
    ) -> None:
        sid = _new_id()
        await schedules.put_schedules([_definition(sid)])
        requests = [self._fire(broker, sid, T0)[0] for _ in range(20)]
        outcomes = await asyncio.gather(*(schedules.fire([r]) for r in requests))
        flat = [o for pair in outcomes for o in pair]
        assert flat.count(FireOutcome.FIRED) == 1
        assert flat.count(FireOutcome.ALREADY) == 19
        assert len(await _take_all(broker)) == 1

    @ASYNC
    async def test_the_ledger_outlives_the_task_it_made(
        self, broker: Broker, completion_storage: Storage, schedules: ScheduleStore
    ) -> None:
        """A task that finished (and whose record expired) cannot be fired again for
        the same tick: the store remembers ticks, not tasks."""
        sid = _new_id()
        await schedules.put_schedules([_definition(sid)])
        request, task = self._fire(broker, sid, T0)
        assert task is not None
        assert await schedules.fire([request]) == [FireOutcome.FIRED]
        (reservation,) = await _take_all(broker)
        await broker.ack(reservation)
        done = task.started(reservation.token, datetime.now(UTC))
        await completion_storage.save(done)
        done.status, done.finished_at = TaskStatus.SUCCEEDED, datetime.now(UTC)
        await completion_storage.save(done, ttl=0.001)
        await asyncio.sleep(0.05)
        assert await completion_storage.get(task.id) is None  # gone
        again, _ = self._fire(broker, sid, T0)
        assert await schedules.fire([again]) == [FireOutcome.ALREADY]
        assert await _take_all(broker) == []

    @ASYNC
    async def test_paused_and_removed_schedules_do_not_fire(
        self, broker: Broker, schedules: ScheduleStore
    ) -> None:
        sid = _new_id()
        await schedules.put_schedules([_definition(sid)])
        await schedules.set_schedule_paused(sid, True)
        paused, _ = self._fire(broker, sid, T0)
        missing, _ = self._fire(broker, _new_id(), T0)
        assert await schedules.fire([paused, missing]) == [
            FireOutcome.PAUSED,
            FireOutcome.REMOVED,
        ]
        assert {e.id: e for e in await schedules.get_schedules()}[sid].state.last_tick_ms is None
        await schedules.set_schedule_paused(sid, False)
        assert await schedules.fire([self._fire(broker, sid, T0)[0]]) == [FireOutcome.FIRED]
        assert len(await _take_all(broker)) == 1

    @ASYNC
    async def test_giving_a_tick_up_advances_and_counts_the_missed(
        self, broker: Broker, schedules: ScheduleStore
    ) -> None:
        sid = _new_id()
        await schedules.put_schedules([_definition(sid)])
        give_up, _ = self._fire(broker, sid, T0 + 5 * STEP, missed=5, empty=True)
        assert await schedules.fire([give_up]) == [FireOutcome.ADVANCED]
        late, _ = self._fire(broker, sid, T0 + 3 * STEP)
        assert await schedules.fire([late]) == [FireOutcome.ALREADY]
        state = {e.id: e for e in await schedules.get_schedules()}[sid].state
        assert (state.last_tick_ms, state.missed, state.fired) == (T0 + 5 * STEP, 5, 0)
        assert await _take_all(broker) == []

    @ASYNC
    async def test_a_batch_is_applied_in_order(
        self, broker: Broker, schedules: ScheduleStore
    ) -> None:
        a, b = _new_id(), _new_id()
        await schedules.put_schedules([_definition(a), _definition(b)])
        batch = [
            self._fire(broker, a, T0)[0],
            self._fire(broker, a, T0)[0],
            self._fire(broker, b, T0, missed=2)[0],
            self._fire(broker, a, T0 + STEP)[0],
        ]
        assert await schedules.fire(batch) == [
            FireOutcome.FIRED,
            FireOutcome.ALREADY,
            FireOutcome.FIRED,
            FireOutcome.FIRED,
        ]
        states = {e.id: e.state for e in await schedules.get_schedules()}
        assert (states[a].fired, states[b].fired, states[b].missed) == (2, 1, 2)
        assert len(await _take_all(broker)) == 3

    # -- overlap -------------------------------------------------------------------------

    async def _finish(self, broker: Broker, storage: Storage, task: Task) -> None:
        (reservation,) = await _take_all(broker)
        assert reservation.task.id == task.id
        running = task.started(reservation.token, datetime.now(UTC))
        await storage.save(running)
        running.status, running.finished_at = TaskStatus.SUCCEEDED, datetime.now(UTC)
        await storage.save(running)
        await broker.ack(reservation)

    @ASYNC
    async def test_skip_waits_for_the_last_task_to_finish(
        self, broker: Broker, completion_storage: Storage, schedules: ScheduleStore
    ) -> None:
        sid = _new_id()
        await schedules.put_schedules([_definition(sid, overlap="skip")])
        first, task = self._fire(broker, sid, T0, overlap=Overlap.SKIP)
        assert task is not None
        assert await schedules.fire([first]) == [FireOutcome.FIRED]
        while_pending, _ = self._fire(broker, sid, T0 + STEP, overlap=Overlap.SKIP)
        assert await schedules.fire([while_pending]) == [FireOutcome.SKIPPED]
        await self._finish(broker, completion_storage, task)
        after, _ = self._fire(broker, sid, T0 + 2 * STEP, overlap=Overlap.SKIP)
        assert await schedules.fire([after]) == [FireOutcome.FIRED]
        state = {e.id: e for e in await schedules.get_schedules()}[sid].state
        assert (state.fired, state.skipped, state.last_tick_ms) == (2, 1, T0 + 2 * STEP)

    @ASYNC
    async def test_buffer_one_keeps_one_tick_behind_a_running_task(
        self, broker: Broker, completion_storage: Storage, schedules: ScheduleStore
    ) -> None:
        sid = _new_id()
        one = Overlap.BUFFER_ONE
        await schedules.put_schedules([_definition(sid, overlap="buffer_one")])
        first, task = self._fire(broker, sid, T0, overlap=one)
        assert task is not None
        assert await schedules.fire([first]) == [FireOutcome.FIRED]
        # pending (waiting to run): a second waiting one is not wanted
        assert await schedules.fire([self._fire(broker, sid, T0 + STEP, overlap=one)[0]]) == [
            FireOutcome.SKIPPED
        ]
        (reservation,) = await _take_all(broker)
        running = task.started(reservation.token, datetime.now(UTC))
        await completion_storage.save(running)
        # running: the next tick is buffered, the one after skipped
        ticks = [self._fire(broker, sid, T0 + n * STEP, overlap=one)[0] for n in (2, 3)]
        assert await schedules.fire(ticks) == [FireOutcome.BUFFERED, FireOutcome.SKIPPED]
        state = {e.id: e for e in await schedules.get_schedules()}[sid].state
        assert state.buffered_tick_ms == T0 + 2 * STEP
        release, released = self._fire(broker, sid, T0 + 2 * STEP, overlap=one, release=True)
        assert await schedules.fire([release]) == [FireOutcome.BUFFERED]  # still running
        running.status, running.finished_at = TaskStatus.SUCCEEDED, datetime.now(UTC)
        await completion_storage.save(running)
        await broker.ack(reservation)
        assert await schedules.fire([release]) == [FireOutcome.FIRED]
        assert await schedules.fire([release]) == [FireOutcome.ALREADY]  # released once
        assert released is not None
        (next_one,) = await _take_all(broker)
        assert next_one.task.id == released.id
        state = {e.id: e for e in await schedules.get_schedules()}[sid].state
        assert state.buffered_tick_ms is None
        assert (state.fired, state.skipped, state.last_task_id) == (2, 2, released.id)

    @ASYNC
    async def test_allow_fires_whatever_the_last_task_is_doing(
        self, broker: Broker, schedules: ScheduleStore
    ) -> None:
        sid = _new_id()
        await schedules.put_schedules([_definition(sid)])
        ticks = [self._fire(broker, sid, T0 + n * STEP)[0] for n in range(3)]
        assert await schedules.fire(ticks) == [FireOutcome.FIRED] * 3
        assert len(await _take_all(broker)) == 3
