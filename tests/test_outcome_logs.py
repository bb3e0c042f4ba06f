"""The worker says what happened to each task: a line per outcome at info or above, and
one per delivery received at debug (issue 11)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from bgcoor_core import TaskManager


async def test_each_outcome_has_a_log_line(
    caplog: pytest.LogCaptureFixture, fast: dict[str, Any]
) -> None:
    manager = TaskManager(**fast, max_retries=1)
    attempts: list[int] = []

    @manager.task(name="jobs.ok")
    def ok() -> int:
        return 1

    @manager.task(name="jobs.flaky")
    def flaky() -> None:
        attempts.append(1)
        raise ConnectionError("db down\nsecond line")

    @manager.task(name="jobs.bad", retry_on=(ConnectionError,))
    def bad() -> None:
        raise ValueError("wrong input")

    caplog.set_level(logging.DEBUG, logger="bgcoor.executor")
    good = await ok.enqueue()
    await flaky.enqueue()
    await bad.enqueue()
    async with manager.worker(concurrency=2):
        await good.result(timeout=5)
        for _ in range(300):
            if "dead-lettered" in caplog.text and "failed:" in caplog.text:
                break
            await asyncio.sleep(0.01)
    await manager.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "bgcoor.executor"]
    assert any(f"task {good.id} (jobs.ok) succeeded in " in line for line in lines)
    assert any(
        "(jobs.flaky) retrying in " in line and "after ConnectionError: db down" in line
        for line in lines
    )
    assert any("(jobs.bad) failed: ValueError: wrong input" in line for line in lines)
    dead = [line for line in lines if "(jobs.flaky) dead-lettered: max_retries exceeded" in line]
    assert dead, lines
    assert "last error: ConnectionError: db down" in dead[0]
    assert "second line" not in "\n".join(lines)  # one record, one line
    assert any("(jobs.ok) received: attempt 1" in line for line in lines)
    levels = {r.levelno for r in caplog.records if "received" in r.getMessage()}
    assert levels == {logging.DEBUG}
