"""SQLite wake-ups across processes and backend objects (``_wakes.py``): a push wakes a
consumer waiting in another process, and an outcome a caller waiting for the result,
long before their poll would have looked again.

Every waiter here polls only every 60 s, so each wait that ends within the test's
timeout (20 s) was ended by a wake-up; the timeouts are generous bounds, not speeds."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bgcoor_core import TaskStatus
from bgcoor_core.backends.sqlite import SQLiteBackend
from bgcoor_core.backends.sqlite._backend import SQLiteOptions
from bgcoor_core.backends.sqlite._wakes import Wakes, wake_dir
from bgcoor_core.testing import make_task, make_test_codec

WaitUntil = Callable[..., Awaitable[None]]  # the wait_until fixture

SLOW_POLL = SQLiteOptions(poll_interval=60)

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")


def backend(path: Path) -> SQLiteBackend:
    return SQLiteBackend(str(path), make_test_codec(), SLOW_POLL)


def sockets(path: Path) -> list[str]:
    folder = wake_dir(str(path))
    assert folder is not None
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


async def test_a_push_wakes_a_consumer_of_another_backend_object(
    tmp_path: Path, wait_until: WaitUntil
) -> None:
    db = tmp_path / "w.db"
    consumer, producer = backend(db), backend(db)
    await consumer.migrate()
    reserving = asyncio.create_task(consumer.reserve(["default"], lease=30, timeout=50))
    await wait_until(lambda: len(sockets(db)) == 1)  # the consumer waits, listening
    task = make_task()
    await producer.enqueue_atomically([task], [producer.to_message(task)])
    async with asyncio.timeout(20):
        (got,) = await reserving
    assert got.task.id == task.id
    await consumer.close()
    await producer.close()
    assert sockets(db) == []  # each removed its socket


async def test_an_outcome_wakes_a_caller_waiting_for_the_result(
    tmp_path: Path, wait_until: WaitUntil
) -> None:
    db = tmp_path / "r.db"
    caller, worker = backend(db), backend(db)
    task = make_task()
    await caller.enqueue_atomically([task], [caller.to_message(task)])
    waiting = asyncio.create_task(caller.wait(task.id, timeout=50))
    (reservation,) = await worker.reserve(["default"], lease=30, timeout=5)
    await wait_until(lambda: len(sockets(db)) == 1)
    done = reservation.task.model_copy(
        update={"status": TaskStatus.SUCCEEDED, "result": 42, "lease_token": reservation.token}
    )
    await worker.complete(reservation, done, ttl=None)
    async with asyncio.timeout(20):
        finished = await waiting
    assert finished.status is TaskStatus.SUCCEEDED
    assert finished.result == 42
    await caller.close()
    await worker.close()


CONSUMER = """
import asyncio, sys
from bgcoor_core.backends.sqlite import SQLiteBackend
from bgcoor_core.backends.sqlite._backend import SQLiteOptions
from bgcoor_core.testing import make_test_codec

async def main():
    backend = SQLiteBackend(sys.argv[1], make_test_codec(), SQLiteOptions(poll_interval=60))
    got = await backend.reserve(["default"], lease=30, timeout=50)
    print(got[0].task.id if got else "nothing", flush=True)
    await backend.close()

asyncio.run(main())
"""


async def test_a_push_wakes_a_consumer_in_another_process(
    tmp_path: Path, wait_until: WaitUntil
) -> None:
    db = tmp_path / "p.db"
    producer = backend(db)
    await producer.migrate()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CONSUMER, str(db), stdout=asyncio.subprocess.PIPE
    )
    try:
        await wait_until(lambda: len(sockets(db)) == 1, timeout=30)
        (name,) = sockets(db)
        assert name.startswith(f"{child.pid}-")  # the child's own socket
        task = make_task()
        await producer.push_messages([producer.to_message(task)])
        async with asyncio.timeout(20):
            out, _ = await child.communicate()
        assert out.decode().strip() == task.id
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    await producer.close()


def test_a_socket_whose_process_is_gone_is_removed(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    folder = wake_dir(db)
    assert folder is not None
    os.makedirs(folder)
    stale = os.path.join(folder, "999999-dead.sock")
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone.bind(stale)
    gone.close()  # the file stays, nobody reads it: a crashed process's socket
    woken: list[int] = []
    live = Wakes(db, lambda: woken.append(1))
    live.listen()
    sender = Wakes(db, lambda: None)
    sender.notify()
    assert not os.path.exists(stale)
    assert len(os.listdir(folder)) == 1  # the live one
    live.close()
    sender.close()
    assert os.listdir(folder) == []


def test_where_the_sockets_live(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="w", dir="/tmp") as near:  # a short path
        short = os.path.join(near, "a.db")
        assert wake_dir(short) == os.path.realpath(short) + "-wake"
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    long = wake_dir(str(deep / "a.db"))
    assert long is not None
    assert os.path.basename(long).startswith("bgcoor-wake-")
    assert len(long) + 40 < 108  # room for a socket name within sun_path
    assert wake_dir(str(deep / "a.db")) == long  # every process finds the same one
    assert wake_dir(":memory:") is None


def test_telling_nobody_creates_nothing(tmp_path: Path) -> None:
    """``notify`` with no process listening (no directory yet) neither raises nor
    creates a directory or a socket."""
    db = str(tmp_path / "n.db")
    wakes = Wakes(db, lambda: None)
    wakes.notify()
    assert wakes._sender is None
    folder = wake_dir(db)
    assert folder is not None
    assert not os.path.exists(folder)
    wakes.close()
