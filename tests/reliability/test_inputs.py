"""Scenarios 7, 8, 12, 13: bad bodies, oversize payloads, hostile names, pickle."""

from __future__ import annotations

import pytest

from .conftest import Run
from .payloads import KINDS

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]


async def test_malformed_messages_are_dead_lettered_without_harm(run: Run) -> None:
    outcome = await run("malformed", examples=60)
    assert outcome.passed, outcome.explain()
    assert set(outcome.details["kinds"]) == {*KINDS, "pickle"}


async def test_oversize_payloads_are_refused_or_dead_lettered(run: Run) -> None:
    outcome = await run("oversize")
    assert outcome.passed, outcome.explain()


async def test_hostile_names_are_refused_and_lookalikes_stay_apart(run: Run) -> None:
    outcome = await run("names")
    assert outcome.passed, outcome.explain()


async def test_pickle_is_refused_unless_enabled(run: Run) -> None:
    outcome = await run("pickle")
    assert outcome.passed, outcome.explain()
