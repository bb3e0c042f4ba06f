"""The bounds of every setting and task option, in one place.

Each value is checked where it enters: settings at start-up (``Settings``), task options
when a task is registered (``TaskOptions``), per-call options when a call is built
(``TaskManager.build_task``) and command-line options when they are parsed. So every
backend receives only values it can represent: a lease PostgreSQL can turn into an
interval, a delay whose eta is a valid timestamp everywhere, a priority that keeps a
Redis ready score exact. Every float must be finite: ``inf`` and ``nan`` are refused, not
encoded as ``null`` or turned into an ``OverflowError`` somewhere deeper.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._errors import OutOfRangeError

DAY = 86_400.0
YEAR = 365 * DAY

#: A lease shorter than this expires before a worker can even heartbeat it: every task runs
#: again and again. Longer than a day, a dead worker's tasks wait a day to be delivered again.
MIN_LEASE, MAX_LEASE = 0.1, DAY
#: Heartbeats, polls and cleanups more often than this only burn CPU.
MIN_INTERVAL = 0.01
#: A reserve waits at most this long before it looks again (and notices a shutdown).
MAX_POLL = 60.0
MIN_TIMEOUT = 0.001
#: Timeouts, backoffs, cleanup intervals and the shutdown grace.
MAX_DURATION = YEAR
#: Delays, etas and result TTLs: far enough for any schedule, near enough that the
#: timestamp stays representable in every backend (and in ``datetime``).
MAX_DELAY = 10 * YEAR
MIN_TTL = 1.0
MAX_RETRIES = 10_000
#: The Redis ready score ``(1000 - priority) * 2**42 + sequence`` stays exact in a double.
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000
MAX_CONCURRENCY = 10_000
MAX_PREFETCH = 10_000
MAX_WORKER_LOST = 10_000
MAX_ENQUEUE_RETRIES = 10
MIN_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES = 1024, 256 * 1024 * 1024
MAX_QUEUE_LIMIT = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Range:
    """An inclusive range of finite numbers, with the unit its messages name."""

    low: float
    high: float
    unit: str = ""

    def describe(self) -> str:
        """``0.1 to 86400 seconds (1 day)``: what error messages and the docs show."""
        unit = f" {self.unit}" if self.unit else ""
        return f"{_number(self.low)} to {_number(self.high)}{unit}{_in_days(self.high, self.unit)}"

    def __contains__(self, value: object) -> bool:
        # ``nan`` compares false both ways and ``inf`` exceeds every finite high: both out.
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
        )

    def check(self, option: str, value: Any) -> Any:
        """``value`` if it is in range, else :class:`OutOfRangeError` naming ``option``."""
        if value not in self:
            raise OutOfRangeError(f"{option}={value!r} is out of range: use {self.describe()}")
        return value


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _in_days(high: float, unit: str) -> str:
    """`` (1 day)``, `` (10 years)``: long spans in seconds are hard to read."""
    if unit != "seconds" or high < DAY:
        return ""
    count, name = (high / YEAR, "year") if high >= YEAR else (high / DAY, "day")
    return f" ({_number(count)} {name}{'s' if count != 1 else ''})"


LEASE = Range(MIN_LEASE, MAX_LEASE, "seconds")
HEARTBEAT = Range(MIN_INTERVAL, MAX_LEASE, "seconds")
POLL = Range(MIN_INTERVAL, MAX_POLL, "seconds")
TIMEOUT = Range(MIN_TIMEOUT, MAX_DURATION, "seconds")
BACKOFF = Range(0.0, MAX_DURATION, "seconds")
TTL = Range(MIN_TTL, MAX_DELAY, "seconds")
CLEANUP = Range(MIN_INTERVAL, MAX_DURATION, "seconds")
GRACE = Range(0.0, MAX_DURATION, "seconds")
DELAY = Range(0.0, MAX_DELAY, "seconds")
RETRIES = Range(0, MAX_RETRIES)
PRIORITY = Range(MIN_PRIORITY, MAX_PRIORITY)
CONCURRENCY = Range(1, MAX_CONCURRENCY)
PREFETCH = Range(0, MAX_PREFETCH)
WORKER_LOST = Range(0, MAX_WORKER_LOST)
ENQUEUE_RETRIES = Range(0, MAX_ENQUEUE_RETRIES)
PAYLOAD_BYTES = Range(MIN_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES, "bytes")
#: How long a caller may wait for a result (``bgcoor enqueue --wait --timeout``).
WAIT = Range(0.0, MAX_DURATION, "seconds")
#: Rows a listing (``bgcoor dlq list --limit``) asks a backend for.
LISTING = Range(1, 1_000_000)
QUEUE_LIMIT = Range(1, MAX_QUEUE_LIMIT, "tasks")


def check_eta(option: str, eta: datetime) -> datetime:
    """An eta no further ahead than :data:`MAX_DELAY` (a past eta runs at once)."""
    try:
        ahead = eta.timestamp() - time.time()
    except (OverflowError, OSError, ValueError):  # a date no platform clock can represent
        ahead = float("inf")
    if ahead > MAX_DELAY:
        raise OutOfRangeError(
            f"{option}={eta.isoformat()} is out of range: use at most {DELAY.describe()} from now"
        )
    return eta
