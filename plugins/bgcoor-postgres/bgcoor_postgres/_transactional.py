"""Enqueue inside the caller's own transaction.

::

    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO orders ...")
        handle = await enqueue_in(conn, send_receipt, order_id)

The task's record and message are written on ``conn``: they exist only if the
transaction commits, and workers are woken at the commit.
"""

from __future__ import annotations

from typing import Any, ParamSpec, TypeVar

from bgcoor_core import ConfigurationError, TaskFunction, TaskHandle, TaskManager

from ._backend import PostgresBackend
from ._database import Conn

P = ParamSpec("P")
R = TypeVar("R")


def backend_of(manager: TaskManager) -> PostgresBackend:
    """The manager's PostgreSQL backend, which must be its broker and storage at once."""
    broker = manager.broker
    if not isinstance(broker, PostgresBackend) or not broker.shares_store_with(manager.storage):
        raise ConfigurationError(
            "transactional enqueue needs broker and storage on the same PostgreSQL schema "
            f"(broker is {type(broker).__name__}, storage is {type(manager.storage).__name__})"
        )
    return broker


async def enqueue_in(
    conn: Conn, fn: TaskFunction[P, R], /, *args: P.args, **kwargs: P.kwargs
) -> TaskHandle[R]:
    """Enqueue ``fn(*args, **kwargs)`` on ``conn``, inside its current transaction.

    Arguments are validated as by ``fn.enqueue``. Lifecycle hooks do not see the task
    as enqueued (it may yet be rolled back). Use ``fn.build(args, kwargs, delay=...)``
    with :meth:`PostgresBackend.enqueue_in` for per-call options (``unique_key=`` too).
    """
    backend = backend_of(fn.manager)
    task = fn.build(args, kwargs)
    (holder,) = await backend.enqueue_in(conn, [task])
    decode: Any = fn.decode_result
    if holder is not None:  # (the task's default headers carry a unique key)
        return TaskHandle(fn.manager, holder, decode, deduplicated=True)
    return TaskHandle(fn.manager, task.id, decode)
