"""Argument checks every broker gets from its base class, so that all backends refuse the
same bad calls with the same clear errors (``reserve(limit=0)``, a negative offset, a
lease of ``inf``, a queue name no path would accept) instead of each doing its own thing.

:class:`~bgcoor_core.Broker` wraps a subclass's implementation of each method named in
:data:`CHECKS` when the subclass is created: the check runs first, with the same arguments.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

from . import _limits as limits
from ._errors import OutOfRangeError
from ._task import validate_queue_name


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise OutOfRangeError(f"{name} must be a positive integer, got {value!r}")


def _seconds(name: str, value: object, low: float, high: float, *, open_low: bool) -> None:
    ok = False
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        ok = (value > low if open_low else value >= low) and value <= high
    if not ok:
        bound = f"above {low:g}" if open_low else f"at least {low:g}"
        raise OutOfRangeError(f"{name} must be finite, {bound} and at most {high:g}, got {value!r}")


def _queues(queues: object) -> None:
    if isinstance(queues, str) or not isinstance(queues, Sequence) or not queues:
        raise OutOfRangeError(f"queues must be a non-empty sequence of names, got {queues!r}")
    for queue in queues:
        validate_queue_name(queue)


def _lease(lease: object) -> None:
    _seconds("lease", lease, 0.0, limits.MAX_LEASE, open_low=True)


def check_reserve(
    queues: Sequence[str], *, lease: float, limit: int = 1, timeout: float = 0.0
) -> None:
    _queues(queues)
    _lease(lease)
    _positive_int("limit", limit)
    _seconds("timeout", timeout, 0.0, limits.MAX_DURATION, open_low=False)


def check_extend(reservation: object, lease: float) -> None:
    _lease(lease)


def check_nack(reservation: object, *, delay: float = 0.0, task: object = None) -> None:
    _seconds("delay", delay, 0.0, limits.MAX_DELAY, open_low=False)


def check_queue(queue: str, *args: Any, **kwargs: Any) -> None:
    validate_queue_name(queue)


def check_dead_letters(queue: str, *, limit: int = 100, offset: int = 0) -> None:
    validate_queue_name(queue)
    _positive_int("limit", limit)
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise OutOfRangeError(f"offset must be an integer of at least 0, got {offset!r}")


#: Broker method name -> the check run before a subclass's implementation of it.
CHECKS: dict[str, Callable[..., None]] = {
    "reserve": check_reserve,
    "extend": check_extend,
    "nack": check_nack,
    "stats": check_queue,
    "purge": check_queue,
    "dead_letters": check_dead_letters,
    "requeue_dead": check_queue,
    "purge_dead": check_queue,
}


def checked(method: Callable[..., Any], check: Callable[..., None]) -> Callable[..., Any]:
    """``method`` running ``check`` on its arguments first (idempotent)."""
    if getattr(method, "__bgcoor_checked__", False):
        return method

    @functools.wraps(method)
    async def run_checked(self: object, *args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return await method(self, *args, **kwargs)

    run_checked.__bgcoor_checked__ = True  # type: ignore[attr-defined]
    return run_checked
