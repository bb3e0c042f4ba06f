"""The ``bgcoor`` command line, driven as users drive it.

Most commands run through Typer's ``CliRunner`` (the real ``app``, in this process); the
worker and some error paths run as real subprocesses (``python -m bgcoor_core.cli``).
State shared between a test and the command line in one process lives in ``sharedmem://``
(a plugin of ``tests/cli_app.py``); state shared across processes lives in a SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from bgcoor_core import TaskManager, TaskStatus, __version__
from bgcoor_core.cli import app

TESTS_DIR = Path(__file__).resolve().parent
TASKS = "add, echo, explode, greet, sleepy"
runner = CliRunner()


# -- harness ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Memory backends, wide plain output, the tests directory as the current directory,
    and no module or sys.path entry left behind by loading an APP."""
    for key in list(os.environ):
        if key.upper().startswith("BGCOOR_") or key in ("FORCE_COLOR", "TTY_COMPATIBLE"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("BGCOOR_BROKER_URL", "memory://")
    monkeypatch.setenv("BGCOOR_STORAGE_URL", "memory://")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.chdir(TESTS_DIR)
    monkeypatch.setattr(sys, "path", list(sys.path))
    modules = set(sys.modules)
    sys.modules.pop("cli_app", None)  # each test imports the app under its own settings
    yield
    for name in set(sys.modules) - modules:  # forget the app modules loaded, only them
        origin = getattr(sys.modules[name], "__file__", None) or ""
        if origin.startswith((str(TESTS_DIR), tempfile.gettempdir())):
            del sys.modules[name]


def cli(*args: str, input: str | None = None) -> Result:
    result = runner.invoke(app, list(args), input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a bug in the CLI, not an error it reports
    return result


def ok(*args: str) -> str:
    result = cli(*args)
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    return result.stdout


def fails(*args: str, code: int = 1, input: str | None = None) -> str:
    """Run a command that must fail: exit ``code``, exactly one ``error:`` line, no traceback."""
    result = cli(*args, input=input)
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def row(output: str, label: str) -> list[str]:
    """The cells after ``label`` in the table row that starts with it."""
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if cells and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in:\n{output}")


def field(output: str, name: str) -> str:
    """The value of ``name`` in ``inspect``'s two-column listing."""
    match = re.search(rf"^{name} +(.+?)\s*$", output, re.MULTILINE)
    assert match, f"no field {name!r} in:\n{output}"
    return match.group(1)


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``cli_app`` on ``sharedmem://``: what the test puts in, ``--app cli_app`` sees."""
    monkeypatch.setenv("BGCOOR_BROKER_URL", "sharedmem://")
    monkeypatch.setenv("BGCOOR_STORAGE_URL", "sharedmem://")
    return importlib.import_module("cli_app")


def settle(manager: TaskManager, *calls: tuple[Any, ...], drain: bool = True) -> list[str]:
    """Enqueue ``(name, *args)`` calls, run them to completion unless ``drain`` is off."""

    async def go() -> list[str]:
        ids = [(await manager.enqueue(name, *args)).id for name, *args in calls]
        if drain:
            await manager.drain()
        return ids

    return asyncio.run(go())


def record(manager: TaskManager, task_id: str) -> Any:
    return asyncio.run(manager.get(task_id))


def stats(manager: TaskManager, queue: str = "default") -> Any:
    return asyncio.run(manager.broker.stats(queue))


@contextlib.contextmanager
def worker_thread(module: ModuleType) -> Iterator[None]:
    """A worker for ``cli_app``'s tasks on ``sharedmem://``, in a thread of this process."""
    stop, started = threading.Event(), threading.Event()

    async def serve() -> None:
        manager = TaskManager(
            registry=module.manager.registry, plugins=[module.SHARED], poll_seconds=0.05
        )
        async with manager.worker(concurrency=2, queues=["default", "mail"]):
            started.set()
            await asyncio.to_thread(stop.wait)
        await manager.close()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(5), "worker thread did not start"
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def sqlite_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("bgcoor_core.backends.sqlite")
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("BGCOOR_BROKER_URL", url)
    monkeypatch.setenv("BGCOOR_STORAGE_URL", url)
    monkeypatch.setenv("BGCOOR_POLL_SECONDS", "0.05")


class Subprocess:
    """``python -m bgcoor_core.cli ARGS`` in the tests directory, both streams collected."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bgcoor_core.cli", *args],
            cwd=TESTS_DIR,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.ready = threading.Event()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)
            if line.startswith("ready:"):
                self.ready.set()

    def wait_ready(self) -> None:
        if not self.ready.wait(15):
            self.proc.kill()
            raise AssertionError(f"worker never got ready: {self.finish()}")

    def finish(self, timeout: float = 15) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code, "".join(self.out), "".join(self.err)


# -- global options and usage ----------------------------------------------------------


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


# -- enqueue ---------------------------------------------------------------------------


def test_enqueue_prints_the_id_of_the_stored_task(shared: ModuleType) -> None:
    task_id = ok("enqueue", "cli_app", "add", "--args", "[2, 3]").strip()
    task = record(shared.manager, task_id)
    assert (task.name, task.status, task.queue) == ("add", TaskStatus.PENDING, "default")
    assert task.payload == {"args": [2, 3], "kwargs": {}}
    assert task.max_retries == 3  # the settings' default, as TaskFunction.build does
    assert stats(shared.manager).ready == 1


def test_enqueue_overrides_queue_priority_and_delay(shared: ModuleType) -> None:
    before = datetime.now(UTC)
    task_id = ok(
        "enqueue", "cli_app:manager", "greet", "--kwargs", '{"name": "ada"}',
        "--queue", "urgent", "--priority", "5", "--delay", "60",
    ).strip()  # fmt: skip
    task = record(shared.manager, task_id)
    assert (task.queue, task.priority, task.status) == ("urgent", 5, TaskStatus.SCHEDULED)
    assert task.payload == {"args": ["ada"], "kwargs": {}}  # bound to the signature
    assert 55 <= (task.eta - before).total_seconds() <= 65
    assert stats(shared.manager, "urgent").scheduled == 1
    assert stats(shared.manager, "mail").ready == 0  # not the task's own queue


def test_enqueue_a_handler_object_takes_a_raw_payload(shared: ModuleType) -> None:
    task_id = ok("enqueue", "cli_app", "echo", "--payload", '{"rows": [1, 2]}').strip()
    assert record(shared.manager, task_id).payload == {"rows": [1, 2]}
    line = fails("enqueue", "cli_app", "echo", "--args", "[1]", code=2)
    assert "task 'echo' is a handler object that takes a raw payload: pass --payload" in line


def test_enqueue_wait_prints_the_result_as_json(shared: ModuleType) -> None:
    with worker_thread(shared):
        out = ok("enqueue", "cli_app", "greet", "--kwargs", '{"name": "ada"}', "--wait")
    task_id, result = out.strip().splitlines()
    assert json.loads(result) == {"greeting": "hello, ada!"}
    assert record(shared.manager, task_id).status is TaskStatus.SUCCEEDED


def test_enqueue_wait_reports_a_dead_task_in_one_line(shared: ModuleType) -> None:
    with worker_thread(shared):
        result = cli("enqueue", "cli_app", "explode", "--args", '["kaboom"]', "--wait")
    assert result.exit_code == 1
    task_id = result.stdout.strip()
    assert result.stderr.strip() == (
        f"error: task {task_id} ended dead: RuntimeError: kaboom "
        f"(details: bgcoor inspect {task_id})"
    )


def test_enqueue_wait_times_out_with_a_hint() -> None:
    line = fails("enqueue", "cli_app", "add", "--args", "[1, 2]", "--wait", "--timeout", "0.1")
    assert "did not finish within 0.1s; is a worker serving queue 'default'?" in line


@pytest.mark.parametrize(
    ("options", "code", "expected"),
    [
        (["--args", "[1, 2"], 2, "--args is not valid JSON (Expecting ',' delimiter"),
        (["--args", '{"x": 1}'], 2, "--args must be a JSON list, got an object"),
        (["--kwargs", "[1]"], 2, "--kwargs must be a JSON object, got a list"),
        (["--kwargs", "nope"], 2, "--kwargs is not valid JSON"),
        (["--payload", "{}"], 2, "task 'add' is a function: pass --args/--kwargs"),
        (["--args", "[1, 2]", "--timeout", "1"], 2, "--timeout only applies with --wait"),
        (["--args", '["one", 2]'], 1, "task 'add': argument 'x': Input should be"),
        (["--args", "[1]"], 1, "task 'add': missing a required argument: 'y'"),
        (["--args", "[1, 2]", "--priority", "x"], 2, "Invalid value for '--priority' / '-p'"),
        # Out of range: a usage error naming the range, never "unexpected OverflowError".
        (["--args", "[1, 2]", "--delay", "inf"], 2, "inf is out of range: use 0 to 315360000"),
        (["--args", "[1, 2]", "--delay", "nan"], 2, "nan is out of range: use 0 to 315360000"),
        (["--args", "[1, 2]", "--delay", "1e12"], 2, "1e+12 is out of range: use 0 to"),
        (["--args", "[1, 2]", "--delay", "-1"], 2, "-1 is out of range: use 0 to"),
        (["--args", "[1, 2]", "--priority", "5000"], 2, "5000 is out of range: use -1000 to 1000"),
        (["--args", "[1, 2]", "--wait", "--timeout", "inf"], 2, "inf is out of range: use 0 to"),
    ],
)
def test_enqueue_rejects_bad_arguments_before_enqueueing(
    shared: ModuleType, options: list[str], code: int, expected: str
) -> None:
    assert expected in fails("enqueue", "cli_app", "add", *options, code=code)
    counts = asyncio.run(shared.manager.storage.counts())
    assert sum(counts.values()) == 0
    assert stats(shared.manager).ready == 0


def test_enqueue_unknown_task_lists_the_registered_ones() -> None:
    line = fails("enqueue", "cli_app", "nope")
    assert line == f"error: unknown task 'nope'; registered tasks: {TASKS}"


# -- loading APP -----------------------------------------------------------------------


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


def write_module(directory: Path, name: str, source: str) -> str:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


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


# -- status ----------------------------------------------------------------------------


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


# -- inspect ---------------------------------------------------------------------------


def test_inspect_a_succeeded_task(shared: ModuleType) -> None:
    (task_id,) = settle(shared.manager, ("add", 2, 3))
    out = ok("inspect", task_id, "--app", "cli_app")
    assert field(out, "id") == task_id
    assert field(out, "name") == "add"
    assert field(out, "status") == "succeeded"
    assert field(out, "attempts") == "1 (max retries 3)"
    assert field(out, "result") == "5"
    assert field(out, "payload") == '{"args": [2, 3], "kwargs": {}}'
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", field(out, "finished"))


def test_inspect_a_dead_task_shows_error_and_traceback(shared: ModuleType) -> None:
    (task_id,) = settle(shared.manager, ("explode", "kaboom"))
    out = ok("inspect", task_id, "--app", "cli_app")
    assert field(out, "status") == "dead"
    assert field(out, "error") == "RuntimeError: kaboom"
    assert "Traceback (most recent call last):" in out
    assert "raise RuntimeError(message)" in out  # the task's own frame, from cli_app.py


def test_inspect_json_is_the_whole_record(shared: ModuleType) -> None:
    (task_id,) = settle(shared.manager, ("add", 2, 3))
    data = json.loads(ok("inspect", task_id, "--json", "--app", "cli_app"))
    assert (data["id"], data["status"], data["result"], data["attempts"]) == (
        task_id,
        "succeeded",
        5,
        1,
    )


def test_inspect_unknown_id() -> None:
    assert fails("inspect", "nope") == "error: no task with id 'nope' (unknown or expired)"


def test_debug_shows_the_traceback() -> None:
    result = cli("--debug", "inspect", "nope")
    assert result.exit_code == 1
    assert "Traceback (most recent call last):" in result.stderr
    assert "TaskNotFoundError" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: no task with id 'nope' (unknown or expired)"
    )


# -- dlq -------------------------------------------------------------------------------


def test_dlq_list(shared: ModuleType) -> None:
    ids = settle(shared.manager, ("explode", "one"), ("explode", "two"), ("add", 1, 1))
    out = ok("dlq", "list", "--app", "cli_app")
    for task_id in ids[:2]:
        assert row(out, task_id)[:2] == ["explode", "1"]  # task, attempts
        assert row(out, task_id)[-1] == "max_retries exceeded (0)"
    assert ids[2] not in out
    assert "the dead-letter queue of 'mail' is empty" in ok(
        "dlq", "list", "--queue", "mail", "--app", "cli_app"
    )


def test_dlq_requeue_ids_gives_one_more_attempt(shared: ModuleType) -> None:
    manager = shared.manager
    first, second = settle(manager, ("explode",), ("explode",))
    out = ok("dlq", "requeue", first, "--app", "cli_app")
    assert out.splitlines() == [first, "requeued 1 task(s) into 'default'"]
    assert record(manager, first).status is TaskStatus.PENDING  # storage reset too
    assert record(manager, second).status is TaskStatus.DEAD
    assert (stats(manager).ready, stats(manager).dead) == (1, 1)
    settle(manager)  # run it: it fails again and is dead once more, after a second attempt
    assert (record(manager, first).status, record(manager, first).attempts) == (TaskStatus.DEAD, 2)


def test_dlq_requeue_all(shared: ModuleType) -> None:
    ids = settle(shared.manager, ("explode",), ("explode",), ("explode",))
    out = ok("dlq", "requeue", "--all", "--app", "cli_app")
    assert sorted(out.splitlines()[:-1]) == sorted(ids)
    assert out.splitlines()[-1] == "requeued 3 task(s) into 'default'"
    assert (stats(shared.manager).ready, stats(shared.manager).dead) == (3, 0)


def test_dlq_requeue_reports_ids_not_in_the_queue(shared: ModuleType) -> None:
    (dead,) = settle(shared.manager, ("explode",))
    result = cli("dlq", "requeue", dead, "missing-id", "--app", "cli_app")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [dead, "requeued 1 task(s) into 'default'"]
    assert result.stderr.strip() == "error: not in the dead-letter queue of 'default': missing-id"


def test_dlq_purge_asks_unless_yes(shared: ModuleType) -> None:
    settle(shared.manager, ("explode",), ("explode",))
    line = fails("dlq", "purge", "--app", "cli_app", input="n\n")
    assert line == "error: nothing purged (not confirmed; pass --yes to skip the question)"
    assert stats(shared.manager).dead == 2
    result = cli("dlq", "purge", "--app", "cli_app", input="y\n")
    assert result.exit_code == 0
    assert "Delete 2 dead letter(s) from 'default' for good?" in result.stdout
    assert "purged 2 dead letter(s) from 'default'" in result.stdout
    assert stats(shared.manager).dead == 0
    settle(shared.manager, ("explode",))
    assert ok("dlq", "purge", "--yes", "--app", "cli_app").strip() == (
        "purged 1 dead letter(s) from 'default'"
    )


# -- plugins ---------------------------------------------------------------------------


def test_plugins_lists_what_each_provides() -> None:
    out = ok("plugins")
    assert row(out, "memory")[:2] == ["bgcoor", __version__]
    assert "broker memory://" in row(out, "memory")[2]
    assert "serializer application/json" in out
    assert "no plugin failed to load" in out


def test_plugins_lists_a_broken_plugin_with_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[bgcoor]\nbroken = not_installed_plugin_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # as if `pip install broken-plugin`
    out = ok("plugins")
    assert row(out, "broken") == [
        "broken-plugin",
        "ModuleNotFoundError: No module named 'not_installed_plugin_xyz'",
    ]
    assert row(out, "memory")[0] == "bgcoor"  # the others still load
    # every other command refuses to run with it, in one line naming it
    assert fails("status").startswith(
        "error: plugin 'broken' from distribution 'broken-plugin' failed to load"
    )


def test_plugins_with_app_shows_its_plugins_and_tasks(shared: ModuleType) -> None:
    out = ok("plugins", "--app", "cli_app")
    assert "broker sharedmem://" in row(out, "cli-test-sharedmem")[-1]
    assert row(out, "add") == ["default", "0", "default", "-", "def add(x: int, y: int) -> int"]
    assert row(out, "greet") == [
        "mail",
        "0",
        "default",
        "-",
        "async def greet(name: str, punctuation: str = '!') -> dict[str, typing.Any]",
    ]
    assert row(out, "echo")[-1] == "Echo.run(payload)"  # a handler object
    assert row(out, "explode")[2] == "0"  # max retries


# -- demo ------------------------------------------------------------------------------


def summary(out: str) -> dict[str, str]:
    keys = ["tasks", "succeeded", "retried", "retries", "dead-lettered", "tasks per second"]
    return {key: row(out, key)[0] for key in keys}


def test_demo_runs_to_completion_with_retries_and_dead_letters() -> None:
    result = cli("demo", "--tasks", "40", "--concurrency", "8")
    assert result.exit_code == 0, result.output
    numbers = summary(result.stdout)
    # 40 tasks: 2 always fail (3 attempts each), 6 fail once, the rest succeed at once
    assert {k: numbers[k] for k in list(numbers)[:5]} == {
        "tasks": "40",
        "succeeded": "38",
        "retried": "8",
        "retries": "10",
        "dead-lettered": "2",
    }
    assert float(numbers["tasks per second"]) > 0
    bar = [line for line in result.stderr.splitlines() if line.startswith("running")]
    assert len(bar) == 1  # the final state of the progress bar (stderr is not a terminal)
    assert "40/40" in bar[0]


def test_demo_reruns_cleanly_on_a_persistent_backend(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sqlite_env(monkeypatch, tmp_path)
    for _ in range(2):
        out = ok("demo", "--tasks", "20", "--concurrency", "8")
        assert summary(out)["succeeded"] == "19"
        assert summary(out)["dead-lettered"] == "1"
    assert "dlq list --queue demo" in out
    dead = ok("dlq", "list", "--queue", "demo")
    assert dead.count("demo.broken") == 1  # the first run's dead letter was purged


# -- worker (real processes) -----------------------------------------------------------


def test_worker_banner_and_graceful_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGCOOR_BROKER_URL", "memory://user:hunter2@localhost")
    monkeypatch.setenv("BGCOOR_STORAGE_URL", "memory://?password=hunter3&x=1")
    worker = Subprocess("worker", "cli_app", "--concurrency", "3", "--queues", "default,mail")
    worker.wait_ready()
    worker.proc.send_signal(signal.SIGTERM)
    code, out, err = worker.finish()
    assert code == 0, err
    assert f"bg-coor {__version__} worker" in out
    assert re.search(r"^broker +memory://user:\*\*\*@localhost\s*$", out, re.MULTILINE)
    assert re.search(r"^storage +memory://\?password=\*\*\*&x=1\s*$", out, re.MULTILINE)
    assert re.search(r"^queues +default, mail\s*$", out, re.MULTILINE)
    assert re.search(r"^concurrency +3\s*$", out, re.MULTILINE)
    assert re.search(rf"^tasks \(5\) +{TASKS}\s*$", out, re.MULTILINE)
    assert re.search(r"^plugins +.*memory \(bgcoor [\d.]+\)", out, re.MULTILINE)
    assert "worker stopped after 0 task(s)" in out
    assert "hunter2" not in out + err
    assert "Traceback" not in err


def test_worker_with_an_unknown_app_fails_in_one_line() -> None:
    code, out, err = Subprocess("worker", "no_such_app_module").finish()
    assert code == 1
    assert err.splitlines() == [
        f"error: cannot import APP module 'no_such_app_module': no module named "
        f"'no_such_app_module' (searched the current directory {TESTS_DIR} and sys.path)"
    ]
    assert out == ""


def test_worker_runs_what_another_process_enqueues(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sqlite_env(monkeypatch, tmp_path)
    worker = Subprocess("worker", "cli_app:manager", "--queues", "default,mail")
    worker.wait_ready()
    try:
        out = ok("enqueue", "cli_app", "add", "--args", "[2, 3]", "--wait", "--timeout", "10")
        task_id, result = out.split()
        assert result == "5"
        assert row(ok("status"), "succeeded") == ["1"]
        assert field(ok("inspect", task_id), "status") == "succeeded"
    finally:
        worker.proc.send_signal(signal.SIGTERM)
        code, out, err = worker.finish()
    assert code == 0, err
    assert "worker stopped after 1 task(s)" in out


def test_worker_second_sigint_forces_and_hands_the_task_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sqlite_env(monkeypatch, tmp_path)
    worker = Subprocess("worker", "cli_app")
    worker.wait_ready()
    task_id = ok("enqueue", "cli_app", "sleepy", "--args", "[30]").strip()
    deadline = time.monotonic() + 10
    while field(ok("inspect", task_id), "status") != "running":
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)
    worker.proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert worker.proc.poll() is None  # graceful: waits for the running task
    worker.proc.send_signal(signal.SIGINT)
    code, _, err = worker.finish(timeout=10)
    assert code == 0, err
    assert row(ok("status"), "default")[0] == "1"  # handed back: ready for the next worker


def test_migrate_reports_applied_then_up_to_date(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    env = {"BGCOOR_BROKER_URL": url, "BGCOOR_STORAGE_URL": url}
    first = runner.invoke(app, ["migrate"], env=env)
    assert first.exit_code == 0, first.output
    assert "schema version 1" in first.output
    second = runner.invoke(app, ["migrate"], env=env)
    assert second.exit_code == 0, second.output
    assert "schema is up to date" in second.output


# -- secrets and terminal safety ---------------------------------------------------------

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
