"""A task that runs in the background for the duration of an ``async with``.

A plugin's cancel channel (:meth:`~bgcoor_core.kit.CancelSignals.subscribe`) listens on a
connection of its own while the worker pool runs: the listening loop is a task started on
entering the block and cancelled (and waited for) on leaving it, whatever ends the block.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def running_in_background(
    start: Callable[[], Coroutine[Any, Any, None]], *, name: str
) -> AsyncIterator[None]:
    """Run ``start()`` as a task named ``name`` while the block runs; on leaving it, cancel
    the task and wait for it to end. ``start`` is called only on entering, so a context
    manager built and never entered leaves no coroutine unawaited."""
    task = asyncio.create_task(start(), name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
