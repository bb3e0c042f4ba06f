"""Queue limit contract: a broker declaring ``Capability.QUEUE_LIMITS``, paired with the
storage it enqueues into atomically, refuses a producer's enqueue that would take a queue
past its limit (:class:`~bgcoor_core.QueueFullError`), all or nothing, inside the step.

Needs ``broker`` and ``completion_storage`` fixtures, like :class:`UniqueContract`.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from .._broker import Broker, Capability
from .._errors import QueueFullError
from .._gates import GATE_HEADER, Gate
from .._manager import TaskManager
from .._storage import Storage
from .._task import Task, TaskStatus
from .._unique import UNIQUE_HEADER
from .._wiring import Backends
from ._helpers import ASYNC, DEFAULT, LONG_LEASE, make_task, require

NAME = "contract.limited"
OTHER = "contract-other"


def _tasks(n: int, queue: str = DEFAULT) -> list[Task]:
    return [make_task(NAME, queue=queue) for _ in range(n)]


class QueueLimitContract:
    """Mixin of the queue limit tests; see the module docstring."""

    @pytest.fixture
    def limited(self, broker: Broker, completion_storage: Storage | None) -> Backends:
        require(broker, Capability.QUEUE_LIMITS)
        if completion_storage is None:
            pytest.skip(f"{type(broker).__name__} has no storage to enqueue into atomically")
        return Backends.pair(broker, completion_storage).limit_queues({DEFAULT: 3})

    async def _enqueue(self, backends: Backends, tasks: list[Task]) -> None:
        atomic = backends.atomic_enqueue
        assert atomic is not None  # limit_queues refuses a pair without it
        await atomic.enqueue_atomically(tasks, [backends.broker.to_message(t) for t in tasks])

    async def _records(self, backends: Backends, tasks: list[Task]) -> list[Task | None]:
        return [await backends.storage.get(t.id) for t in tasks]

    @ASYNC
    async def test_an_enqueue_past_the_limit_is_refused_whole(self, limited: Backends) -> None:
        await self._enqueue(limited, _tasks(2))
        refused = _tasks(2)
        with pytest.raises(QueueFullError, match=rf"queue '{DEFAULT}' is full \(limit 3"):
            await self._enqueue(limited, refused)
        assert await self._records(limited, refused) == [None, None]  # no record, no message
        stats = await limited.broker.stats(DEFAULT)
        assert stats.ready == 2
        await self._enqueue(limited, _tasks(1))  # exactly up to the limit
        assert (await limited.broker.stats(DEFAULT)).ready == 3

    @ASYNC
    async def test_push_messages_is_limited_too(self, limited: Backends) -> None:
        broker = limited.broker
        with pytest.raises(QueueFullError):
            await broker.push_messages([broker.to_message(t) for t in _tasks(4)])
        assert (await broker.stats(DEFAULT)).ready == 0

    @ASYNC
    async def test_a_batch_larger_than_the_limit_says_so(self, limited: Backends) -> None:
        with pytest.raises(QueueFullError, match="a batch of 4 tasks"):
            await self._enqueue(limited, _tasks(4))

    @ASYNC
    async def test_leased_tasks_make_room_and_other_queues_are_free(
        self, limited: Backends
    ) -> None:
        broker = limited.broker
        await self._enqueue(limited, _tasks(3))
        await self._enqueue(limited, _tasks(5, OTHER))  # no limit there
        taken = await broker.reserve([DEFAULT], lease=LONG_LEASE, limit=2, timeout=0)
        assert len(taken) == 2
        await self._enqueue(limited, _tasks(2))  # leased ones are not waiting
        with pytest.raises(QueueFullError):
            await self._enqueue(limited, _tasks(1))
        await broker.nack(taken[0])  # a hand-back is never refused, even past the limit
        assert (await broker.stats(DEFAULT)).ready == 4

    @ASYNC
    async def test_scheduled_and_held_back_tasks_count(self, limited: Backends) -> None:
        broker = limited.broker
        later = _tasks(1)
        later[0].eta = later[0].created_at.replace(year=later[0].created_at.year + 1)
        await self._enqueue(limited, later)
        if Capability.LIMITS in broker.capabilities:
            held = _tasks(2)
            for task in held:
                task.headers[GATE_HEADER] = Gate("contract-k", concurrency=1).encode()
            await self._enqueue(limited, held)
            got = await broker.reserve([DEFAULT], lease=LONG_LEASE, limit=10, timeout=0)
            assert len(got) == 1  # the other is parked, still waiting
            await self._enqueue(limited, _tasks(1))
        else:
            await self._enqueue(limited, _tasks(2))
        with pytest.raises(QueueFullError):
            await self._enqueue(limited, _tasks(1))

    @ASYNC
    async def test_unique_enqueues_are_limited(self, limited: Backends) -> None:
        store = limited.uniques
        if store is None:
            pytest.skip("no unique key store")
        await self._enqueue(limited, _tasks(2))
        keyed = _tasks(2)
        for n, task in enumerate(keyed):
            task.headers[UNIQUE_HEADER] = f"contract-key-{n}-{task.id}"
        with pytest.raises(QueueFullError):
            await store.enqueue_unique(keyed, [limited.broker.to_message(t) for t in keyed])
        assert await self._records(limited, keyed) == [None, None]
        assert await store.enqueue_unique(keyed[:1], [limited.broker.to_message(keyed[0])]) == [
            None
        ]


async def check_a_manager_rejects_or_waits_for_room(url: str) -> None:
    """Through a :class:`~bgcoor_core.TaskManager` on ``url`` (broker and storage both),
    with ``queue_full="wait"``: a batch that can never fit is refused at once, and an
    enqueue into a full queue waits until a drain makes room, then is stored."""
    manager = TaskManager(
        broker_url=url,
        storage_url=url,
        queue_limits={"emails": 3},
        queue_full="wait",
        queue_full_timeout=10.0,
    )

    @manager.task(name="limits.mail", queue="emails")
    def mail(n: int) -> None: ...

    try:
        with pytest.raises(QueueFullError, match="a batch of 4 tasks for queue 'emails'"):
            await manager.submit_many([mail.build((n,), {}) for n in range(4)])  # never fits
        await manager.submit_many([mail.build((n,), {}) for n in range(3)])

        async def consume_later() -> None:
            await asyncio.sleep(0.3)
            await manager.drain(queues=["emails"])

        started = time.monotonic()
        consumer = asyncio.create_task(consume_later())
        handle = await mail.enqueue(3)  # waits until the drain makes room
        waited = time.monotonic() - started
        await consumer
        assert 0.25 <= waited < 5.0
        # Stored, not refused: the drain that made room may have run it already (it was
        # stored while the drain went on), else it waits, pending, for the next one.
        record = await manager.get(handle.id)
        assert record is not None
        assert record.status in (TaskStatus.PENDING, TaskStatus.SUCCEEDED)
        await manager.drain(queues=["emails"])
        assert (await manager.get(handle.id)).status is TaskStatus.SUCCEEDED
        assert (await manager.storage.counts())[TaskStatus.SUCCEEDED] == 4
    finally:
        await manager.close()
