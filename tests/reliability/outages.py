"""Scenarios 9 and 11: the broker's server restarts mid-run, or evicts keys when full.

Both run on a private server (``servers.py``) that the scenario may stop and restart."""

from __future__ import annotations

import asyncio
import random
import re
import time

from .harness import Rig, wait_until
from .outcome import QUEUE, Outcome, account, nothing_left, stop_cleanly
from .servers import PrivateServer


async def broker_restart(
    rig: Rig,
    *,
    server: PrivateServer,
    seconds: float = 6.0,
    outage: float = 2.0,
    workers: int = 2,
    concurrency: int = 4,
    seed: int = 9,
) -> Outcome:
    """9. Restart the server while a producer enqueues and workers run. Pass: workers and
    producer carry on without a restart of their own; every enqueue that returned
    completes; one made during the outage raises or succeeds late, never drops."""
    outcome = Outcome("broker_restart", rig.backend.name, kills=1)
    rng = random.Random(seed)
    running = [rig.workers.start(concurrency) for _ in range(workers)]
    for worker in running:
        await worker.ready()
    accepted: dict[str, str] = {}  # key -> task id, for every enqueue that returned
    accepted_at: list[float] = []
    refused: list[str] = []
    refused_keys: list[str] = []  # may still have gone through: the reply was what failed
    producing = True

    async def produce() -> None:
        index = 0
        while producing:
            key, index = f"r{index}", index + 1
            try:
                async with asyncio.timeout(30):
                    handle = await rig.tasks.work.enqueue(key, rng.randint(0, 100))
            except Exception as exc:  # the outage: it must raise, and that is fine
                refused.append(f"{type(exc).__name__}: {exc}"[:160])
                refused_keys.append(key)
                await asyncio.sleep(0.1)
                continue
            accepted[key], accepted_at[len(accepted_at) :] = handle.id, [time.time()]
            await asyncio.sleep(0.02)

    producer = asyncio.create_task(produce())
    await asyncio.sleep(seconds / 2)
    await asyncio.to_thread(server.stop)
    await asyncio.sleep(outage)
    await asyncio.to_thread(server.start)
    back = time.time()
    await asyncio.sleep(seconds / 2)
    producing = False
    await producer
    await rig.wait_final(accepted.values(), timeout=120)
    resumed = [e.end for e in rig.ledger.executions() if e.start > back]
    outcome.recover = min(resumed) - back if resumed else None
    outcome.expect(bool(resumed), "no task ran after the server came back")
    outcome.expect(
        any(at > back for at in accepted_at), "the producer enqueued nothing after the restart"
    )
    dead = [w.pid for w in running if not w.alive()]
    outcome.expect(not dead, f"workers {dead} died instead of reconnecting")
    await stop_cleanly(rig, outcome)
    await account(rig, outcome, accepted, accepted.values(), maybe=refused_keys)
    await nothing_left(rig, outcome)
    ran_anyway = sorted(set(refused_keys) & set(rig.ledger.completed()))
    outcome.details.update(
        refused_during_outage=len(refused),
        refused_but_ran=ran_anyway,
        first_refusals=refused[:2],
    )
    return outcome


async def eviction(
    rig: Rig, *, server: PrivateServer, fill: int = 600, pad: int = 16_384
) -> Outcome:
    """11. A Redis with ``maxmemory`` and an evicting policy. Pass: the worker warns loudly
    or refuses to start; filling it up, enqueue raises instead of tasks vanishing."""
    outcome = Outcome("eviction", rig.backend.name)
    worker = rig.workers.start(1)

    def settled() -> bool:
        return not worker.alive() or "ready:" in worker.output()

    await wait_until(settled, 30, "the worker starts or refuses to")
    log = worker.output()
    said = re.search(r"maxmemory|evict", log, re.IGNORECASE) is not None
    outcome.expect(said, "the worker neither warned about nor refused an evicting maxmemory-policy")
    if worker.alive():
        await stop_cleanly(rig, outcome)
    accepted: list[str] = []
    raised = ""
    for index in range(fill):
        try:
            handle = await rig.tasks.work.enqueue(f"e{index}", pad="x" * pad)
        except Exception as exc:
            raised = f"{type(exc).__name__}: {exc}"[:200]
            break
        accepted.append(handle.id)
    outcome.enqueued = len(accepted)
    outcome.expect(bool(raised), f"{fill} enqueues of {pad} bytes into a full Redis all succeeded")
    if accepted:  # a backend refusing the server outright accepted nothing to lose
        kept = [i for i in accepted if await rig.producer.storage.get(i) is not None]
        waiting = await rig.producer.broker.queue_length(QUEUE)
        outcome.lost = len(accepted) - min(len(kept), waiting)
        outcome.expect(
            outcome.lost == 0,
            f"{len(accepted)} enqueues returned, {len(kept)} records and {waiting} messages kept",
        )
    outcome.details.update(enqueue_error=raised)
    return outcome
