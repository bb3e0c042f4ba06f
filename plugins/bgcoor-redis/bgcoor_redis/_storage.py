"""The storage half: task records as hashes, found through index sets, never by scanning.

Each record is a hash ``t:<id>`` (status, lease token, name, queue, the task as JSON, and
what a reserve changed when it marked the record running: see ``lua/common.lua``).
Index sets ``i:all``, ``i:s:<status>``, ``i:n:<name>`` and ``i:q:<queue>`` hold ids with
score 0, so ``ZRANGEBYLEX`` walks them in id order (ids are time-sortable UUIDv7 strings)
and ``ZCARD`` counts them. A record saved with a TTL expires in Redis and is listed in
``i:exp`` (by expiry time) so its index entries are removed before anything is counted or
listed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError, ResponseError

from bgcoor_core import CorruptRecordError, Storage, Task, TaskStatus
from bgcoor_core.kit import check_page, pause_within

from ._base import RedisBase
from ._encoding import decode_record, raise_for, record_args, text, ttl_arg
from ._notices import Subscriber

log = logging.getLogger("bgcoor.redis")

_STATUSES = list(TaskStatus)
_STATUS_NAMES = [status.value for status in TaskStatus]


class RedisStorageSide(RedisBase, Storage):
    """Task records; see the module docstring for the layout."""

    async def save(self, task: Task, *, ttl: float | None = None) -> None:
        reply = await self.run("save", *record_args(task), ttl_arg(ttl))
        raise_for(reply, task.id, task.status.value)

    async def save_many(self, tasks: Sequence[Task]) -> None:
        await self.enqueue(tasks, ())

    async def get(self, task_id: str) -> Task | None:
        key = self.key("t", task_id)
        try:
            status, raw, started, token = await self.command("HMGET", key, "s", "j", "r", "k")
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            raise CorruptRecordError(
                f"stored record of task {task_id} cannot be read: {key} is not a hash"
            ) from None
        if status is None and raw is None:
            return None
        return decode_record(task_id, raw, started, token, status)

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
        filters = [status.value if status else "", name or "", queue or "", after or ""]
        reply = await self.run("list", *filters, limit)
        return [
            task
            for at in range(0, len(reply), 5)
            if (task := _listed(*reply[at : at + 5])) is not None
        ]

    async def counts(self) -> dict[TaskStatus, int]:
        reply = await self.run("counts", *_STATUS_NAMES)
        return dict(zip(_STATUSES, reply, strict=True))

    async def delete_expired(self) -> int:
        return int(await self.run("delete_expired"))

    async def wait(self, task_id: str, *, timeout: float | None) -> Task:
        """The record once final: read now, else the one its final write publishes (see
        ``_notices.py``), with a look at the record every ``result_safety_poll`` seconds
        anyway. Without notices (the subscription failed), poll from 1 ms doubling up to
        ``result_poll_max``. Each look is one small script call that returns the record
        only once final."""
        deadline = None if timeout is None else time.monotonic() + timeout
        subscriber = self.link().subscriber
        channel = self.key("done", task_id).encode()
        notice = await self._watch(subscriber, channel)
        interval = 0.001
        try:
            while True:
                raw = await self.run("final", task_id)
                if raw is not None:
                    return decode_record(task_id, raw)
                pause = interval if notice is None else self.options.result_safety_poll
                pause = pause_within(deadline, pause, task_id, timeout)
                if notice is None:
                    await asyncio.sleep(pause)
                    interval = min(interval * 2, self.options.result_poll_max)
                    continue
                await asyncio.wait([notice], timeout=pause)
                if notice.done():
                    if notice.exception() is None:  # the final record itself
                        return decode_record(task_id, notice.result())
                    subscriber.unwatch(channel, notice)  # its connection was lost
                    notice = await self._watch(subscriber, channel)
        finally:
            if notice is not None:
                subscriber.unwatch(channel, notice)

    @staticmethod
    async def _watch(subscriber: Subscriber, channel: bytes) -> asyncio.Future[bytes] | None:
        try:
            return await subscriber.watch(channel)
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("waiting for %s by polling: no notices (%s)", channel, exc)
            return None


def _listed(task_id: Any, status: Any, raw: Any, started: Any, token: Any) -> Task | None:
    """One record of a ``list`` reply, or ``None`` (and a warning) if it cannot be read."""
    try:
        if status is None:
            raise CorruptRecordError(f"stored record of task {text(task_id)} is not a hash")
        return decode_record(text(task_id), raw, started, token, status)
    except CorruptRecordError as exc:
        log.warning("listing skips a record: %s", exc)
        return None
