"""The scenario catalogue shared by the tests and ``benchmarks/chaos.py``.

Each :class:`Scenario` is an async function ``run(rig, **params) -> Outcome`` plus the
settings its rig needs. :func:`run_scenario` opens a rig on a backend, runs one scenario
and returns its :class:`Outcome`; the caller asserts ``outcome.passed`` (tests) or writes
the figures down (the driver).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import crashes, inputs, outages, timing
from .backends import Backend
from .harness import open_rig
from .outcome import Outcome
from .servers import private_server

Scale = Callable[[int, float], dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    """A scenario of issue 6 (``number``), the settings its rig needs, and how the driver
    scales it: ``scale(tasks, kill_seconds)`` gives its parameters for a bigger run."""

    number: int
    name: str
    title: str
    run: Callable[..., Awaitable[Outcome]]
    settings: dict[str, Any] = field(default_factory=dict)
    scale: Scale = lambda tasks, kill_seconds: {}
    #: Backends it applies to (``None``: all); a scenario that restarts or reconfigures a
    #: server runs on a private one started with ``server_config``.
    backends: frozenset[str] | None = None
    private_server: bool = False
    server_config: tuple[str, ...] = ()

    def applies_to(self, backend: Backend) -> bool:
        return self.backends is None or backend.name in self.backends


SHUTDOWN = {"lease_seconds": 30.0, "shutdown_grace": 1.5, "prefetch": 2}

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            1,
            "sigkill",
            "SIGKILL mid-task",
            crashes.sigkill,
            scale=lambda tasks, kill_seconds: {"tasks": tasks, "kill_seconds": kill_seconds},
        ),
        Scenario(
            2,
            "crash_before_ack",
            "crash after the side effect, before ack",
            crashes.crash_before_ack,
            scale=lambda tasks, _: {
                "tasks": max(24, tasks // 10),
                "crashing": max(6, min(tasks // 40, 50)),
            },
        ),
        Scenario(3, "long_lease", "task longer than its lease", timing.long_lease),
        Scenario(4, "zombie", "zombie worker (SIGSTOP for 3 leases)", crashes.zombie),
        Scenario(
            5,
            "poison",
            "poison task (os._exit)",
            crashes.poison,
            {"max_worker_lost": 2},
            scale=lambda tasks, _: {"good": max(60, tasks // 10)},
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
            scale=lambda tasks, _: {"examples": max(60, min(tasks // 10, 1000))},
        ),
        Scenario(8, "oversize", "oversize payload", inputs.oversize, {"max_payload_bytes": 65536}),
        Scenario(
            9,
            "broker_restart",
            "broker restart",
            outages.broker_restart,
            backends=frozenset({"redis", "postgres"}),
            private_server=True,
        ),
        Scenario(10, "sigterm", "graceful SIGTERM", timing.sigterm, SHUTDOWN),
        Scenario(
            10,
            "sigterm_twice",
            "SIGTERM, then a second signal",
            functools.partial(timing.sigterm, second_signal=True),
            SHUTDOWN,
        ),
        Scenario(
            11,
            "eviction",
            "Redis eviction policy",
            outages.eviction,
            backends=frozenset({"redis"}),
            private_server=True,
            server_config=("--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"),
        ),
        Scenario(12, "names", "hostile queue and task names", inputs.names),
        Scenario(13, "pickle", "pickle content type", inputs.pickle_refused),
    ]
}


async def run_scenario(
    scenario: Scenario, backend: Backend, workdir: Path, **params: Any
) -> Outcome:
    """Run ``scenario`` on a fresh rig of ``backend`` in ``workdir`` (on a private server
    when it needs one; :class:`~.servers.Unavailable` when that cannot be started).

    A scenario that cannot even finish (a wait timed out) raises :class:`AssertionError`
    carrying the workers' logs; a finished one reports its failed criteria in the outcome.
    """
    async with contextlib.AsyncExitStack() as stack:
        url = None
        if scenario.private_server:
            server = stack.enter_context(
                private_server(backend.name, workdir, *scenario.server_config)
            )
            url, params = server.url(), {**params, "server": server}
        rig = await stack.enter_async_context(
            open_rig(backend, workdir, url=url, **scenario.settings)
        )
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
