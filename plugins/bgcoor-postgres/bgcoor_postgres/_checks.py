"""Checks on values before they reach PostgreSQL, so a bad one is a clear error at the
call instead of a raw driver error, or a statement that fails a whole batch.

The broker's own arguments (leases, delays, queue names) are checked by the core for
every backend (the ``Broker`` base class); these cover what only this backend sees: the
TTLs of ``save`` and ``complete``, a raw message's eta, and NUL in text. A TTL becomes
``clock_timestamp() + n * interval '1 second'``: ``inf``, ``nan`` or 1e13 there fails
the statement with "interval out of range", and a coalesced write carries other tasks'
writes too. Text columns cannot hold NUL. Each check is a comparison or a C-level
substring test, cheap enough for the hot path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from bgcoor_core import InvalidNameError
from bgcoor_core.kit import MAX_DELAY, printable

#: Longest TTL accepted, the core's bound for delays and TTLs (10 years): far inside what
#: PostgreSQL intervals and timestamps can hold.
MAX_SECONDS = MAX_DELAY
#: Latest eta a message may carry (a Unix timestamp): the end of year 9999, the last a
#: ``datetime`` (``Task.eta``) can express. Anything later in the table is not ours.
MAX_ETA = 253402300799.0
#: PostgreSQL ``integer`` (the counter columns).
INT_MAX = 2**31 - 1


def seconds(what: str, value: float) -> float:
    """``value`` if it is a finite duration of at most :data:`MAX_SECONDS` either way (a
    negative TTL: expired at once), else a ValueError naming ``what`` and the range."""
    if math.isfinite(value) and abs(value) <= MAX_SECONDS:
        return value
    raise ValueError(
        f"{what} must be a finite number of seconds within +-{MAX_SECONDS:.0f} (10 years), "
        f"not {value!r}"
    )


def optional_seconds(what: str, value: float | None) -> float | None:
    return None if value is None else seconds(what, value)


def eta(message_id: str, value: float | None) -> None:
    """A message's eta must be a finite Unix timestamp no later than year 9999."""
    if value is not None and not (math.isfinite(value) and abs(value) <= MAX_ETA):
        raise ValueError(
            f"task {printable(message_id, 60)}: eta must be a finite Unix timestamp within "
            f"+-{MAX_ETA:.0f} (year 9999), not {value!r}"
        )


def text(what: str, values: Iterable[str | None]) -> None:
    """Refuse a NUL in any of ``values`` (ids, names, tokens): PostgreSQL text cannot
    store it, and the driver's error would name neither the value nor the problem."""
    for value in values:
        if value is not None and "\x00" in value:
            raise InvalidNameError(
                f"invalid {what} '{printable(value, 80)}': it contains a NUL character, "
                "which PostgreSQL text cannot store"
            )
