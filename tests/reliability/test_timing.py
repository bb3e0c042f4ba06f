"""Scenarios 3, 6, 10: long tasks under renewed leases, retry backoff, graceful shutdown."""

from __future__ import annotations

import pytest

from .conftest import Run

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]


async def test_tasks_longer_than_the_lease_run_once(run: Run) -> None:
    outcome = await run("long_lease")
    assert outcome.passed, outcome.explain()
    assert (outcome.enqueued, outcome.duplicates) == (5, 0)


async def test_always_failing_task_retries_with_backoff_then_dead_letters(run: Run) -> None:
    outcome = await run("retries")
    assert outcome.passed, outcome.explain()
    assert len([k for k in outcome.details if k.startswith("pause")]) == 5


@pytest.mark.parametrize("scenario", ["sigterm", "sigterm_twice"])
async def test_sigterm_hands_back_and_loses_nothing(run: Run, scenario: str) -> None:
    outcome = await run(scenario)
    assert outcome.passed, outcome.explain()
    assert outcome.lost == 0
