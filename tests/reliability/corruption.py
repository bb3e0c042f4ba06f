"""Fault injection into a backend's own state: one corrupted column, field or key at a time.

Each backend lists its corruptions in ``corrupt_<backend>.py`` (a :class:`Corruption` per
thing it stores). :func:`run_corruption` enqueues good tasks around one *victim*, lets the
corruption damage what the backend stored for the victim (no worker is running yet), then
starts a real worker and checks what issue 10 asks: the bad item costs that one task,
never the queue.

Pass criteria:

* the worker keeps running (and stops cleanly on SIGTERM);
* every good task runs exactly once and succeeds;
* the victim is dead-lettered with a reason, or its record is ``dead`` with an error (or,
  for a corruption the backend repairs, ``victim_runs``, it ran exactly once);
* ``bgcoor status`` answers (exit 0) while the damage is there (the harder case: after
  the worker dealt with it, the store holds only sound records).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bgcoor_core import CorruptRecordError, Task, TaskStatus

from .harness import APP, Rig, wait_until
from .outcome import QUEUE, Outcome, stop_cleanly

Apply = Callable[[Rig, str], Awaitable[None]]


@dataclass(frozen=True)
class Corruption:
    """One kind of damage to what ``backend`` stores for a task.

    ``apply(rig, victim_id)`` writes the bad value with a raw client (sqlite3, redis,
    asyncpg); ``what`` is its line in ``docs/reliability.md``.
    """

    backend: str
    name: str
    what: str
    apply: Apply
    victim_runs: bool = False


async def _victim_verdict(rig: Rig, victim: str) -> str | None:
    """Why the victim was set aside (its dead letter's reason, else its dead record's
    error), or ``None`` while it is not."""
    letters = await rig.producer.broker.dead_letters(QUEUE, limit=10_000)
    for letter in letters:
        if letter.id == victim and letter.reason:
            return letter.reason
    try:
        record = await rig.producer.storage.get(victim)
    except CorruptRecordError:
        return None
    if record is not None and record.status is TaskStatus.DEAD and record.error:
        return record.error
    return None


def _status_command(rig: Rig) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bgcoor_core.cli", "status", "--app", APP],
        env=rig.workers.env,
        cwd=rig.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _status_answers(rig: Rig, outcome: Outcome, when: str) -> None:
    result = await asyncio.to_thread(_status_command, rig)
    outcome.expect(
        result.returncode == 0 and "Tasks by status" in result.stdout,
        f"bgcoor status {when}: exit {result.returncode}\n{result.stdout[-800:]}"
        f"{result.stderr[-1500:]}",
    )


async def _good_statuses(rig: Rig, ids: list[str]) -> dict[str, TaskStatus | None]:
    found: dict[str, TaskStatus | None] = {}
    for task_id in ids:
        record: Task | None = await rig.producer.storage.get(task_id)
        found[task_id] = None if record is None else record.status
    return found


async def run_corruption(rig: Rig, corruption: Corruption, *, good: int = 20) -> Outcome:
    """Good tasks, one damaged victim in their midst, one worker: see the module docs."""
    outcome = Outcome(f"corrupt {corruption.name}", rig.backend.name)
    before = [f"g{i}" for i in range(good // 2)]
    after = [f"g{i}" for i in range(good // 2, good)]
    first = await rig.tasks.work.enqueue_many([(k,) for k in before])
    victim = await rig.tasks.work.enqueue("victim")
    last = await rig.tasks.work.enqueue_many([(k,) for k in after])
    await corruption.apply(rig, victim.id)
    await _status_answers(rig, outcome, "with the damage in place")

    worker = rig.workers.start(concurrency=4)
    await worker.ready()
    good_ids = [h.id for h in (*first, *last)]

    async def settled() -> bool:
        rig.workers.check()
        if not worker.alive():
            raise AssertionError(f"worker died:\n{worker.output()[-3000:]}")
        statuses = await _good_statuses(rig, good_ids)
        if not all(s is not None and s.is_final for s in statuses.values()):
            return False
        return corruption.victim_runs or await _victim_verdict(rig, victim.id) is not None

    try:
        await wait_until(settled, 60, "good tasks final and the victim set aside")
    except AssertionError as exc:
        outcome.failures.append(str(exc))
    await asyncio.sleep(0.3)  # a late duplicate of a good task would show in the ledger now
    outcome.expect(worker.alive(), "the worker died")
    _check_ledger(rig, outcome, [*before, *after], corruption.victim_runs)
    statuses = await _good_statuses(rig, good_ids)
    unsettled = {i: s for i, s in statuses.items() if s is not TaskStatus.SUCCEEDED}
    outcome.expect(not unsettled, f"{len(unsettled)} good task(s) not succeeded: {unsettled}")
    if not corruption.victim_runs:
        reason = await _victim_verdict(rig, victim.id)
        outcome.expect(bool(reason), "the victim was neither dead-lettered nor marked dead")
        outcome.details["reason"] = reason
    log = worker.output()
    outcome.expect("Traceback" not in log, "the worker log shows a traceback")
    await stop_cleanly(rig, outcome)
    return outcome


def _check_ledger(rig: Rig, outcome: Outcome, keys: list[str], victim_runs: bool) -> None:
    runs = rig.ledger.completed()
    wrong = {k: runs[k] for k in keys if runs[k] != 1}
    outcome.expect(not wrong, f"good tasks not run exactly once: {wrong}")
    victim_count = runs["victim"]
    if victim_runs:
        outcome.expect(victim_count == 1, f"the victim ran {victim_count} times, not once")
    else:
        outcome.expect(victim_count <= 1, f"the victim ran {victim_count} times")
