"""The scenario catalogue shared by the tests and ``benchmarks/chaos.py``.

Each :class:`Scenario` is an async function ``run(rig, **params) -> Outcome`` plus the
settings its rig needs. :func:`run_scenario` opens a rig on a backend, runs one scenario
and returns its :class:`Outcome`; the caller asserts ``outcome.passed`` (tests) or writes
the figures down (the driver).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import crashes, inputs, timing
from .backends import Backend
from .harness import open_rig
from .outcome import Outcome


@dataclass(frozen=True)
class Scenario:
    number: int
    name: str
    title: str
    run: Callable[..., Awaitable[Outcome]]
    settings: dict[str, Any] = field(default_factory=dict)
    #: Which parameters the driver scales: ``--tasks`` and ``--kill-seconds``.
    scales: tuple[str, ...] = ()


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            1, "sigkill", "SIGKILL mid-task", crashes.sigkill, scales=("tasks", "kill_seconds")
        ),
        Scenario(
            2,
            "crash_before_ack",
            "crash after the side effect, before ack",
            crashes.crash_before_ack,
            scales=("tasks",),
        ),
        Scenario(
            3, "long_lease", "task longer than its lease", timing.long_lease, {"lease_seconds": 2.0}
        ),
        Scenario(4, "zombie", "zombie worker (SIGSTOP for 3 leases)", crashes.zombie),
        Scenario(
            5,
            "poison",
            "poison task (os._exit)",
            crashes.poison,
            {"max_worker_lost": 2},
            scales=("good",),
        ),
        Scenario(
            6,
            "retries",
            "always-failing task, max_retries=5",
            timing.retries,
            {"retry_backoff": 0.1, "retry_backoff_max": 0.8},
        ),
        Scenario(
            7,
            "malformed",
            "malformed messages (Hypothesis)",
            inputs.malformed,
            scales=("examples",),
        ),
        Scenario(8, "oversize", "oversize payload", inputs.oversize, {"max_payload_bytes": 65536}),
        Scenario(
            10,
            "sigterm",
            "graceful SIGTERM",
            timing.sigterm,
            {"lease_seconds": 30.0, "shutdown_grace": 1.5, "prefetch": 2},
        ),
        Scenario(
            10,
            "sigterm_twice",
            "SIGTERM, then a second signal",
            timing.sigterm,
            {"lease_seconds": 30.0, "shutdown_grace": 1.5, "prefetch": 2},
        ),
        Scenario(12, "names", "hostile queue and task names", inputs.names),
        Scenario(13, "pickle", "pickle content type", inputs.pickle_refused),
    ]
}


async def run_scenario(
    scenario: Scenario, backend: Backend, workdir: Path, **params: Any
) -> Outcome:
    """Run ``scenario`` on a fresh rig of ``backend`` in ``workdir``.

    A scenario that cannot even finish (a wait timed out) raises :class:`AssertionError`
    carrying the workers' logs; a finished one reports its failed criteria in the outcome.
    """
    if scenario.name == "sigterm_twice":
        params.setdefault("second_signal", True)
    async with open_rig(backend, workdir, **scenario.settings) as rig:
        started = time.monotonic()
        try:
            outcome = await scenario.run(rig, **params)
        except AssertionError as exc:
            raise AssertionError(
                f"{scenario.name} on {backend.name}: {exc}\n{rig.workers.logs()}"
            ) from None
        outcome.seconds = time.monotonic() - started
        if not outcome.passed:
            outcome.logs = rig.workers.logs()
        return outcome
