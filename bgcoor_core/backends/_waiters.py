"""Waking coroutines on any event loop from any thread (for in-process backends)."""

from __future__ import annotations

import asyncio
import contextlib


class Waiters:
    """A set of futures, each bound to its own loop, woken all at once.

    Not thread-safe by itself: callers hold their backend's lock around ``add``,
    ``discard`` and ``wake_all``.
    """

    def __init__(self) -> None:
        self._futures: set[asyncio.Future[None]] = set()

    def add(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures.add(future)
        return future

    def discard(self, future: asyncio.Future[None]) -> None:
        self._futures.discard(future)

    def __bool__(self) -> bool:
        return bool(self._futures)

    def wake_all(self) -> None:
        if not self._futures:
            return
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for future in self._futures:
            loop = future.get_loop()
            if loop is current:
                _resolve(future)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)
        self._futures.clear()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def wait_for_wake(future: asyncio.Future[None], timeout: float) -> None:
    """Wait until ``future`` is woken or ``timeout`` seconds pass, whichever is first."""
    if timeout <= 0:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await future
