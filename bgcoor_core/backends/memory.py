"""In-memory broker and storage: complete, thread-safe implementations for one process.

They honour the whole contract (leases, redelivery, stale tokens, delays, priorities,
dead letters, TTLs), so tests run against real semantics. Registered for ``memory://``
through the ``bgcoor`` entry-point group like any other plugin.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._backend_registry import BackendContext, BrokerRegistry, StorageRegistry
from .._broker import (
    Broker,
    Capability,
    DeadLetter,
    Message,
    QueueStats,
    Reservation,
    record_json,
)
from .._codec import Codec
from .._errors import DuplicateTaskError, ResultTimeoutError, StaleLeaseError
from .._gates import Gate, admit
from .._schedules import ScheduleEntry
from .._storage import Storage, check_page, check_transition
from .._task import Task, TaskStatus, validate_queue_name
from ..hookspecs import hookimpl
from ._memory_schedules import MemorySchedules
from ._memory_uniques import MemoryUniques
from ._memory_workflows import MemoryWorkflows, Running
from ._waiters import Waiters, wait_for_wake

READY, SCHEDULED, RESERVED, PARKED = "ready", "scheduled", "reserved", "parked"


@dataclass(slots=True)
class _Entry:
    message: Message
    seq: int
    state: str = READY
    due: float = 0.0  # wall clock for SCHEDULED, monotonic lease deadline for RESERVED
    token: str | None = None
    deliveries: int = 0
    lost: int = 0
    gate: Gate | None = None
    admitted: bool = False  # given a rate slot that is now due: delivered without a check


def _entry(message: Message, seq: int) -> _Entry:
    gate = None if message.gate is None else Gate.decode(message.gate)
    return _Entry(message, seq, gate=gate)


@dataclass(slots=True)
class _Limits:
    """The state of every gate key: rate (``tat``), slot holders (message ids) and the
    messages parked for a slot (a heap in ready order)."""

    tat: dict[str, float] = field(default_factory=dict)
    holders: dict[str, set[str]] = field(default_factory=dict)
    parked: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)


@dataclass(slots=True)
class _Dead:
    message: Message
    reason: str
    dead_at: float


class MemoryBroker(Broker):
    """A broker held in this process's memory; usable from any thread and event loop."""

    capabilities = frozenset(Capability)

    def __init__(self, codec: Codec | None = None) -> None:
        super().__init__(codec)
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._entries: dict[str, _Entry] = {}
        self._ready: dict[str, list[tuple[int, int, str]]] = {}
        self._scheduled: list[tuple[float, int, str]] = []
        self._leases: list[tuple[float, int, str]] = []
        self._dead: dict[str, dict[str, _Dead]] = {}
        self._known: set[str] = set()  # every queue that ever held a message
        self._waiters = Waiters()
        self._schedule_table: dict[str, ScheduleEntry] = {}
        self._workflow_table: dict[str, Running] = {}
        self._unique_keys: dict[str, tuple[str, float | None]] = {}
        self._limits = _Limits()

    # -- producing ---------------------------------------------------------------------

    async def push_messages(self, messages: Sequence[Message]) -> None:
        for message in messages:
            validate_queue_name(message.queue)
        with self._lock:
            self._push_locked(messages, limited=True)

    def _push_locked(self, messages: Sequence[Message], *, limited: bool = False) -> None:
        """Push ``messages`` (the lock held); ``limited``: a producer's enqueue, refused
        whole when it would pass a queue limit."""
        seen: set[str] = set()
        for message in messages:
            if message.id in self._entries or message.id in seen:
                raise DuplicateTaskError(f"task {message.id} is already in the broker")
            seen.add(message.id)
        if limited:
            self.refuse_if_full(messages, self._waiting)
        now = time.time()
        for message in messages:
            entry = _entry(message, next(self._seq))
            self._entries[message.id] = entry
            self._known.add(message.queue)
            self._enqueue(entry, message.eta if message.eta and message.eta > now else None)
        self._waiters.wake_all()

    def _waiting(self, queue: str) -> int:
        return sum(
            1 for e in self._entries.values() if e.message.queue == queue and e.state != RESERVED
        )

    def atomic_enqueue(self, storage: Storage) -> MemoryUniques | None:
        """Records into ``storage`` (a memory one) and messages here, in one step."""
        return self.unique_store(storage)

    def workflow_store(self, storage: Storage) -> MemoryWorkflows | None:
        """Workflows on this broker, stepping records in ``storage`` if it is a memory one."""
        if isinstance(storage, MemoryStorage):
            return MemoryWorkflows(self, storage)
        return None

    def unique_store(self, storage: Storage) -> MemoryUniques | None:
        """Unique keys on this broker, for records in ``storage`` if it is a memory one."""
        if isinstance(storage, MemoryStorage):
            return MemoryUniques(self, storage)
        return None

    def schedule_store(self, storage: Storage) -> MemorySchedules | None:
        """Schedules on this broker, firing into ``storage`` if it is a memory storage."""
        if isinstance(storage, MemoryStorage):
            return MemorySchedules(self, storage)
        return None

    def _enqueue(self, entry: _Entry, eta: float | None) -> None:
        entry.token = None
        if eta is None:
            entry.state = READY
            heap = self._ready.setdefault(entry.message.queue, [])
            heapq.heappush(heap, (-entry.message.priority, entry.seq, entry.message.id))
        else:
            entry.state, entry.due = SCHEDULED, eta
            heapq.heappush(self._scheduled, (eta, entry.seq, entry.message.id))

    # -- consuming ---------------------------------------------------------------------

    async def reserve(
        self, queues: Sequence[str], *, lease: float, limit: int = 1, timeout: float = 0.0
    ) -> list[Reservation]:
        for queue in queues:
            validate_queue_name(queue)
        give_up = time.monotonic() + timeout
        while True:
            with self._lock:
                taken = self._take(queues, lease, limit)
                if taken or time.monotonic() >= give_up:
                    break
                future = self._waiters.add()
                wake_at = min(give_up, self._next_change())
            try:
                await wait_for_wake(future, wake_at - time.monotonic())
            finally:
                with self._lock:
                    self._waiters.discard(future)
        return [self._reservation(entry) for entry in taken]

    def _take(self, queues: Sequence[str], lease: float, limit: int) -> list[_Entry]:
        self._promote(time.time(), time.monotonic())
        taken: list[_Entry] = []
        deadline = time.monotonic() + lease
        for queue in queues:
            heap = self._ready.get(queue)
            while heap and len(taken) < limit:
                _, seq, message_id = heapq.heappop(heap)
                entry = self._entries.get(message_id)
                if entry is None or entry.state != READY or entry.seq != seq:
                    continue
                if entry.gate is not None and not self._passes(entry, entry.gate):
                    continue
                entry.state, entry.due, entry.token = RESERVED, deadline, os.urandom(12).hex()
                entry.deliveries += 1
                heapq.heappush(self._leases, (deadline, entry.seq, message_id))
                taken.append(entry)
        return taken

    def _passes(self, entry: _Entry, gate: Gate) -> bool:
        """The gate's rules (:mod:`bgcoor_core._gates`) for a ready ``entry``: True when it
        may be delivered now (its concurrency slot then taken), else it was parked or
        scheduled for its rate slot."""
        limits = self._limits
        if gate.concurrency is not None:
            holders = limits.holders.setdefault(gate.key, set())
            if len(holders) >= gate.concurrency:
                entry.state = PARKED
                heapq.heappush(
                    limits.parked.setdefault(gate.key, []),
                    (-entry.message.priority, entry.seq, entry.message.id),
                )
                return False
        if gate.interval is not None:
            if entry.admitted:
                entry.admitted = False
            else:
                now = time.time()
                tat, start = admit(limits.tat.get(gate.key), now, gate.interval, gate.burst)
                limits.tat[gate.key] = tat
                if start > now:
                    entry.admitted = True
                    self._enqueue(entry, start)
                    return False
        if gate.concurrency is not None:
            limits.holders[gate.key].add(entry.message.id)
        return True

    def _release(self, entry: _Entry) -> None:
        """``entry`` stops holding its concurrency slot (settled, handed back or lost): the
        key's oldest parked message, if any, is ready again."""
        gate = entry.gate
        if gate is None or gate.concurrency is None:
            return
        holders = self._limits.holders.get(gate.key)
        if holders is None or entry.message.id not in holders:
            return
        holders.discard(entry.message.id)
        parked = self._limits.parked.get(gate.key)
        while parked:
            _, seq, message_id = heapq.heappop(parked)
            waiting = self._entries.get(message_id)
            if waiting is not None and waiting.state == PARKED and waiting.seq == seq:
                self._enqueue(waiting, None)
                self._waiters.wake_all()
                break
        if not holders:
            del self._limits.holders[gate.key]

    def _promote(self, wall: float, mono: float) -> None:
        """Make due scheduled tasks ready and expired leases ready again (counted as lost)."""
        while self._scheduled and self._scheduled[0][0] <= wall:
            _, seq, message_id = heapq.heappop(self._scheduled)
            entry = self._entries.get(message_id)
            if entry is not None and entry.state == SCHEDULED and entry.seq == seq:
                self._enqueue(entry, None)
        while self._leases and self._leases[0][0] <= mono:
            due, seq, message_id = heapq.heappop(self._leases)
            entry = self._entries.get(message_id)
            if entry is not None and entry.state == RESERVED and entry.due == due:
                self._release(entry)
                entry.lost += 1
                entry.seq = next(self._seq)
                self._enqueue(entry, None)

    def _next_change(self) -> float:
        """Monotonic time at which a scheduled task or a lease next falls due."""
        candidates = [float("inf")]
        if self._scheduled:
            candidates.append(time.monotonic() + self._scheduled[0][0] - time.time())
        if self._leases:
            candidates.append(self._leases[0][0])
        return min(candidates)

    def _reservation(self, entry: _Entry) -> Reservation:
        message = entry.message
        task, defect = self.decode(message.id, message.queue, message.body)
        assert entry.token is not None
        return Reservation(task, entry.token, entry.deliveries, entry.lost, defect)

    def _held(self, reservation: Reservation) -> _Entry:
        entry = self._entries.get(reservation.task.id)
        if (
            entry is None
            or entry.state != RESERVED
            or entry.token != reservation.token
            or entry.due <= time.monotonic()
        ):
            raise StaleLeaseError(
                f"task {reservation.task.id}: lease {reservation.token[:8]} is no longer held"
            )
        return entry

    async def ack(self, reservation: Reservation) -> None:
        with self._lock:
            self._release(self._held(reservation))
            del self._entries[reservation.task.id]

    async def nack(
        self, reservation: Reservation, *, delay: float = 0.0, task: Task | None = None
    ) -> None:
        body = self.codec.encode(task) if task is not None else None
        with self._lock:
            entry = self._held(reservation)
            self._release(entry)
            if body is not None:
                old = entry.message
                entry.message = Message(old.id, old.queue, body, old.priority, old.eta, old.gate)
            entry.seq = next(self._seq)
            self._enqueue(entry, time.time() + delay if delay > 0 else None)
            self._waiters.wake_all()

    async def extend(self, reservation: Reservation, lease: float) -> None:
        with self._lock:
            entry = self._held(reservation)
            entry.due = time.monotonic() + lease
            heapq.heappush(self._leases, (entry.due, entry.seq, entry.message.id))

    async def dead_letter(
        self, reservation: Reservation, reason: str, task: Task | None = None
    ) -> None:
        body = self.codec.encode(task) if task is not None else None
        with self._lock:
            entry = self._held(reservation)
            self._release(entry)
            message = entry.message
            if body is not None:
                message = Message(
                    message.id, message.queue, body, message.priority, gate=message.gate
                )
            del self._entries[message.id]
            dead = self._dead.setdefault(message.queue, {})
            dead[message.id] = _Dead(message, reason, time.time())

    async def dead_letters(
        self, queue: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        check_page(limit)
        with self._lock:
            items = list(self._dead.get(queue, {}).values())[offset : offset + limit]
        out = []
        for item in items:
            task, defect = self.decode(item.message.id, queue, item.message.body)
            out.append(
                DeadLetter(
                    item.message.id, queue, item.reason, None if defect else task, item.dead_at
                )
            )
        return out

    async def requeue_dead(self, queue: str, ids: Sequence[str] | None = None) -> list[str]:
        with self._lock:
            dead = self._dead.get(queue, {})
            chosen = [
                i
                for i in (list(dead) if ids is None else ids)
                if i in dead and i not in self._entries
            ]
            for message_id in chosen:
                message = dead.pop(message_id).message
                entry = _entry(message, next(self._seq))
                self._entries[message_id] = entry
                self._enqueue(entry, None)
            self._waiters.wake_all()
        return chosen

    async def purge_dead(self, queue: str) -> int:
        with self._lock:
            return len(self._dead.pop(queue, {}))

    # -- inspecting --------------------------------------------------------------------

    async def stats(self, queue: str) -> QueueStats:
        with self._lock:
            self._promote(time.time(), time.monotonic())
            counts = {READY: 0, SCHEDULED: 0, RESERVED: 0, PARKED: 0}
            for entry in self._entries.values():
                if entry.message.queue == queue:
                    counts[entry.state] += 1
            counts[SCHEDULED] += counts[PARKED]  # waiting for a concurrency slot
            dead = len(self._dead.get(queue, {}))
        return QueueStats(counts[READY], counts[SCHEDULED], counts[RESERVED], dead)

    async def purge(self, queue: str) -> int:
        with self._lock:
            doomed = [
                key
                for key, entry in self._entries.items()
                if entry.message.queue == queue and entry.state != RESERVED
            ]
            for key in doomed:
                del self._entries[key]
            self._ready.pop(queue, None)
        return len(doomed)

    async def queues(self) -> list[str]:
        with self._lock:
            return sorted(self._known)


@dataclass(frozen=True, slots=True)
class _Record:
    """A stored task: serialised like in a real store (so callers never share objects with
    it), with the fields the filters and transition checks need kept alongside."""

    status: TaskStatus
    name: str
    queue: str
    lease_token: str | None
    json: bytes

    def task(self) -> Task:
        return Task.model_validate_json(self.json)


class MemoryStorage(Storage):
    """Task records in this process's memory; usable from any thread and event loop."""

    def __init__(self, codec: Codec | None = None) -> None:
        super().__init__(codec)
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}
        self._expires: dict[str, float] = {}
        self._waiters: dict[str, Waiters] = {}

    def _live(self, task_id: str) -> _Record | None:
        expires = self._expires.get(task_id)
        if expires is not None and expires <= time.monotonic():
            del self._records[task_id], self._expires[task_id]
            return None
        return self._records.get(task_id)

    async def save(self, task: Task, *, ttl: float | None = None) -> None:
        record = _Record(
            task.status, task.name, task.queue, task.lease_token, task.model_dump_json().encode()
        )
        with self._lock:
            old = self._live(task.id)
            if old is not None:
                check_transition(
                    task.id, old.status, old.lease_token, task.status, task.lease_token
                )
            self._records[task.id] = record
            if ttl is not None:
                self._expires[task.id] = time.monotonic() + ttl
            else:
                self._expires.pop(task.id, None)
            if record.status.is_final and task.id in self._waiters:
                self._waiters.pop(task.id).wake_all()

    async def save_many(self, tasks: Sequence[Task]) -> None:
        """Store new records, all or none: an id with a record already refuses the batch."""
        with self._lock:
            for task in tasks:
                old = self._live(task.id)
                if old is not None:
                    raise DuplicateTaskError(f"task {task.id} already exists (status {old.status})")
            for task in tasks:
                self._insert(task)

    def _insert(self, task: Task, message: Message | None = None) -> None:
        """Store a record (the lock held; the caller checked the id is free, or that the
        transition is allowed), waking whoever waits for it to finish; ``message``: the
        one made from it, whose record text is reused (:func:`record_json`)."""
        self._records[task.id] = _Record(
            task.status,
            task.name,
            task.queue,
            task.lease_token,
            record_json(task, message).encode(),
        )
        self._expires.pop(task.id, None)
        if task.status.is_final and task.id in self._waiters:
            self._waiters.pop(task.id).wake_all()

    async def get(self, task_id: str) -> Task | None:
        with self._lock:
            record = self._live(task_id)
        return None if record is None else record.task()

    async def list(
        self,
        *,
        status: TaskStatus | None = None,
        name: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[Task]:
        check_page(limit)
        with self._lock:
            ids = sorted(i for i in list(self._records) if self._live(i) is not None)
            records = [self._records[i] for i in ids if after is None or i > after]
        matches = [
            r
            for r in records
            if (status is None or r.status == status)
            and (name is None or r.name == name)
            and (queue is None or r.queue == queue)
        ]
        return [r.task() for r in matches[:limit]]

    async def counts(self) -> dict[TaskStatus, int]:
        counts = dict.fromkeys(TaskStatus, 0)
        with self._lock:
            for task_id in list(self._records):
                record = self._live(task_id)
                if record is not None:
                    counts[record.status] += 1
        return counts

    async def delete_expired(self) -> int:
        with self._lock:
            before = len(self._records)
            for task_id in list(self._expires):
                self._live(task_id)
            return before - len(self._records)

    async def wait(self, task_id: str, *, timeout: float | None) -> Task:
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                record = self._live(task_id)
                if record is not None and record.status.is_final:
                    return record.task()
                future = self._waiters.setdefault(task_id, Waiters()).add()
            remaining = 3600.0 if give_up is None else give_up - time.monotonic()
            try:
                if remaining <= 0:
                    raise ResultTimeoutError(f"task {task_id} did not finish within {timeout}s")
                await wait_for_wake(future, remaining)
            finally:
                with self._lock:
                    waiters = self._waiters.get(task_id)
                    if waiters is not None:
                        waiters.discard(future)
                        if not waiters:
                            del self._waiters[task_id]


@hookimpl
def bgcoor_register_brokers(brokers: BrokerRegistry) -> None:
    brokers.add("memory", _memory_broker, test_url=lambda _tmp: "memory://")


@hookimpl
def bgcoor_register_storages(storages: StorageRegistry) -> None:
    storages.add("memory", _memory_storage, test_url=lambda _tmp: "memory://")


def _memory_broker(url: str, context: BackendContext) -> MemoryBroker:
    return MemoryBroker(context.codec)


def _memory_storage(url: str, context: BackendContext) -> MemoryStorage:
    return MemoryStorage(context.codec)
