"""The broker half: messages in sorted sets, moved between them by Lua scripts.

Per queue ``q`` (keys under the prefix): ``q:<q>:ready`` (score: priority, then push
order), ``q:<q>:later`` (score: eta), ``q:<q>:leased`` (score: lease deadline),
``q:<q>:dead`` (score: when), ``q:<q>:parked`` (messages waiting for a concurrency slot)
and the list ``q:<q>:wake`` that idle consumers block on. Each message is a hash
``m:<id>``. Deadlines use the server's clock (``TIME``), so hosts with skewed clocks agree
on when a lease expires. Rate and concurrency limits keep their state per gate key under
``gate:<key>:`` (see ``lua/common.lua``); a queue limit counts a queue's ready, scheduled
and parked sets, in the enqueue scripts (``lua/common.lua``, "Queue limits").
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from bgcoor_core import (
    Broker,
    Capability,
    DeadLetter,
    Message,
    QueueStats,
    Reservation,
    StaleLeaseError,
    Task,
)
from bgcoor_core.kit import check_page, validate_queue_name

from ._base import RedisBase
from ._channel import Ticket
from ._encoding import text

#: Longest first blocking wait of a reserve, before it knows when something falls due.
FIRST_WAIT = 0.05
#: The server ends a blocking command's timeout on its clock ticks (``hz``, 10 a second by
#: default), so a ``BLPOP`` of 50 ms may last 100: a task falling due (a delay, a retry, a
#: rate limit's slot) sooner than this is waited for here, with a plain reserve after it.
BLOCK_PRECISION = 0.1

log = logging.getLogger("bgcoor.redis")


class RedisBrokerSide(RedisBase, Broker):
    """The capabilities listed; see the module docstring for the layout, and
    ``lua/common.lua`` ("Rate and concurrency limits") for how the reserve enforces
    ``Message.gate``."""

    # Listed rather than "all of them": a capability added to the core is not claimed
    # before this backend implements it.
    capabilities = frozenset(
        {
            Capability.PRIORITIES,
            Capability.DELAYS,
            Capability.LEASE_EXTENSION,
            Capability.DEAD_LETTER,
            Capability.BATCH_RESERVE,
            Capability.LIMITS,
            Capability.QUEUE_LIMITS,
        }
    )

    # -- producing ---------------------------------------------------------------------

    async def push_messages(self, messages: Sequence[Message]) -> None:
        await self.enqueue((), messages)

    # -- consuming ---------------------------------------------------------------------

    async def reserve(
        self, queues: Sequence[str], *, lease: float, limit: int = 1, timeout: float = 0.0
    ) -> list[Reservation]:
        names = [validate_queue_name(queue) for queue in queues]
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        give_up = time.monotonic() + timeout
        if timeout > 0 and self._drained.get(tuple(names)):
            # The last look left these queues empty: block at once. A wake-up is pending
            # whenever something is ready (a push, or a reserve that left work behind,
            # leaves one), so this returns at once then, and saves a round trip otherwise.
            # Only a wake-up lost with a connection, or a task falling due meanwhile, waits
            # for this short first timeout.
            # A scheduled task falling due (a delay, a retry, a rate limit's slot) wakes no
            # one: the last look said when the first would, so the wait ends then.
            falls_due = self._falls_due.get(tuple(names), math.inf) - time.monotonic()
            wait = min(timeout, FIRST_WAIT)
            if falls_due < wait:
                await asyncio.sleep(max(falls_due, 0.0))
                taken, due = await self._take(names, lease, limit)
            else:
                taken, due = await self._wait_and_take(names, lease, limit, wait)
        else:
            taken, due = await self._take(names, lease, limit)
        while not taken:
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                break
            wait = min(remaining, due, self.options.max_block)
            if due < BLOCK_PRECISION and wait == due:
                # Falls due sooner than the server would end a blocking wait: sleep here.
                await asyncio.sleep(max(wait, 0.0))
                taken, due = await self._take(names, lease, limit)
            else:
                taken, due = await self._wait_and_take(names, lease, limit, wait)
        return taken

    @staticmethod
    def _reserve_args(queues: list[str], lease: float, limit: int) -> list[Any]:
        """Script arguments; the third, a fresh nonce, prefixes the leases' tokens."""
        return [lease, limit, os.urandom(6).hex() + ".", *queues]

    async def _take(
        self, queues: list[str], lease: float, limit: int
    ) -> tuple[list[Reservation], float]:
        """One reserve script call: the reservations, and seconds until one could be due.

        If our caller is cancelled while the script runs, whatever it reserved is handed
        straight back instead of waiting out its lease.
        """
        if not queues:
            return [], math.inf
        args = self._reserve_args(queues, lease, limit)
        job = asyncio.ensure_future(self.run("reserve", *args))
        try:
            reply = await asyncio.shield(job)
        except asyncio.CancelledError:
            self.chore(self._abandon(job, args), "handing back a cancelled reservation")
            raise
        return self._parse_reserved(reply, args)

    async def _wait_and_take(
        self, queues: list[str], lease: float, limit: int, wait: float
    ) -> tuple[list[Reservation], float]:
        """Block on the queues' wake lists for up to ``wait`` seconds, then reserve.

        Both go in one write on a blocking connection: the server runs the reserve script
        the moment ``BLPOP`` returns (woken by a push, or timed out because something falls
        due), so an idle consumer gets a new task in one round trip. A cancelled caller's
        exchange is cut short with ``CLIENT UNBLOCK`` and what it reserved handed back.
        """
        if not queues:
            await asyncio.sleep(wait)
            return [], math.inf
        script = self._scripts["reserve"]
        args = self._reserve_args(queues, lease, limit)
        commands = [
            ("BLPOP", *(self.key("q", queue, "wake") for queue in queues), f"{wait:.3f}"),
            ("EVALSHA", script.sha, 0, self.prefix, *args),
        ]
        ticket = Ticket()
        job = asyncio.ensure_future(self.link().blocking.exchange(commands, wait, ticket))
        try:
            replies = await asyncio.shield(job)
        except asyncio.CancelledError:
            self.chore(self._abandon(job, args, ticket), "handing back a cancelled reservation")
            raise
        assert replies is not None  # only an abandoned ticket gets no replies
        if isinstance(replies[0], ResponseError) and "WRONGTYPE" in str(replies[0]):
            # A wake list holds something else, so BLPOP fails at once: repair it, or
            # every wait would spin.
            log.error("a wake list of queues %s held a value of the wrong type", queues)
            await self.run("repair_wake", *queues)
        reply = replies[1]
        if isinstance(reply, NoScriptError):  # the server lost its script cache
            reply = await self.run("reserve", *args)
        elif isinstance(reply, Exception):
            raise reply
        return self._parse_reserved(reply, args)

    async def _abandon(
        self, job: asyncio.Future[Any], args: list[Any], ticket: Ticket | None = None
    ) -> None:
        """Hand back what ``job`` (a reserve whose caller was cancelled) reserves.

        A blocking exchange (with a ``ticket``) is cut short by ``CLIENT UNBLOCK``, or
        never sent at all if it had not been yet.
        """
        if ticket is not None:
            ticket.abandoned = True
            for _ in range(3):
                if job.done() or ticket.client_id is None:
                    break
                await self.command("CLIENT", "UNBLOCK", ticket.client_id)
                await asyncio.wait([job], timeout=0.05)
        reply = await job
        if ticket is not None:
            reply = None if reply is None else reply[1]
        if isinstance(reply, list):
            taken, _ = self._parse_reserved(reply, args)
            pairs = [part for r in taken for part in (r.task.id, r.token)]
            if pairs:
                await self.run("release", *pairs)

    def _parse_reserved(self, reply: list[Any], args: list[Any]) -> tuple[list[Reservation], float]:
        """The reserve script's reply: reservations, and seconds until one could be due."""
        nonce, queues = args[2], args[3:]
        self._drained[tuple(queues)] = reply[2] == 0
        self._falls_due[tuple(queues)] = (
            time.monotonic() + float(reply[1]) if reply[1] else math.inf
        )
        taken = []
        for n, at in enumerate(range(3, len(reply), 2), start=1):
            raw_id, index, deliveries, lost, started = reply[at].rsplit(b" ", 4)
            queue, token = queues[int(index)], f"{nonce}{n}"
            try:
                message_id = raw_id.decode()
            except UnicodeDecodeError:
                self._dead_letter_unaddressable(raw_id, token, queue)
                continue
            if started == b"!":  # the script found the message or its record unreadable
                # it quotes what it found, which may be any bytes
                defect: str | None = reply[at + 1].decode("utf-8", "backslashreplace")
                task = Task.model_construct(id=message_id, name="<corrupt>", queue=queue)
            else:
                task, defect = self.decode(message_id, queue, reply[at + 1])
            begun = None if started in (b"0", b"!") else datetime.fromtimestamp(float(started), UTC)
            taken.append(
                Reservation(
                    task, token, int(deliveries), int(lost), defect, begun is not None, begun
                )
            )
        return taken, float(reply[1]) if reply[1] else math.inf

    def _dead_letter_unaddressable(self, raw_id: bytes, token: str, queue: str) -> None:
        """A message whose id is not UTF-8 (written by something else) cannot be a Task;
        dead-letter it here, by its raw id, rather than hand it to a worker."""
        reason = "corrupt message: its id is not UTF-8"
        log.error("queue %s: message %r dead-lettered: %s", queue, raw_id, reason)
        work = self.run("dead_letter", raw_id, token, reason, b"")
        self.chore(work, f"dead-lettering message {raw_id!r}")

    async def ack(self, reservation: Reservation) -> None:
        await self._settle("ack", reservation)

    async def nack(
        self, reservation: Reservation, *, delay: float = 0.0, task: Task | None = None
    ) -> None:
        body = self.codec.encode(task) if task is not None else b""
        await self._settle("nack", reservation, max(delay, 0.0), body)

    async def extend(self, reservation: Reservation, lease: float) -> None:
        await self._settle("extend", reservation, lease)

    async def dead_letter(
        self, reservation: Reservation, reason: str, task: Task | None = None
    ) -> None:
        body = self.codec.encode(task) if task is not None else b""
        await self._settle("dead_letter", reservation, reason, body)

    async def _settle(self, script: str, reservation: Reservation, *args: Any) -> None:
        """Run a script that acts only while ``reservation`` holds the message's lease."""
        if not await self.run(script, reservation.task.id, reservation.token, *args):
            raise StaleLeaseError(
                f"task {reservation.task.id}: lease {reservation.token[:8]} is no longer held"
            )

    # -- dead letters ------------------------------------------------------------------

    async def dead_letters(
        self, queue: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        check_page(limit)
        reply = await self.run("dead_letters", queue, max(offset, 0), limit)
        letters = []
        for at in range(0, len(reply), 4):
            message_id, body, reason, dead_at = reply[at : at + 4]
            task, defect = self.decode(text(message_id), queue, body or b"")
            letters.append(
                DeadLetter(
                    text(message_id),
                    queue,
                    text(reason or b""),
                    None if defect else task,
                    _seconds(dead_at),
                )
            )
        return letters

    async def requeue_dead(self, queue: str, ids: Sequence[str] | None = None) -> list[str]:
        if ids is None:
            moved = await self.run("requeue_dead", queue, "all")
        elif not ids:
            return []
        else:
            moved = await self.run("requeue_dead", queue, "ids", *ids)
        return [text(message_id) for message_id in moved]

    async def purge_dead(self, queue: str) -> int:
        return int(await self.run("purge_dead", queue))

    # -- inspecting --------------------------------------------------------------------

    async def stats(self, queue: str) -> QueueStats:
        ready, scheduled, reserved, dead = await self.run("stats", queue)
        return QueueStats(ready, scheduled, reserved, dead)

    async def purge(self, queue: str) -> int:
        return int(await self.run("purge", queue))

    async def queues(self) -> list[str]:
        try:
            names = await self.command("SMEMBERS", self.key("queues"))
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            # the next enqueue replaces it; until then only the configured queues show
            log.error("%s holds a value of the wrong type: queues unknown", self.key("queues"))
            return []
        return sorted(text(name) for name in names)


def _seconds(value: bytes | None) -> float:
    """A dead letter's time; one that was overwritten with something else reads as 0."""
    try:
        return float(value or b"0")
    except ValueError:
        return 0.0
