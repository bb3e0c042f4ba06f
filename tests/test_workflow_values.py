"""Workflow members and the values they pass on: parents' results arrive once (also on a
retry), sealed payloads and results (payload codecs, pickle) are opened for the member and
for the workflow's result, rich values survive the hand-over (issue 15)."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bgcoor_core import Retry, TaskManager, TaskStatus, chain, group

KEY = base64.b64encode(bytes(range(32))).decode()
FAST: dict[str, Any] = {
    "broker_url": "memory://",
    "storage_url": "memory://",
    "lease_seconds": 2.0,
    "retry_backoff": 0.01,
    "retry_backoff_max": 0.02,
}
SETUPS = {
    "plain": {},
    "sealed": {
        "payload_codecs": "zstd,aesgcm",
        "encryption_keys": f"k1:{KEY}",
        "compression_threshold": 0,
    },
}


@pytest.fixture(params=sorted(SETUPS))
async def manager(request: pytest.FixtureRequest) -> AsyncIterator[TaskManager]:
    manager = TaskManager(**FAST, **SETUPS[request.param])
    yield manager
    await manager.close()


async def test_a_retried_member_gets_its_parents_results_once(manager: TaskManager) -> None:
    seen: list[tuple[Any, ...]] = []

    @manager.task
    def one() -> int:
        return 1

    @manager.task(max_retries=2)
    def two(*values: int) -> int:
        seen.append(values)
        if len(seen) == 1:
            raise Retry(after=0)
        return sum(values) + 10

    handle = await chain(one.s(), two.s()).enqueue()
    await manager.drain()
    assert seen == [(1,), (1,)]
    assert await handle.result(timeout=5) == 11


async def test_rich_results_cross_members_and_reach_the_workflow_result(
    manager: TaskManager,
) -> None:
    start = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)

    @manager.task
    def stamp(day: int) -> dt.datetime:
        return start + dt.timedelta(days=day)

    @manager.task
    def later(when: dt.datetime, by: dt.timedelta) -> dt.datetime:
        assert isinstance(when, dt.datetime)
        return when + by

    @manager.task
    def raw(blob):  # type: ignore[no-untyped-def]  # unannotated: a bytes value as it is
        return blob + b"!"

    flow = group(chain(stamp.s(1), later.s(by=dt.timedelta(hours=2))), raw.s(b"\x00\xff"))
    handle = await flow.enqueue()
    await manager.drain(raise_errors=True)
    assert await handle.result(timeout=5) == [start + dt.timedelta(days=1, hours=2), b"\x00\xff!"]
    for task_id in await _member_ids(manager, handle.id):
        record = await manager.get(task_id)
        assert record.status is TaskStatus.SUCCEEDED


async def _member_ids(manager: TaskManager, workflow_id: str) -> list[str]:
    state = await manager.workflow(workflow_id).state()
    return list(state.tasks)
