"""The examples run as users run them: ``python examples/<name>.py``, in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BGCOOR_")}
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def test_original_design_task_succeeds() -> None:
    out = run_example("original_design.py")
    assert "my_task: succeeded after 1 attempt(s)" in out
    assert "result: {'greeting': 'hello, world'}" in out


def test_quickstart() -> None:
    out = run_example("quickstart.py")
    assert "add(1, 2) = 3" in out
    assert "succeeded after 1 attempt(s)" in out
    assert "squares = [0, 1, 4, 9, 16]" in out
    assert "refused at enqueue: task '__main__.add': argument 'x'" in out
    assert "slow_square(7) = 49" in out


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_every_example_is_tested(path: Path) -> None:
    assert f'run_example("{path.name}")' in Path(__file__).read_text()
