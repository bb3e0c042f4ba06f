"""The threads sync handlers run in, handing results back to the event loop in batches.

``loop.run_in_executor`` costs every call a ``concurrent.futures.Future`` (with its
condition variable), a wrapping asyncio future and one ``call_soon_threadsafe``, a write
to the loop's wake-up pipe, per result. With many short sync tasks that hand-off, not the
tasks, bounded a pool (about 10,000 no-op tasks a second against 25,000 async ones).
:meth:`TaskThreads.run` queues a job on a ``SimpleQueue``; a thread that finishes one
appends the outcome to its loop's landing and wakes the loop only when nothing else is
waiting to land, and the loop settles every outcome landed since in one callback.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from ._isolation import ChildPool
    from ._settings import Settings

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: How often an idle thread checks that its pool and the interpreter are still there: a
#: pool never shut down (or a process exiting without shutting it down) must not keep
#: the interpreter waiting for its idle threads, as it joins every non-daemon thread.
_IDLE_CHECK = 0.5


class _Landing:
    """Outcomes of one event loop's jobs, waiting to be set on their futures there."""

    __slots__ = ("called", "done", "lock", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.done: collections.deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = (
            collections.deque()
        )
        self.lock = threading.Lock()
        self.called = False  # a land() is scheduled and has not started yet

    def put(self, future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        """From a thread: one outcome; the loop is woken unless a land() is pending."""
        self.done.append((future, result, error))
        with self.lock:
            if self.called:
                return
            self.called = True
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody awaits them
            self.loop.call_soon_threadsafe(self.land)

    def land(self) -> None:
        """On the loop: settle every outcome put so far. ``called`` is cleared first, so an
        outcome put while this runs either lands here or schedules the next land()."""
        with self.lock:
            self.called = False
        done = self.done
        while done:
            future, result, error = done.popleft()
            if future.cancelled():
                continue
            if error is None:
                future.set_result(result)
            else:
                _fail(future, error)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    try:
        future.set_exception(error)
    except TypeError:  # StopIteration, which a future cannot carry
        future.set_exception(RuntimeError(f"a sync handler raised {error!r}"))


#: A queued job: where its outcome lands (``None``: a ``submit``'s concurrent future),
#: its future, the function and its arguments.
_Job = tuple[_Landing | None, Any, Callable[..., Any], tuple[Any, ...]]


class TaskThreads(Executor):
    """Up to ``workers`` threads, started as jobs need them, knowing which are busy: a
    thread cannot be interrupted, and the interpreter waits for a busy one at exit, so a
    forced stop says how many it is waiting for. They carry the child processes that
    ``isolation="process"`` tasks run in (none is started until such a task runs)."""

    def __init__(self, workers: int, settings: Settings | None = None) -> None:
        self._workers = workers
        self._settings = settings
        self.children: ChildPool | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)  # released by a thread each time it is idle
        self._landings: dict[asyncio.AbstractEventLoop, _Landing] = {}
        self._closed = False
        # Thread ids, not a counter under a lock: set.add and set.discard are atomic, and
        # a lock would be contended by every thread finishing a task at once.
        self._running: set[int] = set()

    def child_pool(self) -> ChildPool:
        """The children, made on first use (so a pool without such tasks imports nothing
        of process isolation)."""
        if self.children is None:
            from ._isolation import ChildPool

            assert self._settings is not None, "process isolation needs the pool's settings"
            self.children = ChildPool.for_settings(self._settings, self._workers)
        return self.children

    @property
    def busy(self) -> int:
        """Threads running a task now."""
        return len(self._running)

    def run(
        self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> asyncio.Future[_T]:
        """``fn(*args)`` in a thread, as a future of the running loop. A job whose future is
        cancelled before a thread takes it never runs."""
        if kwargs:
            raise TypeError("TaskThreads.run takes positional arguments only")
        loop = asyncio.get_running_loop()
        landing = self._landings.get(loop)
        if landing is None:
            landing = self._landings[loop] = _Landing(loop)
        future: asyncio.Future[_T] = loop.create_future()
        self._put((landing, future, fn, args))
        return future

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """The ``Executor`` interface, for callers outside an event loop."""
        future: Future[_T] = Future()
        self._put((None, future, lambda: fn(*args, **kwargs), ()))
        return future

    def _put(self, job: _Job) -> None:
        if self._closed:
            raise RuntimeError("cannot run a task after the pool's threads were shut down")
        self._jobs.put(job)
        if not self._idle.acquire(blocking=False) and len(self._threads) < self._workers:
            thread = threading.Thread(
                target=self._work, name=f"bgcoor-task_{len(self._threads)}", daemon=False
            )
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        jobs, running, ident = self._jobs, self._running, threading.get_ident()
        main = threading.main_thread()
        while True:
            try:
                job = jobs.get(timeout=_IDLE_CHECK)
            except queue.Empty:
                if self._closed or not main.is_alive():
                    return
                continue
            if job is None:
                return
            landing, future, fn, args = job
            if landing is None:
                if future.set_running_or_notify_cancel():
                    running.add(ident)
                    try:
                        future.set_result(fn())
                    except BaseException as exc:
                        future.set_exception(exc)
                    finally:
                        running.discard(ident)
            elif not future.cancelled():
                running.add(ident)
                try:
                    result, error = fn(*args), None
                except BaseException as exc:
                    result, error = None, exc
                finally:
                    running.discard(ident)
                landing.put(future, result, error)
                del result, error
            del job, future, fn, args
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the threads once their current jobs end; ``cancel_futures``: cancel the
        jobs no thread has taken (their futures, on their own loops)."""
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    continue
                landing, future = job[0], job[1]
                if landing is None:
                    future.cancel()
                else:
                    with contextlib.suppress(RuntimeError):  # its loop is closed
                        landing.loop.call_soon_threadsafe(future.cancel)
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
