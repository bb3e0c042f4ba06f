"""Rate and concurrency limits: the *gate* a task passes before it occupies a worker slot.

``@manager.task(rate_limit="5/s", concurrency_limit=2, limit_key=lambda account, **_:
account)`` gives each call a :class:`Gate`: a key (the task's name, and the value of
``limit_key`` for that call's arguments) and the limits that apply to every task under that
key, across all workers and hosts. The producer writes it into the task's headers and the
broker's :class:`~bgcoor_core.Message` (``Message.gate``, :meth:`Gate.encode`), so a backend
enforces it in its own reserve step without decoding a body or knowing the registry:

* **Concurrency** (``concurrency_limit``): a reserve that finds the key's slots all held by
  live leases *parks* the message aside instead of delivering it. A slot is freed when its
  holder is acked, nacked, dead-lettered or completed, or when its lease runs out (a dead
  worker's slot is never leaked); each freed slot moves the key's oldest parked message
  back to ready. Parked messages are counted as scheduled.
* **Rate** (``rate_limit``): GCRA with the slot reserved up front (:func:`admit`). A reserve
  that finds a message whose key is ahead of its rate gives it the next free slot and
  schedules it for that moment, marked *admitted*; an admitted message, once due, is
  delivered without another check (and the mark is cleared, so a retry is charged again).
  So a saturated limit costs two broker operations per task, never a poll loop, and other
  tasks in the queue pass the deferred ones by. In any window of the limit's period at most
  ``count`` tasks of one key are admitted, plus the burst allowance of one.

Neither uses a retry attempt, counts as a failure or touches the task's record: a deferred
or parked task is still ``pending``. Concurrency is checked first (a parked message spends
no rate slot); a message admitted by the rate may then still park.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from ._errors import OutOfRangeError, PayloadError

#: The header carrying a call's encoded gate (:meth:`Gate.encode`).
GATE_HEADER = "bgcoor-gate"

_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"\s*(\d+)\s*/\s*([smh])\s*")
#: More than a million a second is no limit (and an interval under a microsecond is not
#: representable in every backend's clock).
MAX_COUNT = 1_000_000
MAX_KEY = 512


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` tasks per ``period`` seconds, parsed from ``"N/s"``, ``"N/m"`` or ``"N/h"``."""

    count: int
    period: float

    @property
    def interval(self) -> float:
        """Seconds between two admissions at the steady rate."""
        return self.period / self.count


def parse_rate(option: str, value: str) -> Rate:
    """``"100/m"`` as a :class:`Rate`; anything else is refused naming the option."""
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise OutOfRangeError(
            f"{option}: {value!r} is not a rate; write 'N/s', 'N/m' or 'N/h' (say '100/m')"
        )
    rate = Rate(int(match[1]), _PERIODS[match[2]])
    if not 1 <= rate.count <= MAX_COUNT or rate.interval < 1 / MAX_COUNT:
        raise OutOfRangeError(
            f"{option}: {value!r} is out of range: from 1 to {MAX_COUNT:,} per period, and "
            f"at most {MAX_COUNT:,} a second"
        )
    return rate


@functools.lru_cache(maxsize=1024)
def rate_of(text: str) -> Rate:
    """A task's ``rate_limit`` (already checked when it was declared), parsed once."""
    return parse_rate("rate_limit", text)


@dataclass(frozen=True, slots=True)
class Gate:
    """What a backend enforces for one message: ``key`` names the limits' bucket."""

    key: str
    #: Seconds between admissions (:attr:`Rate.interval`), ``None``: no rate limit.
    interval: float | None = None
    #: Admissions allowed at once on an idle key; 1 means the steady rate only.
    burst: int = 1
    #: Tasks of the key that may hold a lease at once, ``None``: no concurrency limit.
    concurrency: int | None = None

    def encode(self) -> str:
        """``"<interval> <burst> <concurrency> <key>"``, ``-`` for a limit not set: one
        string a script or a column holds, the key last so it may contain spaces."""
        interval = "-" if self.interval is None else repr(self.interval)
        concurrency = "-" if self.concurrency is None else str(self.concurrency)
        return f"{interval} {self.burst} {concurrency} {self.key}"

    @classmethod
    def decode(cls, text: str) -> Gate:
        interval, burst, concurrency, key = text.split(" ", 3)
        return cls(
            key,
            None if interval == "-" else float(interval),
            int(burst),
            None if concurrency == "-" else int(concurrency),
        )


def admit(tat: float | None, now: float, interval: float, burst: int = 1) -> tuple[float, float]:
    """One GCRA admission on a key whose theoretical arrival time is ``tat`` (``None``: the
    key is idle). Returns the key's new ``tat`` and when the task may start: ``now`` when it
    is admitted at once, else the moment of the slot it was given. Every backend applies
    exactly this rule inside its reserve step."""
    base = now if tat is None or tat < now else tat
    start = base - (burst - 1) * interval
    return base + interval, start if start > now else now


def gate_for(
    name: str,
    rate: Rate | None,
    concurrency: int | None,
    limit_key: Any,
    args: list[Any],
    kwargs: dict[str, Any],
) -> Gate | None:
    """The gate of one call of task ``name``, or ``None`` when the task has no limits.
    ``limit_key`` is called with the call's arguments; its value (made text) names the key."""
    if rate is None and concurrency is None:
        return None
    key = name
    if limit_key is not None:
        try:
            value = limit_key(*args, **kwargs)
        except Exception as exc:
            raise PayloadError(
                f"task {name!r}: its limit_key failed on these arguments: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        text = str(value)
        if not text or len(text) > MAX_KEY or not text.isprintable():
            raise PayloadError(
                f"task {name!r}: limit_key returned {text[:40]!r}; a key is 1 to {MAX_KEY} "
                "printable characters"
            )
        key = f"{name}:{text}"
    return Gate(key, None if rate is None else rate.interval, 1, concurrency)
