"""Secrets and terminal safety: redacted URLs, escaped control characters."""

from __future__ import annotations

import asyncio
import json
from types import ModuleType

import pytest
from cli_support import (
    cli,
    fails,
    field,
    ok,
    row,
    settle,
    worker_thread,
)

# -- secrets and terminal safety ---------------------------------------------------

HOSTILE = "\x1b[31mred\x1b[0m\rover\x9b2J\u202eevil"
ESCAPED = "\\x1b[31mred\\x1b[0m\\rover\\x9b2J\\u202eevil"
RAW_CONTROLS = ("\x1b", "\r", "\x9b", "\u202e")


def assert_terminal_safe(text: str) -> None:
    assert not any(ch in text for ch in RAW_CONTROLS), repr(text)


def test_status_redacts_passwords_in_the_url_and_its_query(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BGCOOR_BROKER_URL", "memory://:hunter2@h/0?password=hunter3&prefix=p")
    monkeypatch.setenv("BGCOOR_STORAGE_URL", "memory://h/?sslpassword=hunter4&Token=hunter5")
    out = ok("status")
    assert "broker memory://:***@h/0?password=***&prefix=p" in out
    assert "storage memory://h/?sslpassword=***&Token=***" in out
    assert "hunter" not in out


def test_inspect_escapes_control_characters_from_the_task(shared: ModuleType) -> None:
    (task_id,) = settle(shared.manager, ("explode", HOSTILE))
    out = ok("inspect", task_id, "--app", "cli_app")
    assert_terminal_safe(out)
    assert field(out, "error") == f"RuntimeError: {ESCAPED}"
    assert "\\u001b[31mred" in field(out, "payload")  # JSON's own escape
    assert f"RuntimeError: {ESCAPED}" in out.split("traceback", 1)[1]  # the traceback too
    as_json = ok("inspect", task_id, "--json", "--app", "cli_app")
    assert_terminal_safe(as_json)
    assert json.loads(as_json)["error"] == f"RuntimeError: {HOSTILE}"  # still the same value


def test_dlq_list_escapes_control_characters_in_reasons(shared: ModuleType) -> None:
    manager = shared.manager

    async def dead_letter_with_a_hostile_reason() -> str:
        handle = await manager.enqueue("add", 1, 2)
        [reservation] = await manager.broker.reserve(["default"], lease=5.0)
        await manager.broker.dead_letter(reservation, f"reason {HOSTILE}")
        return handle.id

    task_id = asyncio.run(dead_letter_with_a_hostile_reason())
    out = ok("dlq", "list", "--app", "cli_app")
    assert_terminal_safe(out)
    assert row(out, task_id)[-1] == f"reason {ESCAPED}"


def test_enqueue_wait_error_line_escapes_control_characters(shared: ModuleType) -> None:
    with worker_thread(shared):
        result = cli("enqueue", "cli_app", "explode", "--args", json.dumps([HOSTILE]), "--wait")
    assert result.exit_code == 1
    assert_terminal_safe(result.stderr)
    assert f"RuntimeError: {ESCAPED} (details: bgcoor inspect" in result.stderr
    assert result.stderr.count("\n") == 1


def test_enqueue_wait_result_escapes_control_characters_and_stays_json(
    shared: ModuleType,
) -> None:
    with worker_thread(shared):
        result = cli(
            "enqueue",
            "cli_app",
            "greet",
            "--args",
            json.dumps([HOSTILE]),
            "--queue",
            "default",
            "--wait",
        )
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert_terminal_safe(last)
    assert json.loads(last) == {"greeting": f"hello, {HOSTILE}!"}


def test_errors_escape_control_characters() -> None:
    line = fails("inspect", "x\x1b[2Jy\u202e", code=2)
    assert_terminal_safe(line)


def test_worker_log_escapes_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from bgcoor_core.cli._output import logging_to_stderr

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # as in a fresh worker process: the CLI adds its own handler
    try:
        with logging_to_stderr("info"):
            logging.getLogger("bgcoor.test").warning("task dead-lettered: %s", HOSTILE)
    finally:
        root.handlers[:] = saved
    err = capsys.readouterr().err
    assert_terminal_safe(err)
    assert ESCAPED in err.replace("\n", "")
