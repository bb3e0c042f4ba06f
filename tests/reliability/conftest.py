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
from .together import Together, backend_of

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
def run(backend: Backend, tmp_path: Path, request: pytest.FixtureRequest) -> Run:
    """``await run("sigkill", tasks=100)``: the named scenario on this test's backend.

    ``await run("zombie", together=True)``: the scenario (with its default parameters) on
    every backend the session selected for this test, all at once, this test getting
    its own backend's outcome (see ``together.py``); for scenarios that time nothing
    finer than a lease.
    """

    async def run(name: str, *, together: bool = False, **params: Any) -> Outcome:
        scenario = SCENARIOS[name]
        if not scenario.applies_to(backend):
            pytest.skip(f"{name} does not apply to {backend.name}")
        try:
            if together:
                assert not params, "a scenario run together takes its default parameters"
                return await _together(request, name).result(request, backend.name)
            return await run_scenario(scenario, backend, tmp_path, **params)
        except Unavailable as exc:
            if in_ci():
                raise
            pytest.skip(str(exc))

    return run


_TOGETHER: dict[tuple[str, str], Together[Outcome]] = {}


def _together(request: pytest.FixtureRequest, name: str) -> Together[Outcome]:
    """The runs of scenario ``name`` for the requesting test, on the backends it applies
    to (one set per test function and session)."""
    test = (request.node.nodeid.partition("[")[0], name)
    if test not in _TOGETHER:
        scenario = SCENARIOS[name]

        async def case(backend: str, workdir: Path) -> Outcome:
            return await run_scenario(scenario, BACKENDS[backend], workdir)

        def key_of(item: pytest.Function) -> str | None:
            key = backend_of(item)
            return key if key is not None and scenario.applies_to(BACKENDS[key]) else None

        _TOGETHER[test] = Together(case, key_of)
    return _TOGETHER[test]
