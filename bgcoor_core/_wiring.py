"""The backends a manager or worker pool works with, and what they can do together.

Decided once, here, for everyone: the manager's enqueue, the executor's completion and
the pool all read the same :class:`Backends`, so nothing can keep writing to a backend
that was swapped out (``TaskManager.use_backends``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._broker import AtomicCompletion, AtomicEnqueue, Broker, Capability
from ._errors import CapabilityError
from ._schedules import ScheduleStore
from ._storage import Storage
from ._unique import UniqueStore
from ._workflows import WorkflowStore

if TYPE_CHECKING:
    from ._plugins import PluginHost
    from ._settings import Settings


@dataclass(frozen=True, slots=True, eq=False)
class Backends:
    """A broker, a storage (possibly the same object) and their joint abilities.

    ``atomic_enqueue``: the broker, when it stores records and messages in one step into
    this very storage; ``atomic_completion``: the broker, when it stores an outcome and
    acks in one step into it; ``schedules``: where periodic schedules live and fire
    (:meth:`Broker.schedule_store`); ``workflows`` and ``uniques`` likewise
    (:meth:`Broker.workflow_store`, :meth:`Broker.unique_store`). Build with :meth:`pair`
    or :meth:`open`.
    """

    broker: Broker
    storage: Storage
    atomic_enqueue: AtomicEnqueue | None = None
    atomic_completion: AtomicCompletion | None = None
    schedules: ScheduleStore | None = None
    workflows: WorkflowStore | None = None
    uniques: UniqueStore | None = None
    #: Seconds an enqueue into a full queue waits for room (``BGCOOR_QUEUE_FULL=wait``);
    #: ``None``: it is refused at once.
    queue_wait: float | None = None

    @classmethod
    def pair(cls, broker: Broker, storage: Storage) -> Backends:
        """``broker`` and ``storage``, with what they can do together decided once
        (a runtime Protocol check costs microseconds: never on the hot path)."""
        completion = broker if isinstance(broker, AtomicCompletion) else None
        return cls(
            broker,
            storage,
            broker.atomic_enqueue(storage),
            completion
            if completion is not None and completion.shares_store_with(storage)
            else None,
            broker.schedule_store(storage),
            broker.workflow_store(storage),
            broker.unique_store(storage),
        )

    @classmethod
    def open(cls, host: PluginHost, settings: Settings) -> Backends:
        """The backends of the settings' URLs, built by the plugins that serve them."""
        backends = cls.pair(*host.make_backends(settings))
        if settings.queue_limits:
            wait = settings.queue_full_timeout if settings.queue_full == "wait" else None
            return backends.limit_queues(settings.queue_limits, wait=wait)
        return backends

    def limit_queues(self, queue_limits: dict[str, int], *, wait: float | None = None) -> Backends:
        """These backends, with the broker refusing enqueues past ``queue_limits`` and a
        producer waiting up to ``wait`` seconds for room (``None``: not); refused up front
        (:class:`CapabilityError`) when it cannot check them in its enqueue step, or when
        records and messages are stored in two steps (a refused push would leave records
        behind)."""
        broker = self.broker
        if Capability.QUEUE_LIMITS not in broker.capabilities or self.atomic_enqueue is None:
            raise CapabilityError(
                f"BGCOOR_QUEUE_LIMITS is set, but {type(broker).__name__} with "
                f"{type(self.storage).__name__} cannot enforce queue limits (it takes a "
                "backend that stores records and messages in one step: memory, SQLite, "
                "Redis or PostgreSQL as both broker and storage)"
            )
        broker.queue_limits = dict(queue_limits)
        return dataclasses.replace(self, queue_wait=wait)

    async def close(self) -> None:
        await self.broker.close()
        if self.storage is not self.broker:  # type: ignore[comparison-overlap]
            await self.storage.close()
