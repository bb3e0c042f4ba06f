"""What a scenario run reports, and the checks every scenario ends with."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bgcoor_core import TaskStatus

from .harness import Rig, check_ledger

QUEUE = "default"


@dataclass
class Outcome:
    """One scenario on one backend: the figures of ``docs/reliability.md`` and, in
    ``failures``, every pass criterion that did not hold (empty: passed)."""

    scenario: str
    backend: str
    enqueued: int = 0
    kills: int = 0  # worker processes that died or were killed during the run
    lost: int = 0  # enqueued tasks that never completed
    quarantined: int = 0  # innocent tasks dead-lettered by max_worker_lost under chaos
    duplicates: int = 0  # completed executions beyond the first, per task
    recover: float | None = None  # seconds from the last fault until all work was done
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    logs: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures

    def expect(self, ok: bool, problem: str) -> None:
        """Record ``problem`` unless ``ok``."""
        if not ok:
            self.failures.append(problem)

    def explain(self) -> str:
        lines = [f"{self.scenario} on {self.backend}: " + ("passed" if self.passed else "FAILED")]
        lines += [f"  - {problem}" for problem in self.failures]
        lines += [f"  {key}: {value}" for key, value in self.details.items()]
        if self.logs:
            lines.append(self.logs)
        return "\n".join(lines)


async def account(
    rig: Rig,
    outcome: Outcome,
    keys: Iterable[str],
    ids: Iterable[str],
    *,
    quarantine: bool = False,
    maybe: Iterable[str] = (),
) -> None:
    """The ledger check plus the stored records: each key completed at least once and each
    task's record ``succeeded``; fills ``lost`` and ``duplicates``.

    With ``quarantine`` (chaos that kills workers at random), a task dead-lettered by the
    ``max_worker_lost`` policy is counted in ``quarantined`` instead: not lost (it waits in
    the dead-letter queue with its reason, for a requeue), but reported. Keys in ``maybe``
    (an enqueue that raised, yet may have gone through) may run without being expected.
    """
    key_of = dict(zip(ids, keys, strict=True))  # both in enqueue order
    report = check_ledger(rig.ledger, key_of.values())
    report.unexpected = [k for k in report.unexpected if k not in set(maybe)]
    statuses = await rig.statuses(key_of)
    unsettled = {i: s for i, s in statuses.items() if s is not TaskStatus.SUCCEEDED}
    letters = {d.id: d.reason for d in await rig.producer.broker.dead_letters(QUEUE, limit=10**6)}
    if quarantine:
        held = {i for i in unsettled if letters.get(i, "").startswith("worker_lost")}
        outcome.quarantined = len(held)
        unsettled = {i: s for i, s in unsettled.items() if i not in held}
        report.missing = [k for k in report.missing if k not in {key_of[i] for i in held}]
    outcome.enqueued = max(outcome.enqueued, len(key_of))
    outcome.lost = max(report.lost, len(unsettled))
    outcome.duplicates = report.duplicates
    outcome.failures.extend(report.problems())
    if unsettled:
        sample = dict(list(unsettled.items())[:5])
        outcome.failures.append(f"{len(unsettled)} record(s) not succeeded: {sample}")
        outcome.details["dead letters"] = list(letters.items())[:5]


async def nothing_left(rig: Rig, outcome: Outcome, *, dead: int = 0) -> None:
    """No record ``running``, no message waiting or reserved, ``dead`` dead letters."""
    running = await rig.count(TaskStatus.RUNNING)
    outcome.expect(running == 0, f"{running} record(s) left running")
    stats = await rig.producer.broker.stats(QUEUE)
    outcome.expect(
        (stats.ready, stats.scheduled, stats.reserved, stats.dead) == (0, 0, 0, dead),
        f"queue not settled: {stats} (expected {dead} dead)",
    )


async def stop_cleanly(rig: Rig, outcome: Outcome) -> None:
    """SIGTERM every live worker: each must exit 0."""
    codes = await rig.workers.stop()
    outcome.expect(all(code == 0 for code in codes), f"workers exited with {codes} on SIGTERM")
