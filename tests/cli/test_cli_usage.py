"""Global options, usage errors and loading APP."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_support import (
    cli,
    fails,
    ok,
    write_module,
)

from bgcoor_core import __version__

# -- global options and usage ------------------------------------------------------


def test_version_and_help_list_every_command() -> None:
    assert ok("--version").strip() == f"bgcoor {__version__}"
    help_text = ok("--help")
    for command in ("worker", "enqueue", "status", "inspect", "dlq", "plugins", "demo"):
        assert re.search(rf"^\W*{command}\s", help_text, re.MULTILINE), command


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["frobnicate"], "No such command 'frobnicate'"),
        (["enqueue", "cli_app"], "Missing argument 'TASK'"),
        (["worker", "cli_app", "--concurrency", "0"], "'--concurrency'"),
        (["worker", "cli_app", "--queues", "ok,bad name"], "invalid queue name 'bad name'"),
        (["dlq", "list", "--queue", "no/slash"], "invalid queue name 'no/slash'"),
        (["dlq", "requeue"], "give the ids of the dead letters to requeue, or --all"),
        (["dlq", "requeue", "some-id", "--all"], "give the ids of the dead letters"),
        (["enqueue", ":manager", "add"], "invalid APP ':manager'"),
        (["inspect", "x", "--debug"], "--debug goes before the command: bgcoor --debug"),
        (["inspect", ""], "invalid task id '': use 1-200 printable characters"),
        (["inspect", "a b"], "invalid task id 'a b'"),
        (["inspect", "a\x1bb"], "invalid task id 'a\\x1bb'"),
        (["dlq", "requeue", "ok", ""], "invalid task id ''"),
        (["dlq", "list", "--limit", "0"], "0 is out of range: use 1 to 1000000"),
        (["dlq", "list", "--limit", "10000000000000"], "is out of range: use 1 to 1000000"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args: list[str], expected: str) -> None:
    assert expected in fails(*args, code=2)


# -- loading APP -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("no_such_module_xyz", "cannot import APP module 'no_such_module_xyz': no module named"),
        ("cli_app:nope", "module 'cli_app' has no attribute 'nope'; TaskManager objects in it: "
         "cli_app:manager"),
        ("cli_app:not_a_manager", "APP cli_app:not_a_manager is a str, not a TaskManager"),
        ("cli_app:add", "APP cli_app:add is a TaskFunction, not a TaskManager"),
    ],
)  # fmt: skip
def test_bad_app_is_one_line(spec: str, expected: str) -> None:
    assert expected in fails("enqueue", spec, "add", "--args", "[1, 2]")
    assert expected in fails("status", "--app", spec)


def test_app_modules_that_fail_or_lack_a_manager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the loader imports from the current directory
    crash = write_module(tmp_path, "crash_app", "raise RuntimeError('no config file')\n")
    deps = write_module(tmp_path, "deps_app", "import not_installed_dep_xyz\n")
    empty = write_module(tmp_path, "empty_app", "VALUE = 1\n")
    assert fails("status", "--app", crash) == (
        "error: importing APP module 'crash_app' failed: RuntimeError: no config file"
    )
    assert fails("status", "--app", deps) == (
        "error: importing APP module 'deps_app' failed: ModuleNotFoundError: "
        "No module named 'not_installed_dep_xyz'"
    )
    assert "module 'empty_app' has no TaskManager (looked for 'manager' or 'app')" in fails(
        "worker", empty
    )


def test_app_as_module_finds_its_only_manager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    name = write_module(
        tmp_path,
        "custom_app",
        """
        from bgcoor_core import TaskManager

        tm = TaskManager()

        @tm.task(name="ping")
        def ping() -> str:
            return "pong"
        """,
    )
    task_id = ok("enqueue", name, "ping").strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", task_id)


def test_unexpected_errors_are_one_line_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    name = write_module(
        tmp_path,
        "faulty_app",
        """
        from bgcoor_core import TaskManager, hookimpl

        class Faulty:
            @hookimpl
            def bgcoor_register_brokers(self, brokers):
                brokers.add("faulty", self.connect)

            def connect(self, url, context):
                raise ValueError("connection refused by the faulty broker")

        manager = TaskManager(plugins=[Faulty()], broker_url="faulty://")
        """,
    )
    assert fails("status", "--app", name) == (
        "error: unexpected ValueError: connection refused by the faulty broker "
        "(run with --debug for the traceback)"
    )
    result = cli("--debug", "status", "--app", name)
    assert result.exit_code == 1
    assert 'raise ValueError("connection refused by the faulty broker")' in result.stderr
