"""Schedules as data, and the one atomic step that fires a tick.

A backend that can run periodic tasks implements :class:`ScheduleStore`. Every scheduler
process reads the same entries and asks the store to :meth:`~ScheduleStore.fire` the ticks
it finds due; the store decides, in one transaction or script, whether that tick is still
to be fired, and if so enqueues its task there and then. Exactly once per (schedule, tick)
therefore rests on the store alone: any number of schedulers may run, pause, crash or
disagree about the time.

The rule each store applies to one :class:`Fire`, atomically (see ``ScheduleContract`` in
:mod:`bgcoor_core.testing`, which every store passes):

1. No entry with that id: ``REMOVED``. Paused: ``PAUSED``. Nothing changes.
2. ``release`` (a buffered tick's turn): nothing buffered: ``ALREADY``; the schedule's last
   task still active: ``BUFFERED``; else enqueue ``task``, clear the buffer: ``FIRED``.
3. ``tick`` not after the entry's ``last_tick``: ``ALREADY`` (fired, skipped or given up by
   some scheduler already). Else ``last_tick`` becomes ``tick`` and ``missed`` is added.
4. No ``task``: ``ADVANCED`` (the tick is given up, as a missed one).
5. Overlap ``skip`` with the last task active, or ``buffer_one`` with the last task waiting
   (not yet running) or a tick already buffered: ``SKIPPED`` (counted). ``buffer_one`` with
   the last task running and nothing buffered: the tick is buffered, ``BUFFERED``.
6. Else the task's record and message are stored as one enqueue, the entry's
   ``last_task_id`` becomes its id: ``FIRED``.

"Active" is a record with status pending, scheduled, retrying or running; a record that
is gone (expired) is not active.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from ._broker import Message
from ._task import Task, TaskStatus
from ._values import Value

#: Statuses of a schedule's last task that count as "still going" for ``overlap``.
ACTIVE = frozenset(
    {TaskStatus.PENDING, TaskStatus.SCHEDULED, TaskStatus.RETRYING, TaskStatus.RUNNING}
)
#: Of those, the ones that mean "waiting to run" (``buffer_one`` buffers behind a running one).
WAITING = ACTIVE - {TaskStatus.RUNNING}


class Overlap(enum.StrEnum):
    """What a tick does while the schedule's previous run is still going."""

    ALLOW = "allow"
    SKIP = "skip"
    BUFFER_ONE = "buffer_one"


class Catchup(enum.StrEnum):
    """Which missed ticks fire after a scheduler was down."""

    LATEST = "latest"
    NONE = "none"
    ALL = "all"


class ScheduleDefinition(BaseModel):
    """What a schedule is: upserted by ``id`` (decorated schedules and ``add_schedule``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    task: str
    #: The task's encoded arguments, as its handler takes them.
    payload: Value = None
    #: Call options (queue, priority, headers, max_retries, ...), JSON-ready.
    options: dict[str, Any] = Field(default_factory=dict)
    cron: str | None = None
    #: Interval in milliseconds (``every=``); ticks are multiples of it since the epoch.
    every_ms: int | None = None
    tz: str = "UTC"
    overlap: Overlap = Overlap.ALLOW
    catchup: Catchup = Catchup.LATEST
    #: Milliseconds: with ``catchup="all"``, missed ticks older than this are not fired.
    catchup_window_ms: int = 3_600_000


class ScheduleState(BaseModel):
    """What the store keeps beside a definition; written by :meth:`ScheduleStore.fire`,
    ``paused`` by :meth:`~ScheduleStore.set_schedule_paused`, ``since`` on first insert."""

    model_config = ConfigDict(extra="ignore")

    paused: bool = False
    #: Epoch milliseconds of the first upsert: only ticks after it are ever due.
    since_ms: int = 0
    #: Epoch milliseconds of the newest tick fired, skipped, buffered or given up.
    last_tick_ms: int | None = None
    last_task_id: str | None = None
    buffered_tick_ms: int | None = None
    fired: int = 0
    skipped: int = 0
    missed: int = 0


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    """A stored schedule: its definition and its state."""

    definition: ScheduleDefinition
    state: ScheduleState

    @property
    def id(self) -> str:
        return self.definition.id


class FireOutcome(enum.StrEnum):
    FIRED = "fired"
    SKIPPED = "skipped"
    BUFFERED = "buffered"
    ALREADY = "already"
    ADVANCED = "advanced"
    PAUSED = "paused"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class Fire:
    """One request to a store: fire (or give up) ``tick`` of schedule ``schedule_id``.

    ``task`` and ``message`` are the task to enqueue for it (built by the scheduler; the
    message as :meth:`Broker.to_message` encodes it), or both ``None`` to give the tick up.
    ``release``: enqueue the buffered tick (``tick`` is then the buffered one).
    """

    schedule_id: str
    tick_ms: int
    task: Task | None
    message: Message | None
    overlap: Overlap = Overlap.ALLOW
    missed: int = 0
    release: bool = False


@runtime_checkable
class ScheduleStore(Protocol):
    """Where schedules live and how ticks fire: atomically, in the backend itself.

    A broker provides one through :meth:`Broker.schedule_store` when it can enqueue into
    the storage in the same step (it shares the store, as for
    :class:`~bgcoor_core.AtomicEnqueue`).
    """

    async def put_schedules(self, definitions: Sequence[ScheduleDefinition]) -> None:
        """Insert or replace these definitions by id; an existing entry keeps its state
        (``paused``, ``since_ms``, ``last_tick_ms``, counters). A new one starts with
        ``since_ms`` = now."""
        ...

    async def get_schedules(self) -> list[ScheduleEntry]:
        """Every stored schedule, by id. An entry that cannot be decoded is skipped with a
        warning naming it, never an error for the others."""
        ...

    async def delete_schedule(self, schedule_id: str) -> bool:
        """Remove it; False when there was none."""
        ...

    async def set_schedule_paused(self, schedule_id: str, paused: bool) -> bool:
        """Pause or resume it; False when there is no such schedule."""
        ...

    async def fire(self, requests: Sequence[Fire]) -> list[FireOutcome]:
        """Apply each request in order (the module's rule), each one atomically; one
        outcome per request. In as few round trips as the backend allows."""
        ...


def apply_fire(state: ScheduleState | None, request: Fire, last: str | None) -> FireOutcome:
    """The fire rule (module docstring) for one request: update ``state`` in place and
    say what happened. ``state`` is the schedule's, read under the store's lock or in its
    transaction (``None``: no such schedule); ``last`` the status of the record of
    ``state.last_task_id`` (``None``: no task, or its record is gone). On ``FIRED`` the
    store must also store ``request.task`` and push ``request.message`` in that same step.
    """
    if state is None:
        return FireOutcome.REMOVED
    if state.paused:
        return FireOutcome.PAUSED
    if request.release:
        if state.buffered_tick_ms is None:
            return FireOutcome.ALREADY
        if last in ACTIVE:
            return FireOutcome.BUFFERED
        state.buffered_tick_ms = None
        return _fired(state, request)
    if state.last_tick_ms is not None and request.tick_ms <= state.last_tick_ms:
        return FireOutcome.ALREADY
    state.last_tick_ms = request.tick_ms
    state.missed += request.missed
    if request.task is None:
        return FireOutcome.ADVANCED
    if request.overlap is not Overlap.ALLOW and last in ACTIVE:
        if request.overlap is Overlap.SKIP or last in WAITING or state.buffered_tick_ms is not None:
            state.skipped += 1
            return FireOutcome.SKIPPED
        state.buffered_tick_ms = request.tick_ms
        return FireOutcome.BUFFERED
    return _fired(state, request)


def _fired(state: ScheduleState, request: Fire) -> FireOutcome:
    if request.task is None or request.message is None:
        raise ValueError(
            f"schedule {request.schedule_id}: a tick to enqueue needs its task and message"
        )
    state.last_task_id = request.task.id
    state.fired += 1
    return FireOutcome.FIRED


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime (a tick's identity)."""
    return round(moment.timestamp() * 1000)
