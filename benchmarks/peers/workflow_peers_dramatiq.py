"""Dramatiq's group with a completion callback, and its pipeline, on Redis, for
``benchmarks/workflow_peers_run.py``.

    /tmp/bench/venvs/dramatiq/bin/python benchmarks/peers/workflow_peers_dramatiq.py \\
        [--members 10000] [--chain 1000] [--concurrency 100]

``RedisBroker`` with the ``Results`` middleware (Redis result backend) and
``GroupCallbacks`` (Redis rate-limiter backend, whose barrier counts the finished
members), all in Redis database 6 (flushed before and after; nothing else uses it).
``group(one.message(i) ...).add_completion_callback(total.message()).run()``; every
member stores its result, as a chord's members do. Dramatiq hands a completion callback
no results, so ``total`` here only returns the group's size (it does less than Celery's
and bg-coor's callback, which sum the members' results). The chain is
``pipeline([one.message(0), inc.message(), ...])``, each step receiving its parent's
result. A pipeline's message nests every later step's message (``pipe_target``), so
encoding a 1,000-step pipeline exceeds Python's default recursion limit (1,000):
``RecursionError`` while encoding JSON. This module (imported by the caller and the
worker) raises the limit to 10,000, as a Dramatiq user with long pipelines would have to;
the messages stay quadratic in size (each one carries the rest of the pipeline). The
caller blocks on the callback's (or last step's) result with
``get_result(block=True)``. One worker process with ``--concurrency`` threads (100 by
default, as bg-coor's slots in ``workflow_bench.py``). See ``workflow_peers_common.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import GroupCallbacks
from dramatiq.rate_limits.backends import RedisBackend as RedisRateLimits
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend as RedisResults
from workflow_peers_common import REDIS_HOST, main

#: See the module docstring: a 1,000-step pipeline nests 1,000 messages.
sys.setrecursionlimit(10_000)

DB = 6
QUEUE = "wfbench"
#: redis-py >= 8 caps a pool at 100 connections (100 worker threads need more) and reads
#: with a 5 s socket timeout, which cuts short the caller's blocking wait for a result.
POOL = redis.ConnectionPool.from_url(
    f"{REDIS_HOST}/{DB}", max_connections=1000, socket_timeout=None
)
CLIENT = redis.Redis(connection_pool=POOL)
RESULTS = RedisResults(client=CLIENT)

broker = RedisBroker(connection_pool=POOL)
broker.add_middleware(Results(backend=RESULTS))
broker.add_middleware(GroupCallbacks(RedisRateLimits(client=CLIENT)))
dramatiq.set_broker(broker)

#: Milliseconds, as dramatiq counts them.
MS = 1000


@dramatiq.actor(queue_name=QUEUE, max_retries=0, store_results=True)
def one(i: int) -> int:
    return i


@dramatiq.actor(queue_name=QUEUE, max_retries=0, store_results=True)
def inc(value: int) -> int:
    return value + 1


@dramatiq.actor(queue_name=QUEUE, max_retries=0, store_results=True)
def total(members: int) -> int:
    return members


class DramatiqPeer:
    name = "dramatiq"
    dist = "dramatiq"
    db = DB

    def worker_cmd(self, concurrency: int, pool: str) -> tuple[list[str], str]:
        binary = os.path.join(os.path.dirname(sys.executable), "dramatiq")
        argv = [binary, "workflow_peers_dramatiq", "--processes", "1"]
        argv += ["--threads", str(concurrency), "--queues", QUEUE]
        return argv, f"1 worker process x {concurrency} threads"

    def submit_chord(self, members: int) -> Callable[[float], Any]:
        callback = total.message(members)
        group = dramatiq.group(one.message(i) for i in range(members))
        group.add_completion_callback(callback)
        group.run()
        return lambda timeout: callback.get_result(
            backend=RESULTS, block=True, timeout=int(timeout * MS)
        )

    def submit_chain(self, length: int) -> Callable[[float], Any]:
        steps = [one.message(0), *(inc.message() for _ in range(length - 1))]
        pipe = dramatiq.pipeline(steps).run()
        return lambda timeout: pipe.get_result(block=True, timeout=int(timeout * MS))

    def chord_result(self, members: int) -> Any:
        return members


if __name__ == "__main__":
    main(DramatiqPeer(), __doc__ or "")
