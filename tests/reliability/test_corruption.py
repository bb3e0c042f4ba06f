"""Issue 10, class 1: a backend's own state corrupted one column, field or key at a time
costs that one task, never the queue (see ``corruption.py``).

Each corruption is its own test. Those that damage only their victim's own items share a
rig per backend (see :func:`corruption.batches`); the rigs run two at a time
(``together.py``), started when the first test asks, and every test asserts its own
corruption's outcome.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from .backends import BACKENDS
from .corruption import Corruption, batches, run_corruptions
from .harness import open_rig
from .outcome import Outcome
from .together import Together

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(150)]

MODULES = ("corrupt_sqlite", "corrupt_redis", "corrupt_postgres")


def _corruptions() -> list[Corruption]:
    found: list[Corruption] = []
    for name in MODULES:
        found.extend(importlib.import_module(f"{__package__}.{name}").CORRUPTIONS)
    return found


CORRUPTIONS = _corruptions()
#: Each rig's corruptions, by a label naming the rig.
BATCHES = {
    f"{batch[0].backend}-{batch[0].name if len(batch) == 1 else 'batch'}": batch
    for batch in batches(CORRUPTIONS)
}
LABELS = {(c.backend, c.name): label for label, batch in BATCHES.items() for c in batch}


async def _run_batch(label: str, workdir: Path) -> dict[str, Outcome]:
    batch = BATCHES[label]
    async with open_rig(BACKENDS[batch[0].backend], workdir) as rig:  # the shared servers
        return await run_corruptions(rig, batch)


def _label_of(item: pytest.Function) -> str | None:
    corruption = item.callspec.params["corruption"]
    assert isinstance(corruption, Corruption)
    if BACKENDS[corruption.backend].unavailable() is not None:
        return None  # its own test skips or fails
    return LABELS[corruption.backend, corruption.name]


#: The rigs share nothing and their checks time nothing: two run at a time.
RUNS = Together(_run_batch, _label_of, width=2)


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
async def test_corruption_costs_one_task(
    corruption: Corruption, request: pytest.FixtureRequest
) -> None:
    backend = BACKENDS[corruption.backend]
    reason = backend.unavailable()
    if reason is not None:
        if backend.must_run():
            pytest.fail(f"{reason} (CI=true and the plugin is installed)")
        pytest.skip(reason)
    outcomes = await RUNS.result(request, LABELS[corruption.backend, corruption.name])
    outcome = outcomes[corruption.name]
    assert outcome.passed, outcome.explain()


def test_every_backend_lists_corruptions() -> None:
    assert {c.backend for c in CORRUPTIONS} == set(BACKENDS)
    names = [(c.backend, c.name) for c in CORRUPTIONS]
    assert len(names) == len(set(names)), "corruption names repeat"


def test_every_corruption_runs_in_exactly_one_batch() -> None:
    runs = [(c.backend, c.name) for batch in batches(CORRUPTIONS) for c in batch]
    assert sorted(runs) == sorted((c.backend, c.name) for c in CORRUPTIONS)
    for batch in batches(CORRUPTIONS):
        assert len({c.backend for c in batch}) == 1, "a batch mixes backends"
        assert len(batch) == 1 or all(c.shared is None for c in batch), "shared damage batched"
