"""The coalescer behind group commit: one flush per burst, a verdict per caller."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from bgcoor_core.kit import Coalescer


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.delay = delay

    async def flush(self, items: Sequence[tuple[str, int]]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await asyncio.sleep(self.delay)
        return [ValueError(key) if value < 0 else value * 10 for key, value in items]


def make(recorder: Recorder, max_batch: int = 100) -> Coalescer[tuple[str, int], int]:
    return Coalescer(recorder.flush, key=lambda item: item[0], max_batch=max_batch)


async def test_a_burst_is_one_flush_and_each_caller_gets_its_result() -> None:
    recorder = Recorder()
    coalescer = make(recorder)
    results = await asyncio.gather(*(coalescer.submit((f"k{i}", i)) for i in range(50)))
    assert results == [i * 10 for i in range(50)]
    assert len(recorder.batches) == 1


async def test_one_callers_error_does_not_fail_the_others() -> None:
    coalescer = make(Recorder())
    good = asyncio.ensure_future(coalescer.submit(("a", 1)))
    with pytest.raises(ValueError, match="b"):
        await coalescer.submit(("b", -1))
    assert await good == 10


async def test_same_key_never_shares_a_batch_and_keeps_its_order() -> None:
    recorder = Recorder()
    coalescer = make(recorder)
    await asyncio.gather(coalescer.submit(("a", 1)), coalescer.submit(("a", 2)))
    assert [[value for _, value in batch] for batch in recorder.batches] == [[1], [2]]


async def test_calls_during_a_flush_form_the_next_batch_up_to_max_batch() -> None:
    recorder = Recorder(delay=0.05)
    coalescer = Coalescer(recorder.flush, key=lambda i: i[0], max_batch=3, max_inflight=1)
    first = asyncio.ensure_future(coalescer.submit(("first", 0)))
    await asyncio.sleep(0.01)  # the first flush is running
    rest = [asyncio.ensure_future(coalescer.submit((f"k{i}", i))) for i in range(5)]
    await asyncio.gather(first, *rest)
    assert [len(batch) for batch in recorder.batches] == [1, 3, 2]


async def test_a_failing_flush_fails_its_callers_only() -> None:
    calls = 0

    async def flush(items: Sequence[str]) -> list[None]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("down")
        return [None for _ in items]

    coalescer: Coalescer[str, None] = Coalescer(flush, key=str, max_batch=10)
    with pytest.raises(ConnectionError):
        await coalescer.submit("a")
    assert await coalescer.submit("b") is None
    await coalescer.drain()
