"""Three ``bgcoor scheduler`` processes on one backend: each tick fires once, whatever
happens to the processes.

Each test starts three ``bgcoor scheduler reliability.schedule_app:manager`` processes on a
fresh namespace of its backend (a new SQLite file, Redis key prefix or PostgreSQL schema)
and lets them race for one schedule, ``every=1s`` with the default ``catchup="latest"``.
Meanwhile scheduler 0 is SIGKILLed and restarted twice, and scheduler 2 is SIGSTOPped for
5 s and then SIGCONTed. Kills and stops land 5 ms after a tick, while the passes of that
tick are talking to the store. No worker runs: the task records are the ledger. Each
record's ``bgcoor-tick`` header is read back and:

* no tick has two records;
* every tick of the run's window is recorded, except that ``catchup="latest"`` may skip a
  tick that every live scheduler noticed late: consecutive recorded ticks are at most
  2 ticks apart, and the schedule's ``missed`` counter is exactly the ticks left out;
* the schedule's ``fired`` counter and ``last_tick`` agree with the records.

SQLite runs the issue's full 60 s scenario (kills at 10 s and 30 s, each down for 3 s; the
stop from 42 s to 47 s), marked ``slow``. Redis and PostgreSQL run the same events
compressed into 20 s (kills at 3 s and 9 s, each down for 2 s; the stop from 12 s to 17 s).
The three backends' runs share nothing and happen at the same time (``together.py``),
each reported by its own test.

SQLite has one writer at a time: a scheduler stopped while it holds the file's write lock
(its fire takes a few milliseconds, so rarely) holds up every other one until it resumes
(docs/schedules.md). The test then sees that the lock stays taken through the stop, says
so in its report, and lets the one gap the stop makes pass: ticks must resume within 2
ticks of the SIGCONT. Every other check stands.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bgcoor_core import TaskManager

from .backends import BACKENDS, Backend
from .harness import TESTS, settings_env, wait_until
from .schedule_app import EVERY, TICK_TASK
from .together import Together

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(240)]

APP = "reliability.schedule_app:manager"
TICK = EVERY.total_seconds()


@dataclass(frozen=True)
class Plan:
    """When (seconds after the three are ready) things happen to the schedulers."""

    seconds: float
    kills: tuple[float, float]  # scheduler 0 is SIGKILLed at each, restarted ``down`` later
    down: float
    stop: float  # scheduler 2 is SIGSTOPped then, SIGCONTed ``stop_for`` later
    stop_for: float = 5.0


FULL = Plan(seconds=60, kills=(10, 30), down=3, stop=42)
SHORT = Plan(seconds=20, kills=(3, 9), down=2, stop=12)


class SchedulerProcess:
    """One ``bgcoor scheduler`` process; its output goes to ``log``."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bgcoor_core.cli", "scheduler", APP],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: signal.Signals) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)  # by PID: only the process this test started

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def said_ready(self) -> bool:
        if not self.alive() and "ready:" not in self.output():
            raise AssertionError(f"scheduler {self.proc.pid} exited:\n{self.output()[-3000:]}")
        return "ready:" in self.output()


class Schedulers:
    """The three slots, and every process ever started in them."""

    def __init__(self, url: str, workdir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BGCOOR_")}
        env.update(
            settings_env({"broker_url": url, "storage_url": url}),
            PYTHONPATH=os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])]),
            COLUMNS="240",
        )
        self.env = env
        self.url = url
        self.workdir = workdir
        self.all: list[SchedulerProcess] = []
        self.slots: list[SchedulerProcess] = []

    def start(self) -> SchedulerProcess:
        process = SchedulerProcess(self.env, self.workdir / f"scheduler-{len(self.all)}.log")
        self.all.append(process)
        return process

    def restart(self, slot: int) -> None:
        self.slots[slot] = self.start()

    async def stop(self) -> list[int]:
        """SIGTERM the live ones and wait; their exit codes."""
        live = [p for p in self.all if p.alive()]
        for process in live:
            process.send(signal.SIGCONT)
            process.send(signal.SIGTERM)
        await wait_until(lambda: not any(p.alive() for p in live), 30, "schedulers stop")
        return [p.proc.wait() for p in live]

    def kill_all(self) -> None:
        for process in self.all:
            process.send(signal.SIGKILL)
            process.proc.wait(timeout=10)

    def logs(self, tail: int = 1500) -> str:
        return "\n".join(f"--- scheduler {p.proc.pid} ---\n{p.output()[-tail:]}" for p in self.all)

    def lines_between(self, first: float, last: float) -> str:
        """Every scheduler's timestamped log lines from ``first`` to ``last`` (epoch s): what
        each said around a gap (a slow pass, a late wake-up, a clock jump) whatever the tail."""
        shown = []
        for process in self.all:
            for line in process.output().splitlines():
                stamp, _, _ = line.partition(" ")
                try:
                    at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                except ValueError:
                    continue
                if first <= at <= last:
                    shown.append((at, f"[{process.proc.pid}] {line}"))
        return "\n".join(line for _, line in sorted(shown))


async def _at(start: float, offset: float) -> None:
    """Sleep until 5 ms after the first tick at or after ``start + offset`` (wall clock)."""
    target = math.ceil(start + offset) + 0.005
    await asyncio.sleep(max(target - time.time(), 0))


def _write_lock_held(url: str) -> bool:
    """Whether an SQLite file's write lock stays taken for half a second: the stopped
    scheduler holds it (a live one holds it for milliseconds)."""
    path = url.removeprefix("sqlite:///")
    for _ in range(5):
        conn = sqlite3.connect(path, timeout=0.05)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.rollback()
            return False
        except sqlite3.OperationalError:
            time.sleep(0.05)
        finally:
            conn.close()
    return True


async def _play(
    schedulers: Schedulers, plan: Plan, start: float, stalled: list[tuple[float, float]]
) -> list[str]:
    """Run the plan; what was done when (for the failure report). A stop that caught an
    SQLite scheduler holding the write lock is added to ``stalled`` (stop, cont)."""
    done: list[str] = []
    stopped_at = 0.0
    holding = False
    events = [(at, "kill") for at in plan.kills] + [(at + plan.down, "up") for at in plan.kills]
    events += [(plan.stop, "stop"), (plan.stop + plan.stop_for, "cont")]
    for at, what in sorted(events):
        await _at(start, at)
        pid = schedulers.slots[0 if what in ("kill", "up") else 2].proc.pid
        if what == "kill":
            schedulers.slots[0].send(signal.SIGKILL)
            schedulers.slots[0].proc.wait(timeout=10)
        elif what == "up":
            schedulers.restart(0)
        elif what == "stop":
            schedulers.slots[2].send(signal.SIGSTOP)
            stopped_at = time.time()
            if schedulers.url.startswith("sqlite:"):
                holding = await asyncio.to_thread(_write_lock_held, schedulers.url)
        else:
            schedulers.slots[2].send(signal.SIGCONT)
            if holding:
                stalled.append((stopped_at, time.time()))
        if what == "up":
            pid = schedulers.slots[0].proc.pid
        held = " (it holds the write lock)" if what == "stop" and holding else ""
        done.append(f"{_iso(stopped_at if what == 'stop' else time.time())} {what} {pid}{held}")
    await _at(start, plan.seconds)
    return done


@dataclass(frozen=True)
class Ledger:
    """The recorded ticks (epoch seconds, one per record) and the schedule's counters."""

    ticks: list[float]
    fired: int
    missed: int
    skipped: int
    last_tick: float | None


async def read_ledger(url: str) -> Ledger:
    manager = TaskManager(broker_url=url, storage_url=url)
    try:
        ticks: list[float] = []
        after: str | None = None
        while page := await manager.storage.list(name=TICK_TASK, limit=200, after=after):
            for record in page:
                assert record.headers["bgcoor-schedule"] == TICK_TASK
                stamp = record.headers["bgcoor-tick"].replace("Z", "+00:00")
                ticks.append(datetime.fromisoformat(stamp).timestamp())
            after = page[-1].id
        (info,) = [s for s in await manager.schedules() if s.id == TICK_TASK]
        state = info.state
        last = None if state.last_tick_ms is None else state.last_tick_ms / 1000
        return Ledger(sorted(ticks), state.fired, state.missed, state.skipped, last)
    finally:
        await manager.close()


def check(
    ledger: Ledger,
    window: tuple[float, float],
    stalled: Sequence[tuple[float, float]] = (),
) -> list[str]:
    """What is wrong with the ledger for a run whose every tick in ``window`` (inclusive,
    epoch seconds) should be recorded; an empty list when nothing is. A gap within a
    ``stalled`` span (a stopped SQLite writer) is allowed if ticks resume within 2 ticks
    of its end."""
    ticks = ledger.ticks
    if not ticks:
        return ["no tick recorded at all"]
    problems = []
    doubled = sorted(t for t, n in Counter(ticks).items() if n > 1)
    if doubled:
        problems.append(f"ticks recorded twice or more: {[_iso(t) for t in doubled]}")
    if ticks[0] > window[0] or ticks[-1] < window[1]:
        problems.append(
            f"records span {_iso(ticks[0])}..{_iso(ticks[-1])}, "
            f"the window {_iso(window[0])}..{_iso(window[1])}"
        )
    gaps = [
        (a, b)
        for a, b in itertools.pairwise(ticks)
        if b - a > 2 * TICK
        and not any(a >= stop - 2 * TICK and b <= cont + 2 * TICK for stop, cont in stalled)
    ]
    if gaps:
        problems.append(f"gaps over 2 ticks: {[(_iso(a), _iso(b)) for a, b in gaps]}")
    distinct = sorted(set(ticks))
    left_out = round((distinct[-1] - distinct[0]) / TICK) + 1 - len(distinct)
    if ledger.missed != left_out:
        problems.append(f"missed counter {ledger.missed}, ticks left out {left_out}")
    if ledger.fired != len(ticks) or ledger.last_tick != ticks[-1] or ledger.skipped:
        problems.append(
            f"counters fired={ledger.fired} skipped={ledger.skipped} last_tick="
            f"{ledger.last_tick} against {len(ticks)} records, last {ticks[-1]}"
        )
    return problems


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S.%f")[:-3]


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Backend:
    """The backend named by the test's parameter, skipped as the suite's own fixture does."""
    chosen = BACKENDS[request.param]
    reason = chosen.unavailable()
    if reason is not None:
        if chosen.must_run():
            pytest.fail(f"{reason} (CI=true and the plugin is installed)")
        pytest.skip(reason)
    return chosen


#: Each backend's plan (see the module docs).
PLANS = {"sqlite": FULL, "redis": SHORT, "postgres": SHORT}


async def three_schedulers(name: str, tmp_path: Path) -> None:
    """One backend's run of its plan: raises what is wrong with its ledger."""
    backend, plan = BACKENDS[name], PLANS[name]
    url = backend.make_url(tmp_path)
    schedulers = Schedulers(url, tmp_path)
    try:
        schedulers.slots = [schedulers.start() for _ in range(3)]
        for process in schedulers.slots:
            await wait_until(process.said_ready, 30, f"scheduler {process.proc.pid} ready")
        start = time.time()
        stalled: list[tuple[float, float]] = []
        events = await _play(schedulers, plan, start, stalled)
        end = time.time()
        codes = await schedulers.stop()
        window = (math.ceil(start) + TICK, math.floor(end) - TICK)
        ledger = await read_ledger(url)
        problems = check(ledger, window, stalled)
        restarted = [p for p in schedulers.all if "ready:" not in p.output()]
        if restarted:
            problems.append(f"{len(restarted)} scheduler(s) never became ready")
        if codes != [0] * len(codes):
            problems.append(f"exit codes after SIGTERM: {codes}")
        summary = (
            f"{len(ledger.ticks)} records, missed={ledger.missed}, window "
            f"{_iso(window[0])}..{_iso(window[1])}; events: {', '.join(events)}"
        )
        around = [
            f"--- log lines around the gap {_iso(a)}..{_iso(b)} ---\n"
            + schedulers.lines_between(a - 1.5, b + 1.5)
            for a, b in itertools.pairwise(ledger.ticks)
            if b - a > 2 * TICK
        ]
        assert not problems, "\n".join([summary, *problems, *around, schedulers.logs()])
        assert len(schedulers.all) == 5  # three, plus scheduler 0 restarted twice
        assert len(ledger.ticks) >= window[1] - window[0] + 1 - ledger.missed
    finally:
        schedulers.kill_all()
        if backend.cleanup is not None:
            await backend.cleanup(url)


#: The three backends' runs share nothing and mostly wait for ticks: they run at once.
RUNS = Together(three_schedulers)


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("sqlite", id="sqlite-60s", marks=pytest.mark.slow),
        pytest.param("redis", id="redis-20s", marks=pytest.mark.server),
        pytest.param("postgres", id="postgres-20s", marks=pytest.mark.server),
    ],
    indirect=True,
)
async def test_three_schedulers_fire_each_tick_once(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    await RUNS.result(request, backend.name)


def test_a_stalled_writer_excuses_only_the_gap_of_its_stop() -> None:
    ticks = [100.0, 101.0, 102.0, 108.0, 109.0, 110.0]  # a gap from 102 to 108
    ledger = Ledger(ticks, fired=6, missed=5, skipped=0, last_tick=110.0)
    window = (100.0, 110.0)
    assert any("gaps over 2 ticks" in p for p in check(ledger, window))
    assert check(ledger, window, [(102.005, 107.005)]) == []  # resumed within 2 ticks
    late = [(102.005, 105.0)]  # ticks came back 3 s after the SIGCONT: not excused
    assert any("gaps over 2 ticks" in p for p in check(ledger, window, late))
