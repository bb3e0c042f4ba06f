"""Celery's chord and chain on Redis, for ``benchmarks/workflow_peers_run.py``.

    /tmp/bench/venvs/celery/bin/python benchmarks/peers/workflow_peers_celery.py \\
        [--members 10000] [--chain 1000] [--concurrency 100] [--pool threads|prefork]

Deployed as a Celery user deploys chords: Redis broker and Redis result backend (both
database 5, flushed before and after; nothing else uses it), whose native chord support
counts the header's results in Redis as each member finishes (no ``chord_unlock``
polling). ``chord(one.s(i) for i in range(n))(total.s())``: the callback receives the
list of the members' results and sums it; ``chain(one.s(0), inc.s(), ...)``. The caller
waits with ``AsyncResult.get()`` (the backend's pub/sub). One worker process
(``-P threads -c 100`` by default: one process with as many slots as bg-coor's worker in
``workflow_bench.py``; ``--pool prefork`` runs Celery's default pool instead), gossip,
mingle and heartbeat off, log level WARNING. See ``workflow_peers_common.py`` for the run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from celery import Celery, chain, chord
from workflow_peers_common import REDIS_HOST, main

DB = 5
URL = f"{REDIS_HOST}/{DB}"
QUEUE = "wfbench"

app = Celery("workflow_peers_celery", broker=URL, backend=URL)
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=3600,
)


@app.task(name="wf.one")
def one(i: int) -> int:
    return i


@app.task(name="wf.total")
def total(values: list[int]) -> int:
    return sum(values)


@app.task(name="wf.inc")
def inc(value: int) -> int:
    return value + 1


class CeleryPeer:
    name = "celery"
    dist = "celery"
    db = DB

    def worker_cmd(self, concurrency: int, pool: str) -> tuple[list[str], str]:
        celery = os.path.join(os.path.dirname(sys.executable), "celery")
        argv = [celery, "-A", "workflow_peers_celery", "worker", "-Q", QUEUE, "-l", "WARNING"]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        if pool == "prefork":
            return [*argv, "-P", "prefork"], "1 worker, prefork pool (-c = #cores, default)"
        argv += ["-P", "threads", "-c", str(concurrency)]
        return argv, f"1 worker process, threads pool -c {concurrency}"

    def submit_chord(self, members: int) -> Callable[[float], Any]:
        result = chord(one.s(i) for i in range(members))(total.s())
        return lambda timeout: result.get(timeout=timeout)

    def submit_chain(self, length: int) -> Callable[[float], Any]:
        result = chain(one.s(0), *(inc.s() for _ in range(length - 1))).apply_async()
        return lambda timeout: result.get(timeout=timeout)

    def chord_result(self, members: int) -> Any:
        return members * (members - 1) // 2


if __name__ == "__main__":
    main(CeleryPeer(), __doc__ or "")
