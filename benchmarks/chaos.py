"""Chaos driver: the reliability scenarios of ``tests/reliability`` at a larger scale.

    python benchmarks/chaos.py --tasks 10000 --kill-seconds 300 --backends sqlite,redis,postgres

Runs each scenario (``--scenarios``, default all) on each backend that can run here (a
backend whose plugin is missing or whose server is down is listed as skipped) and writes
a markdown report (``--output``, default ``docs/reliability.md``): per backend and
scenario, tasks enqueued, worker kills, tasks lost, duplicate executions and time to
recover, between the page's ``<!-- chaos.py: begin/end -->`` markers (the prose around
them is kept). The scenario code is the test suite's own (``tests/reliability/``); the
size is what differs. Exits 1 if any scenario failed its pass criteria.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from reliability.backends import BACKENDS  # noqa: E402 - needs the path above
from reliability.outcome import Outcome  # noqa: E402
from reliability.scenarios import SCENARIOS, Scenario, run_scenario  # noqa: E402
from reliability.servers import Unavailable  # noqa: E402

RECOVER = {
    "sigkill": "longest wait, after a kill, until every task running at that moment had finished",
    "zombie": "from SIGSTOP until the second worker took the task over",
    "poison": "from the first death the poison task caused until it was dead-lettered",
    "broker_restart": "from the server being back until the first task completed",
    "sigterm": "for a fresh worker to finish what the stopped one handed back",
    "sigterm_twice": "for a fresh worker to finish what the stopped one handed back",
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the SIGKILL run")
    parser.add_argument(
        "--kill-seconds", type=float, default=300.0, help="how long workers are killed"
    )
    parser.add_argument(
        "--kill-every", type=float, default=1.0, help="mean seconds between two kills"
    )
    parser.add_argument("--backends", default="sqlite,redis,postgres")
    parser.add_argument("--scenarios", default="all", help="comma-separated names, or all")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "reliability.md")
    args = parser.parse_args(argv)
    unknown = set(args.backends.split(",")) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}; choose from {sorted(BACKENDS)}")
    if args.scenarios != "all":
        unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
        if unknown:
            parser.error(f"unknown scenarios {sorted(unknown)}; choose from {sorted(SCENARIOS)}")
    return args


async def run_one(scenario: Scenario, backend: str, args: argparse.Namespace) -> Outcome:
    params = scenario.scale(args.tasks, args.kill_seconds)
    if scenario.name == "sigkill":
        params["kill_every"] = args.kill_every
    with tempfile.TemporaryDirectory(prefix="bgcoor-chaos-") as workdir:
        try:
            return await run_scenario(scenario, BACKENDS[backend], Path(workdir), **params)
        except AssertionError as exc:  # could not even finish: a failure with its reason
            return Outcome(scenario.name, backend, failures=[str(exc).splitlines()[0]])
        except Unavailable as exc:  # no private server can be started here
            return Outcome(scenario.name, backend, failures=[f"not run: {exc}"])


async def main(args: argparse.Namespace) -> list[Outcome | tuple[str, str]]:
    names = list(SCENARIOS) if args.scenarios == "all" else args.scenarios.split(",")
    results: list[Outcome | tuple[str, str]] = []
    for backend in args.backends.split(","):
        reason = BACKENDS[backend].unavailable()
        if reason is not None:
            print(f"skipping {backend}: {reason}", flush=True)
            results.append((backend, reason))
            continue
        for name in names:
            if not SCENARIOS[name].applies_to(BACKENDS[backend]):
                continue
            started = time.monotonic()
            print(f"{backend:<9} {name:<17} ...", end=" ", flush=True)
            outcome = await run_one(SCENARIOS[name], backend, args)
            verdict = "ok" if outcome.passed else "FAILED: " + "; ".join(outcome.failures)
            print(f"{verdict} ({time.monotonic() - started:.0f}s)", flush=True)
            results.append(outcome)
    return results


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


BEGIN, END = "<!-- chaos.py: begin -->", "<!-- chaos.py: end -->"


def report(args: argparse.Namespace, results: list[Outcome | tuple[str, str]], took: float) -> str:
    """The generated block: command, table, legend, what was not run, what failed."""
    command = "python benchmarks/chaos.py " + shlex.join(
        [
            f"--tasks={args.tasks}",
            f"--kill-seconds={args.kill_seconds:g}",
            f"--kill-every={args.kill_every:g}",
            f"--backends={args.backends}",
            *([f"--scenarios={args.scenarios}"] if args.scenarios != "all" else []),
        ]
    )
    lines = [
        BEGIN,
        f"Made on {datetime.date.today().isoformat()} with `{command}`",
        f"({os.cpu_count()} CPUs; {took / 60:.1f} minutes in all).",
        "",
        "| # | scenario | backend | result | enqueued | kills | lost | quarantined "
        "| duplicates | recover (s) | run (s) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for item in results:
        if isinstance(item, tuple):
            continue
        scenario = SCENARIOS[item.scenario]
        verdict = "pass" if item.passed else "**FAIL**"
        lines.append(
            f"| {scenario.number} | {scenario.title} | {item.backend} | {verdict} | "
            f"{item.enqueued} | {item.kills} | {item.lost} | {item.quarantined} | "
            f"{item.duplicates} | {_seconds(item.recover)} | {item.seconds:.0f} |"
        )
    lines += ["", *_legend()]
    skipped = [item for item in results if isinstance(item, tuple)]
    if skipped:
        lines += ["", "Not run here:", ""]
        lines += [f"- {backend}: {reason}" for backend, reason in skipped]
    failed = [item for item in results if isinstance(item, Outcome) and not item.passed]
    if failed:
        lines += ["", "Failed criteria:", ""]
        for item in failed:
            lines += [f"- {item.scenario} on {item.backend}:"]
            lines += [f"  - {problem[:300]}" for problem in item.failures]
    return "\n".join([*lines, END])


def write(path: Path, block: str) -> None:
    """Replace the generated block of ``path``, keeping the prose around it."""
    page = path.read_text() if path.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    if BEGIN not in page or END not in page:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block to replace")
    head, _, rest = page.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(head + block + tail)


def _legend() -> list[str]:
    lines = [
        "- **kills**: worker processes killed or crashed during the run (SIGKILL, the fault",
        "  plugin's crash before ack, the poison task's `os._exit`, SIGSTOP, SIGTERM).",
        "- **lost**: enqueued tasks that never completed (pass: 0 wherever the scenario",
        "  expects completion).",
        "- **quarantined**: tasks dead-lettered `worker_lost` because they happened to be in",
        "  more than `max_worker_lost` (3) killed workers: not lost (they wait in the",
        "  dead-letter queue with the reason, for `bgcoor dlq requeue`), but not completed",
        "  either. Only chaos that kills workers at random produces them.",
        "- **duplicates**: completed executions beyond the first, from the ledger every",
        "  execution appends to (at-least-once delivery: expected after a crash between a",
        "  task's side effect and its ack, bounded by kills x concurrency under SIGKILL).",
        "- **recover**: seconds,",
    ]
    lines += [f"  {name}: {text};" for name, text in RECOVER.items()]
    lines[-1] = lines[-1].rstrip(";") + "."
    return lines


if __name__ == "__main__":
    for key in [k for k in os.environ if k.upper().startswith("BGCOOR_")]:
        del os.environ[key]  # the scenarios set every setting they rely on
    arguments = parse(sys.argv[1:])
    begun = time.monotonic()
    outcomes = asyncio.run(main(arguments))
    write(arguments.output, report(arguments, outcomes, time.monotonic() - begun))
    print(f"wrote {arguments.output}")
    sys.exit(0 if all(not isinstance(o, Outcome) or o.passed for o in outcomes) else 1)
