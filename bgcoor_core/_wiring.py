"""The backends a manager or worker pool works with, and what they can do together.

Decided once, here, for everyone: the manager's enqueue, the executor's completion and
the pool all read the same :class:`Backends`, so nothing can keep writing to a backend
that was swapped out (``TaskManager.use_backends``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._broker import AtomicCompletion, AtomicEnqueue, Broker
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

    @classmethod
    def pair(cls, broker: Broker, storage: Storage) -> Backends:
        """``broker`` and ``storage``, with what they can do together decided once
        (a runtime Protocol check costs microseconds: never on the hot path)."""
        enqueue = broker if isinstance(broker, AtomicEnqueue) else None
        completion = broker if isinstance(broker, AtomicCompletion) else None
        return cls(
            broker,
            storage,
            enqueue if enqueue is not None and enqueue.shares_store_with(storage) else None,
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
        return cls.pair(*host.make_backends(settings))

    async def close(self) -> None:
        await self.broker.close()
        if self.storage is not self.broker:  # type: ignore[comparison-overlap]
            await self.storage.close()
