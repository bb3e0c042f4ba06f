"""Checks that what the registered tasks ask for is something the broker can do.

Run when a pool starts and when a manager first enqueues, so an option the broker would
silently ignore (a priority on a broker without priorities) is refused up front instead.
"""

from __future__ import annotations

from ._broker import Broker, Capability
from ._errors import CapabilityError
from ._task_registry import TaskRegistry


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
