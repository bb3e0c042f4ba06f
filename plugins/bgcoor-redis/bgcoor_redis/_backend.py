"""RedisBackend: broker and storage over one Redis database, one object for both roles."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bgcoor_core import Codec, ConfigurationError, Message, Reservation, Storage, Task
from bgcoor_core.kit import Coalescer

from ._base import per_loop
from ._broker import RedisBrokerSide
from ._encoding import CHUNK, raise_for, record_args, text, ttl_arg
from ._options import RedisTarget, parse_redis_url
from ._schedules import RedisScheduleSide
from ._storage import RedisStorageSide
from ._uniques import RedisUniques
from ._workflows import RedisWorkflows

#: Version of the key layout; ``migrate()`` records it under ``<prefix>:layout``.
LAYOUT_VERSION = 1


class RedisBackend(RedisBrokerSide, RedisStorageSide, RedisScheduleSide):
    """Broker, storage and schedule store in one Redis database, under one key prefix.

    ``RedisBackend("redis://127.0.0.1:6379/0?prefix=shop")``. When the broker and storage
    URLs are equal, one object serves both, and a task's outcome is stored and its
    message acknowledged by one script (:meth:`complete`); its record and message are
    created together as well (:meth:`enqueue_atomically`), a schedule's tick is fired
    into it by one script (:meth:`fire`), a workflow member's outcome is stored and
    its workflow stepped by one script (:meth:`workflow_store`), and a batch of tasks with
    unique keys is enqueued, each key checked and taken, by one script (:meth:`unique_store`).
    """

    def __init__(self, url: str | RedisTarget, codec: Codec | None = None) -> None:
        target = parse_redis_url(url) if isinstance(url, str) else url
        super().__init__(target, codec)
        self.wait_poll_max = target.options.result_poll_max
        self._outcomes: dict[asyncio.AbstractEventLoop, Coalescer[_Outcome, None]] = {}

    async def preflight(self) -> None:
        """A worker refuses to start on a server that would evict queued tasks."""
        link = self.link()
        if not link.policy_ok:
            await link.check_policy()

    def shares_store_with(self, storage: Storage) -> bool:
        """True for this object, or another one on the same database and prefix."""
        if not isinstance(storage, RedisBackend):
            return False
        mine, theirs = self.target, storage.target
        return (mine.host, mine.port, mine.db, mine.tls, self.prefix) == (
            theirs.host,
            theirs.port,
            theirs.db,
            theirs.tls,
            storage.prefix,
        )

    def workflow_store(self, storage: Storage) -> RedisWorkflows | None:
        """Workflows stepped by Lua, when ``storage`` is this backend's own keys."""
        return RedisWorkflows(self) if self.shares_store_with(storage) else None

    def unique_store(self, storage: Storage) -> RedisUniques | None:
        """Unique keys taken by Lua in the enqueue's own script, when ``storage`` is this
        backend's own keys."""
        return RedisUniques(self) if self.shares_store_with(storage) else None

    async def enqueue_atomically(self, tasks: Sequence[Task], messages: Sequence[Message]) -> None:
        await self.enqueue(tasks, messages)

    async def complete(self, reservation: Reservation, task: Task, *, ttl: float | None) -> None:
        """Store ``task`` (the outcome) and ack its message in one atomic step. Outcomes
        that arrive together (a batch of tasks finishing at once) share one script call,
        each still stored or refused on its own (:class:`~bgcoor_core.kit.Coalescer`)."""
        _, *record = record_args(task)
        args = [reservation.task.id, reservation.token, *record, ttl_arg(ttl)]
        await self._outcome_batches().submit(_Outcome(task.id, task.status.value, args))

    def _outcome_batches(self) -> Coalescer[_Outcome, None]:
        return per_loop(
            self._outcomes,
            lambda: Coalescer(self._complete, key=lambda o: o.args[0], max_batch=CHUNK // 2),
        )

    async def _complete(self, outcomes: Sequence[_Outcome]) -> list[BaseException | None]:
        replies = await self.run("complete", *(a for o in outcomes for a in o.args))
        verdicts: list[BaseException | None] = []
        for outcome, reply in zip(outcomes, replies, strict=True):
            try:
                raise_for(reply, outcome.task_id, outcome.status)
            except Exception as exc:
                verdicts.append(exc)
            else:
                verdicts.append(None)
        return verdicts

    async def close(self) -> None:
        batches = self._outcomes.get(asyncio.get_running_loop())
        if batches is not None:
            await batches.drain()
        await super().close()

    async def migrate(self) -> list[str]:
        """Record the key layout version on first use; refuse a newer layout."""
        key = self.key("layout")
        if await self.command("SET", key, LAYOUT_VERSION, "NX"):
            return [f"{self.target.safe_url}: key layout version {LAYOUT_VERSION}"]
        found = int(text(await self.command("GET", key)))
        if found > LAYOUT_VERSION:
            raise ConfigurationError(
                f"{self.target.safe_url}: keys under prefix {self.prefix!r} use layout version "
                f"{found}, newer than this bgcoor-redis supports ({LAYOUT_VERSION}); upgrade it"
            )
        return []


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One task's outcome as the complete script takes it (``args``), with what a
    refusal of it names."""

    task_id: str
    status: str
    args: list[Any]
