"""Fault injection into a backend's own state: one corrupted column, field or key per victim.

Each backend lists its corruptions in ``corrupt_<backend>.py`` (a :class:`Corruption` per
thing it stores). :func:`run_corruptions` enqueues good tasks around one *victim* per
corruption it is given, lets each corruption damage what the backend stored for its own
victim (no worker is running yet), then starts a real worker and checks what issue 10
asks: a bad item costs that one task, never the queue.

Corruptions that damage only their victim's own items (its message, its record, its
entries in a queue's sets) run together, several victims in one rig, one ``bgcoor status``
before and after, one worker: their damages are independent, and each victim's verdict
is read on its own. A corruption whose damage touches something every task shares (a
queue-wide key, an index of all records, a table of queues, a gate key other tasks may
hold) says so in ``shared`` and runs alone. ``RELIABILITY_CORRUPTION_ALONE=1`` runs every
corruption alone (to tell which of a failing batch is at fault).

Pass criteria, for each corruption:

* the worker keeps running (and stops cleanly on SIGTERM), its log shows no traceback;
* every good task runs exactly once and succeeds;
* the victim is dead-lettered with a reason, or its record is ``dead`` with an error (or,
  for a corruption the backend repairs, ``victim_runs``, it ran exactly once);
* ``bgcoor status`` answers (exit 0) while the damage is there and after the worker
  dealt with it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from bgcoor_core import CorruptRecordError, TaskStatus

from .harness import APP, Rig, Worker, wait_until
from .outcome import QUEUE, Outcome, stop_cleanly

Apply = Callable[[Rig, str], Awaitable[None]]

#: Good tasks enqueued before the first victim and after the last (one more sits between
#: each two victims).
GOOD_AROUND = 10


@dataclass(frozen=True)
class Corruption:
    """One kind of damage to what ``backend`` stores for a task.

    ``apply(rig, victim_id)`` writes the bad value with a raw client (sqlite3, redis,
    asyncpg); ``what`` is its line in ``docs/reliability.md``. ``shared`` names what else
    the damage touches, beyond the victim's own items (then it runs in a rig of its own).
    """

    backend: str
    name: str
    what: str
    apply: Apply
    victim_runs: bool = False
    shared: str | None = None


def batches(corruptions: Iterable[Corruption]) -> list[tuple[Corruption, ...]]:
    """The rigs to run: per backend, every corruption without ``shared`` in one, each
    other alone (everything alone under ``RELIABILITY_CORRUPTION_ALONE=1``)."""
    alone = os.environ.get("RELIABILITY_CORRUPTION_ALONE", "") not in ("", "0")
    together: dict[str, list[Corruption]] = {}
    found: list[tuple[Corruption, ...]] = []
    for corruption in corruptions:
        if alone or corruption.shared is not None:
            found.append((corruption,))
        else:
            together.setdefault(corruption.backend, []).append(corruption)
    return [tuple(group) for group in together.values()] + found


@dataclass(frozen=True)
class _Victim:
    corruption: Corruption
    key: str  # its ledger key (the task's argument)
    id: str


async def _dead_letter_reasons(rig: Rig) -> dict[str, str]:
    letters = await rig.producer.broker.dead_letters(QUEUE, limit=10_000)
    return {letter.id: letter.reason for letter in letters if letter.reason}


async def _verdict(rig: Rig, victim: str, letters: dict[str, str]) -> str | None:
    """Why the victim was set aside (its dead letter's reason, else its dead record's
    error), or ``None`` while it is not."""
    if victim in letters:
        return letters[victim]
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


async def _status_problems(rig: Rig, when: str) -> list[str]:
    """Nothing if ``bgcoor status`` answers; else what it said."""
    result = await asyncio.to_thread(_status_command, rig)
    if result.returncode == 0 and "Tasks by status" in result.stdout:
        return []
    return [
        f"bgcoor status {when}: exit {result.returncode}\n{result.stdout[-800:]}"
        f"{result.stderr[-1500:]}"
    ]


async def _enqueue(
    rig: Rig, corruptions: Sequence[Corruption]
) -> tuple[dict[str, str], list[_Victim]]:
    """Good tasks around the victims, one victim per corruption: the good tasks' ids by
    key, the victims. The first good task is enqueued first (the PostgreSQL corruptions
    that copy "another task's" body or record read it)."""
    good: dict[str, str] = {}

    async def add_good(count: int) -> None:
        keys = [f"g{len(good) + i}" for i in range(count)]
        handles = await rig.tasks.work.enqueue_many([(k,) for k in keys])
        good.update((k, h.id) for k, h in zip(keys, handles, strict=True))

    await add_good(GOOD_AROUND)
    victims: list[_Victim] = []
    for i, corruption in enumerate(corruptions):
        if i:
            await add_good(1)
        key = f"victim-{corruption.name}"
        handle = await rig.tasks.work.enqueue(key)
        victims.append(_Victim(corruption, key, handle.id))
    await add_good(GOOD_AROUND)
    return good, victims


async def run_corruptions(rig: Rig, corruptions: Sequence[Corruption]) -> dict[str, Outcome]:
    """Good tasks, one damaged victim per corruption in their midst, one worker (see the
    module docs); each corruption's outcome by its name."""
    outcomes = {c.name: Outcome(f"corrupt {c.name}", rig.backend.name) for c in corruptions}
    if len(corruptions) > 1:
        names = ", ".join(c.name for c in corruptions)
        for outcome in outcomes.values():
            outcome.details["the rig's corruptions"] = names
    try:
        shared = await _run(rig, corruptions, outcomes)
    except Exception:  # the rig itself broke: every corruption of the batch fails with it
        shared = [f"the run raised:\n{traceback.format_exc()}"]
    for outcome in outcomes.values():
        outcome.failures[:0] = shared
        if outcome.failures:
            outcome.logs = rig.workers.logs(3000)
    return outcomes


async def _run(
    rig: Rig, corruptions: Sequence[Corruption], outcomes: dict[str, Outcome]
) -> list[str]:
    """The batch; what fails every corruption of it (each victim's own verdict goes to its
    outcome)."""
    shared: list[str] = []
    good, victims = await _enqueue(rig, corruptions)
    for victim in victims:
        try:
            await victim.corruption.apply(rig, victim.id)
        except Exception:
            outcomes[victim.corruption.name].failures.append(
                f"the damage could not be applied:\n{traceback.format_exc()}"
            )
    shared.extend(await _status_problems(rig, "with the damage in place"))

    worker = rig.workers.start(concurrency=4)
    await worker.ready()
    try:
        await wait_until(
            _settled(rig, worker, list(good.values()), victims),
            60,
            "good tasks final, each victim set aside or (where repaired) run",
        )
    except AssertionError as exc:
        shared.append(str(exc))
    # A late duplicate of a good task would show in the ledger within 0.3 s; bgcoor status
    # (on the store the worker has dealt with) answers meanwhile.
    after, _ = await asyncio.gather(
        _status_problems(rig, "after the worker dealt with the damage"), asyncio.sleep(0.3)
    )
    if not worker.alive():
        shared.append("the worker died")
    shared.extend(await _good_problems(rig, good))
    completed = rig.ledger.completed()
    letters = await _dead_letter_reasons(rig)
    for victim in victims:
        await _judge(rig, outcomes[victim.corruption.name], victim, completed[victim.key], letters)
    if "Traceback" in worker.output():
        shared.append("the worker log shows a traceback")
    shared.extend(after)
    stopped = Outcome("stop", rig.backend.name)
    await stop_cleanly(rig, stopped)
    return shared + stopped.failures


def _settled(
    rig: Rig, worker: Worker, good_ids: list[str], victims: list[_Victim]
) -> Callable[[], Awaitable[bool]]:
    """The condition the batch waits for: every good record final, every victim that is
    to be set aside set aside, every victim that is to run run. What has got there is not
    asked again."""
    unsettled = set(good_ids)
    to_run = {v.key for v in victims if v.corruption.victim_runs}
    unjudged = {v.id for v in victims if not v.corruption.victim_runs}

    async def settled() -> bool:
        rig.workers.check()
        if not worker.alive():
            raise AssertionError(f"worker died:\n{worker.output()[-3000:]}")
        statuses = await rig.statuses(unsettled)
        unsettled.difference_update(i for i, s in statuses.items() if s is not None and s.is_final)
        completed = rig.ledger.completed()
        to_run.difference_update([k for k in to_run if completed[k] >= 1])
        if unjudged:
            letters = await _dead_letter_reasons(rig)
            for victim_id in list(unjudged):
                if await _verdict(rig, victim_id, letters) is not None:
                    unjudged.discard(victim_id)
        return not (unsettled or to_run or unjudged)

    return settled


async def _good_problems(rig: Rig, good: dict[str, str]) -> list[str]:
    """Each good task ran exactly once (the ledger) and its record says it succeeded."""
    problems = []
    completed = rig.ledger.completed()
    wrong = {k: completed[k] for k in good if completed[k] != 1}
    if wrong:
        problems.append(f"good tasks not run exactly once: {wrong}")
    statuses = await rig.statuses(good.values())
    bad = {i: s for i, s in statuses.items() if s is not TaskStatus.SUCCEEDED}
    if bad:
        problems.append(f"{len(bad)} good task(s) not succeeded: {bad}")
    return problems


async def _judge(
    rig: Rig, outcome: Outcome, victim: _Victim, count: int, letters: dict[str, str]
) -> None:
    """The victim's own verdict: it ran once where the backend repairs the damage;
    otherwise it ran at most once and was dead-lettered or marked dead."""
    if victim.corruption.victim_runs:
        outcome.expect(count == 1, f"the victim ran {count} times, not once")
        return
    outcome.expect(count <= 1, f"the victim ran {count} times")
    reason = await _verdict(rig, victim.id, letters)
    outcome.expect(bool(reason), "the victim was neither dead-lettered nor marked dead")
    outcome.details["reason"] = reason
