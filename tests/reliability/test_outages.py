"""Scenarios 9, 11: a broker server that restarts, or evicts keys when full (private
servers on other ports; the shared ones are never touched)."""

from __future__ import annotations

import pytest

from .backends import Backend
from .conftest import Run

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]


async def test_broker_restart_loses_no_accepted_task(run: Run) -> None:
    outcome = await run("broker_restart")
    assert outcome.passed, outcome.explain()
    assert outcome.enqueued > 0


async def test_evicting_redis_is_refused_or_raises_never_drops(
    run: Run, backend: Backend, request: pytest.FixtureRequest
) -> None:
    if backend.name == "redis":  # strict: passing is an error, so the marker goes then
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="bgcoor-redis (issue 4) does not check maxmemory-policy yet: under "
                "allkeys-lru a full Redis evicts queued tasks while enqueue succeeds",
            )
        )
    outcome = await run("eviction")
    assert outcome.passed, outcome.explain()
