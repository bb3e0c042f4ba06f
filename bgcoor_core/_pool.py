"""WorkerPool: reserves tasks, runs them concurrently, keeps their leases alive.

One fetch loop reserves in batches up to the free slots (plus ``prefetch``); ``concurrency``
slot loops run tasks (async handlers on the event loop, sync handlers in a thread pool);
a heartbeat loop extends the leases of everything held. The heartbeat runs on the event
loop, which a CPU-bound *sync* task cannot starve: it runs in a thread and the interpreter
switches threads every few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Self

from ._broker import Broker, Capability, Reservation
from ._errors import CapabilityError, StaleLeaseError
from ._executor import Executor
from ._extensions import Service
from ._plugins import PluginHost, build_plugin_host
from ._registry import TaskRegistry
from ._settings import Settings, load_settings
from ._storage import Storage

log = logging.getLogger("bgcoor.pool")


def check_capabilities(broker: Broker, registry: TaskRegistry) -> None:
    """Refuse task options the broker cannot honour, instead of ignoring them."""
    if Capability.PRIORITIES in broker.capabilities:
        return
    for name in registry.names():
        if registry.get(name).options.priority:
            raise CapabilityError(
                f"task {name!r} has a priority but {type(broker).__name__} does not support "
                "priorities"
            )


class WorkerPool:
    """Runs tasks from ``broker`` with ``concurrency`` slots.

    ``WorkerPool(broker, storage, registry, concurrency)``, then ``await start()`` and
    ``await shutdown()``; or ``await run()`` to serve until SIGTERM/SIGINT.
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
        self._threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="bgcoor-task")
        self.executor = Executor(
            broker, storage, registry, self.settings, host=host, threads=self._threads
        )
        self._held: dict[str, Reservation] = {}
        self._ready: asyncio.Queue[Reservation | None] = asyncio.Queue()
        self._room = asyncio.Event()
        self._fetcher: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._slots: list[asyncio.Task[None]] = []
        self._services: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stopped = asyncio.Event()
        self.processed = 0

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
        await self.broker.preflight()  # refuse to start rather than fail every reserve
        self._slots = [
            asyncio.create_task(self._slot(), name=f"bgcoor-slot-{i}")
            for i in range(self.concurrency)
        ]
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

    # -- the three loops ---------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        failures = 0
        capacity = self.concurrency + self.settings.prefetch
        while not self._stopping:
            free = capacity - len(self._held)
            if free <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                batch = await self.broker.reserve(
                    self.queues,
                    lease=self.settings.lease_seconds,
                    limit=free,
                    timeout=self.settings.poll_seconds,
                )
                failures = 0
            except Exception as exc:
                failures += 1
                delay = min(0.1 * 2**failures, 5.0)
                log.warning(
                    "reserve failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay
                )
                await asyncio.sleep(delay)
                continue
            for reservation in batch:
                self._held[reservation.token] = reservation
            suspect = next((r for r in batch if self._suspect(r)), None)
            if suspect is not None:
                await self._run_alone(suspect, batch)
                continue
            for reservation in batch:
                self._ready.put_nowait(reservation)

    def _suspect(self, reservation: Reservation) -> bool:
        """It was there when workers died twice (or as often as ``max_worker_lost``
        allows), and not to a lease that lapsed in this very pool (which would still be
        running the earlier delivery).

        One death proves nothing: after a plain crash, every task the dead worker held
        comes back with ``lost == 1`` and must not crawl through one at a time. A poison
        task takes a second worker down with it before it is run alone, so the tasks
        beside it lose two lives at most, fewer than ``max_worker_lost`` allows.
        """
        threshold = max(1, min(2, self.settings.max_worker_lost))
        return reservation.lost >= threshold and not any(
            held.task.id == reservation.task.id and held is not reservation
            for held in self._held.values()
        )

    async def _run_alone(self, suspect: Reservation, batch: list[Reservation]) -> None:
        """Run ``suspect``, a task whose earlier worker was lost, and nothing else.

        It may be what killed that worker: run beside others it would take them down too,
        and every death counts against their ``max_worker_lost`` as well as its own. So the
        rest of the batch goes back at once, the running tasks finish, the suspect runs
        alone, and only then does reserving resume.
        """
        others = [r for r in batch if r is not suspect]
        try:
            await self._give_back(others)
            while len(self._held) > 1:
                self._room.clear()
                await self._room.wait()
        except asyncio.CancelledError:  # shutting down before it started: hand it back
            await asyncio.shield(self._give_back([*others, suspect]))
            raise
        self._ready.put_nowait(suspect)
        while suspect.token in self._held:
            self._room.clear()
            await self._room.wait()

    async def _give_back(self, reservations: list[Reservation]) -> None:
        """Nack held reservations that never started (not a lost delivery)."""
        for reservation in reservations:
            if reservation.token not in self._held:
                continue
            try:
                await self.broker.nack(reservation)
            except StaleLeaseError:
                pass
            except Exception as exc:  # it comes back when its lease expires
                log.warning("task %s: hand-back failed: %s", reservation.task.id, exc)
            self._held.pop(reservation.token, None)

    async def _slot(self) -> None:
        while (reservation := await self._ready.get()) is not None:
            try:
                await self.executor.execute(reservation)
            except Exception:
                log.exception(
                    "task %s: settling failed; it will be delivered again", reservation.task.id
                )
            finally:
                self._held.pop(reservation.token, None)
                self.processed += 1
                self._room.set()

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            held = list(self._held.values())
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
        for _ in self._slots:
            self._ready.put_nowait(None)
        _, late = await asyncio.wait(self._slots, timeout=grace) if self._slots else ((), ())
        for slot in late:
            slot.cancel()
        if late:
            log.warning("%d task(s) still running after %.1fs; handed back", len(late), grace)
            await asyncio.gather(*late, return_exceptions=True)
        for loop_task in (self._heartbeat, self._housekeeping, *self._services):
            if loop_task is not None:
                loop_task.cancel()
                await asyncio.gather(loop_task, return_exceptions=True)
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()
        log.info("worker pool stopped after %d task(s)", self.processed)

    async def _hand_back_waiting(self) -> None:
        waiting: list[Reservation] = []
        while not self._ready.empty():
            item = self._ready.get_nowait()
            if item is not None:
                waiting.append(item)
        for reservation in waiting:
            self._held.pop(reservation.token, None)
            with contextlib.suppress(StaleLeaseError):
                await self.broker.nack(reservation)

    async def run(self, on_ready: Callable[[], object] | None = None) -> None:
        """Start, run until SIGTERM or SIGINT, then shut down gracefully.

        ``on_ready`` is called once the pool has started and the signal handlers are in
        place. A second signal shortens the grace period to zero: running tasks are handed
        back.
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            stop.set()
            if signals > 1:
                for slot in self._slots:
                    slot.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        try:
            await self.start()
            if on_ready is not None:
                on_ready()
            await stop.wait()
            log.info("signal received: shutting down (a second signal forces)")
            await self.shutdown()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
