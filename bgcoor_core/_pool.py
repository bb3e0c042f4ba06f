"""WorkerPool: reserves tasks, runs each as its own asyncio task, keeps their leases alive.

One fetch loop reserves in batches up to the free capacity (``concurrency`` plus
``prefetch``). Each reservation becomes an entry, keyed by its lease token; at most
``concurrency`` of them run at once, each in its own asyncio task (async handlers on the
event loop, sync handlers in a thread pool), the rest wait in arrival order for a free
slot. One task can therefore be cancelled (:meth:`WorkerPool.cancel`) or handed back
without touching the others; a cancel from another process reaches it through the
backend's cancel channel, or a poll of the running tasks' records (see
:mod:`bgcoor_core._cancels`). A heartbeat loop extends the leases of everything held. It
runs on the event loop, which a CPU-bound *sync* task cannot starve: it runs in a thread
and the interpreter switches threads every few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from ._broker import Broker, Capability, Reservation
from ._cancels import CancelWatch
from ._capabilities import check_capabilities
from ._context import _CURRENT, CancelFlag
from ._errors import StaleLeaseError
from ._executor import Executor
from ._extensions import Service
from ._plugins import PluginHost, build_plugin_host
from ._quarantine import Quarantine
from ._scheduler import check_schedules
from ._settings import Settings, load_settings
from ._storage import Storage
from ._task_registry import TaskRegistry
from ._threads import TaskThreads

if TYPE_CHECKING:
    from ._scheduler import Scheduler

__all__ = ["WorkerPool", "check_capabilities"]  # check_capabilities: its old home

log = logging.getLogger("bgcoor.pool")


#: How long a burst pool's reserve waits while tasks still run: short, so the pool notices
#: soon after the last one settles that there is nothing left.
_BURST_POLL = 0.05


@dataclass(eq=False, slots=True)
class _Held:
    """One reservation the pool holds: waiting for a slot, running, or (briefly, while a
    batch is sorted or a suspect waits to run alone) neither."""

    reservation: Reservation
    cancel: CancelFlag = field(default_factory=CancelFlag)
    task: asyncio.Task[None] | None = None  # set once it is started
    context: contextvars.Context | None = None  # the asyncio task's own context
    interrupted: bool = False  # the pool cancelled its asyncio task (never twice)
    leaving: bool = False  # being handed back unstarted: a cancel must not start it

    def in_handler(self) -> bool:
        """Whether its handler (or an execution wrapper around it) is running now: the
        only time cancelling the asyncio task interrupts the task rather than its
        bookkeeping. ``current_task()`` is set exactly then, in the task's context."""
        return self.context is not None and self.context.get(_CURRENT) is not None


class WorkerPool:
    """Runs tasks from ``broker``, at most ``concurrency`` at once.

    ``WorkerPool(broker, storage, registry, concurrency)``, then ``await start()`` and
    ``await shutdown()``; or ``await run()`` to serve until SIGTERM/SIGINT (or, with
    ``burst=True``, until the queues are empty).
    """

    def __init__(
        self,
        broker: Broker,
        storage: Storage,
        registry: TaskRegistry,
        concurrency: int | None = None,
        *,
        settings: Settings | None = None,
        host: PluginHost | None = None,
        queues: Sequence[str] | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.broker = broker
        self.storage = storage
        self.registry = registry
        self.concurrency = concurrency or self.settings.concurrency
        self.queues = list(queues or self.settings.queues)
        self.host = host
        self._threads = TaskThreads(self.concurrency, self.settings)
        self.executor = Executor(
            broker, storage, registry, self.settings, host=host, threads=self._threads
        )
        self._quarantine = Quarantine(self.settings.max_worker_lost)
        self._capacity = self.concurrency + self.settings.prefetch
        self._held: dict[str, _Held] = {}  # lease token -> entry, everything held
        self._waiting: deque[_Held] = deque()  # held, waiting for a free slot
        self._busy = 0  # entries started and not yet settled
        self._base_context = contextvars.Context()
        self._room = asyncio.Event()
        self._fetcher: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._services: list[asyncio.Task[None]] = []
        self._cancels: CancelWatch | None = None
        self._burst = False
        self._wake = asyncio.Event()  # run(): a signal, or a burst found the queues empty
        self._signals = 0
        self._forced = False
        self._stopping = False
        self._stopped = asyncio.Event()
        self.processed = 0
        #: The scheduler this pool runs as a service (set when it starts), if any.
        self.scheduler: Scheduler | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        registry: TaskRegistry | None = None,
        host: PluginHost | None = None,
    ) -> WorkerPool:
        """Assemble broker, storage and handlers from settings through the plugin hooks."""
        settings = settings or load_settings()
        host = host or build_plugin_host(disabled=settings.disable_plugins)
        registry = registry or TaskRegistry()
        host.register_tasks(registry)
        broker, storage = host.make_backends(settings)
        return cls(broker, storage, registry, settings=settings, host=host)

    @property
    def running(self) -> int:
        """Tasks held by this pool: running or waiting for a free slot."""
        return len(self._held)

    async def start(self) -> None:
        check_capabilities(self.broker, self.registry)
        if self.settings.scheduler:
            check_schedules(self.broker, self.storage, self.registry)
        await self.broker.preflight()  # refuse to start rather than fail every reserve
        # Each task runs in a fresh copy of the caller's context: a contextvar one task
        # sets never leaks into the next (a long-lived slot loop used to share one).
        self._base_context = contextvars.copy_context()
        signals = self.host.cancel_signals(self.broker, self.storage) if self.host else None
        self._cancels = CancelWatch(self, self.storage, signals)
        await self._cancels.start()  # subscribed before the first reserve
        self._fetcher = asyncio.create_task(self._fetch_loop(), name="bgcoor-fetch")
        if Capability.LEASE_EXTENSION in self.broker.capabilities:
            self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="bgcoor-heartbeat")
        if self.settings.cleanup_seconds is not None:
            self._housekeeping = asyncio.create_task(self._cleanup_loop(), name="bgcoor-cleanup")
        if self.host is not None:
            self._services = [
                asyncio.create_task(self._serve(service), name=f"bgcoor-service-{service.name}")
                for service in self.host.services().services.values()
            ]
        log.info("worker pool started: concurrency %d, queues %s", self.concurrency, self.queues)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    # -- cancelling one task -----------------------------------------------------------

    def cancel(self, task_id: str) -> bool:
        """Cancel the task ``task_id`` if this pool holds it; False if it does not.

        Sets its ``current_task().cancel_requested``. A running async task is interrupted
        (``CancelledError`` inside it); a sync task's thread cannot be, so it should poll
        the flag, but its outcome is settled at once either way. A task waiting for a
        slot never runs its handler. The record is stored ``cancelled`` and the message
        acknowledged; a task whose handler already returned keeps its outcome. Call it on
        the pool's event loop. (``TaskManager.cancel()`` from any process reaches it: see
        :mod:`bgcoor_core._cancels`.)
        """
        found = False
        for entry in [e for e in self._held.values() if e.reservation.task.id == task_id]:
            found = True
            if entry.cancel.is_set():
                continue  # already being cancelled: never interrupt its settling
            entry.cancel.set()
            if entry.task is None and not entry.leaving:  # settled now, without running
                self._remove_waiting(entry)
                self._launch(entry)
            elif entry.in_handler():  # else the executor sees the flag before the handler
                self._interrupt(entry)
        return found

    def running_ids(self) -> list[str]:
        """The ids of the tasks started and not being cancelled (what a cancel from
        another process can still interrupt)."""
        return [
            entry.reservation.task.id
            for entry in self._held.values()
            if entry.task is not None and not entry.cancel.is_set()
        ]

    def _remove_waiting(self, entry: _Held) -> None:
        with contextlib.suppress(ValueError):  # held outside the queue (a suspect)
            self._waiting.remove(entry)

    def _interrupt(self, entry: _Held) -> None:
        if entry.task is not None and not entry.interrupted:
            entry.interrupted = True
            entry.task.cancel()

    # -- reserving -----------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        failures = 0
        while not self._stopping:
            if len(self._held) >= self._capacity:
                await self._wait_for_room()
                continue
            idle = not self._held
            try:
                batch = await self._reserve(self._capacity - len(self._held))
            except Exception as exc:
                failures += 1
                delay = min(0.1 * 2**failures, 5.0)
                log.warning(
                    "reserve failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            if batch:
                await self._accept(batch)
            elif self._burst and idle and not self._held:
                log.info("burst: the queues are empty and nothing is running")
                self._wake.set()
                return

    async def _reserve(self, limit: int) -> list[Reservation]:
        if not self._burst:
            timeout = self.settings.poll_seconds
        else:  # never wait for new work when there is nothing left to finish
            timeout = min(self.settings.poll_seconds, _BURST_POLL) if self._held else 0.0
        return await self.broker.reserve(
            self.queues, lease=self.settings.lease_seconds, limit=limit, timeout=timeout
        )

    async def _accept(self, batch: list[Reservation]) -> None:
        entries = [_Held(reservation) for reservation in batch]
        for entry in entries:
            self._held[entry.reservation.token] = entry
        suspect = self._quarantine.suspect_in(batch, self._held_reservations)
        if suspect is not None:
            self._cancel_signalled(batch)
            await self._quarantine.run_alone(suspect, batch, self)
            return
        for entry in entries:
            if self._busy < self.concurrency:
                self._launch(entry)
            else:
                self._waiting.append(entry)
        self._cancel_signalled(batch)

    def _cancel_signalled(self, batch: list[Reservation]) -> None:
        """Cancel what was cancelled elsewhere while its reservation was on the way."""
        if self._cancels is not None:
            self._cancels.accepted(reservation.task.id for reservation in batch)

    def _held_reservations(self) -> Iterator[Reservation]:
        return (entry.reservation for entry in self._held.values())

    # -- running -------------------------------------------------------------------------

    def _launch(self, entry: _Held) -> None:
        """Start ``entry`` in its own asyncio task, in a fresh context."""
        if entry.task is not None:
            return
        self._busy += 1
        entry.context = self._base_context.copy()
        entry.task = asyncio.create_task(self._run(entry), context=entry.context)
        if self._cancels is not None:
            self._cancels.launched()

    async def _run(self, entry: _Held) -> None:
        reservation = entry.reservation
        try:
            await self.executor.execute(reservation, cancel=entry.cancel)
        except Exception:
            log.exception(
                "task %s: settling failed; it will be delivered again", reservation.task.id
            )
        finally:
            self._release(entry)

    def _release(self, entry: _Held) -> None:
        """``entry`` is settled (or handed back): free its slot, start the next waiting."""
        self._held.pop(entry.reservation.token, None)
        self._busy -= 1
        self.processed += 1
        self._room.set()
        while self._waiting and self._busy < self.concurrency and not self._closing:
            self._launch(self._waiting.popleft())

    @property
    def _closing(self) -> bool:
        return self._stopping or self._forced

    async def _wait_for_room(self) -> None:
        self._room.clear()
        await self._room.wait()

    # What the quarantine (``Quarantine.run_alone``) asks of the pool.

    def _holds(self, token: str) -> bool:
        return token in self._held

    def _held_count(self) -> int:
        return len(self._held)

    def _start_alone(self, reservation: Reservation) -> None:
        entry = self._held.get(reservation.token)
        if entry is not None:
            self._launch(entry)

    async def _give_back(self, reservations: list[Reservation]) -> None:
        """Nack held reservations that never started (not a lost delivery)."""
        for reservation in reservations:
            entry = self._held.get(reservation.token)
            if entry is None or entry.task is not None:  # settled, or started meanwhile
                continue
            entry.leaving = True
            try:
                await self.broker.nack(reservation)
            except StaleLeaseError:
                pass
            except Exception as exc:  # it comes back when its lease expires
                log.warning("task %s: hand-back failed: %s", reservation.task.id, exc)
            self._held.pop(reservation.token, None)
            self._room.set()

    # -- the loops beside the tasks ----------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            held = list(self._held_reservations())
            if held:
                await asyncio.gather(*(self._extend(r) for r in held))

    async def _cleanup_loop(self) -> None:
        """Delete records whose time-to-live has passed, so stores do not grow forever."""
        assert self.settings.cleanup_seconds is not None
        while True:
            try:
                removed = await self.storage.delete_expired()
            except Exception as exc:
                log.warning("deleting expired records failed: %s", exc)
            else:
                if removed:
                    log.info("deleted %d expired task record(s)", removed)
            await asyncio.sleep(self.settings.cleanup_seconds)

    async def _serve(self, service: Service) -> None:
        """Run a plugin's service until the pool stops; restart it (with a backoff) when
        it fails, so a plugin's bug never stops the pool."""
        failures = 0
        while True:
            try:
                await service.run(self)
                return
            except Exception:
                failures += 1
                delay = min(0.5 * 2**failures, 30.0)
                log.exception(
                    "worker service %r (plugin %r) failed; restarting in %.1fs",
                    service.name,
                    service.plugin,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _extend(self, reservation: Reservation) -> None:
        try:
            await self.broker.extend(reservation, self.settings.lease_seconds)
        except StaleLeaseError:
            if reservation.token in self._held:  # not merely settled while we extended
                log.warning(
                    "task %s lost its lease; its outcome will be refused", reservation.task.id
                )
        except Exception as exc:
            log.warning("lease extension failed for %s: %s", reservation.task.id, exc)

    # -- stopping ----------------------------------------------------------------------

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop reserving, hand back what has not started, let running tasks finish.

        Tasks still running after ``grace`` seconds (default ``shutdown_grace``) are
        cancelled and handed back to the broker at once, so nothing waits for a lease to
        expire and nothing is lost.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.settings.shutdown_grace if grace is None else grace
        if self._fetcher is not None:
            self._fetcher.cancel()
            await asyncio.gather(self._fetcher, return_exceptions=True)
        await self._hand_back_waiting()
        await self._finish_running(grace)
        for loop_task in (self._heartbeat, self._housekeeping, *self._services):
            if loop_task is not None:
                loop_task.cancel()
                await asyncio.gather(loop_task, return_exceptions=True)
        if self._cancels is not None:  # listened until the last task settled
            await self._cancels.stop()
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._threads.children is not None:
            await self._threads.children.close()
        self._stopped.set()
        log.info("worker pool stopped after %d task(s)", self.processed)

    async def _hand_back_waiting(self) -> None:
        waiting = [entry.reservation for entry in self._waiting]
        self._waiting.clear()
        await self._give_back(waiting)

    def _started(self) -> list[asyncio.Task[None]]:
        return [entry.task for entry in self._held.values() if entry.task is not None]

    async def _finish_running(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the started tasks (including any a cancel
        starts meanwhile), then cancel the rest: they hand themselves back."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while not self._forced and (running := self._started()):
            left = deadline - loop.time()
            if left <= 0:
                break
            await asyncio.wait(running, timeout=left)
        late = [entry for entry in self._held.values() if entry.task is not None]
        if not late:
            return
        if not self._forced:
            log.warning("%d task(s) still running after %.1fs; handed back", len(late), grace)
        for entry in late:
            if not entry.cancel.is_set():  # a cancelled one is settling already
                self._interrupt(entry)
        await asyncio.gather(*self._started(), return_exceptions=True)

    # -- serving until a signal ----------------------------------------------------------

    async def run(
        self, on_ready: Callable[[], object] | None = None, *, burst: bool = False
    ) -> None:
        """Start, run until SIGTERM or SIGINT, then shut down gracefully.

        ``on_ready`` is called once the pool has started and the signal handlers are in
        place. The first signal stops reserving and lets running tasks finish (up to
        ``shutdown_grace``). A second one cancels the running tasks, which are handed
        back, and logs what the process still waits for (sync task threads, which cannot
        be interrupted). A third exits the process at once (``os._exit``, status 128 plus
        the signal's number), leaving what it held to come back when its leases expire.

        ``burst``: return on its own once the queues are empty and nothing is running (a
        shutdown as after a first signal, which finds nothing left to wait for). Only
        ready tasks count: tasks scheduled for later, including retries waiting out their
        backoff, do not keep the pool alive, and stay queued for the next worker. A task
        that becomes due while others still run is picked up.
        """
        loop = asyncio.get_running_loop()
        self._burst = burst
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.start()
            if on_ready is not None:
                on_ready()
            await self._wake.wait()
            await self.shutdown()
            await self._wait_for_threads()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _wait_for_threads(self) -> None:
        """Sync task threads still running after the shutdown (their tasks were handed
        back, but a thread cannot be interrupted): the interpreter would wait for them at
        exit anyway. Wait here instead, where a further signal still reaches the pool."""
        if not self._threads.busy:
            return
        log.warning(
            "waiting for %s to finish, which cannot be interrupted (signal again to %s)",
            _threads(self._threads.busy),
            "exit at once" if self._forced else "force",
        )
        await asyncio.to_thread(self._threads.shutdown, wait=True)  # joins them

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info(
                "%s received: shutting down, waiting for %d running task(s) "
                "(a second signal cancels them)",
                sig.name,
                self._busy,
            )
            self._wake.set()
        elif self._signals == 2:
            self._force()
        else:
            self._exit_now(sig)

    def _force(self) -> None:
        """Second signal: cancel every started task (each hands itself back) and say
        what the process still has to wait for."""
        self._forced = True
        self._wake.set()
        started = [entry for entry in self._held.values() if entry.task is not None]
        threads = self._threads.busy
        log.warning(
            "second signal: %s (a third signal exits at once)", _waiting_for(started, threads)
        )
        for entry in started:
            if not entry.cancel.is_set():
                self._interrupt(entry)

    def _exit_now(self, sig: signal.Signals) -> None:
        held = len(self._held)
        log.warning(
            "third signal: exiting now%s",
            f"; {held} task(s) held come back when their leases expire" if held else "",
        )
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # closed: nothing more to say
                stream.flush()
        os._exit(128 + sig.value)


def _threads(count: int) -> str:
    return "1 sync task thread" if count == 1 else f"{count} sync task threads"


def _waiting_for(started: list[_Held], threads: int) -> str:
    """What a forced stop waits for, in words: "cancelling 3 running task(s), handing them
    back; waiting for 1 sync task thread, which cannot be interrupted"."""
    what = f"cancelling {len(started)} running task(s), handing them back"
    if threads:
        return f"{what}; waiting for {_threads(threads)}, which cannot be interrupted"
    return what
