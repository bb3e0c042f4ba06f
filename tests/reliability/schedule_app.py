"""The scheduler application of ``test_schedulers.py``, configured by the environment:

    python -m bgcoor_core.cli scheduler reliability.schedule_app:manager

One schedule, ``rel.tick`` every second. No worker runs it: each tick's task record (its
``bgcoor-tick`` header) is the ledger the test reads.
"""

from __future__ import annotations

from datetime import timedelta

from bgcoor_core import TaskManager

#: The schedule (and task) whose ticks the test counts.
TICK_TASK = "rel.tick"
EVERY = timedelta(seconds=1)

manager = TaskManager()


@manager.periodic(every=EVERY, id=TICK_TASK, name=TICK_TASK)
async def tick(scheduled_at: str | None = None) -> None:
    """Never runs (no worker): its records are the ledger."""
