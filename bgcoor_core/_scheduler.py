"""The scheduler: finds each schedule's due ticks and asks the store to fire them.

Every worker runs one as a service (``BGCOOR_SCHEDULER``, ``bgcoor worker --no-scheduler``)
and ``bgcoor scheduler APP`` runs one alone. Any number may run at once: a pass reads every
schedule in one call, works out which ticks are due by its own clock, and sends them to the
store's :meth:`~bgcoor_core.ScheduleStore.fire` in one batch. The store fires each tick at
most once (the tick's identity is its scheduled time, not when it was noticed), so
schedulers racing, paused, restarted or with skewed clocks never fire one twice, and the
next pass of any of them fires what another missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from ._broker import Broker
from ._building import build
from ._errors import BgcoorError, CapabilityError, UnknownTaskError
from ._handlers import FunctionHandler
from ._schedules import (
    Catchup,
    Fire,
    FireOutcome,
    ScheduleDefinition,
    ScheduleEntry,
    ScheduleStore,
    to_ms,
)
from ._task import Task
from ._timetable import Schedule
from .hookspecs import hookimpl

if TYPE_CHECKING:
    from ._extensions import ServiceRegistry
    from ._manager import TaskManager
    from ._plugins import PluginHost
    from ._pool import WorkerPool
    from ._settings import Settings
    from ._storage import Storage
    from ._task_registry import TaskRegistry

log = logging.getLogger("bgcoor.scheduler")

#: Header of a task made by a schedule: the schedule's id.
SCHEDULE_HEADER = "bgcoor-schedule"
#: Header of a task made by a schedule: its tick, ISO 8601 in UTC.
TICK_HEADER = "bgcoor-tick"
#: With ``catchup="none"``, a tick noticed later than this is given up as missed.
ON_TIME = timedelta(seconds=10)
#: Missed ticks counted per catch-up at most (a 1-second cron down for a week would
#: otherwise cost a scan of 600,000 ticks).
MAX_COUNTED = 100_000
#: Ticks one pass fires for one schedule at most (``catchup="all"``).
MAX_FIRED = 10_000
#: While a tick is buffered behind a running task, passes come at least this often.
BUFFER_CHECK = 1.0
#: A pass taking this long, a sleep overrunning by this much, or the wall clock moving this
#: far from the monotonic one during a sleep is logged: the ticks due meanwhile are caught
#: up (or, with ``catchup="latest"``, counted as missed), and the warning says why.
LATE = 1.0
#: The parameter a periodic function may declare to receive its tick.
TICK_PARAMETER = "scheduled_at"


@dataclass(frozen=True, slots=True)
class Pass:
    """What one pass did: outcomes by schedule id, and seconds until the next is due."""

    outcomes: dict[str, list[FireOutcome]]
    wait: float


class Scheduler:
    """Fires due ticks of the schedules in ``store``; upserts ``definitions`` first."""

    def __init__(
        self,
        store: ScheduleStore,
        broker: Broker,
        registry: TaskRegistry,
        settings: Settings,
        *,
        host: PluginHost | None = None,
        definitions: Sequence[ScheduleDefinition] = (),
    ) -> None:
        self.store = store
        self.broker = broker
        self.registry = registry
        self.settings = settings
        self.host = host
        self.definitions = list(definitions)
        self._schedules: dict[tuple[object, ...], Schedule] = {}  # by what defines one
        self._unknown: set[str] = set()  # schedules of tasks this process lacks (logged)
        self._wake = asyncio.Event()

    @classmethod
    def of(cls, manager: TaskManager) -> Scheduler:
        """The scheduler of a manager's backends and declared schedules."""
        from ._periodic import store_of

        return cls(
            store_of(manager.backends),
            manager.broker,
            manager.registry,
            manager.settings,
            host=manager.host,
            definitions=manager.registry.schedules(),
        )

    async def run(self) -> None:
        """Upsert this app's schedules, then serve passes until cancelled."""
        if self.definitions:
            await self.store.put_schedules(self.definitions)
        log.info("scheduler started (%d schedule(s) declared here)", len(self.definitions))
        failures = 0
        while True:
            try:
                done = await self.run_pass()
            except Exception as exc:
                failures += 1
                wait = min(0.2 * 2**failures, 10.0)
                log.warning(
                    "scheduler pass failed (%s: %s); again in %.1fs", type(exc).__name__, exc, wait
                )
            else:
                failures, wait = 0, done.wait
            self._wake.clear()
            await self._sleep(wait)

    async def _sleep(self, wait: float) -> None:
        """Sleep ``wait`` seconds or until :meth:`wake`; warn if it overran or the wall clock
        (which ticks follow) moved unlike the monotonic one (which the sleep follows)."""
        wall, started = time.time(), time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=wait)
        slept = time.monotonic() - started
        if slept - wait > LATE:
            log.warning(
                "scheduler woke %.1fs late (the process was paused or starved of CPU)",
                slept - wait,
            )
        jump = time.time() - wall - slept
        if abs(jump) > LATE:
            log.warning("the wall clock moved %+.1fs while the scheduler slept", jump)

    def wake(self) -> None:
        """Run the next pass now (a buffered tick's task may have finished)."""
        self._wake.set()

    async def run_pass(self, now: datetime | None = None) -> Pass:
        """One pass: read every schedule, fire what is due at ``now``."""
        started = time.monotonic()
        entries = await self.store.get_schedules()
        reading = time.monotonic() - started
        now = now or datetime.now(UTC)
        refresh = self.settings.scheduler_refresh_seconds
        next_due = now + timedelta(seconds=refresh)
        requests: list[Fire] = []
        for entry in entries:
            if entry.state.paused:
                continue
            schedule = self._schedule(entry.definition)
            if schedule is None:
                continue
            try:
                requests += self._due(entry, schedule, now)
            except BgcoorError as exc:  # a bad payload or option: this schedule only
                log.error("schedule %r cannot fire: %s", entry.id, exc)
                continue
            next_due = min(next_due, schedule.next_after(now))
            if entry.state.buffered_tick_ms is not None:
                next_due = min(next_due, now + timedelta(seconds=BUFFER_CHECK))
        outcomes: dict[str, list[FireOutcome]] = {}
        if requests:
            for request, outcome in zip(requests, await self.store.fire(requests), strict=True):
                outcomes.setdefault(request.schedule_id, []).append(outcome)
                self._report(request, outcome)
        _slow(time.monotonic() - started, reading, len(requests))
        wait = (next_due - datetime.now(UTC)).total_seconds()
        return Pass(outcomes, max(wait, 0.005))

    def _schedule(self, definition: ScheduleDefinition) -> Schedule | None:
        d = definition
        key = (d.cron, d.every_ms, d.tz, d.overlap, d.catchup, d.catchup_window_ms)
        schedule = self._schedules.get(key)
        if schedule is None:
            try:
                schedule = Schedule.of(definition)
            except BgcoorError as exc:
                log.error("schedule %r is invalid: %s", definition.id, exc)
                return None
            if len(self._schedules) > 10_000:
                self._schedules.clear()
            self._schedules[key] = schedule
        return schedule

    def _due(self, entry: ScheduleEntry, schedule: Schedule, now: datetime) -> list[Fire]:
        """The requests for ``entry`` at ``now``: a buffered tick's release, then its due
        ticks as its catch-up policy wants them."""
        definition, state = entry.definition, entry.state
        requests: list[Fire] = []
        if state.buffered_tick_ms is not None:
            task = self._task(definition, _at(state.buffered_tick_ms))
            if task is not None:
                requests.append(
                    self._request(definition, state.buffered_tick_ms, task, release=True)
                )
        start = _at(max(state.since_ms, state.last_tick_ms or state.since_ms))
        newest = _newest(schedule, start, now)
        if newest is None:
            return requests
        if schedule.catchup is Catchup.ALL:
            edge = max(start, now - schedule.catchup_window)
            fired = list(schedule.ticks(edge, now))[-MAX_FIRED:] if edge < now else []
            missed = _count(schedule, start, edge) if edge > start else 0
        elif schedule.catchup is Catchup.NONE and now - newest > ON_TIME:
            fired, missed = [], _count(schedule, start, now)
        else:
            fired, missed = [newest], _count(schedule, start, newest) - 1
        if not fired:  # everything due is given up: move the ledger past it
            return [*requests, Fire(definition.id, to_ms(newest), None, None, missed=missed)]
        for tick in fired:
            task = self._task(definition, tick)
            if task is None:
                break
            requests.append(self._request(definition, to_ms(tick), task, missed=missed))
            missed = 0
        return requests

    def _request(
        self,
        definition: ScheduleDefinition,
        tick_ms: int,
        task: Task,
        *,
        missed: int = 0,
        release: bool = False,
    ) -> Fire:
        message = self.broker.to_message(task)
        return Fire(definition.id, tick_ms, task, message, definition.overlap, missed, release)

    def _task(self, definition: ScheduleDefinition, tick: datetime) -> Task | None:
        """The task a tick enqueues, or ``None`` if this process does not know its task
        (a scheduler that does will fire it)."""
        try:
            entry = self.registry.get(definition.task)
        except UnknownTaskError:
            if definition.id not in self._unknown:
                self._unknown.add(definition.id)
                log.warning(
                    "schedule %r: task %r is not registered in this process; "
                    "a scheduler that has it will fire it",
                    definition.id,
                    definition.task,
                )
            return None
        payload = definition.payload
        handler = entry.handler
        if isinstance(handler, FunctionHandler) and TICK_PARAMETER in handler.signature.parameters:
            args = list((payload or {}).get("args", []))
            kwargs = dict((payload or {}).get("kwargs", {}))
            kwargs.setdefault(TICK_PARAMETER, tick.isoformat())
            payload = {"args": args, "kwargs": kwargs}
        options = dict(definition.options)
        headers = {
            **options.get("headers", {}),
            SCHEDULE_HEADER: definition.id,
            TICK_HEADER: tick.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }
        options["headers"] = headers
        task = build(entry, payload, options, self.settings)
        if self.host is not None:
            self.host.before_enqueue(task)
        return task

    def _report(self, request: Fire, outcome: FireOutcome) -> None:
        if outcome is FireOutcome.FIRED and self.host is not None:
            assert request.task is not None
            self.host.task_enqueued(request.task)
        if outcome is FireOutcome.ALREADY or not log.isEnabledFor(logging.INFO):
            return  # another scheduler fired it: nothing to say
        sid, tick = request.schedule_id, _at(request.tick_ms).isoformat()
        if outcome is FireOutcome.FIRED:
            assert request.task is not None
            log.info("schedule %r fired tick %s: task %s", sid, tick, request.task.id)
        elif outcome in (FireOutcome.SKIPPED, FireOutcome.BUFFERED):
            log.info("schedule %r tick %s %s (overlap=%s)", sid, tick, outcome, request.overlap)
        elif outcome is FireOutcome.ADVANCED and request.missed:
            log.warning("schedule %r: %d tick(s) missed, up to %s", sid, request.missed, tick)
        else:
            log.info("schedule %r tick %s: %s", sid, tick, outcome)


def _slow(took: float, reading: float, fired: int) -> None:
    """Warn about a pass that took :data:`LATE` or more: on a store shared by processes, a
    long store call is one waiting for another that holds a lock (e.g. SQLite's write lock
    held by a stopped process), and ticks falling due meanwhile wait for it."""
    if took >= LATE:
        log.warning(
            "scheduler pass took %.1fs: reading the schedules %.1fs, firing %d request(s) %.1fs",
            took,
            reading,
            fired,
            took - reading,
        )


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _newest(schedule: Schedule, after: datetime, until: datetime) -> datetime | None:
    """The newest tick in ``(after, until]``."""
    first = schedule.next_after(after)
    if first > until:
        return None
    if schedule.every is not None:
        step = schedule.every
        return first + (until - first) // step * step
    # The newest tick is in the last day when there is any tick there: scan only that, so
    # a dense expression after a long downtime costs a day's ticks, not the downtime's.
    recent = until - timedelta(days=1)
    newest = None
    for tick in schedule.ticks(max(after, recent), until):
        newest = tick
    if newest is None:  # a sparse expression: nothing in the last day, scan it all
        newest = first
        for tick in schedule.ticks(first, until):
            newest = tick
    return newest


def _count(schedule: Schedule, after: datetime, until: datetime) -> int:
    """Ticks in ``(after, until]`` (at most :data:`MAX_COUNTED`)."""
    if schedule.every is not None:
        first = schedule.next_after(after)
        return 0 if first > until else min((until - first) // schedule.every + 1, MAX_COUNTED)
    count = 0
    for _ in schedule.ticks(after, until):
        count += 1
        if count >= MAX_COUNTED:
            break
    return count


def check_schedules(broker: Broker, storage: Storage, registry: TaskRegistry) -> None:
    """Refuse, when a pool starts, declared schedules its backends cannot keep."""
    from ._wiring import Backends

    definitions = registry.schedules()
    if definitions and Backends.pair(broker, storage).schedules is None:
        raise CapabilityError(
            f"{type(broker).__name__} with {type(storage).__name__} cannot run periodic "
            f"tasks (no schedule store), but {len(definitions)} schedule(s) are declared: "
            + ", ".join(repr(d.id) for d in definitions[:5])
            + " (run the scheduler on a backend that keeps them, or BGCOOR_SCHEDULER=false)"
        )


def scheduler_for(pool: WorkerPool) -> Scheduler | None:
    """The scheduler of a worker pool's backends, or ``None`` when they keep no schedules."""
    from ._wiring import Backends

    store = Backends.pair(pool.broker, pool.storage).schedules
    if store is None:
        return None
    definitions = pool.registry.schedules()
    return Scheduler(
        store, pool.broker, pool.registry, pool.settings, host=pool.host, definitions=definitions
    )


async def _serve(pool: WorkerPool) -> None:
    if not pool.settings.scheduler:
        return
    scheduler = scheduler_for(pool)
    if scheduler is None:
        return
    pool.scheduler = scheduler
    await scheduler.run()


@hookimpl
def bgcoor_register_services(services: ServiceRegistry) -> None:
    """The built-in scheduler runs in every worker unless ``BGCOOR_SCHEDULER=false``."""
    services.add("scheduler", _serve)
