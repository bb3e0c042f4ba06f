"""A small user application for the command-line tests (``tests/cli/``).

Loaded by the CLI as ``cli_app`` (module only: attribute ``manager``) or ``cli_app:manager``,
with the tests directory as the current directory. The manager reads the ``BGCOOR_*``
settings like any user's would.

It also carries a test plugin for ``sharedmem://``: memory backends that outlive
``manager.close()``, so a test can put tasks in with this manager and then read and change
them through the command line, all in one process.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bgcoor_core import (
    BackendContext,
    BrokerRegistry,
    MemoryBroker,
    MemoryStorage,
    StorageRegistry,
    TaskManager,
    hookimpl,
)


class SharedMemory:
    """Plugin: ``sharedmem://`` brokers and storages shared by every manager of this process."""

    def __init__(self) -> None:
        self.__name__ = "cli-test-sharedmem"
        self.broker: MemoryBroker | None = None
        self.storage: MemoryStorage | None = None

    @hookimpl
    def bgcoor_register_brokers(self, brokers: BrokerRegistry) -> None:
        brokers.add("sharedmem", self._broker)

    @hookimpl
    def bgcoor_register_storages(self, storages: StorageRegistry) -> None:
        storages.add("sharedmem", self._storage)

    def _broker(self, url: str, context: BackendContext) -> MemoryBroker:
        if self.broker is None:
            self.broker = MemoryBroker(context.codec)
        return self.broker

    def _storage(self, url: str, context: BackendContext) -> MemoryStorage:
        if self.storage is None:
            self.storage = MemoryStorage(context.codec)
        return self.storage


SHARED = SharedMemory()
manager = TaskManager(plugins=[SHARED])
not_a_manager = "just a string"


@manager.task(name="add")
def add(x: int, y: int) -> int:
    return x + y


@manager.task(name="greet", queue="mail")
async def greet(name: str, punctuation: str = "!") -> dict[str, Any]:
    return {"greeting": f"hello, {name}{punctuation}"}


@manager.task(name="explode", max_retries=0)
def explode(message: str = "boom") -> None:
    raise RuntimeError(message)


@manager.task(name="sleepy")
async def sleepy(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "rested"


class Echo:
    """A handler object (not a function): it receives the raw payload."""

    def run(self, payload: Any) -> Any:
        return payload


manager.registry.register("echo", Echo())
