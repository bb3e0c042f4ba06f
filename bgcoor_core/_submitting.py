"""Submitting tasks: records and messages stored together (or one after the other), and
enqueue steps tried again with the same ids when a connection breaks mid-call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from ._broker import Message
from ._errors import CapabilityError, DuplicateTaskError, EnqueueUncertainError, QueueFullError
from ._plugins import PluginHost
from ._storage import Storage
from ._task import Task, TaskStatus
from ._unique import UNIQUE_HEADER, UniqueStore
from ._wiring import Backends

T = TypeVar("T")


async def submit(
    backends: Backends, host: PluginHost, tasks: Sequence[Task], retries: int
) -> list[str | None] | None:
    """Store the tasks' records, then push their messages (one step when the broker is
    also the storage: :class:`~bgcoor_core.AtomicEnqueue`). Every task is validated and
    encoded before anything is written. With unique keys among them, the holders (see
    :func:`_submit_unique`); else ``None``."""
    broker, storage = backends.broker, backends.storage
    for task in tasks:  # plugins add headers before anything is encoded
        host.before_enqueue(task)
    messages = [broker.to_message(t) for t in tasks]
    if any(UNIQUE_HEADER in t.headers for t in tasks):
        return await _submit_unique(backends, host, tasks, messages, retries)
    atomic = backends.atomic_enqueue
    if atomic is not None:
        await when_room(
            backends.queue_wait,
            lambda: idempotent(
                lambda: atomic.enqueue_atomically(tasks, messages),
                tasks,
                broker.transient_errors,
                storage,
                retries,
            ),
        )
    else:
        stored = await idempotent(
            lambda: storage.save_many(tasks), tasks, storage.transient_errors, storage, retries
        )
        if stored is None or stored.status in (TaskStatus.PENDING, TaskStatus.SCHEDULED):
            await idempotent(
                lambda: broker.push_messages(messages),
                tasks,
                broker.transient_errors,
                storage,
                retries,
            )
    for task in tasks:
        host.task_enqueued(task)
    return None


async def _submit_unique(
    backends: Backends,
    host: PluginHost,
    tasks: Sequence[Task],
    messages: Sequence[Message],
    retries: int,
) -> list[str | None]:
    """Enqueue through the backends' :class:`~bgcoor_core.UniqueStore`: for each task,
    the id of the task holding its key (it was not enqueued), or ``None``."""
    store = backends.uniques
    if store is None:
        raise CapabilityError(
            f"{type(backends.broker).__name__} with {type(backends.storage).__name__} "
            "cannot enforce unique_key (it needs a backend that takes the key in the step "
            "that enqueues: memory, SQLite, Redis or PostgreSQL)"
        )
    holders = await when_room(
        backends.queue_wait,
        lambda: _unique_steps(
            store, backends.storage, tasks, messages, backends.broker.transient_errors, retries
        ),
    )
    for task, holder in zip(tasks, holders, strict=True):
        if holder is None:
            host.task_enqueued(task)
    return holders


#: How often a producer waiting for room in a full queue tries again, at most.
ROOM_POLL_MAX = 0.5


async def when_room(wait: float | None, step: Callable[[], Awaitable[T]]) -> T:
    """Run an enqueue ``step``; when it finds its queue full (:class:`QueueFullError`:
    nothing was stored) and ``wait`` is set, try it again, backing off from 10 ms to
    :data:`ROOM_POLL_MAX`, until ``wait`` seconds have passed. A batch larger than the
    limit itself can never fit and is refused at once."""
    if wait is None:
        return await step()
    give_up = time.monotonic() + wait
    pause = 0.01
    while True:
        try:
            return await step()
        except QueueFullError as exc:
            left = give_up - time.monotonic()
            if exc.too_large:
                raise
            if left <= 0:
                raise QueueFullError(exc.queue, exc.limit, waited=wait) from None
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, ROOM_POLL_MAX)


async def _unique_steps(
    store: UniqueStore,
    storage: Storage,
    tasks: Sequence[Task],
    messages: Sequence[Message],
    transient: tuple[type[BaseException], ...],
    retries: int,
) -> list[str | None]:
    """``store.enqueue_unique``, tried again with the same tasks when the connection
    fails mid-call. A duplicate that is some of these very tasks (an earlier try went
    through) is success for them; the others were deduplicated by that try, and one more
    step finds their holders (or enqueues them, if their keys came free meanwhile)."""
    for attempt in range(retries + 1):
        try:
            return await store.enqueue_unique(tasks, messages)
        except DuplicateTaskError:
            stored = [await _stored_as_is(storage, task) is not None for task in tasks]
            if not any(stored):
                raise
            rest = [i for i, done in enumerate(stored) if not done]
            holders: list[str | None] = [None] * len(tasks)
            if rest:
                found = await _unique_steps(
                    store,
                    storage,
                    [tasks[i] for i in rest],
                    [messages[i] for i in rest],
                    transient,
                    retries,
                )
                for i, holder in zip(rest, found, strict=True):
                    holders[i] = holder
            return holders
        except transient as exc:
            if attempt == retries:
                raise EnqueueUncertainError([t.id for t in tasks], exc) from exc
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
    raise AssertionError("unreachable")


async def idempotent(
    call: Callable[[], Awaitable[None]],
    tasks: Sequence[Task],
    transient: tuple[type[BaseException], ...],
    storage: Storage,
    retries: int,
) -> Task | None:
    """Run an enqueue step; when the connection fails mid-call, try again with the same
    tasks. A duplicate that is these very tasks (an earlier try, or an earlier submit
    that ended in :class:`EnqueueUncertainError`, went through) is success, and its
    stored record is returned; any other duplicate is an error. Out of retries, the
    error says the outcome is unknown."""
    for attempt in range(retries + 1):
        try:
            await call()
            return None
        except DuplicateTaskError:
            record = await _stored_as_is(storage, tasks[0])
            if record is None:
                raise
            return record
        except transient as exc:
            if attempt == retries:
                raise EnqueueUncertainError([t.id for t in tasks], exc) from exc
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
    raise AssertionError("unreachable")


async def _stored_as_is(storage: Storage, task: Task) -> Task | None:
    """The stored record of ``task`` if it is this very task (its id, name, queue and
    creation time: the same call submitted again), else ``None``. Batches are stored
    all or none, so the first task speaks for all."""
    record = await storage.get(task.id)
    same = record is not None and (record.name, record.queue, record.created_at) == (
        task.name,
        task.queue,
        task.created_at,
    )
    return record if same else None
