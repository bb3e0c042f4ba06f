"""Typing carries through ``@manager.task``: mypy checks snippets that use the public API.

One mypy run checks two files: ``good.py`` must be clean (its ``assert_type`` calls pin the
inferred types) and every line of ``bad.py`` marked ``# E: <code>`` must be reported with
that error code, and nothing else.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bgcoor_core

REPO = Path(bgcoor_core.__file__).resolve().parent.parent

GOOD = """
from datetime import datetime
from typing import assert_type

from bgcoor_core import TaskCall, TaskFunction, TaskHandle, TaskManager

manager = TaskManager()


@manager.task
async def add(x: int, y: int) -> int:
    return x + y


@manager.task(max_retries=3, queue="reports")
def when(days: int, *, label: str = "") -> datetime:
    return datetime.now()


@manager.task
def nothing() -> None:
    pass


adder: TaskFunction[[int, int], int] = add
call: TaskCall[[int, int], int] = add.options(delay=1)


async def main() -> None:
    handle = await add.enqueue(1, 2)
    assert_type(handle, TaskHandle[int])
    assert_type(await handle.result(), int)
    assert_type(await handle.result(timeout=5), int)
    assert_type(await add.enqueue(x=1, y=2), TaskHandle[int])
    assert_type(await add.options(priority=3).enqueue(1, y=2), TaskHandle[int])

    later = await when.enqueue(3, label="x")
    assert_type(later, TaskHandle[datetime])
    assert_type(await later.result(), datetime)
    assert_type(await when.options(delay=2.5).enqueue(1), TaskHandle[datetime])

    assert_type(await (await nothing.enqueue()).result(), None)
    assert_type(await add.enqueue_many([(1, 2)]), list[TaskHandle[int]])


def sync_code() -> None:
    handle = when.enqueue_sync(1)
    assert_type(handle, TaskHandle[datetime])
    assert_type(handle.result_sync(timeout=1), datetime)
    assert_type(add.enqueue_sync(1, 2).result_sync(), int)
"""

BAD = """
from datetime import datetime

from bgcoor_core import TaskManager

manager = TaskManager()


@manager.task
async def add(x: int, y: int) -> int:
    return x + y


@manager.task(timeout=10)
def when(days: int) -> datetime:
    return datetime.now()


async def main() -> None:
    await add.enqueue("one", 2)  # E: arg-type
    await add.enqueue(1)  # E: call-arg
    await add.enqueue(1, 2, z=3)  # E: call-arg
    await when.options(delay=1).enqueue(days="3")  # E: arg-type
    text: str = await (await add.enqueue(1, 2)).result()  # E: assignment
    stamp: int = await (await when.enqueue(1)).result()  # E: assignment


def sync_code() -> None:
    when.enqueue_sync(1, 2)  # E: call-arg
    number: str = add.enqueue_sync(1, 2).result_sync()  # E: assignment
"""

ERROR = re.compile(r"^(?P<file>[\w.]+):(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$")


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("typing")
    (tmp / "good.py").write_text(textwrap.dedent(GOOD))
    (tmp / "bad.py").write_text(textwrap.dedent(BAD))
    (tmp / "mypy.ini").write_text("[mypy]\nstrict = True\n")
    env = {**os.environ, "MYPYPATH": str(REPO)}  # the editable install is invisible to mypy
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            "mypy.ini",
            "--cache-dir",
            str(tmp / ".mypy_cache"),
            "--no-error-summary",
            "--show-error-codes",
            "good.py",
            "bad.py",
        ],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout


def errors_in(output: str, file: str) -> set[tuple[int, str]]:
    found = set()
    for line in output.splitlines():
        match = ERROR.match(line)
        if match and match["file"] == file:
            found.add((int(match["line"]), match["code"]))
    return found


def expected_errors(source: str) -> set[tuple[int, str]]:
    lines = textwrap.dedent(source).splitlines()
    return {
        (number, line.rsplit("# E: ", 1)[1].strip())
        for number, line in enumerate(lines, start=1)
        if "# E: " in line
    }


def test_good_snippet_type_checks(mypy_output: str) -> None:
    good_lines = [line for line in mypy_output.splitlines() if line.startswith("good.py")]
    assert good_lines == []


def test_bad_snippet_reports_each_wrong_call(mypy_output: str) -> None:
    assert errors_in(mypy_output, "bad.py") == expected_errors(BAD), mypy_output


def test_bad_snippet_messages_name_the_parameter_types(mypy_output: str) -> None:
    assert (
        'Argument 1 to "enqueue" of "TaskFunction" has incompatible type "str"; expected "int"'
        in (mypy_output)
    )
    assert 'Missing positional argument "y"' in mypy_output
    assert 'Unexpected keyword argument "z"' in mypy_output
    assert 'expression has type "datetime", variable has type "int"' in mypy_output
