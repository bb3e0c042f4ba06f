"""What the workflow peers (``workflow_peers_celery.py``, ``workflow_peers_dramatiq.py``)
share: one measured run of a chord and a chain, printed as JSON lines.

A run, in the peer's own venv (``/tmp/bench/venvs/<peer>``): flush the peer's own Redis
database (``FLUSHDB`` on that database only), start one worker process through the shared
harness (``../shared/bench/harness/common.py``: its own session, log in
``/tmp/bench/logs``, its PID written to ``$BENCH_PIDFILE`` when set), warm it up with a
chord of 2 and a chain of 2 (not timed: it waits for the worker to start), then time

* ``chord``: ``--members`` no-op members and a callback, from the start of submission to
  the callback's result being in the caller's hands;
* ``chain``: ``--chain`` tasks each adding one to its parent's result, from the start of
  submission to the last result;

and stop the worker (SIGTERM to its process group, then SIGKILL). Each measurement is one
JSON line on stdout: ``{"lib", "version", "backend", "workload", "n", "submit_s",
"wall_s", "worker", "ok"}`` (``"error"`` instead of the figures when it failed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

HARNESS = Path(
    os.environ.get("BENCH_HARNESS")
    or Path(__file__).resolve().parents[3] / "shared" / "bench" / "harness"
)
sys.path.insert(0, str(HARNESS))

from common import LOG_DIR, Workers  # noqa: E402  (the shared harness: not a package)

#: Peer DBs on the shared Redis: the harness uses 0 and 1, the project's tests 14 and 15.
REDIS_HOST = os.environ.get("BENCH_WF_REDIS", "redis://127.0.0.1:6379")


class Peer(Protocol):
    """One library's side: how to reach its worker and submit its workflows."""

    name: str
    dist: str
    db: int

    def worker_cmd(self, concurrency: int, pool: str) -> tuple[list[str], str]:
        """The worker's argv and a description of its configuration."""
        ...

    def submit_chord(self, members: int) -> Callable[[float], Any]:
        """Submit a chord; return a function waiting (up to its argument, in seconds) for
        the callback's result."""
        ...

    def submit_chain(self, length: int) -> Callable[[float], Any]:
        """Submit a chain; return a function waiting for its last result."""
        ...

    def chord_result(self, members: int) -> Any:
        """The callback's expected result (``None``: not checked)."""
        ...


@dataclass
class Measure:
    workload: str
    n: int
    submit: Callable[[int], Callable[[float], Any]]
    expected: Callable[[int], Any]


def _timed(measure: Measure, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    wait = measure.submit(measure.n)
    submitted = time.perf_counter() - started
    result = wait(timeout)
    wall = time.perf_counter() - started
    expected = measure.expected(measure.n)
    if expected is not None and result != expected:
        raise RuntimeError(f"{measure.workload}: result {result!r}, expected {expected!r}")
    return {"submit_s": submitted, "wall_s": wall}


def _flush(db: int) -> None:
    import redis

    redis.Redis.from_url(f"{REDIS_HOST}/{db}").flushdb()


def run(peer: Peer, measures: list[Measure], args: argparse.Namespace) -> None:
    """One worker, the warm-up, then every measure; a JSON line each."""
    os.makedirs(LOG_DIR, exist_ok=True)
    base = {"lib": peer.name, "version": version(peer.dist), "backend": "redis"}
    _flush(peer.db)
    argv, described = peer.worker_cmd(args.concurrency, args.pool)
    log = os.path.join(LOG_DIR, f"wf-{peer.name}-{int(time.time())}.log")
    workers = Workers([argv], {}, log)
    try:
        # The first submission waits for the worker to start and import the tasks.
        peer.submit_chord(2)(120.0)
        peer.submit_chain(2)(30.0)
        for measure in measures:
            line = {**base, "workload": measure.workload, "n": measure.n, "worker": described}
            try:
                line.update(_timed(measure, args.timeout), ok=True)
            except Exception as exc:  # report it, go on with the next measure
                traceback.print_exc()
                line.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            print(json.dumps(line), flush=True)
    finally:
        workers.stop()
        _flush(peer.db)


def main(peer: Peer, doc: str) -> None:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--chain", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--pool", default="threads", help="celery only: threads or prefork")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per measure")
    args = parser.parse_args()

    def _on_term(signum: int, frame: object) -> None:  # let `finally` stop the worker
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _on_term)
    measures = [
        Measure("chord", args.members, peer.submit_chord, peer.chord_result),
        Measure("chain", args.chain, peer.submit_chain, lambda n: n - 1),
    ]
    run(peer, measures, args)
