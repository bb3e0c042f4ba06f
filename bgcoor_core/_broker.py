"""The broker contract: where tasks wait, are leased to workers and acknowledged.

A backend implements a few abstract primitives; encoding, validation and capability
checks live once here. Delivery is at-least-once: a reservation holds a *lease*; a task
whose lease expires without ``ack`` is delivered again, and every call made with a lease
token that is no longer current raises :class:`~bgcoor_core.StaleLeaseError`.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from ._arguments import CHECKS, checked
from ._codec import Codec
from ._errors import CapabilityError, DecodeError, QueueFullError
from ._gates import GATE_HEADER
from ._task import Task, validate_queue_name

if TYPE_CHECKING:
    from ._schedules import ScheduleStore
    from ._storage import Storage
    from ._unique import UniqueStore
    from ._workflows import WorkflowStore


class Capability(enum.StrEnum):
    """Optional abilities a backend declares; the conformance suite checks each one."""

    PRIORITIES = "priorities"
    DELAYS = "delays"
    LEASE_EXTENSION = "lease_extension"
    DEAD_LETTER = "dead_letter"
    BATCH_RESERVE = "batch_reserve"
    #: Honours :attr:`Broker.queue_limits` in every enqueue step.
    QUEUE_LIMITS = "queue_limits"
    #: Enforces ``Message.gate`` (rate and concurrency limits) in its reserve step; see
    #: :mod:`bgcoor_core._gates` for the rules.
    LIMITS = "limits"


@dataclass(frozen=True, slots=True)
class Message:
    """An encoded task as the broker stores it. ``eta`` is a Unix timestamp. ``gate``: the
    task's rate and concurrency limits (:meth:`Gate.encode <bgcoor_core.kit.Gate.encode>`),
    kept beside the body so that the reserve step can enforce them without decoding it.
    ``record``: the task's record as its JSON text, when the body is that text (JSON, no
    claim check), made once by :meth:`Broker.to_message`; see :func:`record_json`."""

    id: str
    queue: str
    body: bytes
    priority: int = 0
    eta: float | None = None
    gate: str | None = None
    record: str | None = field(default=None, compare=False, repr=False)


def record_json(task: Task, message: Message | None = None) -> str:
    """``task``'s record as JSON text: the text its ``message`` (made from it by
    :meth:`Broker.to_message`) already holds, else dumped anew. An enqueue storing a
    record and a message together encodes the task once, not twice."""
    if message is not None and message.record is not None and message.id == task.id:
        return message.record
    return task.model_dump_json()


def record_jsons(tasks: Sequence[Task], messages: Sequence[Message] = ()) -> list[str]:
    """:func:`record_json` for each of ``tasks``, paired by position with ``messages``
    (made from them, as many or fewer: the rest are dumped)."""
    return [
        record_json(task, messages[i] if i < len(messages) else None)
        for i, task in enumerate(tasks)
    ]


@dataclass(slots=True)
class Reservation:
    """A task leased to one consumer.

    ``deliveries`` counts every delivery including this one; ``lost`` counts the earlier
    deliveries whose lease expired without ack or nack (the worker died or hung). When the
    body could not be decoded, ``defect`` says why and ``task`` is a placeholder that only
    carries the message id and queue, so the message can still be dead-lettered.

    ``started``: the broker also stored the task's record as ``running`` under this lease
    while reserving it (``attempts`` one more than the stored record's, ``started_at`` now,
    ``lease_token`` this token), sparing the executor that write and its round trip. Only
    a broker that is also the storage may set it (see :class:`AtomicCompletion`), and only
    for a record that existed and was allowed to become running; the executor honours it
    only when the broker :meth:`~AtomicCompletion.shares_store_with` its storage.
    ``started_at``: with ``started``, the start time it stored, which the executor then
    keeps in every record of this attempt (else it stamps its own, a moment later).
    """

    task: Task
    token: str
    deliveries: int = 1
    lost: int = 0
    defect: str | None = None
    started: bool = False
    started_at: datetime | None = None

    @property
    def queue(self) -> str:
        return self.task.queue


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message in a dead-letter queue and why it is there."""

    id: str
    queue: str
    reason: str
    task: Task | None
    dead_at: float


@dataclass(frozen=True, slots=True)
class QueueStats:
    ready: int = 0
    scheduled: int = 0
    reserved: int = 0
    dead: int = 0


class Broker(ABC):
    """Base class of every broker. Subclasses implement the abstract primitives."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: Errors after which a call's outcome is unknown (the connection broke mid-call) and
    #: trying it again is safe; a plugin adds its driver's connection errors.
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (ConnectionError, TimeoutError)

    def __init__(self, codec: Codec | None = None) -> None:
        self.codec = codec or Codec.json()
        #: Waiting messages a queue may hold (``BGCOOR_QUEUE_LIMITS``), set when the broker
        #: is wired; a broker with :attr:`Capability.QUEUE_LIMITS` checks it with
        #: :meth:`refuse_if_full` inside each producer's enqueue step.
        self.queue_limits: dict[str, int] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Arguments are checked once, here, for every backend: each public method a
        subclass implements is wrapped to run its check in :mod:`._arguments` first."""
        super().__init_subclass__(**kwargs)
        for name, check in CHECKS.items():
            method = cls.__dict__.get(name)
            if method is not None:
                setattr(cls, name, checked(method, check))

    # -- producing ---------------------------------------------------------------------

    async def push(self, task: Task) -> None:
        """Enqueue one task (delivered no earlier than ``task.eta``)."""
        await self.push_messages([self.to_message(task)])

    async def push_many(self, tasks: Sequence[Task]) -> None:
        """Enqueue several tasks in as few round trips as the backend allows."""
        await self.push_messages([self.to_message(t) for t in tasks])

    def to_message(self, task: Task) -> Message:
        """Validate and encode ``task`` (capabilities, queue name, size limit)."""
        validate_queue_name(task.queue)
        if task.priority and Capability.PRIORITIES not in self.capabilities:
            raise CapabilityError(
                f"{type(self).__name__} does not support priorities (task {task.name!r} "
                f"has priority {task.priority})"
            )
        eta = task.eta.timestamp() if task.eta is not None else None
        if eta is not None and Capability.DELAYS not in self.capabilities:
            raise CapabilityError(f"{type(self).__name__} does not support delayed tasks")
        gate = task.headers.get(GATE_HEADER) if task.headers else None
        if gate is not None and Capability.LIMITS not in self.capabilities:
            raise CapabilityError(
                f"{type(self).__name__} cannot enforce rate or concurrency limits (task "
                f"{task.name!r})"
            )
        body, record = self.codec.encode_with_record(task)
        return Message(task.id, task.queue, body, task.priority, eta, gate, record)

    @abstractmethod
    async def push_messages(self, messages: Sequence[Message]) -> None:
        """Store already-encoded messages. Also how tests inject raw, malformed bodies."""

    # -- consuming ---------------------------------------------------------------------

    @abstractmethod
    async def reserve(
        self, queues: Sequence[str], *, lease: float, limit: int = 1, timeout: float = 0.0
    ) -> list[Reservation]:
        """Lease up to ``limit`` ready tasks, waiting up to ``timeout`` seconds for one.

        Earlier queues in ``queues`` are served first; within a queue higher priority
        first, FIFO within a priority. Returns ``[]`` when nothing became ready in time.
        A backend without :attr:`Capability.BATCH_RESERVE` may return a single task.
        """

    @abstractmethod
    async def ack(self, reservation: Reservation) -> None:
        """Remove the task for good. Stale token: :class:`StaleLeaseError`."""

    @abstractmethod
    async def nack(
        self, reservation: Reservation, *, delay: float = 0.0, task: Task | None = None
    ) -> None:
        """Give the task back, ready again after ``delay`` seconds.

        With ``task`` the stored message is replaced by it (a retry carries its updated
        attempt count and error). A nack is a deliberate hand-back: it does not count as
        a lost delivery.
        """

    async def extend(self, reservation: Reservation, lease: float) -> None:
        """Push the lease deadline to ``lease`` seconds from now."""
        raise CapabilityError(f"{type(self).__name__} cannot extend leases")

    async def dead_letter(
        self, reservation: Reservation, reason: str, task: Task | None = None
    ) -> None:
        """Move the task to its queue's dead-letter queue with ``reason``."""
        raise CapabilityError(f"{type(self).__name__} has no dead-letter queue")

    async def dead_letters(
        self, queue: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        """The dead-letter queue of ``queue``, oldest first."""
        raise CapabilityError(f"{type(self).__name__} has no dead-letter queue")

    async def requeue_dead(self, queue: str, ids: Sequence[str] | None = None) -> list[str]:
        """Move dead letters (all, or those in ``ids``) back to ``queue``; return their ids."""
        raise CapabilityError(f"{type(self).__name__} has no dead-letter queue")

    async def purge_dead(self, queue: str) -> int:
        """Delete the dead letters of ``queue``; return how many."""
        raise CapabilityError(f"{type(self).__name__} has no dead-letter queue")

    # -- inspecting --------------------------------------------------------------------

    @abstractmethod
    async def stats(self, queue: str) -> QueueStats:
        """Counts of ready, scheduled (eta in the future), reserved and dead messages."""

    async def queue_length(self, queue: str) -> int:
        """Messages waiting in ``queue``: ready plus scheduled."""
        stats = await self.stats(queue)
        return stats.ready + stats.scheduled

    @abstractmethod
    async def purge(self, queue: str) -> int:
        """Delete every waiting (not reserved) message in ``queue``; return how many."""

    @abstractmethod
    async def queues(self) -> list[str]:
        """Names of queues that hold or held messages."""

    def schedule_store(self, storage: Storage) -> ScheduleStore | None:
        """Where this broker keeps schedules and fires their ticks into ``storage``
        (periodic tasks), or ``None`` when it cannot do that atomically. By default the
        broker itself, when it is a :class:`~bgcoor_core.ScheduleStore` that enqueues
        atomically into ``storage`` (:class:`AtomicEnqueue`)."""
        from ._schedules import ScheduleStore

        if (
            isinstance(self, ScheduleStore)
            and isinstance(self, AtomicEnqueue)
            and self.shares_store_with(storage)
        ):
            return self
        return None

    def atomic_enqueue(self, storage: Storage) -> AtomicEnqueue | None:
        """What stores records into ``storage`` and pushes their messages in one step, or
        ``None``. By default the broker itself, when it is an :class:`AtomicEnqueue` that
        :meth:`~AtomicEnqueue.shares_store_with` ``storage``."""
        if isinstance(self, AtomicEnqueue) and self.shares_store_with(storage):
            return self
        return None

    def workflow_store(self, storage: Storage) -> WorkflowStore | None:
        """Where this broker runs workflows whose records live in ``storage``, or
        ``None`` when it cannot step them atomically (then workflows are refused). None
        by default: a backend opts in by overriding it."""
        return None

    def unique_store(self, storage: Storage) -> UniqueStore | None:
        """Where this broker takes unique keys of tasks whose records live in
        ``storage``, in the step that enqueues them, or ``None`` (then a task with a
        ``unique_key`` is refused). None by default: a backend opts in by overriding it."""
        return None

    async def preflight(self) -> None:  # noqa: B027 - optional hook with a sensible default
        """Check, once before a worker pool starts, that the backend can keep its promises;
        raise :class:`~bgcoor_core.ConfigurationError` naming the problem if not (say, a
        server configured to evict keys)."""

    async def close(self) -> None:  # noqa: B027 - optional hook with a sensible default
        """Release connections. The broker must not be used afterwards."""

    # -- helpers for implementations ---------------------------------------------------

    def refuse_if_full(self, messages: Sequence[Message], waiting: Callable[[str], int]) -> None:
        """Raise :class:`~bgcoor_core.QueueFullError` when ``messages`` would take a
        limited queue past its limit: all or nothing, so call it inside the enqueue step,
        before anything is stored. ``waiting(queue)`` counts the messages the queue holds
        that are not leased (ready, scheduled, parked by a limit); it is called only for
        limited queues. Producers' enqueues are limited; retries, schedule ticks, workflow
        steps and dead letters put back are not (the work was accepted already)."""
        if not self.queue_limits:
            return
        adding: dict[str, int] = {}
        for message in messages:
            if message.queue in self.queue_limits:
                adding[message.queue] = adding.get(message.queue, 0) + 1
        for queue, count in adding.items():
            limit = self.queue_limits[queue]
            if count > limit:
                raise QueueFullError(queue, limit, too_large=count)
            if waiting(queue) + count > limit:
                raise QueueFullError(queue, limit)

    def decode(self, message_id: str, queue: str, body: bytes) -> tuple[Task, str | None]:
        """Decode a body; on failure return a placeholder task and the reason.

        A body naming another id or queue than the message that carries it is a defect
        too: settling it by the body's id would miss the message, which then could never
        be acked, dead-lettered or stopped from being delivered again.
        """
        try:
            task = self.codec.decode(body)
        except DecodeError as exc:
            defect = str(exc)
        else:
            if (task.id, task.queue) == (message_id, queue):
                return task, None
            defect = (
                f"malformed message: its body names task {task.id[:40]!r} in queue "
                f"{task.queue!r}, not message {message_id[:40]!r} in queue {queue!r}"
            )
        return Task.model_construct(id=message_id, name="<malformed>", queue=queue), defect


@runtime_checkable
class AtomicCompletion(Protocol):
    """Optional: a backend that is broker and storage at once stores a task's outcome and
    acks it in one step, refused (:class:`StaleLeaseError`) for a stale lease token."""

    def shares_store_with(self, storage: Storage) -> bool:
        """True when ``storage`` is the store this broker writes outcomes into."""
        ...

    async def complete(
        self, reservation: Reservation, task: Task, *, ttl: float | None
    ) -> None: ...


@runtime_checkable
class AtomicEnqueue(Protocol):
    """Optional: a backend that is broker and storage at once stores the tasks' records and
    pushes their messages in one step, so a task never exists in one and not the other."""

    def shares_store_with(self, storage: Storage) -> bool:
        """True when ``storage`` is the store this broker writes records into."""
        ...

    async def enqueue_atomically(self, tasks: Sequence[Task], messages: Sequence[Message]) -> None:
        """Save ``tasks`` (as :meth:`Storage.save` would) and push ``messages``."""
        ...


@runtime_checkable
class Migratable(Protocol):
    """Optional: a backend with a versioned schema applies its pending migrations.

    Must be idempotent and safe when several processes call it at once (``bgcoor migrate``
    and workers starting together).
    """

    async def migrate(self) -> list[str]:
        """Apply pending migrations; return a line for each one applied (empty if current)."""
        ...
