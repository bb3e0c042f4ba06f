"""``bgcoor schedules APP`` (listing, ``--json``, ``--pause``/``--resume``/``--remove``) and
``bgcoor worker --no-scheduler``, on a SQLite file shared with real worker processes."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cli_support import Subprocess, fails, ok, row, runner, sqlite_env, write_module

import bgcoor_core.cli._worker as worker_cli
from bgcoor_core import TaskManager
from bgcoor_core._periodic import store_of
from bgcoor_core._scheduler import SCHEDULE_HEADER, TICK_HEADER, Scheduler
from bgcoor_core._schedules import ScheduleEntry, to_ms
from bgcoor_core.cli import app as cli_app

APP = "sched_app"
SOURCE = """
from datetime import timedelta

from bgcoor_core import TaskManager

manager = TaskManager()


@manager.periodic(every=timedelta(seconds=1), id="beat")
def beat() -> str:
    return "beat"


@manager.periodic(cron="30 2 * * *", tz="Europe/Paris", id="nightly")
def nightly() -> None:
    pass
"""


@pytest.fixture
def sched_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    """An app with two periodic tasks on a SQLite file, in the current directory."""
    sqlite_env(monkeypatch, tmp_path)
    write_module(tmp_path, APP, SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(APP)


def listing() -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in json.loads(ok("schedules", APP, "--json"))}


def entries(manager: TaskManager) -> dict[str, ScheduleEntry]:
    async def go() -> dict[str, ScheduleEntry]:
        try:
            return {e.id: e for e in await store_of(manager.backends).get_schedules()}
        finally:
            await manager.close()

    return asyncio.run(go())


def store_declared(manager: TaskManager) -> None:
    """What a scheduler does first: store the app's declared schedules."""

    async def go() -> None:
        try:
            await store_of(manager.backends).put_schedules(manager.registry.schedules())
        finally:
            await manager.close()

    asyncio.run(go())


def one_pass(manager: TaskManager) -> datetime:
    """Store the declared schedules, then run one scheduler pass exactly one second after
    they were stored: ``beat`` fires one tick, returned."""

    async def go() -> datetime:
        try:
            runner_ = Scheduler.of(manager)
            store = runner_.store
            await store.put_schedules(runner_.definitions)
            since = {e.id: e for e in await store.get_schedules()}["beat"].state.since_ms
            now = datetime.fromtimestamp(since / 1000 + 1, UTC)
            done = await runner_.run_pass(now)
            assert [o.value for o in done.outcomes["beat"]] == ["fired"]
            return datetime.fromtimestamp(since // 1000 + 1, UTC)
        finally:
            await manager.close()

    return asyncio.run(go())


# -- listing -------------------------------------------------------------------------


def test_declared_schedules_show_with_their_next_three_times(sched_app: ModuleType) -> None:
    before = datetime.now(UTC)
    out = ok("schedules", APP)
    task, expression, tz, upcoming, last_tick, last_task, state, *counts = row(out, "beat")
    assert (task, expression, tz) == ("sched_app.beat", "every 1s", "UTC")
    assert (last_tick, last_task, state, counts) == ("-", "-", "not stored yet", ["0"] * 3)
    times = [datetime.fromisoformat(t) for t in upcoming.split(", ")]
    assert len(times) == 3
    assert before < times[0] <= before + timedelta(seconds=2)
    assert [b - a for a, b in itertools.pairwise(times)] == [timedelta(seconds=1)] * 2
    assert upcoming.endswith("Z")  # UTC times say so

    task, expression, tz, upcoming, *_ = row(out, "nightly")
    assert (task, expression, tz) == ("sched_app.nightly", "30 2 * * *", "Europe/Paris")
    nightly = [datetime.fromisoformat(t) for t in upcoming.split(", ")]
    assert [(t.hour, t.minute) for t in nightly] == [(2, 30)] * 3  # in its own zone
    paris = [t.astimezone(ZoneInfo("Europe/Paris")) for t in nightly]
    assert [t.utcoffset() for t in nightly] == [t.utcoffset() for t in paris]
    assert [(b.date() - a.date()).days for a, b in itertools.pairwise(paris)] == [1, 1]


def test_no_schedules_at_all_says_so() -> None:
    out = ok("schedules", "cli_app")
    assert out.strip() == "no schedules: none stored, none declared in cli_app"
    assert json.loads(ok("schedules", "cli_app", "--json")) == []


def test_after_a_pass_the_last_tick_and_its_task_show(sched_app: ModuleType) -> None:
    tick = one_pass(sched_app.manager)
    stored = entries(sched_app.manager)["beat"].state
    assert stored.last_task_id is not None
    assert stored.last_tick_ms == to_ms(tick)

    beat = row(ok("schedules", APP), "beat")
    assert beat[4] == tick.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert beat[5] == stored.last_task_id
    assert beat[6:] == ["active", "1", "0", "0"]
    assert row(ok("schedules", APP), "nightly")[4:7] == ["-", "-", "active"]

    inspected = json.loads(ok("inspect", stored.last_task_id, "--app", APP, "--json"))
    assert inspected["name"] == "sched_app.beat"
    assert inspected["headers"][SCHEDULE_HEADER] == "beat"
    assert inspected["headers"][TICK_HEADER] == tick.isoformat().replace("+00:00", "Z")


def test_json_has_every_field(sched_app: ModuleType) -> None:
    before = listing()
    assert list(before) == ["beat", "nightly"]
    assert before["beat"]["stored"] is False
    tick = one_pass(sched_app.manager)
    after = listing()
    beat, nightly = after["beat"], after["nightly"]
    assert set(beat) == {
        "id", "task", "expression", "cron", "every_seconds", "tz", "overlap", "catchup",
        "stored", "paused", "next_times", "last_tick", "last_task_id", "buffered_tick",
        "fired", "skipped", "missed",
    }  # fmt: skip
    assert beat["task"] == "sched_app.beat"
    assert (beat["expression"], beat["cron"], beat["every_seconds"]) == ("every 1s", None, 1.0)
    assert (beat["overlap"], beat["catchup"]) == ("allow", "latest")
    assert (beat["stored"], beat["paused"]) == (True, False)
    assert datetime.fromisoformat(beat["last_tick"]) == tick
    assert beat["last_task_id"] == entries(sched_app.manager)["beat"].state.last_task_id
    assert (beat["fired"], beat["skipped"], beat["missed"], beat["buffered_tick"]) == (
        1, 0, 0, None,
    )  # fmt: skip
    assert len(beat["next_times"]) == 3
    assert (nightly["cron"], nightly["every_seconds"], nightly["tz"]) == (
        "30 2 * * *", None, "Europe/Paris",
    )  # fmt: skip
    assert all("T02:30:00+0" in t for t in nightly["next_times"])
    assert nightly["last_tick"] is None
    assert nightly["last_task_id"] is None


# -- pause, resume, remove -----------------------------------------------------------


def test_pause_resume_and_remove_change_the_stored_schedule(sched_app: ModuleType) -> None:
    manager = sched_app.manager
    store_declared(manager)

    assert ok("schedules", APP, "--pause", "beat").strip() == "paused schedule 'beat'"
    assert entries(manager)["beat"].state.paused is True
    assert entries(manager)["nightly"].state.paused is False
    assert row(ok("schedules", APP), "beat")[6] == "paused"
    assert listing()["beat"]["paused"] is True

    assert ok("schedules", APP, "--resume", "beat").strip() == "resumed schedule 'beat'"
    assert entries(manager)["beat"].state.paused is False
    assert listing()["beat"]["paused"] is False

    out = ok("schedules", APP, "--remove", "nightly")
    assert out.strip() == (
        "removed schedule 'nightly' (it is declared in the app: the next scheduler to start "
        "stores it again)"
    )
    assert set(entries(manager)) == {"beat"}
    assert listing()["nightly"]["stored"] is False  # still declared, no longer stored


def test_a_schedule_added_at_run_time_is_removed_for_good(sched_app: ModuleType) -> None:
    manager = sched_app.manager

    async def add() -> None:
        try:
            await manager.add_schedule("extra", sched_app.beat.s(), every=timedelta(minutes=5))
        finally:
            await manager.close()

    asyncio.run(add())
    extra = listing()["extra"]
    assert (extra["task"], extra["expression"], extra["stored"]) == (
        "sched_app.beat", "every 5m", True,
    )  # fmt: skip
    assert ok("schedules", APP, "--remove", "extra").strip() == "removed schedule 'extra'"
    assert "extra" not in listing()
    assert "extra" not in entries(manager)


@pytest.mark.parametrize("action", ["--pause", "--resume", "--remove"])
def test_unknown_id_exits_1_naming_it(sched_app: ModuleType, action: str) -> None:
    store_declared(sched_app.manager)
    line = fails("schedules", APP, action, "no-such")
    assert line == "error: no schedule 'no-such' (stored: 'beat', 'nightly')"
    assert set(entries(sched_app.manager)) == {"beat", "nightly"}


def test_a_declared_schedule_not_yet_stored_says_how_to_store_it(sched_app: ModuleType) -> None:
    line = fails("schedules", APP, "--pause", "beat")
    assert line.startswith("error: no schedule 'beat' (stored: none); 'beat' is declared")
    assert "start a worker or 'bgcoor scheduler'" in line


def test_one_action_at_a_time(sched_app: ModuleType) -> None:
    line = fails("schedules", APP, "--pause", "beat", "--remove", "beat", code=2)
    assert line == "error: give one of --pause, --resume, --remove at a time"
    line = fails("schedules", APP, "--pause", "beat", "--json", code=2)
    assert "--json" in line


def test_unreachable_server_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("bgcoor_redis")
    monkeypatch.setenv("BGCOOR_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("BGCOOR_STORAGE_URL", "redis://127.0.0.1:1/0")
    started = time.monotonic()
    for args in (["cli_app"], ["cli_app", "--pause", "x"]):
        line = fails("schedules", *args)
        assert line == (
            "error: BGCOOR_BROKER_URL: cannot connect to 127.0.0.1:1 (ConnectionRefusedError)"
        )
    assert time.monotonic() - started < 8


# -- worker --no-scheduler -----------------------------------------------------------


def run_worker(tmp_path: Path, *flags: str) -> tuple[str, str]:
    """A worker of the app for about 2.5 s, stopped by SIGTERM (exit 0): stdout, stderr."""
    worker = Subprocess("worker", APP, *flags, cwd=tmp_path)
    worker.wait_ready()
    time.sleep(2.5)
    worker.proc.send_signal(signal.SIGTERM)
    code, out, err = worker.finish()
    assert code == 0, err
    return out, err


def banner(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("scheduler "))


def test_worker_with_no_scheduler_fires_nothing(sched_app: ModuleType, tmp_path: Path) -> None:
    out, err = run_worker(tmp_path, "--no-scheduler")
    assert banner(out).split() == ["scheduler", "off"]
    assert "worker stopped after 0 task(s)" in out
    assert "scheduler started" not in err
    assert entries(sched_app.manager) == {}  # nothing stored either
    assert row(ok("status", "--app", APP), "total") == ["0"]


def test_worker_fires_its_schedules_by_default(sched_app: ModuleType, tmp_path: Path) -> None:
    out, _ = run_worker(tmp_path)
    assert banner(out).split() == ["scheduler", "on", "(2", "declared)"]
    beat = listing()["beat"]
    assert beat["fired"] >= 1
    assert beat["last_task_id"] is not None
    counts = json.loads(ok("status", "--app", APP, "--json"))["tasks"]
    assert counts["succeeded"] >= 1
    # a tick fired just before the SIGTERM may still wait for the next worker
    assert counts["succeeded"] + counts["pending"] == beat["fired"]
    assert f"worker stopped after {counts['succeeded']} task(s)" in out


def test_bgcoor_scheduler_false_turns_the_banner_row_off(
    sched_app: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGCOOR_SCHEDULER", "false")
    code, out, err = Subprocess("worker", APP, "--burst", cwd=tmp_path).finish()
    assert code == 0, err
    assert banner(out).split() == ["scheduler", "off"]


def test_reload_passes_no_scheduler_on(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(worker_cli, "run_reloading", seen.append)
    for flags in (["--no-scheduler"], []):
        result = runner.invoke(cli_app, ["worker", "cli_app", "--reload", *flags])
        assert result.exit_code == 0, result.output
    assert seen == [
        ["worker", "cli_app", "--log-level", "info", "--no-scheduler"],
        ["worker", "cli_app", "--log-level", "info"],
    ]
