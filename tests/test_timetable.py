"""``Schedule.next_after`` against a brute-force oracle (issue 12, periodic tasks).

The rule is Vixie cron's: when clocks go forward, a fixed-time job (neither its minute nor
its hour field starts with ``*``) whose time falls in the skipped interval runs once, right
after the change; when clocks go back, it runs once in the repeated interval (the first
occurrence). Every
other job follows the wall clock: it fires at each instant whose local wall time matches,
so twice in a repeated interval and never in a skipped one.

The oracle below parses cron fields itself and walks UTC instants minute by minute,
converting each to local wall time; it shares nothing with cronsim. Intervals
(``every=``) ignore zones: their ticks are the multiples of the interval since the epoch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bgcoor_core._errors import InvalidScheduleError
from bgcoor_core._timetable import Schedule

MINUTE = timedelta(minutes=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ZONES = [
    "Europe/Paris",
    "America/New_York",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Asia/Kolkata",
    "UTC",
    "America/Sao_Paulo",
]
#: No zone here moves its clocks by more than an hour, so a wall time repeats within 3 h.
REPEAT_LOOKBACK = 180


# --- the oracle ---------------------------------------------------------------------------


def _field(text: str, low: int, high: int) -> frozenset[int]:
    """The values of one cron field: ``*``, ``n``, ``a-b``, ``*/n``, ``a-b/n``, lists."""
    values: set[int] = set()
    for term in text.split(","):
        base, _, step_text = term.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            first, last = low, high
        elif "-" in base:
            first_text, last_text = base.split("-")
            first, last = int(first_text), int(last_text)
        else:
            first = last = int(base)
        assert low <= first <= last <= high, f"oracle cannot read {text!r}"
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A five-field cron expression, parsed by the oracle."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    fixed: bool
    day_and: bool

    @classmethod
    def parse(cls, expr: str) -> Cron:
        minute, hour, day, month, weekday = expr.split()
        return cls(
            minutes=_field(minute, 0, 59),
            hours=_field(hour, 0, 23),
            days=_field(day, 1, 31),
            months=_field(month, 1, 12),
            weekdays=frozenset(v % 7 for v in _field(weekday, 0, 7)),
            fixed=not minute.startswith("*") and not hour.startswith("*"),
            # Vixie cron: day-of-month and weekday are ANDed when either starts with a
            # star, ORed when both are restricted.
            day_and=day.startswith("*") or weekday.startswith("*"),
        )

    def on(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_day = day.day in self.days
        by_weekday = day.isoweekday() % 7 in self.weekdays
        return by_day and by_weekday if self.day_and else by_day or by_weekday

    def matches(self, wall: datetime) -> bool:
        return wall.minute in self.minutes and wall.hour in self.hours and self.on(wall.date())


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    """The naive local wall time at ``instant``."""
    return instant.astimezone(zone).replace(tzinfo=None)


def _repeated(instant: datetime, wall: datetime, zone: ZoneInfo) -> bool:
    """Whether some earlier instant already showed this wall time (clocks went back)."""
    return any(_wall(instant - k * MINUTE, zone) == wall for k in range(1, REPEAT_LOOKBACK + 1))


def _fires(cron: Cron, zone: ZoneInfo, instant: datetime, before: datetime) -> bool:
    """Whether the job fires at UTC minute ``instant``; ``before`` is the previous
    minute's wall time."""
    wall = _wall(instant, zone)
    if not cron.fixed:
        return cron.matches(wall)
    if cron.matches(wall) and not _repeated(instant, wall, zone):
        return True
    skipped = before + MINUTE  # the wall times the clock jumped over to reach ``wall``
    while skipped < wall:
        if cron.matches(skipped):
            return True
        skipped += MINUTE
    return False


def oracle_next(expr: str, tz: str, after: datetime, limit: timedelta) -> datetime:
    """The first UTC instant strictly after ``after`` at which ``expr`` fires in ``tz``."""
    cron, zone = Cron.parse(expr), ZoneInfo(tz)
    instant = after.astimezone(UTC).replace(second=0, microsecond=0) + MINUTE
    before = _wall(instant - MINUTE, zone)
    end = instant + limit
    while instant < end:
        if _fires(cron, zone, instant, before):
            return instant
        before = _wall(instant, zone)
        instant += MINUTE
    raise AssertionError(f"oracle: {expr!r} in {tz} never fires within {limit} of {after}")


# --- exact examples -----------------------------------------------------------------------


def _fire_times(next_after: Any, tz: str, day: date) -> list[datetime]:
    """Fire times whose local date is ``day``, by iterating ``next_after``."""
    zone = ZoneInfo(tz)
    moment = datetime.combine(day - timedelta(days=1), time(12), tzinfo=zone)
    times: list[datetime] = []
    while True:
        moment = next_after(moment)
        local = moment.astimezone(zone)
        if local.date() > day:
            return times
        if local.date() == day:
            times.append(local)


def _schedule_times(expr: str, tz: str, day: date) -> list[datetime]:
    return _fire_times(Schedule(cron=expr, tz=tz).next_after, tz, day)


def _oracle_times(expr: str, tz: str, day: date) -> list[datetime]:
    def step(moment: datetime) -> datetime:
        return oracle_next(expr, tz, moment, timedelta(days=3))

    return _fire_times(step, tz, day)


def _utc(times: list[datetime]) -> list[str]:
    return [t.astimezone(UTC).strftime("%Y-%m-%d %H:%M") for t in times]


#: (expression, zone, day, local fire times with their UTC offsets), derived by hand.
EXACT = [
    # Paris: 2026-03-29 02:00 CET -> 03:00 CEST; 2026-10-25 03:00 CEST -> 02:00 CET.
    ("30 2 * * *", "Europe/Paris", date(2026, 3, 29), ["03:00+02:00"]),
    ("30 2 * * *", "Europe/Paris", date(2026, 10, 25), ["02:30+02:00"]),
    ("30 2 * * *", "Europe/Paris", date(2026, 3, 30), ["02:30+02:00"]),
    ("30 2 * * *", "Europe/Paris", date(2026, 10, 26), ["02:30+01:00"]),
    ("0 3 * * *", "Europe/Paris", date(2026, 3, 29), ["03:00+02:00"]),
    ("*/20 2 * * *", "Europe/Paris", date(2026, 3, 29), []),
    (
        "*/20 2 * * *",
        "Europe/Paris",
        date(2026, 10, 25),
        ["02:00+02:00", "02:20+02:00", "02:40+02:00", "02:00+01:00", "02:20+01:00", "02:40+01:00"],
    ),
    # Lord Howe: 2026-04-05 02:00 (+11) -> 01:30 (+10:30); 2026-10-04 02:00 (+10:30) ->
    # 02:30 (+11). Half-hour shifts.
    ("15 2 * * *", "Australia/Lord_Howe", date(2026, 10, 4), ["02:30+11:00"]),
    ("0 2 * * *", "Australia/Lord_Howe", date(2026, 10, 4), ["02:30+11:00"]),
    ("30 2 * * *", "Australia/Lord_Howe", date(2026, 10, 4), ["02:30+11:00"]),
    ("45 1 * * *", "Australia/Lord_Howe", date(2026, 4, 5), ["01:45+11:00"]),
    ("15 1 * * *", "Australia/Lord_Howe", date(2026, 4, 5), ["01:15+11:00"]),
    ("0 2 * * *", "Australia/Lord_Howe", date(2026, 4, 5), ["02:00+10:30"]),
    (
        "*/15 1 * * *",
        "Australia/Lord_Howe",
        date(2026, 4, 5),
        ["01:00+11:00", "01:15+11:00", "01:30+11:00", "01:45+11:00", "01:30+10:30", "01:45+10:30"],
    ),
    ("*/15 2 * * *", "Australia/Lord_Howe", date(2026, 10, 4), ["02:30+11:00", "02:45+11:00"]),
    # Chatham: 2026-04-05 03:45 (+13:45) -> 02:45 (+12:45); 2026-09-27 02:45 (+12:45) ->
    # 03:45 (+13:45). The change is at a quarter past, so an hour straddles it.
    ("0 3 * * *", "Pacific/Chatham", date(2026, 9, 27), ["03:45+13:45"]),
    ("45 2 * * *", "Pacific/Chatham", date(2026, 9, 27), ["03:45+13:45"]),
    ("30 2 * * *", "Pacific/Chatham", date(2026, 9, 27), ["02:30+12:45"]),
    ("0 3 * * *", "Pacific/Chatham", date(2026, 4, 5), ["03:00+13:45"]),
    ("45 2 * * *", "Pacific/Chatham", date(2026, 4, 5), ["02:45+13:45"]),
    ("45 3 * * *", "Pacific/Chatham", date(2026, 4, 5), ["03:45+12:45"]),
    (
        "*/30 3 * * *",
        "Pacific/Chatham",
        date(2026, 4, 5),
        ["03:00+13:45", "03:30+13:45", "03:00+12:45", "03:30+12:45"],
    ),
    ("*/30 3 * * *", "Pacific/Chatham", date(2026, 9, 27), []),
    # No daylight saving: nothing special.
    ("30 2 * * *", "Asia/Kolkata", date(2026, 3, 29), ["02:30+05:30"]),
]

#: (expression, zone, day, number of fire times that local day).
COUNTS: list[Any] = [
    ("0 * * * *", "Europe/Paris", date(2026, 3, 29), 23),
    ("0 * * * *", "Europe/Paris", date(2026, 10, 25), 25),
    ("0 * * * *", "Europe/Paris", date(2026, 6, 1), 24),
    ("30 2 * * *", "Europe/Paris", date(2026, 3, 29), 1),
    ("30 2 * * *", "Europe/Paris", date(2026, 10, 25), 1),
    # Lord Howe: on 04-05 01:30-02:00 repeats (01:00 once, 01:30 twice); on 10-04
    # 02:00-02:30 is skipped (02:00 never, 02:30 once).
    ("0 * * * *", "Australia/Lord_Howe", date(2026, 4, 5), 24),
    pytest.param(
        "30 * * * *",
        "Australia/Lord_Howe",
        date(2026, 4, 5),
        25,
    ),
    ("0 * * * *", "Australia/Lord_Howe", date(2026, 10, 4), 23),
    pytest.param(
        "30 * * * *",
        "Australia/Lord_Howe",
        date(2026, 10, 4),
        24,
    ),
    ("*/30 * * * *", "Australia/Lord_Howe", date(2026, 4, 5), 49),
    ("*/30 * * * *", "Australia/Lord_Howe", date(2026, 10, 4), 47),
    # Chatham: on 04-05 02:45-03:45 repeats (03:00 twice); on 09-27 02:45-03:45 is skipped.
    ("0 * * * *", "Pacific/Chatham", date(2026, 4, 5), 25),
    ("0 * * * *", "Pacific/Chatham", date(2026, 9, 27), 23),
    ("45 * * * *", "Pacific/Chatham", date(2026, 4, 5), 25),
    ("45 * * * *", "Pacific/Chatham", date(2026, 9, 27), 23),
    ("0 * * * *", "UTC", date(2026, 3, 29), 24),
]


def _local(times: list[datetime]) -> list[str]:
    return [t.strftime("%H:%M") + t.isoformat()[-6:] for t in times]


@pytest.mark.parametrize(("expr", "tz", "day", "expected"), EXACT)
def test_fire_times_on_a_day(expr: str, tz: str, day: date, expected: list[str]) -> None:
    assert _local(_oracle_times(expr, tz, day)) == expected
    assert _local(_schedule_times(expr, tz, day)) == expected


@pytest.mark.parametrize(("expr", "tz", "day", "count"), COUNTS)
def test_fire_counts_on_a_day(expr: str, tz: str, day: date, count: int) -> None:
    expected = _oracle_times(expr, tz, day)
    assert len(expected) == count
    assert _utc(expected) == sorted(set(_utc(expected)))  # distinct instants, in order
    assert _utc(_schedule_times(expr, tz, day)) == _utc(expected)


#: (expression, zone, start, expected first fire after it): edge cases the property test
#: below found in cronsim's own zone handling, which Schedule's wall-clock mapping fixes.
DST_EDGES = [
    pytest.param(
        "30 2 * * *",
        "Europe/Paris",
        "2026-10-25T02:10:00+01:00",  # got 2026-10-25T02:30:00+02:00, 40 min before it
        "2026-10-26T02:30:00+01:00",
        id="fixed-after-first-pass-paris",
    ),
    pytest.param(
        "15 1 * * *",
        "America/New_York",
        "2027-11-07T01:00:00-05:00",  # got 2027-11-07T01:15:00-04:00, before it
        "2027-11-08T01:15:00-05:00",
        id="fixed-after-first-pass-new-york",
    ),
    pytest.param(
        "30 * * * *",
        "Australia/Lord_Howe",
        "2026-04-05T01:30:00+11:00",  # got 2026-04-05T02:30:00+10:30
        "2026-04-05T01:30:00+10:30",
        id="minute-jump-lord-howe-back",
    ),
    pytest.param(
        "30 * * * *",
        "Australia/Lord_Howe",
        "2026-10-04T01:30:00+10:30",  # got 2026-10-04T03:30:00+11:00
        "2026-10-04T02:30:00+11:00",
        id="minute-jump-lord-howe-forward",
    ),
    pytest.param(
        "* 3 * * *",
        "Australia/Lord_Howe",
        "2026-04-05T01:31:00+10:30",  # got 2026-04-05T03:30:00+10:30
        "2026-04-05T03:00:00+10:30",
        id="hour-walk-lord-howe",
    ),
    pytest.param(
        "*/30 3 * * *",
        "Pacific/Chatham",
        "2026-04-05T02:50:00+12:45",  # got 2026-04-05T03:00:00+13:45, before it
        "2026-04-05T03:00:00+12:45",
        id="hour-walk-chatham-back",
    ),
    pytest.param(
        "0 */2 * * *",
        "Pacific/Chatham",
        "2026-09-27T03:45:00+13:45",  # got 2026-09-27T06:00:00+13:45
        "2026-09-27T04:00:00+13:45",
        id="hour-walk-chatham-forward",
    ),
]


@pytest.mark.parametrize(("expr", "tz", "start", "expected"), DST_EDGES)
def test_dst_edge_cases(expr: str, tz: str, start: str, expected: str) -> None:
    moment = datetime.fromisoformat(start)
    want = datetime.fromisoformat(expected).astimezone(UTC)
    assert oracle_next(expr, tz, moment, timedelta(days=3)) == want
    assert Schedule(cron=expr, tz=tz).next_after(moment).astimezone(UTC) == want


def test_lord_howe_spring_forward_fires_at_half_past_two() -> None:
    schedule = Schedule(cron="15 2 * * *", tz="Australia/Lord_Howe")
    got = schedule.next_after(datetime(2026, 10, 3, 12, tzinfo=UTC))
    assert got.astimezone(UTC) == datetime(2026, 10, 3, 15, 30, tzinfo=UTC)
    assert got.isoformat() == "2026-10-04T02:30:00+11:00"


# --- the property -------------------------------------------------------------------------


@functools.cache
def _transitions(tz: str) -> tuple[datetime, ...]:
    """The UTC instants in 2025-2027 at which ``tz`` changes its offset."""
    zone = ZoneInfo(tz)
    found: list[datetime] = []
    instant = datetime(2025, 1, 1, tzinfo=UTC)
    offset = instant.astimezone(zone).utcoffset()
    while instant < datetime(2028, 1, 1, tzinfo=UTC):
        later = instant + timedelta(hours=1)
        if later.astimezone(zone).utcoffset() != offset:
            low, high = instant, later  # the change is in (low, high]
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                if middle.astimezone(zone).utcoffset() == offset:
                    low = middle
                else:
                    high = middle
            found.append(high.replace(microsecond=0))
            offset = later.astimezone(zone).utcoffset()
        instant = later
    return tuple(found)


def test_transitions_are_found() -> None:
    assert _transitions("Europe/Paris")[2:4] == (
        datetime(2026, 3, 29, 1, tzinfo=UTC),
        datetime(2026, 10, 25, 1, tzinfo=UTC),
    )
    assert len(_transitions("Pacific/Chatham")) == 6
    assert _transitions("Asia/Kolkata") == _transitions("America/Sao_Paulo") == ()


_STAR_MINUTES = st.sampled_from(["*", "*/5", "*/15", "*/20", "*/30", "*/45"])
_STAR_HOURS = st.sampled_from(["*", "*/2", "*/3", "*/5"])
_MINUTE = st.one_of(st.sampled_from([0, 15, 30, 45]), st.integers(0, 59)).map(str)
_HOUR = st.one_of(st.integers(0, 4), st.integers(0, 23)).map(str)


def _spread(low: int, high: int) -> st.SearchStrategy[str]:
    """A list or range of values in [low, high]."""
    pairs = st.tuples(st.integers(low, high), st.integers(low, high)).map(sorted)
    return st.one_of(
        pairs.map(lambda p: f"{p[0]},{p[1]}" if p[0] != p[1] else str(p[0])),
        pairs.map(lambda p: f"{p[0]}-{p[1]}"),
    )


@st.composite
def _minute_hour(draw: st.DrawFn) -> str:
    """Minute and hour fields: fixed (numbers, lists or ranges), or with a star in either."""
    kind = draw(st.sampled_from(["fixed", "fixed_spread", "star_minute", "star_hour", "stars"]))
    if kind == "fixed":
        return f"{draw(_MINUTE)} {draw(_HOUR)}"
    if kind == "fixed_spread":
        return f"{draw(st.one_of(_MINUTE, _spread(0, 59)))} {draw(_spread(0, 5))}"
    if kind == "star_minute":
        return f"{draw(_STAR_MINUTES)} {draw(st.one_of(_HOUR, _spread(0, 5)))}"
    if kind == "star_hour":
        return f"{draw(st.one_of(_MINUTE, _spread(0, 59)))} {draw(_STAR_HOURS)}"
    return f"{draw(_STAR_MINUTES)} {draw(_STAR_HOURS)}"


_DAYS = st.one_of(
    st.just("*"),
    st.just("*"),
    st.tuples(st.integers(1, 10), st.integers(25, 31)).map(lambda p: f"{p[0]}-{p[1]}"),
    st.integers(1, 7).map(lambda d: f"{d},{d + 7},{d + 14},{d + 21}"),
)
_WEEKDAYS = st.one_of(
    st.just("*"),
    st.just("*"),
    st.integers(0, 6).map(str),
    st.just("1-5"),
    st.just("0,6"),
    _spread(0, 6),
)


@st.composite
def expressions(draw: st.DrawFn) -> str:
    """Five fields that fire at least every 15 days ("*/2" days ANDs with the weekday)."""
    days = draw(st.one_of(_DAYS, st.just("*/2")))
    weekdays = "*" if days == "*/2" else draw(_WEEKDAYS)
    return f"{draw(_minute_hour())} {days} * {weekdays}"


@st.composite
def zone_and_start(draw: st.DrawFn, zones: list[str] = ZONES) -> tuple[str, datetime]:
    """A zone and an instant near one of its transitions (any zone's, when it has none)."""
    tz = draw(st.sampled_from(zones))
    anchors = _transitions(tz) or tuple(t for z in ZONES for t in _transitions(z))
    anchor = draw(st.sampled_from(anchors))
    offset = draw(
        st.one_of(
            st.integers(-240, 240).map(lambda m: timedelta(minutes=m)),
            st.integers(-2 * 86400, 2 * 86400).map(lambda s: timedelta(seconds=s)),
        )
    )
    micro = draw(st.sampled_from([0, 0, 1, 500_000, 999_999]))
    start = anchor + offset + timedelta(microseconds=micro)
    shown_in = draw(st.sampled_from([UTC, ZoneInfo(tz), ZoneInfo("Asia/Tokyo")]))
    return tz, start.astimezone(shown_in)


#: Days the oracle scans before giving up (expressions here fire at least every 15 days).
ORACLE_LIMIT = timedelta(days=16)


def _check_next_after(expr: str, tz: str, start: datetime) -> None:
    got = Schedule(cron=expr, tz=tz).next_after(start)
    assert got.tzinfo == ZoneInfo(tz)
    want = oracle_next(expr, tz, start, ORACLE_LIMIT)
    assert got.astimezone(UTC) == want, (
        f"{expr!r} in {tz} after {start.astimezone(ZoneInfo(tz))}: "
        f"expected {want.astimezone(ZoneInfo(tz))}, got {got}"
    )


@settings(max_examples=200, deadline=None)
@given(expr=expressions(), where=zone_and_start())
@example(expr="30 2 * * *", where=("Europe/Paris", datetime(2026, 10, 25, 1, 10, tzinfo=UTC)))
@example(expr="0 * * * *", where=("Pacific/Chatham", datetime(2026, 4, 4, 14, 10, tzinfo=UTC)))
def test_next_after_matches_the_oracle(expr: str, where: tuple[str, datetime]) -> None:
    tz, start = where
    _check_next_after(expr, tz, start)


def test_a_range_in_both_time_fields_is_a_fixed_time_job() -> None:
    """Vixie cron: a job is fixed-time unless its minute or hour field starts with ``*``,
    so ``0 1-3`` runs once in the repeated 02:00 hour."""
    expr, tz, day = "0 1-3 * * *", "Europe/Paris", date(2026, 10, 25)
    expected = ["01:00+02:00", "02:00+02:00", "03:00+01:00"]
    assert _local(_oracle_times(expr, tz, day)) == expected
    assert _local(_schedule_times(expr, tz, day)) == expected


# --- intervals ----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    start=st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    tz=st.sampled_from(ZONES),
    shown_in=st.sampled_from(ZONES),
)
@example(start=datetime(2026, 3, 29, 1, 0, 0, tzinfo=UTC), tz="Europe/Paris", shown_in="UTC")
@example(start=datetime(2026, 3, 29, 0, 59, 59, 999_999, tzinfo=UTC), tz="UTC", shown_in="UTC")
def test_every_ticks_are_multiples_of_the_interval(start: datetime, tz: str, shown_in: str) -> None:
    every = timedelta(seconds=30)
    moment = start.astimezone(ZoneInfo(shown_in))
    tick = Schedule(every=every, tz=tz).next_after(moment)
    assert tick > moment
    assert tick - moment <= every
    assert (tick - EPOCH) % every == timedelta(0)
    # The same tick whatever the zone, and from anywhere in the 30 s before it.
    assert Schedule(every=every).next_after(moment) == tick
    assert Schedule(every=every, tz=tz).next_after(tick - every) == tick
    assert Schedule(every=every, tz=tz).next_after(tick - timedelta(microseconds=1)) == tick


@settings(max_examples=100, deadline=None)
@given(
    every_ms=st.integers(1000, 366 * 86_400_000),
    start=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
)
def test_every_ticks_for_any_interval(every_ms: int, start: datetime) -> None:
    every = timedelta(milliseconds=every_ms)
    tick = Schedule(every=every, tz="Pacific/Chatham").next_after(start)
    assert start < tick <= start + every
    assert (tick - EPOCH) % every == timedelta(0)


def test_every_ticks_in_a_row() -> None:
    schedule = Schedule(every=timedelta(seconds=30), tz="Europe/Paris")
    start = datetime(2026, 3, 29, 0, 59, 10, tzinfo=UTC)
    assert _utc(schedule.next_times(start, 3)) == [
        "2026-03-29 00:59",
        "2026-03-29 01:00",
        "2026-03-29 01:00",
    ]
    assert [t.astimezone(UTC).second for t in schedule.next_times(start, 3)] == [30, 0, 30]


# --- validation ---------------------------------------------------------------------------

BAD: list[tuple[dict[str, Any], str]] = [
    ({"cron": "61 * * * *"}, r"invalid cron expression '61 \* \* \* \*': Bad minute"),
    ({"cron": "* * * *"}, r"invalid cron expression '\* \* \* \*': expected 5 fields .* got 4"),
    ({"cron": "0 2 * * *", "tz": "Mars/Olympus_Mons"}, r"unknown time zone 'Mars/Olympus_Mons'"),
    ({"cron": "0 2 * * *", "tz": ""}, r"time zone must be a zone name"),
    ({"every": timedelta(milliseconds=999)}, r"every must be between 0:00:01 and 366 days"),
    ({"every": timedelta(0)}, r"every must be between"),
    (
        {"every": timedelta(seconds=1, microseconds=500)},
        r"every must be a whole number of milliseconds",
    ),
    ({"cron": "* * * * *", "every": timedelta(seconds=30)}, r"exactly one of cron= or every="),
    ({}, r"exactly one of cron= or every="),
    (
        {"every": timedelta(seconds=30), "overlap": "sometimes"},
        r"overlap must be one of 'allow', 'skip', 'buffer_one', got 'sometimes'",
    ),
    (
        {"every": timedelta(seconds=30), "catchup": "most"},
        r"catchup must be one of 'latest', 'none', 'all', got 'most'",
    ),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD)
def test_bad_schedules_are_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidScheduleError, match=message):
        Schedule(**kwargs)


def test_invalid_schedule_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="Bad hour"):
        Schedule(cron="0 24 * * *")


def test_next_after_refuses_a_naive_datetime() -> None:
    for schedule in (Schedule(cron="0 * * * *"), Schedule(every=timedelta(seconds=30))):
        with pytest.raises(InvalidScheduleError, match="needs a timezone-aware datetime"):
            schedule.next_after(datetime(2026, 3, 29, 2, 30))
