"""Group commit for concurrent calls: many awaiting callers, one write.

A worker's slots mark their tasks running and store their outcomes at nearly the same
moments (a reserved batch starts together). Each call is queued; whatever is queued by
the time a flush starts goes out as one write (a statement with array parameters, a
script call with many items), and each caller gets its own item's result. An idle system
pays no delay: the first call is flushed on the next turn of the event loop, and later
calls pile up only while earlier flushes run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
#: Runs one batch and returns a result (or an exception to raise) per item, in order.
Flush = Callable[[Sequence[Item]], Awaitable[Sequence[Result | BaseException]]]


class Coalescer(Generic[Item, Result]):
    """Batches :meth:`submit` calls into :data:`Flush` calls.

    ``key`` identifies an item's row: two items with one key never share a batch (one
    write may not update a row twice), so the later one waits for the next flush.
    """

    def __init__(
        self,
        flush: Flush[Item, Result],
        *,
        key: Callable[[Item], Hashable],
        max_batch: int,
        max_inflight: int = 4,
    ) -> None:
        self._flush = flush
        self._key = key
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._start()
        return await future

    def _start(self) -> None:
        """Start a flush unless one that has not taken its batch yet is already coming:
        it takes whatever was submitted before it first runs (the rest of this turn of
        the event loop)."""
        if self._scheduled or not self._pending or len(self._inflight) >= self._max_inflight:
            return
        self._scheduled = True
        task = asyncio.create_task(self._next())
        self._inflight.add(task)
        task.add_done_callback(self._finished)

    async def _next(self) -> None:
        self._scheduled = False
        batch = self._take()
        self._start()  # what did not fit (too many, or a key twice) goes in another
        await self._run(batch)

    def _take(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        keys: set[Hashable] = set()
        rest: list[tuple[Item, asyncio.Future[Result]]] = []
        for entry in self._pending:
            if entry[1].done():  # its caller was cancelled before the flush
                continue
            key = self._key(entry[0])
            if len(batch) < self._max_batch and key not in keys:
                keys.add(key)
                batch.append(entry)
            else:
                rest.append(entry)
        self._pending = rest
        return batch

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        if not batch:
            return
        try:
            results = await self._flush([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._start()

    async def drain(self) -> None:
        """Wait until every queued call has been flushed."""
        while self._inflight or self._pending:
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
            else:
                await asyncio.sleep(0)
