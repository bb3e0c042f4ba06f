"""Issue 10, class 1: a backend's own state corrupted one column, field or key at a time
costs that one task, never the queue (see ``corruption.py``)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from .backends import BACKENDS
from .corruption import Corruption, run_corruption
from .harness import open_rig

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(150)]

MODULES = ("corrupt_sqlite", "corrupt_redis", "corrupt_postgres")


def _corruptions() -> list[Corruption]:
    found: list[Corruption] = []
    for name in MODULES:
        found.extend(importlib.import_module(f"{__package__}.{name}").CORRUPTIONS)
    return found


CORRUPTIONS = _corruptions()


@pytest.mark.parametrize(
    "corruption",
    [
        pytest.param(
            c,
            id=f"{c.backend}-{c.name}",
            marks=[pytest.mark.server] if BACKENDS[c.backend].server else [],
        )
        for c in CORRUPTIONS
    ],
)
async def test_corruption_costs_one_task(corruption: Corruption, tmp_path: Path) -> None:
    backend = BACKENDS[corruption.backend]
    reason = backend.unavailable()
    if reason is not None:
        if backend.must_run():
            pytest.fail(f"{reason} (CI=true and the plugin is installed)")
        pytest.skip(reason)
    async with open_rig(backend, tmp_path) as rig:  # the shared servers, no private one
        outcome = await run_corruption(rig, corruption)
    assert outcome.passed, outcome.explain()


def test_every_backend_lists_corruptions() -> None:
    assert {c.backend for c in CORRUPTIONS} == set(BACKENDS)
    names = [(c.backend, c.name) for c in CORRUPTIONS]
    assert len(names) == len(set(names)), "corruption names repeat"
