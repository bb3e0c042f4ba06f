"""The task record: what is enqueued, stored and reported."""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from ._errors import InvalidNameError
from ._failures import Failure
from ._ids import new_task_id
from ._values import Unpacked, Value, adopt_packed, packed_once

QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,199}")


def validate_queue_name(name: object) -> str:
    """Return ``name`` if it is a valid queue name, else raise :class:`InvalidNameError`."""
    if not isinstance(name, str) or not QUEUE_NAME.fullmatch(name):
        raise InvalidNameError(
            f"invalid queue name {_clip(name)}: use 1-64 characters from A-Z a-z 0-9 _ . : - "
            "starting with a letter or digit"
        )
    return name


def validate_task_name(name: object) -> str:
    """Return ``name`` if it is a valid task name, else raise :class:`InvalidNameError`."""
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise InvalidNameError(
            f"invalid task name {_clip(name)}: use 1-200 characters from A-Z a-z 0-9 _ . : - "
            "starting with a letter or underscore"
        )
    return name


def validate_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is a valid task id, else raise :class:`InvalidNameError`.

    Any 1-200 printable characters without spaces: ids reach every driver (a NUL breaks
    PostgreSQL text, a newline a log line), and an empty id names nothing. Only C-level
    string methods, as this runs for every task built or decoded.
    """
    if (
        not isinstance(task_id, str)
        or not 0 < len(task_id) <= 200
        or not task_id.isprintable()  # also refuses every whitespace character but " "
        or " " in task_id
    ):
        raise InvalidNameError(
            f"invalid task id {_clip(task_id)}: use 1-200 printable characters without "
            "spaces or control characters"
        )
    return task_id


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def utcnow() -> datetime:
    return datetime.now(UTC)


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"
    DEAD = "dead"
    CANCELLED = "cancelled"
    #: Not started before its ``expires`` time: never run.
    EXPIRED = "expired"
    #: A workflow member waiting for its parents: its message is held by the workflow
    #: and pushed (the record ``pending``) once they are done.
    WAITING = "waiting"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {
        TaskStatus.SUCCEEDED,
        TaskStatus.FAILED,
        TaskStatus.DEAD,
        TaskStatus.CANCELLED,
        TaskStatus.EXPIRED,
    }
)

_S = TaskStatus
#: Which status may follow which. ``running -> running`` is a redelivery after a lost lease;
#: ``dead``/``failed -> pending`` is a manual requeue.
ALLOWED_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    _S.PENDING: frozenset(
        {_S.PENDING, _S.SCHEDULED, _S.RUNNING, _S.DEAD, _S.CANCELLED, _S.EXPIRED}
    ),
    _S.SCHEDULED: frozenset({_S.PENDING, _S.RUNNING, _S.DEAD, _S.CANCELLED, _S.EXPIRED}),
    _S.RUNNING: frozenset(
        {_S.RUNNING, _S.SUCCEEDED, _S.FAILED, _S.RETRYING, _S.DEAD, _S.CANCELLED, _S.EXPIRED}
    ),
    _S.RETRYING: frozenset({_S.RUNNING, _S.DEAD, _S.CANCELLED, _S.PENDING, _S.EXPIRED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset({_S.PENDING}),
    _S.DEAD: frozenset({_S.PENDING}),
    _S.CANCELLED: frozenset(),
    _S.EXPIRED: frozenset(),
    _S.WAITING: frozenset({_S.PENDING, _S.CANCELLED}),
}


#: What may overwrite a record whose stored status is none of :class:`TaskStatus` (written
#: by something else): only ``dead``, the worker's verdict on a corrupt record. Backends
#: compile this rule into their scripts and SQL beside ``ALLOWED_TRANSITIONS``.
FROM_UNKNOWN_STATUS: frozenset[TaskStatus] = frozenset({_S.DEAD})


def can_transition(old: TaskStatus | str, new: TaskStatus) -> bool:
    """True when a record in status ``old`` may be overwritten with status ``new``; ``old``
    may be a stored string that names no status (see :data:`FROM_UNKNOWN_STATUS`)."""
    allowed = ALLOWED_TRANSITIONS.get(old)  # type: ignore[arg-type]  # a str may name one
    return new in (FROM_UNKNOWN_STATUS if allowed is None else allowed)


#: The version of the message and record format this code writes and understands.
MESSAGE_FORMAT = 1


class Task(BaseModel):
    """One unit of work and everything known about it.

    ``payload`` and ``result`` are any values :mod:`bgcoor_core._values` carries (in JSON,
    rich ones tagged). Tasks registered from functions use the shape
    ``{"args": [...], "kwargs": {...}}``; handler objects receive the payload as is.
    """

    # Fields this version does not know (written by a newer producer) are kept, not
    # refused: they ride along unchanged through this worker's retries and records, so a
    # rolling deploy never dead-letters work. ``format`` changes only when a change is not
    # backward compatible; a worker refuses a message of a newer format (see ``Codec``).
    model_config = ConfigDict(extra="allow", validate_assignment=False)

    #: The message format version (see :data:`MESSAGE_FORMAT`).
    format: int = MESSAGE_FORMAT
    id: str = Field(default_factory=new_task_id)
    name: str
    payload: Unpacked = None
    status: TaskStatus = TaskStatus.PENDING
    attempts: int = Field(default=0, ge=0)
    max_retries: int = Field(default=3, ge=0)
    queue: str = "default"
    priority: int = 0
    eta: datetime | None = None
    # Finite: JSON would store inf as null, silently dropping the timeout.
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    traceback: str | None = None
    #: The exception that failed it, as data (type, module, message, traceback, causes),
    #: set with ``error`` and ``traceback``; ``None`` when no exception did.
    failure: Failure | None = None
    result: Value = None
    #: Token of the lease under which the current attempt runs; outcome writes carrying
    #: another token are refused by the storage.
    lease_token: str | None = None
    #: Seconds this task's final record is kept (``None``: ``BGCOOR_RESULT_TTL``).
    result_ttl: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    #: A task not started by then is marked ``expired`` and never run.
    expires: datetime | None = None
    #: Metadata a producer or plugin attaches (trace context, tenant, deploy version):
    #: carried unchanged through every backend, retry and dead letter.
    headers: dict[str, str] = Field(default_factory=dict)

    @field_serializer("payload", when_used="json")
    def _pack_payload(self, value: Any) -> Any:
        return packed_once(self, value)

    def model_post_init(self, context: Any, /) -> None:
        adopt_packed(self, self.payload)

    _check_id = field_validator("id")(lambda cls, v: validate_task_id(v))
    _check_name = field_validator("name")(lambda cls, v: validate_task_name(v))
    _check_queue = field_validator("queue")(lambda cls, v: validate_queue_name(v))

    @classmethod
    def new(cls, name: str, payload: Any = None, max_retries: int = 3, **fields: Any) -> Task:
        """Create a pending task, as in ``Task.new("my_task", payload, 3)``."""
        return cls(name=name, payload=payload, max_retries=max_retries, **fields)

    @classmethod
    def prechecked(cls, **fields: Any) -> Task:
        """A new task from ``fields`` already checked by the caller (a registered task's
        name, call options checked against :class:`~bgcoor_core.CallOptions`), built without
        validating them again: enqueue's trusted path, where validation was a fifth of
        the cost of each task. Fields left out take their defaults; the id and creation
        time are new."""
        # What ``model_construct`` sets, without its generic loop over every field.
        task = cls.__new__(cls)
        state = dict(_DEFAULTS)
        state["id"] = new_task_id()
        state["created_at"] = utcnow()
        state["headers"] = {}
        state.update(fields)
        object.__setattr__(task, "__dict__", state)
        object.__setattr__(task, "__pydantic_fields_set__", set(fields))
        object.__setattr__(task, "__pydantic_extra__", {})
        object.__setattr__(task, "__pydantic_private__", None)
        return task

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes) -> Task:
        return cls.model_validate_json(data)

    def started(self, token: str, at: datetime) -> Task:
        """This task as its next attempt starts under lease ``token`` at ``at``: running,
        one more attempt, not finished. What the executor stores before it runs a task, and
        what a backend shows for a record its reserve marked running (``Reservation.started``)."""
        return self.model_copy(
            update={
                "status": TaskStatus.RUNNING,
                "attempts": self.attempts + 1,
                "started_at": at,
                "finished_at": None,
                "lease_token": token,
            }
        )


#: The fields :meth:`Task.prechecked` starts from: every one at its default (those made
#: by a factory, the id, creation time and headers, are made anew for each task).
_DEFAULTS = {
    name: info.default
    for name, info in Task.model_fields.items()
    if not info.is_required() and info.default_factory is None
}
