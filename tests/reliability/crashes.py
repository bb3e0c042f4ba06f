"""Scenarios 1, 2, 4 and 5: workers that die, crash between side effect and ack, hang,
or are killed by their own task."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import time
from collections import Counter

from bgcoor_core import TaskStatus

from .harness import Rig, Worker, wait_until
from .outcome import QUEUE, Outcome, account, nothing_left, stop_cleanly


async def ready_victim(current: list[Worker], rng: random.Random) -> Worker:
    """A worker that is up and serving (so the kill lands mid-work, not mid-start-up)."""
    ready: list[Worker] = []

    def some_ready() -> bool:
        ready[:] = [w for w in current if w.alive() and "ready:" in w.output()]
        return bool(ready)

    await wait_until(some_ready, 30, "a worker ready to be killed")
    return rng.choice(ready)


async def sigkill(
    rig: Rig,
    *,
    tasks: int = 400,
    kill_seconds: float = 8.0,
    kill_every: float = 1.0,
    workers: int = 2,
    concurrency: int = 4,
    max_ms: int = 200,
    seed: int = 1,
) -> Outcome:
    """1. Kill a worker with SIGKILL every ~``kill_every`` s (restarting it) while tasks of
    0-``max_ms`` ms run. Pass: none lost, nothing left running, duplicates at most
    kills x concurrency. A task that happened to be in ``max_worker_lost`` + 1 killed
    workers is dead-lettered ``worker_lost`` by design: counted as quarantined, not lost."""
    outcome = Outcome("sigkill", rig.backend.name)
    rng = random.Random(seed)
    keys = [f"k{i}" for i in range(tasks)]
    handles = await rig.tasks.work.enqueue_many([(k, rng.randint(0, max_ms)) for k in keys])
    recoveries: list[asyncio.Task[float]] = []
    async with rig.workers.supervised(workers, concurrency) as current:
        started = time.monotonic()
        while time.monotonic() - started < kill_seconds:
            await asyncio.sleep(kill_every * rng.uniform(0.5, 1.5))
            if await rig.count(TaskStatus.SUCCEEDED) >= tasks:
                break
            victim = await ready_victim(current, rng)
            victim.send(signal.SIGKILL)
            await victim.exited(10)
            outcome.kills += 1
            held = await rig.producer.storage.list(status=TaskStatus.RUNNING, limit=10_000)
            interrupted = [t.id for t in held]
            recoveries.append(asyncio.create_task(rig.wait_final(interrupted, 300)))
        last_kill = time.monotonic()
        await rig.wait_final([h.id for h in handles], timeout=60 + tasks / 10)
        drained = time.monotonic() - last_kill
        recover = await asyncio.gather(*recoveries)
    await stop_cleanly(rig, outcome)
    await account(rig, outcome, keys, [h.id for h in handles], quarantine=True)
    await nothing_left(rig, outcome, dead=outcome.quarantined)
    outcome.recover = max(recover, default=None)
    outcome.details.update(drained_after_last_kill=round(drained, 2))
    outcome.expect(outcome.kills > 0, "no worker was killed: the scenario did not run")
    bound = outcome.kills * (concurrency + rig.settings.get("prefetch", 0))
    outcome.expect(
        outcome.duplicates <= bound,
        f"{outcome.duplicates} duplicate executions, above kills x concurrency = {bound}",
    )
    return outcome


def _side_effect_rows(rig: Rig) -> Counter[str]:
    conn = sqlite3.connect(rig.side_effects)
    try:
        return Counter(key for (key,) in conn.execute("SELECT key FROM effects"))
    finally:
        conn.close()


async def crash_before_ack(
    rig: Rig, *, tasks: int = 24, crashing: int = 6, workers: int = 2, concurrency: int = 2
) -> Outcome:
    """2. The fault plugin kills the worker after the handler's side effect, before the
    outcome is stored and acked, once per marked task. Pass: every marked task runs
    again; the idempotency key keeps the side-effect table at one row per key."""
    outcome = Outcome("crash_before_ack", rig.backend.name)
    keys = [f"c{i}" for i in range(tasks)]
    step = max(tasks // max(crashing, 1), 1)
    marked = set(keys[::step][:crashing])
    handles = [await rig.tasks.charge.enqueue(k, crash=k in marked) for k in keys]
    async with rig.workers.supervised(workers, concurrency, rig.faulty_env()):
        await rig.wait_final([h.id for h in handles], timeout=60 + 5 * crashing)
    outcome.kills = rig.workers.deaths
    await stop_cleanly(rig, outcome)
    await account(rig, outcome, keys, [h.id for h in handles])
    await nothing_left(rig, outcome)
    runs = rig.ledger.completed()
    once = sorted(k for k in marked if runs[k] < 2)
    outcome.expect(not once, f"crashed tasks that did not run again: {once}")
    crashed = {p.name for p in rig.fault_dir.iterdir()}
    outcome.expect(
        crashed == {h.id for h, k in zip(handles, keys, strict=True) if k in marked},
        f"{len(crashed)} crash(es) injected for {len(marked)} marked task(s)",
    )
    outcome.expect(
        outcome.kills == len(marked), f"{outcome.kills} worker deaths for {len(marked)} crashes"
    )
    rows = _side_effect_rows(rig)
    outcome.expect(
        rows == Counter(keys), f"side-effect rows per key: {sorted(+rows - Counter(keys))}"
    )
    outcome.details.update(side_effect_rows=sum(rows.values()), crashes=len(crashed))
    return outcome


def _sqlite_unlocked(rig: Rig) -> bool:
    """A stopped SQLite process holding the write lock would freeze every other process
    (a property of SQLite, not a lost task); the zombie must be stopped between writes."""
    if rig.backend.name != "sqlite":
        return True
    conn = sqlite3.connect(rig.url.removeprefix("sqlite:///"), timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


async def _freeze(worker: Worker, rig: Rig) -> None:
    """SIGSTOP ``worker`` at a moment it holds no database lock."""
    for _ in range(50):
        worker.send(signal.SIGSTOP)
        if _sqlite_unlocked(rig):
            return
        worker.send(signal.SIGCONT)
        await asyncio.sleep(0.01)
    raise AssertionError("could not stop the worker between two database writes")


async def zombie(rig: Rig) -> Outcome:
    """4. SIGSTOP a worker mid-task for 3 leases, then SIGCONT. Pass: the task was
    redelivered once (one execution each by the zombie and the second worker), the
    zombie's late result is refused, exactly one result stored (the second worker's)."""
    outcome = Outcome("zombie", rig.backend.name, enqueued=1)
    lease = float(rig.settings["lease_seconds"])
    # The task lasts as long as the pause: the zombie finishes right after SIGCONT,
    # while the second worker still holds the current lease.
    handle = await rig.tasks.work.enqueue("z", ms=int(3 * lease * 1000))
    first = rig.workers.start(1)

    async def running() -> bool:
        return await rig.count(TaskStatus.RUNNING) == 1

    await wait_until(running, 30, "the task is running on the first worker")
    first_lease = (await rig.producer.get(handle.id)).lease_token
    await _freeze(first, rig)
    stopped = time.monotonic()
    second = rig.workers.start(1)

    async def taken_over() -> bool:  # the record is marked running under a new lease
        return (await rig.producer.get(handle.id)).lease_token != first_lease

    outcome.recover = await wait_until(taken_over, 3 * lease + 30, "redelivery to worker 2")
    await asyncio.sleep(max(0.0, 3 * lease - (time.monotonic() - stopped)))
    first.send(signal.SIGCONT)
    outcome.kills = 1

    async def both_done() -> bool:
        record = await rig.producer.get(handle.id)
        return record.status.is_final and len(rig.ledger.of("z")) == 2

    await wait_until(both_done, 30, "both executions finish")
    record = await rig.producer.get(handle.id)
    runs = {e.pid: e for e in rig.ledger.of("z")}
    outcome.expect(record.status is TaskStatus.SUCCEEDED, f"final status {record.status}")
    executions = sorted(e.pid for e in rig.ledger.of("z"))
    outcome.expect(
        executions == sorted([first.pid, second.pid]),
        f"executions by {executions}: expected one by the zombie, one after redelivery",
    )
    outcome.expect(
        isinstance(record.result, dict) and record.result.get("pid") == second.pid,
        f"stored result {record.result} is not the second worker's ({second.pid})",
    )
    if set(runs) == {first.pid, second.pid}:
        late = runs[first.pid].end - runs[second.pid].end
        outcome.details["zombie finished before the current holder (s)"] = round(-late, 2)
    outcome.expect(first.alive(), "the zombie worker died instead of carrying on")
    await stop_cleanly(rig, outcome)
    outcome.duplicates = len(rig.ledger.of("z")) - 1
    await nothing_left(rig, outcome)
    return outcome


async def poison(
    rig: Rig, *, good: int = 60, workers: int = 2, concurrency: int = 4, seed: int = 5
) -> Outcome:
    """5. A task that kills its worker (``os._exit``) among good tasks. Pass: it is
    dead-lettered ``worker_lost`` after the configured losses; every good task completes."""
    outcome = Outcome("poison", rig.backend.name)
    limit = int(rig.settings["max_worker_lost"])
    rng = random.Random(seed)
    keys = [f"g{i}" for i in range(good)]
    half = good // 2
    handles = await rig.tasks.work.enqueue_many([(k, rng.randint(0, 100)) for k in keys[:half]])
    bad = await rig.tasks.poison.enqueue("poison")
    handles += await rig.tasks.work.enqueue_many([(k, rng.randint(0, 100)) for k in keys[half:]])
    async with rig.workers.supervised(workers, concurrency):

        async def settled() -> bool:
            rig.workers.check()
            record = await rig.producer.get(bad.id)
            return record.status is TaskStatus.DEAD

        await wait_until(settled, 30 + 10 * limit, "the poison task is dead-lettered")
        await rig.wait_final([h.id for h in handles], timeout=60)
    outcome.kills = rig.workers.deaths
    await stop_cleanly(rig, outcome)
    await account(rig, outcome, keys, [h.id for h in handles])
    outcome.enqueued = good + 1
    record = await rig.producer.get(bad.id)
    letters = {d.id: d.reason for d in await rig.producer.broker.dead_letters(QUEUE)}
    outcome.expect(
        (record.error or "").startswith("worker_lost"), f"poison record error {record.error!r}"
    )
    outcome.expect(
        letters.get(bad.id, "").startswith("worker_lost"),
        f"dead-letter queue holds {letters}, expected the poison task with worker_lost",
    )
    outcome.expect(set(letters) == {bad.id}, f"other tasks dead-lettered: {letters}")
    executions = len(rig.ledger.of("poison"))
    if executions and record.finished_at is not None:  # from the first death to quarantine
        outcome.recover = record.finished_at.timestamp() - rig.ledger.of("poison")[0].start
    outcome.expect(
        executions == limit + 1,
        f"the poison task ran {executions} times; expected {limit + 1} (max_worker_lost + 1)",
    )
    outcome.expect(
        outcome.kills == limit + 1, f"{outcome.kills} worker deaths, expected {limit + 1}"
    )
    await nothing_left(rig, outcome, dead=1)
    outcome.details.update(poison_runs=executions)
    return outcome
