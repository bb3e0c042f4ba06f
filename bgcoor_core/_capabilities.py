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
    can = broker.capabilities
    if Capability.PRIORITIES in can and Capability.LIMITS in can:
        return
    for name in registry.names():
        options = registry.get(name).options
        if options.priority and Capability.PRIORITIES not in can:
            raise CapabilityError(
                f"task {name!r} has a priority but {type(broker).__name__} does not support "
                "priorities"
            )
        limited = options.rate_limit is not None or options.concurrency_limit is not None
        if limited and Capability.LIMITS not in can:
            raise CapabilityError(
                f"task {name!r} has a rate or concurrency limit but {type(broker).__name__} "
                "cannot enforce limits"
            )
