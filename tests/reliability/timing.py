"""Scenarios 3, 6 and 10: leases renewed through long tasks, retry backoff, and graceful
shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import time

from bgcoor_core import TaskStatus

from .harness import Rig, wait_until
from .outcome import QUEUE, Outcome, account, nothing_left, stop_cleanly
from .tasks import FAIL_RETRIES


async def long_lease(rig: Rig, *, workers: int = 2, concurrency: int = 3) -> Outcome:
    """3. Tasks lasting 1.5 to 2.5 leases (sync, async and CPU-bound) while heartbeats
    renew the lease. Pass: every task runs exactly once (one attempt each)."""
    outcome = Outcome("long_lease", rig.backend.name)
    lease_ms = int(float(rig.settings["lease_seconds"]) * 1000)
    plan = [
        (rig.tasks.work, "sync-1.5", lease_ms * 3 // 2),
        (rig.tasks.work, "sync-2.5", lease_ms * 5 // 2),
        (rig.tasks.work_async, "async-1.5", lease_ms * 3 // 2),
        (rig.tasks.work_async, "async-2.5", lease_ms * 5 // 2),
        (rig.tasks.spin, "cpu-2", lease_ms * 2),
    ]
    handles = [await fn.enqueue(key, ms) for fn, key, ms in plan]
    keys = [key for _, key, _ in plan]
    for _ in range(workers):
        rig.workers.start(concurrency)
    await rig.wait_final([h.id for h in handles], timeout=60)
    await stop_cleanly(rig, outcome)
    await account(rig, outcome, keys, [h.id for h in handles])
    attempts = {h.id: (await rig.producer.get(h.id)).attempts for h in handles}
    outcome.expect(set(attempts.values()) == {1}, f"attempts per task {sorted(attempts.values())}")
    outcome.expect(outcome.duplicates == 0, f"{outcome.duplicates} duplicate execution(s)")
    await nothing_left(rig, outcome)
    return outcome


async def retries(rig: Rig, *, slack: float = 1.0) -> Outcome:
    """6. A task failing every attempt with ``max_retries=5``. Pass: exactly 6 attempts,
    each pause within its backoff bounds, final ``dead`` in the dead-letter queue, and a
    manual requeue runs it exactly once more."""
    outcome = Outcome("retries", rig.backend.name, enqueued=1)
    base, cap = float(rig.settings["retry_backoff"]), float(rig.settings["retry_backoff_max"])
    handle = await rig.tasks.fail.enqueue("f")
    worker = rig.workers.start(1)

    async def dead_after(runs: int) -> None:
        async def dead() -> bool:
            # Dead in its record and in the dead-letter queue: the executor writes the one
            # and then moves the message, and a requeue between the two finds nothing.
            rig.workers.check()
            record = await rig.producer.get(handle.id)
            if record.status is not TaskStatus.DEAD or len(rig.ledger.of("f")) < runs:
                return False
            return handle.id in {d.id for d in await rig.producer.broker.dead_letters(QUEUE)}

        await wait_until(dead, 60, f"dead after {runs} attempt(s)")

    await dead_after(FAIL_RETRIES + 1)
    runs = rig.ledger.of("f")
    outcome.expect(len(runs) == FAIL_RETRIES + 1, f"{len(runs)} attempts, expected 6")
    for attempt, (before, after) in enumerate(itertools.pairwise(runs), start=1):
        # The documented bound: a delay in [d/2, d], d = base * 2**(attempt-1) capped.
        ceiling = min(cap, base * 2 ** (attempt - 1))
        low, high = ceiling / 2 - 0.01, ceiling + slack
        pause = after.start - before.end
        outcome.details[f"pause {attempt}"] = f"{pause:.3f}s in [{low:.3f}, {high:.3f}]"
        outcome.expect(low <= pause <= high, f"pause {pause:.3f}s after attempt {attempt}")
    record = await rig.producer.get(handle.id)
    outcome.expect(record.attempts == FAIL_RETRIES + 1, f"record attempts {record.attempts}")
    letters = {d.id: d.reason for d in await rig.producer.broker.dead_letters(QUEUE)}
    outcome.expect(
        letters.get(handle.id, "").startswith("max_retries exceeded"),
        f"dead-letter queue: {letters}",
    )
    requeued = await rig.producer.requeue_dead(QUEUE, [handle.id])
    outcome.expect(requeued == [handle.id], f"requeue_dead returned {requeued}")
    await dead_after(FAIL_RETRIES + 2)
    outcome.expect(
        len(rig.ledger.of("f")) == FAIL_RETRIES + 2, "the requeued task did not run exactly once"
    )
    outcome.expect(worker.alive(), "the worker died")
    await stop_cleanly(rig, outcome)
    await nothing_left(rig, outcome, dead=1)
    return outcome


async def sigterm(
    rig: Rig,
    *,
    tasks: int = 10,
    concurrency: int = 4,
    max_ms: int = 3000,
    second_signal: bool = False,
    seed: int = 3,
) -> Outcome:
    """10. SIGTERM a busy worker (tasks of 0-``max_ms`` ms, a short grace period, a lease
    far longer than the test). Pass: nothing reserved after the signal; exit 0 within
    grace + a few seconds; what did not finish was handed back at once (no lease left
    held), so a new worker completes everything long before any lease could expire.
    With ``second_signal`` a SIGINT follows: still exit 0, still nothing lost."""
    outcome = Outcome("sigterm_twice" if second_signal else "sigterm", rig.backend.name)
    grace = float(rig.settings["shutdown_grace"])
    lease = float(rig.settings["lease_seconds"])
    rng = random.Random(seed)
    keys = [f"t{i}" for i in range(tasks)]
    handles = await rig.tasks.work.enqueue_many([(k, rng.randint(0, max_ms)) for k in keys])
    first = rig.workers.start(concurrency)
    await first.ready()
    await rig.wait_counts(TaskStatus.RUNNING, concurrency, timeout=30)
    signalled, clock = time.time(), time.monotonic()
    first.send(signal.SIGTERM)
    if second_signal:
        await asyncio.sleep(0.3)
        first.send(signal.SIGINT)
    code = await first.exited(grace + max_ms / 1000 + 30)
    took = time.monotonic() - clock
    stats = await rig.producer.broker.stats(QUEUE)
    outcome.kills = 1
    outcome.expect(code == 0, f"exit code {code}")
    limit = (0.3 if second_signal else grace) + max_ms / 1000 + 3
    outcome.expect(took <= limit, f"exited {took:.1f}s after the signal (limit {limit:.1f}s)")
    outcome.expect(
        stats.reserved == 0, f"{stats.reserved} still leased after exit: not handed back"
    )
    late = [
        e.key for e in rig.ledger.executions() if e.pid == first.pid and e.start > signalled + 0.25
    ]
    outcome.expect(not late, f"started after the signal: {late}")
    rig.workers.start(concurrency)
    outcome.recover = await rig.wait_final([h.id for h in handles], timeout=lease / 2)
    await stop_cleanly(rig, outcome)
    await account(rig, outcome, keys, [h.id for h in handles])
    await nothing_left(rig, outcome)
    outcome.details.update(exit_seconds=round(took, 2))
    return outcome
