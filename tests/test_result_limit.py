"""Issue 10, class 6: a result is limited like the arguments are (``max_result_bytes``)."""

from __future__ import annotations

from typing import Any

import pytest

from bgcoor_core import TaskFailedError, TaskManager, TaskStatus


async def test_a_result_above_max_result_bytes_is_refused_with_its_size(
    fast: dict[str, Any],
) -> None:
    manager = TaskManager(**fast, max_result_bytes=4096)

    @manager.task(name="jobs.report")
    def report(size: int) -> str:
        return "x" * size

    small = await report.enqueue(100)
    big = await report.enqueue(50_000)
    await manager.drain()
    assert await small.result(timeout=1) == "x" * 100
    with pytest.raises(TaskFailedError) as failed:
        await big.result(timeout=1)
    assert "50002 bytes" in str(failed.value)
    assert "BGCOOR_MAX_RESULT_BYTES" in str(failed.value)
    record = await manager.get(big.id)
    assert record.status is TaskStatus.DEAD
    assert record.result is None
    await manager.close()
