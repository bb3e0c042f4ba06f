"""Scenarios 9, 11: a broker server that restarts, or evicts keys when full (private
servers on other ports; the shared ones are never touched). The restarts of Redis and
PostgreSQL, each on a private server of its own, happen at the same time."""

from __future__ import annotations

import pytest

from .conftest import Run

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]


async def test_broker_restart_loses_no_accepted_task(run: Run) -> None:
    outcome = await run("broker_restart", together=True)
    assert outcome.passed, outcome.explain()
    assert outcome.enqueued > 0


async def test_evicting_redis_is_refused_or_raises_never_drops(run: Run) -> None:
    outcome = await run("eviction")
    assert outcome.passed, outcome.explain()
