"""When a schedule fires: :class:`Schedule`, a cron expression or an interval in a zone.

Cron expressions are parsed by `cronsim <https://pypi.org/project/cronsim/>`_ (five fields,
``minute hour day month weekday``, or six with a leading seconds field:
``second minute hour day month weekday``); zones come from :mod:`zoneinfo` (``tzdata``
where the system has none). Daylight saving follows Vixie cron: a fixed-time job whose
time falls in a skipped interval runs once right after the change, one in a repeated
interval runs once (its first occurrence), and a job with a wildcard minute or hour
follows the wall clock (a job is fixed-time unless its minute or hour field starts with
``*``, as in Vixie cron: ``0 1-3 * * *`` is one). cronsim matches fields on the wall clock;
mapping wall times to instants is done here, as its own zone handling misses 30-minute
shifts and repeated intervals. An interval (``every=``) ignores zones: its ticks are the
multiples of the interval since the Unix epoch, so every process agrees on them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from ._errors import InvalidScheduleError
from ._schedules import Catchup, Overlap, ScheduleDefinition

#: Intervals are whole milliseconds, at least this long.
MIN_EVERY = timedelta(seconds=1)
#: The longest interval or catch-up window accepted.
MAX_SPAN = timedelta(days=366)


def _zone(tz: str) -> ZoneInfo:
    if not isinstance(tz, str) or not tz:
        raise InvalidScheduleError(f"time zone must be a zone name such as 'UTC', got {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidScheduleError(
            f"unknown time zone {tz!r} (an IANA name such as 'Europe/Paris')"
        ) from exc


def _check_cron(expr: str, zone: ZoneInfo) -> None:
    if not isinstance(expr, str):
        raise InvalidScheduleError(f"cron expression must be a string, got {expr!r}")
    fields = len(expr.split())
    if fields not in (5, 6):
        raise InvalidScheduleError(
            f"invalid cron expression {expr!r}: expected 5 fields (minute hour day month "
            f"weekday) or 6 (second minute hour day month weekday), got {fields}"
        )
    try:
        CronSim(expr, datetime.now(zone))
    except CronSimError as exc:
        raise InvalidScheduleError(f"invalid cron expression {expr!r}: {exc}") from None


def _ms(span: timedelta, what: str, minimum: timedelta) -> int:
    if not isinstance(span, timedelta):
        raise InvalidScheduleError(f"{what} must be a timedelta, got {span!r}")
    if not minimum <= span <= MAX_SPAN:
        raise InvalidScheduleError(
            f"{what} must be between {minimum} and {MAX_SPAN.days} days, got {span}"
        )
    ms = span // timedelta(milliseconds=1)
    if timedelta(milliseconds=ms) != span:
        raise InvalidScheduleError(f"{what} must be a whole number of milliseconds, got {span}")
    return ms


@dataclass(frozen=True)
class Schedule:
    """When a periodic task fires: exactly one of ``cron`` or ``every``, in zone ``tz``.

    ``Schedule(cron="30 2 * * *", tz="Europe/Paris").next_after(dt)`` is the first fire
    time after ``dt``. ``overlap`` (``allow``, ``skip``, ``buffer_one``), ``catchup``
    (``latest``, ``none``, ``all``) and ``catchup_window`` say what happens to ticks while
    an earlier run is still going, or after the schedulers were down.
    """

    cron: str | None = None
    every: timedelta | None = None
    tz: str = "UTC"
    overlap: Overlap | str = Overlap.ALLOW
    catchup: Catchup | str = Catchup.LATEST
    catchup_window: timedelta = timedelta(hours=1)
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _every_ms: int | None = field(init=False, repr=False, compare=False)
    _wall_clock: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise InvalidScheduleError("give exactly one of cron= or every=")
        zone = _zone(self.tz)
        object.__setattr__(self, "_zone", zone)
        wall_clock = False
        if self.cron is not None:
            _check_cron(self.cron, zone)
            fields = self.cron.split()
            minute, hour = fields[-5], fields[-4]
            wall_clock = minute.startswith("*") or hour.startswith("*")
        object.__setattr__(self, "_wall_clock", wall_clock)
        every_ms = None if self.every is None else _ms(self.every, "every", MIN_EVERY)
        object.__setattr__(self, "_every_ms", every_ms)
        for name, kind in (("overlap", Overlap), ("catchup", Catchup)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, kind(value))
            except ValueError:
                choices = ", ".join(repr(v.value) for v in kind)
                raise InvalidScheduleError(
                    f"{name} must be one of {choices}, got {value!r}"
                ) from None
        _ms(self.catchup_window, "catchup_window", timedelta(0))

    @property
    def expression(self) -> str:
        """The cron expression, or ``every 30s`` for an interval."""
        if self.cron is not None:
            return self.cron
        assert self.every is not None
        return f"every {_span_text(self.every)}"

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after ``moment`` (timezone-aware), in ``tz``."""
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise InvalidScheduleError(f"next_after needs a timezone-aware datetime, got {moment}")
        if self._every_ms is not None:
            ms = int(moment.timestamp() * 1000) // self._every_ms * self._every_ms
            tick = datetime.fromtimestamp((ms + self._every_ms) / 1000, UTC)
            return tick.astimezone(self._zone)
        assert self.cron is not None
        return self._next_cron(moment).astimezone(self._zone)

    def _next_cron(self, moment: datetime) -> datetime:
        """cronsim matches the expression on the zone's wall clock, as a naive timeline
        (in UTC, where it has no transitions); each wall time is then mapped to instants
        by the daylight-saving rule. Wall times are walked from a little before
        ``moment``'s, since a repeated interval maps later wall times to earlier instants,
        until no later one could still map before the earliest instant found."""
        zone, cron = self._zone, self.cron
        assert cron is not None
        wall = moment.astimezone(zone).replace(tzinfo=None)
        best: datetime | None = None
        limit: datetime | None = None
        for candidate in CronSim(cron, (wall - _SHIFT).replace(tzinfo=UTC)):
            local = candidate.replace(tzinfo=None)
            if limit is not None and local > limit:
                break
            for instant in self._instants(local):
                if instant > moment and (best is None or instant < best):
                    best = instant
                    limit = best.astimezone(zone).replace(tzinfo=None) + _SHIFT
        assert best is not None  # cronsim iterates forever for an expression it accepts
        return best

    def _instants(self, wall: datetime) -> list[datetime]:
        """The instants (UTC) at which the schedule fires for local wall time ``wall``."""
        zone = self._zone
        found = []
        for fold in (0, 1):
            instant = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
            if instant.astimezone(zone).replace(tzinfo=None) == wall and instant not in found:
                found.append(instant)
        found.sort()
        if self._wall_clock:  # a wildcard minute or hour: every occurrence, none in a gap
            return found
        if found:  # a fixed time: once, at its first occurrence
            return found[:1]
        # a fixed time in a skipped interval: once, right after the change
        before = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
        after = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
        return [_transition(zone, min(before, after), max(before, after))]

    def ticks(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """Fire times in ``(after, until]``, oldest first."""
        tick = self.next_after(after)
        while tick <= until:
            yield tick
            tick = self.next_after(tick)

    def next_times(self, after: datetime, count: int) -> list[datetime]:
        times: list[datetime] = []
        moment = after
        for _ in range(count):
            moment = self.next_after(moment)
            times.append(moment)
        return times

    def definition(
        self, schedule_id: str, task: str, payload: object, options: dict[str, object]
    ) -> ScheduleDefinition:
        """This schedule as stored, for task ``task`` called with ``payload``."""
        return ScheduleDefinition(
            id=schedule_id,
            task=task,
            payload=payload,
            options=options,
            cron=self.cron,
            every_ms=self._every_ms,
            tz=self.tz,
            overlap=Overlap(self.overlap),
            catchup=Catchup(self.catchup),
            catchup_window_ms=self.catchup_window // timedelta(milliseconds=1),
        )

    @classmethod
    def of(cls, definition: ScheduleDefinition) -> Schedule:
        """The schedule a stored definition describes."""
        every = None
        if definition.every_ms is not None:
            every = timedelta(milliseconds=definition.every_ms)
        return cls(
            cron=definition.cron,
            every=every,
            tz=definition.tz,
            overlap=definition.overlap,
            catchup=definition.catchup,
            catchup_window=timedelta(milliseconds=definition.catchup_window_ms),
        )


#: More than any zone's daylight-saving shift: how far a wall time and an instant of a
#: neighbouring wall time can be apart.
_SHIFT = timedelta(hours=3)


def _transition(zone: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The instant in ``(low, high]`` (UTC) where the zone's offset becomes the one it has
    at ``high`` (transitions fall on whole seconds)."""
    target = high.astimezone(zone).utcoffset()
    lo, hi = math.floor(low.timestamp()), math.ceil(high.timestamp())
    while hi - lo > 1:
        middle = (lo + hi) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == target:
            hi = middle
        else:
            lo = middle
    return datetime.fromtimestamp(hi, UTC)


def _span_text(span: timedelta) -> str:
    seconds = span.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
