"""Short task names: one registered task ending in ``.NAME`` is that task; otherwise the
error suggests the full names (``TaskRegistry.resolve``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import fails, ok, write_module

from bgcoor_core import TaskRegistry, UnknownTaskError

JOBS_APP = """
from bgcoor_core import TaskManager

manager = TaskManager()

@manager.task(name="jobs.add")
def add(x: int, y: int) -> int:
    return x + y

@manager.task(name="jobs.send")
def send() -> None: ...

@manager.task(name="mail.send")
def mail_send() -> None: ...
"""


@pytest.fixture
def registry() -> TaskRegistry:
    registry = TaskRegistry()
    for name in ("jobs.add", "jobs.send", "mail.send", "report"):
        registry.register(name, lambda: None)
    return registry


def test_resolve_exact_then_the_only_dotted_ending(registry: TaskRegistry) -> None:
    assert registry.resolve("jobs.add").name == "jobs.add"
    assert registry.resolve("add").name == "jobs.add"
    assert registry.resolve("report").name == "report"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("send", "unknown task 'send'; did you mean 'jobs.send' or 'mail.send'?"),
        ("jobs.ad", "unknown task 'jobs.ad'; did you mean 'jobs.add'?"),
        ("ad", "unknown task 'ad'; did you mean 'jobs.add'?"),
        ("xyz", "unknown task 'xyz'; registered tasks: jobs.add, jobs.send, mail.send, report"),
    ],
)
def test_resolve_suggests_full_names(registry: TaskRegistry, name: str, message: str) -> None:
    with pytest.raises(UnknownTaskError) as caught:
        registry.resolve(name)
    assert str(caught.value) == message
    with pytest.raises(UnknownTaskError):
        registry.get("add")  # workers look up exact names only


def test_enqueue_accepts_a_short_name_or_suggests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_module(tmp_path, "jobs_app", JOBS_APP)
    assert ok("enqueue", "jobs_app", "add", "--args", "[1, 2]").strip()
    line = fails("enqueue", "jobs_app", "ad", "--args", "[1, 2]")
    assert line == "error: unknown task 'ad'; did you mean 'jobs.add'?"
    line = fails("enqueue", "jobs_app", "send")
    assert line == "error: unknown task 'send'; did you mean 'jobs.send' or 'mail.send'?"
