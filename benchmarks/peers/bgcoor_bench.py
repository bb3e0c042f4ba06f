"""bg-coor adapter for the peer benchmark harness (../shared/bench), run with our own venv:

    BENCH_ADAPTERS=benchmarks/peers BENCH_PYTHON_BGCOOR=.venv/bin/python \\
      bash ../shared/bench/run_peers.sh --libs bgcoor,dramatiq --skip-physical --out /tmp/b

The backend URL (broker and storage, one object) comes from ``BENCH_BGCOOR_URL``, by
default the harness's broker database (Redis DB 1). Tasks record completion through the
harness's task-body helpers (Redis DB 0), like every other adapter. The worker is one
``bgcoor worker`` process with concurrency 100 (W1, W2) or 200 (W3), like the other asyncio
peers; every task's record is stored (``running``, then ``succeeded``) and its message
acknowledged, as in production.
"""

import contextlib
import os
import sys
from urllib.parse import urlsplit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import common
from common import (
    BROKER_URL,
    Adapter,
    adapter_main,
    body_noop_async,
    body_ping_async,
    body_sleep_async,
)

from bgcoor_core import TaskManager

URL = os.environ.get("BENCH_BGCOOR_URL", BROKER_URL)


def _signal_client_as_the_peers_have_it():
    """The harness's completion-signal client, built as ``common._ar`` builds it but with
    redis-py's pure-Python reply parser. bgcoor-redis requires hiredis, and with hiredis
    installed redis-py parses every reply with it, the harness's signal included; the
    peers' venvs (all but arq's) have no hiredis. This keeps the per-task signal costing
    our worker what it costs theirs."""
    import asyncio

    import redis.asyncio as aredis
    from redis._parsers import _AsyncRESP3Parser

    key = (os.getpid(), id(asyncio.get_running_loop()))
    client = common._async_clients.get(key)
    if client is None:
        client = aredis.Redis.from_url(
            common.SIGNAL_URL, max_connections=1000, parser_class=_AsyncRESP3Parser
        )
        common._async_clients[key] = client
    return client


common._ar = _signal_client_as_the_peers_have_it

manager = TaskManager(broker_url=URL, storage_url=URL)


@manager.task(name="noop")
async def noop() -> None:
    await body_noop_async()


@manager.task(name="sleep_task")
async def sleep_task(ms: int) -> None:
    await body_sleep_async(ms)


@manager.task(name="ping")
async def ping(token: int) -> None:
    await body_ping_async(token)


def _flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url.split("?", 1)[0])
    try:
        client.flushdb()  # only our database: the harness's signal DB is cleared by the driver
    finally:
        client.close()


def _flush_postgres(url: str) -> None:
    """Empty our tables (the schema in the URL, if it exists yet); the driver's loop is
    running, so this runs on a private one in a thread."""
    import asyncio
    import threading

    import asyncpg
    from bgcoor_postgres import parse_postgres_url

    target = parse_postgres_url(url)
    schema = f'"{target.schema}"'

    async def truncate() -> None:
        conn = await asyncpg.connect(target.dsn)
        try:
            if await conn.fetchval("SELECT to_regclass($1)", f"{schema}.messages"):
                await conn.execute(f"TRUNCATE {schema}.messages, {schema}.tasks, {schema}.queues")
        finally:
            await conn.close()

    thread = threading.Thread(target=asyncio.run, args=(truncate(),))
    thread.start()
    thread.join()


FLUSHERS = {
    "redis": _flush_redis,
    "rediss": _flush_redis,
    "postgresql": _flush_postgres,
    "postgres": _flush_postgres,
}


class BgcoorAdapter(Adapter):
    name = "bgcoor"
    dist = "bgcoor"
    backend = urlsplit(URL).scheme
    asyncio_lib = True

    def lib_version(self):
        from importlib.metadata import PackageNotFoundError, version

        extras = []
        for dist in ("bgcoor-redis", "redis", "hiredis", "bgcoor-postgres", "asyncpg"):
            with contextlib.suppress(PackageNotFoundError):  # only the backend in use
                extras.append(f"{dist} {version(dist)}")
        return f"{version('bgcoor')} ({', '.join(extras)})"

    def flush(self):
        flusher = FLUSHERS.get(urlsplit(URL).scheme)
        if flusher is None:
            raise ValueError(f"BENCH_BGCOOR_URL: no flush for {urlsplit(URL).scheme}:// URLs")
        flusher(URL)

    async def teardown(self):
        await manager.close()

    async def enqueue_noop(self, n):
        await noop.enqueue_many([() for _ in range(n)])
        return "enqueue_many (bulk: record + message per task, stored atomically)"

    async def enqueue_sleep(self, n, ms):
        await sleep_task.enqueue_many([(ms,) for _ in range(n)])
        return "enqueue_many (bulk)"

    async def enqueue_ping(self, token):
        await ping.enqueue(token)

    def worker_cmds(self, workload, concurrency):
        c = concurrency or (200 if workload == "w3" else 100)  # as the other asyncio peers
        cmd = [sys.executable, "-m", "bgcoor_core.cli", "worker", "bgcoor_bench:manager"]
        return [[*cmd, "--concurrency", str(c), "--log-level", "warning"]], (
            f"1 worker process, concurrency={c}"
        )


ADAPTER = BgcoorAdapter()

if __name__ == "__main__":
    adapter_main("bgcoor_bench")
