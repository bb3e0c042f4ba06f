"""``bgcoor status``."""

from __future__ import annotations

import asyncio
from types import ModuleType

import pytest
from cli_support import (
    Subprocess,
    fails,
    ok,
    row,
    settle,
)

# -- status ------------------------------------------------------------------------


def test_status_from_settings_without_app() -> None:
    out = ok("status")
    assert "broker memory://   storage memory://" in out
    assert row(out, "default") == ["0", "0", "0", "0"]
    assert row(out, "total") == ["0"]


def test_status_counts_queues_and_statuses(shared: ModuleType) -> None:
    manager = shared.manager
    settle(manager, ("add", 1, 2), ("explode",))  # one succeeds, one is dead-lettered
    settle(manager, ("add", 3, 4), drain=False)  # pending
    asyncio.run(shared.add.options(delay=60).enqueue(5, 6))  # scheduled
    out = ok("status", "--app", "cli_app")
    assert row(out, "default") == ["1", "1", "0", "1"]  # ready, scheduled, reserved, dead
    assert row(out, "mail") == ["0", "0", "0", "0"]  # a registered task's queue
    for status, count in [("pending", 1), ("scheduled", 1), ("succeeded", 1), ("dead", 1)]:
        assert row(out, status) == [str(count)], status
    assert row(out, "running") == ["0"]
    assert row(out, "total") == ["4"]


def test_unknown_url_scheme_is_one_line_naming_it_in_a_real_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BGCOOR_BROKER_URL", "bogus://user:hunter2@host/0")
    code, out, err = Subprocess("status").finish()
    assert code == 1
    assert err.count("\n") == 1, err
    assert err.startswith("error: no broker for URL scheme 'bogus' in 'bogus://user:***@host/0'")
    assert "hunter2" not in out + err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [["status"], ["inspect", "x"], ["dlq", "list"], ["demo"]])
def test_invalid_setting_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setenv("BGCOOR_CONCURRENCY", "lots")
    line = fails(*command)
    assert line.startswith("error: invalid settings: BGCOOR_CONCURRENCY: ")
