"""Executor: runs one reserved task and settles it.

The order of a task's life is fixed: mark running (unless the broker's reserve already
did, see ``Reservation.started``), run the handler, store the outcome, *then* ack (or nack
for a retry, or dead-letter). A worker that dies anywhere before the
ack leaves the task to be delivered again when its lease expires.

A process-isolated task whose child is killed by a signal bg-coor did not send (a
segfault, the out-of-memory killer) is handed back like a lost delivery rather than
failed: the kill counts toward ``max_worker_lost`` (in the task's :data:`KILLED_HEADER`,
which travels with the redelivery) and uses no retry attempt, and past the limit the task
is dead-lettered, its error naming the signal.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from datetime import UTC, datetime
from typing import Any

from ._broker import Broker, Capability, Reservation
from ._codec import CLAIMED, printable
from ._context import CancelFlag, CurrentTask
from ._errors import (
    CorruptRecordError,
    DecodeError,
    InvalidTransitionError,
    NonRetryableError,
    PayloadError,
    PayloadTooLargeError,
    Retry,
    StaleLeaseError,
    UnknownTaskError,
    WorkerLostError,
)
from ._failures import Failure, format_traceback, message_of, utf8_safe
from ._invoke import Invoker
from ._plugins import PluginHost
from ._settings import Settings
from ._storage import Storage
from ._task import Task, TaskStatus
from ._task_registry import RegisteredTask, TaskRegistry
from ._threads import TaskThreads
from ._values import Opaque
from ._wiring import Backends
from ._workflow_inputs import member_inputs, with_leading
from ._workflows import ERROR_OF_HEADER, INPUTS_HEADER, WORKFLOW_HEADER

log = logging.getLogger("bgcoor.executor")
#: The name on the placeholder that replaces a record nobody can read.
_CORRUPT = "bgcoor.corrupt"
#: How many times a signal killed the child running this task (see the module's doc).
KILLED_HEADER = "bgcoor-killed"


def child_kills(task: Task) -> int:
    """How many earlier attempts of ``task`` lost their child process to a signal (0
    when the header is absent or is not a count)."""
    value = task.headers.get(KILLED_HEADER) if task.headers else None
    if value is None or not value.isdigit():
        return 0
    return int(value)


def retries_used(task: Task) -> int:
    """The attempts that count against ``max_retries``: those whose child was killed
    by a signal do not."""
    return task.attempts - child_kills(task)


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: a delay in ``[d/2, d]``, ``d = base * 2**(attempt-1)``
    capped at ``cap``. It saturates at ``cap``: past the exponent where doubling passes any
    cap, ``2**n`` is never computed (a float overflows after attempt 1,024)."""
    exponent = max(attempt - 1, 0)
    ceiling = cap if exponent >= 64 else min(cap, base * 2.0**exponent)
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


def _as_message(task: Task) -> Task:
    """``task`` as a retry or dead letter carries it in its message: without the
    traceback and the structured failure, which the record keeps, so a payload that
    fitted ``max_payload_bytes`` still fits after a failure (the error text is clipped for
    the same reason)."""
    error = task.error if task.error is None or len(task.error) <= 500 else task.error[:500] + "..."
    return task.model_copy(update={"traceback": None, "failure": None, "error": error})


def _killer(exc: WorkerLostError) -> signal.Signals | None:
    """The signal a child process died of, when bg-coor did not send it (a timeout's or
    a cancel's kill raise other errors); ``None`` for a child that exited by itself."""
    from ._isolation import ChildKilledError  # loaded already: its child pool raised this

    return exc.signal if isinstance(exc, ChildKilledError) else None


def _without_kills(task: Task) -> Task:
    """``task`` without its count of killed children, as it is dead-lettered: requeued
    by hand it gets a fresh count, as a fresh message gets a fresh count of lost leases."""
    if KILLED_HEADER in task.headers:
        task.headers = {k: v for k, v in task.headers.items() if k != KILLED_HEADER}
    return task


def _clipped(error: str | None, limit: int = 300) -> str:
    """An error as one log line: its first line, clipped, unprintable characters escaped."""
    first = (error or "").partition("\n")[0]
    return printable(first, limit)


class Executor:
    """Runs reserved tasks against a registry, storing outcomes before acknowledging."""

    def __init__(
        self,
        broker: Broker,
        storage: Storage,
        registry: TaskRegistry,
        settings: Settings,
        *,
        host: PluginHost | None = None,
        threads: TaskThreads | None = None,
    ) -> None:
        self.broker = broker
        self.storage = storage
        self.registry = registry
        self.settings = settings
        self.host = host
        self.threads = threads
        backends = Backends.pair(broker, storage)
        self._completion = backends.atomic_completion
        self._workflows = backends.workflows
        self._atomic = self._completion is not None
        self._invoker = Invoker(settings, threads, host, broker.codec)
        self._final_ttl = settings.result_ttl

    async def execute(self, reservation: Reservation, *, cancel: CancelFlag | None = None) -> None:
        """Run one reservation to a settled state. Never raises for task failures.

        ``cancel``: set it (then cancel the asyncio task running this) to cancel the task
        for good; a cancellation without it is a shutdown, and the task is handed back.
        """
        entry = await self._runnable(reservation)
        if entry is None:
            return
        task = await self._mark_running(reservation, reservation.task)
        if task is None:
            return
        run = task  # what the handler gets: a workflow member's with its inputs
        if task.headers and (INPUTS_HEADER in task.headers or ERROR_OF_HEADER in task.headers):
            member = await self._with_inputs(reservation, task)
            if member is None:
                return
            run = member
        current = CurrentTask(run, cancel)
        if current.cancel_requested:  # cancelled while it waited for a slot: never run
            await self._cancelled(reservation, task, "cancelled before it started")
            return
        log.debug("task %s (%s) received: attempt %d", task.id, task.name, task.attempts)
        began = time.perf_counter()
        try:
            result = await self._invoker.invoke(entry, current)
        except asyncio.CancelledError:
            if not current.cancel_requested:  # shutting down: it runs again elsewhere
                await asyncio.shield(self._hand_back(reservation))
                raise
            await asyncio.shield(self._cancelled(reservation, task))
            return
        except Exception as exc:
            await self._failed(reservation, task, entry, exc)
            return
        await self._succeeded(reservation, task, result, time.perf_counter() - began)

    async def _runnable(self, reservation: Reservation) -> RegisteredTask | None:
        """The task's registered handler, or ``None`` once a delivery that must not run
        (undecodable, unknown task, lost too often, expired) has been settled."""
        task = reservation.task
        if reservation.defect is not None:
            await self._reject(reservation, reservation.defect)
            return None
        if type(task.payload) is Opaque and task.payload == CLAIMED:
            reason = await self._claim(task)
            if reason is not None:
                await self._dead(reservation, task, reason)
                return None
        try:
            entry = self.registry.get(task.name)
        except UnknownTaskError as exc:
            await self._dead(reservation, task, str(exc))
            return None
        lost = reservation.lost + child_kills(task)  # dead workers, and killed children
        if lost > self.settings.max_worker_lost:
            reason = (
                f"worker_lost: the worker died {lost} times while running it "
                f"(limit {self.settings.max_worker_lost})"
            )
            await self._dead(reservation, _without_kills(task), reason)
            return None
        if task.expires is not None and datetime.now(UTC) >= task.expires:
            await self._expire(reservation, task)
            return None
        return entry

    async def _succeeded(
        self, reservation: Reservation, task: Task, result: Any, seconds: float
    ) -> None:
        task.status = TaskStatus.SUCCEEDED
        task.result = result
        task.error = task.traceback = task.failure = None
        task.finished_at = datetime.now(UTC)
        if not await self._settle(reservation, task):
            return
        log.info("task %s (%s) succeeded in %.3fs", task.id, task.name, seconds)
        if self.host:
            self.host.task_succeeded(task)

    async def _mark_running(self, reservation: Reservation, task: Task) -> Task | None:
        """The task as it runs now, stored (unless the reserve did); ``None`` if its
        record is already settled, and the delivery settled without running it."""
        stored = reservation.started and self._atomic  # the reserve stored the start
        at = reservation.started_at if stored else None
        task = task.started(reservation.token, at or datetime.now(UTC))
        try:
            if not stored:
                await self.storage.save(task)
        except InvalidTransitionError as exc:
            await self._already_settled(reservation, exc)
            return None
        except CorruptRecordError as exc:
            await self._reject(reservation, str(exc))
            return None
        if self.host:
            self.host.task_started(task)
        return task

    async def _already_settled(self, reservation: Reservation, exc: Exception) -> None:
        """A delivery whose record is already final. After a lost delivery or a cancel
        that is expected (an earlier attempt stored its outcome, or the task was
        cancelled): acknowledge it. A first delivery of a task that already finished is
        a new message reusing a finished task's id: dead-letter it with the reason, so it
        is neither run twice nor dropped silently."""
        task = reservation.task
        try:
            record = await self.storage.get(task.id)
        except CorruptRecordError as corrupt:
            await self._reject(reservation, str(corrupt))
            return
        status = record.status if record is not None else None
        if reservation.lost or status in (None, TaskStatus.CANCELLED):
            log.info("task %s is already settled (%s); acknowledging the delivery", task.id, exc)
            await self._ack_quietly(reservation)
            return
        reason = (
            f"duplicate message: task {task.id} already finished ({status}); "
            "a new message reused its id"
        )
        log.warning("message %s dead-lettered: %s", task.id, reason)
        if Capability.DEAD_LETTER in self.broker.capabilities:
            await self._quietly(self._dead_letter(reservation, reason, task))
        else:
            log.error(
                "task %s: %s; the broker has no dead-letter queue: acknowledged", task.id, reason
            )
            await self._ack_quietly(reservation)

    async def _failed(
        self, reservation: Reservation, task: Task, entry: RegisteredTask, exc: Exception
    ) -> None:
        text = format_traceback(exc)
        task.failure = Failure.of(exc, text)
        task.error = utf8_safe(f"{type(exc).__name__}: {message_of(exc)}")
        task.traceback = utf8_safe(text)
        if isinstance(exc, PayloadError):
            await self._dead(reservation, task, f"bad payload: {exc}", owned=True)
        elif isinstance(exc, WorkerLostError) and (killer := _killer(exc)) is not None:
            await self._child_killed(reservation, task, entry, exc, killer)
        elif isinstance(exc, Retry) and retries_used(task) <= task.max_retries:
            await self._retry(reservation, task, entry, exc.after)
        elif isinstance(exc, NonRetryableError) or not isinstance(exc, entry.options.retry_on):
            task.status = TaskStatus.FAILED
            task.finished_at = datetime.now(UTC)
            if not await self._settle(reservation, task):
                return
            log.warning("task %s (%s) failed: %s", task.id, task.name, _clipped(task.error))
            if self.host:
                self.host.task_failed(task)
        elif retries_used(task) <= task.max_retries:
            await self._retry(reservation, task, entry)
        else:
            reason = f"max_retries exceeded ({task.max_retries})"
            await self._dead(reservation, task, reason, owned=True)

    async def _child_killed(
        self,
        reservation: Reservation,
        task: Task,
        entry: RegisteredTask,
        exc: WorkerLostError,
        killer: signal.Signals,
    ) -> None:
        """Its child process was killed by a signal bg-coor did not send: counted in
        the task's :data:`KILLED_HEADER` (with any lost deliveries) against
        ``max_worker_lost``, without using a retry attempt; dead past the limit."""
        kills = child_kills(task) + 1
        task.error = f"WorkerLostError: {exc}"  # the public type; the text names the signal
        if task.failure is not None:
            task.failure = task.failure.model_copy(
                update={"type": WorkerLostError.__qualname__, "module": WorkerLostError.__module__}
            )
        lost = reservation.lost + kills
        limit = self.settings.max_worker_lost
        if lost > limit:
            reason = (
                f"worker_lost: its process died {lost} times while running it, the last "
                f"killed by {killer.name} (limit {limit})"
            )
            await self._dead(reservation, _without_kills(task), reason, owned=True)
            return
        task.headers = {**task.headers, KILLED_HEADER: str(kills)}
        await self._retry(reservation, task, entry, self._backoff(entry, kills))

    async def _retry(
        self,
        reservation: Reservation,
        task: Task,
        entry: RegisteredTask,
        delay: float | None = None,
    ) -> None:
        """Store ``retrying`` and give the message back, due after ``delay`` seconds (by
        default the backoff)."""
        if delay is None:
            delay = self._backoff(entry, retries_used(task))
        task.status = TaskStatus.RETRYING
        try:
            await self.storage.save(task)
            await self.broker.nack(reservation, delay=delay, task=_as_message(task))
        except (StaleLeaseError, InvalidTransitionError) as exc:
            log.warning("task %s: retry not recorded: %s", task.id, exc)
            await self._ack_quietly(reservation)  # see _settle
            return
        except PayloadTooLargeError as exc:  # its error alone outgrew the limit
            await self._dead(reservation, task, f"cannot retry: {exc}", owned=True)
            return
        log.info(
            "task %s (%s) retrying in %.2fs after %s",
            task.id,
            task.name,
            delay,
            _clipped(task.error),
        )
        if self.host:
            self.host.task_retrying(task, delay)

    def _backoff(self, entry: RegisteredTask, attempt: int) -> float:
        """The delay before the try after ``attempt``, per the task's retry backoff."""
        opts = entry.options
        return backoff_delay(
            attempt,
            self.settings.retry_backoff if opts.retry_backoff is None else opts.retry_backoff,
            self.settings.retry_backoff_max
            if opts.retry_backoff_max is None
            else opts.retry_backoff_max,
        )

    async def _dead(
        self, reservation: Reservation, task: Task, reason: str, *, owned: bool = False
    ) -> None:
        """Store ``dead`` and move the message to the dead-letter queue.

        ``owned``: the record was marked running under this reservation's lease, so the
        write is checked against that lease; otherwise only the transition is checked.
        """
        task.lease_token = reservation.token if owned else None
        task.status = TaskStatus.DEAD
        task.error = task.error or reason
        task.finished_at = datetime.now(UTC)
        last = f"; last error: {_clipped(task.error)}" if task.error != reason else ""
        log.warning("task %s (%s) dead-lettered: %s%s", task.id, task.name, reason, last)
        try:
            await self._save_final(task)
        except StaleLeaseError as exc:
            log.warning("%s", exc)
            await self._ack_quietly(reservation)  # see _settle
            return
        except InvalidTransitionError:
            await self._ack_quietly(reservation)
            return
        if Capability.DEAD_LETTER in self.broker.capabilities:
            await self._quietly(self._dead_letter(reservation, reason, task))
        else:
            await self._ack_quietly(reservation)
        if self.host:
            self.host.task_dead_lettered(task, reason)

    async def _dead_letter(self, reservation: Reservation, reason: str, task: Task) -> None:
        try:
            await self.broker.dead_letter(reservation, reason, _as_message(task))
        except PayloadTooLargeError:  # keep the body it was delivered with
            await self.broker.dead_letter(reservation, reason)

    async def _reject(self, reservation: Reservation, defect: str) -> None:
        """A body that could not be decoded: dead-letter it as it is, never run it."""
        log.error("message %s dead-lettered: %s", reservation.task.id, defect)
        record = await self._dead_record(reservation.task.id, reservation.queue, defect)
        if Capability.DEAD_LETTER in self.broker.capabilities:
            await self._quietly(self.broker.dead_letter(reservation, defect))
        else:
            await self._ack_quietly(reservation)
        if record is not None and self.host:
            self.host.task_dead_lettered(record, defect)

    async def _dead_record(self, task_id: str, queue: str, defect: str) -> Task | None:
        """The message is unreadable, but a producer may have stored its record (say,
        with a serializer this worker does not accept): mark that record ``dead`` too, so
        nobody waits for a task that will never run. Returns it, if it was marked."""
        try:
            try:
                record = await self.storage.get(task_id)
            except CorruptRecordError:  # unreadable: replaced by a placeholder saying why
                record = Task.model_construct(
                    id=task_id, name=_CORRUPT, queue=queue, status=TaskStatus.PENDING
                )
            if record is None or record.status.is_final:
                return None
            record.status = TaskStatus.DEAD
            corrupt = defect.startswith("corrupt")  # the backend's own state, not the body
            record.error = defect if corrupt else f"undecodable message: {defect}"
            record.finished_at = datetime.now(UTC)
            record.lease_token = None
            await self._save_final(record)
        except Exception as exc:  # the message is dead-lettered either way
            log.warning("task %s: could not mark its record dead: %s", task_id, exc)
            return None
        return record

    async def _settle(self, reservation: Reservation, task: Task) -> bool:
        """Store a final outcome and ack; False when a stale lease made it moot."""
        try:
            if self._workflows is not None and WORKFLOW_HEADER in task.headers:
                if self._completion is not None:
                    await self._workflows.complete_member(reservation, task)
                    return True
                await self._workflows.save_member(task)
            elif self._completion is not None:
                await self._completion.complete(reservation, task, ttl=self._ttl(task))
                return True
            else:
                await self.storage.save(task, ttl=self._ttl(task))
        except StaleLeaseError as exc:
            log.warning("%s", exc)
            # The record moved on without us: a newer lease (then the broker refuses this
            # ack too) or a cancel while we ran (then the message is ours to remove).
            await self._ack_quietly(reservation)
            return False
        except InvalidTransitionError as exc:
            log.info("%s; acknowledging", exc)
            await self._ack_quietly(reservation)
            return False
        await self._ack_quietly(reservation)
        return True

    async def _cancelled(
        self, reservation: Reservation, task: Task, why: str = "cancelled while running"
    ) -> None:
        """Cancelled (the pool was asked to): stored ``cancelled``, acked."""
        task.status = TaskStatus.CANCELLED
        task.error = why
        task.finished_at = datetime.now(UTC)
        log.info("task %s (%s) %s", task.id, task.name, why)
        if await self._settle(reservation, task) and self.host:
            self.host.task_cancelled(task)

    async def _expire(self, reservation: Reservation, task: Task) -> None:
        """Not started before its ``expires``: marked ``expired`` and acked, never run."""
        task.status = TaskStatus.EXPIRED
        task.error = f"expired: not started before {task.expires:%Y-%m-%d %H:%M:%S%z}"
        task.finished_at = datetime.now(UTC)
        task.lease_token = None
        log.info("task %s (%s) %s", task.id, task.name, task.error)
        try:
            await self._save_final(task)
        except (InvalidTransitionError, CorruptRecordError) as exc:
            log.info("task %s: expiry not recorded: %s", task.id, exc)
        await self._ack_quietly(reservation)

    async def _save_final(self, task: Task) -> None:
        """Store a final record; a workflow member's through its workflow, which counts
        it done in the same step."""
        if self._workflows is not None and WORKFLOW_HEADER in task.headers:
            await self._workflows.save_member(task)
        else:
            await self.storage.save(task, ttl=self._ttl(task))

    async def _claim(self, task: Task) -> str | None:
        """Put the payload of a task sent with a claim check back (read from its record,
        which holds it), before anything stores the task; else why it cannot run."""
        try:
            record = await self.storage.get(task.id)
        except CorruptRecordError as exc:
            return f"claim check: {exc}"
        if record is None or record.payload == CLAIMED:
            return "claim check: the record holding its payload is gone"
        task.payload = record.payload
        return None

    async def _with_inputs(self, reservation: Reservation, task: Task) -> Task | None:
        """The task to run: a workflow member with its parents' results put before its
        own arguments (or, for an ``on_error``, the failed member's failure), sealed
        values opened; ``None`` when they cannot be read, and the member is dead-lettered
        saying why. A copy: ``task`` keeps its own payload for a retry and its records."""
        codec = self.broker.codec
        try:
            values = await member_inputs(self.storage, task, codec.open_result)
            payload = with_leading(task.name, codec.open(task.payload), values)
        except (LookupError, ValueError, PayloadError, DecodeError) as exc:
            await self._dead(reservation, task, f"workflow inputs: {exc}", owned=True)
            return None
        return task.model_copy(update={"payload": payload})

    def _ttl(self, task: Task) -> float | None:
        """How long a final record is kept: the task's own ``result_ttl``, else the setting."""
        return self._final_ttl if task.result_ttl is None else task.result_ttl

    async def _hand_back(self, reservation: Reservation) -> None:
        await self._quietly(self.broker.nack(reservation))

    async def _ack_quietly(self, reservation: Reservation) -> None:
        await self._quietly(self.broker.ack(reservation))

    async def _quietly(self, call: Any) -> None:
        try:
            await call
        except StaleLeaseError as exc:
            log.warning("%s", exc)
