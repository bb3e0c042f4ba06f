"""Scenarios 1, 2, 4, 5: killed, crashing, frozen and self-destructing workers.

The zombie and poison scenarios spend their time waiting for leases to run out: their
backends run at once (``run(..., together=True)``). SIGKILL chaos and the crash before
ack keep the machine busy restarting workers, so they run one backend at a time."""

from __future__ import annotations

import pytest

from .conftest import Run

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]


async def test_sigkill_mid_task_loses_nothing(run: Run) -> None:
    outcome = await run("sigkill")
    assert outcome.passed, outcome.explain()
    assert outcome.kills >= 3, outcome.explain()
    assert outcome.lost == 0
    assert outcome.quarantined <= outcome.kills // 3  # each needs 3 kills while alone


async def test_crash_between_side_effect_and_ack_runs_again_once_per_key(run: Run) -> None:
    outcome = await run("crash_before_ack")
    assert outcome.passed, outcome.explain()
    assert outcome.kills == 6
    assert outcome.duplicates >= 6  # each crashed task ran again...
    assert outcome.details["side_effect_rows"] == outcome.enqueued  # ...its effect once


async def test_zombie_result_is_refused_after_redelivery(run: Run) -> None:
    outcome = await run("zombie", together=True)
    assert outcome.passed, outcome.explain()
    assert outcome.duplicates == 1  # the zombie did run to the end: its result was refused


async def test_poison_task_is_dead_lettered_and_good_tasks_complete(run: Run) -> None:
    outcome = await run("poison", together=True)
    assert outcome.passed, outcome.explain()
    assert outcome.details["poison_runs"] == 3  # max_worker_lost=2: two losses allowed
    assert outcome.lost == 0
