"""The examples run as users run them: ``python examples/<name>.py``, in a fresh process."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_python(*args: str, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BGCOOR_")}
    proc = subprocess.run(
        [sys.executable, "-W", "error", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
        check=False,
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def run_example(name: str) -> str:
    return run_python(str(EXAMPLES / name))


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


def test_readme_quickstart_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    code = readme.split("## Quickstart", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    # run where the embedded default (./bgcoor.db) may be created
    assert run_python("-c", code, cwd=tmp_path).splitlines() == ["3", "49"]


def test_readme_two_processes(tmp_path: Path) -> None:
    """The README's worker and enqueue commands, in two processes sharing ./bgcoor.db."""
    section = (ROOT / "README.md").read_text().split("## Two processes", 1)[1].split("\n## ")[0]
    (tmp_path / "tasks.py").write_text(section.split("```python\n", 1)[1].split("```", 1)[0])
    worker_cmd, enqueue_cmd = (
        shlex.split(block.split("```", 1)[0], comments=True)
        for block in section.split("```bash\n")[1:]
    )
    assert worker_cmd[0] == enqueue_cmd[0] == ".venv/bin/bgcoor"
    cli = [sys.executable, "-W", "error", "-m", "bgcoor_core.cli"]
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BGCOOR_")}
    log = tmp_path / "worker.out"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [*cli, *worker_cmd[1:]], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while "ready:" not in log.read_text():
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc = subprocess.run(
            [*cli, *enqueue_cmd[1:], "--timeout", "30"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[1:] == ["3"]
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
    assert code == 0, log.read_text()
    assert (tmp_path / "bgcoor.db").exists()


def test_benchmark_smoke() -> None:
    out = run_python(
        str(ROOT / "benchmarks" / "memory_bench.py"),
        *("--n", "300", "--concurrency", "10", "--latency-n", "50"),
    )
    assert out.count("processed") == 3  # async and sync no-ops, async rich arguments
    assert "rich args" in out
    assert out.count("p99") == 2


def test_timing_plugin_adds_a_header_at_enqueue_and_times_each_attempt() -> None:
    out = run_example("timing_plugin.py")
    lines = out.splitlines()
    assert sum("napped with header timing-enqueued-at = " in line for line in lines) == 2
    timed = [line for line in lines if line.startswith("demo.nap attempt 1 succeeded")]
    assert len(timed) == 2
    ran = sorted(float(line.split("ran ")[1].split(" ms")[0]) for line in timed)
    assert ran[0] >= 19  # the 20 ms nap, timed by the wrapper around the handler
    assert ran[1] >= 49


def test_the_plugin_guide_shows_the_timing_plugin_as_it_runs() -> None:
    guide = (ROOT / "docs" / "writing-plugins.md").read_text()
    source = (EXAMPLES / "timing_plugin.py").read_text()
    plugin = source.split("class TimingPlugin:", 1)[1].split("\n\n\ntiming = ", 1)[0]
    assert "class TimingPlugin:" + plugin in guide
