"""The schedule store (periodic tasks): definitions and state in hashes, ticks fired by Lua.

Each schedule is a hash ``sched:<id>`` under the prefix: ``def`` (the
:class:`~bgcoor_core.ScheduleDefinition` as JSON, replaced by every upsert) beside its
state, which only the scripts write: ``paused`` ("1" or "0"), ``since`` (epoch ms of the
first upsert, the server's clock), ``tick`` (the last tick, ms), ``task`` (the last task's
id), ``buffered`` (the buffered tick, ms), ``fired``, ``skipped`` and ``missed``. The
sorted set ``sched`` lists the ids (score 0, so in id order). Neither name can meet a queue
(``q:``), message (``m:``), record (``t:``) or index (``i:``) key.

:meth:`fire` sends every request in one write: one ``lua/fire.lua`` call per
:data:`FIRE_CHUNK` requests, on one connection so that they run in order. The script
applies each request whole (ledger, overlap against the last task's record, the record
and message stored as ``lua/enqueue.lua`` stores them), so any number of schedulers may
fire the same tick and one of them gets ``FIRED``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from redis.exceptions import NoScriptError

from bgcoor_core import Fire, FireOutcome, ScheduleDefinition, ScheduleEntry, ScheduleState

from ._base import RedisBase
from ._encoding import CHUNK, message_args, raise_for, record_args, text

log = logging.getLogger("bgcoor.redis")

#: Requests per fire script call: each may store a record and a message, as many per call
#: as an enqueue's chunk.
FIRE_CHUNK = CHUNK // 2
#: Definitions per upsert script call.
PUT_CHUNK = 1000
_NO_TASK = [""] * 12


def fire_args(request: Fire) -> list[Any]:
    """The 17 script arguments of one request (see ``lua/fire.lua``)."""
    if (request.task is None) != (request.message is None):
        raise ValueError(f"schedule {request.schedule_id}: a fire needs both task and message")
    if request.release and request.task is None:
        raise ValueError(f"schedule {request.schedule_id}: a release needs the task to enqueue")
    head = [
        request.schedule_id,
        request.tick_ms,
        request.overlap.value,
        request.missed,
        "1" if request.release else "",
    ]
    if request.task is None or request.message is None:
        return head + _NO_TASK
    return head + record_args(request.task) + message_args(request.message)


class RedisScheduleSide(RedisBase):
    """The :class:`~bgcoor_core.ScheduleStore` of a Redis backend; layout in the module
    docstring."""

    async def put_schedules(self, definitions: Sequence[ScheduleDefinition]) -> None:
        args = [part for d in definitions for part in (d.id, d.model_dump_json())]
        for start in range(0, len(args), 2 * PUT_CHUNK):
            await self.run("put_schedules", *args[start : start + 2 * PUT_CHUNK])

    async def get_schedules(self) -> list[ScheduleEntry]:
        reply = await self.run("get_schedules")
        entries = []
        for at in range(0, len(reply), 2):
            schedule_id = text(reply[at])
            try:
                entries.append(_entry(schedule_id, reply[at + 1]))
            except (ValueError, ValidationError) as exc:
                log.warning("schedule %r skipped: it cannot be read: %s", schedule_id, exc)
        return entries

    async def delete_schedule(self, schedule_id: str) -> bool:
        return bool(await self.run("delete_schedule", schedule_id))

    async def set_schedule_paused(self, schedule_id: str, paused: bool) -> bool:
        return bool(await self.run("pause_schedule", schedule_id, "1" if paused else "0"))

    async def fire(self, requests: Sequence[Fire]) -> list[FireOutcome]:
        encoded = [fire_args(request) for request in requests]  # all checked before sending
        calls = [
            [part for args in encoded[start : start + FIRE_CHUNK] for part in args]
            for start in range(0, len(encoded), FIRE_CHUNK)
        ]
        replies = [item for reply in await self._run_in_order("fire", calls) for item in reply]
        for item in replies:
            if isinstance(item, list):  # refused: it changed nothing, the others applied
                raise_for(item, text(item[1]))
        return [FireOutcome(text(item)) for item in replies]

    async def _run_in_order(self, name: str, calls: list[list[Any]]) -> list[Any]:
        """Run script ``name`` once per argument list, all in one write on one connection
        (so the server runs them in this order); their replies."""
        script = self._scripts[name]
        link = self.link()
        if not link.policy_ok:
            await link.check_policy()
        channel = min(link.channels, key=lambda c: (c.busy, c.queued))

        async def send_all(todo: list[int]) -> list[Any]:
            futures = [
                channel.send("EVALSHA", script.sha, 0, self.prefix, *calls[at]) for at in todo
            ]
            return await asyncio.gather(*futures, return_exceptions=True)

        replies = await send_all(list(range(len(calls))))
        refused = [at for at, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if refused:  # not cached (first use, or a restart), so those did not run
            await link.load(script)
            for at, reply in zip(refused, await send_all(refused), strict=True):
                replies[at] = reply
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies


def _entry(schedule_id: str, fields: Any) -> ScheduleEntry:
    """An entry from ``lua/get_schedules.lua``'s reply; ValueError if it cannot be read."""
    if not isinstance(fields, list):
        raise ValueError(text(fields))
    raw, paused, since, tick, task, buffered, fired, skipped, missed = fields
    if raw is None:
        raise ValueError("it has no definition (field def)")
    definition = ScheduleDefinition.model_validate_json(raw)
    if definition.id != schedule_id:
        raise ValueError(f"its definition is that of schedule {definition.id!r}")
    state = ScheduleState(
        paused=paused == b"1",
        since_ms=_number(since) or 0,
        last_tick_ms=_number(tick),
        last_task_id=None if task is None else text(task),
        buffered_tick_ms=_number(buffered),
        fired=_number(fired) or 0,
        skipped=_number(skipped) or 0,
        missed=_number(missed) or 0,
    )
    return ScheduleEntry(definition, state)


def _number(value: bytes | None) -> int | None:
    return None if value is None else int(value)
