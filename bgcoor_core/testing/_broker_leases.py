"""Broker contract, part 2: leases, acknowledgement, redelivery and stale tokens."""

from __future__ import annotations

import asyncio

import pytest

from .._broker import AtomicCompletion, AtomicEnqueue, Broker, Capability, QueueStats, Reservation
from .._errors import DuplicateTaskError, StaleLeaseError
from .._executor import Executor
from .._settings import Settings
from .._storage import Storage
from .._task import Task, TaskStatus
from .._task_registry import TaskRegistry
from ._helpers import (
    ASYNC,
    DEFAULT,
    EARLY,
    LEASE,
    LONG_LEASE,
    SLACK,
    Stopwatch,
    make_task,
    require,
    reserve_one,
)


async def _redelivered(broker: Broker) -> tuple[Reservation, Reservation]:
    """Push a task, let its first lease expire, reserve it again: (stale, current)."""
    await broker.push(make_task())
    stale = await reserve_one(broker, lease=LEASE)
    current = await reserve_one(broker, timeout=LEASE + SLACK)
    assert current.task.id == stale.task.id
    return stale, current


async def _started(
    broker: Broker, storage: Storage | None, lease: float
) -> tuple[Storage, Task, Reservation]:
    """A task with a record, reserved by a broker that marked the record running; skips
    the test for a broker that writes no records or does not start them."""
    if storage is None or not getattr(broker, "shares_store_with", lambda _: False)(storage):
        pytest.skip("no storage this broker writes records into")
    task = make_task()
    await storage.save(task)
    await broker.push(task)
    reservation = await reserve_one(broker, lease=lease)
    if not reservation.started:
        pytest.skip(f"{type(broker).__name__} does not mark records running as it reserves")
    return storage, task, reservation


class _Done:
    """A handler that returns ``"done"``."""

    async def run(self, payload: object) -> str:
        return "done"


class BrokerLeaseTests:
    pytestmark = [ASYNC]

    async def test_lease_expiry_redelivers_with_a_new_token(self, broker: Broker) -> None:
        task = make_task()
        await broker.push(task)
        clock = Stopwatch()
        first = await reserve_one(broker, lease=LEASE)
        early = await broker.reserve([DEFAULT], lease=LEASE, timeout=0)
        stats = await broker.stats(DEFAULT)
        if clock.elapsed < LEASE:
            assert early == [], "delivered again while the first lease held"
            assert (stats.ready, stats.reserved) == (0, 1)
        second = await reserve_one(broker, lease=LEASE, timeout=LEASE + SLACK)
        assert clock.elapsed >= LEASE - EARLY, "redelivered before the lease expired"
        assert second.task == task
        assert second.token != first.token
        assert (second.deliveries, second.lost) == (2, 1)
        third = await reserve_one(broker, timeout=LEASE + SLACK)
        assert third.token not in {first.token, second.token}
        assert (third.deliveries, third.lost) == (3, 2)
        await broker.ack(third)

    async def test_stale_token_refused_by_ack_and_nack(self, broker: Broker) -> None:
        stale, current = await _redelivered(broker)
        with pytest.raises(StaleLeaseError):
            await broker.ack(stale)
        with pytest.raises(StaleLeaseError):
            await broker.nack(stale)
        with pytest.raises(StaleLeaseError):
            await broker.nack(stale, task=stale.task.model_copy(update={"attempts": 9}))
        # None of that touched the current holder's lease.
        assert await broker.reserve([DEFAULT], lease=LONG_LEASE, timeout=0) == []
        assert (await broker.stats(DEFAULT)).reserved == 1
        await broker.ack(current)
        assert await broker.stats(DEFAULT) == QueueStats()

    async def test_stale_token_refused_by_extend(self, broker: Broker) -> None:
        require(broker, Capability.LEASE_EXTENSION)
        stale, current = await _redelivered(broker)
        with pytest.raises(StaleLeaseError):
            await broker.extend(stale, LONG_LEASE)
        await broker.ack(current)

    async def test_stale_token_refused_by_dead_letter(self, broker: Broker) -> None:
        require(broker, Capability.DEAD_LETTER)
        stale, current = await _redelivered(broker)
        with pytest.raises(StaleLeaseError):
            await broker.dead_letter(stale, "from a zombie")
        assert await broker.dead_letters(DEFAULT) == []
        await broker.ack(current)

    async def test_unknown_token_refused(self, broker: Broker) -> None:
        task = make_task()
        await broker.push(task)
        held = await reserve_one(broker)
        with pytest.raises(StaleLeaseError):
            await broker.ack(Reservation(task, "not-a-token"))
        with pytest.raises(StaleLeaseError):
            await broker.ack(Reservation(make_task(), held.token))  # a task never pushed
        await broker.ack(held)

    async def test_ack_removes_for_good(self, broker: Broker) -> None:
        await broker.push(make_task())
        reservation = await reserve_one(broker, lease=LEASE)
        await broker.ack(reservation)
        assert await broker.reserve([DEFAULT], lease=LEASE, timeout=LEASE + 0.2) == []
        assert await broker.stats(DEFAULT) == QueueStats()
        with pytest.raises(StaleLeaseError):
            await broker.ack(reservation)

    async def test_nack_hands_back_at_once_and_is_not_lost(self, broker: Broker) -> None:
        task = make_task()
        await broker.push(task)
        first = await reserve_one(broker)  # a long lease: only the nack can free it
        await broker.nack(first)
        second = await reserve_one(broker)
        assert second.task == task
        assert (second.deliveries, second.lost) == (2, 0)
        with pytest.raises(StaleLeaseError):
            await broker.ack(first)
        await broker.ack(second)

    async def test_nack_with_task_replaces_the_body(self, broker: Broker) -> None:
        await broker.push(make_task(payload={"n": 1}))
        first = await reserve_one(broker)
        updated = first.task.model_copy(
            update={"attempts": 3, "status": TaskStatus.RETRYING, "error": "ValueError: boom"}
        )
        await broker.nack(first, task=updated)
        second = await reserve_one(broker)
        assert second.task == updated
        await broker.ack(second)

    async def test_nack_with_delay(self, broker: Broker) -> None:
        require(broker, Capability.DELAYS)
        await broker.push(make_task())
        first = await reserve_one(broker)
        delay = 0.3
        clock = Stopwatch()
        await broker.nack(first, delay=delay)
        early = await broker.reserve([DEFAULT], lease=LONG_LEASE, timeout=0)
        stats = await broker.stats(DEFAULT)
        if clock.elapsed < delay:
            assert early == [], "delivered before the nack delay"
            assert (stats.ready, stats.scheduled, stats.reserved) == (0, 1, 0)
        second = await reserve_one(broker, timeout=delay + SLACK)
        assert clock.elapsed >= delay - EARLY, "delivered before the nack delay"
        assert (second.deliveries, second.lost) == (2, 0)
        await broker.ack(second)

    async def test_extend_keeps_the_lease(self, broker: Broker) -> None:
        require(broker, Capability.LEASE_EXTENSION)
        await broker.push(make_task())
        first_lease = 2 * LEASE
        clock = Stopwatch()
        reservation = await reserve_one(broker, lease=first_lease)
        await asyncio.sleep(LEASE / 2)
        await broker.extend(reservation, LONG_LEASE)
        await asyncio.sleep(max(0.0, first_lease + 0.15 - clock.elapsed))
        assert await broker.reserve([DEFAULT], lease=LONG_LEASE, timeout=0) == []
        assert (await broker.stats(DEFAULT)).reserved == 1
        # The new deadline is ``lease`` seconds from now, also when that is sooner.
        clock = Stopwatch()
        await broker.extend(reservation, LEASE)
        again = await reserve_one(broker, timeout=LEASE + SLACK)
        assert clock.elapsed >= LEASE - EARLY
        assert (again.deliveries, again.lost) == (2, 1)
        await broker.ack(again)

    async def test_atomic_completion(
        self, broker: Broker, completion_storage: Storage | None
    ) -> None:
        if not isinstance(broker, AtomicCompletion):
            pytest.skip(f"{type(broker).__name__} does not implement AtomicCompletion")
        storage = completion_storage
        if storage is None or not broker.shares_store_with(storage):
            pytest.skip("no storage this broker completes into (override completion_storage)")
        stale, current = await _redelivered(broker)
        running = current.task.model_copy(
            update={"status": TaskStatus.RUNNING, "attempts": 2, "lease_token": current.token}
        )
        await storage.save(running)
        zombie = running.model_copy(
            update={"status": TaskStatus.SUCCEEDED, "result": "zombie", "lease_token": stale.token}
        )
        with pytest.raises(StaleLeaseError):
            await broker.complete(stale, zombie, ttl=None)
        assert await storage.get(running.id) == running
        done = running.model_copy(update={"status": TaskStatus.SUCCEEDED, "result": [1, 2]})
        await broker.complete(current, done, ttl=None)
        assert await storage.get(done.id) == done
        assert await broker.stats(DEFAULT) == QueueStats()
        with pytest.raises(StaleLeaseError):
            await broker.ack(current)

    async def test_started_reservations_have_running_records(
        self, broker: Broker, completion_storage: Storage | None
    ) -> None:
        """``Reservation.started`` claims the record is running under this very lease;
        a record that may not become running (cancelled), or none at all, is never
        claimed. A broker that never starts records passes by claiming nothing."""
        storage = completion_storage
        if storage is None or not getattr(broker, "shares_store_with", lambda _: False)(storage):
            pytest.skip("no storage this broker writes records into")
        fresh, cancelled, absent = (make_task(payload={"n": n}) for n in range(3))
        # a payload a store could mangle if it rewrote the record (JSON in SQL, Lua's cjson)
        fresh.payload = {"nul": "a\x00b", "big": 2**70, "float": 1e20, "text": "é😀", "n": 0.1}
        fresh.attempts = 2
        await storage.save(fresh)
        await storage.save(cancelled)
        cancelled = cancelled.model_copy(update={"status": TaskStatus.CANCELLED})
        await storage.save(cancelled)
        await broker.push_many([fresh, cancelled, absent])
        held = await broker.reserve([DEFAULT], lease=LONG_LEASE, limit=3, timeout=SLACK)
        by_id = {r.task.id: r for r in held}
        assert set(by_id) == {fresh.id, cancelled.id, absent.id}
        assert (by_id[cancelled.id].started, by_id[cancelled.id].started_at) == (False, None)
        assert await storage.get(cancelled.id) == cancelled
        assert (by_id[absent.id].started, by_id[absent.id].started_at) == (False, None)
        assert await storage.get(absent.id) is None
        reservation = by_id[fresh.id]
        assert reservation.task == fresh  # the message, as pushed
        stored = await storage.get(fresh.id)
        assert stored is not None
        if not reservation.started:
            assert stored == fresh
            return
        assert (stored.status, stored.attempts, stored.lease_token) == (
            TaskStatus.RUNNING,
            3,
            reservation.token,
        )
        assert stored.started_at is not None
        assert reservation.started_at == stored.started_at  # the start it stored
        assert stored.finished_at is None
        assert (stored.payload, stored.name, stored.queue) == (fresh.payload, fresh.name, DEFAULT)
        if isinstance(broker, AtomicCompletion):
            done = stored.model_copy(update={"status": TaskStatus.SUCCEEDED, "result": 7})
            await broker.complete(reservation, done, ttl=None)
            assert await storage.get(fresh.id) == done

    async def test_the_executor_keeps_the_start_the_reserve_stored(
        self, broker: Broker, completion_storage: Storage | None
    ) -> None:
        """A task whose record the reserve marked running keeps that start time in its
        final record: the executor does not stamp a later one of its own (a record would
        otherwise say it started twice, and rate limits enforced at the reserve would
        look broken in the records)."""
        storage, task, reservation = await _started(broker, completion_storage, LONG_LEASE)
        running = await storage.get(task.id)
        assert running is not None
        assert running.started_at is not None
        registry = TaskRegistry()
        registry.register(task.name, _Done())
        await asyncio.sleep(0.05)  # a later stamp would differ from the stored one
        await Executor(broker, storage, registry, Settings()).execute(reservation)
        final = await storage.get(task.id)
        assert final is not None
        assert (final.status, final.result) == (TaskStatus.SUCCEEDED, "done")
        assert final.started_at == running.started_at == reservation.started_at

    async def test_a_hand_back_restores_a_started_record(
        self, broker: Broker, completion_storage: Storage | None
    ) -> None:
        """A started reservation given back (``nack`` without a new body, e.g. a worker
        stopping) leaves the record as it was before the reserve; one whose record was
        written since (a retry) keeps that write."""
        storage, task, first = await _started(broker, completion_storage, LONG_LEASE)
        await broker.nack(first)
        assert await storage.get(task.id) == task
        again = await reserve_one(broker)
        assert again.started
        retrying = again.task.model_copy(
            update={"status": TaskStatus.RETRYING, "attempts": 1, "lease_token": again.token}
        )
        await storage.save(retrying)
        await broker.nack(again, task=retrying)
        assert await storage.get(task.id) == retrying

    async def test_a_start_lost_with_its_worker_is_not_counted_twice(
        self, broker: Broker, completion_storage: Storage | None
    ) -> None:
        """Delivered again after its lease ran out, a started task's record counts the
        attempt once (as the executor does), and a hand-back restores the record as it
        was before the first start."""
        storage, task, _ = await _started(broker, completion_storage, LEASE)
        second = await reserve_one(broker, timeout=LEASE + SLACK)  # the first worker is lost
        assert (second.lost, second.started) == (1, True)
        stored = await storage.get(task.id)
        assert stored is not None
        assert (stored.status, stored.attempts, stored.lease_token) == (
            TaskStatus.RUNNING,
            task.attempts + 1,
            second.token,
        )
        await broker.nack(second)
        assert await storage.get(task.id) == task

    async def test_atomic_enqueue(self, broker: Broker, completion_storage: Storage | None) -> None:
        if not isinstance(broker, AtomicEnqueue):
            pytest.skip(f"{type(broker).__name__} does not implement AtomicEnqueue")
        storage = completion_storage
        if storage is None or not broker.shares_store_with(storage):
            pytest.skip("no storage this broker writes into (override completion_storage)")
        tasks = [make_task(payload={"n": n}) for n in range(3)]
        await broker.enqueue_atomically(tasks, [broker.to_message(t) for t in tasks])
        for task in tasks:
            assert await storage.get(task.id) == task
        held = await broker.reserve([DEFAULT], lease=LONG_LEASE, limit=3, timeout=SLACK)
        assert sorted(r.task.id for r in held) == sorted(t.id for t in tasks)
        # all or nothing: a batch with one duplicate id stores no record and no message
        fresh = make_task()
        batch = [fresh, tasks[0]]
        with pytest.raises(DuplicateTaskError):
            await broker.enqueue_atomically(batch, [broker.to_message(t) for t in batch])
        assert await storage.get(fresh.id) is None
        assert (await broker.stats(DEFAULT)).ready == 0

    async def test_atomic_enqueue_refuses_a_finished_tasks_id(
        self, broker: Broker, completion_storage: Storage | None
    ) -> None:
        """A new message reusing the id of a task that already finished would otherwise be
        acknowledged unrun, or run twice: refused at enqueue, naming the id and status."""
        if not isinstance(broker, AtomicEnqueue):
            pytest.skip(f"{type(broker).__name__} does not implement AtomicEnqueue")
        storage = completion_storage
        if storage is None or not broker.shares_store_with(storage):
            pytest.skip("no storage this broker writes into (override completion_storage)")
        done = make_task()
        await broker.enqueue_atomically([done], [broker.to_message(done)])
        await broker.ack(await reserve_one(broker))  # the message is gone, the record stays
        finished = done.model_copy(update={"status": TaskStatus.SUCCEEDED, "result": 1})
        await storage.save(finished.started("t", finished.created_at))
        await storage.save(finished.model_copy(update={"lease_token": "t"}))
        fresh = make_task()
        batch = [fresh, done]
        with pytest.raises(DuplicateTaskError, match=done.id) as refused:
            await broker.enqueue_atomically(batch, [broker.to_message(t) for t in batch])
        assert "succeeded" in str(refused.value)
        assert await storage.get(fresh.id) is None  # all or nothing
        stored = await storage.get(done.id)
        assert stored is not None
        assert stored.status is TaskStatus.SUCCEEDED
        assert await broker.queue_length(DEFAULT) == 0

    @pytest.fixture
    def completion_storage(self, broker: Broker) -> Storage | None:
        """The storage :class:`AtomicCompletion` writes into; override when it is not
        the broker object itself."""
        return broker if isinstance(broker, Storage) else None
