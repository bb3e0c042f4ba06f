"""Fixtures of the reliability suite: one parametrised ``backend`` and a ``run`` factory.

Redis and PostgreSQL appear once their plugins are installed; see ``backends.py`` for
when they skip and when (``CI=true``) a missing server fails instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from .backends import BACKENDS, Backend, in_ci
from .outcome import Outcome
from .scenarios import SCENARIOS, run_scenario
from .servers import Unavailable

Run = Callable[..., Awaitable[Outcome]]


@pytest.fixture(
    params=[
        pytest.param(b, id=b.name, marks=[pytest.mark.server] if b.server else [])
        for b in BACKENDS.values()
    ]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    chosen: Backend = request.param
    reason = chosen.unavailable()
    if reason is not None:
        if chosen.must_run():
            pytest.fail(f"{reason} (CI=true and the plugin is installed)")
        pytest.skip(reason)
    return chosen


@pytest.fixture
def run(backend: Backend, tmp_path: Path) -> Run:
    """``await run("sigkill", tasks=100)``: the named scenario on this test's backend."""

    async def run(name: str, **params: Any) -> Outcome:
        scenario = SCENARIOS[name]
        if not scenario.applies_to(backend):
            pytest.skip(f"{name} does not apply to {backend.name}")
        try:
            return await run_scenario(scenario, backend, tmp_path, **params)
        except Unavailable as exc:
            if in_ci():
                raise
            pytest.skip(str(exc))

    return run
