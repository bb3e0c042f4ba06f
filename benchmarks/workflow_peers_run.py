"""Workflows against peers, in one run: bg-coor's chord and chain beside Celery's and
Dramatiq's on Redis, with repeats, medians and ratios.

    .venv/bin/python benchmarks/workflow_peers_run.py [--repeats 3] [--members 10000]
        [--chain 1000] [--concurrency 100] [--backends redis,postgres]
        [--peers celery,dramatiq] [--round-trips 10000] [--out results.json]

Prints Markdown; asserts nothing. Each repeat runs, one after another and each in a fresh
process: ``benchmarks/workflow_bench.py --json`` for each bg-coor backend (this
interpreter), then each peer adapter of ``benchmarks/peers/workflow_peers_<peer>.py`` in
its venv of the shared harness (``/tmp/bench/venvs/<peer>``, see
``../shared/bench/README.md``; ``celery-prefork`` is Celery with its default prefork pool
instead of 100 threads). A run that fails or outlives ``--timeout`` is recorded as such:
its process group is stopped (SIGTERM, then SIGKILL) and any worker it started and
listed in its ``$BENCH_PIDFILE`` is stopped the same way, by its PID.

Then, once, ``benchmarks/redis_round_trips.py --workflow`` at concurrency 1 and at
``--concurrency`` (round trips of a lone task against a chord member), and the versions:
bg-coor's commit and each peer venv's ``pip freeze`` lines for the libraries measured.
``--bgcoor-path DIR`` runs bg-coor from another checkout (its ``plugins/*`` too), e.g. an
exported commit, by putting it first on ``PYTHONPATH``; ``--extra-bgcoor LABEL=DIR`` (may
repeat) adds rows ``bgcoor@LABEL (redis)`` from another checkout, on Redis only. ``--out``
is rewritten after every adapter run, so a run cut short leaves its figures;
``--report FILE`` prints the table of such a file (same size options) without measuring.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = {
    "celery": ("celery", []),
    "celery-prefork": ("celery", ["--pool", "prefork"]),
    "dramatiq": ("dramatiq", []),
}
#: pip freeze lines worth recording, per venv.
FROZEN = ("celery", "kombu", "billiard", "dramatiq", "redis", "hiredis")


@dataclass
class Run:
    """One measurement (a JSON line of an adapter), or why there is none."""

    lib: str
    backend: str
    workload: str
    repeat: int
    wall_s: float | None = None
    submit_s: float | None = None
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.lib} ({self.backend})"


def _stop_group(pid: int, grace: float = 15.0) -> None:
    """SIGTERM to the process group led by ``pid`` (one we started), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_adapter(
    argv: Sequence[str], env: dict[str, str], timeout: float
) -> tuple[list[dict[str, Any]], str | None]:
    """Run one adapter; its JSON lines, and an error if it failed or timed out."""
    with tempfile.NamedTemporaryFile("r", suffix=".pids") as pidfile:
        full_env = {**os.environ, **env, "BENCH_PIDFILE": pidfile.name}
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        error = None
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(proc.pid)
            out, err = proc.communicate()
            error = f"timed out after {timeout:.0f} s"
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: leave nothing of ours running
            _stop_group(proc.pid)
            raise
        finally:
            for line in pidfile.read().split():
                _stop_group(int(line), grace=5.0)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if error is None and proc.returncode != 0:
        tail = " | ".join(err.strip().splitlines()[-3:])
        error = f"exit status {proc.returncode}: {tail}"
    return lines, error


def _names(listed: str) -> list[str]:
    return [name for name in listed.split(",") if name]


def bgcoor_env(path: str | None) -> dict[str, str]:
    if path is None:
        return {}
    roots = [Path(path), *sorted(Path(path, "plugins").glob("bgcoor-*"))]
    current = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join([*map(str, roots), current])}


def jobs(args: argparse.Namespace) -> Iterator[tuple[str, str, list[str], dict[str, str]]]:
    """(lib, backend, argv, env) of every adapter run in one repeat."""
    sizes = ["--members", str(args.members), "--chain", str(args.chain)]
    sizes += ["--concurrency", str(args.concurrency), "--timeout", str(args.timeout)]
    bench = [args.python, str(HERE / "workflow_bench.py"), "--json", *sizes]
    env = bgcoor_env(args.bgcoor_path)
    backends = args.backends.split(",")
    if "redis" in backends:
        yield "bgcoor", "redis", [*bench, "--backends", "redis"], env
    for extra in args.extra_bgcoor:
        label, _, path = extra.partition("=")
        yield f"bgcoor@{label}", "redis", [*bench, "--backends", "redis"], bgcoor_env(path)
    for peer in _names(args.peers):
        venv, extra = PEERS[peer]
        python = str(Path(args.venvs, venv, "bin", "python"))
        script = str(HERE / "peers" / f"workflow_peers_{venv}.py")
        yield peer, "redis", [python, script, *sizes, *extra], {}
    for backend in backends:
        if backend != "redis":
            yield "bgcoor", backend, [*bench, "--backends", backend], env


def measure(args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    for repeat in range(1, args.repeats + 1):
        for lib, backend, argv, env in jobs(args):
            started = time.monotonic()
            lines, error = run_adapter(argv, env, args.timeout * 2 + 120)
            took = time.monotonic() - started
            print(f"<!-- repeat {repeat}: {lib} ({backend}) in {took:.0f} s -->", flush=True)
            seen = set()
            for line in lines:
                seen.add(line["workload"])
                ok = line.get("ok", False)
                run = Run(lib, backend, line["workload"], repeat, raw=line)
                run.raw["took_s"] = took
                if ok:
                    run.wall_s, run.submit_s = line["wall_s"], line.get("submit_s")
                else:
                    run.error = line.get("error", "failed")
                runs.append(run)
            for workload in ("chord", "chain"):
                if workload not in seen:
                    runs.append(Run(lib, backend, workload, repeat, error=error or "no figure"))
            if args.out:
                Path(args.out).write_text(json.dumps([run.__dict__ for run in runs], indent=1))
    return runs


def _cell(values: list[float], digits: int = 2) -> str:
    if not values:
        return "n/a"
    median = statistics.median(values)
    return f"{median:.{digits}f} ({min(values):.{digits}f} to {max(values):.{digits}f})"


#: The row every ratio divides by.
OURS = "bgcoor (redis)"


def _ratio(mine: list[Run], ours: dict[int, float]) -> str:
    """Median peer time over median bg-coor Redis time, and the same per repeat."""
    walls = [r.wall_s for r in mine if r.wall_s is not None]
    if mine[0].label == OURS or not walls or not ours:
        return "-"
    each = ", ".join(
        f"{r.wall_s / ours[r.repeat]:.1f}" for r in mine if r.wall_s and r.repeat in ours
    )
    return f"{statistics.median(walls) / statistics.median(ours.values()):.2f}x ({each})"


def table(runs: list[Run], args: argparse.Namespace) -> str:
    """Markdown: one row per (workload, library, backend), ratios to bg-coor on Redis."""
    sizes = {"chord": args.members, "chain": args.chain}
    rows = [
        "| workload | library (backend) | wall s: median (min to max) | submit s: median "
        "| runs ok | wall / bg-coor Redis's: of medians (each repeat) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for workload, n in sizes.items():
        these = [run for run in runs if run.workload == workload]
        ours = {r.repeat: r.wall_s for r in these if r.label == OURS and r.wall_s is not None}
        for label in dict.fromkeys(run.label for run in these):
            mine = [r for r in these if r.label == label]
            walls = [r.wall_s for r in mine if r.wall_s is not None]
            submits = [r.submit_s for r in mine if r.submit_s is not None]
            submit = f"{statistics.median(submits):.2f}" if submits else "n/a"
            cells = [f"{workload} of {n:,}", label, _cell(walls), submit]
            cells += [f"{len(walls)}/{len(mine)}", _ratio(mine, ours)]
            rows.append("| " + " | ".join(cells) + " |")
    errors = {f"{r.label} {r.workload} repeat {r.repeat}: {r.error}" for r in runs if r.error}
    if errors:
        rows += ["", "Failed runs:", "", *(f"- {e}" for e in sorted(errors))]
    return "\n".join(rows)


def round_trips(args: argparse.Namespace) -> str:
    lines = []
    for concurrency in sorted({1, args.concurrency}):
        argv = [args.python, str(HERE / "redis_round_trips.py"), "--workflow"]
        argv += ["--n", str(args.round_trips), "--concurrency", str(concurrency)]
        proc = subprocess.run(
            argv,
            cwd=ROOT,
            env={**os.environ, **bgcoor_env(args.bgcoor_path)},
            capture_output=True,
            text=True,
            timeout=args.timeout,
            check=False,
        )
        lines += proc.stdout.strip().splitlines() or [f"failed: {proc.stderr.strip()[-300:]}"]
    return "\n".join(lines)


def versions(args: argparse.Namespace) -> str:
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    where = args.bgcoor_path or f"{ROOT} at {commit}{' with uncommitted changes' if dirty else ''}"
    lines = [f"bg-coor: {where}; Python {sys.version.split()[0]}"]
    lines += [f"bgcoor@{extra.replace('=', ': ', 1)}" for extra in args.extra_bgcoor]
    for venv in sorted({PEERS[p][0] for p in _names(args.peers)}):
        pip = Path(args.venvs, venv, "bin", "pip")
        frozen = subprocess.run([str(pip), "freeze"], capture_output=True, text=True).stdout
        keep = [line for line in frozen.splitlines() if line.split("==")[0].lower() in FROZEN]
        python = Path(args.venvs, venv, "bin", "python")
        version = subprocess.run([str(python), "-V"], capture_output=True, text=True).stdout.strip()
        lines.append(f"{venv} venv ({version}): {', '.join(keep)}")
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--chain", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--backends", default="redis,postgres", help="bg-coor's backends")
    parser.add_argument("--peers", default="celery,dramatiq", help=f"of {', '.join(PEERS)}")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per result")
    parser.add_argument("--round-trips", type=int, default=10_000, help="n; 0 skips it")
    parser.add_argument("--venvs", default="/tmp/bench/venvs")
    parser.add_argument("--python", default=sys.executable, help="bg-coor's interpreter")
    parser.add_argument("--bgcoor-path", default=None)
    parser.add_argument("--extra-bgcoor", action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--out", default=None, help="write every run as JSON here")
    parser.add_argument("--report", default=None, help="only print the table of this --out")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        print(table([Run(**run) for run in saved], args))
        return
    started = time.strftime("%Y-%m-%d %H:%M")
    runs = measure(args)
    print(f"\nWorkflows against peers, {started}, {args.repeats} repeats\n")
    print(table(runs, args))
    if args.round_trips:
        print("\n```\n" + round_trips(args) + "\n```")
    print("\n```\n" + versions(args) + "\n```")


if __name__ == "__main__":
    main()
