"""Claim check (issue 15): a task too large for a message is sent with a reference, its
payload read by the worker from the task's record; on every installed backend."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bgcoor_core import PayloadTooLargeError, Retry, TaskManager, TaskStatus, build_plugin_host
from bgcoor_core._codec import CLAIMED

HOST = build_plugin_host()
SCHEMES = sorted(s for s, e in HOST.brokers.entries.items() if e.test_url is not None)
LIMIT = 16 * 1024
FAST: dict[str, Any] = {
    "lease_seconds": 5.0,
    "poll_seconds": 0.05,
    "retry_backoff": 0.01,
    "retry_backoff_max": 0.02,
    "max_payload_bytes": LIMIT,
}
BIG = bytes(range(256)) * 400  # 102,400 bytes: about 137 KB tagged, far above LIMIT
KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture(params=SCHEMES, ids=str)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    entry = HOST.brokers.entries[request.param]
    assert entry.test_url is not None
    return entry.test_url(tmp_path)


@pytest.fixture
async def manager(url: str) -> AsyncIterator[TaskManager]:
    manager = TaskManager(
        broker_url=url, storage_url=url, claim_check=True, claim_check_max_bytes=1 << 20, **FAST
    )
    yield manager
    await manager.close()


def _register(manager: TaskManager, seen: list[int]) -> Any:
    @manager.task(name="claims.measure", max_retries=2)
    def measure(blob: bytes, retry: bool = False) -> int:
        seen.append(len(blob))
        if retry and len(seen) == 1:
            raise Retry(after=0)
        assert blob == BIG
        return len(blob)

    return measure


async def test_a_task_too_large_for_a_message_runs_by_claim_check(manager: TaskManager) -> None:
    seen: list[int] = []
    measure = _register(manager, seen)
    handle = await measure.enqueue(BIG)
    record = await manager.get(handle.id)
    assert record.payload["args"][0] == BIG  # the record holds the payload
    body = manager.broker.codec.encode(record)
    assert len(body) < 1024  # the message only refers to it
    assert manager.broker.codec.decode(body).payload == CLAIMED
    await manager.drain()
    assert await handle.result(timeout=10) == len(BIG)
    done = await manager.get(handle.id)
    assert done.payload["args"][0] == BIG  # still there after the outcome was stored


async def test_a_retried_claimed_task_gets_its_payload_again(manager: TaskManager) -> None:
    seen: list[int] = []
    measure = _register(manager, seen)
    handle = await measure.enqueue(BIG, retry=True)
    await manager.drain()
    await manager.drain()
    assert await handle.result(timeout=10) == len(BIG)
    assert seen == [len(BIG), len(BIG)]


async def test_a_claimed_task_whose_record_lost_its_payload_is_dead_lettered(
    manager: TaskManager,
) -> None:
    seen: list[int] = []
    measure = _register(manager, seen)
    handle = await measure.enqueue(BIG)
    record = await manager.get(handle.id)
    await manager.storage.save(record.model_copy(update={"payload": CLAIMED}))
    await manager.drain()
    assert seen == []
    dead = await manager.get(handle.id)
    assert dead.status is TaskStatus.DEAD
    assert "claim check" in (dead.error or "")


async def test_above_the_claim_check_limit_or_without_it_enqueue_refuses(url: str) -> None:
    plain = TaskManager(broker_url=url, storage_url=url, **FAST)
    small = TaskManager(
        broker_url=url, storage_url=url, claim_check=True, claim_check_max_bytes=64 * 1024, **FAST
    )
    try:
        for manager, setting in ((plain, "max_payload_bytes"), (small, "claim_check_max_bytes")):
            measure = _register(manager, [])
            with pytest.raises(PayloadTooLargeError, match=setting):
                await measure.enqueue(BIG)
    finally:
        await plain.close()
        await small.close()


async def test_claim_check_with_payload_codecs(url: str) -> None:
    manager = TaskManager(
        broker_url=url,
        storage_url=url,
        claim_check=True,
        claim_check_max_bytes=1 << 20,
        payload_codecs="aesgcm",
        encryption_keys=f"k1:{KEY}",
        **FAST,
    )
    try:
        seen: list[int] = []
        measure = _register(manager, seen)
        handle = await measure.enqueue(BIG)
        await manager.drain()
        assert await handle.result(timeout=10) == len(BIG)
        assert seen == [len(BIG)]
    finally:
        await manager.close()
