"""The manager's periodic-task API: ``@manager.periodic``, ``add_schedule`` and the
run-time operations on stored schedules (list, pause, resume, remove)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._building import check_complete
from ._errors import CapabilityError, InvalidScheduleError, UnknownScheduleError
from ._handlers import FunctionHandler
from ._scheduler import TICK_PARAMETER
from ._schedules import ScheduleDefinition, ScheduleEntry, ScheduleState, ScheduleStore
from ._task import validate_task_name
from ._timetable import Schedule

if TYPE_CHECKING:
    from ._task_registry import RegisteredTask, TaskRegistry
    from ._wiring import Backends

#: The payload of a periodic function: no arguments (the tick is added when declared).
NO_ARGUMENTS: dict[str, Any] = {"args": [], "kwargs": {}}


def schedule_id(value: str) -> str:
    try:
        return validate_task_name(value)
    except ValueError:
        raise InvalidScheduleError(
            f"invalid schedule id {value!r}: use 1-200 characters from A-Z a-z 0-9 _ . : - "
            "starting with a letter or underscore"
        ) from None


def check_periodic_function(entry: RegisteredTask) -> None:
    """A periodic function is called with no arguments but its tick: every other
    parameter needs a default."""
    handler = entry.handler
    if not isinstance(handler, FunctionHandler):
        return
    given = {TICK_PARAMETER: datetime.now(UTC)}
    if TICK_PARAMETER not in handler.signature.parameters:
        given = {}
    try:
        handler.signature.bind(**given)
    except TypeError as exc:
        raise InvalidScheduleError(
            f"periodic task {entry.name!r} is called without arguments (but its optional "
            f"{TICK_PARAMETER!r}): {exc}"
        ) from None


def check_signature(registry: TaskRegistry, task: str, payload: Any) -> None:
    """A schedule's signature must be complete (its task gets no other arguments but an
    optional ``scheduled_at``), checked when its task is registered in this process."""
    if task not in registry:
        return
    entry = registry.get(task)
    handler = entry.handler
    also: dict[str, Any] = {}
    if isinstance(handler, FunctionHandler) and TICK_PARAMETER in handler.signature.parameters:
        also[TICK_PARAMETER] = datetime.now(UTC)
    check_complete(entry, payload, also=also)


def store_of(backends: Backends) -> ScheduleStore:
    store = backends.schedules
    if store is None:
        raise CapabilityError(
            f"{type(backends.broker).__name__} with {type(backends.storage).__name__} cannot "
            "keep schedules (periodic tasks need a broker that enqueues atomically into its "
            "storage: memory, SQLite, Redis or PostgreSQL, with one URL for both)"
        )
    return store


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A schedule as ``manager.schedules()`` and ``bgcoor schedules`` show it."""

    definition: ScheduleDefinition
    state: ScheduleState
    #: False for one declared in this app that no scheduler has stored yet.
    stored: bool
    next_times: list[datetime]

    @property
    def id(self) -> str:
        return self.definition.id

    @property
    def expression(self) -> str:
        return Schedule.of(self.definition).expression


def describe(
    entries: list[ScheduleEntry], declared: list[ScheduleDefinition], *, upcoming: int = 3
) -> list[ScheduleInfo]:
    """Stored schedules, then those only declared here, each with its next fire times."""
    now = datetime.now(UTC)
    stored = {entry.id for entry in entries}
    rows = [(e.definition, e.state, True) for e in entries]
    rows += [(d, ScheduleState(), False) for d in declared if d.id not in stored]
    infos = []
    for definition, state, is_stored in sorted(rows, key=lambda row: row[0].id):
        try:
            times = Schedule.of(definition).next_times(now, upcoming)
        except InvalidScheduleError:
            times = []
        infos.append(ScheduleInfo(definition, state, is_stored, times))
    return infos


async def require(store: ScheduleStore, found: bool, wanted: str) -> None:
    """Raise :class:`UnknownScheduleError` naming ``wanted`` (and the known ids)."""
    if found:
        return
    known = [entry.id for entry in await store.get_schedules()]
    listed = ", ".join(repr(k) for k in known[:10]) or "none"
    raise UnknownScheduleError(f"no schedule {wanted!r} (stored: {listed})")
