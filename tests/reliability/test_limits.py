"""Rate and concurrency limits across real worker processes (issue 14, items 1 and 2).

* ``rate_limit="20/s"``, a backlog of 600 tasks, three workers of concurrency 4, 15 s:
  no one-second window (sliding) holds more than 20 starts plus the burst allowance of
  one, and at least 18 a second start on average. A start is the moment the task reached
  its worker's executor, as its record says (``started_at``, stamped there as it starts
  running); the function itself begins a little later, after the dispatch to a thread
  (the ledger's times, printed too, show that).
* ``concurrency_limit=2`` per tenant, three workers, one SIGKILLed every 3 s (and
  replaced): the ledger of runs, including those cut short by a kill (they count until
  the kill), never shows three runs of one tenant overlapping. Tenant A holds 60 tasks, B
  and C 6 each: B and C finish before A's 20th task starts (fair keys).

Both run one backend at a time: the fairness and the rate are timed on a quiet machine
(run at once, the three backends' workers made the small tenants finish late).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest

from .backends import Backend
from .crashes import ready_victim
from .harness import Rig, open_rig, wait_until
from .limits_app import CONCURRENCY, RATE, declare

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(240)]

APP = "reliability.limits_app:manager"
WORKERS = 3
WINDOW = 15.0
KILL_EVERY = 3.0  # seconds between two kills of the concurrency test


def max_in_window(starts: list[float], width: float = 1.0) -> int:
    """The most starts in any half-open window ``[t, t + width)``."""
    most, first = 0, 0
    for last, at in enumerate(starts):
        while at - starts[first] >= width:
            first += 1
        most = max(most, last - first + 1)
    return most


async def test_a_global_rate_limit_holds_across_workers(backend: Backend, tmp_path: Path) -> None:
    async with open_rig(backend, tmp_path, app=APP) as rig:
        tasks = declare(rig.producer)
        await rig.producer.submit_many([tasks.rated.build((i,), {}) for i in range(600)])
        async with rig.workers.supervised(WORKERS, 4):
            await wait_until(lambda: len(_rated(rig)) > 0, 60, "the first rated task")
            first = _rated(rig)[0]
            await wait_until(lambda: time.time() > first + WINDOW + 0.5, WINDOW + 30, "the window")
        await rig.workers.stop()
        records = await rig.producer.storage.list(limit=1000)
    began = sorted(r.started_at.timestamp() for r in records if r.started_at is not None)
    starts = [at for at in began if at < began[0] + WINDOW]
    most = max_in_window(starts)
    rate = len(starts) / WINDOW
    ran = [at for at in _rated(rig) if at < first + WINDOW]
    print(
        f"\n{backend.name}: {rate:.1f} starts/s over {WINDOW:.0f}s, at most {most} in 1s "
        f"(functions: {len(ran) / WINDOW:.1f}/s, at most {max_in_window(ran)} in 1s)"
    )
    assert most <= RATE + 1, f"{most} starts in one second (limit {RATE}/s + burst 1)"
    assert rate >= 0.9 * RATE, f"only {rate:.1f} starts/s under a {RATE}/s limit"
    assert len(records) == 600
    assert all(t.attempts <= 1 for t in records)  # waiting for a slot spent no attempt
    assert all(t.error is None for t in records)


def _rated(rig: Rig) -> list[float]:
    return [e.start for e in rig.ledger.executions() if e.key.startswith("r")]


async def test_a_concurrency_limit_holds_while_workers_are_killed(
    backend: Backend, tmp_path: Path
) -> None:
    rng = random.Random(int(time.time()))
    sizes = {"a": 60, "b": 6, "c": 6}
    async with open_rig(backend, tmp_path, app=APP) as rig:
        tasks = declare(rig.producer)
        batch = [
            tasks.keyed.build((tenant, i, rng.randint(100, 400)), {})
            for tenant, count in sizes.items()
            for i in range(count)
        ]
        await rig.producer.submit_many(batch)
        kills: list[tuple[int, float]] = []
        async with rig.workers.supervised(WORKERS, 4) as current:
            deadline = time.monotonic() + 120
            next_kill = time.monotonic() + KILL_EVERY
            while time.monotonic() < deadline and len(_done(rig)) < len(batch):
                await asyncio.sleep(0.05)  # the loop ends as soon as the ledger is complete
                if time.monotonic() < next_kill:
                    continue
                if len(_done(rig)) < len(batch) - 5:
                    victim = await ready_victim(current, rng)
                    victim.send(signal.SIGKILL)
                    kills.append((victim.pid, time.time()))
                    await victim.exited(10)
                next_kill = time.monotonic() + KILL_EVERY
            await rig.wait_final([t.id for t in batch], 90)
        await rig.workers.stop()
        runs = _runs(rig, dict(kills))
    count = sum(len(r) for r in runs.values())
    print(f"\n{backend.name}: {len(kills)} kills, {count} runs")
    for tenant in sizes:
        assert _most_overlapping(runs[tenant]) <= CONCURRENCY, tenant
    a_starts = sorted(start for start, _ in runs["a"])
    for tenant in "bc":
        last_end = max(end for _, end in runs[tenant])
        assert last_end < a_starts[19], f"tenant {tenant} waited behind tenant a"


def _done(rig: Rig) -> set[str]:
    return {e.key for e in rig.ledger.executions() if e.outcome == "ok"}


def _runs(rig: Rig, killed_at: dict[int, float]) -> dict[str, list[tuple[float, float]]]:
    """Each tenant's runs as (start, end); a run without its end was cut short by the kill
    of its process, and lasted until then."""
    executions = rig.ledger.executions()
    ends = {(e.key, e.pid, e.start): e.end for e in executions if e.outcome == "ok"}
    runs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for e in executions:
        if e.outcome == "begin":
            end = ends.get((e.key, e.pid, e.start), killed_at.get(e.pid, float("inf")))
            runs[e.key[1:].split("-")[0]].append((e.start, end))
    return runs


def _most_overlapping(runs: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in runs] + [(e, -1) for _, e in runs])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most
